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
        check_child_measures, next, HearingEvent, HearingRecord, HearingStatus, ProtectiveMeasure,
    },
    ids::{NodeId, OrgId, Principal, Role},
    model::CaseRecord,
    referral::ReferralRecord,
    returns::ReturnRecord,
    FieldError, Guard, GuardError,
};
use trm_federation::outbox;
use trm_proto::{
    convert::{self, WireEnum},
    v1::{
        self as w, envelope_body::Payload, witness_hearing_service_server::WitnessHearingService,
    },
};
use trm_store::{audit::AuditRecord, Store, TreeName, Tx, TxFail};
use uuid::Uuid;

use crate::{
    authz::{self, actor, require},
    ctx::{existing_case_ref, Ctx, TxResult},
    error::{ApiError, ApiResult},
};

/// Roles that handle hearings (never victim records).
const HEARING_ROLES: &[Role] = &[Role::JudicialAuthority, Role::FocalPoint];

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

/// What a local record tells about the witness: the pairwise reference towards `peer`,
/// whether a child, and which organisation looks after the record.
pub struct Subject {
    pub case_ref: Option<String>,
    pub is_child: bool,
    pub organisation: Option<OrgId>,
}

/// Looks up a local record (case, or referral / return plan shared with `peer`) by id.
pub fn subject(tx: &Tx<'_>, id: &Uuid, peer: NodeId) -> TxResult<Option<Subject>> {
    let key = id.as_bytes();
    if let Some(c) = tx.get_sealed::<CaseRecord>(TreeName::Cases, key)? {
        return Ok(Some(Subject {
            case_ref: existing_case_ref(tx, id, peer)?,
            is_child: c.child.is_child,
            organisation: Some(c.organisation),
        }));
    }
    if let Some(r) = tx.get_sealed::<ReferralRecord>(TreeName::Referrals, key)? {
        let shared = r.origin == peer || r.destination == peer;
        return Ok(Some(Subject {
            case_ref: shared.then(|| r.disclosed.case_ref.clone()),
            is_child: r.disclosed.child.is_some_and(|c| c.is_child),
            organisation: r.organisation,
        }));
    }
    if let Some(r) = tx.get_sealed::<ReturnRecord>(TreeName::Returns, key)? {
        let shared = r.origin == peer || r.destination == peer;
        return Ok(Some(Subject {
            case_ref: shared.then(|| r.disclosed.case_ref.clone()),
            is_child: r.disclosed.child.is_some_and(|c| c.is_child),
            organisation: r.organisation,
        }));
    }
    Ok(None)
}

/// Returns the organisation that looks after a hearing's local subject, read outside a
/// transaction.
fn subject_org(store: &Store, id: &Uuid) -> Option<OrgId> {
    let key = id.as_bytes();
    if let Ok(Some(c)) = store.get_sealed::<CaseRecord>(TreeName::Cases, key) {
        return Some(c.organisation);
    }
    if let Ok(Some(r)) = store.get_sealed::<ReferralRecord>(TreeName::Referrals, key) {
        return r.organisation;
    }
    if let Ok(Some(r)) = store.get_sealed::<ReturnRecord>(TreeName::Returns, key) {
        return r.organisation;
    }
    None
}

/// What a hearing step carries besides its event.
#[derive(Debug, Clone, Default)]
pub struct HearingStep {
    pub reason: String,
    pub scheduled_at: Option<OffsetDateTime>,
    pub minutes_reference: String,
}

/// Applies `event` to a hearing (a local step, or the peer's announcement of it).
pub fn apply_event(
    h: &mut HearingRecord,
    event: HearingEvent,
    step: &HearingStep,
) -> Result<(), GuardError> {
    h.status = next(h.status, event)?;
    if event == HearingEvent::Schedule {
        h.scheduled_at = step.scheduled_at;
    }
    if event == HearingEvent::Hold {
        h.minutes_reference = step.minutes_reference.clone();
    }
    h.status_reason = step.reason.clone();
    h.updated_at = OffsetDateTime::now_utc();
    Ok(())
}

fn field<T>(r: Result<T, FieldError>) -> Result<T, Status> {
    r.map_err(|e| ApiError::from(e).into())
}

impl Hearings {
    fn load(&self, id: &Uuid) -> ApiResult<HearingRecord> {
        self.ctx
            .store
            .get_sealed::<HearingRecord>(TreeName::Hearings, id.as_bytes())?
            .ok_or(ApiError::NotFound("hearing"))
    }

    /// Returns whether `p` sees the hearing's details; `Some(false)`: only that it is
    /// pending (a service provider looking after the witness's record).
    fn visibility(&self, p: &Principal, h: &HearingRecord) -> Option<bool> {
        match p.role {
            Role::JudicialAuthority | Role::FocalPoint => Some(true),
            Role::ServiceProvider
                if subject_org(&self.ctx.store, &h.subject).as_ref() == Some(&p.org) =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    async fn step(
        &self,
        p: &Principal,
        id: Uuid,
        event: HearingEvent,
        step: HearingStep,
    ) -> ApiResult<HearingRecord> {
        let me = self.ctx.id;
        self.ctx
            .commit(|tx| {
                let mut h = tx
                    .get_sealed::<HearingRecord>(TreeName::Hearings, id.as_bytes())?
                    .ok_or(TxFail::Abort(ApiError::NotFound("hearing")))?;
                let witness_side = h.at_witness_side(me);
                if !event.allowed_for(witness_side) {
                    return Err(ApiError::Denied(format!(
                        "only the witness's country may {event:?} a hearing"
                    ))
                    .into());
                }
                apply_event(&mut h, event, &step).map_err(ApiError::from)?;
                tx.put_sealed(TreeName::Hearings, id.as_bytes(), &h)?;
                let update = w::HearingUpdate {
                    hearing_id: id.to_string(),
                    status: convert::hearing_status_to_wire(h.status),
                    reason: step.reason.clone(),
                    scheduled_at: step.scheduled_at.map(convert::ts),
                    minutes_reference: step.minutes_reference.clone(),
                };
                outbox::enqueue(
                    tx,
                    &self.ctx.identity.current(),
                    me,
                    h.peer(me),
                    outbox::About {
                        id: &id.to_string(),
                        sealed_under: &trm_store::Subject::of(TreeName::Hearings, id.as_bytes()),
                    },
                    &h.case_ref,
                    Payload::HearingUpdate(update),
                )?;
                tx.audit(AuditRecord::new(
                    actor(p),
                    "hearing.update",
                    id.to_string(),
                    h.status.as_str(),
                ))?;
                Ok(h)
            })
            .await
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
        let subject_id = field(convert::id("case_id", &req.case_id))?;
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
        let me = self.ctx.id;
        let hearing_id = Uuid::now_v7();
        let record = self
            .ctx
            .commit(|tx| {
                let s = subject(tx, &subject_id, witness_country)?.ok_or(TxFail::Abort(ApiError::NotFound("case")))?;
                let case_ref = s.case_ref.ok_or_else(|| {
                    ApiError::from(GuardError::new(Guard::State, format!("the case was never exchanged with {witness_country}")))
                })?;
                check_child_measures(s.is_child, &measures).map_err(ApiError::from)?;
                let now = OffsetDateTime::now_utc();
                let record = HearingRecord {
                    hearing_id,
                    requesting_country: me,
                    witness_country,
                    status: HearingStatus::Requested,
                    case_ref: case_ref.clone(),
                    subject: subject_id,
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
                tx.put_sealed(TreeName::Hearings, hearing_id.as_bytes(), &record)?;
                let payload = w::HearingRequest {
                    hearing_id: hearing_id.to_string(),
                    proceeding_reference: proceeding_reference.clone(),
                    legal_basis: legal_basis.clone(),
                    measures: measures.iter().map(|m| m.to_wire()).collect(),
                    language: language.clone(),
                    proposed_times: proposed_times.iter().copied().map(convert::ts).collect(),
                };
                let about = outbox::About {
                    id: &hearing_id.to_string(),
                    sealed_under: &trm_store::Subject::of(TreeName::Hearings, hearing_id.as_bytes()),
                };
                let message_id = outbox::enqueue(tx, &self.ctx.identity.current(), me, witness_country, about, &case_ref, Payload::HearingRequest(payload))?;
                tx.audit(AuditRecord::new(actor(&p), "hearing.request", hearing_id.to_string(), "requested").detail(format!(
                    "to={witness_country} purpose=witness_hearing legal_basis_len={} message={message_id}",
                    legal_basis.len()
                )))?;
                Ok(record)
            })
            .await?;
        info!(hearing_id = %hearing_id, to = %witness_country, "hearing requested");
        Ok(Response::new(convert::hearing_to_wire(&record, false)))
    }

    #[instrument(skip_all)]
    async fn get_hearing(
        &self,
        request: Request<w::GetHearingRequest>,
    ) -> Result<Response<w::Hearing>, Status> {
        let p = authz::principal(&request)?;
        let id = field(convert::id("hearing_id", &request.get_ref().hearing_id))?;
        let h = self.load(&id)?;
        let Some(full) = self.visibility(&p, &h) else {
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
        require(
            &p,
            &[
                Role::JudicialAuthority,
                Role::FocalPoint,
                Role::ServiceProvider,
            ],
            "read hearings",
        )?;
        let req = request.get_ref();
        let direction = field(convert::direction("direction", req.direction))?;
        let page = field(convert::page(req.page_size, &req.page_token))?;
        let me = self.ctx.id;
        let witness_side = direction == trm_core::referral::Direction::Incoming;
        let mut visible = Vec::new();
        for h in self
            .ctx
            .store
            .scan_sealed::<HearingRecord>(TreeName::Hearings, b"")
            .map_err(ApiError::from)?
        {
            if h.at_witness_side(me) != witness_side {
                continue;
            }
            if let Some(full) = self.visibility(&p, &h) {
                visible.push(convert::hearing_to_wire(&h, !full));
            }
        }
        let (hearings, next_page_token) = page.take(visible, |h| h.hearing_id.clone());
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
        let id = field(convert::id("hearing_id", &req.hearing_id))?;
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
                &p,
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
        let id = field(convert::id("hearing_id", &req.hearing_id))?;
        let minutes_reference = field(convert::short(
            "minutes_reference",
            &req.minutes_reference,
            true,
        ))?;
        let h = self
            .step(
                &p,
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
        let id = field(convert::id("hearing_id", &req.hearing_id))?;
        let reason = field(convert::text("reason", &req.reason))?;
        if reason.trim().is_empty() {
            return Err(ApiError::from(FieldError::new("reason", "is required")).into());
        }
        let h = self
            .step(
                &p,
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
