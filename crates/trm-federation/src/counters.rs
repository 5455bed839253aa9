//! Counters of the federation traffic, for the metrics port. Labels are fixed reason names,
//! never ids or contents.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

/// Why an inbound envelope was refused before any effect (answered with a gRPC error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    UnknownPeer,
    RemovedPeer,
    /// The certificate names a peer but does not chain to that peer's own trust anchor.
    UntrustedCertificate,
    UnknownKey,
    BadSignature,
    Malformed,
    SenderMismatch,
    RetiredKey,
    WrongRecipient,
    Stale,
    Future,
    Oversize,
    TooManyRequests,
}

impl Refusal {
    /// Returns the label used in metrics and audit entries.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::RemovedPeer => "removed_peer",
            Refusal::UntrustedCertificate => "untrusted_certificate",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Malformed => "malformed",
            Refusal::SenderMismatch => "sender_mismatch",
            Refusal::RetiredKey => "retired_key",
            Refusal::WrongRecipient => "wrong_recipient",
            Refusal::Stale => "stale",
            Refusal::Future => "future",
            Refusal::Oversize => "oversize",
            Refusal::TooManyRequests => "too_many_requests",
        }
    }

    /// Returns the gRPC error DESIGN.md prescribes, with `detail` as its message.
    pub fn status(self, detail: &str) -> tonic::Status {
        crate::error::FederationError::Refused {
            refusal: self,
            detail: detail.to_owned(),
        }
        .into()
    }
}

/// The node's federation counters.
#[derive(Debug, Default)]
pub struct Counters {
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Authenticated envelopes by receipt outcome.
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    /// Inbound `DeliverBatch` calls answered.
    pub batches: AtomicU64,
    /// Outbound envelopes with a verified receipt.
    pub delivered: AtomicU64,
    /// Outbound envelopes moved to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Failed outbound attempts (to be retried).
    pub attempts_failed: AtomicU64,
    /// From an envelope's queueing to its peer's verified receipt.
    pub delivery_latency: trm_store::histogram::Histogram,
}

impl Counters {
    /// Counts a refusal.
    pub fn refused(&self, r: Refusal) {
        *self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(r.label())
            .or_default() += 1;
    }

    /// Returns the refusal counts by reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        let m = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
