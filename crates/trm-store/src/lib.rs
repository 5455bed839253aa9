//! Persistence of a node: typed repositories over a storage engine.
//!
//! - [`engine`]: the engine interface (one ordered key space, transactions with savepoints,
//!   a durable commit) and its sled engine; the PostgreSQL engine fits the same interface;
//! - [`repo`]: the typed repositories (cases, consents, referrals, returns, hearings,
//!   outbox, inbox, audit, directory, requests) and the one key layout;
//! - [`Store`]: the handle: reads of committed state, and [`Store::commit`] through the one
//!   commit pipeline ([`writer`]): a thread outside the async runtime that applies every
//!   waiting request in one transaction and makes the group durable with one sync;
//! - [`keys`]: the key hierarchy (master key, rotating KEKs, per-subject data keys in the
//!   database) that seals every record holding personal data and shreds it on erasure;
//! - [`Subject`]: whose key seals what, namespaced per kind of record.
#![forbid(unsafe_code)]

pub mod backup;
pub mod engine;
mod error;
pub mod histogram;
pub mod journal;
pub mod keys;
pub mod repo;
mod store;
mod subject;
pub mod testing;
mod tx;
pub mod writer;

pub use error::{Result, StoreError, TxFail};
pub use repo::{audit, outbox::Proof};
pub use store::{Committed, EngineOptions, Store, StoreOptions};
pub use subject::Subject;
pub use tx::{Note, Tx};

#[cfg(test)]
mod tests;
