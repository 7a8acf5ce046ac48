use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, fail_safe = 4294967296)]
pub struct UserCache;

fn main() {}
