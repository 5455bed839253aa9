//! The work queue: what waits for an answer on a node. A task opens in the transaction
//! that makes something due (an arrival, a status recorded) and closes in the one that
//! answers it; it holds ids and times only, never personal data. Who sees a task is the
//! role table's: the roles that may answer it (a service provider only its organisation's).

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ids::{OrgId, Principal, Role, TaskId};

/// What a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskKind {
    AnswerReferral,
    AnswerReturn,
    AnswerHearing,
    AcknowledgeSafetyAlert,
    AttestVictimStatus,
    ResidenceExpiring,
    ReturnOfWitnessProposed,
    PossibleDuplicate,
    DeliveryFailed,
}

impl TaskKind {
    /// Every kind.
    pub const ALL: [TaskKind; 9] = [
        TaskKind::AnswerReferral,
        TaskKind::AnswerReturn,
        TaskKind::AnswerHearing,
        TaskKind::AcknowledgeSafetyAlert,
        TaskKind::AttestVictimStatus,
        TaskKind::ResidenceExpiring,
        TaskKind::ReturnOfWitnessProposed,
        TaskKind::PossibleDuplicate,
        TaskKind::DeliveryFailed,
    ];

    /// Returns the kind's name, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::AnswerReferral => "answer_referral",
            TaskKind::AnswerReturn => "answer_return",
            TaskKind::AnswerHearing => "answer_hearing",
            TaskKind::AcknowledgeSafetyAlert => "acknowledge_safety_alert",
            TaskKind::AttestVictimStatus => "attest_victim_status",
            TaskKind::ResidenceExpiring => "residence_expiring",
            TaskKind::ReturnOfWitnessProposed => "return_of_witness_proposed",
            TaskKind::PossibleDuplicate => "possible_duplicate",
            TaskKind::DeliveryFailed => "delivery_failed",
        }
    }

    /// Returns the kind's one-byte tag in keys.
    pub fn tag(self) -> u8 {
        // The position in ALL: stable, as kinds are only ever added at the end.
        Self::ALL
            .iter()
            .position(|k| *k == self)
            .map_or(0, |i| i as u8)
    }

    /// Returns the roles that may answer it.
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            TaskKind::AnswerReferral
            | TaskKind::AnswerReturn
            | TaskKind::PossibleDuplicate
            | TaskKind::DeliveryFailed => &[FocalPoint],
            TaskKind::AnswerHearing
            | TaskKind::AcknowledgeSafetyAlert
            | TaskKind::AttestVictimStatus => &[FocalPoint, JudicialAuthority],
            TaskKind::ReturnOfWitnessProposed => &[JudicialAuthority],
            TaskKind::ResidenceExpiring => &[FocalPoint, ImmigrationAuthority, ServiceProvider],
        }
    }
}

/// One task of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: TaskId,
    pub kind: TaskKind,
    /// The record to answer (a referral, plan or hearing; a case for residence and
    /// duplicates).
    pub record_id: uuid::Uuid,
    /// The organisation that looks after the record, when a service provider may answer.
    pub organisation: Option<OrgId>,
    pub due_at: OffsetDateTime,
    /// Before this it is not in the queue (a permit's expiry shows `residence_notice_days`
    /// before it).
    pub shows_from: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

impl Task {
    /// A task of `kind` on `record_id`, due `within` from `now`, in the queue at once.
    pub fn due_in(
        kind: TaskKind,
        record_id: uuid::Uuid,
        within: Duration,
        now: OffsetDateTime,
    ) -> Self {
        Task {
            task_id: TaskId::new(),
            kind,
            record_id,
            organisation: None,
            due_at: now + within,
            shows_from: now,
            created_at: now,
        }
    }

    /// Returns whether `p` may see it (and answer it).
    pub fn seen_by(&self, p: &Principal) -> bool {
        self.kind.roles().contains(&p.role)
            && (p.role != Role::ServiceProvider || self.organisation.as_ref() == Some(&p.org))
    }

    /// Returns whether it is in the queue at `now`.
    pub fn shows(&self, now: OffsetDateTime) -> bool {
        self.shows_from <= now
    }

    /// Returns whether it is past due at `now`.
    pub fn overdue(&self, now: OffsetDateTime) -> bool {
        self.due_at < now
    }
}

/// How long a node has to answer an incoming request, by kind (`[tasks]` of node.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueTimes {
    pub answer_referral: Duration,
    /// For a referral whose needs are urgent or an emergency.
    pub answer_urgent_referral: Duration,
    pub answer_return: Duration,
    pub answer_hearing: Duration,
}

impl Default for DueTimes {
    fn default() -> Self {
        DueTimes {
            answer_referral: due::ANSWER_REFERRAL,
            answer_urgent_referral: due::ANSWER_URGENT_REFERRAL,
            answer_return: due::ANSWER_RETURN,
            answer_hearing: due::ANSWER_HEARING,
        }
    }
}

/// The default due times (and those of tasks no setting names).
pub mod due {
    use time::Duration;

    /// An incoming referral (48 hours; 4 for urgent or emergency needs).
    pub const ANSWER_REFERRAL: Duration = Duration::hours(48);
    pub const ANSWER_URGENT_REFERRAL: Duration = Duration::hours(4);
    /// An incoming return request.
    pub const ANSWER_RETURN: Duration = Duration::hours(72);
    /// An incoming hearing request.
    pub const ANSWER_HEARING: Duration = Duration::days(7);
    /// An envelope that became a dead letter (to send again, or to give up on).
    pub const DELIVERY_FAILED: Duration = Duration::hours(24);
    /// A safety alert received (a child's: as an urgent referral).
    pub const ACKNOWLEDGE_SAFETY_ALERT: Duration = Duration::hours(24);
    /// A possible second case of one person, or the return of a witness proposed.
    pub const REVIEW: Duration = Duration::days(7);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_seen_by_the_roles_that_answer_it_and_a_provider_only_for_its_organisation() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let p = |role, org: &str| Principal {
            role,
            org: org.parse().unwrap(),
        };
        let mut t = Task::due_in(
            TaskKind::ResidenceExpiring,
            uuid::Uuid::nil(),
            Duration::days(1),
            now,
        );
        t.organisation = Some("sp1".parse().unwrap());
        assert!(t.seen_by(&p(Role::ServiceProvider, "sp1")));
        assert!(!t.seen_by(&p(Role::ServiceProvider, "sp2")));
        assert!(t.seen_by(&p(Role::FocalPoint, "fp")));
        assert!(!t.seen_by(&p(Role::JudicialAuthority, "ja")));
        let r = Task::due_in(
            TaskKind::AnswerReferral,
            uuid::Uuid::nil(),
            Duration::hours(48),
            now,
        );
        assert!(!r.seen_by(&p(Role::ServiceProvider, "sp1")));
        assert!(r.overdue(now + Duration::hours(49)) && !r.overdue(now + Duration::hours(47)));
        let tags: std::collections::BTreeSet<u8> = TaskKind::ALL.iter().map(|k| k.tag()).collect();
        assert_eq!(tags.len(), TaskKind::ALL.len());
    }
}
