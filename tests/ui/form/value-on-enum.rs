use cache_manager::Cache;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Cache)]
#[cache(namespace = "user:role", key = i64, value = u8)]
pub enum Role {
    Admin,
    Member,
}

fn main() {}
