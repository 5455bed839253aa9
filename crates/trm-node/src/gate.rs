//! What every request passes before any service sees it: its client certificate is not
//! revoked, and its caller (one client certificate on the local ports, one peer node on the
//! federation port) stays within its request rate. Checked per request, so a revocation
//! takes effect on open connections as well as new ones. A revoked certificate still
//! completes its TLS handshake (its chain is verified as any other): every request on it is
//! then refused UNAUTHENTICATED saying it was revoked, counted
//! (`trm_requests_revoked_total`) and logged by serial, where a refused handshake would
//! look to a client like a network fault worth retrying and to the operator like nothing.

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Request, Status};

use crate::error::ApiError;

pub use trm_store::repo::directory::Revoked;

/// The revoked client certificates of this node, as every request sees them.
#[derive(Debug, Default)]
pub struct Revocations {
    revoked: RwLock<Vec<Revoked>>,
}

impl Revocations {
    /// Returns the set holding `revoked`.
    pub fn new(revoked: &[Revoked]) -> Self {
        Self {
            revoked: RwLock::new(revoked.to_vec()),
        }
    }

    /// Returns whether the certificate of `issuer` with this serial is revoked.
    pub fn is_revoked(&self, issuer: &str, serial_hex: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|r| r.covers(issuer, serial_hex))
    }

    /// Revokes a certificate (after the revocation is durable).
    pub fn add(&self, r: &Revoked) {
        let mut all = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        if !all.iter().any(|x| x.same_certificate(r)) {
            all.push(r.clone());
        }
    }

    /// Replaces the set (another replica revoked, or the journal says more).
    pub fn replace(&self, revoked: &[Revoked]) {
        *self.revoked.write().unwrap_or_else(PoisonError::into_inner) = revoked.to_vec();
    }

    /// Returns every revocation, by serial then issuer.
    pub fn list(&self) -> Vec<Revoked> {
        let mut all = self
            .revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        all.sort_by(|a, b| (&a.serial_hex, &a.issuer).cmp(&(&b.serial_hex, &b.issuer)));
        all
    }

    /// Returns whether certificate `leaf` is revoked (a stream already open checks it again).
    pub fn revokes(&self, leaf: &[u8]) -> bool {
        self.revoked_serial(leaf).is_some()
    }

    /// Returns the serial of certificate `leaf` when it is revoked (by its issuer and
    /// serial).
    fn revoked_serial(&self, leaf: &[u8]) -> Option<String> {
        let leaf = crate::authz::leaf(leaf)?;
        self.is_revoked(&leaf.issuer, &leaf.serial)
            .then(|| leaf.serial.clone())
    }
}

/// Per-caller request rates.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Sustained requests per second one caller may make.
    pub per_second: u32,
    /// Requests one caller may make at once above the sustained rate.
    pub burst: u32,
}

/// Which caller a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKey {
    /// The client certificate (local ports).
    ClientCertificate,
    /// The node the certificate names (federation port).
    PeerNode,
}

impl CallerKey {
    /// Returns the caller a connection or request with end-entity certificate `leaf` is
    /// counted as: its issuer and serial number (local ports: every certificate is one
    /// caller), or the node it names (federation port: whatever certificates a peer's CA
    /// issues for it, one peer is one caller). Empty when the certificate has neither.
    pub fn of(self, leaf: &[u8]) -> String {
        match self {
            CallerKey::ClientCertificate => crate::authz::leaf(leaf).map(|l| l.caller_id()),
            CallerKey::PeerNode => crate::authz::leaf(leaf)
                .and_then(|l| l.node())
                .map(|n| n.to_string()),
        }
        .unwrap_or_default()
    }
}

/// The per-request gate of one port.
pub struct Gate {
    revocations: Option<Arc<Revocations>>,
    limiter: DefaultKeyedRateLimiter<String>,
    key: CallerKey,
    /// Requests refused for going over the rate.
    pub rate_limited: Arc<AtomicU64>,
    /// Requests refused because their certificate is revoked.
    pub revoked: Arc<AtomicU64>,
    /// When each revoked serial was last logged (one line a minute per serial at most).
    warned: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How often the use of one revoked certificate is logged.
const REVOKED_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Counters shared by the gates of a node, for the metrics port.
#[derive(Debug, Default, Clone)]
pub struct GateCounters {
    pub rate_limited: Arc<AtomicU64>,
    pub revoked: Arc<AtomicU64>,
}

impl Gate {
    /// Returns a gate counting requests by `key`, refusing revoked certificates when
    /// `revocations` is given.
    pub fn new(
        limits: RateLimits,
        key: CallerKey,
        revocations: Option<Arc<Revocations>>,
        counters: &GateCounters,
    ) -> Self {
        let per_second = NonZeroU32::new(limits.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            revocations,
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            key,
            rate_limited: counters.rate_limited.clone(),
            revoked: counters.revoked.clone(),
            warned: Default::default(),
        }
    }

    /// Logs a request refused for the revoked certificate `serial`, at most once a minute
    /// per serial.
    fn warn_revoked(&self, serial: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        if warned
            .get(serial)
            .is_some_and(|at| now.duration_since(*at) < REVOKED_WARN_EVERY)
        {
            return;
        }
        if warned.len() > 10_000 {
            warned.retain(|_, at| now.duration_since(*at) < REVOKED_WARN_EVERY);
        }
        warned.insert(serial.to_owned(), now);
        tracing::warn!(
            serial,
            "request refused: its client certificate is revoked (logged once a minute per certificate)"
        );
    }

    /// Lets a request through or refuses it (UNAUTHENTICATED for a revoked certificate,
    /// RESOURCE_EXHAUSTED over the rate).
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
            return Err(ApiError::Unauthenticated("a client certificate is required").into());
        };
        self.check_leaf(leaf.as_ref())
    }

    /// Lets a request of the caller of certificate `leaf` through or refuses it, as
    /// [`Gate::check`] (the console, whose requests are not gRPC, counts against the same
    /// limiter as the services port).
    pub fn check_leaf(&self, leaf: &[u8]) -> Result<(), Status> {
        if let Some(r) = &self.revocations {
            if let Some(serial) = r.revoked_serial(leaf) {
                self.revoked.fetch_add(1, Ordering::Relaxed);
                self.warn_revoked(&serial);
                return Err(ApiError::Unauthenticated(
                    "client certificate revoked by the node's operator: ask the operator for a new one",
                )
                .into());
            }
        }
        let caller = self.key.of(leaf);
        if self.limiter.check_key(&caller).is_err() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Exhausted(
                "rate limit: too many requests from this caller; retry later",
            )
            .into());
        }
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        Ok(())
    }
}
