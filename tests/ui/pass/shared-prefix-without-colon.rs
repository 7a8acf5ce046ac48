// `user` and `users` share a prefix but not a `:` boundary: their keys cannot collide.

use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String)]
pub struct UserCache;

#[derive(Cache)]
#[cache(namespace = "users", key = i64, value = String)]
pub struct UsersCache;

#[derive(Cache)]
#[cache(namespace = "user_profile", key = i64, value = String)]
pub struct UserProfileCache;

#[derive(Cache)]
#[cache(namespace = "username", key = i64, value = String)]
pub struct UsernameCache;

#[derive(Cache)]
#[cache(namespace = "user.name", key = i64, value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        user: UserCache,
        users: UsersCache,
        user_profile: UserProfileCache,
        username: UsernameCache,
        names: UserNameCache,
    }
}

fn main() {
    let namespaces: Vec<_> = CacheManager::CACHES.iter().map(|c| c.namespace).collect();
    assert_eq!(
        namespaces,
        ["user", "users", "user_profile", "username", "user.name"]
    );
}
