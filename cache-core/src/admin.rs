//! Operator tooling on the Redis behind the caches: what `cachectl` is built on.
//!
//! An operator tool must read the same URLs as the application, hide the same
//! passwords, find the same servers (every master of a cluster) and name a cache's keys
//! the same way, or it drifts: it would refuse a cluster URL the caches use, or fail to
//! clear a hash-tagged cache. So it uses the library's own URL parsing, redaction, key
//! layout ([`keyspace`](crate::keyspace)) and `SCAN` + `UNLINK` loop, through this module.
//!
//! Unlike cache calls, these report errors: an operator asked for them and must know.
//! Every error text has the password scrubbed.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::backend::cluster::topology::{ask_slots, master_addr};
use crate::backend::redis::scan_unlink;
use crate::backend::sentinel::{Sentinels, verify_master};
use crate::config::{self, CacheConfig, NodeAddr, RedisSettings, Secret, Target};
use crate::error::CacheError;

/// Keys `SCAN` is asked to visit per call in [`Server::clear`]: large enough to be
/// quick, small enough that one reply or one `UNLINK` never holds the server for long.
pub const SCAN_COUNT: usize = 1000;

/// The `SCAN MATCH` patterns of every key a cache of `namespace` may have written, under
/// the manager's `prefix` (`?prefix=` of the URL) if any: with
/// and without a hash tag, with and without a layout (the value type's fingerprint of a
/// `bincode` cache, several while versions of a service share the Redis). Exact: the
/// grammar keeps glob characters, braces and `@` out of namespaces.
///
/// # Errors
///
/// The grammar's complaint about a namespace it refuses, saying what is allowed.
pub fn clear_patterns(
    namespace: &str,
    prefix: Option<&str>,
) -> Result<Vec<String>, cache_keyspace::NamespaceError> {
    cache_keyspace::check_namespace(namespace)?;
    Ok([false, true]
        .into_iter()
        .flat_map(|hash_tag| {
            cache_keyspace::CacheKeys {
                prefix,
                ..cache_keyspace::CacheKeys::plain(namespace, hash_tag)
            }
            .scan_patterns_of_every_layout()
        })
        .collect())
}

/// The servers a cache URL names: one Redis server, the master the sentinels of a
/// `redis+sentinel://` URL name, or the masters of a Redis Cluster.
///
/// Parsed like `connect` parses (every scheme but `memory://`, which holds nothing
/// outside its process).
pub struct Servers {
    target: ServerTarget,
    redacted: String,
    secret: Option<Secret>,
    prefix: Option<String>,
}

enum ServerTarget {
    One(Box<RedisSettings>),
    Sentinel(Box<Sentinels>),
    Cluster(Box<config::ClusterSettings>),
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl Servers {
    /// Parses a cache URL (`redis://`, `rediss://`, `redis+sentinel://`,
    /// `rediss+sentinel://`, `redis+cluster://`, `rediss+cluster://`). `password` is used when the URL carries none, as
    /// `CACHECTL_PASSWORD` is.
    ///
    /// # Errors
    ///
    /// `CacheError::Config` for a URL `connect` would refuse, and for `memory://`.
    pub fn parse(url: &str, password: Option<&str>) -> Result<Self, CacheError> {
        let with_password;
        let url = match password.filter(|p| !p.is_empty()) {
            Some(password) => {
                with_password = add_password(url, password);
                with_password.as_str()
            }
            None => url,
        };
        match config::parse(url, &CacheConfig::default())? {
            Target::Memory => Err(CacheError::config(
                "`memory://` holds nothing outside the process that uses it; give the URL of a Redis server or cluster",
            )),
            Target::Redis(settings) => Ok(Servers {
                redacted: settings.redacted.clone(),
                secret: settings.secret.clone(),
                prefix: settings.config.key_prefix.clone(),
                target: ServerTarget::One(settings),
            }),
            Target::Sentinel(settings) => Ok(Servers {
                redacted: settings.redacted.clone(),
                secret: settings.nodes.secret().cloned(),
                prefix: settings.config.key_prefix.clone(),
                target: ServerTarget::Sentinel(Box::new(Sentinels::new(*settings))),
            }),
            Target::Cluster(settings) => Ok(Servers {
                redacted: settings.redacted.clone(),
                secret: settings.nodes.secret().cloned(),
                prefix: settings.config.key_prefix.clone(),
                target: ServerTarget::Cluster(settings),
            }),
        }
    }

    /// The URL with its password shown as `***`.
    pub fn url(&self) -> &str {
        &self.redacted
    }

    /// The prefix the caches' keys are under (`?prefix=`), if any: an operator tool
    /// stays inside it.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// `text` with every form of the password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Some(secret) => secret.scrub(text.to_owned()),
            None => text.to_owned(),
        }
    }

    /// Connects to every server that holds keys: the one server, the master the
    /// sentinels name (checked with `ROLE`), or every master of the cluster, learned with
    /// `CLUSTER SLOTS` from the first of the URL's nodes that answers. Each connection
    /// waits at most `command_timeout` for a reply.
    ///
    /// # Errors
    ///
    /// The reason, password scrubbed, when a server (or, for a cluster, every node of
    /// the URL) cannot be reached within `connect_timeout`.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Vec<Server>, String> {
        match &self.target {
            ServerTarget::One(settings) => {
                let server = open(
                    settings,
                    &settings.redacted,
                    false,
                    self.prefix.clone(),
                    connect_timeout,
                    command_timeout,
                )
                .await?;
                Ok(vec![server])
            }
            ServerTarget::Sentinel(sentinels) => {
                let mut errors = Vec::new();
                for addr in sentinels.locate().await.map_err(|e| self.scrub(&e))? {
                    let settings = sentinels.settings(&addr)?;
                    let address = addr.to_string();
                    let opened = open(
                        &settings,
                        &address,
                        false,
                        self.prefix.clone(),
                        connect_timeout,
                        command_timeout,
                    )
                    .await;
                    let mut server = match opened {
                        Ok(server) => server,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    match verify_master(&mut server.connection).await {
                        Ok(true) => return Ok(vec![server]),
                        Ok(false) => errors.push(format!("{address}: not a master (ROLE)")),
                        Err(e) => errors.push(format!("{address}: {}", self.scrub(&e.to_string()))),
                    }
                }
                Err(format!(
                    "the master the sentinels of {} name cannot be used ({})",
                    self.redacted,
                    errors.join("; ")
                ))
            }
            ServerTarget::Cluster(cluster) => {
                let mut errors = Vec::new();
                for seed in &cluster.seeds {
                    let settings = cluster.nodes.settings(seed, &cluster.config)?;
                    let ranges = match ask_slots(&settings, connect_timeout).await {
                        Ok(ranges) => ranges,
                        Err(e) => {
                            errors.push(format!("{seed}: {e}"));
                            continue;
                        }
                    };
                    let mut masters: Vec<NodeAddr> = Vec::new();
                    for (_, _, host, port) in &ranges {
                        if let Some(addr) = master_addr(host, *port, seed)
                            && !masters.contains(&addr)
                        {
                            masters.push(addr);
                        }
                    }
                    let mut servers = Vec::with_capacity(masters.len());
                    for addr in masters {
                        let settings = cluster.nodes.settings(&addr, &cluster.config)?;
                        let address = addr.to_string();
                        servers.push(
                            open(
                                &settings,
                                &address,
                                true,
                                self.prefix.clone(),
                                connect_timeout,
                                command_timeout,
                            )
                            .await?,
                        );
                    }
                    return Ok(servers);
                }
                Err(format!(
                    "no node of {} answered CLUSTER SLOTS ({})",
                    self.redacted,
                    errors.join("; ")
                ))
            }
        }
    }
}

/// One server holding keys: a standalone server, or a master of a cluster.
pub struct Server {
    /// How the server is named in reports: the redacted URL, or a master's `host:port`.
    pub address: String,
    /// A connection of its own; each command waits at most the command timeout.
    pub connection: MultiplexedConnection,
    /// Whether it is a cluster node, whose commands may not span hash slots.
    cluster_node: bool,
    secret: Option<Secret>,
    prefix: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Removes every key of the caches of `namespace`, whatever their spelling (see
    /// [`clear_patterns`]), with `SCAN MATCH` and `UNLINK` in batches of about
    /// [`SCAN_COUNT`], never `KEYS`; then announces each pattern on the library's
    /// invalidation channel, as the library's own `clear` does, so first levels that hear
    /// by pub/sub (a server without `CLIENT TRACKING`) empty the namespace.
    /// `removed_so_far` hears the running total after each batch.
    ///
    /// # Errors
    ///
    /// `Err((removed, reason))` for a namespace that breaks the grammar (nothing sent),
    /// when the server fails midway (`removed` keys were removed until then), or when it
    /// refuses the announcement (every key was removed).
    pub async fn clear(
        &mut self,
        namespace: &str,
        removed_so_far: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, (u64, String)> {
        let patterns =
            clear_patterns(namespace, self.prefix.as_deref()).map_err(|e| (0, e.to_string()))?;
        let mut total = 0;
        for pattern in &patterns {
            let (removed, result) = scan_unlink(
                &mut self.connection,
                pattern,
                SCAN_COUNT,
                self.cluster_node,
                &mut |n| removed_so_far(total + n),
            )
            .await;
            total += removed;
            if let Err(error) = result {
                return Err((total, self.scrub(&error.to_string())));
            }
        }
        // As the library's own clear does: instances whose first levels hear by pub/sub
        // (a server without tracking) empty the namespace's level; those Redis tells of
        // each removal ignore it. After every pattern is cleared, so a user allowed to
        // remove keys but not to publish still removes them all.
        let channel = crate::local::Channels::for_prefix(self.prefix.as_deref()).invalidate;
        for pattern in &patterns {
            let announced = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(format!("cachectl|{pattern}"))
                .query_async::<i64>(&mut self.connection)
                .await;
            if let Err(error) = announced {
                return Err((
                    total,
                    format!(
                        "the keys were removed, but not announced to first levels that hear by pub/sub (PUBLISH failed: {}); those keep their copies until local_ttl",
                        self.scrub(&error.to_string())
                    ),
                ));
            }
        }
        Ok(total)
    }

    /// `text` with every form of the password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Some(secret) => secret.scrub(text.to_owned()),
            None => text.to_owned(),
        }
    }
}

async fn open(
    settings: &RedisSettings,
    address: &str,
    cluster_node: bool,
    prefix: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<Server, String> {
    let redis_config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(command_timeout));
    let connected = tokio::time::timeout(
        connect_timeout,
        settings
            .client
            .get_multiplexed_async_connection_with_config(&redis_config),
    )
    .await;
    let scrub = |text: String| match &settings.secret {
        Some(secret) => secret.scrub(text),
        None => text,
    };
    match connected {
        Ok(Ok(connection)) => Ok(Server {
            address: address.to_owned(),
            connection,
            cluster_node,
            secret: settings.secret.clone(),
            prefix,
        }),
        Ok(Err(e)) => Err(format!("{address}: {}", scrub(e.to_string()))),
        Err(_) => Err(format!(
            "{address}: no answer within the connect timeout ({connect_timeout:?})"
        )),
    }
}

/// `url` with `password` in its userinfo, percent-encoded, unless it carries one.
fn add_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the path or the query; a userinfo ends at its last `@`.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let encoded: String =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC)
            .collect();
    match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => url.to_owned(),
        Some((user, hosts)) => format!("{scheme}://{user}:{encoded}@{hosts}{tail}"),
        None => format!("{scheme}://:{encoded}@{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_added_only_where_the_url_has_none() {
        assert_eq!(
            add_password("redis://127.0.0.1:6379/0", "p@ss"),
            "redis://:p%40ss@127.0.0.1:6379/0"
        );
        assert_eq!(
            add_password("redis://ops@h:1/0", "pw"),
            "redis://ops:pw@h:1/0"
        );
        assert_eq!(
            add_password("redis://:own@h:1/0", "pw"),
            "redis://:own@h:1/0"
        );
        assert_eq!(
            add_password("redis+cluster://h1:1,h2:2?coalesce=false", "pw"),
            "redis+cluster://:pw@h1:1,h2:2?coalesce=false"
        );
    }

    #[test]
    fn servers_parse_every_redis_scheme_and_hide_the_password() {
        let one = Servers::parse("redis://127.0.0.1:6379/0", Some("hunter2")).unwrap();
        assert_eq!(one.url(), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(one.scrub("auth hunter2 failed"), "auth *** failed");
        assert!(!format!("{one:?}").contains("hunter2"));
        let cluster = Servers::parse("redis+cluster://:pw@h1:1,h2:2", None).unwrap();
        assert_eq!(cluster.url(), "redis+cluster://:***@h1:1,h2:2");
        assert!(Servers::parse("rediss://h:6380/0", None).is_ok());
        let memory = Servers::parse("memory://", None).unwrap_err().to_string();
        assert!(memory.contains("memory://"), "{memory}");
        let bad = Servers::parse("http://h", None).unwrap_err().to_string();
        assert!(bad.contains("unknown URL scheme"), "{bad}");
    }
}
