//! Cryptography of a node, on bytes and keys only (no gRPC, no storage):
//! - [`signing`]: the ed25519 signing identity, key ids, and the exact signed bytes of
//!   envelopes and receipts (tag, zero byte, body) with strict verification;
//! - [`aead`]: at-rest sealing (XChaCha20-Poly1305) under per-subject data keys wrapped by
//!   the node's master key, so erasing a key shreds the data;
//! - [`pki`]: ECDSA P-256 certificate authorities and the node, server and client
//!   certificates of the federation, and reading their `trm://` identities back;
//! - [`files`]: key files written with mode 0600.
#![forbid(unsafe_code)]

pub mod aead;
pub mod files;
pub mod pki;
pub mod signing;

mod error;
pub use error::{CryptoError, Result};

/// Returns the SHA-256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
