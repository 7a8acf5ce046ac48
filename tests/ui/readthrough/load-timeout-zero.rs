use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, fail_safe = 3600, load_timeout_ms = 0)]
pub struct UserCache;

fn main() {}
