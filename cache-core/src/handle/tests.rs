//! The calls of a handle on `memory://`, with tokio's paused clock for TTLs.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::codec::{self, FRAME_TAG};
use crate::manager::ManagerCore;
use crate::registry::CacheInfo;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    tags: Vec<String>,
}

enum Profiles {}
impl crate::__private::Declared for Profiles {}
impl Cache for Profiles {
    type Key = i64;
    type Value = Profile;
    type Codec = codec::Bincode;
    type Local = crate::local::NoLocal;
    type Loads = crate::loads::Inline;
    const NAMESPACE: &'static str = "user:profile";
    const TTL: Duration = Duration::from_secs(600);
    const VERSION: u32 = 0;
    const FINGERPRINT: u32 = 0x1234_5678;
}

/// The same namespace and type as `Profiles`, declared with another version.
enum ProfilesV2 {}
impl crate::__private::Declared for ProfilesV2 {}
impl Cache for ProfilesV2 {
    type Key = i64;
    type Value = Profile;
    type Codec = codec::Bincode;
    type Local = crate::local::NoLocal;
    type Loads = crate::loads::Inline;
    const NAMESPACE: &'static str = "user:profile";
    const TTL: Duration = Duration::from_secs(600);
    const VERSION: u32 = 2;
    const FINGERPRINT: u32 = 0x8765_4321;
}

enum Sessions {}
impl crate::__private::Declared for Sessions {}
impl Cache for Sessions {
    type Key = String;
    type Value = i64;
    type Codec = codec::Text;
    type Local = crate::local::NoLocal;
    type Loads = crate::loads::Inline;
    const NAMESPACE: &'static str = "session:token";
    const TTL: Duration = Duration::from_secs(300);
    const VERSION: u32 = 0;
    const FINGERPRINT: u32 = 0;
}

/// A value serde_json cannot encode: map keys must be strings.
enum Unencodable {}
impl crate::__private::Declared for Unencodable {}
impl Cache for Unencodable {
    type Key = i64;
    type Value = HashMap<Vec<u8>, i64>;
    type Codec = codec::Json;
    type Local = crate::local::NoLocal;
    type Loads = crate::loads::Inline;
    const NAMESPACE: &'static str = "bad";
    const TTL: Duration = Duration::from_secs(60);
    const VERSION: u32 = 0;
    const FINGERPRINT: u32 = 0;
}

static CACHES: &[CacheInfo] = &[];

async fn memory() -> ManagerCore {
    let core = ManagerCore::new(CACHES);
    core.connect("memory://").await.unwrap();
    core
}

fn store(core: &ManagerCore) -> Arc<Backend> {
    core.shared.backend()
}

fn with_store<R>(
    core: &ManagerCore,
    f: impl FnOnce(&crate::backend::memory::MemoryStore) -> R,
) -> R {
    match &*store(core) {
        Backend::Memory(m) => f(m),
        _ => panic!("not a memory backend"),
    }
}

fn ada() -> Profile {
    Profile {
        name: "Ada".into(),
        tags: vec!["math".into()],
    }
}

#[tokio::test]
async fn calls_degrade_before_connect_and_after_disconnect() {
    let core = ManagerCore::new(CACHES);
    let cache = core.cache::<Profiles>("test");
    assert_eq!(cache.get(&1).await, None);
    assert!(!cache.set(&1, &ada()).await.unwrap());
    assert!(!cache.mset(&HashMap::from([(1, ada())])).await.unwrap());
    assert_eq!(
        cache.mget(&[1, 2]).await.unwrap(),
        HashMap::from([(1, None), (2, None)])
    );
    assert!(!cache.invalidate(&1).await);

    core.connect("memory://").await.unwrap();
    assert!(cache.set(&1, &ada()).await.unwrap());
    assert_eq!(cache.get(&1).await, Some(ada()));

    core.disconnect().await;
    assert_eq!(cache.get(&1).await, None);
    assert!(!cache.set(&1, &ada()).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_the_declared_ttl() {
    let core = memory().await;
    let cache = core.cache::<Sessions>("test");
    cache.set(&"tok".to_owned(), &7).await.unwrap();
    assert_eq!(
        with_store(&core, |m| m.ttl("session:token:tok")),
        Some(Duration::from_secs(300))
    );
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(cache.get(&"tok".to_owned()).await, Some(7));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(cache.get(&"tok".to_owned()).await, None);
    assert!(
        !cache.invalidate(&"tok".to_owned()).await,
        "an expired entry is not removed"
    );
}

#[tokio::test(start_paused = true)]
async fn set_with_ttl_uses_millisecond_precision() {
    let core = memory().await;
    let cache = core.cache::<Sessions>("test");
    let key = "t".to_owned();
    cache
        .set_with_ttl(&key, &1, Duration::from_micros(1_500_900))
        .await
        .unwrap();
    assert_eq!(
        with_store(&core, |m| m.ttl("session:token:t")),
        Some(Duration::from_millis(1500))
    );
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(cache.get(&key).await, None);
}

#[tokio::test]
async fn set_with_ttl_rejects_ttls_outside_the_range_and_names_it() {
    let core = memory().await;
    let cache = core.cache::<Sessions>("test");
    let key = "t".to_owned();
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_TTL + Duration::from_millis(1),
        Duration::MAX,
    ] {
        let err = cache.set_with_ttl(&key, &1, ttl).await.unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::Validation {
                    namespace: "session:token",
                    ..
                }
            ),
            "{err}"
        );
        let range = "from 1 ms to 4611686018427387903 ms";
        let given = format!("got {ttl:?}");
        let text = err.to_string();
        assert!(text.contains(range) && text.contains(&given), "{text}");
    }
    assert_eq!(with_store(&core, |m| m.len()), 0);
    for ttl in [Duration::from_millis(1), MAX_TTL] {
        assert!(cache.set_with_ttl(&key, &1, ttl).await.unwrap(), "{ttl:?}");
    }
}

#[tokio::test]
async fn get_deletes_corrupt_entry() {
    let core = memory().await;
    let cache = core.cache::<Profiles>("test");
    for garbage in [
        &b"not bincode"[..],
        &[FRAME_TAG, 0x78, 0x56, 0x34, 0x12, 0xff][..],
        &[][..],
    ] {
        with_store(&core, |m| m.put_raw(&cache.redis_key(&1), garbage));
        assert_eq!(cache.get(&1).await, None);
        assert_eq!(
            with_store(&core, |m| m.get(&cache.redis_key(&1))),
            None,
            "{garbage:?} not deleted"
        );
    }
}

#[tokio::test]
async fn entries_of_another_version_live_beside_this_ones() {
    let core = memory().await;
    let v1 = core.cache::<Profiles>("test");
    let v2 = core.cache::<ProfilesV2>("test");
    assert_ne!(v1.redis_key(&1), v2.redis_key(&1), "a key per layout");
    v1.set(&1, &ada()).await.unwrap();
    assert_eq!(
        v2.get(&1).await,
        None,
        "another version's entry is not read"
    );
    assert_eq!(with_store(&core, |m| m.len()), 1, "nor deleted");
    v2.set(&1, &ada()).await.unwrap();
    assert_eq!(v2.get(&1).await, Some(ada()));
    assert_eq!(v1.get(&1).await, Some(ada()), "each version reads its own");
}

#[tokio::test]
async fn mget_returns_one_entry_per_distinct_key_and_evicts_corrupt_ones() {
    let core = memory().await;
    let cache = core.cache::<Profiles>("test");
    cache.set(&1, &ada()).await.unwrap();
    with_store(&core, |m| m.put_raw(&cache.redis_key(&2), b"junk"));
    let got = cache.mget(&[1, 2, 3, 1, 2]).await.unwrap();
    assert_eq!(got, HashMap::from([(1, Some(ada())), (2, None), (3, None)]));
    assert_eq!(with_store(&core, |m| m.get(&cache.redis_key(&2))), None);
    assert_eq!(cache.get(&1).await, Some(ada()), "good entries stay");
}

#[tokio::test]
async fn batches_over_the_limit_are_rejected_and_send_nothing() {
    let core = memory().await;
    let cache = core.cache::<Sessions>("test");
    let keys: Vec<String> = (0..=MAX_BATCH).map(|i| i.to_string()).collect();
    let err = cache.mget(&keys).await.unwrap_err();
    assert!(matches!(
        err,
        CacheError::Validation {
            namespace: "session:token",
            ..
        }
    ));
    assert!(err.to_string().contains("101 keys"), "{err}");
    // Duplicates do not count against the limit.
    let mut dup = keys[..MAX_BATCH].to_vec();
    dup.push(keys[0].clone());
    assert_eq!(cache.mget(&dup).await.unwrap().len(), MAX_BATCH);

    let entries: HashMap<String, i64> = keys.iter().cloned().zip(0..).collect();
    let err = cache.mset(&entries).await.unwrap_err();
    assert!(matches!(err, CacheError::Validation { .. }), "{err}");
    assert_eq!(
        with_store(&core, |m| m.len()),
        0,
        "a rejected batch wrote something"
    );

    let entries: HashMap<String, i64> = keys[..MAX_BATCH].iter().cloned().zip(0..).collect();
    assert!(cache.mset(&entries).await.unwrap());
    assert_eq!(with_store(&core, |m| m.len()), MAX_BATCH);
}

#[tokio::test]
async fn a_value_that_cannot_be_encoded_is_an_error_and_writes_nothing() {
    let core = memory().await;
    let cache = core.cache::<Unencodable>("test");
    let bad = HashMap::from([(vec![1u8], 1)]);
    let err = cache.set(&1, &bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::Serialization {
                namespace: "bad",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cache `bad`"), "{err}");
    let good = HashMap::new();
    let err = cache.mset([(&1, &good), (&2, &bad)]).await.unwrap_err();
    assert!(matches!(err, CacheError::Serialization { .. }));
    assert_eq!(
        with_store(&core, |m| m.len()),
        0,
        "a batch with a bad value wrote something"
    );
}

#[tokio::test]
async fn mset_writes_every_entry_with_the_ttl_and_the_last_duplicate_wins() {
    let core = memory().await;
    let cache = core.cache::<Sessions>("test");
    let (a, b) = ("a".to_owned(), "b".to_owned());
    assert!(cache.mset([(&a, &1), (&b, &2), (&a, &3)]).await.unwrap());
    assert_eq!(cache.get(&a).await, Some(3));
    assert_eq!(cache.get(&b).await, Some(2));
    let ttl = with_store(&core, |m| m.ttl("session:token:b")).unwrap();
    assert!(
        ttl > Duration::from_secs(299) && ttl <= Duration::from_secs(300),
        "{ttl:?}"
    );
}

#[tokio::test]
async fn invalidate_reports_whether_an_entry_was_removed() {
    let core = memory().await;
    let cache = core.cache::<Profiles>("test");
    cache.set(&9, &ada()).await.unwrap();
    assert!(cache.invalidate(&9).await);
    assert!(!cache.invalidate(&9).await);
    assert_eq!(cache.get(&9).await, None);
}

#[tokio::test]
async fn connect_replaces_the_backend() {
    let core = memory().await;
    let cache = core.cache::<Profiles>("test");
    cache.set(&1, &ada()).await.unwrap();
    core.connect("memory://").await.unwrap();
    assert_eq!(cache.get(&1).await, None, "a new memory:// starts empty");
}

#[tokio::test]
async fn health_follows_the_connection() {
    let core = ManagerCore::new(CACHES);
    let h = core.health().await;
    assert_eq!(
        (h.status, h.healthy, h.backend),
        (crate::HealthStatus::Disconnected, false, "none")
    );
    core.connect("memory://").await.unwrap();
    let h = core.health().await;
    assert_eq!(
        (h.status, h.healthy, h.backend),
        (crate::HealthStatus::Connected, true, "memory")
    );
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(json["status"], "connected");
    assert_eq!(json["healthy"], true);
}

#[tokio::test]
async fn counters_track_hits_misses_corrupt_entries_and_degraded_calls() {
    let core = ManagerCore::new(CACHES);
    let cache = core.cache::<Profiles>("profiles");
    cache.get(&1).await;
    cache.set(&1, &ada()).await.unwrap();
    let s = cache.stats();
    assert_eq!((s.degraded, s.hits, s.misses, s.timeouts), (2, 0, 0, 0));

    core.connect("memory://").await.unwrap();
    cache.set(&1, &ada()).await.unwrap();
    cache.get(&1).await;
    cache.get(&2).await;
    cache.mget(&[1, 2, 3]).await.unwrap();
    with_store(&core, |m| m.put_raw(&cache.redis_key(&4), b"junk"));
    cache.get(&4).await;
    let s = cache.stats();
    assert_eq!((s.field, s.namespace), ("profiles", "user:profile"));
    assert_eq!(
        (s.hits, s.misses, s.corrupt_evicted, s.degraded),
        (2, 4, 1, 2)
    );
    assert_eq!(core.stats(), vec![s]);
}

#[tokio::test]
async fn redis_keys_are_namespace_colon_key_with_the_layout_of_bincode_entries() {
    let core = memory().await;
    assert_eq!(
        core.cache::<Profiles>("test").redis_key(&-3),
        "user:profile@12345678:-3"
    );
    assert_eq!(
        core.cache::<Sessions>("test").redis_key(&"a:b".to_owned()),
        "session:token:a:b"
    );
}

/// `Profiles` with `hash_tag = true`.
enum TaggedProfiles {}
impl crate::__private::Declared for TaggedProfiles {}
impl Cache for TaggedProfiles {
    type Key = i64;
    type Value = Profile;
    type Codec = codec::Bincode;
    type Local = crate::local::NoLocal;
    type Loads = crate::loads::Inline;
    const NAMESPACE: &'static str = "user:profile";
    const TTL: Duration = Duration::from_secs(600);
    const VERSION: u32 = 0;
    const FINGERPRINT: u32 = 0x1234_5678;
    const HASH_TAG: bool = true;
}

#[tokio::test]
async fn hash_tagged_keys_put_the_namespace_in_braces() {
    let core = memory().await;
    let cache = core.cache::<TaggedProfiles>("test");
    assert_eq!(cache.redis_key(&-3), "{user:profile}@12345678:-3");
    assert_eq!(
        crate::backend::cluster::slot(cache.redis_key(&1).as_bytes()),
        crate::backend::cluster::slot(cache.redis_key(&2).as_bytes())
    );
    assert!(cache.set(&7, &ada()).await.unwrap());
    assert!(with_store(&core, |m| m
        .get("{user:profile}@12345678:7")
        .is_some()));
    assert_eq!(
        core.cache::<Profiles>("test").get(&7).await,
        None,
        "the untagged cache of the same namespace has other keys"
    );
    assert_eq!(cache.get(&7).await, Some(ada()));
}

#[tokio::test]
async fn minvalidate_counts_removed_entries_and_limits_batches() {
    let core = memory().await;
    let cache = core.cache::<Profiles>("test");
    cache
        .mset(&HashMap::from([(1, ada()), (2, ada()), (3, ada())]))
        .await
        .unwrap();
    assert_eq!(cache.minvalidate(&[1, 2, 2, 9]).await.unwrap(), 2);
    assert_eq!(
        cache.mget(&[1, 2, 3]).await.unwrap(),
        HashMap::from([(1, None), (2, None), (3, Some(ada()))])
    );
    assert_eq!(cache.minvalidate(&[]).await.unwrap(), 0);
    let too_many: Vec<i64> = (0..=MAX_BATCH as i64).collect();
    assert!(matches!(
        cache.minvalidate(&too_many).await,
        Err(CacheError::Validation { .. })
    ));
    assert_eq!(
        cache.get(&3).await,
        Some(ada()),
        "a rejected batch deletes nothing"
    );

    core.disconnect().await;
    assert_eq!(cache.minvalidate(&[3]).await.unwrap(), 0);
    assert_eq!(cache.stats().degraded, 1);
}

/// `Profiles` with a first level.
enum LocalProfiles {}
impl crate::__private::Declared for LocalProfiles {}
impl Cache for LocalProfiles {
    type Key = i64;
    type Value = Profile;
    type Codec = codec::Bincode;
    type Local = crate::local::Moka<Profile>;
    type Loads = crate::loads::Inline;
    const NAMESPACE: &'static str = "user:local";
    const TTL: Duration = Duration::from_secs(600);
    const VERSION: u32 = 0;
    const FINGERPRINT: u32 = 0x1234_5678;
    const LOCAL_CAPACITY: u64 = 10;
}

#[tokio::test(flavor = "current_thread")]
async fn a_write_dropped_unfinished_still_forgets_the_copy_a_read_put_back_meanwhile() {
    let core = memory().await;
    let cache = core.cache::<LocalProfiles>("local");
    let key = cache.redis_key(&1);
    // A write starts: its first forget runs, then it waits on Redis (here, forever).
    let mut write = Box::pin(cache.forgetting([key.as_str()], std::future::pending::<()>));
    assert!(futures_util::FutureExt::now_or_never(write.as_mut()).is_none());
    // Meanwhile a read of this instance, begun after that forget, puts the old value
    // in: its generation is current.
    let level = cache.local().expect("memory:// keeps the level readable");
    level.insert_if_current(key.clone(), &ada(), level.generation(&key), None);
    assert_eq!(level.get(&key), Some(ada()));
    // The caller gives up on the write, which may have landed in Redis: the copy read
    // before it must go, as no announcement of this instance's own write comes back.
    drop(write);
    assert_eq!(
        level.get(&key),
        None,
        "a copy older than the write stays in the level"
    );
}

/// Runs `call` 1000 times in a row on a current-thread runtime beside a task that
/// counts how often it ran: a call that completes without waiting must still yield
/// to the runtime now and then (tokio's cooperative budget), or the other task never
/// runs until the loop ends.
async fn other_task_runs_during<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let other = tokio::spawn({
        let ran = Arc::clone(&ran);
        async move {
            loop {
                ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    for _ in 0..1000 {
        call().await;
    }
    let runs = ran.load(std::sync::atomic::Ordering::Relaxed);
    other.abort();
    assert!(
        runs >= 2,
        "{what}: 1000 calls in a row let another task run only {runs} times: the call never yields"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn every_call_that_completes_at_once_yields_to_the_runtime() {
    let core = memory().await;
    let cache = core.cache::<Profiles>("test");
    let local = core.cache::<LocalProfiles>("local");
    cache.set(&1, &ada()).await.unwrap();
    local.set(&1, &ada()).await.unwrap();
    assert_eq!(local.get(&1).await, Some(ada()));
    let too_many: Vec<i64> = (0..=MAX_BATCH as i64).collect();
    let (value, nothing) = (ada(), HashMap::new());
    other_task_runs_during("get on memory://", || cache.get(&1)).await;
    other_task_runs_during("first-level hit", || local.get(&1)).await;
    other_task_runs_during("set on memory://", || cache.set(&1, &value)).await;
    other_task_runs_during("set_with_ttl rejected", || {
        cache.set_with_ttl(&1, &value, Duration::ZERO)
    })
    .await;
    other_task_runs_during("empty mget", || cache.mget(&[])).await;
    other_task_runs_during("mget over the limit", || cache.mget(&too_many)).await;
    other_task_runs_during("mget of first-level hits", || local.mget(&[1])).await;
    other_task_runs_during("empty mset", || cache.mset(&nothing)).await;
    other_task_runs_during("invalidate", || cache.invalidate(&2)).await;
    other_task_runs_during("empty minvalidate", || cache.minvalidate(&[])).await;
    other_task_runs_during("clear", || cache.clear()).await;
    other_task_runs_during("health", || core.health()).await;
    other_task_runs_during("get_or_load hit", || {
        cache.get_or_load(&1, || async { Ok::<_, ()>(None) })
    })
    .await;
    other_task_runs_during("get_or_load of a key the loader has not", || {
        cache.get_or_load(&3, || async { Ok::<_, ()>(None) })
    })
    .await;
    other_task_runs_during("mget_or_load hit", || {
        cache.mget_or_load(&[1], |_| async { Ok::<_, ()>(HashMap::new()) })
    })
    .await;
    other_task_runs_during("empty mget_or_load", || {
        cache.mget_or_load(&[], |_| async { Ok::<_, ()>(HashMap::new()) })
    })
    .await;

    core.disconnect().await;
    other_task_runs_during("get, not connected", || cache.get(&1)).await;
    other_task_runs_during("set, not connected", || cache.set(&1, &value)).await;
    other_task_runs_during("mget, not connected", || cache.mget(&[1, 2])).await;
}

/// A registry's `new()` builds each handle from its `CacheInfo`, unboxed as the field's
/// type: the handle is the cache's own (its namespace, its first level), and asking for
/// another type than the one registered is refused, never a handle of the wrong type.
#[tokio::test]
async fn a_registered_handle_is_built_for_its_own_cache() {
    static REGISTERED: &[CacheInfo] = &[
        CacheInfo::__new::<Profiles>("profiles"),
        CacheInfo::__new::<Sessions>("sessions"),
    ];
    let core = ManagerCore::new(REGISTERED);
    core.connect("memory://").await.unwrap();
    let profiles = core.registered::<Profiles>("profiles");
    let sessions = core.registered::<Sessions>("sessions");
    assert_eq!(profiles.namespace(), Profiles::NAMESPACE);
    assert_eq!(sessions.namespace(), Sessions::NAMESPACE);
    assert!(profiles.set(&1, &ada()).await.unwrap());
    assert_eq!(profiles.get(&1).await, Some(ada()));
    assert_eq!(
        format!("{profiles:?}"),
        format!("{:?}", core.cache::<Profiles>("x"))
    );

    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        core.registered::<Sessions>("profiles")
    }));
    let message = *wrong.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("no cache `profiles` of type"), "{message}");
    let unknown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        core.registered::<Profiles>("nope")
    }));
    assert!(unknown.is_err());
}

/// The metric keys a workload registers, by name.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl Recorded {
    fn note(&self, key: &metrics::Key) {
        let mut names = self.0.lock().unwrap();
        names.push(key.name().to_owned());
    }
}

impl metrics::Recorder for Recorded {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.note(key);
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.note(key);
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.note(key);
        metrics::Histogram::noop()
    }
}

/// With the `metrics` feature every call records its latency and its hit or miss;
/// without it nothing reaches a recorder, whichever is installed. `cargo test
/// --workspace` builds this crate with the feature (the example service asks for it);
/// `tests/tests/metrics_off.rs` runs this test again on a build without it.
#[test]
fn metrics_are_recorded_only_with_the_feature() {
    let recorded = Recorded::default();
    metrics::with_local_recorder(&recorded, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let core = memory().await;
            let cache = core.cache::<Profiles>("test");
            assert_eq!(cache.get(&1).await, None);
            assert!(cache.set(&1, &ada()).await.unwrap());
            assert_eq!(cache.get(&1).await, Some(ada()));
            assert!(cache.invalidate(&1).await);
        });
    });
    let names = recorded.0.into_inner().unwrap();
    let feature = if cfg!(feature = "metrics") {
        "on"
    } else {
        "off"
    };
    println!("with the metrics feature {feature}, recorded: {names:?}");
    if cfg!(feature = "metrics") {
        for name in [
            "cache_operation_duration_seconds",
            "cache_hits_total",
            "cache_misses_total",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
    } else {
        assert_eq!(names, Vec::<String>::new());
    }
}
