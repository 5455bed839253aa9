//! Errors of the crypto layer. Messages name what failed, never key material or plaintext.

/// Result alias of this crate.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed key: {0}")]
    MalformedKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("sealed data does not open (wrong key or tampered)")]
    Unseal,
    #[error("sealing failed")]
    Seal,
    #[error("certificate: {0}")]
    Certificate(String),
}

impl From<rcgen::Error> for CryptoError {
    fn from(e: rcgen::Error) -> Self {
        CryptoError::Certificate(e.to_string())
    }
}
