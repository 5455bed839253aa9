//! Idempotent requests (AIP-155): what a client's request with a `request_id` produced, so
//! that a retry returns the original result and changes nothing. The record holds a digest
//! of the request and the ids of its result, never personal data.
//!
//! Records are kept 24 hours. An index by age (written with each record) lets them be
//! forgotten oldest first, in passes of bounded work, however many there are. Records an
//! older version wrote have no index entry: one sweep through them, resumed from a cursor
//! pass after pass, forgets the old ones and indexes the others.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    repo::{layout, outbox::hex_bytes},
    Result, Tx,
};

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// SHA-256 of the request as it was made (without its request id).
    #[serde(with = "hex_bytes")]
    pub digest: Vec<u8>,
    /// The caller's encoding of the result (ids only).
    pub result: String,
    pub at: OffsetDateTime,
}

/// What one pass of [`Tx::forget_requests_before`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records forgotten.
    pub forgotten: usize,
    /// Whether work is left for another pass (more old records, or records an older
    /// version wrote that the sweep has not reached).
    pub more: bool,
}

/// Where the sweep through records without an index entry stands: the last key it
/// examined, or [`SWEPT`] once it has been through them all.
const SWEEP: &str = "requests_sweep";
const SWEPT: &[u8] = b"done";

/// Milliseconds since the epoch of `at` (0 before it).
fn millis(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl Tx<'_> {
    /// Returns what `client`'s request `request_id` produced.
    pub fn request(
        &mut self,
        client: &str,
        request_id: uuid::Uuid,
    ) -> Result<Option<RequestRecord>> {
        self.get_json("request", &layout::request(client, &request_id))
    }

    /// Keeps what `client`'s request `request_id` produced, indexed by its age.
    pub fn put_request(
        &mut self,
        client: &str,
        request_id: uuid::Uuid,
        record: &RequestRecord,
    ) -> Result<()> {
        let key = layout::request(client, &request_id);
        self.put_json(&key, record)?;
        self.put_raw(&layout::request_by_age(millis(record.at), &key), b"")
    }

    /// Forgets requests made before `before`, oldest first, touching at most `limit` index
    /// entries and `limit` records an older version wrote without one.
    pub fn forget_requests_before(
        &mut self,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let cutoff = millis(before);
        let page = self.scan_raw(layout::REQUESTS_BY_AGE, None, limit)?;
        let full = page.len() == limit;
        let mut reached_cutoff = false;
        for (k, _) in page {
            let rest = &k[layout::REQUESTS_BY_AGE.len()..];
            let Some((at, request)) = rest.split_first_chunk::<8>() else {
                continue;
            };
            if u64::from_be_bytes(*at) >= cutoff {
                reached_cutoff = true;
                break;
            }
            let mut record_key = layout::REQUESTS.to_vec();
            record_key.extend_from_slice(request);
            self.delete(&record_key)?;
            self.delete(&k)?;
            pruned.forgotten += 1;
        }
        pruned.more = full && !reached_cutoff;
        let swept = self.sweep_unindexed(before, limit, &mut pruned)?;
        pruned.more |= !swept;
        Ok(pruned)
    }

    /// Examines up to `limit` records after the sweep's cursor: forgets those made before
    /// `before` and indexes the others. Returns whether the sweep has been through them all.
    fn sweep_unindexed(
        &mut self,
        before: OffsetDateTime,
        limit: usize,
        pruned: &mut Pruned,
    ) -> Result<bool> {
        let cursor = layout::meta(SWEEP);
        let after = match self.get_raw(&cursor)? {
            Some(c) if c == SWEPT => return Ok(true),
            c => c,
        };
        let page = self.scan_raw(layout::REQUESTS, after.as_deref(), limit)?;
        let Some((last, _)) = page.last() else {
            self.put_raw(&cursor, SWEPT)?;
            return Ok(true);
        };
        let last = last.clone();
        let full = page.len() == limit;
        for (k, v) in page {
            let r: RequestRecord = crate::tx::decode("request", &v)?;
            if r.at < before {
                self.delete(&k)?;
                self.delete(&layout::request_by_age(millis(r.at), &k))?;
                pruned.forgotten += 1;
            } else {
                self.put_raw(&layout::request_by_age(millis(r.at), &k), b"")?;
            }
        }
        if full {
            self.put_raw(&cursor, &last)?;
            Ok(false)
        } else {
            self.put_raw(&cursor, SWEPT)?;
            Ok(true)
        }
    }
}

/// Index entries (and as many unindexed records) one pass of [`Store::prune_requests`]
/// touches: a transaction of bounded size, with other requests' commits between passes.
const PASS: usize = 1024;

impl crate::Store {
    /// Forgets every request made before `before`, one pass of bounded work at a time.
    /// Returns how many were forgotten.
    pub async fn prune_requests(&self, before: OffsetDateTime) -> Result<usize> {
        let mut total = 0;
        loop {
            let pass = self
                .commit::<Pruned, (), _>(move |tx| Ok(tx.forget_requests_before(before, PASS)?))
                .await
                .map_err(crate::TxFail::into_store)?
                .value;
            total += pass.forgotten;
            if !pass.more {
                return Ok(total);
            }
        }
    }
}
