//! The audit log: append-only and hash-chained. Each entry holds who did what to which id,
//! with which outcome, and the hash of the previous entry; it never holds personal data (the
//! callers pass ids, field names, purposes and reasons only).

use serde::{Deserialize, Serialize};

/// What a caller records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Who: `client:<role>/<org>`, `peer:<ID>`, `node`.
    pub actor: String,
    /// What, e.g. `case.create`, `envelope.refuse`.
    pub action: String,
    /// Which record or message id.
    pub subject: String,
    /// `ok`, `refused`, `accepted`, `rejected` ...
    pub outcome: String,
    /// Field names, purposes, reasons; never values.
    pub detail: String,
}

impl AuditRecord {
    /// Returns a record with an empty detail.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            outcome: outcome.into(),
            detail: String::new(),
        }
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// One stored entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339 UTC.
    pub at: String,
    pub record: AuditRecord,
    /// Hex SHA-256 of the previous entry ("" for the first).
    pub prev: String,
    /// Hex SHA-256 of this entry's `seq`, `at`, `record` and `prev`.
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at: &'a str,
    record: &'a AuditRecord,
    prev: &'a str,
}

impl AuditEntry {
    /// Builds the entry following `prev` (sequence `seq`).
    pub fn chain(seq: u64, at: String, record: AuditRecord, prev: String) -> Self {
        let mut e = Self {
            seq,
            at,
            record,
            prev,
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    /// Recomputes the hash from the entry's contents.
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::to_vec(&Hashed {
            seq: self.seq,
            at: &self.at,
            record: &self.record,
            prev: &self.prev,
        })
        .unwrap_or_default();
        hex::encode(trm_crypto::sha256(&canonical))
    }
}

/// The chain's head, kept in the meta tree and updated in the same transaction as each
/// append, so a removed tail is detected too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// The result of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub ok: bool,
    pub entries_checked: u64,
    /// Sequence number of the first entry that does not verify (0 when ok).
    pub first_bad_entry: u64,
    /// The head as the node signed it at its last durable point.
    pub signed: Option<SignedHead>,
    /// Hash of the entry at the signed head's sequence, as the chain holds it now.
    pub hash_at_signed: Option<String>,
}

/// Tag of audit-head signatures.
pub const HEAD_TAG: &[u8] = b"trm/audit-head/v1";

/// The chain's head signed with the node's signing key at a durable point: whoever can
/// write the database but does not hold the key cannot recompute history unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub seq: u64,
    pub hash: String,
    pub key_id: String,
    /// Hex of the ed25519 signature over [`HEAD_TAG`], a zero byte and [`SignedHead::body`].
    pub signature: String,
}

impl SignedHead {
    /// Returns the signed bytes of a head.
    pub fn body(seq: u64, hash: &str) -> Vec<u8> {
        format!("{seq}:{hash}").into_bytes()
    }
}

/// Verifies entries in stored order against the head: sequence without gaps, each `prev`
/// equal to the previous hash, each hash recomputed, the last one equal to the head.
pub fn verify<I>(entries: I, head: &AuditHead) -> AuditReport
where
    I: IntoIterator<Item = Option<AuditEntry>>,
{
    let mut prev = String::new();
    let mut checked = 0u64;
    for (expected, entry) in (1u64..).zip(entries) {
        let valid = entry.is_some_and(|e| {
            let ok = e.seq == expected && e.prev == prev && e.compute_hash() == e.hash;
            if ok {
                prev = e.hash;
            }
            ok
        });
        if !valid {
            return AuditReport {
                ok: false,
                entries_checked: checked,
                first_bad_entry: expected,
                signed: None,
                hash_at_signed: None,
            };
        }
        checked += 1;
    }
    if head.seq != checked || head.hash != prev {
        return AuditReport {
            ok: false,
            entries_checked: checked,
            first_bad_entry: checked + 1,
            signed: None,
            hash_at_signed: None,
        };
    }
    AuditReport {
        ok: true,
        entries_checked: checked,
        first_bad_entry: 0,
        signed: None,
        hash_at_signed: None,
    }
}
