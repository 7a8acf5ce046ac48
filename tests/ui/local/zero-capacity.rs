use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, local = 0)]
pub struct UserCache;

fn main() {}
