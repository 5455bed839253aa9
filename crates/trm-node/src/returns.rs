//! `ReturnPlanningService`: safe, voluntary return between the country where the victim is
//! (the requesting side) and the country of return. Risk assessments and the victim's
//! decision are recorded on the case; `ProposeReturn` checks every guard and the consent
//! before anything leaves; each later step is carried to the other node.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};
use trm_core::{
    ids::{Principal, Role},
    model::{CaseRecord, Purpose},
    returns::{
        check_guards, next, FollowUpRecord, ReturnDecision, ReturnEvent, ReturnRecord,
        ReturnStatus, RiskAssessment, Side,
    },
    FieldError,
};
use trm_federation::outbox;
use trm_proto::{
    convert,
    v1::{
        self as w, envelope_body::Payload, return_planning_service_server::ReturnPlanningService,
    },
};
use trm_store::{audit::AuditRecord, Subject, TreeName, Tx, TxFail};
use uuid::Uuid;

use crate::{
    authz::{self, actor, require, require_org, CASE_ROLES},
    ctx::{load_case, today, Ctx, TxResult},
    disclosure,
    error::{ApiError, ApiResult},
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
}

/// Loads a return plan inside a transaction; NOT_FOUND when absent.
pub fn load_return(tx: &Tx<'_>, id: &Uuid) -> TxResult<ReturnRecord> {
    tx.get_sealed::<ReturnRecord>(TreeName::Returns, id.as_bytes())?
        .ok_or(TxFail::Abort(ApiError::NotFound("return plan")))
}

/// What a step carries besides its event.
#[derive(Debug, Clone, Default)]
pub struct StepDetails {
    pub reason: String,
    pub details: String,
    pub travel_at: Option<OffsetDateTime>,
}

/// Applies `event` to a plan (both for a local step and for the peer's announcement of it):
/// the new status, and the details that go with it.
pub fn apply_event(
    r: &mut ReturnRecord,
    event: ReturnEvent,
    step: &StepDetails,
) -> Result<(), trm_core::GuardError> {
    if event == ReturnEvent::FollowUp && r.follow_ups.len() >= trm_core::limits::MAX_ITEMS {
        return Err(trm_core::GuardError::new(
            trm_core::Guard::State,
            format!(
                "the plan already holds {} follow-ups, the most one plan keeps",
                trm_core::limits::MAX_ITEMS
            ),
        ));
    }
    r.status = next(r.status, event)?;
    match event {
        ReturnEvent::ConfirmReception => r.reception_details = step.details.clone(),
        ReturnEvent::Schedule => {
            r.travel_at = step.travel_at;
            r.travel_details = step.details.clone();
        }
        ReturnEvent::FollowUp => r.follow_ups.push(FollowUpRecord {
            recorded_at: OffsetDateTime::now_utc(),
            notes: step.details.clone(),
        }),
        ReturnEvent::RaiseConcern | ReturnEvent::ResolveConcern | ReturnEvent::Arrive
            if !step.details.is_empty() =>
        {
            r.status_reason = step.details.clone();
        }
        _ => {}
    }
    if !step.reason.is_empty() {
        r.status_reason = step.reason.clone();
    }
    r.updated_at = OffsetDateTime::now_utc();
    Ok(())
}

fn id_of(field: &str, s: &str) -> Result<Uuid, Status> {
    convert::id(field, s).map_err(|e| ApiError::from(e).into())
}

impl Returns {
    /// One step of a plan by a local user: authorised for its side, valid for its state,
    /// recorded and announced to the other node in one transaction.
    async fn step(
        &self,
        p: &Principal,
        id: Uuid,
        event: ReturnEvent,
        step: StepDetails,
    ) -> ApiResult<ReturnRecord> {
        let me = self.ctx.id;
        self.ctx
            .commit(|tx| {
                let mut r = load_return(tx, &id)?;
                let side = r.side(me);
                if !event.allowed_for(side) {
                    let who = if side == Side::Requesting {
                        "requesting"
                    } else {
                        "receiving"
                    };
                    return Err(ApiError::Denied(format!(
                        "the {who} country may not {event:?} a return plan"
                    ))
                    .into());
                }
                match side {
                    Side::Requesting if p.role == Role::ServiceProvider => {
                        require_org(p, r.organisation.as_ref())?
                    }
                    Side::Requesting => {}
                    Side::Receiving => {
                        require(p, &[Role::FocalPoint], "act on an incoming return plan")?
                    }
                }
                apply_event(&mut r, event, &step).map_err(ApiError::from)?;
                tx.put_sealed(TreeName::Returns, id.as_bytes(), &r)?;
                let update = w::ReturnUpdate {
                    return_id: id.to_string(),
                    status: convert::return_status_to_wire(r.status),
                    reason: step.reason.clone(),
                    details: step.details.clone(),
                    travel_at: step.travel_at.map(convert::ts),
                };
                outbox::enqueue(
                    tx,
                    &self.ctx.identity.current(),
                    me,
                    r.peer(me),
                    outbox::About {
                        id: &id.to_string(),
                        sealed_under: &Subject::of(TreeName::Returns, id.as_bytes()),
                    },
                    &r.disclosed.case_ref,
                    Payload::ReturnUpdate(update),
                )?;
                tx.audit(AuditRecord::new(
                    actor(p),
                    "return.update",
                    id.to_string(),
                    r.status.as_str(),
                ))?;
                Ok(r)
            })
            .await
    }

    /// Takes a step and answers with the plan as it now stands.
    async fn respond(
        &self,
        p: &Principal,
        id: Uuid,
        event: ReturnEvent,
        step: StepDetails,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let r = self.step(p, id, event, step).await?;
        Ok(Response::new(convert::return_to_wire(&r)))
    }

    fn readable(&self, p: &Principal, r: &ReturnRecord) -> bool {
        p.role == Role::FocalPoint
            || (r.organisation.as_ref() == Some(&p.org) && p.role == Role::ServiceProvider)
    }
}

fn text(field: &str, s: &str) -> Result<String, Status> {
    convert::text(field, s).map_err(|e| ApiError::from(e).into())
}

fn required_text(field: &str, s: &str) -> Result<String, Status> {
    if s.trim().is_empty() {
        return Err(ApiError::from(FieldError::new(field, "is required")).into());
    }
    text(field, s)
}

#[tonic::async_trait]
impl ReturnPlanningService for Returns {
    #[instrument(skip_all)]
    async fn record_risk_assessment(
        &self,
        request: Request<w::RecordRiskAssessmentRequest>,
    ) -> Result<Response<w::RiskAssessment>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "record risk assessments")?;
        let req = request.get_ref();
        let case_id = id_of("case_id", &req.case_id)?;
        let assessment = RiskAssessment {
            assessment_id: Uuid::now_v7(),
            case_id,
            level: convert::risk_level("level", req.level).map_err(ApiError::from)?,
            non_refoulement_concern: req.non_refoulement_concern,
            retrafficking_risk: req.retrafficking_risk,
            family_at_risk: req.family_at_risk,
            factors: convert::shorts("factors", &req.factors).map_err(ApiError::from)?,
            recorded_at: OffsetDateTime::now_utc(),
        };
        self.ctx
            .commit(|tx| {
                let case = load_case(tx, &case_id)?;
                require_org(&p, Some(&case.organisation))?;
                let mut all = tx
                    .get_sealed::<Vec<RiskAssessment>>(
                        TreeName::RiskAssessments,
                        case_id.as_bytes(),
                    )?
                    .unwrap_or_default();
                if all.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "the case already holds 64 risk assessments, the most one case keeps",
                    ))
                    .into());
                }
                all.push(assessment.clone());
                tx.put_sealed(TreeName::RiskAssessments, case_id.as_bytes(), &all)?;
                tx.audit(
                    AuditRecord::new(
                        actor(&p),
                        "risk.record",
                        assessment.assessment_id.to_string(),
                        "ok",
                    )
                    .detail(format!("case={case_id}")),
                )?;
                Ok(())
            })
            .await?;
        Ok(Response::new(convert::risk_to_wire(&assessment)))
    }

    #[instrument(skip_all)]
    async fn record_return_decision(
        &self,
        request: Request<w::RecordReturnDecisionRequest>,
    ) -> Result<Response<w::ReturnDecision>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "record return decisions")?;
        let req = request.get_ref();
        let case_id = id_of("case_id", &req.case_id)?;
        let decision = ReturnDecision {
            case_id,
            voluntary: req.voluntary,
            informed: req.informed,
            reflection_period_waived: req.reflection_period_waived,
            recorded_at: OffsetDateTime::now_utc(),
        };
        self.ctx
            .commit(|tx| {
                let case = load_case(tx, &case_id)?;
                require_org(&p, Some(&case.organisation))?;
                let mut all = tx
                    .get_sealed::<Vec<ReturnDecision>>(
                        TreeName::ReturnDecisions,
                        case_id.as_bytes(),
                    )?
                    .unwrap_or_default();
                if all.len() >= trm_core::limits::MAX_ITEMS {
                    return Err(ApiError::from(FieldError::new(
                        "case_id",
                        "the case already holds 64 return decisions, the most one case keeps",
                    ))
                    .into());
                }
                all.push(decision.clone());
                tx.put_sealed(TreeName::ReturnDecisions, case_id.as_bytes(), &all)?;
                tx.audit(AuditRecord::new(
                    actor(&p),
                    "return.decision",
                    case_id.to_string(),
                    "ok",
                ))?;
                Ok(())
            })
            .await?;
        Ok(Response::new(convert::decision_to_wire(&decision)))
    }

    #[instrument(skip_all)]
    async fn propose_return(
        &self,
        request: Request<w::ProposeReturnRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "propose returns")?;
        let req = request.get_ref();
        let case_id = id_of("case_id", &req.case_id)?;
        let destination = disclosure::peer_destination(&self.ctx, "destination", &req.destination)?;
        let me = self.ctx.id;
        let return_id = Uuid::now_v7();
        let reflection_days = self.ctx.reflection_period_days;
        // Every guard of the return, on the latest assessment and decision.
        let guards = |tx: &Tx<'_>, case: &CaseRecord| -> TxResult<()> {
            let risk = tx
                .get_sealed::<Vec<RiskAssessment>>(TreeName::RiskAssessments, case_id.as_bytes())?
                .unwrap_or_default();
            let decisions = tx
                .get_sealed::<Vec<ReturnDecision>>(TreeName::ReturnDecisions, case_id.as_bytes())?
                .unwrap_or_default();
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
        let record = self
            .ctx
            .commit(|tx| {
                let d = disclosure::prepare(
                    tx,
                    &p,
                    &case_id,
                    Purpose::ReturnPlanning,
                    destination,
                    guards,
                )?;
                let now = OffsetDateTime::now_utc();
                let record = ReturnRecord {
                    return_id,
                    origin: me,
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
                    erasure_requested: false,
                    erasure_confirmed: false,
                    created_at: now,
                    updated_at: now,
                };
                tx.put_sealed(TreeName::Returns, return_id.as_bytes(), &record)?;
                let request = w::ReturnRequest {
                    return_id: return_id.to_string(),
                    disclosed: Some(convert::disclosed_to_wire(&record.disclosed)),
                    hearing_pending: record.hearing_pending,
                    compensation_pending: record.compensation_pending,
                };
                d.send(
                    tx,
                    &self.ctx,
                    &p,
                    return_id,
                    TreeName::Returns,
                    Payload::ReturnRequest(request),
                    "return.propose",
                    "requested",
                    "",
                )?;
                Ok(record)
            })
            .await?;
        info!(return_id = %return_id, to = %destination, "return requested");
        Ok(Response::new(convert::return_to_wire(&record)))
    }

    #[instrument(skip_all)]
    async fn get_return_plan(
        &self,
        request: Request<w::GetReturnPlanRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read return plans")?;
        let id = id_of("return_id", &request.get_ref().return_id)?;
        let r = self
            .ctx
            .store
            .get_sealed::<ReturnRecord>(TreeName::Returns, id.as_bytes())
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("return plan"))?;
        if !self.readable(&p, &r) {
            return Err(ApiError::Denied(format!(
                "organisation {} may not access this record",
                p.org
            ))
            .into());
        }
        self.ctx
            .audit_read(&p, "return.read", id.to_string(), String::new())
            .await?;
        Ok(Response::new(convert::return_to_wire(&r)))
    }

    #[instrument(skip_all)]
    async fn list_return_plans(
        &self,
        request: Request<w::ListReturnPlansRequest>,
    ) -> Result<Response<w::ListReturnPlansResponse>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read return plans")?;
        let req = request.get_ref();
        let direction = convert::direction("direction", req.direction).map_err(ApiError::from)?;
        let page = convert::page(req.page_size, &req.page_token).map_err(ApiError::from)?;
        let me = self.ctx.id;
        let wanted = match direction {
            trm_core::referral::Direction::Outgoing => Side::Requesting,
            trm_core::referral::Direction::Incoming => Side::Receiving,
        };
        let all = self
            .ctx
            .store
            .scan_sealed::<ReturnRecord>(TreeName::Returns, b"")
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|r| r.side(me) == wanted && self.readable(&p, r));
        let (plans, next_page_token) = page.take(all, |r| r.return_id.to_string());
        let ids: Vec<String> = plans.iter().map(|r| r.return_id.to_string()).collect();
        self.ctx
            .audit_read(&p, "return.list", "-".into(), ids.join(","))
            .await?;
        Ok(Response::new(w::ListReturnPlansResponse {
            return_plans: plans.iter().map(convert::return_to_wire).collect(),
            next_page_token,
        }))
    }

    #[instrument(skip_all)]
    async fn respond_to_return(
        &self,
        request: Request<w::RespondToReturnRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "answer incoming return requests")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let event =
            match w::ReturnResponse::try_from(req.response) {
                Ok(w::ReturnResponse::ConfirmReception) => ReturnEvent::ConfirmReception,
                Ok(w::ReturnResponse::RaiseConcern) => ReturnEvent::RaiseConcern,
                _ => return Err(ApiError::from(FieldError::new(
                    "response",
                    "must be RETURN_RESPONSE_CONFIRM_RECEPTION or RETURN_RESPONSE_RAISE_CONCERN",
                ))
                .into()),
            };
        let details = required_text("details", &req.details)?;
        let step = StepDetails {
            details,
            ..Default::default()
        };
        self.respond(&p, id, event, step).await
    }

    #[instrument(skip_all)]
    async fn schedule_return(
        &self,
        request: Request<w::ScheduleReturnRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "schedule returns")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let travel_at =
            convert::from_ts("travel_at", req.travel_at.as_ref()).map_err(ApiError::from)?;
        let details = text("details", &req.details)?;
        self.respond(
            &p,
            id,
            ReturnEvent::Schedule,
            StepDetails {
                details,
                travel_at: Some(travel_at),
                ..Default::default()
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn confirm_arrival(
        &self,
        request: Request<w::ConfirmArrivalRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "confirm arrivals")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let details = text("details", &req.details)?;
        self.respond(
            &p,
            id,
            ReturnEvent::Arrive,
            StepDetails {
                details,
                ..Default::default()
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn record_follow_up(
        &self,
        request: Request<w::RecordFollowUpRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "record follow-ups")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let details = required_text("notes", &req.notes)?;
        self.respond(
            &p,
            id,
            ReturnEvent::FollowUp,
            StepDetails {
                details,
                ..Default::default()
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn halt_return(
        &self,
        request: Request<w::HaltReturnRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "halt returns")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let reason = required_text("reason", &req.reason)?;
        self.respond(
            &p,
            id,
            ReturnEvent::Halt,
            StepDetails {
                reason,
                ..Default::default()
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn record_travel(
        &self,
        request: Request<w::RecordTravelRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "record travel")?;
        let id = id_of("return_id", &request.get_ref().return_id)?;
        self.respond(&p, id, ReturnEvent::Travel, StepDetails::default())
            .await
    }

    #[instrument(skip_all)]
    async fn resolve_concern(
        &self,
        request: Request<w::ResolveConcernRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::FocalPoint], "resolve concerns")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let details = required_text("details", &req.details)?;
        self.respond(
            &p,
            id,
            ReturnEvent::ResolveConcern,
            StepDetails {
                details,
                ..Default::default()
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn close_return(
        &self,
        request: Request<w::CloseReturnRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "close returns")?;
        let req = request.get_ref();
        let id = id_of("return_id", &req.return_id)?;
        let reason = required_text("reason", &req.reason)?;
        self.respond(
            &p,
            id,
            ReturnEvent::Close,
            StepDetails {
                reason,
                ..Default::default()
            },
        )
        .await
    }
}
