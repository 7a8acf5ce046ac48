// `compress` and `max_bytes` set their consts of `Cache`; `compress = false` and
// `max_bytes` are allowed with any codec.

use std::time::Duration;

use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "report:daily", key = i64, compress = true, max_bytes = 1_048_576)]
pub struct DailyReport {
    pub rows: Vec<String>,
}

#[derive(Cache)]
#[cache(
    namespace = "session:token",
    key = String,
    value = String,
    codec = "json",
    compress = false,
    max_bytes = 536_870_912
)]
pub struct TokenCache;

cache_registry! {
    pub struct CacheManager {
        reports: DailyReportCache,
        tokens: TokenCache,
    }
}

const _: () = assert!(<DailyReportCache as Cache>::COMPRESS);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert!(<DailyReportCache as Cache>::COMPRESS);
    assert_eq!(<DailyReportCache as Cache>::MAX_BYTES, Some(1_048_576));
    assert_eq!(<DailyReportCache as Cache>::FAIL_SAFE, Duration::ZERO);
    assert!(!<TokenCache as Cache>::COMPRESS);
    assert_eq!(<TokenCache as Cache>::MAX_BYTES, Some(512 * 1024 * 1024));

    let manager = CacheManager::new();
    manager.connect("memory://").await.unwrap();
    let report = DailyReport { rows: vec!["a".into(), "b".into()] };
    assert!(manager.reports().set(&1, &report).await.unwrap());
    assert_eq!(manager.reports().get(&1).await, Some(report));
}
