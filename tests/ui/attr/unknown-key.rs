use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", expiry = 600, key = i64, value = String)]
pub struct UserCache;

fn main() {}
