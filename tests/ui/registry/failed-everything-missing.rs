use cache_manager::{Cache, cache_registry};

// Namespace, key and value are all missing: one error, at the attribute; the registry
// and the calls below add none.
#[derive(Cache)]
#[cache()]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

async fn use_it(manager: &CacheManager) {
    let _: Option<String> = manager.names().get(&"ada".to_owned()).await;
    let _ = manager.names().set(&1, &2).await;
}

fn main() {
    let _ = use_it;
}
