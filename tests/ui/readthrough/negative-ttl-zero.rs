use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, negative_ttl = 0)]
pub struct UserCache;

fn main() {}
