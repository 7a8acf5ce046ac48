use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, lazy)]
pub struct UserCache;

fn main() {}
