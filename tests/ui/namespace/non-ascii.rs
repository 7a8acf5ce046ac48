use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "usér", key = i64, value = String)]
pub struct UserCache;

fn main() {}
