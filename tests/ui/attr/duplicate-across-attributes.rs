use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String)]
#[cache(ttl = 60, key = u64)]
pub struct UserCache;

fn main() {}
