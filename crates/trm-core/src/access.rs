//! Who may do what on a node: the role table of DESIGN.md in one place ([`Action`]), and
//! the one rule for reaching a record ([`reach`]): a role may take an action, a service
//! provider only on its own organisation's records, and a step of a shared record only on
//! the side whose turn it is; and what a caller sees of what it reached
//! ([`return_plan_seen_by`]). Pure: the node's services ask it, the store is not its
//! concern.

use crate::{
    exchange::{RecordKind, Side},
    ids::{OrgId, Principal, Role},
    returns::ReturnRecord,
};

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateCase,
    ReadCase,
    UpdateCase,
    RecordIdentification,
    RecordResidenceStatus,
    RecordConsent,
    WithdrawConsent,
    EraseCase,
    SubmitReferral,
    ReadReferrals,
    AnswerReferral,
    AssignCase,
    CloseReferral,
    WithdrawReferral,
    RecordRiskAssessment,
    RecordReturnDecision,
    ProposeReturn,
    ReadReturnPlans,
    AnswerReturn,
    ScheduleReturn,
    RecordTravel,
    ConfirmArrival,
    RecordFollowUp,
    HaltReturn,
    ResolveConcern,
    CloseReturn,
    RequestHearing,
    ReadHearings,
    AnswerHearing,
    RecordHearingOutcome,
    CancelHearing,
    ListTasks,
    RaiseSafetyAlert,
    ReadSafetyAlerts,
    AcknowledgeSafetyAlert,
    ResolveDuplicate,
    Administer,
    FileClaim,
    UpdateClaim,
    ReadClaims,
    RequestVictimStatus,
    AttestVictimStatus,
    ReadVictimStatus,
}

use Role::{
    FocalPoint as FP, ImmigrationAuthority as IA, JudicialAuthority as JA, Operator as OP,
    ServiceProvider as SP,
};

impl Action {
    /// Every action, for tables and tests.
    pub const ALL: [Action; 43] = [
        Action::CreateCase,
        Action::ReadCase,
        Action::UpdateCase,
        Action::RecordIdentification,
        Action::RecordResidenceStatus,
        Action::RecordConsent,
        Action::WithdrawConsent,
        Action::EraseCase,
        Action::SubmitReferral,
        Action::ReadReferrals,
        Action::AnswerReferral,
        Action::AssignCase,
        Action::CloseReferral,
        Action::WithdrawReferral,
        Action::RecordRiskAssessment,
        Action::RecordReturnDecision,
        Action::ProposeReturn,
        Action::ReadReturnPlans,
        Action::AnswerReturn,
        Action::ScheduleReturn,
        Action::RecordTravel,
        Action::ConfirmArrival,
        Action::RecordFollowUp,
        Action::HaltReturn,
        Action::ResolveConcern,
        Action::CloseReturn,
        Action::RequestHearing,
        Action::ReadHearings,
        Action::AnswerHearing,
        Action::RecordHearingOutcome,
        Action::CancelHearing,
        Action::RaiseSafetyAlert,
        Action::ReadSafetyAlerts,
        Action::AcknowledgeSafetyAlert,
        Action::ListTasks,
        Action::ResolveDuplicate,
        Action::Administer,
        Action::FileClaim,
        Action::UpdateClaim,
        Action::ReadClaims,
        Action::RequestVictimStatus,
        Action::AttestVictimStatus,
        Action::ReadVictimStatus,
    ];

    /// Returns the roles that may take the action (DESIGN.md's role table).
    pub fn roles(self) -> &'static [Role] {
        use Action as A;
        match self {
            A::CreateCase
            | A::ReadCase
            | A::UpdateCase
            | A::RecordIdentification
            | A::RecordConsent
            | A::WithdrawConsent
            | A::EraseCase
            | A::SubmitReferral
            | A::ReadReferrals
            | A::CloseReferral
            | A::WithdrawReferral
            | A::RecordRiskAssessment
            | A::RecordReturnDecision
            | A::ProposeReturn
            | A::ScheduleReturn
            | A::RecordTravel
            | A::HaltReturn
            | A::CloseReturn => &[SP, FP],
            A::AnswerReferral
            | A::AssignCase
            | A::AnswerReturn
            | A::ConfirmArrival
            | A::RecordFollowUp
            | A::ResolveConcern
            | A::ResolveDuplicate => &[FP],
            // Residence is the state's decision: the immigration authority records it, the
            // focal point on its word; a service provider reads it on its cases.
            A::RecordResidenceStatus => &[FP, IA],
            // What crossed for travel documents; never needs, exploitation or notes
            // (`return_plan_seen_by`).
            A::ReadReturnPlans => &[SP, FP, IA],
            A::RequestHearing => &[JA],
            A::ReadHearings => &[JA, FP, SP],
            A::AnswerHearing | A::RecordHearingOutcome | A::CancelHearing => &[JA, FP],
            // The authorities that learn of an extradition or a release, and the focal point.
            A::RaiseSafetyAlert | A::ReadSafetyAlerts | A::AcknowledgeSafetyAlert => &[JA, FP],
            // Each sees the tasks its role may answer (`Task::seen_by`).
            A::ListTasks => &[SP, FP, JA, IA],
            A::Administer => &[OP],
            // A claim is the victim's, filed by who looks after the case.
            A::FileClaim | A::UpdateClaim | A::ReadClaims => &[SP, FP],
            // Non-punishment: the prosecutor asks (§25-27: the authority that would
            // prosecute), and reads the answer; the focal point reads the same queue; only
            // the issuing focal point attests.
            A::RequestVictimStatus => &[JA],
            A::ReadVictimStatus => &[JA, FP],
            A::AttestVictimStatus => &[FP],
        }
    }

    /// Returns the action in words, as a refusal names it ("role X may not ...").
    pub fn phrase(self) -> &'static str {
        use Action as A;
        match self {
            A::CreateCase => "create cases",
            A::ReadCase => "read victim records",
            A::UpdateCase => "update cases",
            A::RecordIdentification => "record identification decisions",
            A::RecordResidenceStatus => "record residence status",
            A::RecordConsent => "record consent",
            A::WithdrawConsent => "withdraw consent",
            A::EraseCase => "erase victim records",
            A::SubmitReferral => "submit referrals",
            A::ReadReferrals => "read referrals",
            A::AnswerReferral => "answer incoming referrals",
            A::AssignCase => "assign cases",
            A::CloseReferral => "close referrals",
            A::WithdrawReferral => "withdraw referrals",
            A::RecordRiskAssessment => "record risk assessments",
            A::RecordReturnDecision => "record return decisions",
            A::ProposeReturn => "propose returns",
            A::ReadReturnPlans => "read return plans",
            A::AnswerReturn => "answer incoming return requests",
            A::ScheduleReturn => "schedule returns",
            A::RecordTravel => "record travel",
            A::ConfirmArrival => "confirm arrivals",
            A::RecordFollowUp => "record follow-ups",
            A::HaltReturn => "halt returns",
            A::ResolveConcern => "resolve concerns",
            A::CloseReturn => "close returns",
            A::RequestHearing => "request hearings",
            A::ReadHearings => "read hearings",
            A::AnswerHearing => "answer hearing requests",
            A::RecordHearingOutcome => "record hearing outcomes",
            A::CancelHearing => "cancel hearings",
            A::RaiseSafetyAlert => "raise safety alerts",
            A::ReadSafetyAlerts => "read safety alerts",
            A::AcknowledgeSafetyAlert => "acknowledge safety alerts",
            A::ListTasks => "list tasks",
            A::ResolveDuplicate => "settle possible duplicates",
            A::Administer => "use the admin service",
            A::FileClaim => "file claims",
            A::UpdateClaim => "update claims",
            A::ReadClaims => "read claims",
            A::RequestVictimStatus => "request victim-status attestations",
            A::AttestVictimStatus => "attest victim status",
            A::ReadVictimStatus => "read victim-status attestations",
        }
    }
}

/// Why a caller may not do something: said to the caller (PERMISSION_DENIED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Refuses unless `p`'s role may take `action`.
pub fn require(p: &Principal, action: Action) -> Result<(), Denied> {
    if action.roles().contains(&p.role) {
        Ok(())
    } else {
        Err(Denied(format!(
            "role {} may not {}",
            p.role,
            action.phrase()
        )))
    }
}

/// Returns whether `role` acts for the whole node rather than for its organisation: the focal
/// point, and the immigration authority (a national authority, not an organisation that
/// owns cases). What either may do is its row of [`Action::roles`]: the immigration
/// authority's keeps it to recording residence status and reading return plans, so it never
/// reaches a case's data, a referral or a hearing.
fn node_wide(role: Role) -> bool {
    matches!(role, FP | IA)
}

/// Refuses a service provider a record of another organisation (or of none); a focal point
/// and an immigration authority reach every record of the node (for the actions their roles
/// may take, checked before with [`require`]); no other role reaches a victim's record.
pub fn require_owner(p: &Principal, owner: Option<&OrgId>) -> Result<(), Denied> {
    if node_wide(p.role) || (p.role == SP && owner == Some(&p.org)) {
        Ok(())
    } else {
        Err(Denied(format!(
            "organisation {} may not access this record",
            p.org
        )))
    }
}

/// Returns the organisation whose records `p` is kept to (a service provider's own), or
/// none for a role that reaches every record of the node: what a listing filters on.
pub fn scope(p: &Principal) -> Option<&OrgId> {
    (!node_wide(p.role)).then_some(&p.org)
}

/// Returns whether `p` sees to which countries a safety alert went: a judicial authority,
/// who reads no victim record, sees only how far the alert got.
pub fn sees_alert_recipients(p: &Principal) -> bool {
    p.role != JA
}

/// Returns what `p` sees of a return plan it reached: all of it, except for an immigration
/// authority, which sees what crossed for travel documents (identity, demographics, the
/// child flags) and the plan's course, never the victim's needs, exploitation or the
/// follow-up notes.
pub fn return_plan_seen_by(p: &Principal, r: &ReturnRecord) -> ReturnRecord {
    let mut seen = r.clone();
    if p.role == IA {
        seen.disclosed.needs = None;
        seen.disclosed.exploitation = None;
        seen.follow_ups.clear();
    }
    seen
}

/// What a caller may see of a record it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    /// The record as the node holds it.
    Full,
    /// Only that it exists and its state (a service provider looking after a witness sees
    /// that a hearing is pending, never its details).
    Summary,
}

/// The one rule for reaching a record of `kind` on `side`, owned by `owner`: `action`'s
/// roles; the turn of `side` for a step (`step`: whether the record's own state machine lets
/// that side take it); the organisation. Returns what the caller may see, or why not.
pub fn reach(
    p: &Principal,
    action: Action,
    kind: Option<RecordKind>,
    side: Side,
    owner: Option<&OrgId>,
    step: Option<bool>,
) -> Result<Sight, Denied> {
    require(p, action)?;
    if step == Some(false) {
        return Err(Denied(match (kind, side) {
            (Some(RecordKind::Referral), _) => {
                "only the destination answers or assigns a referral".into()
            }
            (Some(RecordKind::Hearing), _) => {
                "only the witness's country may take that step of a hearing".into()
            }
            (_, Side::Origin) => "the requesting country may not take that step".into(),
            (_, Side::Destination) => "the receiving country may not take that step".into(),
        }));
    }
    match kind {
        // A hearing is about a case, never its record: who may act on one is the role's.
        Some(RecordKind::Hearing) if p.role == SP => {
            require_owner(p, owner).map(|()| Sight::Summary)
        }
        Some(RecordKind::Hearing) => Ok(Sight::Full),
        // An alert names no victim: who may act on one is the role's.
        Some(RecordKind::SafetyAlert) => Ok(Sight::Full),
        // A victim-status request holds no victim data: who may act on one is the role's.
        Some(RecordKind::VictimStatus) => Ok(Sight::Full),
        // An incoming return plan is the focal point's to answer.
        Some(RecordKind::Return) if side == Side::Destination && step.is_some() => {
            if p.role == FP {
                Ok(Sight::Full)
            } else {
                Err(Denied(format!(
                    "role {} may not act on an incoming return plan",
                    p.role
                )))
            }
        }
        _ => require_owner(p, owner).map(|()| Sight::Full),
    }
}

/// Refuses `p` a record of `kind` looked after by `owner` that it may not read, whether it
/// asks for the record or finds it in a list: the rule of [`reach`] for reading. A
/// hearing's organisation is its witness's, which the record itself names: the hearing's
/// service asks [`reach`] again with it.
pub fn readable(p: &Principal, kind: RecordKind, owner: Option<&OrgId>) -> Result<(), Denied> {
    let read = kind.info().read;
    if kind == RecordKind::Hearing {
        return require(p, read);
    }
    reach(p, read, Some(kind), Side::Origin, owner, None).map(|_| ())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Returns the principal of `role` in organisation `org`.
    pub(crate) fn p(role: Role, org: &str) -> Principal {
        Principal {
            role,
            org: org.parse().unwrap(),
        }
    }

    #[test]
    fn the_role_table_is_designs() {
        let may = |role: Role| -> Vec<Action> {
            Action::ALL
                .iter()
                .copied()
                .filter(|a| a.roles().contains(&role))
                .collect()
        };
        assert!(
            may(OP) == [Action::Administer],
            "operators never read victim records"
        );
        assert!(
            may(JA).iter().all(|a| matches!(
                a,
                Action::RequestHearing
                    | Action::ReadHearings
                    | Action::AnswerHearing
                    | Action::RecordHearingOutcome
                    | Action::CancelHearing
                    | Action::ListTasks
                    | Action::RaiseSafetyAlert
                    | Action::ReadSafetyAlerts
                    | Action::AcknowledgeSafetyAlert
                    | Action::RequestVictimStatus
                    | Action::ReadVictimStatus
            )),
            "judicial authorities never read victim records (a task and an alert hold ids only)"
        );
        assert!(
            may(IA)
                == [
                    Action::RecordResidenceStatus,
                    Action::ReadReturnPlans,
                    Action::ListTasks
                ],
            "immigration authorities record residence and read return plans, nothing else"
        );
        assert!(!may(SP).contains(&Action::AnswerReferral));
        assert!(!may(SP).contains(&Action::RecordResidenceStatus));
        assert!(may(SP).contains(&Action::RecordIdentification));
        assert!(may(FP).len() > may(SP).len());
        let err = require(&p(JA, "pros"), Action::ReadCase).unwrap_err();
        assert_eq!(err.0, "role judicial_authority may not read victim records");
    }

    #[test]
    fn a_provider_lists_its_own_organisation_and_a_judge_never_where_an_alert_went() {
        let sp = p(SP, "sp1");
        assert_eq!(scope(&sp).map(OrgId::as_str), Some("sp1"));
        assert_eq!(scope(&p(FP, "fp")), None);
        assert!(!sees_alert_recipients(&p(JA, "pros")));
        assert!(sees_alert_recipients(&p(FP, "fp")));
    }

    #[test]
    fn who_reads_a_record_is_decided_by_its_kind_and_owner() {
        let (sp1, sp2, fp, ja, ia) = (
            p(SP, "sp1"),
            p(SP, "sp2"),
            p(FP, "fp"),
            p(JA, "pros"),
            p(IA, "imm"),
        );
        let owner: OrgId = "sp1".parse().unwrap();
        let owned = Some(&owner);
        for kind in [RecordKind::Referral, RecordKind::Return, RecordKind::Claim] {
            assert!(readable(&sp1, kind, owned).is_ok(), "{kind:?}");
            assert!(readable(&sp2, kind, owned).is_err(), "{kind:?}");
            assert!(readable(&sp1, kind, None).is_err(), "{kind:?}");
            assert!(readable(&fp, kind, owned).is_ok(), "{kind:?}");
            assert!(readable(&ja, kind, owned).is_err(), "{kind:?}");
        }
        // An immigration authority reads return plans, never referrals.
        assert!(readable(&ia, RecordKind::Return, owned).is_ok());
        assert!(readable(&ia, RecordKind::Referral, owned).is_err());
        // Records that name no victim are the role's to read.
        assert!(readable(&ja, RecordKind::SafetyAlert, None).is_ok());
        assert!(readable(&ja, RecordKind::VictimStatus, None).is_ok());
        assert!(readable(&sp1, RecordKind::VictimStatus, None).is_err());
        // A hearing: the role here, its witness's organisation where the record is read.
        assert!(readable(&sp2, RecordKind::Hearing, None).is_ok());
        assert!(readable(&ia, RecordKind::Hearing, None).is_err());
    }

    #[test]
    fn a_provider_reaches_its_own_records_and_a_focal_point_all() {
        let (sp1, sp2, fp) = (p(SP, "sp1"), p(SP, "sp2"), p(FP, "fp"));
        let owner: OrgId = "sp1".parse().unwrap();
        let read = |who: &Principal, kind| {
            reach(
                who,
                Action::ReadReferrals,
                Some(kind),
                Side::Origin,
                Some(&owner),
                None,
            )
        };
        assert_eq!(read(&sp1, RecordKind::Referral), Ok(Sight::Full));
        assert!(read(&sp2, RecordKind::Referral).is_err());
        assert_eq!(read(&fp, RecordKind::Referral), Ok(Sight::Full));
        let hearing = |who: &Principal| {
            reach(
                who,
                Action::ReadHearings,
                Some(RecordKind::Hearing),
                Side::Destination,
                Some(&owner),
                None,
            )
        };
        assert_eq!(hearing(&sp1), Ok(Sight::Summary));
        for role in [JA, OP] {
            assert!(
                require_owner(&p(role, "sp1"), Some(&owner)).is_err(),
                "{role}"
            );
        }
        assert_eq!(
            require_owner(&sp2, None).unwrap_err().0,
            "organisation sp2 may not access this record"
        );
        assert!(hearing(&sp2).is_err());
        assert_eq!(hearing(&p(JA, "pros")), Ok(Sight::Full));
    }

    /// An immigration authority acts for the whole node, but its role reaches only
    /// residence status and return plans, and it sees no needs, exploitation or notes.
    #[test]
    fn an_immigration_authority_reads_return_plans_but_never_a_victim_record() {
        use crate::{
            exchange::Erasure,
            model::{DisclosedCase, DisclosedNeeds, Exploitation},
            returns::{FollowUpRecord, ReturnStatus},
        };
        let ia = p(IA, "bfa");
        let owner: OrgId = "sp1".parse().unwrap();
        assert!(require(&ia, Action::ReadReturnPlans).is_ok());
        assert!(require_owner(&ia, Some(&owner)).is_ok());
        assert!(
            require_owner(&ia, None).is_ok(),
            "incoming plans have no owner"
        );
        assert!(require(&ia, Action::RecordResidenceStatus).is_ok());
        for action in [
            Action::ReadCase,
            Action::ReadReferrals,
            Action::ReadHearings,
            Action::RecordIdentification,
            Action::ScheduleReturn,
        ] {
            let kinds = [None, Some(RecordKind::Referral), Some(RecordKind::Hearing)];
            for kind in kinds {
                assert!(
                    reach(&ia, action, kind, Side::Origin, Some(&owner), None).is_err(),
                    "{action:?} {kind:?}"
                );
            }
        }
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let plan = ReturnRecord {
            return_id: crate::ids::ReturnId::new(),
            origin: "AT".parse().unwrap(),
            destination: "RO".parse().unwrap(),
            status: ReturnStatus::FollowUp,
            disclosed: DisclosedCase {
                case_ref: "ref".into(),
                needs: Some(DisclosedNeeds::default()),
                exploitation: Some(Exploitation::default()),
                ..Default::default()
            },
            hearing_pending: false,
            compensation_pending: false,
            case_id: None,
            organisation: Some(owner.clone()),
            status_reason: String::new(),
            reception_details: String::new(),
            travel_at: None,
            travel_details: String::new(),
            follow_ups: vec![FollowUpRecord {
                recorded_at: now,
                notes: "settled".into(),
            }],
            consent_ids: vec![],
            erasure: Erasure::NotRequested,
            created_at: now,
            updated_at: now,
        };
        let seen = return_plan_seen_by(&ia, &plan);
        assert!(seen.disclosed.needs.is_none() && seen.disclosed.exploitation.is_none());
        assert!(seen.follow_ups.is_empty());
        assert_eq!(seen.disclosed.case_ref, "ref");
        assert_eq!(return_plan_seen_by(&p(FP, "nfp"), &plan), plan);
    }

    #[test]
    fn a_step_is_taken_on_its_side_and_an_incoming_plan_by_the_focal_point() {
        let (sp1, fp) = (p(SP, "sp1"), p(FP, "fp"));
        let owner: OrgId = "sp1".parse().unwrap();
        let step = |who: &Principal, kind, side, turn| {
            reach(
                who,
                Action::CloseReturn,
                Some(kind),
                side,
                Some(&owner),
                Some(turn),
            )
        };
        assert!(step(&sp1, RecordKind::Return, Side::Origin, true).is_ok());
        assert!(step(&sp1, RecordKind::Return, Side::Destination, true).is_err());
        assert!(step(&fp, RecordKind::Return, Side::Destination, true).is_ok());
        let err = step(&fp, RecordKind::Referral, Side::Origin, false).unwrap_err();
        assert_eq!(err.0, "only the destination answers or assigns a referral");
    }
}
