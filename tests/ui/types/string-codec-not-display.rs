use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user:tags", key = i64, value = Vec<String>, codec = "string")]
pub struct UserTagsCache;

fn main() {}
