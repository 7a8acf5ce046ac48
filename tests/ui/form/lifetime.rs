use cache_manager::Cache;
use serde::Serialize;

#[derive(Serialize, Cache)]
#[cache(namespace = "name", key = i64)]
pub struct Name<'a> {
    pub text: &'a str,
}

fn main() {}
