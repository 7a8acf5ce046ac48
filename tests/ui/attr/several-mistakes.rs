use cache_manager::Cache;

// Every mistake is reported by one build: the bad namespace, the zero TTL, the unknown
// key, the unknown codec and the negative version.
#[derive(Cache)]
#[cache(
    namespace = "user profile",
    ttl = 0,
    expiry = 60,
    key = i64,
    value = String,
    codec = "yaml",
    version = -1
)]
pub struct UserCache;

fn main() {}
