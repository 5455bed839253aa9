//! Statistics counters: one per month and [`Cell`], updated in the transaction that changes
//! the record, so an export reads counts and decrypts nothing. They hold no id, no
//! reference and no value finer than the month: aggregates, not personal data. A person is
//! counted once, in the month a case was identified here ([`Tx::put_case`] of a new case)
//! or first arrived from a peer ([`Tx::remember_received_ref`]); a referral, return plan or
//! hearing once, in its state of now, in the month it was created (the state it was counted
//! in is kept beside it, so a change moves the count).
//!
//! A closed month's report is published once and kept ([`PublishedReport`]): every later
//! export answers it, whatever its counters do afterwards. A person whose month was
//! already published counts in the month they are entered instead, so that two exports
//! of one month never differ by them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trm_core::stats::{Cell, Month, Period};

use crate::{repo::layout, tx::decode, Result, Store, Tx};

/// What a record is counted as now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Counted {
    month: Month,
    cell: Cell,
}

/// The key of `cell`'s counter in `month`.
pub(crate) fn stat_key(month: Month, cell: &Cell) -> Result<Vec<u8>> {
    Ok(layout::stat(&month.key(), &cell_key(cell)?))
}

fn cell_key(cell: &Cell) -> Result<Vec<u8>> {
    serde_json::to_vec(cell).map_err(|_| crate::StoreError::Encode)
}

/// A month's statistics report as first published: the signed bytes, answered unchanged
/// by every later export of the month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedReport {
    /// The serialized `StatisticsReport`.
    #[serde(with = "hex_bytes")]
    pub report: Vec<u8>,
    pub key_id: String,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// Reads the counters of one month from a scan of its prefix.
fn month_counts(
    mut scan: impl FnMut(&[u8], Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>>,
    month: Month,
    out: &mut BTreeMap<Cell, u64>,
) -> Result<()> {
    let prefix = layout::stats_of(&month.key());
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = scan(&prefix, after.as_deref())?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in page {
            let cell: Cell = decode("statistics cell", &k[prefix.len()..])?;
            let n = <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| crate::StoreError::Corrupt("statistics counter"))?;
            *out.entry(cell).or_insert(0) += n;
        }
    }
    Ok(())
}

impl Tx<'_> {
    /// Returns the report published for `month`, if it was.
    pub fn published_report(&mut self, month: Month) -> Result<Option<PublishedReport>> {
        self.get_json("published report", &layout::published(&month.key()))
    }

    /// Keeps the report first published for `month`.
    /// It is journalled too: a restore of an older backup keeps it.
    pub fn put_published_report(&mut self, month: Month, r: &PublishedReport) -> Result<()> {
        self.journal(crate::journal::Entry::Published {
            month,
            report: r.clone(),
        });
        self.put_json(&layout::published(&month.key()), r)
    }

    /// Returns the counters of `month` as this transaction sees them.
    pub fn month_counts(&mut self, month: Month) -> Result<BTreeMap<Cell, u64>> {
        let mut out = BTreeMap::new();
        month_counts(|p, a| self.scan_raw(p, a, 1024), month, &mut out)?;
        Ok(out)
    }

    /// Returns the month a person identified in `month` counts in: that month, or, once it
    /// is published, the month of now.
    fn counting_month(&mut self, month: Month) -> Result<Month> {
        if self.published_report(month)?.is_none() {
            return Ok(month);
        }
        Ok(Month::at(time::OffsetDateTime::now_utc()))
    }

    /// Adds `delta` to the counter of `cell` in `month`.
    pub fn count(&mut self, month: Month, cell: &Cell, delta: i64) -> Result<()> {
        let key = stat_key(month, cell)?;
        let now = self
            .get_raw(&key)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let next = now.saturating_add_signed(delta);
        if next == 0 {
            self.delete(&key)
        } else {
            self.put_raw(&key, &next.to_be_bytes())
        }
    }

    /// Counts a person in every cell of `cells`, in `month` (or now, once `month` is
    /// published); returns the month it counted in.
    pub(crate) fn count_person(&mut self, month: Month, cells: &[Cell]) -> Result<Month> {
        // Whether the month is published and its counters, in one round trip.
        let mut keys = vec![layout::published(&month.key())];
        for c in cells {
            keys.push(stat_key(month, c)?);
        }
        self.prefetch(&keys)?;
        let month = self.counting_month(month)?;
        for c in cells {
            self.count(month, c, 1)?;
        }
        Ok(month)
    }

    /// Moves the count of record `id` (of the kind tagged `kind`) to `cell` in `month`, where it was counted
    /// elsewhere before.
    pub(crate) fn recount(
        &mut self,
        kind: u8,
        id: &[u8; 16],
        month: Month,
        cell: Cell,
    ) -> Result<()> {
        let key = layout::counted(kind, id);
        let before: Option<Counted> = self.get_json("counted record", &key)?;
        let now = Counted { month, cell };
        if before.as_ref() == Some(&now) {
            return Ok(());
        }
        if let Some(b) = before {
            self.count(b.month, &b.cell, -1)?;
        }
        self.count(now.month, &now.cell, 1)?;
        self.put_json(&key, &now)
    }
}

impl Store {
    /// Returns the counts of every cell over the months of `period`.
    pub fn stat_counts(&self, period: Period) -> Result<BTreeMap<Cell, u64>> {
        let mut out = BTreeMap::new();
        for month in period.months() {
            month_counts(|p, a| self.scan_raw(p, a, 1024), month, &mut out)?;
        }
        Ok(out)
    }

    /// Returns the report published for `month`, if it was.
    pub fn published_report(&self, month: Month) -> Result<Option<PublishedReport>> {
        self.get_json("published report", &layout::published(&month.key()))
    }
}
