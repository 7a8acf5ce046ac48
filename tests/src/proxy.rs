//! A loopback proxy in front of a server, counting the library's round trips, and able
//! to hold the library's next commands back while a test acts on the server directly.

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
    /// Set by [`RoundTripProxy::hold_after_next_reply`]: the next reply starts a hold.
    hold_armed: AtomicBool,
    /// While `true`, client bytes wait in the proxy instead of reaching the server.
    holding: tokio::sync::watch::Sender<bool>,
    /// Client bytes held back since the hold started.
    held: AtomicU64,
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
            hold_armed: AtomicBool::new(false),
            holding: tokio::sync::watch::Sender::new(false),
            held: AtomicU64::new(0),
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

    /// Once the server's next reply has been passed to the client, holds back everything
    /// clients send until [`release`](Self::release): what a client sends after reading
    /// that reply reaches the server only after whatever the test does meanwhile.
    pub fn hold_after_next_reply(&self) {
        self.counts.held.store(0, Ordering::SeqCst);
        self.counts.hold_armed.store(true, Ordering::SeqCst);
    }

    /// Client bytes waiting in the proxy since the hold started.
    pub fn held(&self) -> u64 {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// Lets held and further client bytes through again.
    pub fn release(&self) {
        self.counts.hold_armed.store(false, Ordering::SeqCst);
        self.counts.holding.send_replace(false);
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
            let to_server = async {
                let mut holding = counts.holding.subscribe();
                pump(
                    &client,
                    &server,
                    |n| {
                        if counts.replied.swap(false, Ordering::SeqCst) {
                            counts.round_trips.fetch_add(1, Ordering::SeqCst);
                        }
                        let held = *counts.holding.borrow();
                        if held {
                            counts.held.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        held
                    },
                    &mut holding,
                )
                .await
            };
            let to_client = async {
                let mut never = tokio::sync::watch::Sender::new(false).subscribe();
                pump(
                    &server,
                    &client,
                    |_| {
                        counts.replied.store(true, Ordering::SeqCst);
                        // The client can only answer this reply once it is forwarded, so
                        // holding from now on holds whatever it sends next.
                        if counts.hold_armed.swap(false, Ordering::SeqCst) {
                            counts.holding.send_replace(true);
                        }
                        false
                    },
                    &mut never,
                )
                .await
            };
            tokio::select! {
                _ = to_server => {}
                _ = to_client => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side closes, calling `on_chunk` with each chunk's
/// length before forwarding it; when it returns `true`, the chunk waits until `hold`
/// turns `false`.
async fn pump(
    from: &tokio::net::TcpStream,
    to: &tokio::net::TcpStream,
    on_chunk: impl Fn(usize) -> bool,
    hold: &mut tokio::sync::watch::Receiver<bool>,
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
        if on_chunk(n) {
            // A released hold, or the proxy going away, lets the chunk through.
            let _ = hold.wait_for(|held| !*held).await;
        }
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

/// A loopback proxy in front of a server that holds every chunk a client sends for a
/// fixed delay before passing it on, each counted from when it arrived (commands
/// pipelined behind one another are not delayed one after the other): a server that
/// answers every round trip in that delay, whatever else is in flight. Replies pass at
/// once.
pub struct DelayedAddress {
    port: u16,
    mgets: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayedAddress {
    /// Listens on a free loopback port, forwarding every connection to `target_port`
    /// with `delay` on what clients send.
    pub async fn start(target_port: u16, delay: std::time::Duration) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the delaying proxy");
        let port = listener.local_addr().expect("its address").port();
        let mgets = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let mgets = Arc::clone(&mgets);
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let mgets = Arc::clone(&mgets);
                    connections.spawn(delay_line(client, target_port, delay, mgets));
                }
            }
        });
        DelayedAddress {
            port,
            mgets,
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Chunks received from clients that hold an `MGET`, held or passed on.
    pub fn mgets(&self) -> u64 {
        self.mgets.load(Ordering::SeqCst)
    }
}

impl Drop for DelayedAddress {
    fn drop(&mut self) {
        // Dropping the accept loop's JoinSet aborts every connection's task.
        self.accept.abort();
    }
}

/// One connection through a [`DelayedAddress`], until either side closes.
async fn delay_line(
    client: tokio::net::TcpStream,
    target: u16,
    delay: std::time::Duration,
    mgets: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let (arrived, mut due) = tokio::sync::mpsc::unbounded_channel();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from_client.read(&mut buf).await {
            let at = tokio::time::Instant::now() + delay;
            if buf[..n].windows(4).any(|w| w.eq_ignore_ascii_case(b"MGET")) {
                mgets.fetch_add(1, Ordering::SeqCst);
            }
            if arrived.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to_server.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(read, write) } => {}
        _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
    }
}

/// A loopback address whose target can be moved, as a DNS name or a virtual IP is moved
/// by a failover: new connections go to the current target, those already made stay
/// with the server they reached.
pub struct MovableAddress {
    port: u16,
    target: Arc<std::sync::atomic::AtomicU16>,
    accept: tokio::task::JoinHandle<()>,
}

impl MovableAddress {
    /// Listens on a free loopback port, forwarding new connections to `target_port`.
    pub async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the movable address");
        let port = listener.local_addr().expect("its address").port();
        let target = Arc::new(std::sync::atomic::AtomicU16::new(target_port));
        let accept = tokio::spawn({
            let target = Arc::clone(&target);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let to = target.load(Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Ok(mut server) =
                            tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, to)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        MovableAddress {
            port,
            target,
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends connections made from now on to `target_port`.
    pub fn move_to(&self, target_port: u16) {
        self.target.store(target_port, Ordering::SeqCst);
    }
}

impl Drop for MovableAddress {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
