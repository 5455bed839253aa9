//! The peer directory: a node accepts nothing from a node that is not in it.
//!
//! Each peer has an endpoint, its own TLS trust anchor (a certificate claiming to be the
//! peer is accepted only if it chains to that anchor: one member's CA never certifies
//! another), an optional certificate pin and its signing keys with validity windows. The
//! directory is built from the configuration, then the operator's changes
//! ([`DirectoryChanges`], kept in the store), then the keys peers announced
//! ([`LearnedKeys`], kept apart so that an announcement never overrides what the operator
//! configured). Every change takes effect at once, for new and open connections.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, PoisonError, RwLock},
};

use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    server::WebPkiClientVerifier,
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use trm_core::ids::NodeId;
use trm_crypto::signing::PublicKey;
pub use trm_store::repo::directory::{DirectoryChanges, LearnedKeys, StoredKey, StoredPeer};

/// Records in `tx` a change of `peer` made by `actor` (an operator, or `node.toml` when a
/// configured peer is first taken into the directory): added or changed (`Some`, with what
/// is stored of it) or removed (`None`). The stored directory is what the node loads at
/// every start ([`PeerDirectory::apply`]); what the peer announced before is forgotten,
/// and the change is audited. The caller applies the change to the running directory once
/// it is durable.
pub fn record_change(
    tx: &mut trm_store::Tx<'_>,
    actor: &str,
    peer: NodeId,
    upserted: Option<StoredPeer>,
) -> Result<(), trm_store::StoreError> {
    let mut changes = tx.directory_changes()?;
    changes.upserted.retain(|p| p.id != peer);
    changes.removed.retain(|r| *r != peer);
    let outcome = match upserted {
        Some(stored) => {
            changes.upserted.push(stored);
            "added or changed"
        }
        None => {
            changes.removed.push(peer);
            "removed"
        }
    };
    tx.put_directory_changes(&changes)?;
    let mut learned = tx.learned_keys()?;
    if learned.peers.remove(&peer).is_some() {
        tx.put_learned_keys(&learned)?;
    }
    tx.changed_shared_state()?;
    tx.audit(
        trm_store::audit::AuditRecord::new(actor, "peers.change", peer.to_string(), "ok")
            .detail(outcome),
    )?;
    Ok(())
}

/// One of a peer's signing keys, with its validity window (rotation with overlap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey {
    pub key_id: String,
    pub public: PublicKey,
    pub valid_from: Option<OffsetDateTime>,
    pub valid_until: Option<OffsetDateTime>,
}

impl PeerKey {
    /// Returns a key valid at any time.
    pub fn new(public: PublicKey) -> Self {
        Self {
            key_id: trm_crypto::signing::key_id(&public),
            public,
            valid_from: None,
            valid_until: None,
        }
    }

    /// Returns whether the key was valid at `t`.
    pub fn valid_at(&self, t: OffsetDateTime) -> bool {
        self.valid_from.is_none_or(|from| t >= from)
            && self.valid_until.is_none_or(|until| t <= until)
    }
}

/// A peer node.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: NodeId,
    /// `host:port` of its federation port.
    pub endpoint: String,
    /// PEM of the CA its TLS certificate chains to: its own trust anchor.
    pub tls_ca_pem: String,
    /// Lowercase hex SHA-256 of its TLS certificate (DER), when pinned.
    pub tls_pin: Option<String>,
    pub keys: Vec<PeerKey>,
}

impl Peer {
    /// Returns whether `cert_der` is acceptable as this peer's certificate under its pin
    /// (always, when none is set).
    pub fn pin_matches(&self, cert_der: &[u8]) -> bool {
        self.tls_pin
            .as_ref()
            .is_none_or(|pin| *pin == hex::encode(trm_crypto::sha256(cert_der)))
    }

    /// Returns the signing key named `key_id`.
    pub fn key(&self, key_id: &str) -> Option<&PeerKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    /// Returns the peer's newest key: the one valid from the latest instant (a key without
    /// a start counts as the oldest; among equals, the last listed). Only this key may
    /// announce a successor.
    pub fn newest_key(&self) -> Option<&PeerKey> {
        self.keys
            .iter()
            .enumerate()
            .max_by_key(|(i, k)| (k.valid_from, *i))
            .map(|(_, k)| k)
    }
}

/// Why a directory change was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("tls_ca_pem holds no usable CA certificate")]
    TrustAnchor,
    #[error("a signing key does not parse")]
    Key,
}

/// A peer with its compiled trust anchor.
struct Entry {
    peer: Peer,
    /// The keys the configuration or the operator gave (learned keys are merged over them).
    base_keys: Vec<PeerKey>,
    anchor: Vec<CertificateDer<'static>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("peer", &self.peer.id)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    peers: BTreeMap<NodeId, Entry>,
    /// Removed nodes, with what they were: their anchor still lets their connection through
    /// the handshake so that the refusal is answered (PERMISSION_DENIED) and audited.
    removed: BTreeMap<NodeId, Option<Entry>>,
    /// Keys announced by each peer (windows and new keys), merged over its base keys.
    learned: BTreeMap<NodeId, Vec<PeerKey>>,
    /// Verifies a chain against any anchor the directory knows: only for certificates that
    /// claim a node which is no (longer a) peer, so that the pipeline can refuse them.
    any_anchor: Option<Arc<dyn ClientCertVerifier>>,
    /// Bumped on every change: cached verifications of older generations are stale.
    generation: u64,
}

/// The peers of this node, and the nodes removed from it (refused with PERMISSION_DENIED).
pub struct PeerDirectory {
    state: RwLock<State>,
    provider: Arc<CryptoProvider>,
    /// Leaf certificate digest -> (peer, generation) of a chain verified against the peer's
    /// own anchor, so that each request re-checks it at the cost of a hash.
    verified: RwLock<HashMap<[u8; 32], (NodeId, u64)>>,
    /// When a refused handshake of each claimed node was last logged.
    warned: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// How often refused federation handshakes of one claimed node are logged.
const HANDSHAKE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for PeerDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDirectory")
            .field("peers", &self.ids())
            .finish_non_exhaustive()
    }
}

fn anchors(pem: &str) -> Result<Vec<CertificateDer<'static>>, DirectoryError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| DirectoryError::TrustAnchor)?;
    if certs.is_empty() {
        return Err(DirectoryError::TrustAnchor);
    }
    Ok(certs)
}

fn verifier_over(
    certs: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, DirectoryError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c.clone())
            .map_err(|_| DirectoryError::TrustAnchor)?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|_| DirectoryError::TrustAnchor)
}

/// Returns `base` with the learned keys merged over it: a learned key replaces the window
/// of a base key with the same id, or is added.
pub fn merge_keys(base: &[PeerKey], learned: &[PeerKey]) -> Vec<PeerKey> {
    let mut keys = base.to_vec();
    for l in learned {
        match keys.iter_mut().find(|k| k.key_id == l.key_id) {
            Some(k) => *k = l.clone(),
            None => keys.push(l.clone()),
        }
    }
    keys
}

impl State {
    fn rebuild_any_anchor(&mut self, provider: &Arc<CryptoProvider>) {
        let certs: Vec<CertificateDer<'static>> = self
            .peers
            .values()
            .chain(self.removed.values().flatten())
            .flat_map(|e| e.anchor.iter().cloned())
            .collect();
        self.any_anchor = if certs.is_empty() {
            None
        } else {
            verifier_over(&certs, provider).ok()
        };
        self.generation += 1;
    }
}

impl PeerDirectory {
    /// Returns a directory holding `peers`; refused if a peer's trust anchor is unusable.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Result<Self, DirectoryError> {
        let directory = Self {
            state: RwLock::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            verified: RwLock::default(),
            warned: Default::default(),
        };
        for p in peers {
            directory.upsert(p)?;
        }
        Ok(directory)
    }

    /// Checks that `pem` holds a usable trust anchor.
    pub fn check_anchor(pem: &str) -> Result<(), DirectoryError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        verifier_over(&anchors(pem)?, &provider).map(|_| ())
    }

    /// Logs a federation handshake refused for `node` (its certificate's claim), with what
    /// usually causes it, at most once a minute per node.
    fn warn_refused_handshake(&self, node: Option<NodeId>, why: &rustls::Error) {
        let key = node.map_or_else(|| "-".to_owned(), |n| n.to_string());
        {
            let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
            let now = std::time::Instant::now();
            if warned
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < HANDSHAKE_WARN_EVERY)
            {
                return;
            }
            if warned.len() > 1000 {
                warned.clear();
            }
            warned.insert(key, now);
        }
        let state = self.read();
        match node {
            None => tracing::warn!(
                error = %why,
                "federation handshake refused: the certificate names no node (trm://node/<ID>)"
            ),
            Some(n) if state.peers.contains_key(&n) => tracing::warn!(
                peer = %n,
                error = %why,
                "federation handshake refused: the certificate does not chain to the CA this \
                 node holds for the peer (did its CA change? `trmctl peer update --tls-ca`)"
            ),
            Some(n) if state.removed.contains_key(&n) => tracing::warn!(
                peer = %n,
                error = %why,
                "federation handshake refused: an operator removed this node from the peers"
            ),
            Some(n) => tracing::warn!(
                peer = %n,
                error = %why,
                "federation handshake refused: the node is not a peer and its CA is unknown here \
                 (if it should be a peer: `trmctl peer add` with its federation CA and signing key)"
            ),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the peer `id`.
    pub fn get(&self, id: NodeId) -> Option<Peer> {
        self.read().peers.get(&id).map(|e| e.peer.clone())
    }

    /// Returns every peer id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.read().peers.keys().copied().collect()
    }

    /// Returns every peer.
    pub fn all(&self) -> Vec<Peer> {
        self.read().peers.values().map(|e| e.peer.clone()).collect()
    }

    /// Adds or replaces a peer (its keys become exactly `peer.keys`: what it announced
    /// before is forgotten); a removed node becomes a peer again.
    pub fn upsert(&self, peer: Peer) -> Result<(), DirectoryError> {
        let anchor = anchors(&peer.tls_ca_pem)?;
        let verifier = verifier_over(&anchor, &self.provider)?;
        let mut state = self.write();
        state.removed.remove(&peer.id);
        state.learned.remove(&peer.id);
        state.peers.insert(
            peer.id,
            Entry {
                base_keys: peer.keys.clone(),
                peer,
                anchor,
                verifier,
            },
        );
        state.rebuild_any_anchor(&self.provider);
        Ok(())
    }

    /// Removes a peer: nothing is sent to it and nothing accepted from it. Returns whether
    /// it was a peer.
    pub fn remove(&self, id: NodeId) -> bool {
        let mut state = self.write();
        let was = state.peers.remove(&id);
        let existed = was.is_some();
        state.learned.remove(&id);
        match was {
            Some(e) => {
                state.removed.insert(id, Some(e));
            }
            None => {
                state.removed.entry(id).or_insert(None);
            }
        }
        state.rebuild_any_anchor(&self.provider);
        existed
    }

    /// Returns whether `id` was removed from the directory.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.read().removed.contains_key(&id)
    }

    /// Makes `keys` what peer `id` announced (merged over its configured keys).
    pub fn set_learned(&self, id: NodeId, keys: Vec<PeerKey>) {
        let mut state = self.write();
        if let Some(e) = state.peers.get_mut(&id) {
            e.peer.keys = merge_keys(&e.base_keys, &keys);
        }
        state.learned.insert(id, keys);
    }

    /// Returns the keys the configuration or the operator gave peer `id`.
    pub fn base_keys(&self, id: NodeId) -> Option<Vec<PeerKey>> {
        self.read().peers.get(&id).map(|e| e.base_keys.clone())
    }

    /// Reads what peer `id` announced from the store and applies it (after a commit that
    /// changed it).
    pub fn reload_learned(
        &self,
        store: &trm_store::Store,
        id: NodeId,
    ) -> Result<(), DirectoryError> {
        let learned = store.learned_keys().map_err(|_| DirectoryError::Key)?;
        let keys = learned
            .peers
            .get(&id)
            .map(|keys| {
                keys.iter()
                    .map(key_from_stored)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|_| DirectoryError::Key)?
            .unwrap_or_default();
        self.set_learned(id, keys);
        Ok(())
    }

    /// Returns what peer `id` announced.
    pub fn learned(&self, id: NodeId) -> Vec<PeerKey> {
        self.read().learned.get(&id).cloned().unwrap_or_default()
    }

    /// Applies the operator's stored changes over the configured peers, then the keys the
    /// peers announced.
    pub fn apply(
        &self,
        changes: &DirectoryChanges,
        learned: &LearnedKeys,
    ) -> Result<(), DirectoryError> {
        for p in &changes.upserted {
            self.upsert(peer_from_stored(p).map_err(|_| DirectoryError::Key)?)?;
        }
        for id in &changes.removed {
            self.remove(*id);
        }
        for (id, keys) in &learned.peers {
            let keys = keys
                .iter()
                .map(key_from_stored)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| DirectoryError::Key)?;
            self.set_learned(*id, keys);
        }
        Ok(())
    }

    /// Returns the peer whose certificate chain `certs` (leaf first) is: the leaf names
    /// exactly one node, that node is a peer, the chain verifies against that peer's own
    /// trust anchor, and the leaf matches its pin. Checked on every request, so a change of
    /// anchor or pin takes effect on open connections too.
    pub fn authenticate(&self, certs: &[CertificateDer<'_>]) -> Result<Peer, AuthFailure> {
        let Some(leaf) = certs.first() else {
            return Err(AuthFailure::NoIdentity);
        };
        let node = trm_crypto::pki::node_of(leaf.as_ref()).ok_or(AuthFailure::NoIdentity)?;
        let state = self.read();
        if state.removed.contains_key(&node) {
            return Err(AuthFailure::Removed(node));
        }
        let entry = state.peers.get(&node).ok_or(AuthFailure::Unknown(node))?;
        let digest = trm_crypto::sha256(leaf.as_ref());
        let cached = self
            .verified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .is_some_and(|(n, g)| *n == node && *g == state.generation);
        if !cached {
            entry
                .verifier
                .verify_client_cert(leaf, &certs[1..], UnixTime::now())
                .map_err(|_| AuthFailure::WrongAnchor(node))?;
            let mut verified = self
                .verified
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if verified.len() > 4096 {
                verified.clear();
            }
            verified.insert(digest, (node, state.generation));
        }
        if !entry.peer.pin_matches(leaf.as_ref()) {
            return Err(AuthFailure::Pin(node));
        }
        Ok(entry.peer.clone())
    }

    /// Returns the TLS client-certificate verifier of the federation port, which follows
    /// this directory as it changes.
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(PeerCertVerifier {
            directory: self.clone(),
        })
    }
}

/// Why a TLS peer is not accepted as a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The certificate names no node, or more than one.
    NoIdentity,
    Unknown(NodeId),
    Removed(NodeId),
    /// The chain does not verify against the claimed peer's own anchor.
    WrongAnchor(NodeId),
    /// The certificate is not the one pinned for the peer.
    Pin(NodeId),
}

/// Verifies a federation client certificate during the handshake: against the claimed
/// peer's own anchor when it names a peer; against any known anchor otherwise (the
/// pipeline then refuses it as unknown or removed, with its gRPC code and an audit entry).
/// A certificate from a CA the directory does not know never completes the handshake.
struct PeerCertVerifier {
    directory: Arc<PeerDirectory>,
}

impl std::fmt::Debug for PeerCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(node) = trm_crypto::pki::node_of(end_entity.as_ref()) else {
            let refused =
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
            self.directory.warn_refused_handshake(None, &refused);
            return Err(refused);
        };
        let verifier = {
            let state = self.directory.read();
            match state.peers.get(&node) {
                Some(entry) => Some(entry.verifier.clone()),
                None => state.any_anchor.clone(),
            }
        };
        let verified = match verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        if let Err(e) = &verified {
            self.directory.warn_refused_handshake(Some(node), e);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.directory.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.directory.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.directory
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Returns the key a stored key is, or why it does not parse.
pub fn key_from_stored(k: &StoredKey) -> Result<PeerKey, trm_crypto::CryptoError> {
    let public = trm_crypto::signing::public_from_pem(&k.public_pem)?;
    Ok(PeerKey {
        key_id: trm_crypto::signing::key_id(&public),
        public,
        valid_from: k.valid_from,
        valid_until: k.valid_until,
    })
}

/// Returns the stored form of a key.
pub fn stored_from_key(k: &PeerKey) -> Result<StoredKey, trm_crypto::CryptoError> {
    Ok(StoredKey {
        public_pem: trm_crypto::signing::public_to_pem(&k.public)?,
        valid_from: k.valid_from,
        valid_until: k.valid_until,
    })
}

/// Returns the peer a stored peer is, or why its keys do not parse.
pub fn peer_from_stored(p: &StoredPeer) -> Result<Peer, trm_crypto::CryptoError> {
    Ok(Peer {
        id: p.id,
        endpoint: p.endpoint.clone(),
        tls_ca_pem: p.tls_ca_pem.clone(),
        tls_pin: p.tls_pin.clone(),
        keys: p
            .keys
            .iter()
            .map(key_from_stored)
            .collect::<Result<Vec<_>, _>>()?,
    })
}

/// Returns the stored form of a peer.
pub fn stored_from_peer(p: &Peer) -> Result<StoredPeer, trm_crypto::CryptoError> {
    Ok(StoredPeer {
        id: p.id,
        endpoint: p.endpoint.clone(),
        tls_ca_pem: p.tls_ca_pem.clone(),
        tls_pin: p.tls_pin.clone(),
        keys: p
            .keys
            .iter()
            .map(stored_from_key)
            .collect::<Result<Vec<_>, _>>()?,
    })
}
