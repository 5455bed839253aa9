//! Return planning: safe and preferably voluntary return (UN Protocol art. 8, CoE Convention
//! art. 13 and 16, non-refoulement). The guards a return request must pass, and the plan's
//! state machine: `requested -> reception_confirmed | concern_raised -> scheduled ->
//! travelled -> arrived -> follow_up* -> closed`, and `halted` from any open state. The
//! country of return's copy starts `requested` ([`ReturnRecord::received`]); an erased copy
//! is halted if still open ([`ReturnRecord::erase_copy`]).

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

pub use crate::exchange::Side;
use crate::{
    error::{Guard, GuardError},
    exchange::Erasure,
    ids::{AssessmentId, CaseId, ConsentId, NodeId, OrgId, ReturnId},
    model::{CaseRecord, DisclosedCase},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

/// One risk assessment of a return; the newest one counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskAssessment {
    pub assessment_id: AssessmentId,
    pub case_id: CaseId,
    pub level: RiskLevel,
    pub non_refoulement_concern: bool,
    pub retrafficking_risk: bool,
    pub family_at_risk: bool,
    /// Short descriptions of the factors considered; stay on this node.
    pub factors: Vec<String>,
    pub recorded_at: OffsetDateTime,
}

/// The victim's recorded decision on return; the newest one counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnDecision {
    pub case_id: CaseId,
    pub voluntary: bool,
    pub informed: bool,
    pub reflection_period_waived: bool,
    pub recorded_at: OffsetDateTime,
}

/// Refuses a return of a person whose residence status protects them from it: asylum
/// pending, refugee or subsidiary protection (UNHCR guidance, paper §60). Recording such a
/// status halts every return of the case not yet under way.
pub fn check_residence(case: &CaseRecord) -> Result<(), GuardError> {
    match &case.residence {
        Some(r) if r.status.trips_non_refoulement() => Err(GuardError::new(
            Guard::NonRefoulement,
            format!("the person's residence status is {}", r.status.as_str()),
        )),
        _ => Ok(()),
    }
}

/// Refuses a return while `risk`, the latest risk assessment, finds a risk: a
/// non-refoulement concern, a re-trafficking risk, the family at risk, or HIGH. A return
/// plan still open when such an assessment is recorded is halted.
pub fn check_risk(risk: &RiskAssessment) -> Result<(), GuardError> {
    if risk.non_refoulement_concern {
        return Err(GuardError::new(
            Guard::NonRefoulement,
            "the latest risk assessment raises a non-refoulement concern",
        ));
    }
    if risk.retrafficking_risk {
        return Err(GuardError::new(
            Guard::Risk,
            "the latest risk assessment finds a re-trafficking risk",
        ));
    }
    if risk.family_at_risk {
        return Err(GuardError::new(
            Guard::Risk,
            "the latest risk assessment finds the family at risk",
        ));
    }
    if risk.level == RiskLevel::High {
        return Err(GuardError::new(
            Guard::Risk,
            "the latest risk assessment is HIGH",
        ));
    }
    Ok(())
}

/// Refuses a return on `decision`, the victim's latest decision: none, not informed and
/// voluntary, or recorded before `risk`, the latest risk assessment (the victim decides
/// knowing the latest risk).
pub fn check_decision<'a>(
    decision: Option<&'a ReturnDecision>,
    risk: &RiskAssessment,
) -> Result<&'a ReturnDecision, GuardError> {
    let Some(decision) = decision else {
        return Err(GuardError::new(
            Guard::Decision,
            "the victim's decision on return is not recorded",
        ));
    };
    if !decision.informed || !decision.voluntary {
        return Err(GuardError::new(
            Guard::Decision,
            "the victim's recorded decision is not informed and voluntary",
        ));
    }
    if decision.recorded_at < risk.recorded_at {
        return Err(GuardError::new(
            Guard::Decision,
            "the victim's decision was recorded before the latest risk assessment",
        ));
    }
    Ok(decision)
}

/// One guard of a return, as a checklist shows it: what it asks for, and why it refuses
/// now (`None`: met).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardCheck {
    pub guard: Guard,
    /// What the guard asks for, in words.
    pub asks: &'static str,
    pub refusal: Option<GuardError>,
}

/// The reflection period's guard: over on `today`, or `waived` by the victim.
fn reflection_over(
    case: &CaseRecord,
    reflection_period_days: u32,
    waived: bool,
    today: Date,
) -> Result<(), GuardError> {
    let period_ends = case.reflection_period_ends_on(reflection_period_days);
    if today >= period_ends || waived {
        return Ok(());
    }
    Err(GuardError::new(
        Guard::ReflectionPeriod,
        format!(
            "the reflection period of {reflection_period_days} days ends on {} and was not waived by the victim",
            crate::model::format_date(period_ends)
        ),
    ))
}

/// Checks every guard of a return on the case as it stands, each on its own (a checklist
/// of what is missing), in the order [`check_guards`] refuses them. The consent and safety
/// alerts, which depend on the country of return, are the node's to add.
pub fn guard_checklist(
    case: &CaseRecord,
    risk: Option<&RiskAssessment>,
    decision: Option<&ReturnDecision>,
    reflection_period_days: u32,
    today: Date,
) -> Vec<GuardCheck> {
    let check = |guard, asks, r: Result<(), GuardError>| GuardCheck {
        guard,
        asks,
        refusal: r.err(),
    };
    let assessed = risk
        .ok_or_else(|| GuardError::new(Guard::Risk, "no risk assessment is recorded for the case"));
    let decided = match &assessed {
        Ok(risk) => check_decision(decision, risk).map(|_| ()),
        Err(_) => Err(GuardError::new(
            Guard::Decision,
            "the victim's decision counts only once a risk assessment precedes it",
        )),
    };
    let waived = decided.is_ok() && decision.is_some_and(|d| d.reflection_period_waived);
    let reflection = reflection_over(case, reflection_period_days, waived, today);
    let child = |met: bool, guard, why: &str| match case.child.is_child && !met {
        true => Err(GuardError::new(guard, why)),
        false => Ok(()),
    };
    vec![
        check(
            Guard::Risk,
            "a risk assessment of the case",
            assessed.as_ref().map(|_| ()).map_err(Clone::clone),
        ),
        check(
            Guard::NonRefoulement,
            "no protection status (asylum pending, refugee, subsidiary protection)",
            check_residence(case),
        ),
        check(
            Guard::Risk,
            "no non-refoulement, re-trafficking or high risk found",
            assessed.as_ref().map_or(Ok(()), |r| check_risk(r)),
        ),
        check(
            Guard::Decision,
            "the victim's informed, voluntary decision, after the latest assessment",
            decided,
        ),
        check(
            Guard::ReflectionPeriod,
            "the reflection period over, or waived by the victim",
            reflection,
        ),
        check(
            Guard::BestInterests,
            "for a child: a best-interests determination",
            child(
                case.child.best_interests_determined,
                Guard::BestInterests,
                "a child's return needs a best-interests determination",
            ),
        ),
        check(
            Guard::Guardian,
            "for a child: an assigned guardian",
            child(
                case.child.guardian_assigned,
                Guard::Guardian,
                "a child's return needs an assigned guardian",
            ),
        ),
    ]
}

/// Checks every guard of a return, when it is requested and again at each step until
/// departure; the first refusal names its guard. The consent guard is checked by the
/// disclosure itself.
pub fn check_guards(
    case: &CaseRecord,
    risk: Option<&RiskAssessment>,
    decision: Option<&ReturnDecision>,
    reflection_period_days: u32,
    today: Date,
) -> Result<(), GuardError> {
    match guard_checklist(case, risk, decision, reflection_period_days, today)
        .into_iter()
        .find_map(|c| c.refusal)
    {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReturnStatus {
    Proposed,
    Requested,
    ReceptionConfirmed,
    ConcernRaised,
    Scheduled,
    Travelled,
    Arrived,
    FollowUp,
    Closed,
    Halted,
}

impl ReturnStatus {
    /// Returns the status name as used in errors and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnStatus::Proposed => "proposed",
            ReturnStatus::Requested => "requested",
            ReturnStatus::ReceptionConfirmed => "reception_confirmed",
            ReturnStatus::ConcernRaised => "concern_raised",
            ReturnStatus::Scheduled => "scheduled",
            ReturnStatus::Travelled => "travelled",
            ReturnStatus::Arrived => "arrived",
            ReturnStatus::FollowUp => "follow_up",
            ReturnStatus::Closed => "closed",
            ReturnStatus::Halted => "halted",
        }
    }

    /// Returns whether the plan is over.
    pub fn is_final(self) -> bool {
        matches!(self, ReturnStatus::Closed | ReturnStatus::Halted)
    }

    /// Returns whether the person has not left yet: the plan is open and not travelled.
    /// The guards of a return hold until then.
    pub fn before_departure(self) -> bool {
        !self.is_final()
            && !matches!(
                self,
                ReturnStatus::Travelled | ReturnStatus::Arrived | ReturnStatus::FollowUp
            )
    }
}

/// What happens to a plan, and which side may make it happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReturnEvent {
    /// Country of return: who receives the person, where and when.
    ConfirmReception,
    /// Country of return: the plan stops on both sides until the concern is resolved.
    RaiseConcern,
    /// Country of return: the concern is resolved; the plan waits for reception again.
    ResolveConcern,
    /// Requesting country (where the victim is).
    Schedule,
    /// Requesting country.
    Travel,
    /// Country of return.
    Arrive,
    /// Country of return: reintegration monitoring.
    FollowUp,
    /// Either side, with a reason.
    Close,
    /// Either side, with a reason.
    Halt,
}

impl ReturnEvent {
    /// Returns whether `side` may cause this event.
    pub fn allowed_for(self, side: Side) -> bool {
        use ReturnEvent as E;
        match self {
            E::ConfirmReception | E::RaiseConcern | E::ResolveConcern | E::Arrive | E::FollowUp => {
                side == Side::Destination
            }
            E::Schedule | E::Travel => side == Side::Origin,
            E::Close | E::Halt => true,
        }
    }

    /// Returns the event that leads to `status` when announced by `side`, if any. Whether
    /// it may happen in the plan's present state is [`next`]'s to say (a plan is requested
    /// again only once its concern is resolved).
    pub fn leading_to(status: ReturnStatus, side: Side) -> Option<Self> {
        use ReturnEvent as E;
        use ReturnStatus as S;
        let event = match status {
            S::ReceptionConfirmed => E::ConfirmReception,
            S::ConcernRaised => E::RaiseConcern,
            S::Requested => E::ResolveConcern,
            S::Scheduled => E::Schedule,
            S::Travelled => E::Travel,
            S::Arrived => E::Arrive,
            S::FollowUp => E::FollowUp,
            S::Closed => E::Close,
            S::Halted => E::Halt,
            _ => return None,
        };
        event.allowed_for(side).then_some(event)
    }
}

/// Returns the status after `event`, or the `state` guard's refusal naming the current state.
pub fn next(status: ReturnStatus, event: ReturnEvent) -> Result<ReturnStatus, GuardError> {
    use ReturnEvent as E;
    use ReturnStatus as S;
    let to = match (status, event) {
        (S::Requested, E::ConfirmReception) => S::ReceptionConfirmed,
        (S::Requested | S::ReceptionConfirmed | S::Scheduled, E::RaiseConcern) => S::ConcernRaised,
        (S::ConcernRaised, E::ResolveConcern) => S::Requested,
        (S::ReceptionConfirmed | S::Scheduled, E::Schedule) => S::Scheduled,
        (S::Scheduled, E::Travel) => S::Travelled,
        (S::Travelled, E::Arrive) => S::Arrived,
        (S::Arrived | S::FollowUp, E::FollowUp) => S::FollowUp,
        (S::Arrived | S::FollowUp, E::Close) => S::Closed,
        (s, E::Halt) if !s.is_final() => S::Halted,
        _ => {
            return Err(GuardError::new(
                Guard::State,
                format!(
                    "return plan is {}; {:?} is not possible",
                    status.as_str(),
                    event
                ),
            ))
        }
    };
    Ok(to)
}

/// A follow-up record (reintegration monitoring).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUpRecord {
    pub recorded_at: OffsetDateTime,
    pub notes: String,
}

/// A return plan as one node holds it; `return_id` is the same on both nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRecord {
    pub return_id: ReturnId,
    /// The requesting node (where the victim is).
    pub origin: NodeId,
    /// The country of return.
    pub destination: NodeId,
    pub status: ReturnStatus,
    pub disclosed: DisclosedCase,
    pub hearing_pending: bool,
    pub compensation_pending: bool,
    /// Requesting side only.
    pub case_id: Option<CaseId>,
    /// Requesting side: the case's organisation.
    pub organisation: Option<OrgId>,
    pub status_reason: String,
    pub reception_details: String,
    pub travel_at: Option<OffsetDateTime>,
    pub travel_details: String,
    pub follow_ups: Vec<FollowUpRecord>,
    pub consent_ids: Vec<ConsentId>,
    /// Requesting side only: where the erasure of the other node's copy stands.
    #[serde(default)]
    pub erasure: Erasure,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What a step of a plan carries besides its event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepDetails {
    pub reason: String,
    pub details: String,
    pub travel_at: Option<OffsetDateTime>,
}

impl ReturnRecord {
    /// Applies `event` (a local step, or the other node's announcement of it): the new
    /// status, and the details that go with it. A plan keeps at most
    /// [`crate::limits::MAX_ITEMS`] follow-ups, whoever adds them.
    pub fn apply(&mut self, event: ReturnEvent, step: &StepDetails) -> Result<(), GuardError> {
        if event == ReturnEvent::FollowUp && self.follow_ups.len() >= crate::limits::MAX_ITEMS {
            return Err(GuardError::new(
                Guard::State,
                format!(
                    "the plan already holds {} follow-ups, the most one plan keeps",
                    crate::limits::MAX_ITEMS
                ),
            ));
        }
        self.status = next(self.status, event)?;
        let now = OffsetDateTime::now_utc();
        match event {
            ReturnEvent::ConfirmReception => self.reception_details = step.details.clone(),
            ReturnEvent::Schedule => {
                self.travel_at = step.travel_at;
                self.travel_details = step.details.clone();
            }
            ReturnEvent::FollowUp => self.follow_ups.push(FollowUpRecord {
                recorded_at: now,
                notes: step.details.clone(),
            }),
            ReturnEvent::RaiseConcern | ReturnEvent::ResolveConcern | ReturnEvent::Arrive
                if !step.details.is_empty() =>
            {
                self.status_reason = step.details.clone();
            }
            _ => {}
        }
        if !step.reason.is_empty() {
            self.status_reason = step.reason.clone();
        }
        self.updated_at = now;
        Ok(())
    }

    /// Returns this node's side of the plan.
    pub fn side(&self, me: NodeId) -> Side {
        Side::of(self.origin, me)
    }

    /// Returns the country of return's copy of a plan requested by `origin`, as it arrived.
    pub fn received(
        return_id: ReturnId,
        origin: NodeId,
        destination: NodeId,
        disclosed: DisclosedCase,
        hearing_pending: bool,
        compensation_pending: bool,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            return_id,
            origin,
            destination,
            status: ReturnStatus::Requested,
            disclosed,
            hearing_pending,
            compensation_pending,
            case_id: None,
            organisation: None,
            status_reason: String::new(),
            reception_details: String::new(),
            travel_at: None,
            travel_details: String::new(),
            follow_ups: vec![],
            consent_ids: vec![],
            erasure: Erasure::NotRequested,
            created_at: now,
            updated_at: now,
        }
    }

    /// At the requesting node: asks for the country of return's copy to be erased (an open
    /// plan is halted); with `erase_own`, this node's record of what it sent keeps only the
    /// pairwise reference too. Returns `false` when erasure was already requested.
    pub fn request_erasure(&mut self, reason: &str, erase_own: bool, now: OffsetDateTime) -> bool {
        // Erasing this node's record too holds even when the other copy's erasure was
        // asked for before (a consent withdrawn, then the whole case erased).
        if erase_own {
            self.disclosed = self.disclosed.tombstone();
            self.reception_details.clear();
            self.travel_details.clear();
            self.follow_ups.clear();
        }
        if self.erasure.requested() {
            return false;
        }
        if let Ok(halted) = next(self.status, ReturnEvent::Halt) {
            self.status = halted;
        }
        self.status_reason = reason.to_owned();
        self.erasure = Erasure::Requested;
        self.updated_at = now;
        true
    }

    /// Erases the country of return's copy on the requesting node's request: only the
    /// pairwise reference is kept, and an open plan is halted.
    pub fn erase_copy(&mut self, reason: &str, now: OffsetDateTime) {
        self.disclosed = self.disclosed.tombstone();
        self.reception_details.clear();
        self.travel_details.clear();
        self.follow_ups.clear();
        if let Ok(halted) = next(self.status, ReturnEvent::Halt) {
            self.status = halted;
        }
        self.status_reason = reason.to_owned();
        self.updated_at = now;
    }
}

impl crate::exchange::SharedRecord for ReturnRecord {
    type Id = ReturnId;
    type Status = ReturnStatus;
    type Event = ReturnEvent;
    type Step = StepDetails;
    const KIND: crate::exchange::RecordKind = crate::exchange::RecordKind::Return;

    crate::exchange::record_accessors!(return_id: ReturnId, ReturnStatus);

    crate::exchange::disclosed_record_accessors!(ReturnEvent, ReturnStatus);
    fn apply(&mut self, event: ReturnEvent, step: &StepDetails) -> Result<(), GuardError> {
        ReturnRecord::apply(self, event, step)
    }
    /// The person's departure is a fact that stands over a concern the country of return
    /// raised before it knew of it, and the concern stays with the plan as its reason on
    /// both nodes.
    fn settle_crossing(&mut self, event: ReturnEvent, step: &StepDetails) -> bool {
        let concern = if step.details.is_empty() {
            &step.reason
        } else {
            &step.details
        };
        match (self.status, event) {
            // At the country of return, which raised the concern: the person left.
            (ReturnStatus::ConcernRaised, ReturnEvent::Travel) => {
                self.status = ReturnStatus::Travelled;
            }
            // At the requesting node, which recorded the travel: the concern is noted.
            (ReturnStatus::Travelled, ReturnEvent::RaiseConcern) => {
                self.status_reason =
                    format!("concern raised before the departure was known: {concern}");
            }
            _ => return false,
        }
        self.updated_at = OffsetDateTime::now_utc();
        true
    }
    fn update_message(&self, step: &StepDetails) -> crate::messages::PeerMessage {
        crate::messages::PeerMessage::ReturnUpdate {
            return_id: self.return_id,
            status: self.status,
            step: step.clone(),
        }
    }
    fn topic(&self) -> crate::messages::Topic {
        crate::messages::Topic::Return(self.return_id)
    }
}

// A plan's copy is used until the person departs (a plan halted for an asylum claim, or
// under way, gets nothing more).
crate::exchange::erasable_record!(ReturnRecord, crate::model::Purpose::ReturnPlanning, |r| r
    .status
    .before_departure());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::SharedRecord;
    use crate::model::*;
    use time::macros::{date, datetime};
    use time::Duration;
    use ReturnEvent as E;
    use ReturnStatus as S;

    fn case(identified_on: Date, child: ChildInfo) -> CaseRecord {
        CaseRecord {
            case_id: CaseId::from_uuid(uuid::Uuid::nil()),
            child,
            created_at: datetime!(2026-01-01 0:00 UTC),
            ..crate::model::tests::a_case(identified_on)
        }
    }

    fn risk(level: RiskLevel, nr: bool, rt: bool, fam: bool) -> RiskAssessment {
        RiskAssessment {
            assessment_id: AssessmentId::from_uuid(uuid::Uuid::nil()),
            case_id: CaseId::from_uuid(uuid::Uuid::nil()),
            level,
            non_refoulement_concern: nr,
            retrafficking_risk: rt,
            family_at_risk: fam,
            factors: vec![],
            recorded_at: datetime!(2026-01-01 0:00 UTC),
        }
    }

    fn decision(voluntary: bool, informed: bool, waived: bool) -> ReturnDecision {
        ReturnDecision {
            case_id: CaseId::from_uuid(uuid::Uuid::nil()),
            voluntary,
            informed,
            reflection_period_waived: waived,
            recorded_at: datetime!(2026-01-01 0:00 UTC),
        }
    }

    #[test]
    fn erasure_of_a_plan_halts_it_keeps_only_the_reference_and_is_asked_once() {
        let (at, ro): (NodeId, NodeId) = ("AT".parse().unwrap(), "RO".parse().unwrap());
        let now = datetime!(2026-02-01 0:00 UTC);
        let disclosed = DisclosedCase {
            case_ref: "ref-1".into(),
            gender: Some(crate::model::Gender::Female),
            languages: vec!["ro".into()],
            ..Default::default()
        };
        let plan = || {
            ReturnRecord::received(
                ReturnId::from_uuid(uuid::Uuid::nil()),
                at,
                ro,
                disclosed.clone(),
                false,
                false,
                now,
            )
        };
        let mut copy = plan();
        assert_eq!((copy.peer(ro), copy.peer(at)), (at, ro), "the other node");
        copy.reception_details = "met at the airport".into();
        copy.erase_copy("victim's request", now);
        assert_eq!(copy.status, ReturnStatus::Halted, "an open plan is halted");
        assert_eq!(copy.disclosed, disclosed.tombstone());
        assert!(copy.reception_details.is_empty());
        assert_eq!(copy.status_reason, "victim's request");

        let mut sent = plan();
        assert!(
            sent.request_erasure("consent withdrawn", true, now),
            "first request"
        );
        assert_eq!(sent.status, ReturnStatus::Halted);
        assert_eq!(sent.disclosed, disclosed.tombstone(), "its own copy too");
        assert!(sent.erasure.requested());
        assert!(!sent.request_erasure("again", false, now), "asked once");
        assert_eq!(sent.status_reason, "consent withdrawn");

        let mut kept = plan();
        assert!(kept.request_erasure("consent withdrawn", false, now));
        assert_eq!(
            kept.disclosed, disclosed,
            "without erase_own its record is kept"
        );
    }

    /// DOMAIN §54: a reflection period of at least 30 days. Identified on day 0, the victim
    /// has had 30 whole days on day 30: a return may be proposed that day, not the day before.
    /// The checklist shows every guard on its own (what is missing, all at once), and the
    /// guards refuse in its order: the first missing one is what a request is refused with.
    #[test]
    fn the_checklist_shows_each_missing_guard_and_the_first_is_the_refusal() {
        let today = date!(2026 - 03 - 01);
        let child = ChildInfo {
            is_child: true,
            guardian_assigned: true,
            best_interests_determined: false,
        };
        let c = case(today - Duration::days(3), child);
        let missing = |risk: Option<&RiskAssessment>, d: Option<&ReturnDecision>| {
            guard_checklist(&c, risk, d, 30, today)
                .into_iter()
                .filter_map(|g| g.refusal.map(|r| r.guard))
                .collect::<Vec<_>>()
        };
        use Guard as G;
        assert_eq!(
            missing(None, None),
            [G::Risk, G::Decision, G::ReflectionPeriod, G::BestInterests]
        );
        let low = risk(RiskLevel::Low, false, false, false);
        let mut later = decision(true, true, true);
        later.recorded_at = low.recorded_at + Duration::hours(1);
        assert_eq!(missing(Some(&low), Some(&later)), [G::BestInterests]);
        let high = risk(RiskLevel::High, false, false, false);
        assert_eq!(
            missing(Some(&high), Some(&later)),
            [G::Risk, G::BestInterests]
        );
        for (r, d) in [
            (None, None),
            (Some(&low), Some(&later)),
            (Some(&high), None),
        ] {
            let first = guard_checklist(&c, r, d, 30, today)
                .into_iter()
                .find_map(|g| g.refusal);
            assert_eq!(check_guards(&c, r, d, 30, today).err(), first);
        }
        assert_eq!(guard_checklist(&c, None, None, 30, today).len(), 7);
    }

    #[test]
    fn the_reflection_period_ends_after_thirty_whole_days() {
        let identified = date!(2026 - 01 - 01);
        let c = case(identified, ChildInfo::default());
        let low = risk(RiskLevel::Low, false, false, false);
        let yes = decision(true, true, false);
        let on = |day: i64| {
            check_guards(
                &c,
                Some(&low),
                Some(&yes),
                30,
                identified + Duration::days(day),
            )
            .err()
            .map(|e| e.guard)
        };
        assert_eq!(on(29), Some(Guard::ReflectionPeriod), "day 29: 29 days had");
        assert_eq!(on(30), None, "day 30: 30 days had");
        assert_eq!(on(31), None);
    }

    /// A decision counts only if the victim made it knowing the latest risk assessment.
    #[test]
    fn a_decision_recorded_before_the_latest_risk_assessment_does_not_count() {
        let c = case(date!(2026 - 01 - 01), ChildInfo::default());
        let mut later = risk(RiskLevel::Low, false, false, false);
        later.recorded_at = datetime!(2026-02-01 0:00 UTC);
        let before = decision(true, true, false);
        let err = check_guards(&c, Some(&later), Some(&before), 30, date!(2026 - 03 - 01));
        assert_eq!(err.map_err(|e| e.guard), Err(Guard::Decision));
        let mut after = before.clone();
        after.recorded_at = datetime!(2026-02-02 0:00 UTC);
        assert!(check_guards(&c, Some(&later), Some(&after), 30, date!(2026 - 03 - 01)).is_ok());
    }

    #[test]
    fn each_guard_refuses_by_name_and_then_allows() {
        let today = date!(2026 - 03 - 01);
        let long_ago = date!(2026 - 01 - 01);
        let ok_case = case(long_ago, ChildInfo::default());
        let low = risk(RiskLevel::Low, false, false, false);
        let yes = decision(true, true, false);
        let guard = |c: &CaseRecord, r: Option<&RiskAssessment>, d: Option<&ReturnDecision>| {
            check_guards(c, r, d, 30, today).err().map(|e| e.guard)
        };
        assert_eq!(guard(&ok_case, None, Some(&yes)), Some(Guard::Risk));
        assert_eq!(
            guard(
                &ok_case,
                Some(&risk(RiskLevel::Low, true, false, false)),
                Some(&yes)
            ),
            Some(Guard::NonRefoulement)
        );
        assert_eq!(
            guard(
                &ok_case,
                Some(&risk(RiskLevel::Low, false, true, false)),
                Some(&yes)
            ),
            Some(Guard::Risk)
        );
        assert_eq!(
            guard(
                &ok_case,
                Some(&risk(RiskLevel::Low, false, false, true)),
                Some(&yes)
            ),
            Some(Guard::Risk)
        );
        assert_eq!(
            guard(
                &ok_case,
                Some(&risk(RiskLevel::High, false, false, false)),
                Some(&yes)
            ),
            Some(Guard::Risk)
        );
        assert_eq!(
            guard(
                &ok_case,
                Some(&risk(RiskLevel::Medium, false, false, false)),
                Some(&yes)
            ),
            None
        );
        assert_eq!(guard(&ok_case, Some(&low), None), Some(Guard::Decision));
        assert_eq!(
            guard(&ok_case, Some(&low), Some(&decision(false, true, false))),
            Some(Guard::Decision)
        );
        assert_eq!(
            guard(&ok_case, Some(&low), Some(&decision(true, false, false))),
            Some(Guard::Decision)
        );
        // Identified 10 days ago: the reflection period runs unless waived.
        let recent = case(date!(2026 - 02 - 19), ChildInfo::default());
        assert_eq!(
            guard(&recent, Some(&low), Some(&yes)),
            Some(Guard::ReflectionPeriod)
        );
        assert_eq!(
            guard(&recent, Some(&low), Some(&decision(true, true, true))),
            None
        );
        // 30 days is the minimum; a longer configured period counts.
        assert!(check_guards(
            &case(date!(2026 - 01 - 20), ChildInfo::default()),
            Some(&low),
            Some(&yes),
            45,
            today
        )
        .is_err());
        let child = |bi, g| {
            case(
                long_ago,
                ChildInfo {
                    is_child: true,
                    guardian_assigned: g,
                    best_interests_determined: bi,
                },
            )
        };
        assert_eq!(
            guard(&child(false, true), Some(&low), Some(&yes)),
            Some(Guard::BestInterests)
        );
        assert_eq!(
            guard(&child(true, false), Some(&low), Some(&yes)),
            Some(Guard::Guardian)
        );
        assert_eq!(guard(&child(true, true), Some(&low), Some(&yes)), None);
        assert_eq!(guard(&ok_case, Some(&low), Some(&yes)), None);
    }

    #[test]
    fn the_whole_path_and_a_concern() {
        let mut s = S::Requested;
        for e in [
            E::RaiseConcern,
            E::ResolveConcern,
            E::ConfirmReception,
            E::Schedule,
            E::Travel,
            E::Arrive,
            E::FollowUp,
            E::FollowUp,
            E::Close,
        ] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, S::Closed);
        assert_eq!(
            next(S::Requested, E::Schedule).unwrap_err().guard,
            Guard::State
        );
        assert_eq!(
            next(S::ConcernRaised, E::Schedule).unwrap_err().guard,
            Guard::State
        );
    }

    #[test]
    fn halted_and_closed_plans_accept_nothing() {
        for s in [S::Halted, S::Closed] {
            for e in EVENTS {
                assert!(next(s, e).is_err(), "{s:?} {e:?}");
            }
        }
    }

    #[test]
    fn each_side_announces_only_its_own_events() {
        assert_eq!(
            ReturnEvent::leading_to(S::ReceptionConfirmed, Side::Destination),
            Some(E::ConfirmReception)
        );
        assert_eq!(
            ReturnEvent::leading_to(S::ReceptionConfirmed, Side::Origin),
            None
        );
        assert_eq!(
            ReturnEvent::leading_to(S::Scheduled, Side::Destination),
            None
        );
        assert_eq!(
            ReturnEvent::leading_to(S::Requested, Side::Destination),
            Some(E::ResolveConcern)
        );
        assert_eq!(
            ReturnEvent::leading_to(S::Halted, Side::Origin),
            Some(E::Halt)
        );
    }

    const STATUSES: [ReturnStatus; 10] = [
        S::Proposed,
        S::Requested,
        S::ReceptionConfirmed,
        S::ConcernRaised,
        S::Scheduled,
        S::Travelled,
        S::Arrived,
        S::FollowUp,
        S::Closed,
        S::Halted,
    ];
    const EVENTS: [ReturnEvent; 9] = [
        E::ConfirmReception,
        E::RaiseConcern,
        E::ResolveConcern,
        E::Schedule,
        E::Travel,
        E::Arrive,
        E::FollowUp,
        E::Close,
        E::Halt,
    ];

    #[test]
    fn status_names_are_the_ones_errors_and_audit_entries_use() {
        let names: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "proposed",
                "requested",
                "reception_confirmed",
                "concern_raised",
                "scheduled",
                "travelled",
                "arrived",
                "follow_up",
                "closed",
                "halted"
            ]
        );
        let err = next(S::Travelled, E::Schedule).unwrap_err();
        assert_eq!(
            err.reason,
            "return plan is travelled; Schedule is not possible"
        );
    }

    /// The other node's announcement of a status is read back as exactly the event that
    /// made it, and never as an event the announcing side may not make (an event that does
    /// not lead there from the plan's state is then refused by `next`).
    #[test]
    fn an_announced_status_is_read_back_as_the_event_that_made_it_from_its_side_only() {
        crate::exchange::tests::assert_announcements_read_back(
            &STATUSES,
            &STATUSES,
            &EVENTS,
            next,
            ReturnEvent::allowed_for,
            ReturnEvent::leading_to,
        );
    }

    #[test]
    fn each_side_may_make_only_its_own_events() {
        let origin: Vec<ReturnEvent> = EVENTS
            .into_iter()
            .filter(|e| e.allowed_for(Side::Origin))
            .collect();
        let destination: Vec<ReturnEvent> = EVENTS
            .into_iter()
            .filter(|e| e.allowed_for(Side::Destination))
            .collect();
        assert_eq!(origin, [E::Schedule, E::Travel, E::Close, E::Halt]);
        assert_eq!(
            destination,
            [
                E::ConfirmReception,
                E::RaiseConcern,
                E::ResolveConcern,
                E::Arrive,
                E::FollowUp,
                E::Close,
                E::Halt
            ]
        );
    }

    fn plan(status: ReturnStatus) -> ReturnRecord {
        let mut plan = ReturnRecord::received(
            ReturnId::new(),
            "AT".parse().unwrap(),
            "RO".parse().unwrap(),
            DisclosedCase::default(),
            false,
            false,
            OffsetDateTime::now_utc(),
        );
        plan.status = status;
        plan
    }

    /// Only the departure and a concern settle a crossing: the person left, and the concern
    /// stays as the reason; any other step the state machine refuses stays refused.
    #[test]
    fn a_departure_and_a_concern_that_crossed_settle_on_travelled() {
        let concern = StepDetails {
            details: "no shelter place".into(),
            ..Default::default()
        };
        let mut there = plan(S::ConcernRaised);
        there.status_reason = "no shelter place".into();
        assert!(there.settle_crossing(E::Travel, &StepDetails::default()));
        assert_eq!(there.status, S::Travelled);
        assert_eq!(there.status_reason, "no shelter place");
        let mut here = plan(S::Travelled);
        assert!(here.settle_crossing(E::RaiseConcern, &concern));
        assert_eq!(here.status, S::Travelled);
        assert!(here.status_reason.ends_with("no shelter place"));
        for (status, event) in [
            (S::ConcernRaised, E::Arrive),
            (S::ConcernRaised, E::Schedule),
            (S::Halted, E::Travel),
            (S::Arrived, E::RaiseConcern),
        ] {
            let mut p = plan(status);
            assert!(!p.settle_crossing(event, &concern), "{status:?} {event:?}");
            assert_eq!(p.status, status);
        }
    }

    #[test]
    fn each_step_keeps_the_details_that_go_with_it() {
        let step = |details: &str| StepDetails {
            details: details.into(),
            ..Default::default()
        };
        let mut p = plan(S::Requested);
        p.apply(E::ConfirmReception, &step("met at arrivals"))
            .unwrap();
        assert_eq!(p.reception_details, "met at arrivals");
        assert_eq!(p.status_reason, "", "reception details are not a reason");
        let at = datetime!(2030-03-01 10:00 UTC);
        p.apply(
            E::Schedule,
            &StepDetails {
                details: "flight OS 791".into(),
                travel_at: Some(at),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (p.travel_at, p.travel_details.as_str()),
            (Some(at), "flight OS 791")
        );
        assert_eq!(p.reception_details, "met at arrivals");
        p.apply(E::RaiseConcern, &step("shelter full")).unwrap();
        assert_eq!(p.status_reason, "shelter full");
        p.apply(E::ResolveConcern, &step("")).unwrap();
        assert_eq!(
            p.status_reason, "shelter full",
            "no details keep the reason"
        );
        p.apply(E::ConfirmReception, &step("met at the station"))
            .unwrap();
        p.apply(E::Schedule, &step("bus")).unwrap();
        p.apply(E::Travel, &step("boarded")).unwrap();
        assert_eq!(
            p.status_reason, "shelter full",
            "travel details are not a reason"
        );
        p.apply(E::Arrive, &step("arrived well")).unwrap();
        assert_eq!(p.status_reason, "arrived well");
        p.apply(E::FollowUp, &step("first visit")).unwrap();
        assert_eq!(p.follow_ups.len(), 1);
        assert_eq!(p.follow_ups[0].notes, "first visit");
        assert_eq!(
            p.status_reason, "arrived well",
            "follow-up notes are not a reason"
        );
        p.apply(
            E::Close,
            &StepDetails {
                reason: "reintegrated".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (p.status, p.status_reason.as_str()),
            (S::Closed, "reintegrated")
        );
    }

    #[test]
    fn a_plan_keeps_at_most_64_follow_ups_whoever_adds_them() {
        let mut plan = plan(S::Arrived);
        let step = StepDetails {
            details: "visited".into(),
            ..Default::default()
        };
        for _ in 0..crate::limits::MAX_ITEMS {
            plan.apply(E::FollowUp, &step).unwrap();
        }
        let err = plan.apply(E::FollowUp, &step).unwrap_err();
        assert_eq!(err.guard, Guard::State);
        assert_eq!(plan.follow_ups.len(), crate::limits::MAX_ITEMS);
    }
}
