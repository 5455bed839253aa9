//! Accepting TLS connections on a port before tonic sees them: each accepted socket gets
//! TCP_NODELAY, at most `max_connections` are open at once (a flood waits in the kernel's
//! backlog instead of exhausting the node), and a handshake that does not finish within
//! `handshake_timeout` is closed. One caller (as the port's rate limit counts it: a client
//! certificate's serial, or the peer node a federation certificate names, see
//! [`CallerKey::of`]) holds at most `max_connections_per_client` established connections of
//! a port: a further one is closed right after its handshake, so one client or peer cannot
//! take every place, however many certificates it holds. The established streams carry
//! their peer's certificates to the gRPC handlers (`Request::peer_certs`).

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::gate::CallerKey;

/// Bounds on the connections of one port.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Connections open at once, handshakes included.
    pub max_connections: usize,
    /// Established connections one caller may hold at once.
    pub max_connections_per_client: usize,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

/// An accepted TCP connection holding its place among the port's open connections.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    caller: Option<CallerSlot>,
}

/// The established connections of each caller on one port.
#[derive(Debug, Default)]
struct Callers {
    open: Mutex<HashMap<String, usize>>,
    /// When a connection over a caller's limit was last logged, and how many were closed
    /// since without a line (one line a minute at most: a caller reconnecting in a loop
    /// does not flood the log).
    warned: Mutex<(Option<Instant>, u64)>,
}

/// How often a port logs connections closed over a caller's limit.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Callers {
    /// Takes a place for `caller`, or none when it already holds `max`.
    fn take(self: &Arc<Self>, caller: &str, max: usize) -> Option<CallerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(caller.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(CallerSlot {
            callers: self.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Logs a connection of `caller` closed over its limit, at most once a minute.
    fn over_limit(&self, caller: &str, limit: usize) {
        let mut w = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        w.1 += 1;
        if w.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            warn!(
                caller,
                limit,
                closed = w.1,
                "a caller is over its connection limit; connection closed"
            );
            *w = (Some(Instant::now()), 0);
        }
    }
}

/// One established connection of a caller, given back when the connection closes.
#[derive(Debug)]
struct CallerSlot {
    callers: Arc<Callers>,
    caller: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut open = self
            .callers
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The established TLS connections of one port, for `serve_with_incoming_shutdown`.
pub type Incoming = ReceiverStream<io::Result<TlsStream<Conn>>>;

/// Accepts connections on `listener` and completes their TLS handshakes under `limits`
/// (callers counted by `key`) until `stop` turns true. Returns the stream of established
/// connections and the task that accepts them.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: AcceptLimits,
    key: CallerKey,
    mut stop: watch::Receiver<bool>,
) -> (Incoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let callers = Arc::new(Callers::default());
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, callers) = (acceptor.clone(), tx.clone(), callers.clone());
            tokio::spawn(async move {
                let conn = Conn {
                    tcp,
                    _permit: permit,
                    caller: None,
                };
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(conn)).await {
                    Ok(Ok(mut tls)) => {
                        // Every port requires a client certificate; callers without one,
                        // were a port to let them in, would share one count.
                        let caller = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| key.of(c.as_ref()))
                            .unwrap_or_default();
                        let max = limits.max_connections_per_client.max(1);
                        match callers.take(&caller, max) {
                            Some(slot) => {
                                tls.get_mut().0.caller = Some(slot);
                                let _ = tx.send(Ok(tls)).await;
                            }
                            None => callers.over_limit(&caller, max),
                        }
                    }
                    Ok(Err(e)) => debug!(error = %e, "tls handshake failed"),
                    Err(_) => debug!("tls handshake timed out; connection closed"),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}
