use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", ttl = 10 * 60, key = i64, value = String)]
pub struct UserCache;

fn main() {}
