use cache_manager::Cache;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Cache)]
#[cache(namespace = "page", key = i64)]
pub struct Page<T> {
    pub items: Vec<T>,
}

fn main() {}
