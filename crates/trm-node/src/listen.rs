//! Accepting TLS connections on a port before tonic sees them. Each accepted socket gets
//! TCP_NODELAY; at most `max_connections` are open at once (beyond, a connection waits in
//! the kernel's backlog instead of exhausting the node).
//!
//! Before the handshake there is no caller to count, only a source address (an IPv4
//! address, or an IPv6 /64). So, before any TLS work:
//! - one address holds at most `max_handshakes_per_address` connections in their handshake:
//!   a further one is closed as soon as it is accepted, and the acceptor goes on, so that
//!   stalled sockets from one address stop no one else;
//! - a share of `max_connections` (`reserved_for_known_addresses`) is kept for handshakes
//!   from addresses a caller completed a handshake from in the last day: stalled sockets
//!   from new addresses, however many, take at most the rest, and a connection from a new
//!   address finding no place left is closed at once rather than queued behind them;
//! - a handshake that does not finish within `handshake_timeout` is closed, and within the
//!   much shorter `pressure_timeout` if, while it lasts, handshakes come to hold half of the
//!   places new addresses may take or more: under a flood, stalled sockets give their
//!   places up quickly, and a real client's handshake, a few round trips, still fits.
//!
//! After the handshake, one caller (as the port's rate limit counts it: a client
//! certificate's serial, or the peer node a federation certificate names, see
//! [`CallerKey::of`]) holds at most `max_connections_per_client` established connections
//! of a port: a further one is closed right after its handshake, so one client or peer
//! cannot take every place, however many certificates it holds. The established streams
//! carry their peer's certificates to the gRPC handlers (`Request::peer_certs`).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv6Addr},
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
    /// Connections one source address may hold in their handshake at once.
    pub max_handshakes_per_address: usize,
    /// Places of `max_connections` that only handshakes from known addresses may take.
    pub reserved_for_known_addresses: usize,
    /// How long a handshake may take while the port is under pressure.
    pub pressure_timeout: Duration,
}

impl AcceptLimits {
    /// The most connections from addresses no caller is known at that may be in their
    /// handshake at once.
    fn unknown_places(&self) -> usize {
        self.max_connections
            .saturating_sub(self.reserved_for_known_addresses)
            .max(1)
    }

    /// Handshakes in progress from which the port is under pressure.
    fn pressure_from(&self) -> usize {
        self.unknown_places().div_ceil(2)
    }
}

/// Where a connection comes from, as the limits before the handshake count it: an IPv4
/// address, or the /64 of an IPv6 address (one host commonly holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            v4 => Source(v4),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// How long an address stays known after a caller completed a handshake from it.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);
/// The most addresses remembered as known (a bound on memory; beyond it, addresses not
/// seen for a day are forgotten, and new ones wait for room).
const MAX_KNOWN: usize = 65_536;

/// Why a connection was closed before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Its address holds every handshake it may.
    AddressOverLimit,
    /// Its address is not known and new addresses hold every place they may.
    NoPlaceForNewAddress,
}

/// The handshakes in progress on one port, by source address, and the addresses callers
/// completed a handshake from.
#[derive(Debug)]
struct Admission {
    limits: AcceptLimits,
    state: Mutex<AdmissionState>,
    /// Whether the port is under pressure (see [`AcceptLimits::pressure_from`]).
    pressure: watch::Sender<bool>,
    /// When connections refused before their handshake were last logged, and how many
    /// were refused since without a line.
    warned: Mutex<(Option<Instant>, u64)>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    /// Handshakes in progress per address.
    handshaking: HashMap<Source, usize>,
    /// Handshakes in progress in all.
    total: usize,
    /// Handshakes in progress from addresses not known.
    unknown: usize,
    /// Addresses a caller completed a handshake from, and when it last did.
    known: HashMap<Source, Instant>,
}

impl Admission {
    fn new(limits: AcceptLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
            pressure: watch::channel(false).0,
            warned: Mutex::default(),
        })
    }

    /// Lets a connection from `source` start its handshake, or says why not.
    fn admit(self: &Arc<Self>, source: Source) -> Result<Handshaking, Refusal> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let known = st
            .known
            .get(&source)
            .is_some_and(|at| at.elapsed() < KNOWN_FOR);
        let from_source = st.handshaking.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_handshakes_per_address.max(1) {
            return Err(Refusal::AddressOverLimit);
        }
        if !known && st.unknown >= self.limits.unknown_places() {
            return Err(Refusal::NoPlaceForNewAddress);
        }
        *st.handshaking.entry(source).or_default() += 1;
        st.total += 1;
        if !known {
            st.unknown += 1;
        }
        self.follow_pressure(st.total);
        Ok(Handshaking {
            admission: self.clone(),
            source,
            known,
        })
    }

    /// Remembers that a caller completed a handshake from `source`.
    fn known_at(&self, source: Source) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.known.len() >= MAX_KNOWN && !st.known.contains_key(&source) {
            st.known.retain(|_, at| at.elapsed() < KNOWN_FOR);
            if st.known.len() >= MAX_KNOWN {
                return;
            }
        }
        st.known.insert(source, Instant::now());
    }

    fn follow_pressure(&self, total: usize) {
        let under = total >= self.limits.pressure_from();
        self.pressure.send_if_modified(|p| {
            let changed = *p != under;
            *p = under;
            changed
        });
    }

    /// Logs connections closed before their handshake, at most once a minute.
    fn refused(&self, source: Source, why: Refusal) {
        let mut w = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        w.1 += 1;
        if w.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            let limit = match why {
                Refusal::AddressOverLimit => self.limits.max_handshakes_per_address,
                Refusal::NoPlaceForNewAddress => self.limits.unknown_places(),
            };
            match why {
                Refusal::AddressOverLimit => warn!(
                    address = %source,
                    limit,
                    closed = w.1,
                    "an address is over its limit of connections in their handshake; connection closed"
                ),
                Refusal::NoPlaceForNewAddress => warn!(
                    address = %source,
                    limit,
                    closed = w.1,
                    "handshakes from new addresses hold every place they may; connection closed"
                ),
            }
            *w = (Some(Instant::now()), 0);
        }
    }
}

/// A connection's place among the handshakes in progress, given back when it ends.
#[derive(Debug)]
struct Handshaking {
    admission: Arc<Admission>,
    source: Source,
    known: bool,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut st = a.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = st.handshaking.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.handshaking.remove(&self.source);
            }
        }
        st.total = st.total.saturating_sub(1);
        if !self.known {
            st.unknown = st.unknown.saturating_sub(1);
        }
        a.follow_pressure(st.total);
    }
}

/// Waits until a handshake begun at `start` has had its time: `handshake_timeout`, or
/// `pressure_timeout` if the port comes under pressure during it (a deadline once
/// shortened stays so: when a flood ebbs, what it left behind goes too).
async fn handshake_deadline(
    start: tokio::time::Instant,
    limits: AcceptLimits,
    mut pressure: watch::Receiver<bool>,
) {
    let normal = start + limits.handshake_timeout;
    let short = start + limits.pressure_timeout.min(limits.handshake_timeout);
    tokio::select! {
        _ = tokio::time::sleep_until(normal) => {}
        _ = async {
            if pressure.wait_for(|p| *p).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep_until(short).await;
        } => {}
    }
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
    stop: watch::Receiver<bool>,
) -> (Incoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Handshakes {
        acceptor: TlsAcceptor::from(config),
        callers: Arc::new(Callers::default()),
        limits,
        key,
        established: tx,
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let admission = Admission::new(limits);
    let task = tokio::spawn(accept(listener, slots, admission, handshakes, stop));
    (ReceiverStream::new(rx), task)
}

/// Accepts connections on `listener` until `stop` turns true: each waits for one of the
/// port's `slots`, is closed at once when its source address may start no handshake (see
/// [`Admission::admit`]), and completes its handshake on a task of its own.
async fn accept(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    admission: Arc<Admission>,
    handshakes: Handshakes,
    mut stop: watch::Receiver<bool>,
) {
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
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = Source::of(peer.ip());
        let handshaking = match admission.admit(source) {
            Ok(h) => h,
            Err(why) => {
                // Closed before any TLS work; its place is free at once.
                admission.refused(source, why);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let pressure = admission.pressure.subscribe();
        let conn = Conn {
            tcp,
            _permit: permit,
            caller: None,
        };
        tokio::spawn(handshakes.clone().complete(conn, handshaking, pressure));
    }
}

/// What completes the TLS handshakes of one port and hands the established connections
/// to its server.
#[derive(Clone)]
struct Handshakes {
    acceptor: TlsAcceptor,
    callers: Arc<Callers>,
    limits: AcceptLimits,
    key: CallerKey,
    established: mpsc::Sender<io::Result<TlsStream<Conn>>>,
}

impl Handshakes {
    /// Completes the handshake of an admitted connection before its deadline (shortened
    /// if the port comes under `pressure`), or closes it.
    async fn complete(self, conn: Conn, handshaking: Handshaking, pressure: watch::Receiver<bool>) {
        let start = tokio::time::Instant::now();
        let handshake = tokio::select! {
            r = self.acceptor.accept(conn) => Some(r),
            _ = handshake_deadline(start, self.limits, pressure) => None,
        };
        match handshake {
            Some(Ok(tls)) => self.hand_on(tls, handshaking).await,
            Some(Err(e)) => debug!(error = %e, "tls handshake failed"),
            None => debug!("tls handshake timed out; connection closed"),
        }
    }

    /// Remembers the connection's address as known, gives the connection a place among
    /// its caller's and hands it to the server; closes it when the caller holds every
    /// place it may.
    async fn hand_on(&self, mut tls: TlsStream<Conn>, handshaking: Handshaking) {
        handshaking.admission.known_at(handshaking.source);
        drop(handshaking);
        // Every port requires a client certificate; callers without one, were a port to
        // let them in, would share one count.
        let caller = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| self.key.of(c.as_ref()))
            .unwrap_or_default();
        let max = self.limits.max_connections_per_client.max(1);
        match self.callers.take(&caller, max) {
            Some(slot) => {
                tls.get_mut().0.caller = Some(slot);
                let _ = self.established.send(Ok(tls)).await;
            }
            None => self.callers.over_limit(&caller, max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AcceptLimits {
        AcceptLimits {
            max_connections: 16,
            max_connections_per_client: 4,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes_per_address: 3,
            reserved_for_known_addresses: 4,
            pressure_timeout: Duration::from_secs(1),
        }
    }

    fn source(last: u8) -> Source {
        Source::of(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn one_address_holds_at_most_its_handshakes_and_others_still_start_theirs() {
        let a = Admission::new(limits());
        let held: Vec<_> = (0..3).map(|_| a.admit(source(1)).unwrap()).collect();
        assert_eq!(a.admit(source(1)).unwrap_err(), Refusal::AddressOverLimit);
        let other = a.admit(source(2)).unwrap();
        drop(held.into_iter().next());
        assert!(
            a.admit(source(1)).is_ok(),
            "a place given back is taken again"
        );
        drop(other);
    }

    #[test]
    fn new_addresses_leave_the_reserved_places_to_known_ones() {
        let a = Admission::new(limits());
        a.known_at(source(200));
        // 12 places for new addresses (16 less 4 reserved), 3 per address.
        let held: Vec<_> = (0..4)
            .flat_map(|i| (0..3).map(move |_| i))
            .map(|i| a.admit(source(i)).unwrap())
            .collect();
        assert_eq!(held.len(), 12);
        assert_eq!(
            a.admit(source(100)).unwrap_err(),
            Refusal::NoPlaceForNewAddress
        );
        let known: Vec<_> = (0..3).map(|_| a.admit(source(200)).unwrap()).collect();
        assert_eq!(
            known.len(),
            3,
            "a known address still starts its handshakes"
        );
        drop(held);
        assert!(a.admit(source(100)).is_ok());
    }

    #[test]
    fn pressure_starts_at_half_of_the_places_of_new_addresses_and_ends_below() {
        let a = Admission::new(limits());
        let rx = a.pressure.subscribe();
        let mut held: Vec<_> = (0..5).map(|i| a.admit(source(i)).unwrap()).collect();
        assert!(!*rx.borrow());
        held.push(a.admit(source(9)).unwrap());
        assert!(*rx.borrow(), "6 of 12");
        held.pop();
        assert!(!*rx.borrow());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() {
        let v6 = |s: &str| Source::of(s.parse::<IpAddr>().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), source(1));
        assert_eq!(v6("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_under_way_when_pressure_comes_gets_the_short_deadline() {
        let l = limits();
        let (tx, rx) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let deadline = tokio::spawn(handshake_deadline(start, l, rx));
        tokio::time::sleep(l.pressure_timeout * 2).await;
        assert!(!deadline.is_finished(), "no pressure: the normal deadline");
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The pressure ends at once; the deadline, once cut short, stays so.
        tx.send_replace(false);
        deadline.await.unwrap();
        assert!(start.elapsed() < l.handshake_timeout);
        let start = tokio::time::Instant::now();
        handshake_deadline(start, l, watch::channel(false).1).await;
        assert!(start.elapsed() >= l.handshake_timeout);
    }
}
