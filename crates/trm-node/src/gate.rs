//! What every request passes before any service sees it: its client certificate is not
//! revoked, and its caller (one client certificate on the local ports, one peer node on the
//! federation port) stays within its request rate. Checked per request, so a revocation
//! takes effect on open connections as well as at the next handshake.

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rustls::{
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
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

    /// Returns whether the leaf of `certs` is revoked.
    fn leaf_revoked(&self, leaf: &[u8]) -> bool {
        match (
            trm_crypto::pki::issuer_id(leaf),
            trm_crypto::pki::serial_hex(leaf),
        ) {
            (Some(issuer), Some(serial)) => self.is_revoked(&issuer, &serial),
            _ => false,
        }
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
            CallerKey::ClientCertificate => trm_crypto::pki::caller_id(leaf),
            CallerKey::PeerNode => trm_crypto::pki::node_of(leaf).map(|n| n.to_string()),
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
}

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
        }
    }

    /// Lets a request through or refuses it (UNAUTHENTICATED for a revoked certificate,
    /// RESOURCE_EXHAUSTED over the rate).
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
            return Err(ApiError::Unauthenticated("a client certificate is required").into());
        };
        if let Some(r) = &self.revocations {
            if r.leaf_revoked(leaf.as_ref()) {
                self.revoked.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::Unauthenticated(
                    "client certificate revoked by the node's operator",
                )
                .into());
            }
        }
        let caller = self.key.of(leaf.as_ref());
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

/// A client-certificate verifier that also refuses revoked certificates at the handshake.
pub struct RevocationAware {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for RevocationAware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationAware").finish_non_exhaustive()
    }
}

impl RevocationAware {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revocations: Arc<Revocations>) -> Self {
        Self { inner, revocations }
    }
}

impl ClientCertVerifier for RevocationAware {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revocations.leaf_revoked(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
