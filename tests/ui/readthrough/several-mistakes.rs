use cache_manager::Cache;

// Every mistake in the read-through keys is reported by one build: the zero fail-safe,
// the timeout over an hour, the refresh at 100 %, the negative TTL with json, the jitter
// above the TTL and the unknown single flight. The timeout does not also ask for a
// fail-safe: one is written, and its own error says what is wrong with it.
#[derive(Cache)]
#[cache(
    namespace = "user",
    ttl = 60,
    key = i64,
    value = String,
    codec = "json",
    fail_safe = 0,
    load_timeout_ms = 3600001,
    refresh_ahead = 100,
    negative_ttl = 30,
    ttl_jitter = 120,
    single_flight = "cluster"
)]
pub struct UserCache;

fn main() {}
