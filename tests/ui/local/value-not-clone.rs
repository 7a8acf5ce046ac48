use cache_manager::Cache;
use serde::{Deserialize, Serialize};

// An in-process level hands out copies, so its values must be `Clone`.
#[derive(Serialize, Deserialize)]
pub struct Token {
    pub secret: String,
}

#[derive(Cache)]
#[cache(namespace = "token", key = i64, value = Token, local = 100)]
pub struct TokenCache;

fn main() {}
