//! Typed, Redis-backed caches, declared with `#[derive(Cache)]` and registered at compile
//! time with [`cache_registry!`].
//!
//! ```
//! use cache_manager::{cache_registry, Cache};
//! use serde::{Deserialize, Serialize};
//! use uuid::Uuid;
//!
//! /// A mapping between existing types, declared on a unit struct (form A).
//! #[derive(Cache)]
//! #[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
//! pub struct UserUuidToIdCache;
//!
//! /// A value type that is cached itself (form B): the derive generates `UserProfileCache`.
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
//! #[cache(namespace = "user:profile", key = i64)]
//! pub struct UserProfile {
//!     pub name: String,
//! }
//!
//! cache_registry! {
//!     /// Every cache of this application.
//!     pub struct CacheManager {
//!         uuid_to_id: UserUuidToIdCache,
//!         profiles: UserProfileCache,
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_manager::CacheError> {
//! let manager = CacheManager::new();
//! let id = Uuid::new_v4();
//!
//! // Before `connect`, caches degrade: reads miss, writes report `false`.
//! assert_eq!(manager.uuid_to_id().get(&id).await, None);
//! assert_eq!(manager.uuid_to_id().set(&id, &42).await?, false);
//!
//! // or "redis://:password@127.0.0.1:6379/0", "rediss://...?ca_file=/etc/redis/ca.pem",
//! // "redis+cluster://:password@10.0.0.1:6379,10.0.0.2:6379",
//! // "redis+sentinel://:password@10.0.0.1:26379,10.0.0.2:26379/mymaster/0"
//! manager.connect("memory://").await?;
//! assert!(manager.uuid_to_id().set(&id, &42).await?);
//! assert_eq!(manager.uuid_to_id().get(&id).await, Some(42));
//!
//! let ada = UserProfile { name: "Ada".into() };
//! manager.profiles().set(&1, &ada).await?;
//! assert_eq!(manager.profiles().get(&1).await, Some(ada));
//! assert!(manager.health().await.healthy);
//! # Ok(())
//! # }
//! ```
//!
//! # Read-through
//!
//! `get_or_load` reads a key and, on a miss, runs the loader once for all concurrent
//! callers of that key in the process (single flight), caching what it found.
//! `mget_or_load` does the same for many keys with one loader call for all misses.
//!
//! ```
//! # use cache_manager::{cache_registry, Cache};
//! # use uuid::Uuid;
//! # #[derive(Cache)]
//! # #[cache(namespace = "user:uuid_to_id", key = Uuid, value = i64)]
//! # struct UserUuidToIdCache;
//! # cache_registry! { struct CacheManager { uuid_to_id: UserUuidToIdCache } }
//! /// The database, which knows every user's id.
//! async fn id_from_database(uuid: Uuid) -> Result<Option<i64>, std::io::Error> {
//!     Ok(Some(7))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let manager = CacheManager::new();
//! # manager.connect("memory://").await?;
//! let uuid = Uuid::new_v4();
//! let id = manager.uuid_to_id().get_or_load(&uuid, || id_from_database(uuid)).await?;
//! assert_eq!(id, Some(7));
//! assert_eq!(manager.uuid_to_id().get(&uuid).await, Some(7)); // cached by the load
//! # Ok(())
//! # }
//! ```
//!
//! # Caching a function
//!
//! `#[cached]` turns an `async fn` into a read-through: its body becomes the loader of
//! [`get_or_load`](TypedCache::get_or_load), so single flight, fail-safe, the soft
//! timeout, refresh ahead and negative caching all apply, and the signature does not
//! change. `#[invalidates]` removes a key (or `keys = ...`, an iterator) after a body
//! that succeeded.
//!
//! ```
//! use cache_manager::{cache_registry, cached, invalidates, Cache};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
//! #[cache(namespace = "user:profile", key = i64)]
//! pub struct UserProfile {
//!     pub name: String,
//! }
//!
//! cache_registry! {
//!     pub struct CacheManager {
//!         profiles: UserProfileCache,
//!     }
//! }
//!
//! # #[derive(Default)]
//! # pub struct Db(std::sync::Mutex<std::collections::HashMap<i64, String>>);
//! # #[derive(Debug)]
//! # pub struct DbError;
//! # pub struct User { id: i64, name: String }
//! # impl Db {
//! #     async fn profile(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
//! #         Ok(self.0.lock().unwrap().get(&id).map(|name| UserProfile { name: name.clone() }))
//! #     }
//! #     async fn update(&self, user: &User) -> Result<(), DbError> {
//! #         self.0.lock().unwrap().insert(user.id, user.name.clone());
//! #         Ok(())
//! #     }
//! # }
//! #[cached(cache = CacheManager::global().profiles(), key = user_id)]
//! async fn load_profile(db: &Db, user_id: i64) -> Result<Option<UserProfile>, DbError> {
//!     db.profile(user_id).await
//! }
//!
//! #[invalidates(cache = CacheManager::global().profiles(), key = user.id)]
//! async fn update_profile(db: &Db, user: &User) -> Result<(), DbError> {
//!     db.update(user).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! CacheManager::global().connect("memory://").await?;
//! let db = Db::default();
//! let ada = User { id: 1, name: "Ada".into() };
//! update_profile(&db, &ada).await.unwrap();
//! let profile = load_profile(&db, 1).await.unwrap(); // loaded, and cached
//! assert_eq!(CacheManager::global().profiles().get(&1).await, profile);
//! update_profile(&db, &User { id: 1, name: "Ada L.".into() }).await.unwrap();
//! assert_eq!(CacheManager::global().profiles().get(&1).await, None); // invalidated
//! # Ok(())
//! # }
//! ```
//!
//! See [`cached`] and [`invalidates`] for the return types each supports and what a
//! cache whose loads run in the background asks of the arguments.
//!
//! # Declaring caches
//!
//! `#[derive(Cache)]` reads one `#[cache(...)]` attribute, either on a unit struct that
//! declares a mapping between existing types (form A, with `value = Type`), or on the
//! value type itself (form B: the derive generates `<Type>Cache`). Its keys:
//!
//! | key | meaning |
//! | --- | --- |
//! | `namespace = "..."` | required. ASCII letters, digits and `: _ - .`; no empty, leading, trailing or doubled `:`. Redis keys are `"{namespace}:{key}"` |
//! | `ttl = N` | seconds, from 1 to 4294967295; default 600. Every write sets this expiry |
//! | `key = Type` | required. A [`CacheKey`]: integers, `String`, `Box<str>`, `Uuid`, `bool`, `char`, or your own type implementing it |
//! | `value = Type` | required on a unit struct (form A); not allowed on a value type (form B) |
//! | `codec = ...` | `"bincode"` (default), `"json"`, `"string"`, or the path of your own [`Codec`] type |
//! | `version = N` | from 0 (the default) to 4294967295. Bump it when the value type changes in a way its [fingerprint] cannot see: bincode entries of another version read as misses (json and string entries carry no fingerprint) |
//! | `local = N` | keep up to `N` (at least 1) decoded values in process, coherent across instances (see [the first level]); values must be `Clone` |
//! | `local_ttl = S` | seconds an in-process copy lives, from 1 to the cache's `ttl` (the default); needs `local` |
//! | `hash_tag = true` | on a Redis Cluster, keep every key of the cache in one hash slot: keys are written `{user:profile}:42` instead of `user:profile:42`, so a batch is one command on one master. Default `false`: keys spread over the masters |
//! | `fail_safe = S` | seconds an entry is kept past its `ttl` as a fallback, from 1 to 4294967295. Past its `ttl` an entry is stale: `get` and `mget` miss, `get_or_load` answers with it when the loader fails, and then serves it as fresh for the fail-safe throttle (30 s by default) so a failing database is not asked on every call |
//! | `load_timeout_ms = N` | a soft timeout from 1 to 3600000 ms; needs `fail_safe`. With a stale entry at hand, `get_or_load` waits at most `N` ms for the loader, then answers with the stale value; the load goes on in the background and stores its result when it lands. The loader must then be `Send + 'static` |
//! | `refresh_ahead = P` | a percent of the `ttl`, from 1 to 99: a `get_or_load` hit on an entry older than that answers at once and reloads the entry in the background, once per key at a time. The loader must then be `Send + 'static` |
//! | `negative_ttl = S` | `get_or_load` remembers a loader's `Ok(None)` for `S` seconds (1 to the `ttl`) and does not call it again for that key meanwhile; `get` reads the remembered absence as a miss, and a write replaces it. `bincode` caches only: to other services' readers a marker would look like a value |
//! | `ttl_jitter = S` | every write made with the cache's `ttl` expires after the `ttl` plus a random 0 to `S` seconds (`S` from 1 to the `ttl`), so entries written together do not expire together |
//! | `single_flight = "local"` or `"global"` | `"local"` (the default): concurrent `get_or_load`s of a missing key run the loader once per process. `"global"`: once across every instance sharing the Redis; one takes a short lease in Redis, the others wait for its value (woken by a message) for at most the single-flight wait (3 s by default), then load themselves |
//! | `compress = true` | `bincode` caches only: values above a size threshold are stored compressed, marked in the entry's header; see [compression] |
//! | `max_bytes = N` | the largest encoded value written, from 1 to 536870912 bytes: `set` refuses a larger one with `CacheError::Validation`, `mset` writes nothing, `get_or_load` returns it uncached |
//!
//! Anything else is a compile error pointing at the offending tokens. Several mistakes in
//! one declaration are all reported by one build.
//!
//! [fingerprint]: codec#why-bincode-entries-carry-a-header
//! [compression]: codec#compression
//! [the first level]: #the-in-process-first-level
//!
//! # The in-process first level
//!
//! With `local = N` a cache keeps up to `N` decoded values in process, each for at most
//! `local_ttl` seconds from when it was read (default and maximum: the cache's `ttl`) and
//! never past the time its Redis entry had left, so a hit costs no round trip. Redis
//! itself tells every instance when a key under the cache's namespace changes (`CLIENT
//! TRACKING` in broadcast mode): a write or delete by any client, an expiry, an eviction
//! or a flush drops the copies. While the listener's connection is lost the level is
//! emptied and bypassed. On a server without tracking, only this library's writes are
//! heard, through pub/sub.
//!
//! ```
//! # use cache_manager::{cache_registry, Cache};
//! #[derive(Cache)]
//! #[cache(namespace = "user:name", ttl = 600, key = i64, value = String, local = 10_000, local_ttl = 60)]
//! pub struct UserNameCache;
//! # cache_registry! { struct CacheManager { names: UserNameCache } }
//! # assert_eq!(CacheManager::new().names().ttl().as_secs(), 600);
//! ```
//!
//! # What calls do when things go wrong
//!
//! | situation | `get` / `mget` | `set` / `mset` | `invalidate` |
//! | --- | --- | --- | --- |
//! | backend down, not connected | `None` for every key | `Ok(false)` | `false` |
//! | one master of a Redis Cluster down | `None` for the keys of its slots; the other keys are read | `Ok(false)`; an `mset` still stores the other masters' entries | `false` for its keys |
//! | entry does not decode | `None`; logged at error level and deleted | | |
//! | value does not encode | | `Err(CacheError::Serialization)`, nothing written | |
//! | more than [`MAX_BATCH`] keys or entries | `Err(CacheError::Validation)`, nothing sent | same | |
//!
//! [`cache_registry!`] rejects at compile time two caches with the same namespace, or one
//! whose namespace is a `:`-prefix of another's (`user` and `user:profile`).
//!
//! # Feature flags
//!
//! - `metrics` (off by default): every cache reports through the
//!   [`metrics`](https://docs.rs/metrics) facade, so any exporter works: the counters
//!   `cache_hits_total`, `cache_misses_total`, `cache_degraded_total`,
//!   `cache_timeouts_total` and `cache_corrupt_evicted_total`, labelled by `namespace`,
//!   and the histogram `cache_operation_duration_seconds`, labelled by `namespace` and
//!   `operation` (`get`, `set`, `mget`, `mset`, `invalidate`, `minvalidate`, `clear`).
//!   Without it nothing is recorded and no clock is read. The counters of `stats()` and
//!   the debug-level `tracing` span `cache` around every call are there either way.
//!
//! ```toml
//! [dependencies]
//! cache-manager = { version = "0.1", features = ["metrics"] }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub use cache_core::{
    Breaker, Cache, CacheConfig, CacheError, CacheInfo, CacheKey, CacheStats, Codec, CodecError,
    Health, HealthStatus, MAX_BATCH, NodeHealth, SentinelHealth, SingleFlight, TypedCache, codec,
};
/// Declares a cache; see the [crate documentation](crate) for the `#[cache(...)]` keys.
pub use cache_derive::Cache;
/// Caches an `async fn`: `#[cached(cache = EXPR, key = EXPR)]`.
///
/// The body becomes the loader of [`TypedCache::get_or_load`] on the cache `cache`
/// names (any expression yielding a handle: `CacheManager::global().profiles()`, or a
/// manager passed as an argument, as axum state is), for the key `key` computes from the
/// arguments; its type must be the cache's key type. The key is computed, and copied,
/// before the body runs, so the body may consume the arguments it was made of. Single
/// flight, fail-safe, the soft timeout, refresh ahead and negative caching apply as the
/// cache declares them; the function's signature does not change.
///
/// | the function returns | the body's value is | when the body fails and a stale entry exists (`fail_safe`) |
/// | --- | --- | --- |
/// | `Result<Option<V>, E>` | `Ok(Some(v))` cached; `Ok(None)` "not found", remembered with `negative_ttl`; `Err` returned, not cached | `Ok(Some(stale))` |
/// | `Result<V, E>` | `Ok(v)` cached; `Err` returned, not cached. It cannot say "not found": if the cache remembers an absence (another caller's), the body runs, uncached | `Ok(stale)` |
/// | `Option<V>` | `Some(v)` cached; `None` "not found", remembered with `negative_ttl` | the body cannot fail; with `load_timeout_ms`, a slow body is answered `Some(stale)` |
///
/// `V` must be the cache's value type; any other return type is a compile error that
/// lists these three (`Result` may be an alias such as `std::io::Result<T>`).
///
/// For a cache with `load_timeout_ms` or `refresh_ahead`, a load may outlive the call,
/// so the body must be `Send + 'static`: the arguments it uses are moved into it, and a
/// borrowed argument (`db: &Db`, `&self`) is a compile error pointing at it; take
/// `db: Arc<Db>` or `self: Arc<Self>`. Other caches run the body in the caller, and it may
/// borrow.
///
/// ```
/// # use cache_manager::{cache_registry, cached, Cache};
/// # #[derive(Cache)]
/// # #[cache(namespace = "user:name", key = i64, value = String, negative_ttl = 30)]
/// # pub struct UserNameCache;
/// cache_registry! { pub struct Caches { names: UserNameCache } }
///
/// /// A handle passed as an argument, as axum state is; `None` is remembered for 30 s.
/// #[cached(cache = caches.names(), key = id)]
/// async fn name(caches: &Caches, id: i64) -> Option<String> {
///     (id == 1).then(|| "Ada".to_owned())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_manager::CacheError> {
/// let caches = Caches::new();
/// caches.connect("memory://").await?;
/// assert_eq!(name(&caches, 1).await.as_deref(), Some("Ada"));
/// assert_eq!(caches.names().get(&1).await.as_deref(), Some("Ada"));
/// assert_eq!(name(&caches, 2).await, None);
/// # Ok(())
/// # }
/// ```
pub use cache_derive::cached;
/// Invalidates after an `async fn` succeeded: `#[invalidates(cache = EXPR, key = EXPR)]`
/// or `#[invalidates(cache = EXPR, keys = EXPR)]`.
///
/// The body runs first; when it returns `Ok` (any `Result<T, E>`, aliases included) or
/// returns nothing, the key is invalidated with [`TypedCache::invalidate`], or every key
/// of the iterator `keys` yields (keys or references to them) with
/// [`TypedCache::minvalidate`], in batches of [`MAX_BATCH`]. After `Err` nothing is
/// invalidated. Like every cache call, the invalidation cannot fail the function: with
/// Redis down it is logged. The key or keys are computed before the body runs, so the
/// body may consume the arguments they were made of (write `keys = &ids` to keep `ids`).
///
/// ```
/// # use cache_manager::{cache_registry, invalidates, Cache};
/// # #[derive(Cache)]
/// # #[cache(namespace = "user:name", key = i64, value = String)]
/// # pub struct UserNameCache;
/// cache_registry! { pub struct Caches { names: UserNameCache } }
///
/// #[invalidates(cache = caches.names(), keys = &ids)]
/// async fn rename_all(caches: &Caches, ids: Vec<i64>) -> Result<usize, std::io::Error> {
///     Ok(ids.len()) // the database's update
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let caches = Caches::new();
/// caches.connect("memory://").await?;
/// caches.names().set(&1, &"Ada".to_owned()).await?;
/// assert_eq!(rename_all(&caches, vec![1, 2]).await?, 2);
/// assert_eq!(caches.names().get(&1).await, None);
/// # Ok(())
/// # }
/// ```
pub use cache_derive::invalidates;

/// What the macros expand to. Not public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    pub use cache_core::__private::*;
}

/// Generates the manager that owns the connection and hands out one typed handle per
/// registered cache.
///
/// ```
/// # use cache_manager::{cache_registry, Cache};
/// # #[derive(Cache)]
/// # #[cache(namespace = "session:token", ttl = 300, key = String, value = i64, codec = "string")]
/// # pub struct SessionTokenCache;
/// cache_registry! {
///     /// The application's caches.
///     pub struct CacheManager {
///         /// Session token to user id.
///         session: SessionTokenCache,
///     }
/// }
///
/// let manager: &'static CacheManager = CacheManager::global();
/// assert_eq!(manager.session().namespace(), "session:token");
/// assert_eq!(CacheManager::CACHES[0].field, "session");
/// ```
///
/// The generated type has:
/// - `new()`: an independent manager, not connected; `global()`: the process-wide one;
/// - `connect(url)`, `connect_with(url, &CacheConfig)`, `disconnect()`, `health()`;
/// - `stats()`: every cache's hits, misses, degraded calls, timeouts, corrupt entries;
/// - one accessor per field, returning `&TypedCache<C>`;
/// - `CACHES` and `caches()`: each registered cache's field, namespace, TTL and codec.
///
/// Registering two caches whose namespaces are equal, or where one is a `:`-prefix of the
/// other, is a compile error: their Redis keys could collide.
#[macro_export]
macro_rules! cache_registry {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident : $cache:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            __core: $crate::__private::ManagerCore,
            $( $field: $crate::TypedCache<$cache>, )*
        }

        // Two caches whose keys could collide fail the build, naming both fields.
        const _: () = {
            if let ::core::option::Option::Some(message) =
                &$crate::__private::namespace_collision($name::CACHES)
            {
                ::core::panic!("{}", message.as_str());
            }
        };

        // `CACHES` is the one place that asks `$cache: Cache`: a type that is not a cache
        // fails there, at the type's name, and nowhere else.
        impl $name {
            /// Every registered cache: field, namespace, TTL, codec, fingerprint.
            pub const CACHES: &'static [$crate::CacheInfo] = &[
                $( $crate::CacheInfo::__new::<$cache>(::core::stringify!($field)), )*
            ];

            /// Creates an independent manager. It is not connected: every cache call
            /// degrades (reads miss, writes return `Ok(false)`) until `connect`.
            pub fn new() -> Self {
                let __core = $crate::__private::ManagerCore::new(Self::CACHES);
                Self {
                    $( $field: __core.registered(::core::stringify!($field)), )*
                    __core,
                }
            }

            /// The process-wide manager, created on first use.
            pub fn global() -> &'static Self {
                static GLOBAL: $crate::__private::OnceLock<$name> = $crate::__private::OnceLock::new();
                GLOBAL.get_or_init(Self::new)
            }

            /// Connects every cache to `url`, replacing any current connection. The schemes:
            ///
            /// - `redis://[user][:password@]host[:port][/db][?options]`: one Redis server;
            /// - `rediss://...`, the same over TLS (rustls; `?ca_file=/path/ca.pem` trusts a
            ///   private CA instead of the system's roots);
            /// - `redis+cluster://[user][:password@]host:port,host:port,...[?options]`: a
            ///   Redis Cluster, whose slot map is learned from any of the nodes listed;
            /// - `rediss+cluster://...`, a Redis Cluster over TLS;
            /// - `redis+sentinel://[user][:password@]host:port,host:port/MASTER_NAME[/db][?options]`:
            ///   the master the sentinels listed name, followed across failovers; the
            ///   password is the data nodes', `?sentinel_password=` the sentinels' own;
            /// - `rediss+sentinel://...`, the same over TLS;
            /// - `memory://`: an in-process store with the same semantics, for tests and for
            ///   running without Redis.
            ///
            /// The query options override the defaults (see `connect_with` and
            /// `CacheConfig`): `response_timeout_ms`, `connect_timeout_ms`,
            /// `failure_threshold`, `backoff_min_ms`, `backoff_max_ms`,
            /// `summary_interval_ms`, `coalesce`, `ca_file`, `prefix` (a key prefix for
            /// every cache of this manager), `max_value_bytes`, `fail_safe_throttle_ms`,
            /// `single_flight_wait_ms`, `background_timeout_ms`; with sentinels also
            /// `sentinel_username` and `sentinel_password`. The crate docs' example connects
            /// a registry's manager.
            ///
            /// An unreachable server is not an error: the manager starts degraded and keeps
            /// reconnecting in the background.
            ///
            /// # Errors
            ///
            /// `CacheError::Config` for a URL or option it cannot use: an unknown scheme or
            /// option, a bad number, database or address, a prefix the key grammar cannot
            /// carry. The message names the part and never shows a password.
            pub async fn connect(&self, url: &str) -> ::core::result::Result<(), $crate::CacheError> {
                self.__core.connect(url).await
            }

            /// Connects like `connect` (same schemes: `redis://`, `rediss://`,
            /// `redis+cluster://`, `rediss+cluster://`, `redis+sentinel://`,
            /// `rediss+sentinel://`, `memory://`), with explicit
            /// timeouts, breaker, backoff, coalescing and TLS trust settings. Options in the
            /// URL's query string override the config.
            ///
            /// # Errors
            ///
            /// `CacheError::Config` for a URL or option it cannot use, as `connect`, and for
            /// settings out of range (a zero timeout, one over an hour, a maximum backoff
            /// below the minimum), naming the setting and what it allows.
            pub async fn connect_with(
                &self,
                url: &str,
                config: &$crate::CacheConfig,
            ) -> ::core::result::Result<(), $crate::CacheError> {
                self.__core.connect_with(url, config).await
            }

            /// Every cache's counters (hits, misses, degraded calls, timeouts, corrupt
            /// entries evicted), in registration order.
            pub fn stats(&self) -> $crate::__private::Vec<$crate::CacheStats> {
                self.__core.stats()
            }

            /// Drops the connection; cache calls degrade until the next `connect`.
            pub async fn disconnect(&self) {
                self.__core.disconnect().await
            }

            /// Pings the backend and reports the connection's state: never fails, a
            /// backend that does not answer is reported as such (with the reason, passwords
            /// redacted).
            pub async fn health(&self) -> $crate::Health {
                self.__core.health().await
            }

            /// Every registered cache: field, namespace, TTL, codec, fingerprint.
            pub fn caches(&self) -> &'static [$crate::CacheInfo] {
                self.__core.caches()
            }

            $(
                $crate::__registry_accessor! { $(#[$field_meta])* $field: $cache }
            )*
        }

        impl ::core::default::Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!($name))
                    .field("core", &self.__core)
                    $( .field(::core::stringify!($field), &self.$field) )*
                    .finish()
            }
        }
    };
}

/// One accessor of a registry, or a compile error naming the field when its name is
/// already a method every registry has.
#[doc(hidden)]
#[macro_export]
macro_rules! __registry_accessor {
    ($(#[$meta:meta])* new: $cache:ty) => { $crate::__registry_accessor!(@taken new); };
    ($(#[$meta:meta])* global: $cache:ty) => { $crate::__registry_accessor!(@taken global); };
    ($(#[$meta:meta])* connect: $cache:ty) => { $crate::__registry_accessor!(@taken connect); };
    ($(#[$meta:meta])* connect_with: $cache:ty) => { $crate::__registry_accessor!(@taken connect_with); };
    ($(#[$meta:meta])* disconnect: $cache:ty) => { $crate::__registry_accessor!(@taken disconnect); };
    ($(#[$meta:meta])* health: $cache:ty) => { $crate::__registry_accessor!(@taken health); };
    ($(#[$meta:meta])* stats: $cache:ty) => { $crate::__registry_accessor!(@taken stats); };
    ($(#[$meta:meta])* caches: $cache:ty) => { $crate::__registry_accessor!(@taken caches); };
    (@taken $field:ident) => {
        ::core::compile_error!(::core::concat!(
            "cache_registry!: a cache cannot be named `", ::core::stringify!($field),
            "`: every registry already has a method of that name (new, global, connect, ",
            "connect_with, disconnect, health, stats, caches). Rename the field, e.g. `",
            ::core::stringify!($field), "_cache`."
        ));
    };
    ($(#[$meta:meta])* $field:ident: $cache:ty) => {
        #[doc = ::core::concat!("The `", ::core::stringify!($field), "` cache.")]
        $(#[$meta])*
        pub fn $field(&self) -> &$crate::TypedCache<$cache> {
            &self.$field
        }
    };
}
