use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, max_bytes = 536_870_913)]
pub struct UserCache;

fn main() {}
