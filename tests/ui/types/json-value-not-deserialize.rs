use cache_manager::Cache;
use serde::Serialize;

#[derive(Serialize, Cache)]
#[cache(namespace = "user:profile", key = i64, codec = "json")]
pub struct UserProfile {
    pub name: String,
}

fn main() {}
