use cache_manager::Cache;

pub struct Profile {
    pub name: String,
}

#[derive(Cache)]
#[cache(namespace = "user:profile", key = i64, value = Profile)]
pub struct UserProfileCache;

fn main() {}
