//! The users table on a PostgreSQL server, through a pool of `tokio-postgres`
//! connections (deadpool). The schema is created by migrations applied at start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_manager::MAX_BATCH;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::config::Host;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::{DbError, UserUpdate};
use crate::User;

/// The schema, one migration per step, applied in order and recorded in
/// `schema_migrations`; a step is never edited once released, only added to.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "the users table",
    "CREATE TABLE IF NOT EXISTS users (
         id BIGINT PRIMARY KEY,
         uuid UUID NOT NULL UNIQUE,
         name TEXT NOT NULL,
         email TEXT NOT NULL
     )",
)];

/// The advisory lock instances starting together take, so one applies the migrations
/// and seeds while the others wait and then find nothing to do.
const MIGRATION_LOCK: i64 = 0x7573_6572_735f_6462; // "users_db"

/// How a PostgreSQL database is connected: pool size, deadline of each call, seeding.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    seed_users: u32,
    pool_size: usize,
    timeout: Duration,
}

impl Default for PostgresOptions {
    /// No seeding, 8 connections, 5 s per call.
    fn default() -> Self {
        PostgresOptions {
            seed_users: 0,
            pool_size: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

impl PostgresOptions {
    /// Inserts `n` users (ids `1..=n`) at start when the table is empty.
    pub fn seed_users(mut self, n: u32) -> Self {
        self.seed_users = n;
        self
    }

    /// At most `n` connections open at once (at least 1).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// The longest one call may take, waiting for a pooled connection included: a
    /// stalled server costs a request this much, never a hang.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[derive(Clone)]
pub(super) struct Postgres {
    pool: Pool,
    timeout: Duration,
    /// The URL without its password, for log lines.
    described: Arc<str>,
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's message, or the client's chain of causes: an I/O failure, a
        // timeout. Neither is built from the URL, so neither carries its password.
        let message = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
        };
        DbError::new(format!("postgres: {message}"))
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            other => DbError::new(format!("postgres pool: {other}")),
        }
    }
}

fn user_from_row(row: &Row) -> Result<User, DbError> {
    Ok(User {
        id: row.try_get(0)?,
        uuid: row.try_get(1)?,
        name: row.try_get(2)?,
        email: row.try_get(3)?,
    })
}

/// `postgres://user@host:port/dbname`: what a log line may show of a connection.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl Postgres {
    pub(super) async fn connect(url: &str, options: PostgresOptions) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| DbError::new(format!("DATABASE_URL is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(options.timeout);
        if config.get_application_name().is_none() {
            config.application_name("axum-service");
        }
        let described: Arc<str> = describe(&config).into();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection is checked by a query only when it is used: a dead one
                // fails that call, and the pool drops it.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| DbError::new(format!("postgres pool: {e}")))?;
        let db = Postgres {
            pool,
            timeout: options.timeout,
            described,
        };
        db.migrate(options.seed_users).await?;
        Ok(db)
    }

    pub(super) fn describe(&self) -> String {
        self.described.to_string()
    }

    /// Runs `f` with a pooled connection, within the deadline.
    async fn call<'a, T, F, Fut>(&'a self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, DbError>> + 'a,
    {
        let work = async {
            let client = self.pool.get().await?;
            f(client).await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                DbError::new(format!(
                    "postgres: no answer within {} ms",
                    self.timeout.as_millis()
                ))
            })?
    }

    /// Applies the missing migrations and seeds an empty table, in one transaction
    /// under an advisory lock: instances starting together do it once.
    async fn migrate(&self, seed_users: u32) -> Result<(), DbError> {
        self.call(|mut client| async move {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            // `IF NOT EXISTS` on a later start is expected, not news for the log.
            tx.batch_execute("SET LOCAL client_min_messages = warning")
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version INTEGER PRIMARY KEY,
                     description TEXT NOT NULL,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await?;
            let applied: Vec<i32> = tx
                .query("SELECT version FROM schema_migrations", &[])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for &(version, description, sql) in MIGRATIONS {
                if applied.contains(&version) {
                    continue;
                }
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                    &[&version, &description],
                )
                .await?;
                tracing::info!(version, description, "database migration applied");
            }
            let existing: i64 = tx
                .query_one("SELECT COUNT(*) FROM users", &[])
                .await?
                .get(0);
            if existing == 0 && seed_users > 0 {
                tx.execute(
                    "INSERT INTO users (id, uuid, name, email)
                     SELECT g, gen_random_uuid(), 'User ' || g, 'user' || g || '@example.com'
                     FROM generate_series(1, $1::BIGINT) AS g",
                    &[&i64::from(seed_users)],
                )
                .await?;
                tracing::info!(users = seed_users, "database seeded");
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn one(
        &self,
        sql: &'static str,
        param: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Option<User>, DbError> {
        self.call(|client| async move {
            let statement = client.prepare_cached(sql).await?;
            client
                .query_opt(&statement, &[param])
                .await?
                .map(|row| user_from_row(&row))
                .transpose()
        })
        .await
    }

    pub(super) async fn by_uuid(&self, uuid: Uuid) -> Result<Option<User>, DbError> {
        self.one(SELECT_BY_UUID, &uuid).await
    }

    pub(super) async fn by_id(&self, id: i64) -> Result<Option<User>, DbError> {
        self.one(SELECT_BY_ID, &id).await
    }

    pub(super) async fn by_uuids(&self, uuids: Vec<Uuid>) -> Result<Vec<User>, DbError> {
        self.any(SELECT_BY_UUIDS, uuids).await
    }

    pub(super) async fn by_ids(&self, ids: Vec<i64>) -> Result<Vec<User>, DbError> {
        self.any(SELECT_BY_IDS, ids).await
    }

    /// `sql` with `= ANY($1)`, once per chunk of at most [`MAX_BATCH`] values.
    async fn any<T>(&self, sql: &'static str, values: Vec<T>) -> Result<Vec<User>, DbError>
    where
        T: tokio_postgres::types::ToSql + Sync,
    {
        self.call(|client| async move {
            let statement = client.prepare_cached(sql).await?;
            let mut users = Vec::with_capacity(values.len());
            for chunk in values.chunks(MAX_BATCH) {
                for row in client.query(&statement, &[&chunk]).await? {
                    users.push(user_from_row(&row)?);
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
        self.call(|client| async move {
            let statement = client.prepare_cached(UPDATE).await?;
            client
                .query_opt(&statement, &[&id, &change.name, &change.email])
                .await?
                .map(|row| user_from_row(&row))
                .transpose()
        })
        .await
    }
}

const SELECT_BY_UUID: &str = "SELECT id, uuid, name, email FROM users WHERE uuid = $1";
const SELECT_BY_ID: &str = "SELECT id, uuid, name, email FROM users WHERE id = $1";
const SELECT_BY_UUIDS: &str = "SELECT id, uuid, name, email FROM users WHERE uuid = ANY($1)";
const SELECT_BY_IDS: &str = "SELECT id, uuid, name, email FROM users WHERE id = ANY($1)";
const UPDATE: &str = "UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email)
                      WHERE id = $1 RETURNING id, uuid, name, email";
