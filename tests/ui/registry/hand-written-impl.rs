//! `Cache` is implemented by `#[derive(Cache)]` only: a hand-written impl would skip
//! the declaration's checks and its fingerprint.
use cache_manager::Cache;
use std::time::Duration;

pub struct HandMade;

impl Cache for HandMade {
    type Key = i64;
    type Value = String;
    type Codec = cache_manager::codec::Json;
    type Local = cache_manager::__private::NoLocal;
    type Loads = cache_manager::__private::Inline;
    const NAMESPACE: &'static str = "hand:made";
    const TTL: Duration = Duration::from_secs(60);
    const VERSION: u32 = 0;
    const FINGERPRINT: u32 = 0;
}

fn main() {}
