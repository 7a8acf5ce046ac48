use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "", key = i64, value = String)]
pub struct EmptyCache;

fn main() {}
