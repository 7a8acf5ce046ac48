//! How values are stored, against a real `redis-server`: large values compressed
//! (`compress = true`) behind their own header and read back, a decompression bomb read
//! as a corrupt entry, and values over the size limit (`max_bytes`, or the manager's
//! `max_value_bytes`) refused by every call without writing anything.

use std::collections::HashMap;

use cache_manager::{Cache, CacheError, cache_registry};
use cache_tests::{LogCapture, RedisServer, wire};

/// Text that compresses well, as most cached records do.
fn text_of(n: usize) -> String {
    "name=Ada Lovelace;email=ada@example.com;role=engineer;".repeat(n / 54 + 1)[..n].to_owned()
}

/// Values above the threshold are stored compressed.
#[derive(Cache)]
#[cache(namespace = "store:packed", key = u32, value = String, compress = true)]
pub struct PackedCache;

/// The same values, stored as they are.
#[derive(Cache)]
#[cache(namespace = "store:plain", key = u32, value = String)]
pub struct PlainCache;

/// At most 1000 bytes per stored value.
#[derive(Cache)]
#[cache(namespace = "store:small", key = u32, value = String, max_bytes = 1000)]
pub struct SmallCache;

cache_registry! {
    /// The caches under test.
    pub struct Storage {
        packed: PackedCache,
        plain: PlainCache,
        small: SmallCache,
    }
}

async fn connected(url: &str) -> Storage {
    let manager = Storage::new();
    manager.connect(url).await.expect("connect");
    manager
}

fn fingerprint(field: &str) -> u32 {
    Storage::CACHES
        .iter()
        .find(|c| c.field == field)
        .map(|c| c.fingerprint)
        .expect("a registered cache")
}

#[tokio::test]
async fn large_values_are_stored_compressed_and_read_back() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let raw = server.raw().await;
    let value = text_of(20_000);
    assert!(manager.packed().set(&1, &value).await.unwrap());
    assert!(manager.plain().set(&1, &value).await.unwrap());
    let packed = wire::get(&raw, &manager.packed().redis_key(&1))
        .await
        .unwrap();
    let plain = wire::get(&raw, &manager.plain().redis_key(&1))
        .await
        .unwrap();
    println!(
        "a 20 000-byte value: {} bytes stored compressed, {} plain",
        packed.len(),
        plain.len()
    );
    assert_eq!((packed[0], plain[0]), (0xCC, 0xCB), "the header says which");
    assert!(packed.len() * 5 < plain.len());
    assert_eq!(manager.packed().get(&1).await, Some(value.clone()));

    // A small value stays as it is; both read back through mget.
    assert!(manager.packed().set(&2, &"short".to_owned()).await.unwrap());
    let short = wire::get(&raw, &manager.packed().redis_key(&2)).await;
    assert_eq!(short.unwrap()[0], 0xCB);
    let entries: HashMap<u32, String> =
        (10..110).map(|k| (k, text_of(2000 + k as usize))).collect();
    assert!(manager.packed().mset(&entries).await.unwrap());
    let keys: Vec<u32> = (10..110).collect();
    let got = manager.packed().mget(&keys).await.unwrap();
    assert!(keys.iter().all(|k| got[k].as_ref() == Some(&entries[k])));
}

#[tokio::test]
async fn a_decompression_bomb_is_a_corrupt_entry_deleted_and_read_as_a_miss() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let raw = server.raw().await;
    // Claims 4 GiB of body from a few bytes.
    let mut bomb = vec![0xCC];
    bomb.extend_from_slice(&fingerprint("packed").to_le_bytes());
    bomb.extend_from_slice(&u32::MAX.to_le_bytes());
    bomb.extend_from_slice(&[0xff; 16]);
    let key = manager.packed().redis_key(&9);
    wire::set(&raw, &key, &bomb).await;
    assert_eq!(manager.packed().get(&9).await, None);
    assert!(!wire::exists(&raw, &key).await, "deleted as corrupt");
    assert_eq!(manager.packed().stats().corrupt_evicted, 1);
}

#[tokio::test]
async fn values_over_the_size_limit_are_refused_by_every_call_and_nothing_is_written() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let raw = server.raw().await;
    let small = manager.small();
    let big = text_of(2000);

    let err = small.set(&1, &big).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            CacheError::Validation {
                namespace: "store:small",
                ..
            }
        ),
        "{err}"
    );
    // 2000 bytes of text, its 3-byte length, the 5-byte header.
    assert!(
        text.contains("2008 bytes") && text.contains("1000 bytes"),
        "{text}"
    );
    assert!(!wire::exists(&raw, &small.redis_key(&1)).await);
    assert!(small.set(&2, &"fits".to_owned()).await.unwrap());
    let err = small
        .set_with_ttl(&1, &big, std::time::Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Validation { .. }) && err.to_string().contains("2008 bytes"),
        "{err}"
    );
    assert!(!wire::exists(&raw, &small.redis_key(&1)).await);

    let batch = HashMap::from([(3, "fits".to_owned()), (4, big.clone())]);
    assert!(matches!(
        small.mset(&batch).await,
        Err(CacheError::Validation { .. })
    ));
    assert!(
        !wire::exists(&raw, &small.redis_key(&3)).await,
        "a bad batch writes nothing"
    );

    // get_or_load returns the value, uncached, and says so once per key per minute.
    let logs = LogCapture::start();
    for _ in 0..3 {
        let got = small
            .get_or_load(&5, || async { Ok::<_, ()>(Some(big.clone())) })
            .await;
        assert_eq!(got, Ok(Some(big.clone())));
    }
    assert!(
        !wire::exists(&raw, &small.redis_key(&5)).await,
        "not cached"
    );
    let lines = logs.lines_at("WARN");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("too large to cache"), "{lines:?}");
    drop(logs);

    // The batch form too: every loaded value returned, the ones that fit cached, the
    // oversized one not.
    let found = small
        .mget_or_load(&[6, 7], |keys| {
            let big = big.clone();
            async move {
                Ok::<_, ()>(
                    keys.into_iter()
                        .map(|k| {
                            (
                                k,
                                if k == 6 {
                                    big.clone()
                                } else {
                                    "fits".to_owned()
                                },
                            )
                        })
                        .collect::<HashMap<_, _>>(),
                )
            }
        })
        .await
        .unwrap();
    assert_eq!(found.get(&6), Some(&big));
    assert_eq!(found.get(&7).map(String::as_str), Some("fits"));
    assert!(
        !wire::exists(&raw, &small.redis_key(&6)).await,
        "not cached"
    );
    assert!(wire::exists(&raw, &small.redis_key(&7)).await, "cached");
}

#[tokio::test]
async fn the_manager_wide_limit_applies_to_caches_without_their_own() {
    let server = RedisServer::new();
    let manager = connected(&format!("{}?max_value_bytes=500", server.url())).await;
    let err = manager.plain().set(&1, &text_of(600)).await.unwrap_err();
    assert!(
        err.to_string().contains("`max_value_bytes` of 500 bytes"),
        "{err}"
    );
    // A cache's own max_bytes wins.
    assert!(manager.small().set(&1, &text_of(900)).await.unwrap());
}
