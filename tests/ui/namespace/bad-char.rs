use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user profile", key = i64, value = String)]
pub struct UserProfileCache;

fn main() {}
