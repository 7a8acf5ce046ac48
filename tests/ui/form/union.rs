use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "bits", key = i64)]
pub union Bits {
    pub int: u64,
    pub float: f64,
}

fn main() {}
