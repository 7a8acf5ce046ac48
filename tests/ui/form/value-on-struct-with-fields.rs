use cache_manager::Cache;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64, value = String)]
pub struct UserProfile {
    pub name: String,
}

fn main() {}
