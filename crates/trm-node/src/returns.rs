//! `ReturnPlanningService`: safe, voluntary return between the country where the victim is
//! (the requesting side) and the country of return. Risk assessments and the victim's
//! decision are recorded on the case; `ProposeReturn` checks every guard and the consent
//! before anything leaves; each later step is carried to the other node.

use time::OffsetDateTime;
use tonic::Request;
use tracing::{info, instrument};
use trm_core::{
    access::{self, Action},
    exchange::Erasure,
    ids::{AssessmentId, CaseId, Principal, ReturnId, Shared},
    messages::PeerMessage,
    model::{CaseRecord, Purpose},
    returns::{
        check_guards, ReturnDecision, ReturnEvent, ReturnRecord, ReturnStatus, RiskAssessment,
        StepDetails,
    },
    FieldError,
};
use trm_proto::{
    convert,
    v1::{self as w, return_planning_service_server::ReturnPlanningService},
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor},
    ctx::{today, Ctx, Idempotent, TxResult},
    disclosure::{self, load_case},
    error::{ApiError, ApiResult},
    lifecycle,
    rpc::{self, Remembered, Replay},
};

/// The return-planning service of one node.
#[derive(Debug, Clone)]
pub struct Returns {
    ctx: Ctx,
}

impl Returns {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    /// Takes a step of a plan (idempotent) and answers with the plan as it now stands.
    async fn respond(
        &self,
        request_p: (Principal, Option<Idempotent>),
        action: Action,
        id: ReturnId,
        event: ReturnEvent,
        step: StepDetails,
    ) -> ApiResult<w::ReturnPlan> {
        let (p, idem) = request_p;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let r: ReturnRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                lifecycle::step(&ctx, tx, &who, action, id, event, &step)
            })
            .await?;
        Ok(convert::return_to_wire(&r))
    }

    /// The caller of a step: its principal, allowed `action`, and its retry id.
    fn caller<M: crate::ctx::Retryable>(
        request: &Request<M>,
        action: Action,
    ) -> ApiResult<(Principal, Option<Idempotent>)> {
        let p = authz::principal(request)?;
        access::require(&p, action)?;
        Ok((p, Idempotent::of(request)?))
    }
}

/// Loads a return plan inside a transaction; NOT_FOUND when absent.
pub fn load_return(tx: &mut Tx<'_>, id: ReturnId) -> TxResult<ReturnRecord> {
    lifecycle::load(tx, id)
}

/// Parses a free text that must not be empty.
fn required_text(field: &str, s: &str) -> ApiResult<String> {
    if s.trim().is_empty() {
        return Err(FieldError::new(field, "is required").into());
    }
    Ok(convert::text(field, s)?)
}

fn parse_id(s: &str) -> ApiResult<ReturnId> {
    Ok(ReturnId::parse("return_id", s)?)
}

impl Replay for RiskAssessment {
    fn key(&self) -> String {
        format!("{}/{}", self.case_id, self.assessment_id)
    }
    fn replay(ctx: &Ctx, key: &str) -> ApiResult<Self> {
        let (case, id) = key
            .split_once('/')
            .ok_or_else(|| FieldError::new("request_id", "names no risk assessment"))?;
        let case = CaseId::parse("request_id", case)?;
        let id = AssessmentId::parse("request_id", id)?;
        ctx.store
            .risk_assessments(case)?
            .into_iter()
            .find(|a| a.assessment_id == id)
            .ok_or(ApiError::NotFound("risk assessment"))
    }
}

crate::grpc_service!(Returns => ReturnPlanningService {
    record_risk_assessment(w::RecordRiskAssessmentRequest) -> w::RiskAssessment;
    record_return_decision(w::RecordReturnDecisionRequest) -> w::ReturnDecision;
    propose_return(w::ProposeReturnRequest) -> w::ReturnPlan;
    get_return_plan(w::GetReturnPlanRequest) -> w::ReturnPlan;
    list_return_plans(w::ListReturnPlansRequest) -> w::ListReturnPlansResponse;
    respond_to_return(w::RespondToReturnRequest) -> w::ReturnPlan;
    schedule_return(w::ScheduleReturnRequest) -> w::ReturnPlan;
    confirm_arrival(w::ConfirmArrivalRequest) -> w::ReturnPlan;
    record_follow_up(w::RecordFollowUpRequest) -> w::ReturnPlan;
    halt_return(w::HaltReturnRequest) -> w::ReturnPlan;
    record_travel(w::RecordTravelRequest) -> w::ReturnPlan;
    resolve_concern(w::ResolveConcernRequest) -> w::ReturnPlan;
    close_return(w::CloseReturnRequest) -> w::ReturnPlan;
});

impl Returns {
    #[instrument(skip_all)]
    async fn record_risk_assessment(
        &self,
        request: Request<w::RecordRiskAssessmentRequest>,
    ) -> ApiResult<w::RiskAssessment> {
        let (p, idem) = Self::caller(&request, Action::RecordRiskAssessment)?;
        let req = request.get_ref();
        let case_id = CaseId::parse("case_id", &req.case_id)?;
        let assessment = RiskAssessment {
            assessment_id: AssessmentId::new(),
            case_id,
            level: convert::risk_level("level", req.level)?,
            non_refoulement_concern: req.non_refoulement_concern,
            retrafficking_risk: req.retrafficking_risk,
            family_at_risk: req.family_at_risk,
            factors: convert::shorts("factors", &req.factors)?,
            recorded_at: OffsetDateTime::now_utc(),
        };
        let who = p.clone();
        let assessment: RiskAssessment = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                access::require_owner(&who, Some(&case.organisation)).map_err(ApiError::from)?;
                let mut all = tx.risk_assessments(case_id)?;
                if all.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "the case already holds 64 risk assessments, the most one case keeps",
                    ))
                    .into());
                }
                all.push(assessment.clone());
                tx.put_risk_assessments(case_id, &all)?;
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "risk.record",
                        assessment.assessment_id.to_string(),
                        "ok",
                    )
                    .detail(format!("case={case_id}")),
                )?;
                Ok(assessment.clone())
            })
            .await?;
        Ok(convert::risk_to_wire(&assessment))
    }

    #[instrument(skip_all)]
    async fn record_return_decision(
        &self,
        request: Request<w::RecordReturnDecisionRequest>,
    ) -> ApiResult<w::ReturnDecision> {
        let (p, idem) = Self::caller(&request, Action::RecordReturnDecision)?;
        let req = request.get_ref();
        let case_id = CaseId::parse("case_id", &req.case_id)?;
        let decision = ReturnDecision {
            case_id,
            voluntary: req.voluntary,
            informed: req.informed,
            reflection_period_waived: req.reflection_period_waived,
            recorded_at: OffsetDateTime::now_utc(),
        };
        let (record, who) = (decision.clone(), p.clone());
        let _: Remembered = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                access::require_owner(&who, Some(&case.organisation)).map_err(ApiError::from)?;
                let mut all = tx.return_decisions(case_id)?;
                if all.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "the case already holds 64 return decisions, the most one case keeps",
                    ))
                    .into());
                }
                all.push(record.clone());
                tx.put_return_decisions(case_id, &all)?;
                tx.audit(AuditRecord::new(
                    actor(&who),
                    "return.decision",
                    case_id.to_string(),
                    "ok",
                ))?;
                Ok(Remembered(String::new()))
            })
            .await?;
        Ok(convert::decision_to_wire(&decision))
    }

    #[instrument(skip_all)]
    async fn propose_return(
        &self,
        request: Request<w::ProposeReturnRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let (p, idem) = Self::caller(&request, Action::ProposeReturn)?;
        let req = request.get_ref().clone();
        let case_id = CaseId::parse("case_id", &req.case_id)?;
        let destination = disclosure::peer_destination(&self.ctx, "destination", &req.destination)?;
        let return_id = ReturnId::new();
        let reflection_days = self.ctx.reflection_period_days;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let r: ReturnRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                // Every guard of the return, on the latest assessment and decision.
                let guards = |tx: &mut Tx<'_>, case: &CaseRecord| -> TxResult<()> {
                    let risk = tx.risk_assessments(case_id)?;
                    let decisions = tx.return_decisions(case_id)?;
                    check_guards(
                        case,
                        risk.last(),
                        decisions.last(),
                        reflection_days,
                        today(),
                    )
                    .map_err(ApiError::from)?;
                    Ok(())
                };
                let d = disclosure::prepare(
                    tx,
                    &who,
                    case_id,
                    Purpose::ReturnPlanning,
                    destination,
                    guards,
                )?;
                let now = OffsetDateTime::now_utc();
                let record = ReturnRecord {
                    return_id,
                    origin: ctx.id,
                    destination,
                    status: ReturnStatus::Requested,
                    disclosed: d.disclosed.clone(),
                    hearing_pending: req.hearing_pending,
                    compensation_pending: req.compensation_pending,
                    case_id: Some(case_id),
                    organisation: Some(d.case.organisation.clone()),
                    status_reason: String::new(),
                    reception_details: String::new(),
                    travel_at: None,
                    travel_details: String::new(),
                    follow_ups: vec![],
                    consent_ids: d.consent_ids.clone(),
                    erasure: Erasure::NotRequested,
                    created_at: now,
                    updated_at: now,
                };
                tx.put_return_plan(&record)?;
                let request = PeerMessage::ReturnRequest {
                    return_id,
                    disclosed: record.disclosed.clone(),
                    hearing_pending: record.hearing_pending,
                    compensation_pending: record.compensation_pending,
                };
                d.send(
                    tx,
                    &ctx,
                    &who,
                    Shared::Return(return_id),
                    &request,
                    "return.propose",
                    "requested",
                    "",
                )?;
                Ok(record)
            })
            .await?;
        info!(return_id = %r.return_id, to = %destination, "return requested");
        Ok(convert::return_to_wire(&r))
    }

    #[instrument(skip_all)]
    async fn get_return_plan(
        &self,
        request: Request<w::GetReturnPlanRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let p = authz::principal(&request)?;
        access::require(&p, Action::ReadReturnPlans)?;
        let id = parse_id(&request.get_ref().return_id)?;
        let r = self
            .ctx
            .store
            .return_plan(id)?
            .ok_or(ApiError::NotFound("return plan"))?;
        access::require_owner(&p, r.organisation.as_ref())?;
        self.ctx
            .audit_read(&p, "return.read", id.to_string(), String::new())
            .await?;
        Ok(convert::return_to_wire(&r))
    }

    #[instrument(skip_all)]
    async fn list_return_plans(
        &self,
        request: Request<w::ListReturnPlansRequest>,
    ) -> ApiResult<w::ListReturnPlansResponse> {
        let p = authz::principal(&request)?;
        access::require(&p, Action::ReadReturnPlans)?;
        let req = request.get_ref();
        let direction = convert::direction("direction", req.direction)?;
        let (page, after) = rpc::page::<ReturnId>(req.page_size, &req.page_token)?;
        let (read, _) = self.ctx.store.records::<ReturnRecord>(
            direction,
            after,
            page.size + 1,
            |org| access::require_owner(&p, org).is_ok(),
            |_| Ok(true),
        )?;
        let (plans, next_page_token) = rpc::cut(&page, read, |r| r.return_id);
        let ids: Vec<String> = plans.iter().map(|r| r.return_id.to_string()).collect();
        self.ctx
            .audit_read(&p, "return.list", "-".into(), ids.join(","))
            .await?;
        Ok(w::ListReturnPlansResponse {
            return_plans: plans.iter().map(convert::return_to_wire).collect(),
            next_page_token,
        })
    }

    #[instrument(skip_all)]
    async fn respond_to_return(
        &self,
        request: Request<w::RespondToReturnRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::AnswerReturn)?;
        let req = request.get_ref();
        let id = parse_id(&req.return_id)?;
        let event =
            match w::ReturnResponse::try_from(req.response) {
                Ok(w::ReturnResponse::ConfirmReception) => ReturnEvent::ConfirmReception,
                Ok(w::ReturnResponse::RaiseConcern) => ReturnEvent::RaiseConcern,
                _ => return Err(FieldError::new(
                    "response",
                    "must be RETURN_RESPONSE_CONFIRM_RECEPTION or RETURN_RESPONSE_RAISE_CONCERN",
                )
                .into()),
            };
        let step = StepDetails {
            details: required_text("details", &req.details)?,
            ..Default::default()
        };
        self.respond(caller, Action::AnswerReturn, id, event, step)
            .await
    }

    #[instrument(skip_all)]
    async fn schedule_return(
        &self,
        request: Request<w::ScheduleReturnRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::ScheduleReturn)?;
        let req = request.get_ref();
        let step = StepDetails {
            details: convert::text("details", &req.details)?,
            travel_at: Some(convert::from_ts("travel_at", req.travel_at.as_ref())?),
            ..Default::default()
        };
        let id = parse_id(&req.return_id)?;
        self.respond(
            caller,
            Action::ScheduleReturn,
            id,
            ReturnEvent::Schedule,
            step,
        )
        .await
    }

    #[instrument(skip_all)]
    async fn confirm_arrival(
        &self,
        request: Request<w::ConfirmArrivalRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::ConfirmArrival)?;
        let req = request.get_ref();
        let id = parse_id(&req.return_id)?;
        let step = StepDetails {
            details: convert::text("details", &req.details)?,
            ..Default::default()
        };
        self.respond(
            caller,
            Action::ConfirmArrival,
            id,
            ReturnEvent::Arrive,
            step,
        )
        .await
    }

    #[instrument(skip_all)]
    async fn record_follow_up(
        &self,
        request: Request<w::RecordFollowUpRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::RecordFollowUp)?;
        let req = request.get_ref();
        let id = parse_id(&req.return_id)?;
        let step = StepDetails {
            details: required_text("notes", &req.notes)?,
            ..Default::default()
        };
        self.respond(
            caller,
            Action::RecordFollowUp,
            id,
            ReturnEvent::FollowUp,
            step,
        )
        .await
    }

    #[instrument(skip_all)]
    async fn halt_return(
        &self,
        request: Request<w::HaltReturnRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::HaltReturn)?;
        let req = request.get_ref();
        let id = parse_id(&req.return_id)?;
        let step = StepDetails {
            reason: required_text("reason", &req.reason)?,
            ..Default::default()
        };
        self.respond(caller, Action::HaltReturn, id, ReturnEvent::Halt, step)
            .await
    }

    #[instrument(skip_all)]
    async fn record_travel(
        &self,
        request: Request<w::RecordTravelRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::RecordTravel)?;
        let id = parse_id(&request.get_ref().return_id)?;
        let step = StepDetails::default();
        self.respond(caller, Action::RecordTravel, id, ReturnEvent::Travel, step)
            .await
    }

    #[instrument(skip_all)]
    async fn resolve_concern(
        &self,
        request: Request<w::ResolveConcernRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::ResolveConcern)?;
        let req = request.get_ref();
        let id = parse_id(&req.return_id)?;
        let step = StepDetails {
            details: required_text("details", &req.details)?,
            ..Default::default()
        };
        let event = ReturnEvent::ResolveConcern;
        self.respond(caller, Action::ResolveConcern, id, event, step)
            .await
    }

    #[instrument(skip_all)]
    async fn close_return(
        &self,
        request: Request<w::CloseReturnRequest>,
    ) -> ApiResult<w::ReturnPlan> {
        let caller = Self::caller(&request, Action::CloseReturn)?;
        let req = request.get_ref();
        let id = parse_id(&req.return_id)?;
        let step = StepDetails {
            reason: required_text("reason", &req.reason)?,
            ..Default::default()
        };
        self.respond(caller, Action::CloseReturn, id, ReturnEvent::Close, step)
            .await
    }
}
