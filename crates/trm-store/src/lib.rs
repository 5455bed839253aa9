//! Persistence of a node in one sled database:
//! - records holding personal data are sealed with XChaCha20-Poly1305 under a per-subject
//!   data key wrapped by the node's master key ([`Tx::put_sealed`]); the keys live in a
//!   file of their own outside the database folder ([`keystore`]), and erasing a subject
//!   overwrites its key there ([`Tx::shred`]), so no copy of the database can open it again;
//! - multi-tree transactions ([`Store::transact`]) so a state change, its outbound envelope
//!   and its audit entry commit together;
//! - a durable point that is real ([`Store::durable`]): sled's flush, then `fdatasync` of its
//!   file, shared by every writer waiting at the time (group commit);
//! - an append-only, hash-chained audit log ([`audit`]) holding ids and field names only.
#![forbid(unsafe_code)]

pub mod audit;
mod durability;
mod error;
pub mod keystore;
mod store;

pub use error::{Result, StoreError, TxError, TxFail};
pub use store::{Store, Subject, TreeName, Tx};
