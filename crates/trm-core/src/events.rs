//! What changed on a node, for the people who answer requests (`WorkService.WatchEvents`):
//! a record arrived, changed status or was erased, a task opened or closed. An event holds
//! ids, kinds and statuses, never personal data, and says who may see it: the roles that
//! may read its record (a service provider only its own organisation's).

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{
    access,
    exchange::RecordKind,
    ids::{OrgId, Principal, Role},
    tasks::TaskKind,
};

/// How long events are kept: a client that reconnects within it misses nothing.
pub const RETENTION: Duration = Duration::days(7);

/// The most events kept, whatever their age (the oldest go first).
pub const MAX_KEPT: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A record another node sent arrived.
    Arrived,
    /// A record was created here or changed status.
    StatusChanged,
    /// A copy this node held was erased (only its reference is kept).
    Erased,
    TaskOpened,
    TaskClosed,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventRecord {
    Shared(RecordKind),
    Task(TaskKind),
}

impl EventRecord {
    /// Returns the record type as the contract writes it.
    pub fn type_name(self) -> &'static str {
        match self {
            EventRecord::Shared(kind) => kind.info().type_name,
            EventRecord::Task(_) => "task",
        }
    }
}

/// One change, numbered in the order the node made them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event's number: increasing, never reused.
    pub seq: u64,
    pub kind: EventKind,
    pub record: EventRecord,
    /// The record (for a task, the record it waits on).
    pub record_id: uuid::Uuid,
    /// The record's status after the change (for a task, empty).
    pub status: String,
    /// The organisation that looks after the record besides focal points.
    pub organisation: Option<OrgId>,
    pub occurred_at: OffsetDateTime,
}

impl Event {
    /// Returns whether `p` may see the event: whoever may read its record (or answer its
    /// task), a service provider only for its own organisation.
    pub fn seen_by(&self, p: &Principal) -> bool {
        let role_may = match self.record {
            EventRecord::Task(kind) => kind.roles().contains(&p.role),
            EventRecord::Shared(kind) => access::require(p, kind.info().read).is_ok(),
        };
        role_may && (p.role != Role::ServiceProvider || self.organisation.as_ref() == Some(&p.org))
    }
}

/// Returns whether an event that occurred at `at` is past keeping at `now`.
pub fn expired(at: OffsetDateTime, now: OffsetDateTime) -> bool {
    at + RETENTION < now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::tests::p;

    fn event(record: EventRecord, org: Option<&str>) -> Event {
        Event {
            seq: 1,
            kind: EventKind::Arrived,
            record,
            record_id: uuid::Uuid::nil(),
            status: String::new(),
            organisation: org.map(|o| o.parse().unwrap()),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_event_is_seen_by_who_may_read_its_record_and_a_provider_only_its_own() {
        let referral = event(EventRecord::Shared(RecordKind::Referral), Some("sp1"));
        assert!(referral.seen_by(&p(Role::ServiceProvider, "sp1")));
        assert!(!referral.seen_by(&p(Role::ServiceProvider, "sp2")));
        assert!(referral.seen_by(&p(Role::FocalPoint, "fp")));
        assert!(!referral.seen_by(&p(Role::JudicialAuthority, "ja")));
        let unassigned = event(EventRecord::Shared(RecordKind::Referral), None);
        assert!(!unassigned.seen_by(&p(Role::ServiceProvider, "sp1")));
        let alert = event(EventRecord::Shared(RecordKind::SafetyAlert), None);
        assert!(alert.seen_by(&p(Role::JudicialAuthority, "ja")));
        assert!(!alert.seen_by(&p(Role::ServiceProvider, "sp1")));
        let plan = event(EventRecord::Shared(RecordKind::Return), None);
        assert!(plan.seen_by(&p(Role::ImmigrationAuthority, "ia")));
        let task = event(EventRecord::Task(TaskKind::AnswerHearing), None);
        assert!(task.seen_by(&p(Role::JudicialAuthority, "ja")));
        assert!(!task.seen_by(&p(Role::Operator, "op")));
        assert_eq!(task.record.type_name(), "task");
        let t0 = OffsetDateTime::UNIX_EPOCH;
        assert!(!expired(t0, t0 + RETENTION));
        assert!(expired(t0, t0 + RETENTION + Duration::seconds(1)));
    }
}
