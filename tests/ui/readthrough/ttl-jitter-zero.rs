use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, ttl_jitter = 0)]
pub struct UserCache;

fn main() {}
