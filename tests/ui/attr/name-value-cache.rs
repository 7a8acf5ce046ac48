use cache_manager::Cache;

#[derive(Cache)]
#[cache = "user"]
pub struct UserCache;

fn main() {}
