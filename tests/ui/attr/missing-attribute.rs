use cache_manager::Cache;

#[derive(Cache)]
pub struct UserCache;

fn main() {}
