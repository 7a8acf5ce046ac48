use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, hash_tag = "yes")]
pub struct UserCache;

fn main() {}
