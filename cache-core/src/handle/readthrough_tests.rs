//! Read-through with the keys that keep an application up when its database fails, on
//! `memory://` with tokio's paused clock: fail-safe, soft timeouts, refresh ahead,
//! negative caching, jitter. (Against a real Redis, and across instances for the global
//! single flight, in `tests/tests/readthrough.rs`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::backend::Backend;
use crate::codec;
use crate::manager::ManagerCore;
use crate::registry::CacheInfo;

/// Declares a test cache of `u32` keys and `String` values with the given settings.
macro_rules! cache {
    ($name:ident, $ns:literal, $loads:ty $(, $setting:ident: $ty:ty = $value:expr)* $(,)?) => {
        enum $name {}
        impl crate::__private::Declared for $name {}
        impl Cache for $name {
            type Key = u32;
            type Value = String;
            type Codec = codec::Bincode;
            type Local = crate::local::NoLocal;
            type Loads = $loads;
            const NAMESPACE: &'static str = $ns;
            const TTL: Duration = Duration::from_secs(60);
            const VERSION: u32 = 0;
            const FINGERPRINT: u32 = 7;
            $(const $setting: $ty = $value;)*
        }
    };
}

cache!(FailSafe, "fs", crate::loads::Inline, FAIL_SAFE: Duration = Duration::from_secs(600));
cache!(
    SoftTimeout,
    "soft",
    crate::loads::Background,
    FAIL_SAFE: Duration = Duration::from_secs(600),
    LOAD_TIMEOUT: Option<Duration> = Some(Duration::from_millis(100)),
);
cache!(RefreshAhead, "ahead", crate::loads::Background, REFRESH_AHEAD: u8 = 80);
cache!(Negative, "neg", crate::loads::Inline, NEGATIVE_TTL: Duration = Duration::from_secs(30));
cache!(Jitter, "jitter", crate::loads::Inline, TTL_JITTER: Duration = Duration::from_secs(20));
cache!(Plain, "plain", crate::loads::Inline);

static CACHES: &[CacheInfo] = &[];

/// A manager on `memory://` with a fail-safe throttle of 10 s.
async fn memory() -> ManagerCore {
    let core = ManagerCore::new(CACHES);
    let config = crate::CacheConfig::new().with_fail_safe_throttle(Duration::from_secs(10));
    core.connect_with("memory://", &config).await.unwrap();
    core
}

fn remaining(core: &ManagerCore, key: &str) -> Option<Duration> {
    match &*core.shared.backend() {
        Backend::Memory(m) => m.ttl(key),
        _ => panic!("not a memory backend"),
    }
}

/// A loader that counts its calls and answers `answer`.
fn counting<T: 'static>(
    calls: &AtomicUsize,
    answer: T,
) -> impl FnOnce() -> std::future::Ready<T> + '_ {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(answer)
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_answers_when_the_loader_fails_and_only_then() {
    let core = memory().await;
    let cache = core.cache::<FailSafe>("fs");
    let calls = AtomicUsize::new(0);
    cache.set(&1, &"old".to_owned()).await.unwrap();
    // Written for the TTL plus the fail-safe window.
    assert_eq!(
        remaining(&core, &cache.redis_key(&1)),
        Some(Duration::from_secs(660))
    );

    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(cache.get(&1).await, None, "a stale entry is a miss for get");
    assert_eq!(cache.mget(&[1]).await.unwrap()[&1], None, "and for mget");

    // The loader fails: the stale value answers instead of the error.
    let got = cache
        .get_or_load(&1, counting(&calls, Err::<Option<String>, _>("db down")))
        .await;
    assert_eq!(got, Ok(Some("old".to_owned())));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // ... and reads as fresh for the throttle: the failing loader is not asked again.
    for _ in 0..5 {
        let got = cache
            .get_or_load(&1, counting(&calls, Err::<Option<String>, _>("db down")))
            .await;
        assert_eq!(got, Ok(Some("old".to_owned())));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "throttled");
    tokio::time::advance(Duration::from_secs(11)).await;
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, &str>(Some("new".to_owned()))))
        .await;
    assert_eq!(
        got,
        Ok(Some("new".to_owned())),
        "past the throttle it loads again"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get(&1).await.as_deref(), Some("new"));

    // Without a fallback, the loader's error is the answer.
    let got = cache
        .get_or_load(&2, counting(&calls, Err::<Option<String>, _>("db down")))
        .await;
    assert_eq!(got, Err("db down"));

    // Past the fail-safe window the entry is gone: nothing to fall back on.
    cache.set(&3, &"old".to_owned()).await.unwrap();
    tokio::time::advance(Duration::from_secs(661)).await;
    let got = cache
        .get_or_load(&3, counting(&calls, Err::<Option<String>, _>("db down")))
        .await;
    assert_eq!(got, Err("db down"));
}

#[tokio::test(start_paused = true)]
async fn a_key_the_loader_no_longer_finds_drops_its_stale_entry() {
    let core = memory().await;
    let cache = core.cache::<FailSafe>("fs");
    let calls = AtomicUsize::new(0);
    cache.set(&1, &"old".to_owned()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, ()>(None)))
        .await;
    assert_eq!(got, Ok(None));
    let got = cache
        .get_or_load(&1, counting(&calls, Err::<Option<String>, _>("db down")))
        .await;
    assert_eq!(got, Err("db down"), "a deleted key is not resurrected");
}

#[tokio::test(start_paused = true)]
async fn a_slow_loader_is_answered_from_the_fallback_and_stores_when_it_lands() {
    let core = memory().await;
    let cache = core.cache::<SoftTimeout>("soft");
    cache.set(&1, &"old".to_owned()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;

    let started = tokio::time::Instant::now();
    let got = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, ()>(Some("new".to_owned()))
        })
        .await;
    assert_eq!(got, Ok(Some("old".to_owned())));
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "the soft timeout"
    );
    // While the load goes on, callers get the fallback at once; no second load starts.
    let calls = AtomicUsize::new(0);
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, ()>(Some("other".to_owned()))))
        .await;
    assert_eq!(got, Ok(Some("old".to_owned())));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cache.get(&1).await.as_deref(),
        Some("new"),
        "the background load stored its value"
    );

    // A loader that answers within the soft timeout is waited for.
    tokio::time::advance(Duration::from_secs(61)).await;
    let got = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(Some("newer".to_owned()))
        })
        .await;
    assert_eq!(got, Ok(Some("newer".to_owned())));

    // A background load that fails leaves the fallback, extended by the throttle.
    tokio::time::advance(Duration::from_secs(61)).await;
    let got = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err::<Option<String>, _>("db down")
        })
        .await;
    assert_eq!(got, Ok(Some("newer".to_owned())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cache.get(&1).await.as_deref(),
        Some("newer"),
        "fresh again for the throttle"
    );
}

#[tokio::test(start_paused = true)]
async fn a_background_load_that_never_lands_is_given_up_after_the_background_timeout() {
    let core = ManagerCore::new(CACHES);
    let config = crate::CacheConfig::new().with_background_timeout(Duration::from_secs(5));
    core.connect_with("memory://", &config).await.unwrap();
    let cache = core.cache::<SoftTimeout>("soft");
    cache.set(&1, &"old".to_owned()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;

    // A database that never answers: the caller gets the fallback at the soft timeout.
    let got = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, ()>(Some("never".to_owned()))
        })
        .await;
    assert_eq!(got, Ok(Some("old".to_owned())));
    // One load per key in the background: the next callers start none while it runs.
    let calls = AtomicUsize::new(0);
    tokio::time::advance(Duration::from_secs(4)).await;
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, ()>(Some("other".to_owned()))))
        .await;
    assert_eq!(got, Ok(Some("old".to_owned())));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a second load while one runs"
    );

    // Past the background timeout the hung load is dropped, and the key may load again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, ()>(Some("new".to_owned()))))
        .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the key stayed claimed by a hung load"
    );
    assert_eq!(got, Ok(Some("new".to_owned())));
    assert_eq!(cache.get(&1).await.as_deref(), Some("new"));
}

#[tokio::test(start_paused = true)]
async fn an_old_hit_answers_at_once_and_refreshes_in_the_background_once() {
    let core = memory().await;
    let cache = core.cache::<RefreshAhead>("ahead");
    cache.set(&1, &"v1".to_owned()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let slow_load = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, ()>(Some("v2".to_owned()))
        }
    };

    // Younger than 80% of the TTL: a plain hit.
    tokio::time::advance(Duration::from_secs(40)).await;
    let got = cache.get_or_load(&1, slow_load(calls.clone())).await;
    assert_eq!(
        (got, calls.load(Ordering::SeqCst)),
        (Ok(Some("v1".to_owned())), 0)
    );

    // Older: the caller does not wait, and one refresh runs however many callers come.
    tokio::time::advance(Duration::from_secs(10)).await;
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        let got = cache.get_or_load(&1, slow_load(calls.clone())).await;
        assert_eq!(got, Ok(Some("v1".to_owned())));
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "nobody waited");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one refresh per key at a time"
    );
    assert_eq!(cache.get(&1).await.as_deref(), Some("v2"));
    // Stored when the load landed, 1 s before this look, with the full TTL again
    // (it had 10 s left when the refresh began).
    assert_eq!(
        remaining(&core, &cache.redis_key(&1)),
        Some(Duration::from_secs(59)),
        "the refreshed entry has a new TTL"
    );
}

#[tokio::test(start_paused = true)]
async fn an_absence_is_remembered_for_its_own_ttl_until_a_write_replaces_it() {
    let core = memory().await;
    let cache = core.cache::<Negative>("neg");
    let calls = AtomicUsize::new(0);
    for _ in 0..10 {
        let got = cache
            .get_or_load(&1, counting(&calls, Ok::<_, ()>(None)))
            .await;
        assert_eq!(got, Ok(None));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one loader call for ten reads"
    );
    assert_eq!(cache.get(&1).await, None, "get reads the absence as a miss");
    assert_eq!(
        remaining(&core, &cache.redis_key(&1)),
        Some(Duration::from_secs(30))
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, ()>(None)))
        .await;
    assert_eq!(
        (got, calls.load(Ordering::SeqCst)),
        (Ok(None), 2),
        "it expired"
    );

    // A write replaces the remembered absence.
    assert!(cache.set(&1, &"now".to_owned()).await.unwrap());
    let got = cache
        .get_or_load(&1, counting(&calls, Ok::<_, ()>(None)))
        .await;
    assert_eq!(got, Ok(Some("now".to_owned())));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // The batch form remembers per key.
    let batch_calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let got = cache
            .mget_or_load(&[5, 6], |missing| {
                batch_calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(missing, vec![5, 6]);
                async { Ok::<_, ()>(HashMap::from([(5, "five".to_owned())])) }
            })
            .await
            .unwrap();
        assert_eq!(got, HashMap::from([(5, "five".to_owned())]));
    }
    assert_eq!(batch_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_expiry_of_writes_within_its_bound() {
    let core = memory().await;
    let cache = core.cache::<Jitter>("jitter");
    let entries: HashMap<u32, String> = (0..100).map(|k| (k, k.to_string())).collect();
    cache.mset(&entries).await.unwrap();
    for k in 100..200 {
        cache.set(&k, &k.to_string()).await.unwrap();
    }
    let ttls: Vec<Duration> = (0..200)
        .map(|k| remaining(&core, &cache.redis_key(&k)).unwrap())
        .collect();
    let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
    assert!(*min >= Duration::from_secs(60) && *max <= Duration::from_secs(80));
    assert!(
        *max - *min > Duration::from_secs(10),
        "200 writes spread over more than half the jitter: {min:?}..{max:?}"
    );
    // A write with its own TTL keeps it.
    cache
        .set_with_ttl(&1, &"x".to_owned(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        remaining(&core, &cache.redis_key(&1)),
        Some(Duration::from_secs(5))
    );
    // A cache without these keys writes exactly its TTL and reads plain entries.
    let plain = core.cache::<Plain>("plain");
    plain.set(&1, &"x".to_owned()).await.unwrap();
    assert_eq!(
        remaining(&core, &plain.redis_key(&1)),
        Some(Duration::from_secs(60))
    );
}

#[tokio::test(start_paused = true)]
async fn the_batch_form_falls_back_per_key_and_only_when_every_miss_can() {
    let core = memory().await;
    let cache = core.cache::<FailSafe>("fs");
    cache
        .mset(&HashMap::from([
            (1, "one".to_owned()),
            (2, "two".to_owned()),
        ]))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    cache.set(&3, &"three".to_owned()).await.unwrap();

    let failing = |_: Vec<u32>| async { Err::<HashMap<u32, String>, _>("db down") };
    let got = cache.mget_or_load(&[1, 2, 3], failing).await;
    assert_eq!(
        got,
        Ok(HashMap::from([
            (1, "one".to_owned()),
            (2, "two".to_owned()),
            (3, "three".to_owned())
        ])),
        "stale 1 and 2 answer for the failed load; 3 was fresh"
    );
    // Key 4 has no fallback: the error is the answer.
    let got = cache.mget_or_load(&[1, 4], failing).await;
    assert_eq!(got, Err("db down"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_ahead_is_not_retried_on_every_hit() {
    let core = memory().await;
    let cache = core.cache::<RefreshAhead>("ahead");
    cache.set(&1, &"v1".to_owned()).await.unwrap();
    tokio::time::advance(Duration::from_secs(50)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<Option<String>, _>("db down")
        }
    };
    for _ in 0..20 {
        let got = cache.get_or_load(&1, failing(calls.clone())).await;
        assert_eq!(got, Ok(Some("v1".to_owned())));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one failed refresh, then none within the fail-safe throttle (10 s)"
    );
}
