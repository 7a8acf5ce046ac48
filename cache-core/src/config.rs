//! Parsing of `connect` URLs into backend settings, and their redacted display.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::error::CacheError;

/// What a URL asks to connect to.
pub(crate) enum Target {
    Memory,
    Redis(Box<RedisSettings>),
}

/// Settings of a standalone Redis connection.
pub(crate) struct RedisSettings {
    /// What redis-rs connects with (the URL without our own query options).
    pub client: redis::Client,
    /// The URL with its password replaced, for logs and health.
    pub redacted: String,
    /// The password, kept only to scrub it from error text.
    pub secret: Option<Secret>,
    /// Deadline of one call, including the wait for the reply.
    pub response_timeout: Duration,
    /// Deadline of one connection attempt.
    pub connect_timeout: Duration,
    /// First and longest wait between reconnection attempts.
    pub backoff: (Duration, Duration),
}

/// A password; `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Replaces every occurrence of the secret in `text`.
    pub fn scrub(&self, text: String) -> String {
        if self.0.is_empty() || !text.contains(&self.0) {
            text
        } else {
            text.replace(&self.0, "***")
        }
    }
}

pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

const QUERY_OPTIONS: &str = "`response_timeout_ms`, `connect_timeout_ms`";

/// Parses a `connect` URL. Errors name the faulty part and never echo the password.
pub(crate) fn parse(input: &str) -> Result<Target, CacheError> {
    let url = Url::parse(input).map_err(|e| {
        CacheError::config(format!(
            "the cache URL does not parse ({e}); expected e.g. `redis://:password@127.0.0.1:6379/0` or `memory://`"
        ))
    })?;
    match url.scheme() {
        "memory" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) || !matches!(url.path(), "" | "/") {
                return Err(CacheError::config("`memory://` takes no host or path"));
            }
            if let Some((name, _)) = url.query_pairs().next() {
                return Err(CacheError::config(format!(
                    "unknown option `{name}` in the URL query; `memory://` takes no options"
                )));
            }
            Ok(Target::Memory)
        }
        "redis" => parse_redis(url).map(|s| Target::Redis(Box::new(s))),
        "rediss" => Err(CacheError::config(
            "TLS (`rediss://`) is not supported by this build yet; use `redis://` on a trusted network",
        )),
        "redis+cluster" | "rediss+cluster" => Err(CacheError::config(
            "Redis Cluster (`redis+cluster://`) is not supported by this build yet; use `redis://`",
        )),
        other => Err(CacheError::config(format!(
            "unknown URL scheme `{other}`; expected `redis://`, `rediss://`, `redis+cluster://` or `memory://`"
        ))),
    }
}

fn parse_redis(mut url: Url) -> Result<RedisSettings, CacheError> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CacheError::config(
            "the Redis URL has no host; expected `redis://host[:port][/db]`",
        ));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(CacheError::config(format!(
            "the Redis URL path must be a database number like `/0`, not `/{db}`"
        )));
    }

    let mut response_timeout = DEFAULT_RESPONSE_TIMEOUT;
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    for (name, value) in url.query_pairs() {
        let slot = match &*name {
            "response_timeout_ms" => &mut response_timeout,
            "connect_timeout_ms" => &mut connect_timeout,
            other => {
                return Err(CacheError::config(format!(
                    "unknown option `{other}` in the Redis URL query; expected one of {QUERY_OPTIONS}"
                )));
            }
        };
        *slot = match value.parse::<u64>() {
            Ok(ms @ 1..) => Duration::from_millis(ms),
            _ => {
                return Err(CacheError::config(format!(
                    "option `{name}` must be a whole number of milliseconds above 0, not `{value}`"
                )));
            }
        };
    }
    url.set_query(None);

    let secret = url.password().map(|p| {
        let decoded = percent_decode(p);
        Secret(decoded)
    });
    let client = redis::Client::open(url.as_str()).map_err(|e| {
        let reason = format!("the Redis URL is not usable: {e}");
        CacheError::config(match &secret {
            Some(secret) => secret.scrub(reason),
            None => reason,
        })
    })?;
    Ok(RedisSettings {
        client,
        redacted: redact(&url),
        secret,
        response_timeout,
        connect_timeout,
        backoff: DEFAULT_BACKOFF,
    })
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match parse(url) {
            Err(CacheError::Config { reason }) => reason,
            Err(other) => panic!("{url}: not a config error: {other}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }

    #[test]
    fn accepts_the_contract_urls() {
        assert!(matches!(parse("memory://"), Ok(Target::Memory)));
        let Ok(Target::Redis(s)) =
            parse("redis://:hunter2@127.0.0.1:6379/0?response_timeout_ms=80")
        else {
            panic!("redis URL rejected");
        };
        assert_eq!(s.redacted, "redis://:***@127.0.0.1:6379/0");
        assert_eq!(s.response_timeout, Duration::from_millis(80));
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(!format!("{:?}", s.secret).contains("hunter2"));
    }

    #[test]
    fn errors_name_the_faulty_part_without_the_password() {
        assert!(config_error("http://x").contains("unknown URL scheme `http`"));
        assert!(config_error("not a url").contains("does not parse"));
        assert!(config_error("redis://:pw@127.0.0.1/x").contains("database number"));
        let unknown = config_error("redis://:s3cret@127.0.0.1/0?tiemout=5");
        assert!(unknown.contains("`tiemout`") && unknown.contains("response_timeout_ms"));
        assert!(config_error("redis://:s3cret@h/0?connect_timeout_ms=0").contains("above 0"));
        assert!(config_error("memory://?x=1").contains("unknown option `x`"));
        for url in [
            "redis://:s3cret@127.0.0.1/x",
            "redis://:s3cret@h:99999/0",
            "redis://u:s3cret@/0",
        ] {
            let msg = match parse(url) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} accepted"),
            };
            assert!(!msg.contains("s3cret"), "{msg}");
        }
    }

    #[test]
    fn scrub_hides_the_password() {
        let s = Secret("p@ss".into());
        assert_eq!(s.scrub("auth p@ss failed".into()), "auth *** failed");
        assert_eq!(percent_decode("p%40ss"), "p@ss");
    }
}
