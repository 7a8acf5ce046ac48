use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = 42, value = String)]
pub struct UserCache;

fn main() {}
