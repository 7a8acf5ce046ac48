use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = &str, value = i64)]
pub struct UserCache;

fn main() {}
