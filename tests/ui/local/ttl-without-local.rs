use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, local_ttl = 10)]
pub struct UserCache;

fn main() {}
