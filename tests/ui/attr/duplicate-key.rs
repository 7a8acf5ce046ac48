use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, key = String, value = String)]
pub struct UserCache;

fn main() {}
