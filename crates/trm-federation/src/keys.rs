//! This node's signing keys over time. Each key has a validity window: a rotated key stops
//! signing at the rotation instant but stays listed (for peers to verify what it signed
//! before) until `listed_until`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_crypto::signing::SigningIdentity;
use trm_proto::{convert::ts, v1::SigningKey};
use trm_store::{Store, TreeName};

/// Key of the key set in the meta tree.
pub const OWN_KEYS: &[u8] = b"own_keys";

/// One of this node's signing keys (public part and windows, unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnKey {
    pub key_id: String,
    /// Hex of the 32 raw bytes.
    pub public: String,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
    /// After this, the key is no longer listed at all.
    pub listed_until: Option<i64>,
}

impl OwnKey {
    /// Returns the entry of a key valid from `valid_from` on.
    pub fn new(identity: &SigningIdentity, valid_from: Option<OffsetDateTime>) -> Self {
        Self {
            key_id: identity.key_id().to_owned(),
            public: hex::encode(identity.public().as_bytes()),
            valid_from: valid_from.map(|t| t.unix_timestamp()),
            valid_until: None,
            listed_until: None,
        }
    }

    /// Returns the wire form.
    pub fn to_wire(&self) -> SigningKey {
        let t = |s: Option<i64>| {
            s.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .map(ts)
        };
        SigningKey {
            key_id: self.key_id.clone(),
            public_key: hex::decode(&self.public).unwrap_or_default(),
            valid_from: t(self.valid_from),
            valid_until: t(self.valid_until),
        }
    }
}

/// Returns the keys to list now: the stored set (always including `current`) without the
/// keys whose listing ended.
pub fn listed(store: &Store, current: &SigningIdentity) -> Vec<OwnKey> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut keys: Vec<OwnKey> = store
        .get_json(TreeName::Meta, OWN_KEYS)
        .ok()
        .flatten()
        .unwrap_or_default();
    if !keys.iter().any(|k| k.key_id == current.key_id()) {
        keys.push(OwnKey::new(current, None));
    }
    keys.retain(|k| k.listed_until.is_none_or(|t| t > now));
    keys
}

/// Returns where a rotation stages the new key before it is committed.
pub fn staged_path(key_path: &std::path::Path) -> std::path::PathBuf {
    key_path.with_extension("rotating")
}

/// Finishes or undoes a rotation a crash interrupted: a staged key that the store lists (its
/// announcement committed) replaces the key file; one it does not list is deleted. Returns
/// whether the key file was replaced.
pub fn recover_rotation(
    store: &Store,
    key_path: &std::path::Path,
) -> Result<bool, trm_crypto::CryptoError> {
    let staged = staged_path(key_path);
    if !staged.is_file() {
        return Ok(false);
    }
    let identity = SigningIdentity::load(&staged)?;
    let committed = store
        .get_json::<Vec<OwnKey>>(TreeName::Meta, OWN_KEYS)
        .ok()
        .flatten()
        .unwrap_or_default()
        .iter()
        .any(|k| k.key_id == identity.key_id());
    let io = |source| trm_crypto::CryptoError::KeyFile {
        path: key_path.display().to_string(),
        source,
    };
    if committed {
        std::fs::rename(&staged, key_path).map_err(io)?;
        if let Some(dir) = key_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        tracing::warn!(
            key_id = identity.key_id(),
            "finished a signing-key rotation interrupted by a crash"
        );
        Ok(true)
    } else {
        std::fs::remove_file(&staged).map_err(io)?;
        tracing::warn!("dropped a staged signing key whose rotation never committed");
        Ok(false)
    }
}
