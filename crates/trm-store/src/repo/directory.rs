//! What the node keeps of its federation: the operator's changes to the configured peer
//! directory, the keys peers announced (kept apart, so that an announcement never overrides
//! what the operator configured), the node's own signing keys over time, and the revoked
//! client certificates.
//!
//! These rows are trusted without a seal, so each is authenticated by the node
//! ([`Tx::put_trusted`]): whoever can write the database but holds no key of the node
//! cannot make it trust a peer or a key, or forget a revocation. Each change is also
//! written to the journal beside the key file (see [`crate::journal`]), and every read
//! merges it in: a row written back from an older copy (or an older backup restored) never
//! brings back a revoked certificate, a removed peer or an ended key window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::ids::NodeId;

use crate::{
    journal::{self, merge, Entry},
    repo::layout,
    Result, Store, Tx,
};

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
    /// Counts the changes: the journal's snapshot wins over an older row.
    #[serde(default)]
    pub version: u64,
}

/// The keys each peer announced: they only ever add keys and end the windows of the keys
/// they succeed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedKeys {
    pub peers: BTreeMap<NodeId, Vec<StoredKey>>,
    /// Counts the changes: the journal's snapshot wins over an older row.
    #[serde(default)]
    pub version: u64,
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

/// A revoked client certificate: its issuer and serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Who issued it (`trm_crypto::pki::issuer_id`); empty in revocations of earlier
    /// versions, which cover the serial of any issuer.
    #[serde(default)]
    pub issuer: String,
    /// Lower-case hex serial number, without separators or leading zeros.
    pub serial_hex: String,
    pub revoked_at: OffsetDateTime,
}

impl Revoked {
    /// Whether it revokes the certificate of `issuer` with `serial_hex`.
    pub fn covers(&self, issuer: &str, serial_hex: &str) -> bool {
        self.serial_hex == serial_hex && (self.issuer.is_empty() || self.issuer == issuer)
    }

    /// Whether both name the same certificate.
    pub fn same_certificate(&self, other: &Revoked) -> bool {
        self.serial_hex == other.serial_hex && self.issuer == other.issuer
    }
}

const CHANGES: &str = "directory_changes";
const LEARNED: &str = "learned_keys";
const OWN_KEYS: &str = "own_keys";
const REVOKED: &str = "revoked_clients";

/// The rows of this repository, which the node authenticates.
pub(crate) const TRUSTED_ROWS: [&str; 4] = [CHANGES, LEARNED, OWN_KEYS, REVOKED];

impl Tx<'_> {
    fn trust_journal(&mut self) -> Result<Vec<journal::Record>> {
        journal::read_trust(&self.keys.path())
    }

    /// Returns the operator's directory changes.
    pub fn directory_changes(&mut self) -> Result<DirectoryChanges> {
        let db = self
            .get_trusted("directory changes", &layout::meta(CHANGES))?
            .unwrap_or_default();
        Ok(merge::directory(db, &self.trust_journal()?))
    }

    /// Writes the operator's directory changes (a new version), journalled.
    pub fn put_directory_changes(&mut self, c: &DirectoryChanges) -> Result<()> {
        let mut c = c.clone();
        c.version = self.directory_changes()?.version + 1;
        self.journal(Entry::Directory { changes: c.clone() });
        self.put_trusted(&layout::meta(CHANGES), &c)
    }

    /// Returns the keys peers announced.
    pub fn learned_keys(&mut self) -> Result<LearnedKeys> {
        let db = self
            .get_trusted("learned keys", &layout::meta(LEARNED))?
            .unwrap_or_default();
        Ok(merge::learned(db, &self.trust_journal()?))
    }

    /// Writes the keys peers announced, journalled.
    pub fn put_learned_keys(&mut self, k: &LearnedKeys) -> Result<()> {
        let mut k = k.clone();
        k.version = self.learned_keys()?.version + 1;
        self.journal(Entry::LearnedKeys { keys: k.clone() });
        self.put_trusted(&layout::meta(LEARNED), &k)
    }

    /// Returns this node's signing keys over time.
    pub fn own_keys(&mut self) -> Result<Vec<OwnKey>> {
        let db = self
            .get_trusted("own keys", &layout::meta(OWN_KEYS))?
            .unwrap_or_default();
        Ok(merge::own(db, &self.trust_journal()?))
    }

    /// Writes this node's signing keys over time, journalled.
    pub fn put_own_keys(&mut self, k: &[OwnKey]) -> Result<()> {
        self.journal(Entry::OwnKeys { keys: k.to_vec() });
        self.put_trusted(&layout::meta(OWN_KEYS), &k)
    }

    /// Returns the revoked client certificates.
    pub fn revoked_clients(&mut self) -> Result<Vec<Revoked>> {
        let db = self
            .get_trusted("revoked clients", &layout::meta(REVOKED))?
            .unwrap_or_default();
        Ok(merge::revoked(db, &self.trust_journal()?))
    }

    /// Writes the revoked client certificates; each new one is journalled.
    pub fn put_revoked_clients(&mut self, r: &[Revoked]) -> Result<()> {
        let before = self.revoked_clients()?;
        for new in r
            .iter()
            .filter(|n| !before.iter().any(|b| b.same_certificate(n)))
        {
            self.journal(Entry::Revoked {
                revoked: new.clone(),
            });
        }
        self.put_trusted(&layout::meta(REVOKED), &r)
    }
}

impl Store {
    fn trust_journal(&self) -> Result<Vec<journal::Record>> {
        journal::read_trust(self.key_store_path())
    }

    /// Returns the operator's directory changes.
    pub fn directory_changes(&self) -> Result<DirectoryChanges> {
        let db = self
            .get_trusted("directory changes", &layout::meta(CHANGES))?
            .unwrap_or_default();
        Ok(merge::directory(db, &self.trust_journal()?))
    }

    /// Returns the keys peers announced.
    pub fn learned_keys(&self) -> Result<LearnedKeys> {
        let db = self
            .get_trusted("learned keys", &layout::meta(LEARNED))?
            .unwrap_or_default();
        Ok(merge::learned(db, &self.trust_journal()?))
    }

    /// Returns this node's signing keys over time.
    pub fn own_keys(&self) -> Result<Vec<OwnKey>> {
        let db = self
            .get_trusted("own keys", &layout::meta(OWN_KEYS))?
            .unwrap_or_default();
        Ok(merge::own(db, &self.trust_journal()?))
    }

    /// Returns the revoked client certificates.
    pub fn revoked_clients(&self) -> Result<Vec<Revoked>> {
        let db = self
            .get_trusted("revoked clients", &layout::meta(REVOKED))?
            .unwrap_or_default();
        Ok(merge::revoked(db, &self.trust_journal()?))
    }
}
