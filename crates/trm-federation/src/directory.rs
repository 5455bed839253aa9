//! The peer directory: a node accepts nothing from a node that is not in it.

use std::{collections::BTreeMap, sync::RwLock};

use time::OffsetDateTime;
use trm_core::ids::NodeId;
use trm_crypto::signing::PublicKey;

/// One of a peer's signing keys, with its validity window (rotation with overlap).
#[derive(Debug, Clone)]
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
    /// PEM of the CA its TLS certificate chains to.
    pub tls_ca_pem: String,
    pub keys: Vec<PeerKey>,
}

impl Peer {
    /// Returns the signing key named `key_id`.
    pub fn key(&self, key_id: &str) -> Option<&PeerKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }
}

/// The peers of this node.
#[derive(Debug, Default)]
pub struct PeerDirectory {
    peers: RwLock<BTreeMap<NodeId, Peer>>,
}

impl PeerDirectory {
    /// Returns a directory holding `peers`.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        Self {
            peers: RwLock::new(peers.into_iter().map(|p| (p.id, p)).collect()),
        }
    }

    /// Returns the peer `id`.
    pub fn get(&self, id: NodeId) -> Option<Peer> {
        self.peers.read().ok()?.get(&id).cloned()
    }

    /// Returns every peer id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.peers
            .read()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Returns every peer.
    pub fn all(&self) -> Vec<Peer> {
        self.peers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }
}
