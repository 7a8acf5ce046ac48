use cache_manager::Cache;

#[derive(Cache)]
#[cache]
pub struct UserCache;

fn main() {}
