use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, version = "2")]
pub struct UserCache;

fn main() {}
