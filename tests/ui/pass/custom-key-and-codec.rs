// A key type of one's own, and codecs of one's own named by relative and absolute path.

use cache_manager::{Cache, CacheKey, cache_registry};

/// A tenant-scoped user: `"{tenant}/{user}"` is injective since a tenant id has no `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantUser {
    pub tenant: u32,
    pub user: String,
}

impl CacheKey for TenantUser {
    fn write_key(&self, out: &mut String) {
        self.tenant.write_key(out);
        out.push('/');
        out.push_str(&self.user);
    }
}

pub mod codecs {
    use cache_manager::{Codec, CodecError};

    /// Comma-separated lists of words.
    pub enum Csv {}

    impl Codec<Vec<String>> for Csv {
        const NAME: &'static str = "csv";

        fn encode(value: &Vec<String>, out: &mut Vec<u8>) -> Result<(), CodecError> {
            if value.iter().any(|v| v.contains(',')) {
                return Err(CodecError::msg("a word contains `,`"));
            }
            out.extend_from_slice(value.join(",").as_bytes());
            Ok(())
        }

        fn decode(bytes: &[u8]) -> Result<Vec<String>, CodecError> {
            let text = std::str::from_utf8(bytes).map_err(CodecError::new)?;
            Ok(text.split(',').map(str::to_owned).collect())
        }
    }
}

#[derive(Cache)]
#[cache(namespace = "tenant:tags", key = TenantUser, value = Vec<String>, codec = codecs::Csv)]
pub struct TenantTagsCache;

#[derive(Cache)]
#[cache(
    namespace = "tenant:roles",
    key = TenantUser,
    value = Vec<String>,
    codec = crate::codecs::Csv
)]
pub struct TenantRolesCache;

cache_registry! {
    pub struct CacheManager {
        tags: TenantTagsCache,
        roles: TenantRolesCache,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), cache_manager::CacheError> {
    let manager = CacheManager::new();
    manager.connect("memory://").await?;
    assert!(manager.caches().iter().all(|info| info.codec == "csv"));

    let key = TenantUser {
        tenant: 7,
        user: "ada".into(),
    };
    assert_eq!(manager.tags().redis_key(&key), "tenant:tags:7/ada");
    let tags = vec!["admin".to_owned(), "beta".to_owned()];
    assert!(manager.tags().set(&key, &tags).await?);
    assert_eq!(manager.tags().get(&key).await, Some(tags));
    assert_eq!(manager.roles().get(&key).await, None);
    assert!(
        manager
            .roles()
            .set(&key, &vec!["a,b".to_owned()])
            .await
            .is_err()
    );
    Ok(())
}
