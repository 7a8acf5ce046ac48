//! Raw Redis commands for checking what the cache put on the wire.
//!
//! Each helper panics on a Redis error: the raw connection talks to a test's own server,
//! so an error is a broken test, not a behaviour under test.

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

async fn run<T: redis::FromRedisValue>(conn: &MultiplexedConnection, cmd: &redis::Cmd) -> T {
    cmd.query_async(&mut conn.clone())
        .await
        .unwrap_or_else(|e| panic!("raw command failed: {e}"))
}

/// `GET key`: the stored bytes.
pub async fn get(conn: &MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    run(conn, redis::cmd("GET").arg(key)).await
}

/// `SET key bytes`, without expiry: plants an entry as another service would.
pub async fn set(conn: &MultiplexedConnection, key: &str, bytes: &[u8]) {
    run::<()>(conn, redis::cmd("SET").arg(key).arg(bytes)).await
}

/// `EXISTS key`.
pub async fn exists(conn: &MultiplexedConnection, key: &str) -> bool {
    run::<u64>(conn, redis::cmd("EXISTS").arg(key)).await == 1
}

/// `TTL key` in seconds (-2 missing, -1 no expiry).
pub async fn ttl(conn: &MultiplexedConnection, key: &str) -> i64 {
    run(conn, redis::cmd("TTL").arg(key)).await
}

/// `PTTL key` in milliseconds (-2 missing, -1 no expiry).
pub async fn pttl(conn: &MultiplexedConnection, key: &str) -> i64 {
    run(conn, redis::cmd("PTTL").arg(key)).await
}

/// `DBSIZE`: how many keys the database holds.
pub async fn dbsize(conn: &MultiplexedConnection) -> u64 {
    run(conn, &redis::cmd("DBSIZE")).await
}

/// `KEYS *`, sorted.
pub async fn keys(conn: &MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = run(conn, redis::cmd("KEYS").arg("*")).await;
    keys.sort();
    keys
}

/// `CONFIG RESETSTAT`: zeroes the counters [`command_calls`] reads.
pub async fn reset_stats(conn: &MultiplexedConnection) {
    run::<()>(conn, redis::cmd("CONFIG").arg("RESETSTAT")).await
}

/// Calls per command since the last [`reset_stats`], from `INFO commandstats`:
/// `{"mget": 1, "set": 10, "config|resetstat": 1, ...}`.
pub async fn command_calls(conn: &MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = run(conn, redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Starts logging every command the server runs, with its arguments, in its slow log
/// (`slowlog-log-slower-than 0`), emptied first; [`logged_commands`] reads it.
pub async fn log_commands(conn: &MultiplexedConnection) {
    config_set(conn, "slowlog-max-len", "100000").await;
    config_set(conn, "slowlog-log-slower-than", "0").await;
    run::<()>(conn, redis::cmd("SLOWLOG").arg("RESET")).await
}

/// The commands the server ran since [`log_commands`] named `name` (any case), oldest
/// first, each with its arguments after the name. Redis keeps the first 31 arguments of
/// a command, then one `... (N more arguments)` (see [`argument_count`]), and strings'
/// first 128 bytes.
pub async fn logged_commands(conn: &MultiplexedConnection, name: &str) -> Vec<Vec<String>> {
    // Each entry: id, unix time, microseconds, [name, args...], client address, name.
    let entries: Vec<(u64, u64, u64, Vec<Vec<u8>>)> = {
        let raw: Vec<redis::Value> = run(conn, redis::cmd("SLOWLOG").arg("GET").arg(-1)).await;
        raw.into_iter()
            .map(|entry| {
                let redis::Value::Array(fields) = entry else {
                    panic!("a slow log entry is not an array: {entry:?}")
                };
                redis::from_redis_value(redis::Value::Array(fields.into_iter().take(4).collect()))
                    .unwrap_or_else(|e| panic!("a slow log entry did not parse: {e}"))
            })
            .collect()
    };
    let mut commands: Vec<Vec<String>> = entries
        .into_iter()
        .rev()
        .map(|(_, _, _, argv)| {
            // Values may be binary (bincode): shown lossily, as the log is read by eye.
            argv.iter()
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect::<Vec<String>>()
        })
        .filter(|argv| argv.first().is_some_and(|c| c.eq_ignore_ascii_case(name)))
        .map(|mut argv| argv.split_off(1))
        .collect();
    commands.shrink_to_fit();
    commands
}

/// How many arguments a command from [`logged_commands`] had, counting those the slow
/// log left out.
pub fn argument_count(args: &[String]) -> usize {
    let more = args.last().and_then(|last| {
        last.strip_prefix("... (")?
            .strip_suffix(" more arguments)")?
            .parse::<usize>()
            .ok()
    });
    match more {
        Some(more) => args.len() - 1 + more,
        None => args.len(),
    }
}

/// One field of `INFO`, e.g. `total_connections_received`.
pub async fn info_field(conn: &MultiplexedConnection, field: &str) -> String {
    let info: String = run(conn, &redis::cmd("INFO")).await;
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("INFO has no field `{field}`"))
        .trim()
        .to_owned()
}

/// The clients connected to the server, one `CLIENT LIST` line each.
pub async fn clients(conn: &MultiplexedConnection) -> Vec<String> {
    let list: String = run(conn, redis::cmd("CLIENT").arg("LIST")).await;
    list.lines().map(str::to_owned).collect()
}

/// `CONFIG SET name value`.
pub async fn config_set(conn: &MultiplexedConnection, name: &str, value: &str) {
    run::<()>(conn, redis::cmd("CONFIG").arg("SET").arg(name).arg(value)).await
}

/// Takes `CLIENT TRACKING` away from the default user, as an ACL or a proxy without it
/// would: first levels then fall back to pub/sub.
pub async fn refuse_tracking(conn: &MultiplexedConnection) {
    run::<()>(
        conn,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-client|tracking"),
    )
    .await
}

/// Adds a user `name` with password `password`, with the ACL `rules` after `on`.
async fn add_user(conn: &MultiplexedConnection, name: &str, password: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(format!(">{password}"))
        .arg(rules);
    run::<()>(conn, &cmd).await
}

/// Adds a user `name` with password `password` who may do everything but `CLIENT
/// TRACKING`: one service's ACL where another's allows it.
pub async fn add_user_without_tracking(conn: &MultiplexedConnection, name: &str, password: &str) {
    add_user(
        conn,
        name,
        password,
        &["~*", "&*", "+@all", "-client|tracking"],
    )
    .await
}

/// Adds a user `name` with password `password` who may run every command, but only on
/// keys matching `pattern`: commands on other keys are refused with `NOPERM`.
pub async fn add_user_for_keys(
    conn: &MultiplexedConnection,
    name: &str,
    password: &str,
    pattern: &str,
) {
    add_user(
        conn,
        name,
        password,
        &[&format!("~{pattern}"), "&*", "+@all"],
    )
    .await
}

/// The ids of the clients whose `CLIENT LIST` flags satisfy `flags` (`t`: tracking, `P`:
/// subscribed; `N`: no flag), in list order.
pub async fn client_ids(conn: &MultiplexedConnection, flags: impl Fn(&str) -> bool) -> Vec<u64> {
    clients(conn)
        .await
        .iter()
        .filter(|line| {
            let field = line.split(' ').find_map(|f| f.strip_prefix("flags="));
            field.is_some_and(&flags)
        })
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// Connections with tracking on (`t` in `CLIENT LIST`'s flags): the first-level listeners.
pub async fn tracking_clients(conn: &MultiplexedConnection) -> usize {
    client_ids(conn, |flags| flags.contains('t')).await.len()
}

/// `CLIENT KILL ID id`: the connection closed by the server. An error when it is gone.
pub async fn kill_client(conn: &MultiplexedConnection, id: u64) -> redis::RedisResult<()> {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut conn.clone())
        .await
}

/// Closes, every 10 ms for `period`, each connection of the server behind `conn` whose
/// `CLIENT LIST` flags satisfy `flags` (see [`client_ids`]): a server that cuts such
/// clients off as soon as they connect. How many were killed.
pub async fn kill_clients_for(
    conn: &MultiplexedConnection,
    flags: impl Fn(&str) -> bool,
    period: std::time::Duration,
) -> u32 {
    let started = std::time::Instant::now();
    let mut kills = 0;
    while started.elapsed() < period {
        for id in client_ids(conn, &flags).await {
            // One gone meanwhile is as good as killed.
            if kill_client(conn, id).await.is_ok() {
                kills += 1;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    kills
}

/// How many `CLUSTER SLOTS` the nodes behind `conns` answered since their last
/// [`reset_stats`]: the slot-map refreshes a cluster client asked for.
pub async fn slot_map_requests(conns: &[MultiplexedConnection]) -> u64 {
    let mut requests = 0;
    for conn in conns {
        requests += command_calls(conn)
            .await
            .get("cluster|slots")
            .copied()
            .unwrap_or(0);
    }
    requests
}

/// `total_connections_received` of `INFO`: every connection the server accepted.
pub async fn connections_received(conn: &MultiplexedConnection) -> u64 {
    info_field(conn, "total_connections_received")
        .await
        .parse()
        .expect("a count")
}

/// Checks that `read` (a cache's `get` of `key`) returns `expected` and is served by the
/// first level: a second read sends no `GET` or `MGET` to the server behind `conn`. A
/// write made just before may still have its invalidation on the way (Redis tells every
/// tracking connection, the writer's own too), which drops the copy when it lands, and a
/// level that hears by pub/sub is read only some 3.25 s after its listener subscribed; so
/// the check is repeated until it holds, for at most 10 s.
pub async fn assert_held<F: AsyncFnMut() -> Option<String>>(
    conn: &MultiplexedConnection,
    key: &str,
    expected: &str,
    mut read: F,
) {
    let started = std::time::Instant::now();
    loop {
        assert_eq!(read().await.as_deref(), Some(expected));
        reset_stats(conn).await;
        assert_eq!(read().await.as_deref(), Some(expected));
        let calls = command_calls(conn).await;
        if !calls.contains_key("get") && !calls.contains_key("mget") {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the copy of {key} was not held in the level: {calls:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
