use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = 42, key = i64, value = String)]
pub struct UserCache;

fn main() {}
