//! The users table in an SQLite file: one connection behind a mutex, called on tokio's
//! blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cache_manager::MAX_BATCH;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use uuid::Uuid;

use super::{DbError, USER_COLUMNS, UserUpdate};
use crate::User;

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::new(e.to_string())
    }
}

#[derive(Clone)]
pub(super) struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let uuid: String = row.get(1)?;
    Ok(User {
        id: row.get(0)?,
        uuid: uuid.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        name: row.get(2)?,
        email: row.get(3)?,
    })
}

impl Sqlite {
    pub(super) fn open(path: &Path, seed_users: u32) -> Result<Self, DbError> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS users (
                 id INTEGER PRIMARY KEY,
                 uuid TEXT NOT NULL UNIQUE,
                 name TEXT NOT NULL,
                 email TEXT NOT NULL
             );",
        )?;
        let existing: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
        if existing == 0 && seed_users > 0 {
            let tx = conn.transaction()?;
            {
                let mut insert = tx
                    .prepare("INSERT INTO users (id, uuid, name, email) VALUES (?1, ?2, ?3, ?4)")?;
                for id in 1..=i64::from(seed_users) {
                    insert.execute((
                        id,
                        Uuid::new_v4().to_string(),
                        format!("User {id}"),
                        format!("user{id}@example.com"),
                    ))?;
                }
            }
            tx.commit()?;
            tracing::info!(path = %path.display(), users = seed_users, "database created and seeded");
        }
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_owned()),
        })
    }

    pub(super) fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    /// Runs `f` on the connection on a blocking thread: SQLite calls block.
    async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| DbError::new(format!("database task failed: {e}")))?
    }

    pub(super) async fn by_uuid(&self, uuid: Uuid) -> Result<Option<User>, DbError> {
        self.call(move |c| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE uuid = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([uuid.to_string()], user_from_row)
                .optional()?)
        })
        .await
    }

    pub(super) async fn by_id(&self, id: i64) -> Result<Option<User>, DbError> {
        self.call(move |c| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([id], user_from_row)
                .optional()?)
        })
        .await
    }

    pub(super) async fn by_uuids(&self, uuids: Vec<Uuid>) -> Result<Vec<User>, DbError> {
        let texts: Vec<String> = uuids.iter().map(Uuid::to_string).collect();
        self.select_in("uuid", texts).await
    }

    pub(super) async fn by_ids(&self, ids: Vec<i64>) -> Result<Vec<User>, DbError> {
        self.select_in("id", ids).await
    }

    async fn select_in<T>(&self, column: &'static str, values: Vec<T>) -> Result<Vec<User>, DbError>
    where
        T: rusqlite::ToSql + Send + 'static,
    {
        self.call(move |c| {
            let mut users = Vec::with_capacity(values.len());
            for chunk in values.chunks(MAX_BATCH) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} IN ({marks})");
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(params_from_iter(chunk.iter()), user_from_row)?;
                for row in rows {
                    users.push(row?);
                }
            }
            Ok(users)
        })
        .await
    }

    pub(super) async fn update(
        &self,
        id: i64,
        change: UserUpdate,
    ) -> Result<Option<User>, DbError> {
        self.call(move |c| {
            let changed = c.execute(
                "UPDATE users SET name = COALESCE(?2, name), email = COALESCE(?3, email) WHERE id = ?1",
                (id, change.name, change.email),
            )?;
            if changed == 0 {
                return Ok(None);
            }
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
            Ok(c.query_row(&sql, [id], user_from_row).optional()?)
        })
        .await
    }
}
