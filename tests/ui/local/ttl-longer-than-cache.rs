use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", ttl = 60, key = i64, value = String, local = 100, local_ttl = 120)]
pub struct UserCache;

fn main() {}
