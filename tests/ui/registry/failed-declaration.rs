use cache_manager::{Cache, cache_registry};

// The only error is the namespace: the registry and the calls below must not add
// follow-on errors about the broken declaration.
#[derive(Cache)]
#[cache(namespace = "user name", key = i64, value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

async fn use_it(manager: &CacheManager) {
    let _: Option<String> = manager.names().get(&1).await;
    let _ = manager.names().set(&1, &"ada".to_owned()).await;
}

fn main() {
    let _ = use_it;
}
