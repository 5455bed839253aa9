//! Who may do what on a node: the role table of DESIGN.md in one place ([`Action`]), and
//! the one rule for reaching a record ([`reach`]): a role may take an action, a service
//! provider only on its own organisation's records, and a step of a shared record only on
//! the side whose turn it is. Pure: the node's services ask it, the store is not its
//! concern.

use crate::{
    exchange::{RecordKind, Side},
    ids::{OrgId, Principal, Role},
};

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateCase,
    ReadCase,
    UpdateCase,
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
    Administer,
}

use Role::{FocalPoint as FP, JudicialAuthority as JA, Operator as OP, ServiceProvider as SP};

impl Action {
    /// Every action, for tables and tests.
    pub const ALL: [Action; 30] = [
        Action::CreateCase,
        Action::ReadCase,
        Action::UpdateCase,
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
        Action::Administer,
    ];

    /// Returns the roles that may take the action (DESIGN.md's role table).
    pub fn roles(self) -> &'static [Role] {
        use Action as A;
        match self {
            A::CreateCase
            | A::ReadCase
            | A::UpdateCase
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
            | A::ReadReturnPlans
            | A::ScheduleReturn
            | A::RecordTravel
            | A::HaltReturn
            | A::CloseReturn => &[SP, FP],
            A::AnswerReferral
            | A::AssignCase
            | A::AnswerReturn
            | A::ConfirmArrival
            | A::RecordFollowUp
            | A::ResolveConcern => &[FP],
            A::RequestHearing => &[JA],
            A::ReadHearings => &[JA, FP, SP],
            A::AnswerHearing | A::RecordHearingOutcome | A::CancelHearing => &[JA, FP],
            A::Administer => &[OP],
        }
    }

    /// Returns the action in words, as a refusal names it ("role X may not ...").
    pub fn phrase(self) -> &'static str {
        use Action as A;
        match self {
            A::CreateCase => "create cases",
            A::ReadCase => "read victim records",
            A::UpdateCase => "update cases",
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
            A::Administer => "use the admin service",
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

/// Refuses a service provider a record of another organisation (or of none); a focal point
/// reaches every record of the node; no other role reaches a victim's record.
pub fn require_owner(p: &Principal, owner: Option<&OrgId>) -> Result<(), Denied> {
    if p.role == FP || (p.role == SP && owner == Some(&p.org)) {
        Ok(())
    } else {
        Err(Denied(format!(
            "organisation {} may not access this record",
            p.org
        )))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, org: &str) -> Principal {
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
            )),
            "judicial authorities never read victim records"
        );
        assert!(!may(SP).contains(&Action::AnswerReferral));
        assert!(may(FP).len() > may(SP).len());
        let err = require(&p(JA, "pros"), Action::ReadCase).unwrap_err();
        assert_eq!(err.0, "role judicial_authority may not read victim records");
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
