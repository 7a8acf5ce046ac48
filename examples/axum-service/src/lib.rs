//! The Python service ported to axum: users in SQLite or PostgreSQL, behind typed caches.
//!
//! The manager is connected at start-up and held in the app state; a data-access layer
//! tries the cache, loads from the database on a miss and populates both directions;
//! updates invalidate both directions. Redis going away costs latency, never an answer;
//! a stalled database costs at most the soft timeout of a read whose entry is stale
//! (`fail_safe`), which is answered with the stale value.
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

mod db;

use std::collections::{HashMap, HashSet};
use std::future::Future;
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
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

pub use db::{Db, DbError, PostgresOptions, UserUpdate};

/// The most UUIDs one `POST /users/batch` may carry.
pub const MAX_BATCH_REQUEST: usize = 1000;

/// A user's UUID to its id. Kept an hour past its TTL: a stalled database is answered
/// with the stale id after 100 ms.
#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64,
        fail_safe = 3600, load_timeout_ms = 100)]
pub struct UserUuidToIdCache;

/// A user's id to its UUID.
#[derive(Cache)]
#[cache(namespace = "user:id_to_uuid", ttl = 600, key = i64, value = Uuid)]
pub struct UserIdToUuidCache;

/// A user, as stored in the database; cached by id in `UserCache`, kept an hour past
/// its TTL as a fallback for a failing or stalled database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:record", ttl = 300, key = i64, fail_safe = 3600, load_timeout_ms = 100)]
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
        // A load may outlive this call (the soft timeout), so it owns what it uses.
        let state = self.clone();
        self.caches
            .users()
            .get_or_load(&id, move || async move {
                let user = state.db.by_id(id).await?;
                if let Some(user) = &user {
                    let _ = state.caches.uuid_to_id().set(&user.uuid, &user.id).await;
                    let _ = state.caches.id_to_uuid().set(&user.id, &user.uuid).await;
                }
                Ok(user)
            })
            .await
    }

    /// The user with this UUID.
    pub async fn user_by_uuid(&self, uuid: Uuid) -> Result<Option<User>, DbError> {
        // The row a load read, so a miss needs no second lookup; shared with the load,
        // which may finish after this call returned a stale id.
        let loaded: Arc<Mutex<Option<User>>> = Arc::default();
        let (state, slot) = (self.clone(), Arc::clone(&loaded));
        let id = self
            .caches
            .uuid_to_id()
            .get_or_load(&uuid, move || async move {
                let user = state.db.by_uuid(uuid).await?;
                if let Some(user) = &user {
                    state.remember(user).await;
                }
                let id = user.as_ref().map(|u| u.id);
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = user;
                Ok::<_, DbError>(id)
            })
            .await?;
        let loaded = loaded.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (loaded, id) {
            // Just read from the database: no second lookup.
            (Some(user), Some(id)) if user.id == id => Ok(Some(user)),
            (_, Some(id)) => self.user_by_id(id).await,
            (_, None) => Ok(None),
        }
    }

    /// The users with these UUIDs that exist, by UUID. Reads and writes the caches in
    /// batches of at most [`MAX_BATCH`].
    pub async fn users_by_uuids(&self, uuids: &[Uuid]) -> Result<HashMap<Uuid, User>, DbError> {
        let state = self.clone();
        let ids = self
            .caches
            .uuid_to_id()
            .mget_or_load(uuids, move |missing| async move {
                let users = state.db.by_uuids(missing).await?;
                state.remember_many(&users).await;
                Ok::<_, DbError>(users.iter().map(|u| (u.uuid, u.id)).collect())
            })
            .await?;
        let wanted: Vec<i64> = ids.values().copied().collect();
        let state = self.clone();
        let by_id = self
            .caches
            .users()
            .mget_or_load(&wanted, move |missing| async move {
                let users = state.db.by_ids(missing).await?;
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
