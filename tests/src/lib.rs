//! Test harness of the cache framework: a throwaway `redis-server` per test.
//!
//! Modelled on redis-rs's `redis-test/src/server.rs`: each [`RedisServer`] runs its own
//! `redis-server` process on a free loopback port, with persistence off and its own
//! temporary directory, and is killed when dropped. Tests drive the cache through
//! [`RedisServer::url`] and inspect what it wrote with [`RedisServer::raw`] and the
//! [`wire`] helpers. A [`RoundTripProxy`] in front of a server counts the library's round
//! trips; [`LogCapture`] records what it logs.

pub mod bench_data;
pub mod cluster;
mod logs;
mod proxy;
pub mod sentinel;
mod server;
pub mod tls;
pub mod wire;

pub use logs::LogCapture;
pub use proxy::{DelayedAddress, MovableAddress, RoundTripProxy};
pub use server::{RedisServer, RedisServerBuilder, Watchdog, free_port};
