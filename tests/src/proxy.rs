//! A loopback proxy in front of a server, counting the library's round trips.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A loopback TCP proxy that counts round trips: client writes that follow a reply.
///
/// A pipeline of many commands sent at once is one round trip; the same commands sent
/// one after the other, each waiting for its reply, are as many round trips as commands.
pub struct RoundTripProxy {
    port: u16,
    counts: Arc<TurnCounts>,
    accept: tokio::task::JoinHandle<()>,
}

struct TurnCounts {
    round_trips: AtomicU64,
    /// Whether the server spoke last, so the client's next bytes start a new round trip.
    replied: AtomicBool,
}

impl RoundTripProxy {
    /// Listens on a free loopback port and forwards every connection to `target_port`.
    pub async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let counts = Arc::new(TurnCounts {
            round_trips: AtomicU64::new(0),
            replied: AtomicBool::new(true),
        });
        let accept = tokio::spawn(accept_loop(listener, target_port, Arc::clone(&counts)));
        RoundTripProxy {
            port,
            counts,
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Round trips since the start or the last [`reset`](Self::reset).
    pub fn round_trips(&self) -> u64 {
        self.counts.round_trips.load(Ordering::SeqCst)
    }

    /// Starts counting from zero.
    pub fn reset(&self) {
        self.counts.replied.store(true, Ordering::SeqCst);
        self.counts.round_trips.store(0, Ordering::SeqCst);
    }
}

impl Drop for RoundTripProxy {
    fn drop(&mut self) {
        // Dropping the accept loop's JoinSet aborts every forwarding task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, target: u16, counts: Arc<TurnCounts>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let counts = Arc::clone(&counts);
        connections.spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await
            else {
                return;
            };
            tokio::select! {
                _ = pump(&client, &server, || {
                    if counts.replied.swap(false, Ordering::SeqCst) {
                        counts.round_trips.fetch_add(1, Ordering::SeqCst);
                    }
                }) => {}
                _ = pump(&server, &client, || counts.replied.store(true, Ordering::SeqCst)) => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side closes, calling `on_chunk` before forwarding
/// each chunk read.
async fn pump(
    from: &tokio::net::TcpStream,
    to: &tokio::net::TcpStream,
    on_chunk: impl Fn(),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        on_chunk();
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buf[sent..n]) {
                Ok(written) => sent += written,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}
