//! The audit log: append-only and hash-chained. Each entry holds who did what to which id,
//! with which outcome, and the hash of the previous entry; it never holds personal data (the
//! callers pass ids, field names, purposes and reasons only).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    engine::EngineTx,
    repo::layout,
    tx::{decode, encode, Tx},
    Result, Store, StoreError,
};

const HEAD: &str = "audit_head";
const SIGNED: &str = "audit_head_signed";

/// The keys of the audit head and of the head the node last signed.
pub(crate) fn head_keys() -> [Vec<u8>; 2] {
    [layout::meta(HEAD), layout::meta(SIGNED)]
}

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
    /// Stored (and hashed) as RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub record: AuditRecord,
    /// Hex SHA-256 of the previous entry ("" for the first).
    pub prev: String,
    /// Hex SHA-256 of this entry's `seq`, `at`, `record` and `prev`.
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    record: &'a AuditRecord,
    prev: &'a str,
}

impl AuditEntry {
    /// Builds the entry following `prev` (sequence `seq`).
    pub fn chain(seq: u64, at: OffsetDateTime, record: AuditRecord, prev: String) -> Self {
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
            at: self.at,
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

impl Tx<'_> {
    /// Appends an entry to the audit chain, in this transaction.
    pub fn audit(&mut self, record: AuditRecord) -> Result<()> {
        let head: AuditHead = self
            .get_json("audit head", &layout::meta(HEAD))?
            .unwrap_or_default();
        let seq = head.seq + 1;
        let entry = AuditEntry::chain(seq, OffsetDateTime::now_utc(), record, head.hash);
        self.put_json(&layout::audit(seq), &entry)?;
        self.put_json(
            &layout::meta(HEAD),
            &AuditHead {
                seq,
                hash: entry.hash.clone(),
            },
        )?;
        self.fx.audited = true;
        Ok(())
    }
}

/// How far apart in time an audit entry and the record written with it may be, for
/// [`Tx::audited_actor_near`]: both are stamped in one transaction, so this is slack.
const NEAR: time::Duration = time::Duration::seconds(5);
/// The most entries [`Tx::audited_actor_near`] reads past the first one near the time.
const NEAR_SCAN: usize = 20_000;

impl Tx<'_> {
    /// Returns who (the entry's actor) was audited doing one of `actions` to `subject` in
    /// the transaction that also stamped a record with `at`; `None` when no such entry is
    /// found near that time. Entries are appended in time order, so the search is by time:
    /// a binary search for the first entry a little before `at`, then a bounded scan. For
    /// records older versions kept without saying who made them.
    pub fn audited_actor_near(
        &mut self,
        subject: &str,
        actions: &[&str],
        at: OffsetDateTime,
    ) -> Result<Option<String>> {
        let head: AuditHead = self
            .get_json("audit head", &layout::meta(HEAD))?
            .unwrap_or_default();
        let (from, until) = (at - NEAR, at + NEAR);
        // The first sequence whose entry is not before `from` (entries 1..=head.seq).
        let (mut lo, mut hi) = (1u64, head.seq + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let before = match self.get_json::<AuditEntry>("audit entry", &layout::audit(mid))? {
                Some(e) => e.at < from,
                None => true,
            };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut after = Some(layout::audit(lo - 1));
        let mut read = 0;
        while read < NEAR_SCAN {
            let page = self.scan_raw(layout::AUDIT, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else {
                return Ok(None);
            };
            after = Some(last.clone());
            for (_, v) in page {
                read += 1;
                let e: AuditEntry = decode("audit entry", &v)?;
                if e.at > until {
                    return Ok(None);
                }
                if e.record.subject == subject && actions.contains(&e.record.action.as_str()) {
                    return Ok(Some(e.record.actor));
                }
            }
        }
        Ok(None)
    }
}

/// Signs the head in `etx` unless it is signed already; refuses (returns `false`) when the
/// chain no longer holds, at the last signed sequence, the hash that was signed.
pub(crate) fn sign_head(
    etx: &mut dyn EngineTx,
    signer: &trm_crypto::signing::Signer,
) -> Result<bool> {
    let head: AuditHead = match etx.get(&layout::meta(HEAD))? {
        Some(b) => decode("audit head", &b)?,
        None => AuditHead::default(),
    };
    let key = signer.current();
    if let Some(b) = etx.get(&layout::meta(SIGNED))? {
        let s: SignedHead = decode("signed audit head", &b)?;
        if s.seq == head.seq && s.hash == head.hash && s.key_id == key.key_id() {
            return Ok(true);
        }
        let at_signed = match etx.get(&layout::audit(s.seq))? {
            Some(e) => Some(decode::<AuditEntry>("audit entry", &e)?.hash),
            None => None,
        };
        if (s.seq > 0 && at_signed.as_deref() != Some(s.hash.as_str())) || head.seq < s.seq {
            return Ok(false);
        }
    }
    let signature = key.sign(HEAD_TAG, &SignedHead::body(head.seq, &head.hash));
    let signed = SignedHead {
        seq: head.seq,
        hash: head.hash,
        key_id: key.key_id().to_owned(),
        signature: hex::encode(signature),
    };
    etx.put(&layout::meta(SIGNED), &encode(&signed)?)?;
    Ok(true)
}

impl Store {
    /// Verifies the audit chain: any modified, reordered or removed entry is detected. The
    /// report carries the signed head and the hash the chain now holds at its sequence, for
    /// the caller to check the signature with the node's keys; a chain that does not hold
    /// what the node anchored outside the database is reported as broken.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        let head: AuditHead = self
            .get_json("audit head", &layout::meta(HEAD))?
            .unwrap_or_default();
        let mut entries = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_raw(layout::AUDIT, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            entries.extend(
                page.into_iter()
                    .map(|(_, v)| decode::<AuditEntry>("audit entry", &v).ok()),
            );
        }
        let mut report = verify(entries, &head);
        report.signed = self.get_json("signed audit head", &layout::meta(SIGNED))?;
        if let Some(s) = &report.signed {
            report.hash_at_signed = self
                .get_json::<AuditEntry>("audit entry", &layout::audit(s.seq))?
                .map(|e| e.hash);
        }
        if report.ok && !self.anchor_consistent()? {
            report.ok = false;
            report.first_bad_entry = self.read_anchor()?.map_or(1, |a| a.seq.max(1));
        }
        Ok(report)
    }

    /// Returns up to `limit` audit entries after sequence `after`, in order.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let start = layout::audit(after);
        self.scan_raw(layout::AUDIT, Some(&start), limit)?
            .into_iter()
            .map(|(_, v)| decode("audit entry", &v))
            .collect()
    }

    /// Returns the number of entries in the chain.
    pub fn audit_len(&self) -> Result<u64> {
        Ok(self
            .get_json::<AuditHead>("audit head", &layout::meta(HEAD))?
            .unwrap_or_default()
            .seq)
    }

    /// Copies the signed audit head to its anchor outside the database (written whole and
    /// synced). Run periodically and at shutdown; the anchor may lag the signed head.
    pub fn anchor_audit_head(&self) -> Result<()> {
        if self.failure().is_some() {
            // After a failed durable point the engine may show what the failed group wrote
            // (sled keeps it in memory): anchoring that head would anchor what the disk may
            // not hold. The anchor stays at the last head known durable.
            return Ok(());
        }
        let Some(signed) =
            self.get_json::<SignedHead>("signed audit head", &layout::meta(SIGNED))?
        else {
            return Ok(());
        };
        // The head read may be a commit's whose sync has not returned (sled shows a batch
        // before it syncs it): a power cut would then leave the anchor ahead of the chain.
        // Only when every commit begun before the read has returned is the head durable;
        // otherwise the next round anchors it.
        let shared = self.shared();
        let begun = shared
            .commits_begun
            .load(std::sync::atomic::Ordering::SeqCst);
        if shared
            .commits_returned
            .load(std::sync::atomic::Ordering::SeqCst)
            < begun
        {
            return Ok(());
        }
        if self.read_anchor()?.as_ref() == Some(&signed) {
            return Ok(());
        }
        let path = self.anchor_path();
        // Written whole (a temporary name of its own: replicas of the node sharing the key
        // folder write it too), owner-only.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(crate::StoreError::Corrupt("audit anchor name"))?;
        crate::journal::write_whole(dir, name, &encode(&signed)?)?;
        Ok(())
    }

    fn read_anchor(&self) -> Result<Option<SignedHead>> {
        match std::fs::read(self.anchor_path()) {
            Ok(b) => decode("audit anchor", &b).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(e)),
        }
    }

    /// Returns whether the chain still holds the anchored head (and the database a signed
    /// head at least as recent).
    pub(crate) fn anchor_consistent(&self) -> Result<bool> {
        let Some(anchor) = self.read_anchor()? else {
            return Ok(true);
        };
        let signed: Option<SignedHead> =
            self.get_json("signed audit head", &layout::meta(SIGNED))?;
        if signed.is_none_or(|s| s.seq < anchor.seq) {
            return Ok(false);
        }
        if anchor.seq == 0 {
            return Ok(true);
        }
        Ok(self
            .get_json::<AuditEntry>("audit entry", &layout::audit(anchor.seq))?
            .is_some_and(|e| e.hash == anchor.hash))
    }
}
