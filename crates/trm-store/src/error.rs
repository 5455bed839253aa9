//! Errors of the store. Messages carry tree and key names at most, never record contents.

use sled::transaction::UnabortableTransactionError;

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("crypto: {0}")]
    Crypto(#[from] trm_crypto::CryptoError),
    #[error("record {tree}/{key} does not decode")]
    Decode { tree: &'static str, key: String },
    #[error("record does not encode")]
    Encode,
    #[error("durability worker is gone")]
    Durability,
    #[error("the data-key store {0} is missing: without it no sealed record can be opened")]
    KeyStoreMissing(String),
}

/// An error inside a transaction closure from the store itself.
#[derive(Debug)]
pub enum TxError {
    /// Another transaction touched the same keys: sled retries the closure.
    Conflict,
    /// A fault of the store (I/O, crypto, decoding).
    Store(StoreError),
}

impl From<UnabortableTransactionError> for TxError {
    fn from(e: UnabortableTransactionError) -> Self {
        match e {
            UnabortableTransactionError::Conflict => TxError::Conflict,
            UnabortableTransactionError::Storage(e) => TxError::Store(StoreError::Sled(e)),
        }
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

/// Why a transaction closure stopped: the caller's own refusal (`Abort`, nothing is written)
/// or a store error.
#[derive(Debug)]
pub enum TxFail<E> {
    Abort(E),
    Tx(TxError),
}

impl<E> From<TxError> for TxFail<E> {
    fn from(e: TxError) -> Self {
        TxFail::Tx(e)
    }
}

impl<E> From<UnabortableTransactionError> for TxFail<E> {
    fn from(e: UnabortableTransactionError) -> Self {
        TxFail::Tx(e.into())
    }
}

impl<E> From<StoreError> for TxFail<E> {
    fn from(e: StoreError) -> Self {
        TxFail::Tx(TxError::Store(e))
    }
}
