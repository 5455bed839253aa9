//! `WitnessHearingService`: video-conference hearings of witnesses under mutual legal
//! assistance. A judicial authority requests a hearing for a case already exchanged with the
//! witness's country; the envelope names the witness only by the pairwise case reference.
//! The requested node resolves it, and its focal point or judicial authority answers. A
//! service provider sees only that a hearing is pending for its case. Nothing here changes a
//! referral or a return plan.

use time::OffsetDateTime;
use tonic::Request;
use tracing::{info, instrument};
use trm_core::{
    access::{self, Action, Sight},
    exchange::{RecordKind, SharedRecord},
    hearing::{with_child_measures, HearingEvent, HearingRecord, HearingStatus, HearingStep},
    ids::{HearingId, OrgId, Principal, WitnessRecord},
    messages::PeerMessage,
    FieldError,
};
use trm_federation::outbox;
use trm_proto::{
    convert,
    v1::{self as w, witness_hearing_service_server::WitnessHearingService},
};
use trm_store::{audit::AuditRecord, Store};

use crate::{
    authz::{self, actor},
    ctx::{Ctx, Idempotent},
    error::{ApiError, ApiResult},
    lifecycle, rpc,
};

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

    /// Takes a step of a hearing (idempotent) and answers with it as it now stands.
    async fn step(
        &self,
        request: (Principal, Option<Idempotent>),
        action: Action,
        id: HearingId,
        event: HearingEvent,
        step: HearingStep,
    ) -> ApiResult<w::Hearing> {
        let (p, idem) = request;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let h: HearingRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                lifecycle::step(&ctx, tx, &who, action, id, event, &step)
            })
            .await?;
        Ok(convert::hearing_to_wire(&h, false))
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

/// Returns the organisation that looks after a hearing's local subject (a storage fault is
/// an error, never "no organisation").
fn subject_org(store: &Store, record: WitnessRecord) -> trm_store::Result<Option<OrgId>> {
    Ok(match record {
        WitnessRecord::Case(id) => store.case(id)?.map(|c| c.organisation),
        WitnessRecord::Referral(id) => store.referral(id)?.and_then(|r| r.organisation),
        WitnessRecord::Return(id) => store.return_plan(id)?.and_then(|r| r.organisation),
    })
}

/// What `p` may see of a hearing (a service provider: only that one is pending for the
/// witness it looks after), or why not.
fn sight(
    store: &Store,
    me: trm_core::ids::NodeId,
    p: &Principal,
    h: &HearingRecord,
) -> ApiResult<Sight> {
    let owner = match p.role {
        trm_core::ids::Role::ServiceProvider => subject_org(store, h.subject)?,
        _ => None,
    };
    Ok(access::reach(
        p,
        Action::ReadHearings,
        Some(RecordKind::Hearing),
        h.side(me),
        owner.as_ref(),
        None,
    )?)
}

/// Parses a free text that must not be empty (`why` says what it is for).
fn required_text(field: &str, s: &str, why: &str) -> ApiResult<String> {
    let text = convert::text(field, s)?;
    if text.trim().is_empty() {
        return Err(FieldError::new(field, why).into());
    }
    Ok(text)
}

crate::grpc_service!(Hearings => WitnessHearingService {
    request_hearing(w::RequestHearingRequest) -> w::Hearing;
    get_hearing(w::GetHearingRequest) -> w::Hearing;
    list_hearings(w::ListHearingsRequest) -> w::ListHearingsResponse;
    respond_to_hearing(w::RespondToHearingRequest) -> w::Hearing;
    record_hearing_outcome(w::RecordHearingOutcomeRequest) -> w::Hearing;
    cancel_hearing(w::CancelHearingRequest) -> w::Hearing;
});

impl Hearings {
    #[instrument(skip_all)]
    async fn request_hearing(
        &self,
        request: Request<w::RequestHearingRequest>,
    ) -> ApiResult<w::Hearing> {
        let (p, idem) = Self::caller(&request, Action::RequestHearing)?;
        let req = request.get_ref();
        let subject_id = trm_core::ids::parse_id("case_id", &req.case_id)?;
        let witness_country = convert::country("witness_country", &req.witness_country)?;
        if witness_country == self.ctx.id || self.ctx.directory.get(witness_country).is_none() {
            return Err(FieldError::new("witness_country", "is not a peer of this node").into());
        }
        let proceeding_reference =
            convert::short("proceeding_reference", &req.proceeding_reference, true)?;
        let legal_basis = convert::short("legal_basis", &req.legal_basis, true)?;
        let measures = convert::enums("measures", &req.measures)?;
        let language = convert::language("language", &req.language)?;
        let proposed_times = convert::timestamps("proposed_times", &req.proposed_times)?;
        let hearing_id = HearingId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let record: HearingRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                // A judicial authority reads no case: a case that does not exist and one
                // never exchanged with the witness's country are answered alike, and a child
                // witness is heard with the measures a child needs, added where the request
                // lacks them, rather than refused.
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
                let message = PeerMessage::HearingRequest {
                    hearing_id,
                    proceeding_reference: proceeding_reference.clone(),
                    legal_basis: legal_basis.clone(),
                    measures,
                    language: language.clone(),
                    proposed_times: proposed_times.clone(),
                };
                let message_id = outbox::enqueue(
                    tx,
                    &ctx.identity.current(),
                    witness_country,
                    record.topic(),
                    &case_ref,
                    trm_proto::peer::to_wire(&message),
                )?;
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "hearing.request",
                        hearing_id.to_string(),
                        "requested",
                    )
                    .detail(format!(
                        "to={witness_country} purpose=witness_hearing legal_basis_len={} message={message_id}",
                        legal_basis.len()
                    )),
                )?;
                Ok(record)
            })
            .await?;
        info!(hearing_id = %record.hearing_id, to = %witness_country, "hearing requested");
        Ok(convert::hearing_to_wire(&record, false))
    }

    #[instrument(skip_all)]
    async fn get_hearing(&self, request: Request<w::GetHearingRequest>) -> ApiResult<w::Hearing> {
        let p = authz::principal(&request)?;
        // Who may read hearings at all, before the request is read (as every RPC does).
        access::require(&p, Action::ReadHearings)?;
        let id = HearingId::parse("hearing_id", &request.get_ref().hearing_id)?;
        let h = self
            .ctx
            .store
            .hearing(id)?
            .ok_or(ApiError::NotFound("hearing"))?;
        let seen = sight(&self.ctx.store, self.ctx.id, &p, &h)?;
        self.ctx
            .audit_read(&p, "hearing.read", id.to_string(), String::new())
            .await?;
        Ok(convert::hearing_to_wire(&h, seen == Sight::Summary))
    }

    #[instrument(skip_all)]
    async fn list_hearings(
        &self,
        request: Request<w::ListHearingsRequest>,
    ) -> ApiResult<w::ListHearingsResponse> {
        let p = authz::principal(&request)?;
        access::require(&p, Action::ReadHearings)?;
        let req = request.get_ref();
        let direction = convert::direction("direction", req.direction)?;
        let (page, after) = rpc::page::<HearingId>(req.page_size, &req.page_token)?;
        let (store, me) = (&self.ctx.store, self.ctx.id);
        let (read, _) = store.records::<HearingRecord>(
            direction,
            after,
            page.size + 1,
            |_| true,
            |h| match sight(store, me, &p, h) {
                Ok(_) => Ok(true),
                Err(ApiError::Denied(_)) => Ok(false),
                Err(ApiError::Store(detail)) => Err(trm_store::StoreError::Engine(detail)),
                Err(_) => Ok(false),
            },
        )?;
        let (found, next_page_token) = rpc::cut(&page, read, |h| h.hearing_id);
        let mut hearings = Vec::with_capacity(found.len());
        for h in &found {
            let seen = sight(store, me, &p, h)?;
            hearings.push(convert::hearing_to_wire(h, seen == Sight::Summary));
        }
        let ids: Vec<&str> = hearings.iter().map(|h| h.hearing_id.as_str()).collect();
        self.ctx
            .audit_read(&p, "hearing.list", "-".into(), ids.join(","))
            .await?;
        Ok(w::ListHearingsResponse {
            hearings,
            next_page_token,
        })
    }

    #[instrument(skip_all)]
    async fn respond_to_hearing(
        &self,
        request: Request<w::RespondToHearingRequest>,
    ) -> ApiResult<w::Hearing> {
        let caller = Self::caller(&request, Action::AnswerHearing)?;
        let req = request.get_ref();
        let id = HearingId::parse("hearing_id", &req.hearing_id)?;
        let reason = convert::text("reason", &req.reason)?;
        let (event, scheduled_at) = match w::HearingDecision::try_from(req.decision) {
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
                Some(convert::from_ts("scheduled_at", req.scheduled_at.as_ref())?),
            ),
            _ => {
                return Err(FieldError::new(
                    "decision",
                    "must be HEARING_DECISION_ACCEPT, _DECLINE or _SCHEDULE",
                )
                .into())
            }
        };
        let step = HearingStep {
            reason,
            scheduled_at,
            ..Default::default()
        };
        self.step(caller, Action::AnswerHearing, id, event, step)
            .await
    }

    #[instrument(skip_all)]
    async fn record_hearing_outcome(
        &self,
        request: Request<w::RecordHearingOutcomeRequest>,
    ) -> ApiResult<w::Hearing> {
        let caller = Self::caller(&request, Action::RecordHearingOutcome)?;
        let req = request.get_ref();
        let id = HearingId::parse("hearing_id", &req.hearing_id)?;
        let step = HearingStep {
            minutes_reference: convert::short("minutes_reference", &req.minutes_reference, true)?,
            ..Default::default()
        };
        let action = Action::RecordHearingOutcome;
        self.step(caller, action, id, HearingEvent::Hold, step)
            .await
    }

    #[instrument(skip_all)]
    async fn cancel_hearing(
        &self,
        request: Request<w::CancelHearingRequest>,
    ) -> ApiResult<w::Hearing> {
        let caller = Self::caller(&request, Action::CancelHearing)?;
        let req = request.get_ref();
        let id = HearingId::parse("hearing_id", &req.hearing_id)?;
        let step = HearingStep {
            reason: required_text("reason", &req.reason, "is required")?,
            ..Default::default()
        };
        self.step(
            caller,
            Action::CancelHearing,
            id,
            HearingEvent::Cancel,
            step,
        )
        .await
    }
}
