//! `connect` URLs: `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`,
//! `redis+sentinel://`, `rediss+sentinel://` and `memory://`, with their query options,
//! parsed into what a backend starts from.
//! Errors name the faulty part and never echo the password.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::CacheConfig;
use super::secret::{Secret, redact, scrub, shown};
use super::tls::{open_client, trusted_ca};
use crate::error::CacheError;

/// What a URL asks to connect to.
pub(crate) enum Target {
    Memory,
    Redis(Box<RedisSettings>),
    Cluster(Box<ClusterSettings>),
    Sentinel(Box<SentinelSettings>),
}

/// Settings of a standalone Redis connection.
pub(crate) struct RedisSettings {
    /// What redis-rs connects with (the URL without our own query options).
    pub client: redis::Client,
    /// The URL with its password replaced, for logs and health.
    pub redacted: String,
    /// The password, kept only to scrub it from error text.
    pub secret: Option<Secret>,
    /// Timeouts, breaker and backoff.
    pub config: CacheConfig,
}

/// The longest `connect` URL accepted, in bytes. A cluster URL naming hundreds of seed
/// nodes, or a percent-encoded `ca_file` path as long as Linux allows (4096 bytes), fits;
/// anything longer is a mistake (a file or a token pasted into `REDIS_URL`), is refused
/// before it is parsed, and is never echoed.
const MAX_URL_LEN: usize = 16 * 1024;

const QUERY_OPTIONS: &str = "`response_timeout_ms`, `connect_timeout_ms`, `failure_threshold`, `backoff_min_ms`, `backoff_max_ms`, `summary_interval_ms`, `fail_safe_throttle_ms`, `single_flight_wait_ms`, `background_timeout_ms`, `max_value_bytes`, `prefix`, `coalesce`, `ca_file`";

/// Settings of a Redis Cluster: where to learn its slot map, and how to reach any node.
pub(crate) struct ClusterSettings {
    /// The nodes the URL names, asked for the slot map until one answers.
    pub seeds: Vec<NodeAddr>,
    /// How to connect to a node, whichever the cluster names.
    pub nodes: NodeTemplate,
    /// The URL with its password replaced, for logs and health.
    pub redacted: String,
    /// Timeouts, breaker and backoff, shared by every node connection.
    pub config: CacheConfig,
}

/// Settings of a master found through Redis Sentinel: where to ask, and how to reach
/// the master the sentinels name.
pub(crate) struct SentinelSettings {
    /// The sentinels the URL names, all asked at once.
    pub sentinels: Vec<NodeAddr>,
    /// How to connect to a sentinel: scheme, the sentinels' own credentials, trusted CA.
    pub sentinel_nodes: NodeTemplate,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// How to connect to the master they name: credentials, database, trusted CA.
    pub nodes: NodeTemplate,
    /// The URL with its password replaced and its options left out, for logs and health.
    pub redacted: String,
    /// Timeouts, breaker and backoff.
    pub config: CacheConfig,
}

/// A cluster node's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeAddr {
    /// As a URL writes it: an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    /// An address as `CLUSTER SLOTS` reports it, IPv6 without brackets.
    pub fn new(host: &str, port: u16) -> Self {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        NodeAddr { host, port }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What every node connection of a cluster shares: scheme, credentials, trusted CA.
pub(crate) struct NodeTemplate {
    /// `redis[s]://[user[:password]@]host/0`; the host and port are replaced per node.
    url: Url,
    ca: Option<Vec<u8>>,
    secret: Option<Secret>,
}

impl NodeTemplate {
    /// The password every node connection carries, if any (for a sentinel URL, both the
    /// data nodes' and the sentinels').
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// The settings of a connection to the node at `addr`.
    pub fn settings(&self, addr: &NodeAddr, config: &CacheConfig) -> Result<RedisSettings, String> {
        let mut url = self.url.clone();
        let unusable = || format!("node address `{}` is not usable", shown(&addr.to_string()));
        url.set_host(Some(&addr.host))
            .map_err(|e| format!("{}: {e}", unusable()))?;
        url.set_port(Some(addr.port)).map_err(|()| unusable())?;
        let client = open_client(&url, self.ca.as_deref())
            .map_err(|e| scrub(&self.secret, format!("{}: {e}", unusable())))?;
        Ok(RedisSettings {
            client,
            redacted: redact(&url),
            secret: self.secret.clone(),
            config: config.clone(),
        })
    }
}

/// Parses a `connect` URL. Errors name the faulty part and never echo the password.
pub(crate) fn parse(input: &str, config: &CacheConfig) -> Result<Target, CacheError> {
    check_text(input)?;
    // `host:port,host:port` is not a URL authority, so cluster URLs are split by hand.
    if let Some((scheme, rest)) = input.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "redis+cluster" | "rediss+cluster" => {
                let settings = parse_cluster(&scheme, rest, config.clone())?;
                return Ok(Target::Cluster(Box::new(settings)));
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let settings = parse_sentinel(&scheme, rest, config.clone())?;
                return Ok(Target::Sentinel(Box::new(settings)));
            }
            _ => {}
        }
    }
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
            // Not named: after an unencoded `?` in a password, the "option" is the rest
            // of it.
            if url.query().is_some() {
                return Err(CacheError::config(
                    "`memory://` takes no options; remove the `?...` query",
                ));
            }
            Ok(Target::Memory)
        }
        "redis" | "rediss" => parse_redis(url, config.clone()).map(|s| Target::Redis(Box::new(s))),
        other => Err(CacheError::config(format!(
            "unknown URL scheme `{}`; expected `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`, `redis+sentinel://`, `rediss+sentinel://` or `memory://`",
            shown(other)
        ))),
    }
}

fn parse_redis(mut url: Url, mut config: CacheConfig) -> Result<RedisSettings, CacheError> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CacheError::config(format!(
            "the Redis URL has no host; expected `{}://host[:port][/db]`",
            url.scheme()
        )));
    }
    // The userinfo ends at the first `/`, `?` or `#`: past one left unencoded in the
    // password, the rest of it would be read as the path, query or fragment, and echoed
    // by their errors. Nothing else puts an `@` there.
    if [Some(url.path()), url.query(), url.fragment()]
        .into_iter()
        .flatten()
        .any(|part| part.contains('@'))
    {
        return Err(CacheError::config(misplaced_at("Redis URL")));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(CacheError::config(format!(
            "the Redis URL path must be a database number like `/0`, not `/{}`",
            shown(db)
        )));
    }
    if url.fragment().is_some() {
        return Err(CacheError::config(
            "the Redis URL has a `#...` fragment; remove it (certificate checks cannot be turned off)",
        ));
    }
    apply_options(url.query_pairs(), &mut config)?;
    config.validate()?;
    url.set_query(None);

    let secret = url.password().map(Secret::from_url);
    let ca = trusted_ca(url.scheme() == "rediss", &config)?;
    let client = open_client(&url, ca.as_deref()).map_err(|e| {
        CacheError::config(scrub(&secret, format!("the Redis URL is not usable: {e}")))
    })?;
    Ok(RedisSettings {
        client,
        redacted: redact(&url),
        secret,
        config,
    })
}

/// Refuses what the `url` crate would quietly change or what must not be echoed: a huge
/// input, and control characters, which it strips (tabs, newlines: `redis://h\n/0` would
/// connect to `redis://h/0`) or percent-encodes (into a password the server never had).
fn check_text(input: &str) -> Result<(), CacheError> {
    if input.len() > MAX_URL_LEN {
        return Err(CacheError::config(format!(
            "the cache URL is {} bytes long; at most {MAX_URL_LEN} bytes are allowed",
            input.len()
        )));
    }
    if let Some((at, c)) = input.char_indices().find(|(_, c)| c.is_control()) {
        return Err(CacheError::config(format!(
            "the cache URL contains a control character (U+{:04X}) at byte {at}; percent-encode it or remove it",
            u32::from(c)
        )));
    }
    if input.trim().is_empty() {
        return Err(CacheError::config(
            "the cache URL is empty; expected e.g. `redis://:password@127.0.0.1:6379/0` or `memory://`",
        ));
    }
    Ok(())
}

/// What is wrong when an `@` ends up past the userinfo; names no part, since the parts
/// then hold pieces of the password.
fn misplaced_at(kind: &str) -> String {
    format!(
        "the user name or password of the {kind} holds a `/`, `?` or `#`, or an option holds an `@`; percent-encode them (`%2F`, `%3F`, `%23`, `%40`)"
    )
}

/// How a URL naming several servers (`host:port,host:port`) calls them in messages.
struct Hosts {
    /// `cluster`, `sentinel`: the URL as messages name it (`the cluster URL`).
    kind: &'static str,
    /// `node`, `sentinel`: one of its hosts (`names an empty node`).
    member: &'static str,
    /// `cluster node`, `sentinel`: one of its hosts, named alone (`cluster node `h:x``).
    label: &'static str,
    /// The port of a host written without one.
    default_port: u16,
    /// A URL to show as an example of what is expected.
    example: String,
}

/// A URL naming several servers, `scheme://[userinfo@]host:port,host:port[/path][?query]`,
/// cut into its parts by hand: `host:port,host:port` is not a URL authority.
struct MultiHost<'a> {
    userinfo: Option<&'a str>,
    hosts: &'a str,
    /// Without its leading `/`.
    path: &'a str,
    query: Option<&'a str>,
}

impl Hosts {
    fn split<'a>(&self, rest: &'a str) -> Result<MultiHost<'a>, CacheError> {
        if rest.contains('#') {
            return Err(CacheError::config(format!(
                "the {} URL has a `#...` fragment; remove it (certificate checks cannot be turned off)",
                self.kind
            )));
        }
        // The userinfo first, up to the last `@`: a password may hold an unencoded `/` or
        // `?`, and splitting the path or query off before would echo part of it in errors.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        // A `/`, `?` or `#` there means the last `@` was not the userinfo's (one in an
        // option), or the password needs percent-encoding: the rest would be misread.
        if userinfo.is_some_and(|u| u.contains(['/', '?', '#'])) {
            return Err(CacheError::config(misplaced_at(&format!(
                "{} URL",
                self.kind
            ))));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(MultiHost {
            userinfo,
            hosts,
            path,
            query,
        })
    }

    /// The URL every connection of `scheme` starts from: `scheme://[userinfo@]127.0.0.1/db`,
    /// the host and port replaced per server.
    fn template(&self, scheme: &str, userinfo: Option<&str>, db: u16) -> Result<Url, CacheError> {
        let at = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let template = Url::parse(&format!("{scheme}://{at}127.0.0.1/{db}")).map_err(|e| {
            CacheError::config(format!(
                "the user name or password of the {} URL does not parse ({e}); percent-encode it",
                self.kind
            ))
        })?;
        // The userinfo ends at the last `@`: with one in the query, or a `/`, `?` or `#` in
        // the password, the split misread the URL, and the template shows it.
        if template.host_str() != Some("127.0.0.1")
            || template.path() != format!("/{db}")
            || template.query().is_some()
        {
            return Err(CacheError::config(misplaced_at(&format!(
                "{} URL",
                self.kind
            ))));
        }
        Ok(template)
    }

    /// The addresses of `hosts`, each checked to make a usable connection of `nodes`;
    /// duplicates dropped.
    fn addresses(
        &self,
        hosts: &str,
        nodes: &NodeTemplate,
        config: &CacheConfig,
    ) -> Result<Vec<NodeAddr>, CacheError> {
        let (kind, member, label, example) = (self.kind, self.member, self.label, &self.example);
        let scheme = nodes.url.scheme();
        let mut addrs = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(CacheError::config(format!(
                    "the {kind} URL names an empty {member}; expected {example}"
                )));
            }
            let url = Url::parse(&format!("{scheme}://{host}")).map_err(|e| {
                CacheError::config(format!(
                    "{label} `{}` is not a host:port ({e}); expected {example}",
                    shown(host)
                ))
            })?;
            let addr = match url.host_str() {
                Some(h) if !h.is_empty() && matches!(url.path(), "" | "/") => {
                    NodeAddr::new(h, url.port().unwrap_or(self.default_port))
                }
                _ => {
                    return Err(CacheError::config(format!(
                        "{label} `{}` is not a host:port; expected {example}",
                        shown(host)
                    )));
                }
            };
            nodes.settings(&addr, config).map_err(CacheError::config)?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(addrs)
    }
}

/// The userinfo of `template` as a redacted URL shows it: `user:***@`, `user@` or nothing.
fn shown_userinfo(userinfo: Option<&str>, template: &Url) -> String {
    match userinfo {
        None => String::new(),
        Some(_) => {
            let user = template.username();
            match template.password() {
                Some(_) => format!("{user}:***@"),
                None => format!("{user}@"),
            }
        }
    }
}

/// `redis[s]+cluster://[user][:password@]host:port,host:port[/0][?options]`.
fn parse_cluster(
    scheme: &str,
    rest: &str,
    mut config: CacheConfig,
) -> Result<ClusterSettings, CacheError> {
    let tls = scheme == "rediss+cluster";
    let node_scheme = if tls { "rediss" } else { "redis" };
    let hosts = Hosts {
        kind: "cluster",
        member: "node",
        label: "cluster node",
        default_port: 6379,
        example: format!("`{scheme}://:password@10.0.0.1:6379,10.0.0.2:6379`"),
    };
    let parts = hosts.split(rest)?;
    let path = parts.path;
    if !matches!(path.trim_end_matches('/'), "" | "0") {
        return Err(CacheError::config(format!(
            "a Redis Cluster has only database 0; remove the path `/{}` from the cluster URL",
            shown(path)
        )));
    }
    if let Some(query) = parts.query {
        apply_options(url::form_urlencoded::parse(query.as_bytes()), &mut config)?;
    }
    config.validate()?;

    let template = hosts.template(node_scheme, parts.userinfo, 0)?;
    let secret = template.password().map(Secret::from_url);
    let ca = trusted_ca(tls, &config)?;
    let nodes = NodeTemplate {
        url: template,
        ca,
        secret,
    };
    let seeds = hosts.addresses(parts.hosts, &nodes, &config)?;

    let shown_path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Ok(ClusterSettings {
        seeds,
        redacted: format!(
            "{scheme}://{}{}{shown_path}",
            shown_userinfo(parts.userinfo, &nodes.url),
            parts.hosts
        ),
        nodes,
        config,
    })
}

/// The port of a sentinel written without one.
const SENTINEL_PORT: u16 = 26379;

/// The options only a sentinel URL takes: the sentinels' own credentials.
const SENTINEL_OPTIONS: [&str; 2] = ["sentinel_username", "sentinel_password"];

/// `redis[s]+sentinel://[user][:password@]host:port,host:port/MASTER_NAME[/db][?options]`:
/// the hosts are sentinels, the userinfo is the data nodes', and `sentinel_username` /
/// `sentinel_password` are the sentinels' own.
fn parse_sentinel(
    scheme: &str,
    rest: &str,
    mut config: CacheConfig,
) -> Result<SentinelSettings, CacheError> {
    let tls = scheme == "rediss+sentinel";
    let node_scheme = if tls { "rediss" } else { "redis" };
    let hosts = Hosts {
        kind: "sentinel",
        member: "sentinel",
        label: "sentinel",
        default_port: SENTINEL_PORT,
        example: format!("`{scheme}://:password@10.0.0.1:26379,10.0.0.2:26379/mymaster/0`"),
    };
    let parts = hosts.split(rest)?;
    let mut segments = parts.path.trim_end_matches('/').splitn(2, '/');
    let master_name = segments.next().unwrap_or_default();
    if master_name.is_empty() {
        return Err(CacheError::config(format!(
            "the sentinel URL names no master; expected the name the sentinels monitor it under after the sentinels, e.g. {}",
            hosts.example
        )));
    }
    if let Some(bad) = master_name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))
    {
        return Err(CacheError::config(format!(
            "the master name `{}` of the sentinel URL holds `{}`; a master name may hold only ASCII letters, digits and `- _ . :`",
            shown(master_name),
            bad.escape_debug()
        )));
    }
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db.parse::<u16>().map_err(|_| {
            CacheError::config(format!(
                "the sentinel URL path must be `/MASTER_NAME` or `/MASTER_NAME/db` with a database number like `/mymaster/0`, not `/{}`",
                shown(parts.path)
            ))
        })?,
    };

    // The sentinels' credentials are taken out before the other options apply.
    let mut sentinel_user = None;
    let mut sentinel_secret = None;
    if let Some(query) = parts.query {
        let pairs = url::form_urlencoded::parse(query.as_bytes());
        apply_options(
            pairs.filter(|(name, _)| !SENTINEL_OPTIONS.contains(&name.as_ref())),
            &mut config,
        )?;
        // Piece by piece, to keep each password as written too, for scrubbing.
        for piece in query.split('&') {
            let raw_value = piece.split_once('=').map_or("", |(_, v)| v);
            for (name, value) in url::form_urlencoded::parse(piece.as_bytes()) {
                match name.as_ref() {
                    "sentinel_username" => sentinel_user = Some(value.into_owned()),
                    "sentinel_password" => {
                        sentinel_secret = Some((Secret::from_option(&value, raw_value), value));
                    }
                    _ => {}
                }
            }
        }
    }
    config.validate()?;

    let template = hosts.template(node_scheme, parts.userinfo, db)?;
    let data_secret = template.password().map(Secret::from_url);
    let secret = Secret::join(
        data_secret.as_ref(),
        sentinel_secret.as_ref().map(|(s, _)| s),
    );
    let ca = trusted_ca(tls, &config)?;
    let mut sentinel_url = Url::parse(&format!("{node_scheme}://127.0.0.1/0"))
        .map_err(|e| CacheError::config(format!("the sentinel URL does not parse ({e})")))?;
    let credentials_refused = |what: &str| {
        CacheError::config(format!(
            "option `{what}` cannot be used in a sentinel URL; percent-encode it"
        ))
    };
    if let Some(user) = &sentinel_user {
        sentinel_url
            .set_username(user)
            .map_err(|()| credentials_refused("sentinel_username"))?;
    }
    if let Some((_, password)) = &sentinel_secret {
        sentinel_url
            .set_password(Some(password))
            .map_err(|()| credentials_refused("sentinel_password"))?;
    }
    let sentinel_nodes = NodeTemplate {
        url: sentinel_url,
        ca: ca.clone(),
        secret: secret.clone(),
    };
    let sentinels = hosts.addresses(parts.hosts, &sentinel_nodes, &config)?;
    let nodes = NodeTemplate {
        url: template,
        ca,
        secret,
    };
    Ok(SentinelSettings {
        sentinels,
        sentinel_nodes,
        master_name: master_name.to_owned(),
        redacted: format!(
            "{scheme}://{}{}/{master_name}/{db}",
            shown_userinfo(parts.userinfo, &nodes.url),
            parts.hosts
        ),
        nodes,
        config,
    })
}

/// Applies the URL's query options over `config`.
fn apply_options<'a>(
    pairs: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
    config: &mut CacheConfig,
) -> Result<(), CacheError> {
    for (name, value) in pairs {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                CacheError::config(format!(
                    "option `{}` must be a whole number, not `{}`",
                    shown(&name),
                    shown(&value)
                ))
            })
        };
        match &*name {
            "response_timeout_ms" => config.response_timeout = Duration::from_millis(number()?),
            "connect_timeout_ms" => config.connect_timeout = Duration::from_millis(number()?),
            "backoff_min_ms" => config.backoff_min = Duration::from_millis(number()?),
            "backoff_max_ms" => config.backoff_max = Duration::from_millis(number()?),
            "summary_interval_ms" => config.summary_interval = Duration::from_millis(number()?),
            "fail_safe_throttle_ms" => config.fail_safe_throttle = Duration::from_millis(number()?),
            "single_flight_wait_ms" => config.single_flight_wait = Duration::from_millis(number()?),
            "background_timeout_ms" => config.background_timeout = Duration::from_millis(number()?),
            "prefix" => config.key_prefix = Some(value.clone().into_owned()),
            "max_value_bytes" => {
                config.max_value_bytes = Some(usize::try_from(number()?).unwrap_or(usize::MAX));
            }
            "coalesce" => {
                config.coalesce = match &*value {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(CacheError::config(format!(
                            "option `coalesce` must be `true` or `false`, not `{}`",
                            shown(other)
                        )));
                    }
                }
            }
            "failure_threshold" => {
                config.failure_threshold = u32::try_from(number()?).map_err(|_| {
                    CacheError::config(format!(
                        "option `failure_threshold` must be at most {}, not `{}`",
                        u32::MAX,
                        shown(&value)
                    ))
                })?;
            }
            "ca_file" if value.is_empty() => {
                return Err(CacheError::config(
                    "option `ca_file` needs the path of a PEM file, e.g. `?ca_file=/etc/redis/ca.pem`",
                ));
            }
            "ca_file" => config.tls_ca_file = Some(PathBuf::from(&*value)),
            other if SENTINEL_OPTIONS.contains(&other) => {
                return Err(CacheError::config(format!(
                    "option `{other}` applies to `redis+sentinel://` and `rediss+sentinel://` URLs only"
                )));
            }
            other if other.starts_with("sentinel_") => {
                return Err(CacheError::config(format!(
                    "unknown option `{}`; the sentinels' credentials are `sentinel_username` and `sentinel_password`",
                    shown(other)
                )));
            }
            other => {
                return Err(CacheError::config(format!(
                    "unknown option `{}` in the Redis URL query; expected one of {QUERY_OPTIONS}",
                    shown(other)
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match parse(url, &CacheConfig::default()) {
            Err(CacheError::Config { reason }) => reason,
            Err(other) => panic!("{}: not a config error: {other}", shown(url)),
            Ok(_) => panic!("{}: accepted", shown(url)),
        }
    }

    #[test]
    fn a_misplaced_part_is_refused_each_on_its_own() {
        // `memory://` with a host alone, a path alone, or both.
        for url in ["memory://somehost", "memory:///some/path", "memory://h/p"] {
            assert!(config_error(url).contains("takes no host or path"), "{url}");
        }
        // A password holding an unencoded `/` or `?`, or an option holding an `@`: the
        // userinfo was cut at the wrong `@`, which one part of the rebuilt URL shows.
        for url in [
            "redis+cluster://:pa/ss@127.0.0.1:7000",
            "redis+cluster://:pa?ss@127.0.0.1:7000",
            "redis+cluster://127.0.0.1:7000?x=1@y",
            // Cut after a path: the host is right, only the path shows it.
            "redis+cluster://127.0.0.1:7000/x@127.0.0.1:7001",
            "redis+sentinel://:p/w@127.0.0.1:26379/mymaster",
        ] {
            assert!(config_error(url).contains("percent-encode them"), "{url}");
        }
        // A node or sentinel that is not a bare host:port.
        assert!(config_error("redis+cluster://127.0.0.1:7000\\x").contains("is not a host:port"));
        assert!(
            config_error("redis+sentinel://127.0.0.1:26379\\x/m").contains("is not a host:port")
        );
        assert!(
            parse(
                "redis+cluster://[::1]:7000,127.0.0.1:7001",
                &CacheConfig::new()
            )
            .is_ok()
        );
        // Sentinel options on a plain URL: a known one, and an unknown one that looks alike.
        assert!(
            config_error("redis://127.0.0.1?sentinel_password=1")
                .contains("applies to `redis+sentinel://`")
        );
        assert!(
            config_error("redis://127.0.0.1?sentinel_foo=1")
                .contains("the sentinels' credentials are")
        );
    }

    #[test]
    fn cluster_url_errors_never_echo_a_password_with_slashes_or_question_marks() {
        for url in [
            "redis+cluster://:ab/cd@h:1,h:2/5",
            "redis+cluster://:ab?cd@h:1?bogus=1",
            "redis+cluster://:ab/c?d@h:1/x",
        ] {
            let message = match parse(url, &CacheConfig::default()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} accepted"),
            };
            assert!(
                !message.contains("cd") && !message.contains("c?d"),
                "{url}: {message}"
            );
        }
    }

    #[test]
    fn accepts_the_contract_urls() {
        let defaults = CacheConfig::default();
        assert!(matches!(parse("memory://", &defaults), Ok(Target::Memory)));
        let url = "redis://:hunter2@127.0.0.1:6379/0?response_timeout_ms=80&failure_threshold=5";
        let Ok(Target::Redis(s)) = parse(url, &defaults) else {
            panic!("redis URL rejected");
        };
        assert_eq!(s.redacted, "redis://:***@127.0.0.1:6379/0");
        assert_eq!(s.config.response_timeout, Duration::from_millis(80));
        assert_eq!(s.config.failure_threshold, 5);
        assert_eq!(s.config.connect_timeout, defaults.connect_timeout);
        assert!(s.config.coalesce, "coalescing is on by default");
        assert!(!format!("{:?}", s.secret).contains("hunter2"));
        let Ok(Target::Redis(s)) = parse("redis://h/0?coalesce=false", &defaults) else {
            panic!("coalesce=false rejected");
        };
        assert!(!s.config.coalesce);
    }

    #[test]
    fn errors_name_the_faulty_part_without_the_password() {
        assert!(config_error("http://x").contains("unknown URL scheme `http`"));
        assert!(config_error("not a url").contains("does not parse"));
        assert!(config_error("redis://:pw@127.0.0.1/x").contains("database number"));
        let unknown = config_error("redis://:s3cret@127.0.0.1/0?tiemout=5");
        assert!(unknown.contains("`tiemout`") && unknown.contains("response_timeout_ms"));
        assert!(config_error("redis://:s3cret@h/0?connect_timeout_ms=0").contains("above 0"));
        assert!(config_error("redis://h/0?failure_threshold=0").contains("at least 1"));
        assert!(config_error("redis://h/0?coalesce=no").contains("`true` or `false`"));
        assert!(
            config_error("redis://h/0?response_timeout_ms=18446744073709551615")
                .contains("at most one hour")
        );
        assert!(
            config_error("redis://h/0?backoff_min_ms=500&backoff_max_ms=100")
                .contains("below the minimum")
        );
        assert!(
            config_error("redis://h/0?response_timeout_ms=fast")
                .contains("whole number, not `fast`")
        );
        assert!(config_error("memory://?x=1").contains("takes no options"));
        for url in [
            "redis://:s3cret@127.0.0.1/x",
            "redis://:s3cret@h:99999/0",
            "redis://u:s3cret@/0",
        ] {
            let msg = match parse(url, &CacheConfig::default()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} accepted"),
            };
            assert!(!msg.contains("s3cret"), "{msg}");
        }
    }

    #[test]
    fn cluster_urls_name_every_node_and_hide_the_password() {
        let url = "redis+cluster://:hunter2@127.0.0.1:7000,127.0.0.1:7001,[::1]:7002,db.internal?response_timeout_ms=80";
        let Ok(Target::Cluster(s)) = parse(url, &CacheConfig::default()) else {
            panic!("cluster URL rejected");
        };
        let seeds: Vec<String> = s.seeds.iter().map(NodeAddr::to_string).collect();
        assert_eq!(
            seeds,
            [
                "127.0.0.1:7000",
                "127.0.0.1:7001",
                "[::1]:7002",
                "db.internal:6379"
            ]
        );
        assert_eq!(
            s.redacted,
            "redis+cluster://:***@127.0.0.1:7000,127.0.0.1:7001,[::1]:7002,db.internal"
        );
        assert_eq!(s.config.response_timeout, Duration::from_millis(80));
        let node = s
            .nodes
            .settings(&NodeAddr::new("10.0.0.9", 7005), &s.config)
            .unwrap();
        assert_eq!(node.redacted, "redis://:***@10.0.0.9:7005/0");
        assert!(!format!("{:?}", node.secret).contains("hunter2"));

        let Ok(Target::Cluster(s)) = parse("REDIS+CLUSTER://h1:1/0", &CacheConfig::default())
        else {
            panic!("upper-case scheme and /0 rejected");
        };
        assert_eq!(s.redacted, "redis+cluster://h1:1/0");
    }

    #[test]
    fn bad_cluster_urls_say_what_is_wrong() {
        assert!(config_error("redis+cluster://h1:1,,h2:2").contains("empty node"));
        assert!(config_error("redis+cluster://h1:1,").contains("empty node"));
        assert!(config_error("redis+cluster://").contains("empty node"));
        assert!(config_error("redis+cluster://h1:1/3").contains("only database 0"));
        assert!(config_error("redis+cluster://h1:99999").contains("`h1:99999`"));
        assert!(config_error("redis+cluster://h1:1?tiemout=3").contains("`tiemout`"));
        assert!(config_error("redis+cluster://h1:1#insecure").contains("fragment"));
        let msg = config_error("redis+cluster://:s3cret@h1:1,h2:x");
        assert!(msg.contains("`h2:x`") && !msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_db_and_hide_both_passwords() {
        let url = "redis+sentinel://app:data%2Fpw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3?sentinel_username=watcher&sentinel_password=sent%2Bpw&prefix=staging&response_timeout_ms=80";
        let Ok(Target::Sentinel(s)) = parse(url, &CacheConfig::default()) else {
            panic!("sentinel URL rejected");
        };
        let sentinels: Vec<String> = s.sentinels.iter().map(NodeAddr::to_string).collect();
        assert_eq!(
            sentinels,
            ["10.0.0.1:26379", "10.0.0.2:26379", "[::1]:26380"]
        );
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(
            s.redacted,
            "redis+sentinel://app:***@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3"
        );
        assert_eq!(s.config.key_prefix.as_deref(), Some("staging"));
        assert_eq!(s.config.response_timeout, Duration::from_millis(80));
        // The master's connection: the data nodes' credentials and database.
        let master = s
            .nodes
            .settings(&NodeAddr::new("10.0.0.9", 6380), &s.config)
            .unwrap();
        assert_eq!(master.redacted, "redis://app:***@10.0.0.9:6380/3");
        let info = master.client.get_connection_info().redis_settings().clone();
        assert_eq!(info.password(), Some("data/pw"));
        assert_eq!(info.db(), 3);
        // A sentinel's connection: the sentinels' own credentials, database 0.
        let sentinel = s
            .sentinel_nodes
            .settings(&s.sentinels[0], &s.config)
            .unwrap();
        let info = sentinel
            .client
            .get_connection_info()
            .redis_settings()
            .clone();
        assert_eq!(info.username(), Some("watcher"));
        assert_eq!(info.password(), Some("sent+pw"));
        assert_eq!(info.db(), 0);
        // Either password, in any form, is scrubbed from any text.
        let secret = s.nodes.secret().unwrap();
        let text = secret.scrub("data/pw data%2Fpw sent+pw sent%2Bpw".to_owned());
        assert_eq!(text, "*** *** *** ***");
        for shown in [format!("{secret:?}"), s.redacted.clone(), master.redacted] {
            assert!(!shown.contains("pw"), "{shown}");
        }

        let Ok(Target::Sentinel(s)) = parse("REDISS+SENTINEL://h/m", &CacheConfig::default())
        else {
            panic!("a minimal TLS sentinel URL rejected");
        };
        assert_eq!(s.redacted, "rediss+sentinel://h/m/0");
        assert_eq!(s.sentinels[0].port, SENTINEL_PORT);
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong_without_either_password() {
        for (url, expected) in [
            ("redis+sentinel://:s3cret@h:1", "names no master"),
            ("redis+sentinel://:s3cret@h:1//0", "names no master"),
            ("redis+sentinel:///m", "names an empty sentinel"),
            ("redis+sentinel://:s3cret@h:1,/m", "names an empty sentinel"),
            (
                "redis+sentinel://:s3cret@h:x/m",
                "sentinel `h:x` is not a host:port",
            ),
            ("redis+sentinel://:s3cret@h:1/m/0/1", "`/MASTER_NAME/db`"),
            ("redis+sentinel://:s3cret@h:1/m/99999", "`/MASTER_NAME/db`"),
            (
                "redis+sentinel://:s3cret@h:1/m%20x",
                "may hold only ASCII letters",
            ),
            (
                "redis+sentinel://:s3cret@h:1/m?tiemout=1",
                "unknown option `tiemout`",
            ),
            ("redis+sentinel://:s3cret@h:1/m#x", "fragment"),
            ("redis+sentinel://:8/s3cret@h:1/m", "percent-encode"),
            (
                "redis+sentinel://:s3cret@h:1/m?ca_file=/x@h9:2",
                "percent-encode",
            ),
            (
                "redis+sentinel://:s3cret@h:1/m?sentinel_password=s3cret2&coalesce=maybe",
                "`true` or `false`",
            ),
            (
                "redis://:s3cret@h/0?sentinel_password=s3cret2",
                "rediss+sentinel://` URLs only",
            ),
            (
                "redis+cluster://h:1?sentinel_username=u",
                "rediss+sentinel://` URLs only",
            ),
        ] {
            let msg = config_error(url);
            assert!(msg.contains(expected), "{url}: {msg}");
            assert!(!msg.contains("s3cret"), "{url}: {msg}");
        }
    }

    #[test]
    fn tls_urls_are_accepted_and_ca_files_checked() {
        let defaults = CacheConfig::default();
        let Ok(Target::Redis(s)) = parse("rediss://:pw@127.0.0.1:6380/0", &defaults) else {
            panic!("rediss URL rejected");
        };
        assert_eq!(s.redacted, "rediss://:***@127.0.0.1:6380/0");
        assert!(matches!(
            parse("rediss+cluster://127.0.0.1:7000,127.0.0.1:7001", &defaults),
            Ok(Target::Cluster(_))
        ));
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());

        assert!(config_error("rediss://h/0#insecure").contains("fragment"));
        assert!(config_error("redis://h/0?ca_file=/tmp/ca.pem").contains("applies to TLS only"));
        assert!(config_error("rediss://h/0?ca_file=").contains("path of a PEM file"));
        assert!(
            config_error("rediss://h/0?ca_file=/nonexistent/ca.pem").contains("cannot be read")
        );
        let not_pem =
            std::env::temp_dir().join(format!("cache-core-{}-not-a-ca.pem", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let config = CacheConfig::new().with_tls_ca_file(&not_pem);
        let msg = match parse("rediss+cluster://h:1", &config) {
            Err(CacheError::Config { reason }) => reason,
            _ => panic!("a file without certificates accepted"),
        };
        std::fs::remove_file(&not_pem).unwrap();
        assert!(msg.contains("holds no PEM certificate"), "{msg}");
    }

    #[test]
    fn control_characters_are_rejected_not_stripped() {
        // The `url` crate silently drops tabs and newlines: `h\n/0` would connect to
        // another URL than the one written.
        for (url, code, at) in [
            ("redis://h\n/0", "U+000A", 9),
            ("redis://127.0.0\t.1/0", "U+0009", 15),
            ("redis://:pa\rss@h/0", "U+000D", 11),
            ("redis://:s3cret@h/0\0", "U+0000", 19),
            ("redis://h/0?coalesce=true\x7f", "U+007F", 25),
            ("redis+cluster://h1:1,h\n2:2", "U+000A", 22),
            ("memory://\u{85}", "U+0085", 9),
        ] {
            let msg = config_error(url);
            assert!(
                msg.contains(&format!(
                    "contains a control character ({code}) at byte {at}"
                )) && msg.contains("percent-encode it or remove it"),
                "{url:?}: {msg}"
            );
            assert!(!msg.contains("s3cret"), "{url:?}: {msg}");
        }
        // Percent-encoded, a control character is data, e.g. of a password.
        assert!(parse("redis://:pa%0Ass@h/0", &CacheConfig::default()).is_ok());
    }

    #[test]
    fn urls_over_the_length_limit_are_rejected_without_being_echoed() {
        let big = 100_000;
        for url in [
            format!("redis://{}/0", "h".repeat(big)),
            format!("redis://:{}@h/0", "p".repeat(big)),
            format!("redis://h/0?response_timeout_ms={}", "9".repeat(big)),
            format!("redis+cluster://{}", "h:1,".repeat(big / 4)),
        ] {
            let msg = config_error(&url);
            assert!(
                msg.contains(&format!("is {} bytes long", url.len()))
                    && msg.contains("at most 16384 bytes"),
                "{msg}"
            );
            assert!(msg.len() < 200 && !msg.contains("hhhh") && !msg.contains("pppp"));
        }
        let at_limit = |len: usize| format!("redis://:{}@h/0", "p".repeat(len - 13));
        assert_eq!(at_limit(MAX_URL_LEN).len(), MAX_URL_LEN);
        assert!(parse(&at_limit(MAX_URL_LEN), &CacheConfig::default()).is_ok());
        assert!(config_error(&at_limit(MAX_URL_LEN + 1)).contains("at most 16384 bytes"));
    }

    #[test]
    fn an_empty_url_says_so() {
        for url in ["", "   "] {
            let msg = config_error(url);
            assert!(
                msg.contains("the cache URL is empty") && msg.contains("`memory://`"),
                "{url:?}: {msg}"
            );
        }
    }

    #[test]
    fn parts_echoed_in_errors_are_cut_short_and_escaped() {
        let long = "x".repeat(10_000);
        for url in [
            format!("redis://h/0?{long}=1"),
            format!("redis://h/0?response_timeout_ms={long}"),
            format!("redis://h/0?coalesce={long}"),
            format!("redis://h/{long}"),
            format!("{long}://h"),
            format!("redis+cluster://h:1/{long}"),
            format!("redis+cluster://h:1,{long}:x"),
            format!("rediss://h/0?ca_file=/{long}"),
        ] {
            let msg = config_error(&url);
            assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
            assert!(msg.contains("xxxx…"), "{msg}");
        }
        let msg = config_error("redis://h/0?coalesce=%0Ayes");
        assert!(msg.contains(r"not `\nyes`"), "{msg}");
    }

    #[test]
    fn a_password_with_an_unencoded_slash_or_question_mark_is_never_echoed() {
        // The userinfo ends at the first `/`, `?` or `#`: the rest of the password would
        // be read as the path, query or fragment, and echoed in their errors.
        for url in [
            "redis://default:8/s3cret@h:6379/0",
            "redis://default:8?s3cret@h:6379/0",
            "redis://default:8#s3cret@h:6379/0",
            "rediss://127.0.0.1:0?s3cret@127.0.0.1",
        ] {
            let msg = config_error(url);
            assert!(
                !msg.contains("s3cret")
                    && msg.contains("password of the Redis URL holds a `/`, `?` or `#`")
                    && msg.contains("`%2F`"),
                "{url}: {msg}"
            );
        }
        let msg = config_error("memory://?:s3cret@127.0.0.1");
        assert!(
            !msg.contains("s3cret") && msg.contains("takes no options"),
            "{msg}"
        );
        // Percent-encoded, an `@` in an option value is a plain character.
        let msg = config_error("rediss://h/0?ca_file=/nonexistent/a%40b.pem");
        assert!(msg.contains("cannot be read"), "{msg}");
    }

    #[test]
    fn cluster_urls_with_an_at_sign_past_the_nodes_are_refused_not_misread() {
        // The userinfo ends at the last `@`: one in the query made the text after it the
        // node list, and the real nodes part of the password.
        for url in [
            "redis+cluster://:s3cret@h1:1?ca_file=/x@h9:2",
            "redis+cluster://u:8/s3cret@h1:1",
            "redis+cluster://u:8?s3cret@h1:1",
        ] {
            let msg = config_error(url);
            assert!(
                !msg.contains("s3cret") && msg.contains("percent-encode"),
                "{url}: {msg}"
            );
        }
    }

    #[test]
    fn a_key_prefix_follows_the_namespace_grammar() {
        let Ok(Target::Redis(s)) = parse("redis://h/0?prefix=staging", &CacheConfig::default())
        else {
            panic!("prefix rejected");
        };
        assert_eq!(s.config.key_prefix.as_deref(), Some("staging"));
        let Ok(Target::Cluster(s)) = parse(
            "redis+cluster://h:1,h:2?prefix=tenant:7",
            &CacheConfig::default(),
        ) else {
            panic!("prefix rejected on a cluster URL");
        };
        assert_eq!(s.config.key_prefix.as_deref(), Some("tenant:7"));
        for bad in ["a*b", "a%20b", ":x", "x:", "a::b", "a%40b", "%7Bx%7D", ""] {
            let msg = config_error(&format!("redis://h/0?prefix={bad}"));
            assert!(msg.contains("key prefix (`prefix`)"), "{bad}: {msg}");
            assert!(msg.contains("only ASCII letters"), "{bad}: {msg}");
        }
        let long = format!("redis://h/0?prefix={}", "x*".repeat(500));
        assert!(config_error(&long).len() < 300, "a long prefix is cut");
    }
}
