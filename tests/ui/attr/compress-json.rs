use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, codec = "json", compress = true)]
pub struct UserCache;

fn main() {}
