//! `cargo run -p axum-service`: the users service on `127.0.0.1:3000`.
//!
//! Environment: `REDIS_URL` (unset: the in-process `memory://` backend), `DATABASE_URL`
//! (`postgres://user:password@host:port/dbname`: users on a PostgreSQL server, the schema
//! migrated at start; unset: SQLite), `DATABASE_PATH` (SQLite's file, default `users.db`,
//! created on first run), `SEED_USERS` (users inserted when the table is empty, default
//! 1000), `DATABASE_POOL_SIZE` (PostgreSQL connections, default 8), `BIND_ADDR` (default
//! `127.0.0.1:3000`), `RUST_LOG`.
//! `cargo run -p axum-service -- --manifest` prints the cache registry as JSON and exits.

use std::path::PathBuf;
use std::sync::Arc;

use axum_service::{AppState, Caches, Db, PostgresOptions, manifest, serve};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--manifest") {
        println!("{}", serde_json::to_string_pretty(&manifest())?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let seed: u32 = match std::env::var("SEED_USERS") {
        Ok(n) => n.parse()?,
        Err(_) => 1000,
    };
    let db = open_database(seed).await?;

    // The lifespan: connect at start-up, disconnect after the last request.
    let caches = Arc::new(Caches::new());
    match std::env::var("REDIS_URL") {
        Ok(url) => caches.connect(&url).await?,
        Err(_) => {
            tracing::warn!(
                "REDIS_URL is not set: caching in process (memory://); set it to use Redis"
            );
            caches.connect("memory://").await?;
        }
    }

    let addr = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, database = %db.describe(), "serving");
    serve(
        listener,
        AppState::new(Arc::clone(&caches), db),
        shutdown_signal(),
    )
    .await?;

    caches.disconnect().await;
    tracing::info!("shut down");
    Ok(())
}

/// PostgreSQL when `DATABASE_URL` is set, else the SQLite file at `DATABASE_PATH`.
async fn open_database(seed: u32) -> Result<Db, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let mut options = PostgresOptions::default().seed_users(seed);
            if let Ok(n) = std::env::var("DATABASE_POOL_SIZE") {
                options = options.pool_size(n.parse()?);
            }
            Ok(Db::connect_postgres(&url, options).await?)
        }
        // Not echoed: the URL may carry a password.
        Ok(_) => Err("DATABASE_URL must start with postgres:// or postgresql://; unset it to use SQLite (DATABASE_PATH)".into()),
        Err(_) => {
            let path =
                PathBuf::from(std::env::var("DATABASE_PATH").unwrap_or_else(|_| "users.db".into()));
            Ok(Db::open(&path, seed)?)
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix (what `docker stop` and systemd send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received: finishing requests in flight");
}
