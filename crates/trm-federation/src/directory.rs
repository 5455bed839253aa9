//! The peer directory: a node accepts nothing from a node that is not in it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::RwLock,
};

use serde::{Deserialize, Serialize};

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
}

/// The peers of this node, and the nodes removed from it (refused with PERMISSION_DENIED).
#[derive(Debug, Default)]
pub struct PeerDirectory {
    peers: RwLock<BTreeMap<NodeId, Peer>>,
    removed: RwLock<BTreeSet<NodeId>>,
}

/// A signing key as stored: SPKI PEM and its validity window (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub public_pem: String,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
}

/// A peer as stored by the operator's changes at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPeer {
    pub id: NodeId,
    pub endpoint: String,
    pub tls_ca_pem: String,
    #[serde(default)]
    pub tls_pin: Option<String>,
    pub keys: Vec<StoredKey>,
}

/// The operator's changes to the configured directory, kept in the node's store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryChanges {
    pub upserted: Vec<StoredPeer>,
    pub removed: Vec<NodeId>,
}

fn at(t: Option<i64>) -> Option<OffsetDateTime> {
    t.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
}

impl StoredPeer {
    /// Returns the peer, or the reason its keys do not parse.
    pub fn to_peer(&self) -> Result<Peer, trm_crypto::CryptoError> {
        let keys = self
            .keys
            .iter()
            .map(|k| {
                let public = trm_crypto::signing::public_from_pem(&k.public_pem)?;
                Ok(PeerKey {
                    key_id: trm_crypto::signing::key_id(&public),
                    public,
                    valid_from: at(k.valid_from),
                    valid_until: at(k.valid_until),
                })
            })
            .collect::<Result<Vec<_>, trm_crypto::CryptoError>>()?;
        Ok(Peer {
            id: self.id,
            endpoint: self.endpoint.clone(),
            tls_ca_pem: self.tls_ca_pem.clone(),
            tls_pin: self.tls_pin.clone(),
            keys,
        })
    }

    /// Returns the stored form of a peer.
    pub fn from_peer(p: &Peer) -> Result<Self, trm_crypto::CryptoError> {
        Ok(Self {
            id: p.id,
            endpoint: p.endpoint.clone(),
            tls_ca_pem: p.tls_ca_pem.clone(),
            tls_pin: p.tls_pin.clone(),
            keys: p
                .keys
                .iter()
                .map(|k| {
                    Ok(StoredKey {
                        public_pem: trm_crypto::signing::public_to_pem(&k.public)?,
                        valid_from: k.valid_from.map(|t| t.unix_timestamp()),
                        valid_until: k.valid_until.map(|t| t.unix_timestamp()),
                    })
                })
                .collect::<Result<Vec<_>, trm_crypto::CryptoError>>()?,
        })
    }
}

impl PeerDirectory {
    /// Returns a directory holding `peers`.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        Self {
            peers: RwLock::new(peers.into_iter().map(|p| (p.id, p)).collect()),
            removed: RwLock::default(),
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

    /// Adds or replaces a peer; a removed node becomes a peer again.
    pub fn upsert(&self, peer: Peer) {
        if let Ok(mut r) = self.removed.write() {
            r.remove(&peer.id);
        }
        if let Ok(mut p) = self.peers.write() {
            p.insert(peer.id, peer);
        }
    }

    /// Removes a peer: nothing is sent to it and nothing accepted from it. Returns whether
    /// it was a peer.
    pub fn remove(&self, id: NodeId) -> bool {
        let was = self
            .peers
            .write()
            .map(|mut p| p.remove(&id).is_some())
            .unwrap_or(false);
        if let Ok(mut r) = self.removed.write() {
            r.insert(id);
        }
        was
    }

    /// Returns whether `id` was removed from the directory.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed
            .read()
            .map(|r| r.contains(&id))
            .unwrap_or(false)
    }

    /// Applies the operator's stored changes over the configured peers.
    pub fn apply(&self, changes: &DirectoryChanges) -> Result<(), trm_crypto::CryptoError> {
        for p in &changes.upserted {
            self.upsert(p.to_peer()?);
        }
        for id in &changes.removed {
            self.remove(*id);
        }
        Ok(())
    }

    /// Returns every peer.
    pub fn all(&self) -> Vec<Peer> {
        self.peers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }
}
