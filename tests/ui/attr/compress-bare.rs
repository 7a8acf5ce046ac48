use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, compress)]
pub struct UserCache;

fn main() {}
