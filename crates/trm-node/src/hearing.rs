//! `WitnessHearingService`: video-conference hearings of witnesses under mutual legal
//! assistance. A judicial authority requests a hearing for a case already exchanged with the
//! witness's country; the envelope names the witness only by the pairwise case reference.
//! The requested node resolves it, and its focal point or judicial authority answers. A
//! service provider sees only that a hearing is pending for its case. Nothing here changes a
//! referral or a return plan.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};
use trm_core::{
    hearing::{
        with_child_measures, HearingEvent, HearingRecord, HearingStatus, HearingStep,
        ProtectiveMeasure,
    },
    ids::{HearingId, OrgId, Principal, Role, WitnessRecord},
    messages::Topic,
    FieldError,
};
use trm_federation::outbox;
use trm_proto::{
    convert::{self, WireEnum},
    v1::{
        self as w, envelope_body::Payload, witness_hearing_service_server::WitnessHearingService,
    },
};
use trm_store::{audit::AuditRecord, Store, Tx};

use crate::{
    authz::{self, actor, require},
    ctx::{Ctx, Done, Idempotent, TxResult},
    error::{ApiError, ApiResult},
};

/// Roles that handle hearings (never victim records).
const HEARING_ROLES: &[Role] = &[Role::JudicialAuthority, Role::FocalPoint];
/// Who may read hearings (a service provider sees only that one is pending).
const READ_ROLES: &[Role] = &[
    Role::JudicialAuthority,
    Role::FocalPoint,
    Role::ServiceProvider,
];

/// The hearing service of one node.
#[derive(Debug, Clone)]
pub struct Hearings {
    ctx: Ctx,
}

impl Hearings {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

/// Returns the organisation that looks after a hearing's local subject, read outside a
/// transaction.
fn subject_org(store: &Store, record: WitnessRecord) -> Option<OrgId> {
    match record {
        WitnessRecord::Case(id) => store.case(id).ok().flatten().map(|c| c.organisation),
        WitnessRecord::Referral(id) => store
            .referral(id)
            .ok()
            .flatten()
            .and_then(|r| r.organisation),
        WitnessRecord::Return(id) => store
            .return_plan(id)
            .ok()
            .flatten()
            .and_then(|r| r.organisation),
    }
}

fn field<T>(r: Result<T, FieldError>) -> Result<T, Status> {
    r.map_err(|e| ApiError::from(e).into())
}

/// Returns whether `p` sees the hearing's details; `Some(false)`: only that it is pending
/// (a service provider looking after the witness's record).
fn visibility(store: &Store, p: &Principal, h: &HearingRecord) -> Option<bool> {
    match p.role {
        Role::JudicialAuthority | Role::FocalPoint => Some(true),
        Role::ServiceProvider if subject_org(store, h.subject).as_ref() == Some(&p.org) => {
            Some(false)
        }
        _ => None,
    }
}

/// One hearing step by a local user, announced to the other node in one transaction.
fn step_in(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    id: HearingId,
    event: HearingEvent,
    step: &HearingStep,
) -> TxResult<HearingRecord> {
    let me = ctx.id;
    let mut h = tx.hearing(id)?.ok_or(ApiError::NotFound("hearing"))?;
    if !event.allowed_for(h.side(me)) {
        return Err(ApiError::Denied(format!(
            "only the witness's country may {event:?} a hearing"
        ))
        .into());
    }
    h.apply(event, step).map_err(ApiError::from)?;
    tx.put_hearing(&h)?;
    let update = w::HearingUpdate {
        hearing_id: id.to_string(),
        status: convert::hearing_status_to_wire(h.status),
        reason: step.reason.clone(),
        scheduled_at: step.scheduled_at.map(convert::ts),
        minutes_reference: step.minutes_reference.clone(),
    };
    ctx.announce(
        tx,
        p,
        h.peer(me),
        Topic::Hearing(id),
        &h.case_ref,
        Payload::HearingUpdate(update),
        "hearing.update",
        h.status.as_str(),
    )?;
    Ok(h)
}

impl Hearings {
    fn load(&self, id: HearingId) -> ApiResult<HearingRecord> {
        self.ctx
            .store
            .hearing(id)?
            .ok_or(ApiError::NotFound("hearing"))
    }

    async fn step(
        &self,
        p: Principal,
        idem: Option<Idempotent>,
        id: HearingId,
        event: HearingEvent,
        step: HearingStep,
    ) -> ApiResult<HearingRecord> {
        let (ctx, who) = (self.ctx.clone(), p);
        let done = self
            .ctx
            .commit_once(
                idem,
                |h: &HearingRecord| h.hearing_id.to_string(),
                move |tx| step_in(&ctx, tx, &who, id, event, &step),
            )
            .await?;
        match done {
            Done::Now(h) => Ok(h),
            Done::Before(key) => self.load(HearingId::parse("request_id", &key)?),
        }
    }
}

#[tonic::async_trait]
impl WitnessHearingService for Hearings {
    #[instrument(skip_all)]
    async fn request_hearing(
        &self,
        request: Request<w::RequestHearingRequest>,
    ) -> Result<Response<w::Hearing>, Status> {
        let p = authz::principal(&request)?;
        require(&p, &[Role::JudicialAuthority], "request hearings")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let subject_id = field(trm_core::ids::parse_id("case_id", &req.case_id))?;
        let witness_country = field(convert::country("witness_country", &req.witness_country))?;
        if witness_country == self.ctx.id || self.ctx.directory.get(witness_country).is_none() {
            return Err(ApiError::from(FieldError::new(
                "witness_country",
                "is not a peer of this node",
            ))
            .into());
        }
        let proceeding_reference = field(convert::short(
            "proceeding_reference",
            &req.proceeding_reference,
            true,
        ))?;
        let legal_basis = field(convert::short("legal_basis", &req.legal_basis, true))?;
        let measures: Vec<ProtectiveMeasure> = field(convert::enums("measures", &req.measures))?;
        let language = field(convert::language("language", &req.language))?;
        let proposed_times = field(convert::timestamps("proposed_times", &req.proposed_times))?;
        let hearing_id = HearingId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let done = self
            .ctx
            .commit_once(
                idem,
                |h: &HearingRecord| h.hearing_id.to_string(),
                move |tx| {
                    // A judicial authority reads no case: a case that does not exist and one
                    // never exchanged with the witness's country are answered alike, and a
                    // child witness is heard with the measures a child needs, added where
                    // the request lacks them, rather than refused.
                    let (s, case_ref) = tx
                        .witness(subject_id, witness_country)?
                        .and_then(|s| s.case_ref.clone().map(|r| (s, r)))
                        .ok_or(ApiError::NotFound("case"))?;
                    let measures = with_child_measures(s.is_child, &measures);
                    let now = OffsetDateTime::now_utc();
                    let record = HearingRecord {
                        hearing_id,
                        requesting_country: ctx.id,
                        witness_country,
                        status: HearingStatus::Requested,
                        case_ref: case_ref.clone(),
                        subject: s.record,
                        proceeding_reference: proceeding_reference.clone(),
                        legal_basis: legal_basis.clone(),
                        measures: measures.clone(),
                        language: language.clone(),
                        proposed_times: proposed_times.clone(),
                        scheduled_at: None,
                        status_reason: String::new(),
                        minutes_reference: String::new(),
                        created_at: now,
                        updated_at: now,
                    };
                    tx.put_hearing(&record)?;
                    let payload = w::HearingRequest {
                        hearing_id: hearing_id.to_string(),
                        proceeding_reference: proceeding_reference.clone(),
                        legal_basis: legal_basis.clone(),
                        measures: measures.iter().map(|m| m.to_wire()).collect(),
                        language: language.clone(),
                        proposed_times: proposed_times.iter().copied().map(convert::ts).collect(),
                    };
                    let message_id = outbox::enqueue(
                        tx,
                        &ctx.identity.current(),
                        witness_country,
                        Topic::Hearing(hearing_id),
                        &case_ref,
                        Payload::HearingRequest(payload),
                    )?;
                    tx.audit(
                        AuditRecord::new(actor(&who), "hearing.request", hearing_id.to_string(), "requested")
                            .detail(format!(
                                "to={witness_country} purpose=witness_hearing legal_basis_len={} message={message_id}",
                                legal_basis.len()
                            )),
                    )?;
                    Ok(record)
                },
            )
            .await?;
        let record = match done {
            Done::Now(h) => {
                info!(hearing_id = %hearing_id, to = %witness_country, "hearing requested");
                h
            }
            Done::Before(key) => {
                self.load(HearingId::parse("request_id", &key).map_err(ApiError::from)?)?
            }
        };
        Ok(Response::new(convert::hearing_to_wire(&record, false)))
    }

    #[instrument(skip_all)]
    async fn get_hearing(
        &self,
        request: Request<w::GetHearingRequest>,
    ) -> Result<Response<w::Hearing>, Status> {
        let p = authz::principal(&request)?;
        // Who may read hearings at all, before the request is read (as every RPC does).
        require(&p, READ_ROLES, "read hearings")?;
        let id = field(HearingId::parse(
            "hearing_id",
            &request.get_ref().hearing_id,
        ))?;
        let h = self.load(id)?;
        let Some(full) = visibility(&self.ctx.store, &p, &h) else {
            return Err(
                ApiError::Denied(format!("role {} may not read this hearing", p.role)).into(),
            );
        };
        self.ctx
            .audit_read(&p, "hearing.read", id.to_string(), String::new())
            .await?;
        Ok(Response::new(convert::hearing_to_wire(&h, !full)))
    }

    #[instrument(skip_all)]
    async fn list_hearings(
        &self,
        request: Request<w::ListHearingsRequest>,
    ) -> Result<Response<w::ListHearingsResponse>, Status> {
        let p = authz::principal(&request)?;
        require(&p, READ_ROLES, "read hearings")?;
        let req = request.get_ref();
        let direction = field(convert::direction("direction", req.direction))?;
        let page = field(convert::page(req.page_size, &req.page_token))?;
        let after = page
            .after
            .as_deref()
            .map(|t| HearingId::parse("page_token", t))
            .transpose()
            .map_err(ApiError::from)?;
        let store = &self.ctx.store;
        let read = store
            .hearings(direction, after, page.size + 1, |h| {
                visibility(store, &p, h).is_some()
            })
            .map_err(ApiError::from)?;
        let (found, next_page_token) = page.cut(read, |h| h.hearing_id.to_string());
        let hearings: Vec<w::Hearing> = found
            .iter()
            .map(|h| {
                let full = visibility(store, &p, h).unwrap_or(false);
                convert::hearing_to_wire(h, !full)
            })
            .collect();
        let ids: Vec<&str> = hearings.iter().map(|h| h.hearing_id.as_str()).collect();
        self.ctx
            .audit_read(&p, "hearing.list", "-".into(), ids.join(","))
            .await?;
        Ok(Response::new(w::ListHearingsResponse {
            hearings,
            next_page_token,
        }))
    }

    #[instrument(skip_all)]
    async fn respond_to_hearing(
        &self,
        request: Request<w::RespondToHearingRequest>,
    ) -> Result<Response<w::Hearing>, Status> {
        let p = authz::principal(&request)?;
        require(&p, HEARING_ROLES, "answer hearing requests")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = field(HearingId::parse("hearing_id", &req.hearing_id))?;
        let reason = field(convert::text("reason", &req.reason))?;
        let (event, scheduled_at) = match w::HearingDecision::try_from(req.decision) {
            Ok(w::HearingDecision::Accept) => (HearingEvent::Accept, None),
            Ok(w::HearingDecision::Decline) => {
                if reason.trim().is_empty() {
                    return Err(ApiError::from(FieldError::new(
                        "reason",
                        "is required to decline (witness declined, protection risk, legal grounds)",
                    ))
                    .into());
                }
                (HearingEvent::Decline, None)
            }
            Ok(w::HearingDecision::Schedule) => (
                HearingEvent::Schedule,
                Some(field(convert::from_ts(
                    "scheduled_at",
                    req.scheduled_at.as_ref(),
                ))?),
            ),
            _ => {
                return Err(ApiError::from(FieldError::new(
                    "decision",
                    "must be HEARING_DECISION_ACCEPT, _DECLINE or _SCHEDULE",
                ))
                .into())
            }
        };
        let h = self
            .step(
                p,
                idem,
                id,
                event,
                HearingStep {
                    reason,
                    scheduled_at,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new(convert::hearing_to_wire(&h, false)))
    }

    #[instrument(skip_all)]
    async fn record_hearing_outcome(
        &self,
        request: Request<w::RecordHearingOutcomeRequest>,
    ) -> Result<Response<w::Hearing>, Status> {
        let p = authz::principal(&request)?;
        require(&p, HEARING_ROLES, "record hearing outcomes")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = field(HearingId::parse("hearing_id", &req.hearing_id))?;
        let minutes_reference = field(convert::short(
            "minutes_reference",
            &req.minutes_reference,
            true,
        ))?;
        let h = self
            .step(
                p,
                idem,
                id,
                HearingEvent::Hold,
                HearingStep {
                    minutes_reference,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new(convert::hearing_to_wire(&h, false)))
    }

    #[instrument(skip_all)]
    async fn cancel_hearing(
        &self,
        request: Request<w::CancelHearingRequest>,
    ) -> Result<Response<w::Hearing>, Status> {
        let p = authz::principal(&request)?;
        require(&p, HEARING_ROLES, "cancel hearings")?;
        let req = request.get_ref();
        let idem = Idempotent::of(&request)?;
        let id = field(HearingId::parse("hearing_id", &req.hearing_id))?;
        let reason = field(convert::text("reason", &req.reason))?;
        if reason.trim().is_empty() {
            return Err(ApiError::from(FieldError::new("reason", "is required")).into());
        }
        let h = self
            .step(
                p,
                idem,
                id,
                HearingEvent::Cancel,
                HearingStep {
                    reason,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new(convert::hearing_to_wire(&h, false)))
    }
}
