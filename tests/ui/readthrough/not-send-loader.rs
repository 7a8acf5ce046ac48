//! A cache whose loads may outlive their caller (`refresh_ahead`) runs them on a task of
//! their own, so the loader's future must be `Send`.
use std::rc::Rc;

use cache_manager::{cache_registry, Cache};

#[derive(Cache)]
#[cache(namespace = "user:score", key = i64, value = u64, refresh_ahead = 80)]
pub struct ScoreCache;

cache_registry! {
    pub struct CacheManager {
        scores: ScoreCache,
    }
}

async fn read(manager: &CacheManager) {
    let _ = manager
        .scores()
        .get_or_load(&1, || async {
            let local = Rc::new(7u64);
            std::future::ready(()).await;
            Ok::<_, std::io::Error>(Some(*local))
        })
        .await;
}

fn main() {
    let _ = read;
}
