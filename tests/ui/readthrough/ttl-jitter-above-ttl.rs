use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", ttl = 60, key = i64, value = String, ttl_jitter = 61)]
pub struct UserCache;

fn main() {}
