use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, hash_tag = true, hash_tag = false)]
pub struct UserCache;

fn main() {}
