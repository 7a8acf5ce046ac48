use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, redis(db = 1))]
pub struct UserCache;

fn main() {}
