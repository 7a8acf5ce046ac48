use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, refresh_ahead = 0.8)]
pub struct UserCache;

fn main() {}
