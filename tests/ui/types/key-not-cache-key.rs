use cache_manager::Cache;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantId(pub u32);

#[derive(Cache)]
#[cache(namespace = "tenant:name", key = TenantId, value = String)]
pub struct TenantNameCache;

fn main() {}
