//! Auditing refusals without letting a flood of them write and sync one entry each: the
//! first [`EACH`] refusals of each caller for each reason in a window are audited one by one
//! (durably, before they are answered); the others in that window are counted and written as
//! one entry when the window closes ([`RefusalLog::flush`], run periodically and at
//! shutdown).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use trm_store::{audit::AuditRecord, Store, StoreError, TxFail};

/// How long one window of refusals lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Refusals of one caller for one reason audited one by one in a window.
pub const EACH: u32 = 5;

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Refusals audited one by one so far.
    audited: u32,
    /// Refusals counted but not yet written.
    suppressed: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            audited: 1,
            suppressed: 0,
        }
    }
}

/// The refusals of the federation port, by caller and reason.
#[derive(Debug)]
pub struct RefusalLog {
    store: Store,
    windows: Mutex<HashMap<(String, &'static str), Window>>,
}

fn aggregate(actor: &str, reason: &str, count: u64) -> AuditRecord {
    AuditRecord::new(actor, "envelope.refuse.aggregate", "-", "refused").detail(format!(
        "reason={reason} count={count} window_secs={}",
        WINDOW.as_secs()
    ))
}

impl RefusalLog {
    /// Returns an empty log writing to `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            windows: Mutex::default(),
        }
    }

    /// Records a refusal by `actor` for `reason`: audited now (with `record`) when it is the
    /// first in its window, else counted for the window's aggregate entry.
    pub async fn record(
        &self,
        actor: &str,
        reason: &'static str,
        record: AuditRecord,
    ) -> Result<(), StoreError> {
        let closed = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (actor.to_owned(), reason);
            match windows.get_mut(&key) {
                Some(w) if w.opened.elapsed() < WINDOW && w.audited >= EACH => {
                    w.suppressed += 1;
                    return Ok(());
                }
                Some(w) if w.opened.elapsed() < WINDOW => {
                    w.audited += 1;
                    0
                }
                Some(w) => {
                    let closed = w.suppressed;
                    *w = Window::new();
                    closed
                }
                None => {
                    windows.insert(key, Window::new());
                    0
                }
            }
        };
        let actor = actor.to_owned();
        self.store
            .commit::<(), (), _>(move |tx| {
                if closed > 0 {
                    tx.audit(aggregate(&actor, reason, closed))?;
                }
                tx.audit(record.clone())?;
                Ok(())
            })
            .await
            .map_err(TxFail::into_store)?;
        Ok(())
    }

    /// Writes the aggregate entry of every window that has closed (all of them when `all`,
    /// at shutdown).
    pub async fn flush(&self, all: bool) -> Result<(), StoreError> {
        let due: Vec<(String, &'static str, u64)> = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let due = windows
                .iter()
                .filter(|(_, w)| w.suppressed > 0 && (all || w.opened.elapsed() >= WINDOW))
                .map(|((a, r), w)| (a.clone(), *r, w.suppressed))
                .collect();
            windows.retain(|_, w| !all && w.opened.elapsed() < WINDOW);
            due
        };
        if due.is_empty() {
            return Ok(());
        }
        self.store
            .commit::<(), (), _>(move |tx| {
                for (actor, reason, count) in &due {
                    tx.audit(aggregate(actor, reason, *count))?;
                }
                Ok(())
            })
            .await
            .map_err(TxFail::into_store)?;
        Ok(())
    }
}
