//! Runtime of the typed Redis cache framework.
//!
//! Applications use it through the `cache-manager` facade, which adds
//! `#[derive(Cache)]` and `cache_registry!`; this crate holds what those expand to:
//! typed handles ([`TypedCache`]), the backends (Redis, Redis Cluster, in-process
//! `memory://`), codecs
//! ([`codec`]), key encoding ([`CacheKey`]) and the one error type ([`CacheError`]).
//!
//! The rule everything here follows: the cache is a luxury. When the backend is down,
//! reads miss and writes return `Ok(false)`; no call returns a connection error, panics
//! or waits past its timeout.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod backend;
mod cache;
mod cached;
pub mod codec;
mod config;
mod error;
mod flight;
mod handle;
mod health;
mod key;
mod layouts;
mod loads;
mod local;
mod manager;
mod observe;
mod registry;
mod shared;
mod stats;

pub use cache::{Cache, MAX_BATCH, SingleFlight};
/// The namespace grammar and the layout of Redis keys, shared with the derive.
pub use cache_keyspace as keyspace;
pub use codec::Codec;
pub use config::CacheConfig;
pub use error::{CacheError, CodecError};
pub use handle::TypedCache;
pub use health::{Breaker, Health, HealthStatus, NodeHealth, SentinelHealth};
pub use key::CacheKey;
pub use registry::CacheInfo;
pub use stats::CacheStats;

/// Items the macros expand to. Not public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    pub use crate::loads::{Background, Carried, Inline, LoadMode, Runs, Started};
    pub use crate::local::{Invalidate, LocalLevel, Moka, NoLocal};
    pub use crate::manager::ManagerCore;
    pub use crate::registry::{Message, namespace_collision};
    pub use std::sync::OnceLock;
    pub use std::time::Duration;
    pub use std::vec::Vec;

    pub use crate::codec;
    pub use crate::{Cache, CacheInfo, SingleFlight, TypedCache};

    /// What `#[cached]` and `#[invalidates]` expand to.
    pub mod cached {
        pub use crate::cached::*;
    }

    /// Implemented by `#[derive(Cache)]` beside [`Cache`], and only there: a
    /// declaration's settings (its fingerprint, its first level, what its loads need)
    /// are computed and checked by the derive, so `Cache` is not for hand-written impls.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` implements `Cache` by hand; caches are declared with `#[derive(Cache)]`",
        label = "not declared with `#[derive(Cache)]`",
        note = "remove the `impl Cache` and derive it: `#[derive(Cache)] #[cache(namespace = \"...\", key = K, value = V)] struct {Self};`"
    )]
    pub trait Declared {}

    /// Stands in for the codec of a declaration that failed to compile, so one mistake
    /// gives one error rather than a cascade. (A missing key or value type is replaced by
    /// an erroneous type instead, which the type checker accepts anywhere silently.)
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Unconfigured {}

    impl<V> crate::Codec<V> for Unconfigured {
        const NAME: &'static str = "unconfigured";
        fn encode(_: &V, _: &mut Vec<u8>) -> Result<(), crate::CodecError> {
            Err(crate::CodecError::msg(
                "cache declaration failed to compile",
            ))
        }
        fn decode(_: &[u8]) -> Result<V, crate::CodecError> {
            Err(crate::CodecError::msg(
                "cache declaration failed to compile",
            ))
        }
    }
}
