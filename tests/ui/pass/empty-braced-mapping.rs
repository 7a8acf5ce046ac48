use cache_manager::{cache_registry, Cache};

// A struct without fields declares a mapping whether it is written `;`, `{}` or `()`.
#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String)]
pub struct UserCache {}

#[derive(Cache)]
#[cache(namespace = "order", key = i64, value = String)]
pub struct OrderCache();

cache_registry! {
    pub struct CacheManager {
        users: UserCache,
        orders: OrderCache,
    }
}

fn main() {
    let _ = CacheManager::new().users().namespace();
}
