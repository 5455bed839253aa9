//! Errors of the store. Messages carry record kinds and key names at most, never record
//! contents; engine, I/O and crypto details are for the log, never for a client or a peer.

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("engine: {0}")]
    Engine(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("crypto: {0}")]
    Crypto(#[from] trm_crypto::CryptoError),
    #[error("a stored {0} does not decode")]
    Decode(&'static str),
    #[error("a record does not encode")]
    Encode,
    #[error("store corrupt: {0}")]
    Corrupt(&'static str),
    /// A durable point failed: what the group wrote may or may not be on disk.
    #[error("sync failed: {0}")]
    Sync(String),
    /// The store stopped taking writes after a failed durable point.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("the key file {0} is missing: without it no sealed record can be opened")]
    KeyStoreMissing(String),
    #[error("the store's writer has stopped")]
    Stopped,
    /// A row the node trusts without a seal does not carry the node's authentication:
    /// someone with write access to the database wrote it.
    #[error("the stored {0} is not authenticated by this node: it was written by someone else")]
    Forged(&'static str),
    /// Another writer (a replica) changed what this transaction read: run it again.
    #[error("a write conflict with another writer")]
    Conflict,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// Why a transaction closure stopped: the caller's own refusal (`Abort`: nothing it wrote
/// is kept) or a store error.
#[derive(Debug)]
pub enum TxFail<E> {
    Abort(E),
    Store(StoreError),
}

impl<E> From<StoreError> for TxFail<E> {
    fn from(e: StoreError) -> Self {
        TxFail::Store(e)
    }
}

impl<E> TxFail<E> {
    /// Returns the store error of a transaction that cannot refuse (an `Abort` is reported
    /// as a store fault).
    pub fn into_store(self) -> StoreError {
        match self {
            TxFail::Store(e) => e,
            TxFail::Abort(_) => StoreError::Corrupt("a transaction refused unexpectedly"),
        }
    }
}
