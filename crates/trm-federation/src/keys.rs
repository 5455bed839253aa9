//! This node's signing keys over time. Each key has a validity window: a rotated key stops
//! signing at the rotation instant but stays listed (for peers to verify what it signed
//! before) until `listed_until`.

use time::OffsetDateTime;
use trm_crypto::signing::SigningIdentity;
use trm_proto::{convert::ts, v1::SigningKey};
use trm_store::Store;

pub use trm_store::repo::directory::OwnKey;

/// Returns the entry of a key valid from `valid_from` on.
pub fn own_key(identity: &SigningIdentity, valid_from: Option<OffsetDateTime>) -> OwnKey {
    OwnKey {
        key_id: identity.key_id().to_owned(),
        public: hex::encode(identity.public().as_bytes()),
        valid_from,
        valid_until: None,
        listed_until: None,
    }
}

/// Returns the wire form of one of this node's keys.
pub fn to_wire(k: &OwnKey) -> SigningKey {
    SigningKey {
        key_id: k.key_id.clone(),
        public_key: hex::decode(&k.public).unwrap_or_default(),
        valid_from: k.valid_from.map(ts),
        valid_until: k.valid_until.map(ts),
    }
}

/// Returns the wire form of a key the directory holds for a peer.
pub fn peer_key_to_wire(k: &crate::PeerKey) -> SigningKey {
    SigningKey {
        key_id: k.key_id.clone(),
        public_key: k.public.as_bytes().to_vec(),
        valid_from: k.valid_from.map(ts),
        valid_until: k.valid_until.map(ts),
    }
}

/// Why an interrupted rotation cannot be finished now (the staged key is left in place).
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("keys: {0}")]
    Key(#[from] trm_crypto::CryptoError),
    #[error("storage: reading this node's signing keys: {0}")]
    Store(#[from] trm_store::StoreError),
}

/// Returns the keys to list now: the stored set (always including `current`) without the
/// keys whose listing ended. A storage fault is an error: a rotation must never write back
/// a list that lost the older keys.
pub fn listed(store: &Store, current: &SigningIdentity) -> trm_store::Result<Vec<OwnKey>> {
    let now = OffsetDateTime::now_utc();
    let mut keys = store.own_keys()?;
    if !keys.iter().any(|k| k.key_id == current.key_id()) {
        keys.push(own_key(current, None));
    }
    keys.retain(|k| k.listed_until.is_none_or(|t| t > now));
    Ok(keys)
}

/// Returns where a rotation stages the new key before it is committed.
pub fn staged_path(key_path: &std::path::Path) -> std::path::PathBuf {
    key_path.with_extension("rotating")
}

/// Returns the file beside the signing key `key_path` that holds its public half (SPKI
/// PEM), the file a peer's operator is given: `keys/signing.pem` -> `keys/signing.pub.pem`.
pub fn public_path(key_path: &std::path::Path) -> std::path::PathBuf {
    key_path.with_extension("pub.pem")
}

/// Makes the public key file beside `key_path` hold the public half of `identity` (the key
/// that signs now), rewriting it only when it differs. Returns whether it was rewritten.
pub fn publish_public(
    key_path: &std::path::Path,
    identity: &SigningIdentity,
) -> Result<bool, trm_crypto::CryptoError> {
    let path = public_path(key_path);
    let pem = trm_crypto::signing::public_to_pem(&identity.public())?;
    if std::fs::read_to_string(&path).is_ok_and(|held| held == pem) {
        return Ok(false);
    }
    // Written beside and renamed: a reader never sees half a key.
    let staged = key_path.with_extension("pub.pem.new");
    trm_crypto::files::write_public(&staged, pem.as_bytes())?;
    std::fs::rename(&staged, &path).map_err(|source| trm_crypto::CryptoError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok(true)
}

/// Finishes or undoes a rotation a crash interrupted: a staged key that the store lists (its
/// announcement committed) replaces the key file; one it does not list is deleted. Returns
/// whether the key file was replaced.
pub fn recover_rotation(store: &Store, key_path: &std::path::Path) -> Result<bool, RecoverError> {
    let staged = staged_path(key_path);
    if !staged.is_file() {
        return Ok(false);
    }
    let identity = SigningIdentity::load(&staged)?;
    // A storage fault must not read as "never committed": that would drop the key peers
    // were already told of.
    let committed = store
        .own_keys()?
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
