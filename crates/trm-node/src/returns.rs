//! `ReturnPlanningService`: safe, voluntary return between the country where the victim is
//! (the requesting side) and the country of return. Risk assessments and the victim's
//! decision are recorded on the case; `ProposeReturn` checks every guard and the consent
//! before anything leaves; each later step is carried to the other node.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};
use trm_core::{
    exchange::Erasure,
    ids::{AssessmentId, CaseId, OrgId, Principal, ReturnId, Role, Shared},
    messages::Topic,
    model::{CaseRecord, Purpose},
    returns::{
        check_guards, ReturnDecision, ReturnEvent, ReturnRecord, ReturnStatus, RiskAssessment,
        Side, StepDetails,
    },
    FieldError,
};
use trm_proto::{
    convert,
    v1::{
        self as w, envelope_body::Payload, return_planning_service_server::ReturnPlanningService,
    },
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor, require, require_org, CASE_ROLES},
    ctx::{today, Ctx, Done, Idempotent, TxResult},
    disclosure::{self, load_case},
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
pub fn load_return(tx: &mut Tx<'_>, id: ReturnId) -> TxResult<ReturnRecord> {
    tx.return_plan(id)?
        .ok_or_else(|| ApiError::NotFound("return plan").into())
}

fn parse<T>(r: Result<T, FieldError>) -> Result<T, Status> {
    r.map_err(|e| ApiError::from(e).into())
}

/// Returns whether `p` may read a plan of organisation `org`.
fn readable(p: &Principal, org: Option<&OrgId>) -> bool {
    p.role == Role::FocalPoint || (p.role == Role::ServiceProvider && org == Some(&p.org))
}

/// One step of a plan by a local user: authorised for its side, valid for its state,
/// recorded and announced to the other node in one transaction.
fn step_in(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    id: ReturnId,
    event: ReturnEvent,
    step: &StepDetails,
) -> TxResult<ReturnRecord> {
    let me = ctx.id;
    let mut r = load_return(tx, id)?;
    let side = r.side(me);
    if !event.allowed_for(side) {
        let who = if side == Side::Origin {
            "requesting"
        } else {
            "receiving"
        };
        return Err(
            ApiError::Denied(format!("the {who} country may not {event:?} a return plan")).into(),
        );
    }
    match side {
        Side::Origin if p.role == Role::ServiceProvider => require_org(p, r.organisation.as_ref())?,
        Side::Origin => {}
        Side::Destination => require(p, &[Role::FocalPoint], "act on an incoming return plan")?,
    }
    r.apply(event, step).map_err(ApiError::from)?;
    tx.put_return_plan(&r)?;
    let update = w::ReturnUpdate {
        return_id: id.to_string(),
        status: convert::return_status_to_wire(r.status),
        reason: step.reason.clone(),
        details: step.details.clone(),
        travel_at: step.travel_at.map(convert::ts),
    };
    ctx.announce(
        tx,
        p,
        r.peer(me),
        Topic::Return(id),
        &r.disclosed.case_ref,
        Payload::ReturnUpdate(update),
        "return.update",
        r.status.as_str(),
    )?;
    Ok(r)
}

impl Returns {
    /// Returns the plan a retried request produced, as it stands now.
    async fn replayed(&self, p: &Principal, key: &str) -> ApiResult<w::ReturnPlan> {
        let id = ReturnId::parse("request_id", key)?;
        let r = self
            .ctx
            .store
            .return_plan(id)?
            .ok_or(ApiError::NotFound("return plan"))?;
        self.ctx
            .audit_read(p, "return.read", id.to_string(), "replay".into())
            .await?;
        Ok(convert::return_to_wire(&r))
    }

    /// Takes a step and answers with the plan as it now stands.
    async fn respond(
        &self,
        p: Principal,
        idem: Option<Idempotent>,
        id: ReturnId,
        event: ReturnEvent,
        step: StepDetails,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |r: &ReturnRecord| r.return_id.to_string(),
                move |tx| step_in(&ctx, tx, &who, id, event, &step),
            )
            .await?;
        Ok(Response::new(match done {
            Done::Now(r) => convert::return_to_wire(&r),
            Done::Before(key) => self.replayed(&p, &key).await?,
        }))
    }
}

fn text(field: &str, s: &str) -> Result<String, Status> {
    parse(convert::text(field, s))
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
        let idem = Idempotent::of(&request)?;
        let case_id = parse(CaseId::parse("case_id", &req.case_id))?;
        let assessment = RiskAssessment {
            assessment_id: AssessmentId::new(),
            case_id,
            level: convert::risk_level("level", req.level).map_err(ApiError::from)?,
            non_refoulement_concern: req.non_refoulement_concern,
            retrafficking_risk: req.retrafficking_risk,
            family_at_risk: req.family_at_risk,
            factors: convert::shorts("factors", &req.factors).map_err(ApiError::from)?,
            recorded_at: OffsetDateTime::now_utc(),
        };
        let (record, who) = (assessment.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |a: &RiskAssessment| a.assessment_id.to_string(),
                move |tx| {
                    let case = load_case(tx, case_id)?;
                    require_org(&who, Some(&case.organisation))?;
                    let mut all = tx.risk_assessments(case_id)?;
                    if all.len() >= trm_core::limits::MAX_ITEMS {
                        return Err(ApiError::from(FieldError::new(
                            "case_id",
                            "the case already holds 64 risk assessments, the most one case keeps",
                        ))
                        .into());
                    }
                    all.push(record.clone());
                    tx.put_risk_assessments(case_id, &all)?;
                    tx.audit(
                        AuditRecord::new(
                            actor(&who),
                            "risk.record",
                            record.assessment_id.to_string(),
                            "ok",
                        )
                        .detail(format!("case={case_id}")),
                    )?;
                    Ok(record.clone())
                },
            )
            .await?;
        let assessment = match done {
            Done::Now(a) => a,
            Done::Before(key) => {
                let id = AssessmentId::parse("request_id", &key).map_err(ApiError::from)?;
                self.ctx
                    .store
                    .risk_assessments(case_id)
                    .map_err(ApiError::from)?
                    .into_iter()
                    .find(|a| a.assessment_id == id)
                    .ok_or(ApiError::NotFound("risk assessment"))?
            }
        };
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
        let idem = Idempotent::of(&request)?;
        let case_id = parse(CaseId::parse("case_id", &req.case_id))?;
        let decision = ReturnDecision {
            case_id,
            voluntary: req.voluntary,
            informed: req.informed,
            reflection_period_waived: req.reflection_period_waived,
            recorded_at: OffsetDateTime::now_utc(),
        };
        let (record, who) = (decision.clone(), p.clone());
        self.ctx
            .commit_once(
                idem,
                |_: &()| String::new(),
                move |tx| {
                    let case = load_case(tx, case_id)?;
                    require_org(&who, Some(&case.organisation))?;
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
                    Ok(())
                },
            )
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
        let req = request.get_ref().clone();
        let idem = Idempotent::of(&request)?;
        let case_id = parse(CaseId::parse("case_id", &req.case_id))?;
        let destination = disclosure::peer_destination(&self.ctx, "destination", &req.destination)?;
        let return_id = ReturnId::new();
        let reflection_days = self.ctx.reflection_period_days;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |r: &ReturnRecord| r.return_id.to_string(),
                move |tx| {
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
                    let request = w::ReturnRequest {
                        return_id: return_id.to_string(),
                        disclosed: Some(convert::disclosed_to_wire(&record.disclosed)),
                        hearing_pending: record.hearing_pending,
                        compensation_pending: record.compensation_pending,
                    };
                    d.send(
                        tx,
                        &ctx,
                        &who,
                        Shared::Return(return_id),
                        Payload::ReturnRequest(request),
                        "return.propose",
                        "requested",
                        "",
                    )?;
                    Ok(record)
                },
            )
            .await?;
        let plan = match done {
            Done::Now(r) => {
                info!(return_id = %return_id, to = %destination, "return requested");
                convert::return_to_wire(&r)
            }
            Done::Before(key) => self.replayed(&p, &key).await?,
        };
        Ok(Response::new(plan))
    }

    #[instrument(skip_all)]
    async fn get_return_plan(
        &self,
        request: Request<w::GetReturnPlanRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "read return plans")?;
        let id = parse(ReturnId::parse("return_id", &request.get_ref().return_id))?;
        let r = self
            .ctx
            .store
            .return_plan(id)
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("return plan"))?;
        if !readable(&p, r.organisation.as_ref()) {
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
        let after = page
            .after
            .as_deref()
            .map(|t| ReturnId::parse("page_token", t))
            .transpose()
            .map_err(ApiError::from)?;
        let read = self
            .ctx
            .store
            .return_plans(direction, after, page.size + 1, |org| readable(&p, org))
            .map_err(ApiError::from)?;
        let (plans, next_page_token) = page.cut(read, |r| r.return_id.to_string());
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
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
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
        self.respond(p, idem, id, event, step).await
    }

    #[instrument(skip_all)]
    async fn schedule_return(
        &self,
        request: Request<w::ScheduleReturnRequest>,
    ) -> Result<Response<w::ReturnPlan>, Status> {
        let p = authz::principal(&request)?;
        require(&p, CASE_ROLES, "schedule returns")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        let travel_at =
            convert::from_ts("travel_at", req.travel_at.as_ref()).map_err(ApiError::from)?;
        let details = text("details", &req.details)?;
        self.respond(
            p,
            idem,
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
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        let details = text("details", &req.details)?;
        self.respond(
            p,
            idem,
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
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        let details = required_text("notes", &req.notes)?;
        self.respond(
            p,
            idem,
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
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        let reason = required_text("reason", &req.reason)?;
        self.respond(
            p,
            idem,
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
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        self.respond(p, idem, id, ReturnEvent::Travel, StepDetails::default())
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
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        let details = required_text("details", &req.details)?;
        self.respond(
            p,
            idem,
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
        let idem = Idempotent::of(&request)?;
        let id = parse(ReturnId::parse("return_id", &req.return_id))?;
        let reason = required_text("reason", &req.reason)?;
        self.respond(
            p,
            idem,
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
