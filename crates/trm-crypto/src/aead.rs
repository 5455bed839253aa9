//! At-rest sealing. Each subject (a case, a referral copy) has its own random data key; the
//! data key is stored wrapped by the node's master key. Destroying a subject's wrapped key
//! makes everything sealed under it unreadable, in backups too (crypto-shredding).

use std::path::Path;

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use rand::RngCore;

use crate::{files, CryptoError, Result};

const NONCE_LEN: usize = 24;

/// A 256-bit symmetric key. Not printable.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Generates a random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// Reads a master key file (32 raw bytes).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = files::read(path)?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            CryptoError::MalformedKey(format!("{}: a master key is 32 bytes", path.display()))
        })?;
        Ok(Self(raw))
    }

    /// Writes the key with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::write_secret(path, &self.0)
    }

    /// Derives the key of one use (`label`) from this one (HMAC-SHA256): a key for
    /// authenticating rows, say, that opens nothing this key seals.
    pub fn derive(&self, label: &[u8]) -> Self {
        Self(self.mac(label))
    }

    /// Returns the HMAC-SHA256 of `data` under this key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let Ok(mut m) = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length: never reached.
            return [0u8; 32];
        };
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Returns whether `tag` is the HMAC-SHA256 of `data` under this key (in constant
    /// time).
    pub fn verify_mac(&self, data: &[u8], tag: &[u8]) -> bool {
        use hmac::Mac;
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .map(|mut m| {
                m.update(data);
                m.verify_slice(tag).is_ok()
            })
            .unwrap_or(false)
    }

    /// Seals `plaintext`, binding it to `aad` (e.g. the record's key), as nonce || ciphertext.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`SecretKey::seal`] produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError::Unseal)
    }

    /// Wraps `data_key` under this (master) key; `subject` binds the wrap to its owner.
    pub fn wrap(&self, subject: &[u8], data_key: &SecretKey) -> Result<Vec<u8>> {
        self.seal(subject, &data_key.0)
    }

    /// Unwraps a data key wrapped for `subject`.
    pub fn unwrap_key(&self, subject: &[u8], wrapped: &[u8]) -> Result<SecretKey> {
        let raw = self.open(subject, wrapped)?;
        let raw: [u8; 32] = raw.as_slice().try_into().map_err(|_| CryptoError::Unseal)?;
        Ok(SecretKey(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_aad() {
        let k = SecretKey::generate();
        let sealed = k.seal(b"case/1", b"Ana Pop").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"Ana Pop"));
        assert_eq!(k.open(b"case/1", &sealed).unwrap(), b"Ana Pop");
        assert!(k.open(b"case/2", &sealed).is_err());
        assert!(SecretKey::generate().open(b"case/1", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(k.open(b"case/1", &tampered).is_err());
    }

    #[test]
    fn wrapped_data_keys_unwrap_for_their_subject_only() {
        let master = SecretKey::generate();
        let dek = SecretKey::generate();
        let wrapped = master.wrap(b"s1", &dek).unwrap();
        let back = master.unwrap_key(b"s1", &wrapped).unwrap();
        assert_eq!(back.0, dek.0);
        assert!(master.unwrap_key(b"s2", &wrapped).is_err());
    }
}
