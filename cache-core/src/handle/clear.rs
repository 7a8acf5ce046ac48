//! `clear()`: removes every entry of one cache, by namespace, with `SCAN` + `UNLINK`.

use super::TypedCache;
use crate::cache::Cache;
use crate::observe::{Op, observed};

impl<C: Cache> TypedCache<C> {
    /// Removes every entry of this cache (every Redis key `"{namespace}:*"`, or
    /// `"{{namespace}}:*"` with `hash_tag`) and returns how many were removed. On a Redis
    /// Cluster every master is cleared, concurrently.
    ///
    /// On Redis the keys are found with `SCAN MATCH "{namespace}:*"` and removed with
    /// `UNLINK` in batches of a few hundred, never with `KEYS`, so a large namespace does
    /// not block the server; each command is bounded by the response timeout. Keys
    /// written while the clear runs may survive it. Other instances drop their
    /// first-level copies when the clear's announcement reaches them.
    ///
    /// Like every call it degrades instead of failing: `0` while the backend is
    /// unavailable, and an outage in the middle of a clear ends it early, returning the
    /// keys removed until then (logged, counted as a degraded call).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// let names = manager.names();
    /// for id in 0..3 {
    ///     names.set(&id, &format!("user {id}")).await?;
    /// }
    /// assert_eq!(names.clear().await, 3);
    /// assert_eq!(names.get(&0).await, None);
    ///
    /// manager.disconnect().await;
    /// assert_eq!(names.clear().await, 0); // no backend: nothing removed, no error
    /// # Ok(())
    /// # }
    /// ```
    pub async fn clear(&self) -> u64 {
        observed(C::NAMESPACE, Op::Clear, || async {
            if let Some(local) = &self.local {
                local.clear();
            }
            let backend = self.shared.backend();
            // Every layout's keys: entries of another version of the value type too.
            let mut removed = 0;
            let mut failure = None;
            let prefix = self.shared.prefix();
            for pattern in
                Self::keys(prefix.as_ref().map(|p| p.as_str())).scan_patterns_of_every_layout()
            {
                let (n, why) = backend.clear(&pattern, self.announce()).await;
                removed += n;
                failure = failure.or(why);
            }
            if let Some(local) = &self.local {
                local.clear();
            }
            if let Some(why) = failure {
                self.counters.degraded(why);
                tracing::warn!(
                    namespace = C::NAMESPACE,
                    removed,
                    "cache clear ended early: the backend became unavailable"
                );
            }
            removed
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::cache::Cache;
    use crate::codec;
    use crate::manager::ManagerCore;
    use crate::registry::CacheInfo;

    enum Profiles {}
    impl crate::__private::Declared for Profiles {}
    impl Cache for Profiles {
        type Key = i64;
        type Value = String;
        type Codec = codec::Text;
        type Local = crate::local::NoLocal;
        type Loads = crate::loads::Inline;
        const NAMESPACE: &'static str = "user:profile";
        const TTL: Duration = Duration::from_secs(600);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0;
    }

    enum OldProfiles {}
    impl crate::__private::Declared for OldProfiles {}
    impl Cache for OldProfiles {
        type Key = i64;
        type Value = String;
        type Codec = codec::Text;
        type Local = crate::local::NoLocal;
        type Loads = crate::loads::Inline;
        const NAMESPACE: &'static str = "user:profile_old";
        const TTL: Duration = Duration::from_secs(600);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0;
    }

    static CACHES: &[CacheInfo] = &[
        CacheInfo::__new::<Profiles>("profiles"),
        CacheInfo::__new::<OldProfiles>("old"),
    ];

    #[tokio::test]
    async fn clear_on_memory_removes_only_its_namespace() {
        let core = ManagerCore::new(CACHES);
        let profiles = core.cache::<Profiles>("profiles");
        let old = core.cache::<OldProfiles>("old");
        assert_eq!(profiles.clear().await, 0, "not connected: degrades to 0");
        assert_eq!(profiles.stats().degraded, 1);
        core.connect("memory://").await.unwrap();
        for i in 0..5 {
            profiles.set(&i, &format!("p{i}")).await.unwrap();
            old.set(&i, &format!("o{i}")).await.unwrap();
        }
        assert_eq!(profiles.clear().await, 5);
        assert_eq!(profiles.get(&1).await, None);
        assert_eq!(old.get(&1).await.as_deref(), Some("o1"));
        assert_eq!(profiles.clear().await, 0);
    }
}
