//! The event log of `WorkService.WatchEvents`: what changed on the node, numbered in the
//! order of the transactions that made the changes (`ev/`, by number), written in those
//! transactions, and, per shared record, the status the last event named (`es/`), so that a
//! write that changes nothing announces nothing. Ids, kinds and statuses only: nothing here
//! is personal data. Kept [`RETENTION`](trm_core::events::RETENTION), at most
//! [`MAX_KEPT`](trm_core::events::MAX_KEPT) events.

use std::sync::atomic::Ordering;

use time::OffsetDateTime;
use trm_core::{
    events::{expired, Event, EventKind, EventRecord, MAX_KEPT},
    exchange::RecordKind,
    ids::OrgId,
};

use crate::{repo::layout, store::Store, subject::Subject, tx::decode, tx::Tx, Result};

/// How far a restore moves the numbering of events on: past every number the node may have
/// given between the backup and the restore (a client may have seen them), so that no new
/// event takes a number a client already holds.
pub const RESTORE_GAP: u64 = 1 << 32;

/// Every how many events the oldest past keeping are cleared away, at most as many.
const PRUNE_EVERY: u64 = 32;

/// The meta counter of the last event's number.
pub(crate) const SEQ: &str = "event_seq";

fn seq_of(key: &[u8]) -> Option<u64> {
    let prefix = layout::events();
    let b: [u8; 8] = key.get(prefix.len()..)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl Tx<'_> {
    /// After a restore: numbers the next events past [`RESTORE_GAP`], and remembers the
    /// numbers skipped, in which no client may resume (what it saw there was undone).
    pub(crate) fn skip_event_numbers_after_restore(&mut self) -> Result<()> {
        let now = self.counter(SEQ)?;
        let next = now.saturating_add(RESTORE_GAP);
        self.set_counter(SEQ, next)?;
        let gaps_key = layout::meta("event_gaps");
        let mut gaps: Vec<(u64, u64)> = self.get_json("event gaps", &gaps_key)?.unwrap_or_default();
        gaps.push((now, next));
        self.put_json(&gaps_key, &gaps)
    }

    /// Appends an event (`kind` of `record` `id`, now in `status`), and now and then clears
    /// away the oldest past keeping; returns the event's number.
    pub fn record_event(
        &mut self,
        kind: EventKind,
        record: EventRecord,
        id: uuid::Uuid,
        status: &str,
        organisation: Option<&OrgId>,
    ) -> Result<u64> {
        let seq = self.next_counter(SEQ)?;
        let now = OffsetDateTime::now_utc();
        let event = Event {
            seq,
            kind,
            record,
            record_id: id,
            status: status.to_owned(),
            organisation: organisation.cloned(),
            occurred_at: now,
        };
        self.put_json(&layout::event(seq), &event)?;
        self.fx.event_seq = self.fx.event_seq.max(Some(seq));
        // Every so many events, the oldest past keeping go (a scan per event would cost
        // the serial writer more than the event itself).
        if seq % PRUNE_EVERY != 0 {
            return Ok(seq);
        }
        for (key, value) in self.scan_raw(&layout::events(), None, PRUNE_EVERY as usize)? {
            let old: Event = decode("event", &value)?;
            let too_many = seq.saturating_sub(old.seq) >= MAX_KEPT;
            if !(too_many || expired(old.occurred_at, now)) {
                break;
            }
            self.delete(&key)?;
        }
        Ok(seq)
    }

    /// Announces a shared record just written (`tag`, `id`) in `status`: its arrival when
    /// it is new here and came from another node (`incoming`), a status change otherwise;
    /// nothing when its status is the one last announced.
    pub(crate) fn record_written(
        &mut self,
        record: EventRecord,
        (tag, id): (u8, &[u8; 16]),
        status: &str,
        incoming: bool,
        organisation: Option<&OrgId>,
    ) -> Result<()> {
        let state = layout::event_state(tag, id);
        let before = self.get_raw(&state)?;
        if before.as_deref() == Some(status.as_bytes()) {
            return Ok(());
        }
        let kind = match (before.is_none(), incoming) {
            (true, true) => EventKind::Arrived,
            _ => EventKind::StatusChanged,
        };
        self.put_raw(&state, status.as_bytes())?;
        let seq = self.record_event(
            kind,
            record,
            uuid::Uuid::from_bytes(*id),
            status,
            organisation,
        )?;
        // The record's timeline keeps the step as long as the record: sealed under the
        // record's own key, so erasing the record erases its timeline too.
        if let EventRecord::Shared(shared) = record {
            let step = Step {
                status: status.to_owned(),
                at: OffsetDateTime::now_utc(),
            };
            let subject = Subject::of_record(shared, id);
            self.put_sealed(&layout::timeline(tag, id, Some(seq)), &subject, &step)?;
        }
        Ok(())
    }
}

/// One step of a shared record's timeline: the status it reached, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub status: String,
    pub at: OffsetDateTime,
}

impl Store {
    /// Returns the timeline of the shared record `id` of `kind`, oldest step first (at
    /// most 200 steps; none once the record is erased).
    pub fn timeline(&self, kind: RecordKind, id: uuid::Uuid) -> Result<Vec<Step>> {
        let bytes = id.as_bytes();
        let subject = Subject::of_record(kind, bytes);
        let mut steps = Vec::new();
        for (key, value) in self.scan_raw(&layout::timeline(kind.tag(), bytes, None), None, 200)? {
            if let Some(plain) = self.open_sealed(&subject, &key, &value)? {
                steps.push(decode("timeline step", &plain)?);
            }
        }
        Ok(steps)
    }

    /// Returns up to `limit` durable events after number `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let durable = if self.engine().committed_is_durable() {
            u64::MAX
        } else {
            self.shared().events_durable.load(Ordering::SeqCst)
        };
        let from = layout::event(after);
        let mut out = Vec::new();
        for (key, value) in self.scan_raw(&layout::events(), Some(&from), limit)? {
            match seq_of(&key) {
                Some(seq) if seq <= durable => out.push(decode("event", &value)?),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Returns the number of the oldest event kept (none: no event is kept) and of the
    /// newest durable one (0: none yet).
    pub fn event_bounds(&self) -> Result<(Option<u64>, u64)> {
        let oldest = self
            .scan_raw(&layout::events(), None, 1)?
            .first()
            .and_then(|(k, _)| seq_of(k));
        let head = if self.engine().committed_is_durable() {
            self.counter(SEQ)?
        } else {
            self.shared().events_durable.load(Ordering::SeqCst)
        };
        Ok((oldest, head))
    }

    /// Returns the event numbers no client may resume in, each `(after, up_to)`: those a
    /// restore skipped.
    pub fn event_gaps(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .get_json("event gaps", &layout::meta("event_gaps"))?
            .unwrap_or_default())
    }

    /// Returns a receiver that changes each time events become durable on this replica.
    pub fn event_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().event_changes.subscribe()
    }
}
