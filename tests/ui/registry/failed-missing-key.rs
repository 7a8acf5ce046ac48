use cache_manager::{Cache, cache_registry};

// The key type is missing: the registry and the calls below add no follow-on errors.
#[derive(Cache)]
#[cache(namespace = "user:name", value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

async fn use_it(manager: &CacheManager) {
    let _: Option<String> = manager.names().get(&1).await;
    let _ = manager.names().set(&1, &"ada".to_owned()).await;
    let _ = manager.names().mget(&[1, 2]).await;
}

fn main() {
    let _ = use_it;
}
