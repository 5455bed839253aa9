//! `RemediesService`: compensation claims and victim-status attestations.
//!
//! A claim is filed for a case of this node in a forum: this node's own country (the claim
//! stays here, never announced) or a peer's, where it travels as a `ClaimNotice` under
//! LEGAL_REMEDIES, built by the disclosure machinery (consent required; identity only where
//! the consent lists it) and erasable like a referral's copy. The forum reviews, awards and
//! rejects; the filing side withdraws; either records a payment. Nothing else closes a
//! claim.
//!
//! A judicial authority asks the node that sent this node a case's copy whether the person
//! was identified as a victim (non-punishment); that node's focal point attests, with the
//! case's identification stage and month signed by the node's key over
//! `trm/attestation/v1`, or declines. Only under the victim's consent for LEGAL_REMEDIES to
//! the requesting country, and only for a case with an identification decision.

use prost::Message as _;
use time::OffsetDateTime;
use tonic::Request;
use tracing::{info, instrument};
use trm_core::{
    access::{self, Action},
    consent,
    exchange::{RecordKind, SharedRecord, StepRequest},
    ids::{ClaimId, ConsentId, NodeId, OrgId, Principal, ReferralId, ReturnId, WitnessRecord},
    messages::PeerMessage,
    model::{DisclosedCase, Purpose},
    referral::ReferralRecord,
    remedies::{
        decided_month, AttestDecision, ClaimRecord, SignedAttestation, StatusRequestId, StatusStep,
        VictimStatusRecord, ATTESTATION_TAG,
    },
    returns::ReturnRecord,
    tasks::TaskKind,
    Guard, GuardError,
};
use trm_federation::outbox;
use trm_proto::{
    command::{FileClaim, RequestVictimStatus},
    convert::{self, WireEnum},
    v1::{self as w, remedies_service_server::RemediesService},
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor},
    ctx::{today, Ctx, TxResult},
    disclosure,
    error::{ApiError, ApiResult},
    lifecycle, rpc,
};

/// The remedies service of one node.
#[derive(Debug, Clone)]
pub struct Remedies {
    ctx: Ctx,
}

/// At the issuer: asks the requesters of the attestations given about case `case` (under
/// consent `withdrawn`; every one when the whole case is erased, `None`, and then this
/// node's copy of each goes too) to erase them: the request is kept with its erasure
/// requested, an answer not yet delivered is destroyed, and a signed erasure request
/// queued. Returns how many were asked.
pub(crate) fn erase_attestations(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    case: trm_core::ids::CaseId,
    withdrawn: Option<trm_core::ids::ConsentId>,
) -> TxResult<usize> {
    let given: Vec<VictimStatusRecord> = tx
        .status_requests_of_case(case)?
        .into_iter()
        .filter(|v| {
            v.attestation.is_some()
                && !v.erasure.requested()
                && withdrawn.is_none_or(|c| v.consent_ids.contains(&c))
        })
        .collect();
    let signer = ctx.identity.current();
    for mut v in given.iter().cloned() {
        v.erasure = trm_core::exchange::Erasure::Requested;
        if withdrawn.is_none() {
            v.attestation = None;
        }
        v.updated_at = OffsetDateTime::now_utc();
        // An answer still queued (or a dead letter of it) is sealed under the request's key:
        // shredded, it can no longer be sent, as a referral's copy cannot.
        tx.shred(&trm_store::Subject::of_record(
            RecordKind::VictimStatus,
            v.status_request_id.uuid().as_bytes(),
        ))?;
        tx.put_record(&v)?;
        let request = trm_core::messages::PeerMessage::ErasureRequest {
            subject_id: v.status_request_id.uuid(),
            reason: crate::erasure::REASON.into(),
        };
        trm_federation::outbox::enqueue(
            tx,
            &signer,
            v.requesting_country,
            v.topic(),
            &v.case_ref,
            trm_proto::peer::to_wire(&request),
        )?;
    }
    Ok(given.len())
}

/// At the requester: the issuer (`sender`) asked for the attestation of request `id` to be
/// erased; only the answer's state is kept. Returns whether this node held such a request.
pub(crate) fn erase_attestation_in(
    me: trm_core::ids::NodeId,
    tx: &mut Tx<'_>,
    sender: trm_core::ids::NodeId,
    id: uuid::Uuid,
) -> Result<bool, trm_store::TxFail<trm_federation::Rejection>> {
    let why = "request not answered by the sender";
    let Some(mut v) = lifecycle::record_between::<VictimStatusRecord>(tx, id, (me, sender), why)?
    else {
        return Ok(false);
    };
    v.attestation = None;
    v.attestation_erased = true;
    v.updated_at = OffsetDateTime::now_utc();
    tx.shred(&trm_store::Subject::of_record(
        RecordKind::VictimStatus,
        id.as_bytes(),
    ))?;
    tx.put_record(&v)?;
    Ok(true)
}

/// At the issuer: the requester (`sender`) confirmed it erased the attestation of request
/// `id`. Returns whether this node holds such a request.
pub(crate) fn confirm_attestation_erased_in(
    me: trm_core::ids::NodeId,
    tx: &mut Tx<'_>,
    sender: trm_core::ids::NodeId,
    id: uuid::Uuid,
) -> Result<bool, trm_store::TxFail<trm_federation::Rejection>> {
    let why = "request not sent by the sender";
    let Some(mut v) = lifecycle::record_between::<VictimStatusRecord>(tx, id, (sender, me), why)?
    else {
        return Ok(false);
    };
    v.erasure
        .confirm()
        .map_err(|g| lifecycle::transition(g.reason))?;
    tx.put_record(&v)?;
    Ok(true)
}

impl Remedies {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

crate::replay_record!(ClaimRecord, read "claim.read");

crate::replay_record!(VictimStatusRecord);

crate::grpc_service!(Remedies => RemediesService {
    file_claim(w::FileClaimRequest) -> w::Claim;
    update_claim(w::UpdateClaimRequest) -> w::Claim;
    request_victim_status(w::RequestVictimStatusRequest) -> w::VictimStatusRequest;
    attest_victim_status(w::AttestVictimStatusRequest) -> w::VictimStatusRequest;
} reads of ClaimRecord {
    get get_claim(w::GetClaimRequest) -> w::Claim;
    list list_claims(w::ListClaimsRequest) -> w::ListClaimsResponse { claims };
} reads of VictimStatusRecord {
    get get_victim_status(w::GetVictimStatusRequest) -> w::VictimStatusRequest;
    list list_victim_status_requests(w::ListVictimStatusRequestsRequest)
        -> w::ListVictimStatusRequestsResponse { requests };
});

impl rpc::ToWire for ClaimRecord {
    type Wire = w::Claim;
    fn to_wire(&self) -> Self::Wire {
        convert::claim_to_wire(self)
    }
}

impl rpc::ToWire for VictimStatusRecord {
    type Wire = w::VictimStatusRequest;
    fn to_wire(&self) -> Self::Wire {
        convert::status_request_to_wire(self)
    }
}

/// Returns the claims of case `case` on this node that are still open.
pub(crate) fn open_claims_of(
    tx: &mut Tx<'_>,
    case: trm_core::ids::CaseId,
) -> trm_store::Result<usize> {
    Ok(tx
        .records_where::<ClaimRecord>(|c| c.case_id == Some(case) && c.is_open())?
        .len())
}

/// Keeps the filing node's record of claim `claim_id` (heard in `command.forum_country`)
/// on the case of `organisation`: `disclosed` is what crosses, under `consent_ids`
/// (nothing, under none, for a claim heard here).
fn keep_filed(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    claim_id: ClaimId,
    command: &FileClaim,
    organisation: &OrgId,
    (disclosed, consent_ids): (DisclosedCase, Vec<ConsentId>),
) -> TxResult<ClaimRecord> {
    let record = ClaimRecord {
        case_id: Some(command.case_id),
        organisation: Some(organisation.clone()),
        consent_ids,
        ..ClaimRecord::received(
            claim_id,
            ctx.id,
            command.forum_country,
            command.kind,
            disclosed,
            OffsetDateTime::now_utc(),
        )
    };
    tx.put_record(&record)?;
    Ok(record)
}

/// Files claim `claim_id` in this node's own forum: nothing crosses a border.
fn file_local(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    claim_id: ClaimId,
    command: &FileClaim,
) -> TxResult<ClaimRecord> {
    let case = disclosure::load_case(tx, command.case_id)?;
    access::require_owner(p, Some(&case.organisation)).map_err(ApiError::from)?;
    let record = keep_filed(
        ctx,
        tx,
        claim_id,
        command,
        &case.organisation,
        (Default::default(), vec![]),
    )?;
    tx.audit(
        AuditRecord::new(actor(p), "claim.file", claim_id.to_string(), "filed").detail(format!(
            "case={} forum={} kind={} local",
            command.case_id,
            ctx.id,
            command.kind.as_str()
        )),
    )?;
    crate::returns::after_claim(tx, &ctx.identity, (ctx.id, &actor(p)), &record)?;
    Ok(record)
}

/// Files claim `claim_id` in a peer's forum: what LEGAL_REMEDIES and the victim's consent
/// allow crosses as a `ClaimNotice`, recorded on the consents it relies on.
fn file_abroad(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    claim_id: ClaimId,
    command: &FileClaim,
) -> TxResult<ClaimRecord> {
    let d = disclosure::prepare(
        tx,
        p,
        command.case_id,
        Purpose::LegalRemedies,
        command.forum_country,
        |_, _| Ok(()),
    )?;
    let shared = (d.disclosed.clone(), d.consent_ids.clone());
    let record = keep_filed(ctx, tx, claim_id, command, &d.case.organisation, shared)?;
    let notice = PeerMessage::ClaimNotice {
        claim_id,
        kind: command.kind,
        disclosed: record.disclosed.clone(),
    };
    let detail = format!("kind={}", command.kind.as_str());
    d.send(
        tx,
        ctx,
        p,
        trm_core::ids::Shared::Claim(claim_id),
        &notice,
        "claim.file",
        "filed",
        &detail,
    )?;
    crate::returns::after_claim(tx, &ctx.identity, (ctx.id, &actor(p)), &record)?;
    Ok(record)
}

/// One step of a claim by a local user: on its side (a claim heard where it was filed is
/// both sides), kept, and announced to the other node unless the claim is local.
fn update_claim_in(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    command: &StepRequest<ClaimRecord>,
) -> TxResult<ClaimRecord> {
    let mut c = lifecycle::load::<ClaimRecord>(tx, command.id)?;
    let side = c.side(ctx.id);
    let turn = c.is_local() || ClaimRecord::may_take(command.event, side);
    access::reach(
        p,
        Action::UpdateClaim,
        Some(RecordKind::Claim),
        side,
        c.owner(),
        Some(turn),
    )
    .map_err(ApiError::from)?;
    c.apply(command.event, &command.step)
        .map_err(ApiError::from)?;
    if c.is_local() {
        tx.put_record(&c)?;
        tx.audit(AuditRecord::new(
            actor(p),
            RecordKind::Claim.update_action(),
            c.claim_id.to_string(),
            c.status_name(),
        ))?;
    } else {
        lifecycle::keep_and_announce(ctx, tx, p, &c, &command.step)?;
    }
    crate::returns::after_claim(tx, &ctx.identity, (ctx.id, &actor(p)), &c)?;
    Ok(c)
}

/// Returns the copy this node received as `id` (a referral or return plan from another
/// node): its record, the node that sent it and the pairwise reference.
fn received_copy(
    tx: &mut Tx<'_>,
    me: NodeId,
    id: uuid::Uuid,
) -> TxResult<Option<(WitnessRecord, NodeId, String)>> {
    if let Some(r) = tx.record::<ReferralRecord>(ReferralId::from_uuid(id))? {
        if r.destination == me && r.origin != me {
            let record = WitnessRecord::Referral(r.referral_id);
            return Ok(Some((record, r.origin, r.disclosed.case_ref)));
        }
    }
    if let Some(r) = tx.record::<ReturnRecord>(ReturnId::from_uuid(id))? {
        if r.destination == me && r.origin != me {
            return Ok(Some((
                WitnessRecord::Return(r.return_id),
                r.origin,
                r.disclosed.case_ref,
            )));
        }
    }
    Ok(None)
}

/// Makes and signs the attestation that answers request `r`: only under an active consent
/// of the case for LEGAL_REMEDIES to the requesting country (`consent`), and only for a case
/// with an identification decision (`state`). It holds the stage and month of that
/// decision, nothing else of the case.
fn attestation_of(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    r: &VictimStatusRecord,
    issued_at: OffsetDateTime,
) -> TxResult<(SignedAttestation, Vec<trm_core::ids::ConsentId>)> {
    let WitnessRecord::Case(case_id) = r.subject else {
        return Err(ApiError::NotFound("case").into());
    };
    let case = disclosure::load_case(tx, case_id)?;
    let consents = tx.consents(case_id)?;
    let grant = consent::grant(
        &consents,
        Purpose::LegalRemedies,
        r.requesting_country,
        today(),
    )
    .map_err(ApiError::from)?;
    let decision = case.identification().ok_or_else(|| {
        ApiError::from(GuardError::new(
            Guard::State,
            "the case has no identification decision",
        ))
    })?;
    let attestation = w::VictimStatusAttestation {
        case_ref: r.case_ref.clone(),
        stage: decision.stage.to_wire(),
        decided_month: decided_month(decision.decided_on),
        issuer: ctx.id.to_string(),
        issued_at: Some(convert::ts(issued_at)),
    }
    .encode_to_vec();
    let signer = ctx.identity.current();
    let signature = signer.sign(ATTESTATION_TAG, &attestation);
    let signed = SignedAttestation {
        attestation,
        key_id: signer.key_id().to_owned(),
        signature,
    };
    Ok((signed, grant.consent_ids))
}

/// The focal point's answer to a peer's victim-status request: attested (signed) or
/// declined, kept, sent back, its task closed.
fn attest_in(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    command: &StepRequest<VictimStatusRecord>,
    issued_at: OffsetDateTime,
) -> TxResult<VictimStatusRecord> {
    let mut r = lifecycle::load::<VictimStatusRecord>(tx, command.id)?;
    let side = r.side(ctx.id);
    let turn = VictimStatusRecord::may_take(command.event, side);
    access::reach(
        p,
        Action::AttestVictimStatus,
        Some(RecordKind::VictimStatus),
        side,
        None,
        Some(turn),
    )
    .map_err(ApiError::from)?;
    if r.state.is_final() {
        return Err(ApiError::from(GuardError::new(
            Guard::State,
            format!("victim status request is {}", r.state.as_str()),
        ))
        .into());
    }
    let step = StatusStep {
        attestation: match command.event {
            AttestDecision::Attest => {
                let (signed, consents) = attestation_of(ctx, tx, &r, issued_at)?;
                // Withdrawing any of these erases the attestation at the requester.
                r.consent_ids = consents;
                Some(signed)
            }
            AttestDecision::Decline => None,
        },
    };
    r.apply(command.event, &step).map_err(ApiError::from)?;
    lifecycle::keep_and_announce(ctx, tx, p, &r, &step)?;
    tx.close_task(TaskKind::AttestVictimStatus, r.status_request_id.uuid())?;
    Ok(r)
}

impl Remedies {
    #[instrument(skip_all)]
    async fn file_claim(&self, request: Request<w::FileClaimRequest>) -> ApiResult<w::Claim> {
        let (p, idem) = authz::caller(&request, Action::FileClaim)?;
        let command: FileClaim = request.get_ref().try_into()?;
        let local = command.forum_country == self.ctx.id;
        if !local {
            disclosure::peer_destination(&self.ctx, "forum_country", command.forum_country)?;
        }
        let claim_id = ClaimId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let c: ClaimRecord = self
            .ctx
            .once(idem, &p, move |tx| match local {
                true => file_local(&ctx, tx, &who, claim_id, &command),
                false => file_abroad(&ctx, tx, &who, claim_id, &command),
            })
            .await?;
        info!(claim_id = %c.claim_id, forum = %c.forum_country, "claim filed");
        Ok(convert::claim_to_wire(&c))
    }

    #[instrument(skip_all)]
    async fn update_claim(&self, request: Request<w::UpdateClaimRequest>) -> ApiResult<w::Claim> {
        let (p, idem) = authz::caller(&request, Action::UpdateClaim)?;
        let command = StepRequest::<ClaimRecord>::try_from(request.get_ref())?;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let c = self
            .ctx
            .once(idem, &p, move |tx| {
                update_claim_in(&ctx, tx, &who, &command)
            })
            .await?;
        Ok(convert::claim_to_wire(&c))
    }

    #[instrument(skip_all)]
    async fn request_victim_status(
        &self,
        request: Request<w::RequestVictimStatusRequest>,
    ) -> ApiResult<w::VictimStatusRequest> {
        let (p, idem) = authz::caller(&request, Action::RequestVictimStatus)?;
        let RequestVictimStatus { subject_id } = request.get_ref().try_into()?;
        let id = StatusRequestId::new();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let r: VictimStatusRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                // A judicial authority reads no case: an unknown id and one this node did
                // not receive from a peer are answered alike.
                let (subject, issuer, case_ref) =
                    received_copy(tx, ctx.id, subject_id)?.ok_or(ApiError::NotFound("case"))?;
                let now = OffsetDateTime::now_utc();
                let r = VictimStatusRecord::requested(id, ctx.id, issuer, case_ref, subject, now);
                tx.put_record(&r)?;
                let query = PeerMessage::VictimStatusQuery {
                    status_request_id: id,
                };
                let message_id = outbox::enqueue(
                    tx,
                    &ctx.identity.current(),
                    issuer,
                    r.topic(),
                    &r.case_ref,
                    trm_proto::peer::to_wire(&query),
                )?;
                tx.audit(
                    AuditRecord::new(actor(&who), "victim_status.request", id.to_string(), "requested")
                        .detail(format!(
                            "subject={subject_id} to={issuer} purpose=legal_remedies message={message_id}"
                        )),
                )?;
                Ok(r)
            })
            .await?;
        info!(status_request_id = %r.status_request_id, to = %r.issuing_country, "victim status requested");
        Ok(convert::status_request_to_wire(&r))
    }

    #[instrument(skip_all)]
    async fn attest_victim_status(
        &self,
        request: Request<w::AttestVictimStatusRequest>,
    ) -> ApiResult<w::VictimStatusRequest> {
        let (p, idem) = authz::caller(&request, Action::AttestVictimStatus)?;
        let command = StepRequest::<VictimStatusRecord>::try_from(request.get_ref())?;
        // Chosen before the transaction, which may run more than once.
        let issued_at = OffsetDateTime::now_utc();
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let r = self
            .ctx
            .once(idem, &p, move |tx| {
                attest_in(&ctx, tx, &who, &command, issued_at)
            })
            .await?;
        info!(status_request_id = %r.status_request_id, state = r.state.as_str(), "victim status answered");
        Ok(convert::status_request_to_wire(&r))
    }
}
