//! Local requests parsed into commands, once, at the edge (`TryFrom<&Request>`): a bad
//! field is refused naming it, and what the node's handlers receive is already domain
//! types. The handlers and the `local_request` fuzz target call these same conversions.
//!
//! Every step of a shared record parses into a [`StepRequest`] of its record; the requests
//! that create something, read or list parse into the commands below.

use time::OffsetDateTime;
use trm_core::{
    exchange::{SharedRecord, StepRequest},
    hearing::{HearingEvent, HearingRecord, HearingStep, HearingTerms},
    ids::{
        parse_id, AssessmentId, CaseId, ConsentId, HearingId, NodeId, OrgId, RecordId, ReferralId,
        ReturnId,
    },
    limits::Page,
    model::{
        parse_date, ChildInfo, Exploitation, IdentificationStage, NeedKind, Needs, Person,
        ResidenceStatus,
    },
    referral::{Direction, ReferralEvent, ReferralRecord, ReferralStep},
    returns::{ReturnDecision, ReturnEvent, ReturnRecord, RiskAssessment, StepDetails},
    FieldError,
};
use uuid::Uuid;

use crate::{
    convert::{self as c, WireEnum},
    v1 as w,
};

/// Parses free text that must not be empty (`why` says what it is for).
fn required_text(field: &str, s: &str, why: &str) -> Result<String, FieldError> {
    let text = c::text(field, s)?;
    if text.trim().is_empty() {
        return Err(FieldError::new(field, why));
    }
    Ok(text)
}

/// The step `event` of record `R` named by `id` (the request's `field`), with `step`.
fn step_of<R: SharedRecord>(
    field: &str,
    id: &str,
    event: R::Event,
    step: R::Step,
) -> Result<StepRequest<R>, FieldError> {
    Ok(StepRequest {
        id: R::Id::parse_field(field, id)?,
        event,
        step,
    })
}

// Referral steps.

impl TryFrom<&w::RespondToReferralRequest> for StepRequest<ReferralRecord> {
    type Error = FieldError;
    fn try_from(r: &w::RespondToReferralRequest) -> Result<Self, FieldError> {
        let id = ReferralId::parse_field("referral_id", &r.referral_id)?;
        let event = match w::ReferralDecision::try_from(r.decision) {
            Ok(w::ReferralDecision::Accept) => ReferralEvent::Accept,
            Ok(w::ReferralDecision::Decline) => ReferralEvent::Decline,
            _ => {
                return Err(FieldError::new(
                    "decision",
                    "must be REFERRAL_DECISION_ACCEPT or REFERRAL_DECISION_DECLINE",
                ))
            }
        };
        let step = ReferralStep {
            reason: c::text("reason", &r.reason)?,
            assign: None,
        };
        Ok(StepRequest { id, event, step })
    }
}

impl TryFrom<&w::AssignCaseRequest> for StepRequest<ReferralRecord> {
    type Error = FieldError;
    fn try_from(r: &w::AssignCaseRequest) -> Result<Self, FieldError> {
        let id = ReferralId::parse_field("referral_id", &r.referral_id)?;
        let step = ReferralStep {
            reason: String::new(),
            assign: Some(OrgId::parse("organisation", &r.organisation)?),
        };
        Ok(StepRequest {
            id,
            event: ReferralEvent::Assign,
            step,
        })
    }
}

/// A referral's step that takes only an optional reason.
fn referral_end(
    id: &str,
    reason: &str,
    event: ReferralEvent,
) -> Result<StepRequest<ReferralRecord>, FieldError> {
    let step = ReferralStep {
        reason: c::text("reason", reason)?,
        assign: None,
    };
    step_of("referral_id", id, event, step)
}

impl TryFrom<&w::CloseReferralRequest> for StepRequest<ReferralRecord> {
    type Error = FieldError;
    fn try_from(r: &w::CloseReferralRequest) -> Result<Self, FieldError> {
        referral_end(&r.referral_id, &r.reason, ReferralEvent::Close)
    }
}

impl TryFrom<&w::WithdrawReferralRequest> for StepRequest<ReferralRecord> {
    type Error = FieldError;
    fn try_from(r: &w::WithdrawReferralRequest) -> Result<Self, FieldError> {
        referral_end(&r.referral_id, &r.reason, ReferralEvent::Withdraw)
    }
}

// Return-plan steps.

/// A plan's step whose text (`field`: `reason`, or what the details say) may be `required`.
fn return_step(
    id: &str,
    event: ReturnEvent,
    field: &str,
    text: &str,
    required: bool,
) -> Result<StepRequest<ReturnRecord>, FieldError> {
    let text = match required {
        true => required_text(field, text, "is required")?,
        false => c::text(field, text)?,
    };
    let step = match field {
        "reason" => StepDetails {
            reason: text,
            ..Default::default()
        },
        _ => StepDetails {
            details: text,
            ..Default::default()
        },
    };
    step_of("return_id", id, event, step)
}

impl TryFrom<&w::RespondToReturnRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::RespondToReturnRequest) -> Result<Self, FieldError> {
        let id = ReturnId::parse_field("return_id", &r.return_id)?;
        let event =
            match w::ReturnResponse::try_from(r.response) {
                Ok(w::ReturnResponse::ConfirmReception) => ReturnEvent::ConfirmReception,
                Ok(w::ReturnResponse::RaiseConcern) => ReturnEvent::RaiseConcern,
                _ => return Err(FieldError::new(
                    "response",
                    "must be RETURN_RESPONSE_CONFIRM_RECEPTION or RETURN_RESPONSE_RAISE_CONCERN",
                )),
            };
        let step = StepDetails {
            details: required_text("details", &r.details, "is required")?,
            ..Default::default()
        };
        Ok(StepRequest { id, event, step })
    }
}

impl TryFrom<&w::ScheduleReturnRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::ScheduleReturnRequest) -> Result<Self, FieldError> {
        let step = StepDetails {
            details: c::text("details", &r.details)?,
            travel_at: Some(c::from_ts("travel_at", r.travel_at.as_ref())?),
            ..Default::default()
        };
        step_of("return_id", &r.return_id, ReturnEvent::Schedule, step)
    }
}

impl TryFrom<&w::ConfirmArrivalRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::ConfirmArrivalRequest) -> Result<Self, FieldError> {
        return_step(
            &r.return_id,
            ReturnEvent::Arrive,
            "details",
            &r.details,
            false,
        )
    }
}

impl TryFrom<&w::RecordFollowUpRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::RecordFollowUpRequest) -> Result<Self, FieldError> {
        return_step(&r.return_id, ReturnEvent::FollowUp, "notes", &r.notes, true)
    }
}

impl TryFrom<&w::HaltReturnRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::HaltReturnRequest) -> Result<Self, FieldError> {
        return_step(&r.return_id, ReturnEvent::Halt, "reason", &r.reason, true)
    }
}

impl TryFrom<&w::RecordTravelRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::RecordTravelRequest) -> Result<Self, FieldError> {
        let step = StepDetails::default();
        step_of("return_id", &r.return_id, ReturnEvent::Travel, step)
    }
}

impl TryFrom<&w::ResolveConcernRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::ResolveConcernRequest) -> Result<Self, FieldError> {
        let event = ReturnEvent::ResolveConcern;
        return_step(&r.return_id, event, "details", &r.details, true)
    }
}

impl TryFrom<&w::CloseReturnRequest> for StepRequest<ReturnRecord> {
    type Error = FieldError;
    fn try_from(r: &w::CloseReturnRequest) -> Result<Self, FieldError> {
        return_step(&r.return_id, ReturnEvent::Close, "reason", &r.reason, true)
    }
}

// Hearing steps.

impl TryFrom<&w::RespondToHearingRequest> for StepRequest<HearingRecord> {
    type Error = FieldError;
    fn try_from(r: &w::RespondToHearingRequest) -> Result<Self, FieldError> {
        let id = HearingId::parse_field("hearing_id", &r.hearing_id)?;
        let reason = c::text("reason", &r.reason)?;
        let (event, scheduled_at) = match w::HearingDecision::try_from(r.decision) {
            Ok(w::HearingDecision::Accept) => (HearingEvent::Accept, None),
            Ok(w::HearingDecision::Decline) => {
                required_text(
                    "reason",
                    &reason,
                    "is required to decline (witness declined, protection risk, legal grounds)",
                )?;
                (HearingEvent::Decline, None)
            }
            Ok(w::HearingDecision::Schedule) => (
                HearingEvent::Schedule,
                Some(c::from_ts("scheduled_at", r.scheduled_at.as_ref())?),
            ),
            _ => {
                return Err(FieldError::new(
                    "decision",
                    "must be HEARING_DECISION_ACCEPT, _DECLINE or _SCHEDULE",
                ))
            }
        };
        let step = HearingStep {
            reason,
            scheduled_at,
            ..Default::default()
        };
        Ok(StepRequest { id, event, step })
    }
}

impl TryFrom<&w::RecordHearingOutcomeRequest> for StepRequest<HearingRecord> {
    type Error = FieldError;
    fn try_from(r: &w::RecordHearingOutcomeRequest) -> Result<Self, FieldError> {
        let step = HearingStep {
            minutes_reference: c::short("minutes_reference", &r.minutes_reference, true)?,
            ..Default::default()
        };
        step_of("hearing_id", &r.hearing_id, HearingEvent::Hold, step)
    }
}

impl TryFrom<&w::CancelHearingRequest> for StepRequest<HearingRecord> {
    type Error = FieldError;
    fn try_from(r: &w::CancelHearingRequest) -> Result<Self, FieldError> {
        let step = HearingStep {
            reason: required_text("reason", &r.reason, "is required")?,
            ..Default::default()
        };
        step_of("hearing_id", &r.hearing_id, HearingEvent::Cancel, step)
    }
}

// Safety alert steps.

impl TryFrom<&w::AcknowledgeSafetyAlertRequest>
    for StepRequest<trm_core::safety::SafetyAlertRecord>
{
    type Error = FieldError;
    fn try_from(r: &w::AcknowledgeSafetyAlertRequest) -> Result<Self, FieldError> {
        step_of(
            "alert_id",
            &r.alert_id,
            trm_core::safety::SafetyAlertEvent::Acknowledge,
            trm_core::safety::SafetyAlertStep,
        )
    }
}

// Reads and lists.

/// A read of one record: its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Get<I>(pub I);

macro_rules! get {
    ($($req:ident . $field:ident => $id:ty;)*) => {
        $(impl TryFrom<&w::$req> for Get<$id> {
            type Error = FieldError;
            fn try_from(r: &w::$req) -> Result<Self, FieldError> {
                Ok(Get(<$id>::parse_field(stringify!($field), &r.$field)?))
            }
        })*
    };
}

get! {
    GetCaseRequest.case_id => CaseId;
    GetReferralRequest.referral_id => ReferralId;
    GetReturnPlanRequest.return_id => ReturnId;
    GetHearingRequest.hearing_id => HearingId;
    GetSafetyAlertRequest.alert_id => trm_core::ids::AlertId;
    GetClaimRequest.claim_id => trm_core::ids::ClaimId;
    GetVictimStatusRequest.status_request_id => trm_core::remedies::StatusRequestId;
}

/// A page of a list of ids `I`: how many, and after which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<I> {
    pub page: Page,
    pub after: Option<I>,
}

impl<I: RecordId> Paged<I> {
    /// Parses a page request (size, token) whose tokens are ids of `I`.
    pub fn parse(size: i32, token: &str) -> Result<Self, FieldError> {
        let page = c::page(size, token)?;
        let after = page
            .after
            .as_deref()
            .map(|t| I::parse_field("page_token", t))
            .transpose()?;
        Ok(Paged { page, after })
    }
}

impl TryFrom<&w::ListCasesRequest> for Paged<CaseId> {
    type Error = FieldError;
    fn try_from(r: &w::ListCasesRequest) -> Result<Self, FieldError> {
        Paged::parse(r.page_size, &r.page_token)
    }
}

/// `ListConsents`: the consents of one case, a page at a time (tokens are consent ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListConsents {
    pub case_id: CaseId,
    pub paged: Paged<ConsentId>,
}

impl TryFrom<&w::ListConsentsRequest> for ListConsents {
    type Error = FieldError;
    fn try_from(r: &w::ListConsentsRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            paged: Paged::parse(r.page_size, &r.page_token)?,
        })
    }
}

/// A page of a list of shared records with ids `I` and statuses `S`, by the way they
/// travelled, narrowed to some statuses and to what changed since an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<I, S> {
    pub direction: Direction,
    pub paged: Paged<I>,
    /// Only these statuses (empty: any).
    pub statuses: Vec<S>,
    pub updated_since: Option<time::OffsetDateTime>,
}

impl<I, S: PartialEq> List<I, S> {
    /// Returns whether a record in `status`, changed at `updated_at`, is listed.
    pub fn keeps(&self, status: S, updated_at: time::OffsetDateTime) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&status))
            && self.updated_since.is_none_or(|t| updated_at >= t)
    }
}

macro_rules! list {
    ($($req:ident => $id:ty, $status:ty, $parse:path;)*) => {
        $(impl TryFrom<&w::$req> for List<$id, $status> {
            type Error = FieldError;
            fn try_from(r: &w::$req) -> Result<Self, FieldError> {
                if r.status.len() > trm_core::limits::MAX_ITEMS {
                    return Err(FieldError::new("status", "too many statuses"));
                }
                Ok(List {
                    direction: c::direction("direction", r.direction)?,
                    paged: Paged::parse(r.page_size, &r.page_token)?,
                    statuses: r
                        .status
                        .iter()
                        .map(|s| $parse("status", *s))
                        .collect::<Result<_, _>>()?,
                    updated_since: r
                        .updated_since
                        .as_ref()
                        .map(|t| c::from_ts("updated_since", Some(t)))
                        .transpose()?,
                })
            }
        })*
    };
}

list! {
    ListReferralsRequest => ReferralId, trm_core::referral::ReferralStatus, c::referral_status_from_wire;
    ListReturnPlansRequest => ReturnId, trm_core::returns::ReturnStatus, c::return_status_from_wire;
    ListHearingsRequest => HearingId, trm_core::hearing::HearingStatus, c::hearing_status_from_wire;
    ListSafetyAlertsRequest => trm_core::ids::AlertId, trm_core::safety::SafetyAlertStatus, c::WireEnum::from_wire;
    ListClaimsRequest => trm_core::ids::ClaimId, trm_core::remedies::ClaimStatus, c::claim_status_from_wire;
    ListVictimStatusRequestsRequest => trm_core::remedies::StatusRequestId, trm_core::remedies::VictimStatusState, c::victim_status_state_from_wire;
}

// Requests that create or change something on a case.

/// `WithdrawConsent`: which consent of which case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawConsent {
    pub case_id: CaseId,
    pub consent_id: ConsentId,
}

impl TryFrom<&w::WithdrawConsentRequest> for WithdrawConsent {
    type Error = FieldError;
    fn try_from(r: &w::WithdrawConsentRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            consent_id: ConsentId::parse("consent_id", &r.consent_id)?,
        })
    }
}

/// `RecordIdentification`: the stage decided on a case, and the day (required, never in
/// the future).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordIdentification {
    pub case_id: CaseId,
    pub stage: IdentificationStage,
    pub decided_on: time::Date,
}

impl TryFrom<&w::RecordIdentificationRequest> for RecordIdentification {
    type Error = FieldError;
    fn try_from(r: &w::RecordIdentificationRequest) -> Result<Self, FieldError> {
        let case_id = CaseId::parse("case_id", &r.case_id)?;
        let stage = IdentificationStage::from_wire("stage", r.stage)?;
        if r.decided_on.is_empty() {
            return Err(FieldError::new("decided_on", "is required"));
        }
        let decided_on = parse_date("decided_on", &r.decided_on)?;
        if decided_on > OffsetDateTime::now_utc().date() {
            return Err(FieldError::new("decided_on", "must not be in the future"));
        }
        Ok(Self {
            case_id,
            stage,
            decided_on,
        })
    }
}

/// `RecordResidenceStatus`: the status and, if the permit has one, its last day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordResidenceStatus {
    pub case_id: CaseId,
    pub status: ResidenceStatus,
    pub valid_until: Option<time::Date>,
}

impl TryFrom<&w::RecordResidenceStatusRequest> for RecordResidenceStatus {
    type Error = FieldError;
    fn try_from(r: &w::RecordResidenceStatusRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            status: ResidenceStatus::from_wire("status", r.status)?,
            valid_until: c::opt_date("valid_until", &r.valid_until)?,
        })
    }
}

/// `EraseCase`: the case and why (ids and length only reach the audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseCase {
    pub case_id: CaseId,
    pub reason: String,
}

impl TryFrom<&w::EraseCaseRequest> for EraseCase {
    type Error = FieldError;
    fn try_from(r: &w::EraseCaseRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            reason: c::short("reason", &r.reason, false)?,
        })
    }
}

/// `SubmitReferral`: the case, the destination country (checked against the peer
/// directory by the node), the services asked for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitReferral {
    pub case_id: CaseId,
    pub destination: NodeId,
    pub requested_services: Vec<NeedKind>,
    pub reason: String,
}

impl TryFrom<&w::SubmitReferralRequest> for SubmitReferral {
    type Error = FieldError;
    fn try_from(r: &w::SubmitReferralRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            destination: c::country("destination", &r.destination)?,
            requested_services: c::enums("requested_services", &r.requested_services)?,
            reason: c::text("reason", &r.reason)?,
        })
    }
}

/// `ProposeReturn`: the case, the country of return (checked against the peer directory by
/// the node), and what the requesting side says is pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposeReturn {
    pub case_id: CaseId,
    pub destination: NodeId,
    pub hearing_pending: bool,
    pub compensation_pending: bool,
}

impl TryFrom<&w::ProposeReturnRequest> for ProposeReturn {
    type Error = FieldError;
    fn try_from(r: &w::ProposeReturnRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            destination: c::country("destination", &r.destination)?,
            hearing_pending: r.hearing_pending,
            compensation_pending: r.compensation_pending,
        })
    }
}

/// `RecordRiskAssessment`: what the assessment found, as a new assessment (a new id, now).
impl TryFrom<&w::RecordRiskAssessmentRequest> for RiskAssessment {
    type Error = FieldError;
    fn try_from(r: &w::RecordRiskAssessmentRequest) -> Result<Self, FieldError> {
        Ok(Self {
            assessment_id: AssessmentId::new(),
            case_id: CaseId::parse("case_id", &r.case_id)?,
            level: c::risk_level("level", r.level)?,
            non_refoulement_concern: r.non_refoulement_concern,
            retrafficking_risk: r.retrafficking_risk,
            family_at_risk: r.family_at_risk,
            factors: c::shorts("factors", &r.factors)?,
            recorded_at: OffsetDateTime::now_utc(),
        })
    }
}

/// `RecordReturnDecision`: the victim's decision on a case, recorded now.
impl TryFrom<&w::RecordReturnDecisionRequest> for ReturnDecision {
    type Error = FieldError;
    fn try_from(r: &w::RecordReturnDecisionRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            voluntary: r.voluntary,
            informed: r.informed,
            reflection_period_waived: r.reflection_period_waived,
            recorded_at: OffsetDateTime::now_utc(),
        })
    }
}

/// `RequestHearing`: the local record of the witness (a case, or a referral or plan that
/// names it), the witness's country (checked against the peer directory by the node), and
/// the terms of the hearing asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHearing {
    pub subject_id: Uuid,
    pub witness_country: NodeId,
    pub terms: HearingTerms,
}

impl TryFrom<&w::RequestHearingRequest> for RequestHearing {
    type Error = FieldError;
    fn try_from(r: &w::RequestHearingRequest) -> Result<Self, FieldError> {
        let terms = c::hearing_terms(
            &r.proceeding_reference,
            &r.legal_basis,
            &r.measures,
            &r.language,
            &r.proposed_times,
        )?;
        Ok(Self {
            subject_id: parse_id("case_id", &r.case_id)?,
            witness_country: c::country("witness_country", &r.witness_country)?,
            terms,
        })
    }
}

/// `WatchEvents`: the number of the last event the client received (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchEvents {
    pub after: u64,
}

impl TryFrom<&w::WatchEventsRequest> for WatchEvents {
    type Error = FieldError;
    fn try_from(r: &w::WatchEventsRequest) -> Result<Self, FieldError> {
        let after = match r.after.as_str() {
            "" => 0,
            id => id
                .parse::<u64>()
                .map_err(|_| FieldError::new("after", "is not an event id this node gave"))?,
        };
        Ok(Self { after })
    }
}

/// `RaiseSafetyAlert`: the local case, and what the alert says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaiseSafetyAlert {
    pub case_id: CaseId,
    pub terms: trm_core::safety::AlertTerms,
}

impl TryFrom<&w::RaiseSafetyAlertRequest> for RaiseSafetyAlert {
    type Error = FieldError;
    fn try_from(r: &w::RaiseSafetyAlertRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            terms: c::alert_terms("country", &r.country, r.kind, &r.effective_on)?,
        })
    }
}

/// `UpdateCase`: the case and the groups named in `update_mask` (AIP-134), each parsed
/// whole as `CreateCase` parses it; a group not named is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCase {
    pub case_id: CaseId,
    pub person: Option<Person>,
    pub needs: Option<Needs>,
    pub exploitation: Option<Exploitation>,
    pub child: Option<ChildInfo>,
}

/// The paths `update_mask` may name.
pub const CASE_PATHS: [&str; 4] = ["person", "needs", "exploitation", "child"];

impl UpdateCase {
    /// Returns the groups it changes, as the audit names them.
    pub fn fields(&self) -> Vec<&'static str> {
        let named = [
            self.person.is_some(),
            self.needs.is_some(),
            self.exploitation.is_some(),
            self.child.is_some(),
        ];
        CASE_PATHS
            .iter()
            .zip(named)
            .filter_map(|(p, n)| n.then_some(*p))
            .collect()
    }

    /// Applies the groups it changes to `case`.
    pub fn apply(&self, case: &mut trm_core::model::CaseRecord) {
        if let Some(p) = &self.person {
            case.person = p.clone();
        }
        if let Some(n) = &self.needs {
            case.needs = n.clone();
        }
        if let Some(e) = &self.exploitation {
            case.exploitation = e.clone();
        }
        if let Some(c) = self.child {
            case.child = c;
        }
    }
}

impl TryFrom<&w::UpdateCaseRequest> for UpdateCase {
    type Error = FieldError;
    fn try_from(r: &w::UpdateCaseRequest) -> Result<Self, FieldError> {
        let case_id = CaseId::parse("case_id", &r.case_id)?;
        let paths = r.update_mask.as_ref().map_or(&[][..], |m| &m.paths[..]);
        if paths.is_empty() {
            return Err(FieldError::new(
                "update_mask",
                "is required: name the groups to change (person, needs, exploitation, child)",
            ));
        }
        let today = time::OffsetDateTime::now_utc().date();
        let mut u = UpdateCase {
            case_id,
            person: None,
            needs: None,
            exploitation: None,
            child: None,
        };
        for path in paths {
            match path.as_str() {
                "person" => u.person = Some(c::person(r.person.as_ref(), today)?),
                "needs" => u.needs = Some(c::needs(r.needs.as_ref())?),
                "exploitation" => u.exploitation = Some(c::exploitation(r.exploitation.as_ref())?),
                // A child group named must be given: none would read as "not a child".
                "child" => {
                    let given = r.child.as_ref().ok_or_else(|| {
                        FieldError::new("child", "is required when named in update_mask")
                    })?;
                    u.child = Some(c::child(Some(given)));
                }
                other => {
                    // A path is echoed only when it reads as one.
                    let shown = if other.len() <= 64
                        && other
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
                    {
                        format!("{other:?}")
                    } else {
                        "a path".to_owned()
                    };
                    return Err(FieldError::new(
                        "update_mask",
                        format!(
                            "names {shown}, which is not one of person, needs, exploitation, child"
                        ),
                    ));
                }
            }
        }
        Ok(u)
    }
}

// Legal remedies.

/// `FileClaim`: a claim of which kind, for which case of this node, in which forum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileClaim {
    pub case_id: CaseId,
    pub kind: trm_core::remedies::ClaimKind,
    pub forum_country: NodeId,
}

impl TryFrom<&w::FileClaimRequest> for FileClaim {
    type Error = FieldError;
    fn try_from(r: &w::FileClaimRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            kind: WireEnum::from_wire("kind", r.kind)?,
            forum_country: c::country("forum_country", &r.forum_country)?,
        })
    }
}

/// `UpdateClaim`: the status names the step (none leads back to FILED).
impl TryFrom<&w::UpdateClaimRequest> for StepRequest<trm_core::remedies::ClaimRecord> {
    type Error = FieldError;
    fn try_from(r: &w::UpdateClaimRequest) -> Result<Self, FieldError> {
        let status = c::claim_status_from_wire("status", r.status)?;
        let event = trm_core::remedies::ClaimEvent::leading_to(status)
            .ok_or_else(|| FieldError::new("status", "must be a status a claim moves to"))?;
        let step = trm_core::remedies::ClaimStep {
            reason: c::text("reason", &r.reason)?,
        };
        step_of("claim_id", &r.claim_id, event, step)
    }
}

/// `RequestVictimStatus`: the referral or return plan received from the node asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestVictimStatus {
    pub subject_id: Uuid,
}

impl TryFrom<&w::RequestVictimStatusRequest> for RequestVictimStatus {
    type Error = FieldError;
    fn try_from(r: &w::RequestVictimStatusRequest) -> Result<Self, FieldError> {
        Ok(Self {
            subject_id: parse_id("case_id", &r.case_id)?,
        })
    }
}

/// `AttestVictimStatus`: the peer's request and the decision (the attestation itself is
/// made by the node).
impl TryFrom<&w::AttestVictimStatusRequest>
    for StepRequest<trm_core::remedies::VictimStatusRecord>
{
    type Error = FieldError;
    fn try_from(r: &w::AttestVictimStatusRequest) -> Result<Self, FieldError> {
        let event = WireEnum::from_wire("decision", r.decision)?;
        step_of(
            "request_id_of_peer",
            &r.request_id_of_peer,
            event,
            trm_core::remedies::StatusStep::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trm_core::model::format_date;

    fn identification(
        stage: w::IdentificationStage,
        decided_on: &str,
    ) -> w::RecordIdentificationRequest {
        w::RecordIdentificationRequest {
            case_id: CaseId::new().to_string(),
            stage: stage as i32,
            decided_on: decided_on.into(),
            request_id: String::new(),
        }
    }

    #[test]
    fn an_identification_is_refused_naming_its_bad_field() {
        let today = OffsetDateTime::now_utc().date();
        let tomorrow = format_date(today + time::Duration::days(1));
        let refused = |r: w::RecordIdentificationRequest| {
            RecordIdentification::try_from(&r).unwrap_err().field
        };
        use w::IdentificationStage as S;
        assert_eq!(
            refused(identification(S::Conclusive, &tomorrow)),
            "decided_on"
        );
        assert_eq!(refused(identification(S::Conclusive, "")), "decided_on");
        assert_eq!(
            refused(identification(S::Conclusive, "1.2.2026")),
            "decided_on"
        );
        assert_eq!(
            refused(identification(S::Unspecified, "2026-01-01")),
            "stage"
        );
        let ok = RecordIdentification::try_from(&identification(
            S::ReasonableGrounds,
            &format_date(today),
        ))
        .unwrap();
        assert_eq!(ok.stage, IdentificationStage::ReasonableGrounds);
        assert_eq!(ok.decided_on, today);
    }

    #[test]
    fn a_residence_status_keeps_its_optional_last_day() {
        let r = |status: w::ResidenceStatus, valid_until: &str| w::RecordResidenceStatusRequest {
            case_id: CaseId::new().to_string(),
            status: status as i32,
            valid_until: valid_until.into(),
            request_id: String::new(),
        };
        let parsed =
            RecordResidenceStatus::try_from(&r(w::ResidenceStatus::TemporaryPermit, "2027-03-31"))
                .unwrap();
        assert_eq!(parsed.status, ResidenceStatus::TemporaryPermit);
        assert_eq!(
            parsed.valid_until.map(format_date).as_deref(),
            Some("2027-03-31")
        );
        let none = RecordResidenceStatus::try_from(&r(w::ResidenceStatus::None, "")).unwrap();
        assert_eq!(
            (none.status, none.valid_until),
            (ResidenceStatus::None, None)
        );
        let err =
            RecordResidenceStatus::try_from(&r(w::ResidenceStatus::Unspecified, "")).unwrap_err();
        assert_eq!(err.field, "status");
        let err =
            RecordResidenceStatus::try_from(&r(w::ResidenceStatus::Refugee, "soon")).unwrap_err();
        assert_eq!(err.field, "valid_until");
    }
}

/// `ListTasks`: which kinds (none: all), only overdue ones, and the page (its token is
/// the hex of the last task key read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListTasks {
    pub kinds: Vec<trm_core::tasks::TaskKind>,
    pub overdue_only: bool,
    pub page: Page,
}

/// Parses a wire task kind; zero and unknown values are refused naming `field`.
pub fn task_kind(field: &str, v: i32) -> Result<trm_core::tasks::TaskKind, FieldError> {
    use trm_core::tasks::TaskKind as K;
    Ok(match w::TaskKind::try_from(v) {
        Ok(w::TaskKind::AnswerReferral) => K::AnswerReferral,
        Ok(w::TaskKind::AnswerReturn) => K::AnswerReturn,
        Ok(w::TaskKind::AnswerHearing) => K::AnswerHearing,
        Ok(w::TaskKind::AcknowledgeSafetyAlert) => K::AcknowledgeSafetyAlert,
        Ok(w::TaskKind::AttestVictimStatus) => K::AttestVictimStatus,
        Ok(w::TaskKind::ResidenceExpiring) => K::ResidenceExpiring,
        Ok(w::TaskKind::ReturnOfWitnessProposed) => K::ReturnOfWitnessProposed,
        Ok(w::TaskKind::PossibleDuplicate) => K::PossibleDuplicate,
        Ok(w::TaskKind::DeliveryFailed) => K::DeliveryFailed,
        _ => return Err(FieldError::new(field, "is not a task kind")),
    })
}

/// Returns the wire form of a task kind.
pub fn task_kind_to_wire(k: trm_core::tasks::TaskKind) -> w::TaskKind {
    use trm_core::tasks::TaskKind as K;
    match k {
        K::AnswerReferral => w::TaskKind::AnswerReferral,
        K::AnswerReturn => w::TaskKind::AnswerReturn,
        K::AnswerHearing => w::TaskKind::AnswerHearing,
        K::AcknowledgeSafetyAlert => w::TaskKind::AcknowledgeSafetyAlert,
        K::AttestVictimStatus => w::TaskKind::AttestVictimStatus,
        K::ResidenceExpiring => w::TaskKind::ResidenceExpiring,
        K::ReturnOfWitnessProposed => w::TaskKind::ReturnOfWitnessProposed,
        K::PossibleDuplicate => w::TaskKind::PossibleDuplicate,
        K::DeliveryFailed => w::TaskKind::DeliveryFailed,
    }
}

impl TryFrom<&w::ListTasksRequest> for ListTasks {
    type Error = FieldError;
    fn try_from(r: &w::ListTasksRequest) -> Result<Self, FieldError> {
        if r.kinds.len() > trm_core::limits::MAX_ITEMS {
            return Err(FieldError::new("kinds", "too many kinds"));
        }
        Ok(Self {
            kinds: r
                .kinds
                .iter()
                .map(|k| task_kind("kinds", *k))
                .collect::<Result<_, _>>()?,
            overdue_only: r.overdue_only,
            page: c::page(r.page_size, &r.page_token)?,
        })
    }
}

/// `ResolvePossibleDuplicate`: the newer case of a pair, and the focal point's finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolveDuplicate {
    pub case_id: CaseId,
    pub same_person: bool,
}

impl TryFrom<&w::ResolvePossibleDuplicateRequest> for ResolveDuplicate {
    type Error = FieldError;
    fn try_from(r: &w::ResolvePossibleDuplicateRequest) -> Result<Self, FieldError> {
        Ok(Self {
            case_id: CaseId::parse("case_id", &r.case_id)?,
            same_person: r.same_person,
        })
    }
}
