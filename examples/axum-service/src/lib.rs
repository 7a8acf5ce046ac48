//! The Python service ported to axum: users in SQLite, behind typed caches.
//!
//! The manager is connected at start-up and held in the app state; a data-access layer
//! tries the cache, loads from the database on a miss and populates both directions;
//! updates invalidate both directions. Redis going away costs latency, never an answer.
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /users/{uuid}` | the user; 400 malformed UUID, 404 unknown |
//! | `GET /users/by-id/{id}` | the user; 400 not an integer, 404 unknown |
//! | `PUT /users/{id}` | updates `name`/`email`, invalidates both directions; 400, 404 |
//! | `POST /users/batch` | `{"uuids": [...]}`, at most 1000: found users and the UUIDs not found; 400, 413 |
//! | `GET /cache/health` | the manager's health; 200 healthy, 503 not |
//! | `GET /cache/stats` | every cache's counters |
//! | `GET /cache/manifest` | the registry: field, namespace, TTL, codec, fingerprint |
//! | `GET /metrics` | Prometheus text |
#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cache_manager::{Cache, MAX_BATCH, cache_registry};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

/// The most UUIDs one `POST /users/batch` may carry.
pub const MAX_BATCH_REQUEST: usize = 1000;

/// A user's UUID to its id.
#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
pub struct UserUuidToIdCache;

/// A user's id to its UUID.
#[derive(Cache)]
#[cache(namespace = "user:id_to_uuid", ttl = 600, key = i64, value = Uuid)]
pub struct UserIdToUuidCache;

/// A user, as stored in the database; cached by id in `UserCache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:record", ttl = 300, key = i64)]
pub struct User {
    /// The database id.
    pub id: i64,
    /// The public identifier.
    pub uuid: Uuid,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

cache_registry! {
    /// Every cache of the service.
    pub struct Caches {
        /// UUID to id.
        uuid_to_id: UserUuidToIdCache,
        /// Id to UUID.
        id_to_uuid: UserIdToUuidCache,
        /// Users by id.
        users: UserCache,
    }
}

/// A database call that failed (the database, unlike the cache, is not optional).
#[derive(Debug)]
pub struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

/// The users table in an SQLite file, with a count of the queries it ran.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    queries: Arc<AtomicU64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

const USER_COLUMNS: &str = "id, uuid, name, email";

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

impl Db {
    /// Opens (creating when missing) the database at `path` and seeds `seed_users`
    /// users when its table is empty.
    pub fn open(path: &Path, seed_users: u32) -> Result<Self, DbError> {
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
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            queries: Arc::default(),
        })
    }

    /// How many queries the database has run: a cache hit runs none.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Runs `f` on the connection on a blocking thread: SQLite calls block.
    async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| DbError(format!("database task failed: {e}")))?
    }

    /// The user with this UUID.
    pub async fn by_uuid(&self, uuid: Uuid) -> Result<Option<User>, DbError> {
        self.call(move |c| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE uuid = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([uuid.to_string()], user_from_row)
                .optional()?)
        })
        .await
    }

    /// The user with this id.
    pub async fn by_id(&self, id: i64) -> Result<Option<User>, DbError> {
        self.call(move |c| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([id], user_from_row)
                .optional()?)
        })
        .await
    }

    /// The users with these UUIDs (those that exist), in queries of at most 100.
    pub async fn by_uuids(&self, uuids: Vec<Uuid>) -> Result<Vec<User>, DbError> {
        let texts: Vec<String> = uuids.iter().map(Uuid::to_string).collect();
        self.select_in("uuid", texts).await
    }

    /// The users with these ids (those that exist), in queries of at most 100.
    pub async fn by_ids(&self, ids: Vec<i64>) -> Result<Vec<User>, DbError> {
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

    /// Changes a user's name and/or e-mail; the updated user, or `None` when unknown.
    pub async fn update(&self, id: i64, change: UserUpdate) -> Result<Option<User>, DbError> {
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

/// The body of `PUT /users/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// A new e-mail address.
    pub email: Option<String>,
}

/// What every handler shares: the caches, the database and the metrics exporter.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The cache manager, connected by the caller.
    pub caches: Arc<Caches>,
    /// The users database.
    pub db: Db,
    /// Renders what the `metrics` facade recorded, for `GET /metrics`.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// A state over `caches` and `db`, exporting metrics through the process's Prometheus
    /// recorder (installed on first use).
    pub fn new(caches: Arc<Caches>, db: Db) -> Self {
        AppState {
            caches,
            db,
            metrics: prometheus(),
        }
    }
}

/// The process-wide Prometheus recorder behind the `metrics` facade, installed once.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "database call failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_uuid(text: &str) -> ApiResult<Uuid> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("malformed UUID: {text:?}")))
}

fn parse_id(text: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("malformed user id: {text:?}")))
}

/// The data-access layer: cache first, database on a miss, both directions populated.
impl AppState {
    /// Caches what the database said about `user`, in every direction. A failed cache
    /// write is not the caller's problem: the cache is a luxury.
    async fn remember(&self, user: &User) {
        let _ = self.caches.uuid_to_id().set(&user.uuid, &user.id).await;
        let _ = self.caches.id_to_uuid().set(&user.id, &user.uuid).await;
        let _ = self.caches.users().set(&user.id, user).await;
    }

    /// The user with this id.
    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>, DbError> {
        self.caches
            .users()
            .get_or_load(&id, || async {
                let user = self.db.by_id(id).await?;
                if let Some(user) = &user {
                    let _ = self.caches.uuid_to_id().set(&user.uuid, &user.id).await;
                    let _ = self.caches.id_to_uuid().set(&user.id, &user.uuid).await;
                }
                Ok(user)
            })
            .await
    }

    /// The user with this UUID.
    pub async fn user_by_uuid(&self, uuid: Uuid) -> Result<Option<User>, DbError> {
        let mut loaded = None;
        let slot = &mut loaded;
        let id = self
            .caches
            .uuid_to_id()
            .get_or_load(&uuid, move || async move {
                let user = self.db.by_uuid(uuid).await?;
                if let Some(user) = &user {
                    self.remember(user).await;
                }
                let id = user.as_ref().map(|u| u.id);
                *slot = user;
                Ok::<_, DbError>(id)
            })
            .await?;
        match (loaded, id) {
            // Just read from the database: no second lookup.
            (Some(user), _) => Ok(Some(user)),
            (None, Some(id)) => self.user_by_id(id).await,
            (None, None) => Ok(None),
        }
    }

    /// The users with these UUIDs that exist, by UUID. Reads and writes the caches in
    /// batches of at most [`MAX_BATCH`].
    pub async fn users_by_uuids(&self, uuids: &[Uuid]) -> Result<HashMap<Uuid, User>, DbError> {
        let ids = self
            .caches
            .uuid_to_id()
            .mget_or_load(uuids, |missing| async move {
                let users = self.db.by_uuids(missing).await?;
                self.remember_many(&users).await;
                Ok::<_, DbError>(users.iter().map(|u| (u.uuid, u.id)).collect())
            })
            .await?;
        let wanted: Vec<i64> = ids.values().copied().collect();
        let by_id = self
            .caches
            .users()
            .mget_or_load(&wanted, |missing| async move {
                let users = self.db.by_ids(missing).await?;
                Ok::<_, DbError>(users.into_iter().map(|u| (u.id, u)).collect())
            })
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|(uuid, id)| by_id.get(&id).map(|u| (uuid, u.clone())))
            .collect())
    }

    async fn remember_many(&self, users: &[User]) {
        for chunk in users.chunks(MAX_BATCH) {
            let to_id: HashMap<Uuid, i64> = chunk.iter().map(|u| (u.uuid, u.id)).collect();
            let to_uuid: HashMap<i64, Uuid> = chunk.iter().map(|u| (u.id, u.uuid)).collect();
            let records: HashMap<i64, User> = chunk.iter().map(|u| (u.id, u.clone())).collect();
            let _ = self.caches.uuid_to_id().mset(&to_id).await;
            let _ = self.caches.id_to_uuid().mset(&to_uuid).await;
            let _ = self.caches.users().mset(&records).await;
        }
    }

    /// Updates the row, then invalidates the user in both directions.
    pub async fn update_user(&self, id: i64, change: UserUpdate) -> Result<Option<User>, DbError> {
        let Some(user) = self.db.update(id, change).await? else {
            return Ok(None);
        };
        // After the commit: a reader in between would otherwise re-cache the old row.
        self.caches.users().invalidate(&user.id).await;
        self.caches.id_to_uuid().invalidate(&user.id).await;
        self.caches.uuid_to_id().invalidate(&user.uuid).await;
        Ok(Some(user))
    }
}

async fn get_user(
    State(state): State<AppState>,
    UrlPath(uuid): UrlPath<String>,
) -> ApiResult<axum::Json<User>> {
    let uuid = parse_uuid(&uuid)?;
    match state.user_by_uuid(uuid).await? {
        Some(user) => Ok(axum::Json(user)),
        None => Err(ApiError::not_found(format!("no user with UUID {uuid}"))),
    }
}

async fn get_user_by_id(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<axum::Json<User>> {
    let id = parse_id(&id)?;
    match state.user_by_id(id).await? {
        Some(user) => Ok(axum::Json(user)),
        None => Err(ApiError::not_found(format!("no user with id {id}"))),
    }
}

async fn put_user(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<axum::Json<User>> {
    let id = parse_id(&id)?;
    let change: UserUpdate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("body must be {{\"name\"?, \"email\"?}}: {e}"))
    })?;
    match state.update_user(id, change).await? {
        Some(user) => Ok(axum::Json(user)),
        None => Err(ApiError::not_found(format!("no user with id {id}"))),
    }
}

/// The body of `POST /users/batch`.
#[derive(Debug, Deserialize)]
struct BatchRequest {
    uuids: Vec<String>,
}

/// The answer of `POST /users/batch`: users in request order, and the UUIDs not found.
#[derive(Debug, Serialize)]
struct BatchResponse {
    users: Vec<User>,
    not_found: Vec<Uuid>,
}

async fn post_batch(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<axum::Json<BatchResponse>> {
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be {{\"uuids\": [...]}}: {e}")))?;
    if request.uuids.len() > MAX_BATCH_REQUEST {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} UUIDs in one batch; at most {MAX_BATCH_REQUEST}",
                request.uuids.len()
            ),
        ));
    }
    let mut uuids = Vec::with_capacity(request.uuids.len());
    let mut seen = HashSet::with_capacity(request.uuids.len());
    for text in &request.uuids {
        let uuid = parse_uuid(text)?;
        if seen.insert(uuid) {
            uuids.push(uuid);
        }
    }
    let mut found = state.users_by_uuids(&uuids).await?;
    let mut response = BatchResponse {
        users: Vec::with_capacity(found.len()),
        not_found: Vec::new(),
    };
    for uuid in uuids {
        match found.remove(&uuid) {
            Some(user) => response.users.push(user),
            None => response.not_found.push(uuid),
        }
    }
    Ok(axum::Json(response))
}

async fn cache_health(State(state): State<AppState>) -> impl IntoResponse {
    let health = state.caches.health().await;
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(health))
}

async fn cache_stats(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({ "caches": state.caches.stats(), "database_queries": state.db.queries() }))
}

/// The registry as JSON: what `GET /cache/manifest` and `--manifest` print.
pub fn manifest() -> serde_json::Value {
    json!({ "caches": Caches::CACHES })
}

async fn cache_manifest() -> impl IntoResponse {
    axum::Json(manifest())
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Every route of the service over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/users/batch", post(post_batch))
        .route("/users/by-id/{id}", get(get_user_by_id))
        // One parameter name per position: GET takes a UUID, PUT an id.
        .route("/users/{key}", get(get_user).put(put_user))
        .route("/cache/health", get(cache_health))
        .route("/cache/stats", get(cache_stats))
        .route("/cache/manifest", get(cache_manifest))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Serves the routes on `listener` until `shutdown` completes, then finishes the
/// requests in flight. The caller connects the caches before and disconnects after.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Histograms are drained by rendering; upkeep keeps them bounded between scrapes.
    let upkeep = {
        let handle = state.metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                handle.run_upkeep();
            }
        })
    };
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep.abort();
    served
}
