use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", ttl = 18446744073709551616, key = i64, value = String)]
pub struct UserCache;

fn main() {}
