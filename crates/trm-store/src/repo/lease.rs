//! Leases: which replica of a node does a job only one of them may do at a time (the
//! delivery workers). A lease names its holder and when it ends; a holder renews it well
//! before then, and any replica takes it once it has ended. Times are the replicas' own
//! clocks, so replicas must keep time (NTP); the holder gives its lease up early (see
//! [`Lease::usable_until`]) to leave room for a small skew.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{repo::layout, Result, Tx};

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The replica holding it (an id it made up when it started).
    pub holder: String,
    pub expires_at: OffsetDateTime,
}

impl Lease {
    /// Until when the holder may act on it: a third of its length before it ends.
    pub fn usable_until(&self, length: Duration) -> OffsetDateTime {
        self.expires_at - length / 3
    }
}

impl Tx<'_> {
    /// Returns lease `name` as stored.
    /// A lease row the node did not write (it does not carry its authentication) counts
    /// as no lease: it is taken over, and logged.
    pub fn lease(&mut self, name: &str) -> Result<Option<Lease>> {
        match self.get_trusted("lease", &layout::meta(&format!("lease/{name}"))) {
            Err(crate::StoreError::Forged(what)) => {
                tracing::error!(
                    lease = name,
                    "a {what} row not written by this node is ignored"
                );
                Ok(None)
            }
            other => other,
        }
    }

    /// Takes or renews lease `name` for `holder` until `now + length` when it is free,
    /// ended or already `holder`'s; returns the lease as it stands after the call (held by
    /// `holder` or not).
    pub fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        length: Duration,
    ) -> Result<Lease> {
        match self.lease(name)? {
            Some(l) if l.holder != holder && l.expires_at > now => Ok(l),
            _ => {
                let l = Lease {
                    holder: holder.to_owned(),
                    expires_at: now + length,
                };
                self.put_trusted(&layout::meta(&format!("lease/{name}")), &l)?;
                Ok(l)
            }
        }
    }

    /// Gives lease `name` up if `holder` holds it (a clean shutdown: another replica takes
    /// over at once instead of when the lease ends).
    pub fn release_lease(&mut self, name: &str, holder: &str) -> Result<()> {
        if self.lease(name)?.is_some_and(|l| l.holder == holder) {
            self.delete(&layout::meta(&format!("lease/{name}")))?;
        }
        Ok(())
    }
}
