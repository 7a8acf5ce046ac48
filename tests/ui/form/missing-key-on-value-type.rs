use cache_manager::Cache;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile")]
pub struct UserProfile {
    pub name: String,
}

fn main() {}
