use cache_manager::{Cache, CacheKey};

#[derive(Clone, PartialEq, Eq)]
pub struct TenantId(pub u32);

impl CacheKey for TenantId {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out);
    }
}

#[derive(Cache)]
#[cache(namespace = "tenant:name", key = TenantId, value = String)]
pub struct TenantNameCache;

fn main() {}
