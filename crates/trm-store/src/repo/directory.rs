//! What the node keeps of its federation: the operator's changes to the configured peer
//! directory, the keys peers announced (kept apart, so that an announcement never overrides
//! what the operator configured), the node's own signing keys over time, and the revoked
//! client certificates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::ids::NodeId;

use crate::{repo::layout, Result, Store, Tx};

/// A peer's signing key as stored: SPKI PEM and its validity window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub public_pem: String,
    pub valid_from: Option<OffsetDateTime>,
    pub valid_until: Option<OffsetDateTime>,
}

/// A peer as the operator set it at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPeer {
    pub id: NodeId,
    pub endpoint: String,
    pub tls_ca_pem: String,
    #[serde(default)]
    pub tls_pin: Option<String>,
    pub keys: Vec<StoredKey>,
}

/// The operator's changes to the configured directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryChanges {
    pub upserted: Vec<StoredPeer>,
    pub removed: Vec<NodeId>,
}

/// The keys each peer announced: they only ever add keys and end the windows of the keys
/// they succeed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedKeys {
    pub peers: BTreeMap<NodeId, Vec<StoredKey>>,
}

/// One of this node's own signing keys: public part and windows. A rotated key stops
/// signing at the rotation instant but stays listed (for peers to verify what it signed
/// before) until `listed_until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnKey {
    pub key_id: String,
    /// Hex of the 32 raw bytes.
    pub public: String,
    pub valid_from: Option<OffsetDateTime>,
    pub valid_until: Option<OffsetDateTime>,
    pub listed_until: Option<OffsetDateTime>,
}

/// A revoked client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Lower-case hex serial number, without separators or leading zeros.
    pub serial_hex: String,
    pub revoked_at: OffsetDateTime,
}

const CHANGES: &str = "directory_changes";
const LEARNED: &str = "learned_keys";
const OWN_KEYS: &str = "own_keys";
const REVOKED: &str = "revoked_clients";

impl Tx<'_> {
    /// Returns the operator's directory changes.
    pub fn directory_changes(&mut self) -> Result<DirectoryChanges> {
        Ok(self
            .get_json("directory changes", &layout::meta(CHANGES))?
            .unwrap_or_default())
    }

    /// Writes the operator's directory changes.
    pub fn put_directory_changes(&mut self, c: &DirectoryChanges) -> Result<()> {
        self.put_json(&layout::meta(CHANGES), c)
    }

    /// Returns the keys peers announced.
    pub fn learned_keys(&mut self) -> Result<LearnedKeys> {
        Ok(self
            .get_json("learned keys", &layout::meta(LEARNED))?
            .unwrap_or_default())
    }

    /// Writes the keys peers announced.
    pub fn put_learned_keys(&mut self, k: &LearnedKeys) -> Result<()> {
        self.put_json(&layout::meta(LEARNED), k)
    }

    /// Returns this node's signing keys over time.
    pub fn own_keys(&mut self) -> Result<Vec<OwnKey>> {
        Ok(self
            .get_json("own keys", &layout::meta(OWN_KEYS))?
            .unwrap_or_default())
    }

    /// Writes this node's signing keys over time.
    pub fn put_own_keys(&mut self, k: &[OwnKey]) -> Result<()> {
        self.put_json(&layout::meta(OWN_KEYS), &k)
    }

    /// Returns the revoked client certificates.
    pub fn revoked_clients(&mut self) -> Result<Vec<Revoked>> {
        Ok(self
            .get_json("revoked clients", &layout::meta(REVOKED))?
            .unwrap_or_default())
    }

    /// Writes the revoked client certificates.
    pub fn put_revoked_clients(&mut self, r: &[Revoked]) -> Result<()> {
        self.put_json(&layout::meta(REVOKED), &r)
    }
}

impl Store {
    /// Returns the operator's directory changes.
    pub fn directory_changes(&self) -> Result<DirectoryChanges> {
        Ok(self
            .get_json("directory changes", &layout::meta(CHANGES))?
            .unwrap_or_default())
    }

    /// Returns the keys peers announced.
    pub fn learned_keys(&self) -> Result<LearnedKeys> {
        Ok(self
            .get_json("learned keys", &layout::meta(LEARNED))?
            .unwrap_or_default())
    }

    /// Returns this node's signing keys over time.
    pub fn own_keys(&self) -> Result<Vec<OwnKey>> {
        Ok(self
            .get_json("own keys", &layout::meta(OWN_KEYS))?
            .unwrap_or_default())
    }

    /// Returns the revoked client certificates.
    pub fn revoked_clients(&self) -> Result<Vec<Revoked>> {
        Ok(self
            .get_json("revoked clients", &layout::meta(REVOKED))?
            .unwrap_or_default())
    }
}
