use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "price", key = f64, value = String)]
pub struct PriceCache;

fn main() {}
