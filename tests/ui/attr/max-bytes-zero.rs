use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, max_bytes = 0)]
pub struct UserCache;

fn main() {}
