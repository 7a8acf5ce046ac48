use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, single_flight = global)]
pub struct UserCache;

fn main() {}
