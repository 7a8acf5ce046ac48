use cache_manager::Cache;
use std::cell::Cell;

// `Cell<i64>` is serde-compatible and `Send`, but not `Sync`: handles are shared
// between threads, so values must be both.
#[derive(Cache)]
#[cache(namespace = "counter", key = i64, value = Cell<i64>)]
pub struct CounterCache;

fn main() {}
