use cache_manager::Cache;

// Form B without `Serialize, Deserialize`: the default bincode codec needs them.
#[derive(Cache)]
#[cache(namespace = "user:profile", key = i64)]
pub struct UserProfile {
    pub name: String,
}

fn main() {}
