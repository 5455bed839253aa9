//! Leases: which replica of a node does a job only one of them may do at a time (the
//! delivery workers). A lease names its holder and when it ends; a holder renews it well
//! before then, and any replica takes it once it has ended. Times are the replicas' own
//! clocks, so replicas must keep time (NTP); the holder gives its lease up early (see
//! [`Lease::usable_until`]) to leave room for a small skew.
//!
//! And what replicas keep in memory from the database (the peer directory, the keys peers
//! announced, revoked client certificates): each change of it counts one more in a change
//! counter, in the same transaction, so that a replica learns of a change made through
//! another by reading one number, and reads the rest again only then.

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

/// The counter of changes to what replicas keep in memory.
const SHARED_VERSION: &str = "shared_version";

impl Tx<'_> {
    /// Counts a change to what replicas keep in memory (the peer directory, announced keys,
    /// revoked client certificates), in this transaction: every replica reads it again.
    pub fn changed_shared_state(&mut self) -> Result<()> {
        let key = layout::meta(SHARED_VERSION);
        let n = self
            .get_raw(&key)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        self.put_raw(&key, &(n + 1).to_be_bytes())
    }
}

impl crate::Store {
    /// Returns the count of changes to what replicas keep in memory (one small read).
    pub fn shared_version(&self) -> Result<u64> {
        Ok(self
            .engine()
            .get(&layout::meta(SHARED_VERSION))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }
}
