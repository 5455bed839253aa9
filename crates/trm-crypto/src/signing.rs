//! The node's ed25519 signing identity. Envelopes and receipts are signed over the ASCII
//! tag, one zero byte, then the exact body bytes; verification is strict and happens before
//! the body is decoded.

use std::path::Path;

use ed25519_dalek::{
    pkcs8::{
        spki::der::pem::LineEnding, DecodePrivateKey, DecodePublicKey, EncodePrivateKey,
        EncodePublicKey,
    },
    Signature, Signer as _, SigningKey, VerifyingKey,
};

use crate::{files, sha256, CryptoError, Result};

/// Tag of envelope signatures.
pub const ENVELOPE_TAG: &[u8] = b"trm/envelope/v1";
/// Tag of receipt signatures.
pub const RECEIPT_TAG: &[u8] = b"trm/receipt/v1";
/// Tag of statistics-report signatures.
pub const STATISTICS_TAG: &[u8] = b"trm/statistics/v1";

/// Returns the key id of a public key: the first 16 lowercase hex characters of SHA-256 of
/// the raw 32 bytes.
pub fn key_id(public: &VerifyingKey) -> String {
    let digest = sha256(public.as_bytes());
    let mut id = hex::encode(digest);
    id.truncate(16);
    id
}

/// Returns the exact bytes that are signed: tag, zero byte, body.
pub fn signed_bytes(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 1 + body.len());
    out.extend_from_slice(tag);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// A node's signing key with its key id.
#[derive(Clone)]
pub struct SigningIdentity {
    key: SigningKey,
    key_id: String,
    /// Set while the key is being rotated out: the instant its validity ends at the peers.
    /// Nothing it signs is dated later (see [`SigningIdentity::clamp`]).
    signs_until: Option<time::OffsetDateTime>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("key_id", &self.key_id)
            .field("signs_until", &self.signs_until)
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn from_key(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self {
            key,
            key_id,
            signs_until: None,
        }
    }

    /// Returns this key, retiring at `t`: what it signs from now on is dated `t` at the
    /// latest, so that a peer that learns of its successor (valid from `t`) still accepts it.
    pub fn retiring_at(&self, t: time::OffsetDateTime) -> Self {
        Self {
            signs_until: Some(t),
            ..self.clone()
        }
    }

    /// Returns `t`, or the instant the key retires if that is earlier: the creation time to
    /// write into what this key signs.
    pub fn clamp(&self, t: time::OffsetDateTime) -> time::OffsetDateTime {
        self.signs_until.map_or(t, |until| t.min(until))
    }

    /// Reads a PKCS#8 PEM private key file.
    pub fn load(path: &Path) -> Result<Self> {
        let pem = files::read_text(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
            CryptoError::MalformedKey(format!("{}: not an ed25519 PKCS#8 PEM key", path.display()))
        })?;
        Ok(Self::from_key(key))
    }

    /// Writes the private key as PKCS#8 v1 PEM (RFC 8410, without the optional public key
    /// of v2, so that `openssl pkey` and Python's `cryptography` read it) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::write_secret(path, self.to_pkcs8_v1_pem()?.as_bytes())
    }

    /// Returns the private key as PKCS#8 v1 PEM.
    pub fn to_pkcs8_v1_pem(&self) -> Result<String> {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        let pem = bytes
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| CryptoError::MalformedKey("cannot encode signing key".into()))?;
        Ok(pem.to_string())
    }

    /// Returns the key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Returns the public key.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `body` under `tag`.
    pub fn sign(&self, tag: &[u8], body: &[u8]) -> Vec<u8> {
        self.key.sign(&signed_bytes(tag, body)).to_bytes().to_vec()
    }
}

/// Verifies `signature` over tag, zero byte, `body` with strict ed25519 verification.
pub fn verify(public: &VerifyingKey, tag: &[u8], body: &[u8], signature: &[u8]) -> Result<()> {
    let sig = Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
    public
        .verify_strict(&signed_bytes(tag, body), &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// Parses a public key from its 32 raw bytes.
pub fn public_from_bytes(bytes: &[u8]) -> Result<VerifyingKey> {
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| CryptoError::MalformedKey("public key must be 32 bytes".into()))?;
    VerifyingKey::from_bytes(&raw)
        .map_err(|_| CryptoError::MalformedKey("not an ed25519 point".into()))
}

/// Encodes a public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_to_pem(public: &VerifyingKey) -> Result<String> {
    public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| CryptoError::MalformedKey("cannot encode public key".into()))
}

/// Parses a public key from SPKI PEM.
pub fn public_from_pem(pem: &str) -> Result<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem)
        .map_err(|_| CryptoError::MalformedKey("not an ed25519 public key PEM".into()))
}

pub use ed25519_dalek::VerifyingKey as PublicKey;

/// The node's current signing key, replaceable at run time (key rotation) while every
/// component keeps the same handle.
#[derive(Debug)]
pub struct Signer {
    current: std::sync::RwLock<std::sync::Arc<SigningIdentity>>,
}

impl Signer {
    /// Returns a signer using `identity`.
    pub fn new(identity: SigningIdentity) -> Self {
        Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(identity)),
        }
    }

    /// Returns the key that signs now.
    pub fn current(&self) -> std::sync::Arc<SigningIdentity> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `identity` the key that signs from now on.
    pub fn replace(&self, identity: SigningIdentity) {
        match self.current.write() {
            Ok(mut c) => *c = std::sync::Arc::new(identity),
            Err(poisoned) => *poisoned.into_inner() = std::sync::Arc::new(identity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_tag_and_exact_body() {
        let id = SigningIdentity::generate();
        let sig = id.sign(ENVELOPE_TAG, b"body");
        assert!(verify(&id.public(), ENVELOPE_TAG, b"body", &sig).is_ok());
        assert!(verify(&id.public(), RECEIPT_TAG, b"body", &sig).is_err());
        assert!(verify(&id.public(), ENVELOPE_TAG, b"body!", &sig).is_err());
        let other = SigningIdentity::generate();
        assert!(verify(&other.public(), ENVELOPE_TAG, b"body", &sig).is_err());
        assert!(verify(&id.public(), ENVELOPE_TAG, b"body", &sig[..63]).is_err());
    }

    #[test]
    fn key_files_are_pkcs8_pem_owner_only_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let id = SigningIdentity::generate();
        id.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // PKCS#8 v1 (RFC 8410 section 7): version 0 and no public key, 48 bytes of DER.
        let der = ed25519_dalek::pkcs8::spki::der::pem::decode_vec(text.as_bytes())
            .unwrap()
            .1;
        assert_eq!(der.len(), 48, "v1 form, without the public key");
        assert_eq!(
            &der[..16],
            &hex::decode("302e020100300506032b657004220420").unwrap()[..]
        );
        let back = SigningIdentity::load(&path).unwrap();
        assert_eq!(back.key_id(), id.key_id());
        assert_eq!(back.key_id().len(), 16);
        let pem = public_to_pem(&id.public()).unwrap();
        assert_eq!(public_from_pem(&pem).unwrap(), id.public());
    }

    #[test]
    fn keys_written_in_the_v2_form_by_earlier_versions_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.pem");
        let id = SigningIdentity::generate();
        let v2 = id.key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(&path, v2.as_bytes()).unwrap();
        assert_eq!(SigningIdentity::load(&path).unwrap().key_id(), id.key_id());
    }
}
