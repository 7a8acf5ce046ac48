//! The users table, in an SQLite file (the embedded default) or on a PostgreSQL server
//! (`DATABASE_URL=postgres://...`), behind one type the data-access layer calls.

mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use uuid::Uuid;

pub use postgres::PostgresOptions;

use crate::User;

/// A database call that failed (the database, unlike the cache, is not optional).
///
/// Its message never carries a password: PostgreSQL errors are built from the server's
/// reply or the client's own text, never from the connection URL.
#[derive(Debug)]
pub struct DbError(String);

impl DbError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        DbError(message.into())
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

/// The body of `PUT /users/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// A new e-mail address.
    pub email: Option<String>,
}

/// Where the users live.
#[derive(Clone)]
enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// The users table, with a count of the queries it ran.
#[derive(Clone)]
pub struct Db {
    store: Store,
    queries: Arc<AtomicU64>,
}

impl std::fmt::Debug for Db {
    // No URL and no path: the URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

/// The columns every query selects, in the order `User` is read from a row.
pub(crate) const USER_COLUMNS: &str = "id, uuid, name, email";

impl Db {
    /// Opens (creating when missing) the SQLite database at `path` and seeds
    /// `seed_users` users when its table is empty.
    pub fn open(path: &Path, seed_users: u32) -> Result<Self, DbError> {
        Ok(Self::over(Store::Sqlite(sqlite::Sqlite::open(
            path, seed_users,
        )?)))
    }

    /// Connects a pool to the PostgreSQL server at `url` (`postgres://user:password@host:port/dbname`),
    /// applies the schema's migrations that are missing (one instance at a time, under an
    /// advisory lock) and seeds [`PostgresOptions::seed_users`] users when the table is empty.
    pub async fn connect_postgres(url: &str, options: PostgresOptions) -> Result<Self, DbError> {
        Ok(Self::over(Store::Postgres(
            postgres::Postgres::connect(url, options).await?,
        )))
    }

    fn over(store: Store) -> Self {
        Db {
            store,
            queries: Arc::default(),
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.store {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Where the database is, for a log line: the SQLite path, or the PostgreSQL URL
    /// without its password (`postgres://user@host:port/dbname`).
    pub fn describe(&self) -> String {
        match &self.store {
            Store::Sqlite(db) => db.describe(),
            Store::Postgres(db) => db.describe(),
        }
    }

    /// How many queries the database has run: a cache hit runs none.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// The user with this UUID.
    pub async fn by_uuid(&self, uuid: Uuid) -> Result<Option<User>, DbError> {
        self.count();
        match &self.store {
            Store::Sqlite(db) => db.by_uuid(uuid).await,
            Store::Postgres(db) => db.by_uuid(uuid).await,
        }
    }

    /// The user with this id.
    pub async fn by_id(&self, id: i64) -> Result<Option<User>, DbError> {
        self.count();
        match &self.store {
            Store::Sqlite(db) => db.by_id(id).await,
            Store::Postgres(db) => db.by_id(id).await,
        }
    }

    /// The users with these UUIDs (those that exist), in queries of at most 100.
    pub async fn by_uuids(&self, uuids: Vec<Uuid>) -> Result<Vec<User>, DbError> {
        self.count();
        match &self.store {
            Store::Sqlite(db) => db.by_uuids(uuids).await,
            Store::Postgres(db) => db.by_uuids(uuids).await,
        }
    }

    /// The users with these ids (those that exist), in queries of at most 100.
    pub async fn by_ids(&self, ids: Vec<i64>) -> Result<Vec<User>, DbError> {
        self.count();
        match &self.store {
            Store::Sqlite(db) => db.by_ids(ids).await,
            Store::Postgres(db) => db.by_ids(ids).await,
        }
    }

    /// Changes a user's name and/or e-mail; the updated user, or `None` when unknown.
    pub async fn update(&self, id: i64, change: UserUpdate) -> Result<Option<User>, DbError> {
        self.count();
        match &self.store {
            Store::Sqlite(db) => db.update(id, change).await,
            Store::Postgres(db) => db.update(id, change).await,
        }
    }
}
