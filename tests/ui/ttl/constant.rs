use cache_manager::Cache;

const TEN_MINUTES: u64 = 600;

#[derive(Cache)]
#[cache(namespace = "user", ttl = TEN_MINUTES, key = i64, value = String)]
pub struct UserCache;

fn main() {
    let _ = TEN_MINUTES;
}
