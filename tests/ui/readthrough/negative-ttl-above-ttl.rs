use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", ttl = 60, key = i64, value = String, negative_ttl = 120)]
pub struct UserCache;

fn main() {}
