use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", ttl = std::time::Duration::from_secs(600), key = i64, value = String)]
pub struct UserCache;

fn main() {}
