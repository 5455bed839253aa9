//! Witness hearings by video-conference under mutual legal assistance (UNTOC art. 18
//! para. 18): `requested -> accepted | declined -> scheduled -> held | cancelled`. The legal
//! basis is the MLA request, not consent; the witness is named only by the pairwise case
//! reference and may decline. Nothing here touches a referral or a return plan: assistance
//! never depends on testimony.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    error::{Guard, GuardError},
    exchange::Side,
    ids::NodeId,
    ids::{HearingId, WitnessRecord},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProtectiveMeasure {
    Anonymity,
    VoiceDistortion,
    ImageDistortion,
    SupportPerson,
    PsychologistPresent,
    NoDefendantVisible,
    ChildFriendlyRoom,
    ClosedSession,
    Interpreter,
}

/// Refuses to hear a child witness without an assigned guardian and a best-interests
/// determination (DOMAIN: children), on the child's record as the witness's node holds it.
pub fn check_child_witness(child: &crate::model::ChildInfo) -> Result<(), GuardError> {
    if !child.is_child {
        return Ok(());
    }
    if !child.guardian_assigned {
        return Err(GuardError::new(
            Guard::Guardian,
            "a child witness is heard only with an assigned guardian",
        ));
    }
    if !child.best_interests_determined {
        return Err(GuardError::new(
            Guard::BestInterests,
            "a child witness is heard only after a best-interests determination",
        ));
    }
    Ok(())
}

/// The measures a hearing of a child witness is held with: those asked for, and a
/// child-friendly room and a support person where they were not. The node that holds the
/// child's case adds them rather than refusing a request without them: a refusal would
/// tell the caller, who reads no case, that the witness is a child before any hearing
/// exists.
pub fn with_child_measures(
    is_child: bool,
    measures: &[ProtectiveMeasure],
) -> Vec<ProtectiveMeasure> {
    let mut out = measures.to_vec();
    if is_child {
        for m in [
            ProtectiveMeasure::ChildFriendlyRoom,
            ProtectiveMeasure::SupportPerson,
        ] {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HearingStatus {
    Requested,
    Accepted,
    Declined,
    Scheduled,
    Held,
    Cancelled,
}

impl HearingStatus {
    /// Returns the status name as used in errors and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            HearingStatus::Requested => "requested",
            HearingStatus::Accepted => "accepted",
            HearingStatus::Declined => "declined",
            HearingStatus::Scheduled => "scheduled",
            HearingStatus::Held => "held",
            HearingStatus::Cancelled => "cancelled",
        }
    }

    /// Returns whether the hearing is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            HearingStatus::Declined | HearingStatus::Held | HearingStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HearingEvent {
    /// Requested country: the witness agrees to be heard.
    Accept,
    /// Requested country: the witness declined, a protection risk, or legal grounds.
    Decline,
    /// Requested country: a time is fixed.
    Schedule,
    /// Either side: the hearing took place.
    Hold,
    /// Either side.
    Cancel,
}

impl HearingEvent {
    /// Returns whether `side` may cause this event: the witness's country (the destination)
    /// accepts, declines and schedules; either side holds or cancels.
    pub fn allowed_for(self, side: Side) -> bool {
        match self {
            HearingEvent::Accept | HearingEvent::Decline | HearingEvent::Schedule => {
                side == Side::Destination
            }
            HearingEvent::Hold | HearingEvent::Cancel => true,
        }
    }

    /// Returns the event an update to `status` announces.
    pub fn leading_to(status: HearingStatus) -> Option<Self> {
        match status {
            HearingStatus::Accepted => Some(HearingEvent::Accept),
            HearingStatus::Declined => Some(HearingEvent::Decline),
            HearingStatus::Scheduled => Some(HearingEvent::Schedule),
            HearingStatus::Held => Some(HearingEvent::Hold),
            HearingStatus::Cancelled => Some(HearingEvent::Cancel),
            HearingStatus::Requested => None,
        }
    }
}

/// Returns the status after `event`, or the `state` guard's refusal naming the current state.
pub fn next(status: HearingStatus, event: HearingEvent) -> Result<HearingStatus, GuardError> {
    use HearingEvent as E;
    use HearingStatus as S;
    let to = match (status, event) {
        (S::Requested, E::Accept) => S::Accepted,
        (S::Requested | S::Accepted, E::Decline) => S::Declined,
        (S::Requested | S::Accepted | S::Scheduled, E::Schedule) => S::Scheduled,
        (S::Scheduled, E::Hold) => S::Held,
        (s, E::Cancel) if !s.is_final() => S::Cancelled,
        _ => {
            return Err(GuardError::new(
                Guard::State,
                format!(
                    "hearing is {}; {:?} is not possible",
                    status.as_str(),
                    event
                ),
            ))
        }
    };
    Ok(to)
}

/// What a local record tells about the witness: the pairwise reference towards the other
/// country, whether a child, and which organisation looks after the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub record: WitnessRecord,
    pub case_ref: Option<String>,
    pub is_child: bool,
    pub organisation: Option<crate::ids::OrgId>,
}

/// A hearing as one node holds it; `hearing_id` is the same on both nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HearingRecord {
    pub hearing_id: HearingId,
    pub requesting_country: NodeId,
    pub witness_country: NodeId,
    pub status: HearingStatus,
    /// Pairwise reference of the witness's case between the two nodes.
    pub case_ref: String,
    /// The local record the reference resolves to (case, referral or return plan).
    pub subject: WitnessRecord,
    pub proceeding_reference: String,
    pub legal_basis: String,
    pub measures: Vec<ProtectiveMeasure>,
    pub language: String,
    pub proposed_times: Vec<OffsetDateTime>,
    pub scheduled_at: Option<OffsetDateTime>,
    pub status_reason: String,
    pub minutes_reference: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What a judicial authority asks for in a hearing request: the terms of the MLA request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HearingTerms {
    pub proceeding_reference: String,
    pub legal_basis: String,
    pub measures: Vec<ProtectiveMeasure>,
    pub language: String,
    pub proposed_times: Vec<OffsetDateTime>,
}

/// Who a new hearing is between and whom it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HearingParties {
    pub hearing_id: HearingId,
    pub requesting_country: NodeId,
    pub witness_country: NodeId,
    /// The pairwise reference of the witness's case between the two countries.
    pub case_ref: String,
    /// The local record the reference resolves to.
    pub subject: WitnessRecord,
}

impl HearingRecord {
    /// A hearing just requested, as each of the two nodes keeps it.
    pub fn requested(parties: HearingParties, terms: HearingTerms, now: OffsetDateTime) -> Self {
        HearingRecord {
            hearing_id: parties.hearing_id,
            requesting_country: parties.requesting_country,
            witness_country: parties.witness_country,
            status: HearingStatus::Requested,
            case_ref: parties.case_ref,
            subject: parties.subject,
            proceeding_reference: terms.proceeding_reference,
            legal_basis: terms.legal_basis,
            measures: terms.measures,
            language: terms.language,
            proposed_times: terms.proposed_times,
            scheduled_at: None,
            status_reason: String::new(),
            minutes_reference: String::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Returns the terms the hearing was requested on.
    pub fn terms(&self) -> HearingTerms {
        HearingTerms {
            proceeding_reference: self.proceeding_reference.clone(),
            legal_basis: self.legal_basis.clone(),
            measures: self.measures.clone(),
            language: self.language.clone(),
            proposed_times: self.proposed_times.clone(),
        }
    }

    /// Returns the message that carries the request to the witness's country.
    pub fn request_message(&self) -> crate::messages::PeerMessage {
        crate::messages::PeerMessage::HearingRequest {
            hearing_id: self.hearing_id,
            terms: self.terms(),
        }
    }
}

/// What a hearing step carries besides its event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HearingStep {
    pub reason: String,
    pub scheduled_at: Option<OffsetDateTime>,
    pub minutes_reference: String,
}

impl HearingRecord {
    /// Applies `event` (a local step, or the other node's announcement of it).
    pub fn apply(&mut self, event: HearingEvent, step: &HearingStep) -> Result<(), GuardError> {
        self.status = next(self.status, event)?;
        if event == HearingEvent::Schedule {
            self.scheduled_at = step.scheduled_at;
        }
        if event == HearingEvent::Hold {
            self.minutes_reference = step.minutes_reference.clone();
        }
        self.status_reason = step.reason.clone();
        self.updated_at = OffsetDateTime::now_utc();
        Ok(())
    }

    /// Returns the other node.
    pub fn peer(&self, me: NodeId) -> NodeId {
        if self.witness_country == me {
            self.requesting_country
        } else {
            self.witness_country
        }
    }
}

impl crate::exchange::SharedRecord for HearingRecord {
    type Id = HearingId;
    type Status = HearingStatus;
    type Event = HearingEvent;
    type Step = HearingStep;
    const KIND: crate::exchange::RecordKind = crate::exchange::RecordKind::Hearing;

    crate::exchange::record_accessors!(hearing_id: HearingId, HearingStatus);

    fn origin(&self) -> NodeId {
        self.requesting_country
    }
    fn destination(&self) -> NodeId {
        self.witness_country
    }
    fn case_ref(&self) -> &str {
        &self.case_ref
    }
    /// A hearing is owned by no organisation: who may act on one is the role's; who looks
    /// after the witness is the subject's owner.
    fn owner(&self) -> Option<&crate::ids::OrgId> {
        None
    }
    fn may_take(event: HearingEvent, side: Side) -> bool {
        event.allowed_for(side)
    }
    fn event_to(status: HearingStatus, side: Side) -> Option<HearingEvent> {
        HearingEvent::leading_to(status).filter(|e| e.allowed_for(side))
    }
    fn apply(&mut self, event: HearingEvent, step: &HearingStep) -> Result<(), GuardError> {
        HearingRecord::apply(self, event, step)
    }
    fn update_message(&self, step: &HearingStep) -> crate::messages::PeerMessage {
        crate::messages::PeerMessage::HearingUpdate {
            hearing_id: self.hearing_id,
            status: self.status,
            step: step.clone(),
        }
    }
    fn topic(&self) -> crate::messages::Topic {
        crate::messages::Topic::Hearing(self.hearing_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::SharedRecord;
    use HearingEvent as E;
    use HearingStatus as S;

    #[test]
    fn a_child_witness_is_heard_with_a_child_friendly_room_and_a_support_person() {
        use ProtectiveMeasure as M;
        assert_eq!(with_child_measures(false, &[M::Anonymity]), [M::Anonymity]);
        assert_eq!(
            with_child_measures(true, &[M::SupportPerson, M::Anonymity]),
            [M::SupportPerson, M::Anonymity, M::ChildFriendlyRoom]
        );
        let all = with_child_measures(true, &[]);
        assert_eq!(all, [M::ChildFriendlyRoom, M::SupportPerson]);
    }

    #[test]
    fn paths_and_final_states() {
        let mut s = S::Requested;
        for e in [E::Accept, E::Schedule, E::Schedule, E::Hold] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, S::Held);
        assert_eq!(next(S::Requested, E::Schedule), Ok(S::Scheduled));
        for s in [S::Declined, S::Held, S::Cancelled] {
            for e in [E::Accept, E::Decline, E::Schedule, E::Hold, E::Cancel] {
                assert_eq!(next(s, e).unwrap_err().guard, Guard::State);
            }
        }
        assert!(next(S::Accepted, E::Hold).is_err());
        assert!(!E::Accept.allowed_for(Side::Origin));
        assert!(E::Cancel.allowed_for(Side::Origin) && E::Cancel.allowed_for(Side::Destination));
    }
    const STATUSES: [HearingStatus; 6] = [
        S::Requested,
        S::Accepted,
        S::Declined,
        S::Scheduled,
        S::Held,
        S::Cancelled,
    ];
    const EVENTS: [HearingEvent; 5] = [E::Accept, E::Decline, E::Schedule, E::Hold, E::Cancel];

    #[test]
    fn status_names_are_the_ones_errors_and_audit_entries_use() {
        let names: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "requested",
                "accepted",
                "declined",
                "scheduled",
                "held",
                "cancelled"
            ]
        );
        let err = next(S::Held, E::Accept).unwrap_err();
        assert_eq!(err.reason, "hearing is held; Accept is not possible");
    }

    /// The witness may decline until a time is fixed; either side may cancel an open hearing.
    #[test]
    fn a_hearing_is_declined_before_it_is_scheduled_and_cancelled_while_open() {
        let outcome = |s, e| next(s, e).map_err(|err| err.guard);
        assert_eq!(outcome(S::Requested, E::Decline), Ok(S::Declined));
        assert_eq!(outcome(S::Accepted, E::Decline), Ok(S::Declined));
        assert_eq!(outcome(S::Scheduled, E::Decline), Err(Guard::State));
        for open in [S::Requested, S::Accepted, S::Scheduled] {
            assert!(!open.is_final(), "{open:?}");
            assert_eq!(outcome(open, E::Cancel), Ok(S::Cancelled), "{open:?}");
        }
        for over in [S::Declined, S::Held, S::Cancelled] {
            assert!(over.is_final(), "{over:?}");
        }
    }

    /// The other node's update announcing a status is read back as exactly the event that
    /// made it (one event leads to each status; none to `requested`).
    #[test]
    fn an_announced_status_is_read_back_as_the_event_that_made_it() {
        for from in STATUSES {
            for to in STATUSES {
                let made_by: Vec<HearingEvent> = EVENTS
                    .into_iter()
                    .filter(|e| next(from, *e).ok() == Some(to))
                    .collect();
                match made_by.as_slice() {
                    [] => {}
                    [e] => assert_eq!(HearingEvent::leading_to(to), Some(*e), "{from:?} -> {to:?}"),
                    many => panic!("{from:?} -> {to:?} by {many:?}"),
                }
            }
        }
        assert_eq!(HearingEvent::leading_to(S::Requested), None);
    }

    fn hearing() -> HearingRecord {
        let now = OffsetDateTime::UNIX_EPOCH;
        HearingRecord {
            hearing_id: HearingId::new(),
            requesting_country: "AT".parse().unwrap(),
            witness_country: "RO".parse().unwrap(),
            status: S::Requested,
            case_ref: "ref-1".into(),
            subject: WitnessRecord::Case(crate::ids::CaseId::new()),
            proceeding_reference: "St 12/26".into(),
            legal_basis: "UNTOC art. 18".into(),
            measures: vec![],
            language: "ro".into(),
            proposed_times: vec![],
            scheduled_at: None,
            status_reason: String::new(),
            minutes_reference: String::new(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn each_step_keeps_what_goes_with_it_and_a_refused_one_changes_nothing() {
        let at = time::macros::datetime!(2030-03-01 10:00 UTC);
        let mut h = hearing();
        h.apply(
            E::Accept,
            &HearingStep {
                reason: "witness agrees".into(),
                scheduled_at: Some(at),
                minutes_reference: "M-0".into(),
            },
        )
        .unwrap();
        assert_eq!(h.status, S::Accepted);
        assert_eq!(h.status_reason, "witness agrees");
        assert_eq!(h.scheduled_at, None, "only scheduling fixes a time");
        assert_eq!(h.minutes_reference, "", "only a held hearing has minutes");
        assert!(h.updated_at > h.created_at);

        let schedule = HearingStep {
            scheduled_at: Some(at),
            minutes_reference: "M-0".into(),
            ..Default::default()
        };
        h.apply(E::Schedule, &schedule).unwrap();
        assert_eq!(h.scheduled_at, Some(at));
        assert_eq!(h.minutes_reference, "");

        let held = HearingStep {
            minutes_reference: "M-17".into(),
            ..Default::default()
        };
        h.apply(E::Hold, &held).unwrap();
        assert_eq!(
            (h.status, h.scheduled_at, h.minutes_reference.as_str()),
            (S::Held, Some(at), "M-17")
        );

        let before = h.clone();
        let err = h.apply(E::Cancel, &HearingStep::default()).unwrap_err();
        assert_eq!(err.guard, Guard::State);
        assert_eq!(h, before);
    }

    #[test]
    fn the_peer_is_the_other_country_from_either_side() {
        let h = hearing();
        let (at, ro) = (h.requesting_country, h.witness_country);
        assert_eq!((h.peer(at), h.peer(ro)), (ro, at));
        assert_eq!((h.side(at), h.side(ro)), (Side::Origin, Side::Destination));
    }
}
