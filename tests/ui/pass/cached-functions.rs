//! `#[cached]` and `#[invalidates]` on every supported shape, lint-clean in a crate that
//! denies the strict lints: the contract's example verbatim, `Result<V, E>` with `?` and
//! `return`, `Option<V>`, a cache whose loads run in the background, a handle passed as
//! an argument, a `&self` method, `keys = ...`, a unit return and a `Result` alias.
#![deny(unused_qualifications, missing_docs, unsafe_code)]
// Clippy does not run under trybuild: `tests/lint-clean` is the crate clippy checks.

use std::sync::Arc;

use cache_manager::{Cache, cache_registry, cached, invalidates};
use serde::{Deserialize, Serialize};

/// A profile, read through on every call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64, negative_ttl = 30)]
pub struct UserProfile {
    /// Display name.
    pub name: String,
}

/// A card, whose loads may finish in the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:card", key = i64, fail_safe = 60, load_timeout_ms = 100, refresh_ahead = 80)]
pub struct UserCard {
    /// Display name.
    pub name: String,
}

/// A session's user id, by token.
#[derive(Cache)]
#[cache(namespace = "session", key = String, value = i64)]
pub struct SessionCache;

cache_registry! {
    /// The caches.
    pub struct CacheManager {
        profiles: UserProfileCache,
        cards: UserCardCache,
        sessions: SessionCache,
    }
}

struct Db;

#[derive(Debug)]
struct DbError;

struct User {
    id: i64,
}

impl Db {
    async fn profile(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
        Ok((id == 1).then(|| UserProfile { name: "Ada".into() }))
    }

    async fn card(&self, id: i64) -> Result<Option<UserCard>, DbError> {
        Ok((id == 1).then(|| UserCard { name: "Ada".into() }))
    }

    async fn update(&self, _user: &User) -> Result<(), DbError> {
        Ok(())
    }

    async fn session(&self, token: String) -> Option<i64> {
        (!token.is_empty()).then_some(1)
    }
}

#[cached(cache = CacheManager::global().profiles(), key = user_id)]
async fn load_profile(db: &Db, user_id: i64) -> Result<Option<UserProfile>, DbError> {
    db.profile(user_id).await
}

#[invalidates(cache = CacheManager::global().profiles(), key = user.id)]
async fn update_profile(db: &Db, user: &User) -> Result<(), DbError> {
    db.update(user).await
}

#[cached(cache = CacheManager::global().profiles(), key = user_id)]
async fn profile_or_error(db: &Db, user_id: i64) -> Result<UserProfile, DbError> {
    if user_id < 0 {
        return Err(DbError);
    }
    let found = db.profile(user_id).await?;
    found.ok_or(DbError)
}

#[cached(cache = CacheManager::global().profiles(), key = user_id)]
async fn maybe_profile(db: &Db, user_id: i64) -> Option<UserProfile> {
    db.profile(user_id).await.ok().flatten()
}

#[cached(cache = CacheManager::global().cards(), key = id)]
async fn load_card(db: Arc<Db>, id: i64) -> Result<Option<UserCard>, DbError> {
    db.card(id).await
}

struct AppState {
    caches: Arc<CacheManager>,
    db: Arc<Db>,
}

// The body consumes the token the key was made of.
#[cached(cache = state.caches.sessions(), key = token)]
async fn session_user(state: &AppState, token: String) -> Option<i64> {
    state.db.session(token).await
}

// Owned state: the body keeps the database while the handle borrows the caches.
#[cached(cache = state.caches.cards(), key = id)]
async fn card_of(state: AppState, id: i64) -> anyhow_like::Result<Option<UserCard>> {
    state.db.card(id).await.map_err(|_| anyhow_like::Error)
}

mod anyhow_like {
    pub struct Error;
    pub type Result<T> = std::result::Result<T, Error>;
}

struct Service {
    caches: CacheManager,
    db: Db,
}

impl Service {
    #[cached(cache = self.caches.profiles(), key = id)]
    async fn profile(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
        self.db.profile(id).await
    }

    #[invalidates(cache = self.caches.profiles(), keys = ids.iter())]
    async fn forget(&self, ids: Vec<i64>) {
        drop(ids);
    }
}

#[invalidates(cache = CacheManager::global().profiles(), keys = users.iter().map(|user| user.id))]
async fn delete_users(db: &Db, users: Vec<User>) -> std::io::Result<usize> {
    for user in &users {
        db.update(user).await.map_err(|_| std::io::Error::other("db"))?;
    }
    Ok(users.len())
}

fn is_send<T: Send>(value: T) -> T {
    value
}

fn main() {
    let db = Db;
    let user = User { id: 1 };
    let state = AppState {
        caches: Arc::new(CacheManager::new()),
        db: Arc::new(Db),
    };
    let service = Service {
        caches: CacheManager::new(),
        db: Db,
    };
    drop(is_send(load_profile(&db, 1)));
    drop(is_send(update_profile(&db, &user)));
    drop(is_send(profile_or_error(&db, 1)));
    drop(is_send(maybe_profile(&db, 1)));
    drop(is_send(load_card(Arc::new(Db), 1)));
    drop(is_send(session_user(&state, "t".into())));
    drop(is_send(card_of(state, 1)));
    drop(is_send(service.profile(1)));
    drop(is_send(service.forget(vec![1])));
    drop(is_send(delete_users(&db, vec![user])));
}
