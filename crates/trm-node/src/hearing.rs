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
    hearing::{
        check_child_witness, with_child_measures, HearingEvent, HearingParties, HearingRecord,
    },
    ids::{CaseId, HearingId, OrgId, Principal, WitnessRecord},
    referral::ReferralRecord,
    returns::ReturnRecord,
    tasks::TaskKind,
};
use trm_federation::outbox;
use trm_proto::{
    command::RequestHearing,
    convert,
    v1::{self as w, witness_hearing_service_server::WitnessHearingService},
};
use trm_store::{audit::AuditRecord, Store, Tx};

use crate::{
    authz::{self, actor},
    ctx::{Ctx, TxResult},
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

crate::replay_record!(HearingRecord);

impl rpc::ToWire for HearingRecord {
    type Wire = trm_proto::v1::Hearing;
    fn to_wire(&self) -> Self::Wire {
        // Whoever may take a step sees the whole hearing.
        trm_proto::convert::hearing_to_wire(self, false)
    }
    fn seen_by(&self, ctx: &Ctx, p: &Principal) -> ApiResult<Self::Wire> {
        let seen = sight(&ctx.store, ctx.id, p, self)?;
        Ok(convert::hearing_to_wire(self, seen == Sight::Summary))
    }
    fn listed(&self, ctx: &Ctx, p: &Principal) -> trm_store::Result<bool> {
        match sight(&ctx.store, ctx.id, p, self) {
            Ok(_) => Ok(true),
            Err(ApiError::Store(detail)) => Err(trm_store::StoreError::Engine(detail)),
            Err(_) => Ok(false),
        }
    }
}

impl lifecycle::StepRules for HearingRecord {
    /// A child witness is heard only with a guardian and a best-interests determination:
    /// checked when the witness's country accepts or schedules the hearing, on the child's
    /// record it holds (its own case, or the copy a peer sent, which `UpdateCase` keeps
    /// current).
    fn check_step(&self, ctx: &Ctx, tx: &mut Tx<'_>, event: HearingEvent) -> TxResult<()> {
        if !matches!(event, HearingEvent::Accept | HearingEvent::Schedule)
            || self.witness_country != ctx.id
        {
            return Ok(());
        }
        // What the record here says of the person as a child; `None`: it was erased since
        // the request (a copy keeps only its reference), and silence is not an adult.
        let child = match self.subject {
            WitnessRecord::Case(id) => tx.case(id)?.map(|c| Some(c.child)),
            WitnessRecord::Referral(id) => tx
                .record::<ReferralRecord>(id)?
                .and_then(|r| held(r.disclosed)),
            WitnessRecord::Return(id) => tx
                .record::<ReturnRecord>(id)?
                .and_then(|r| held(r.disclosed)),
        };
        match child {
            None => Err(ApiError::from(trm_core::GuardError::new(
                trm_core::Guard::Consent,
                "the witness's record here was erased: a child's guardian and \
                 best-interests determination cannot be checked on it",
            ))
            .into()),
            Some(Some(child)) => Ok(check_child_witness(&child).map_err(ApiError::from)?),
            // The copy does not carry the child category: the requesting node, which holds
            // the case, checked it (`check_child_held_here`).
            Some(None) => Ok(()),
        }
    }

    /// Accepting, declining or scheduling answers the incoming request's task.
    fn after_step(&self, tx: &mut Tx<'_>, event: HearingEvent) -> TxResult<()> {
        if matches!(
            event,
            HearingEvent::Accept | HearingEvent::Decline | HearingEvent::Schedule
        ) {
            tx.close_task(TaskKind::AnswerHearing, self.hearing_id.uuid())?;
        }
        Ok(())
    }

    /// A hearing of a case this node holds sets its return plans' `hearing_pending`.
    fn coordinated_case(&self, tx: &mut Tx<'_>) -> trm_store::Result<Option<CaseId>> {
        crate::returns::case_heard(tx, self.subject)
    }
}

/// What a copy holds of the person as a child, unless it was erased (`None`).
fn held(d: trm_core::model::DisclosedCase) -> Option<Option<trm_core::model::ChildInfo>> {
    (!d.is_tombstone()).then_some(d.child)
}

/// A child witness is heard only with a guardian and a best-interests determination,
/// checked by the node that holds the child's case. When that is this node, the requesting
/// one, the witness's country checks them at accept and schedule on the copy it holds; a
/// copy that does not carry the child category (the consent left it out, or the copy is
/// being erased) says nothing of them, so this node checks them here, when the hearing is
/// requested.
fn check_child_held_here(
    tx: &mut Tx<'_>,
    record: WitnessRecord,
    witness_country: trm_core::ids::NodeId,
) -> TxResult<()> {
    let case_id = crate::returns::case_heard(tx, record)?;
    let Some(case) = case_id.map(|id| tx.case(id)).transpose()?.flatten() else {
        return Ok(());
    };
    if !case.child.is_child {
        return Ok(());
    }
    let copies = crate::disclosure::copies_held_by(tx, case.case_id, witness_country)?;
    if !copies.is_empty() && copies.iter().all(|c| c.child.is_some()) {
        return Ok(());
    }
    check_child_witness(&case.child).map_err(ApiError::from)?;
    Ok(())
}

crate::grpc_service!(Hearings => WitnessHearingService {
    request_hearing(w::RequestHearingRequest) -> w::Hearing;
} steps of HearingRecord {
    respond_to_hearing(w::RespondToHearingRequest) -> w::Hearing = AnswerHearing;
    record_hearing_outcome(w::RecordHearingOutcomeRequest) -> w::Hearing = RecordHearingOutcome;
    cancel_hearing(w::CancelHearingRequest) -> w::Hearing = CancelHearing;
} reads of HearingRecord {
    get get_hearing(w::GetHearingRequest) -> w::Hearing;
    list list_hearings(w::ListHearingsRequest) -> w::ListHearingsResponse { hearings };
});

impl Hearings {
    #[instrument(skip_all)]
    async fn request_hearing(
        &self,
        request: Request<w::RequestHearingRequest>,
    ) -> ApiResult<w::Hearing> {
        let (p, idem) = authz::caller(&request, Action::RequestHearing)?;
        let RequestHearing {
            subject_id,
            witness_country,
            terms,
        } = request.get_ref().try_into()?;
        crate::disclosure::peer_destination(&self.ctx, "witness_country", witness_country)?;
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
                check_child_held_here(tx, s.record, witness_country)?;
                let parties = HearingParties {
                    hearing_id,
                    requesting_country: ctx.id,
                    witness_country,
                    case_ref,
                    subject: s.record,
                };
                let mut terms = terms.clone();
                terms.measures = with_child_measures(s.is_child, &terms.measures);
                let record = HearingRecord::requested(parties, terms, OffsetDateTime::now_utc());
                tx.put_hearing(&record)?;
                let message_id = outbox::enqueue(
                    tx,
                    &ctx.identity.current(),
                    witness_country,
                    record.topic(),
                    &record.case_ref,
                    trm_proto::peer::to_wire(&record.request_message()),
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
                        record.legal_basis.len()
                    )),
                )?;
                crate::returns::after_hearing(tx, &ctx.identity, (ctx.id, &actor(&who)), &record)?;
                Ok(record)
            })
            .await?;
        info!(hearing_id = %record.hearing_id, to = %witness_country, "hearing requested");
        Ok(convert::hearing_to_wire(&record, false))
    }
}
