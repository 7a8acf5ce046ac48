use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, codec = "json", codec = "string")]
pub struct UserCache;

fn main() {}
