use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, compress = 1)]
pub struct UserCache;

fn main() {}
