use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, codec = "string", negative_ttl = 30)]
pub struct UserCache;

fn main() {}
