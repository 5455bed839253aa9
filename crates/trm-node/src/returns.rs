//! `ReturnPlanningService`: safe, voluntary return between the country where the victim is
//! (the requesting side) and the country of return. Risk assessments and the victim's
//! decision are recorded on the case; `ProposeReturn` checks every guard and the consent
//! before anything leaves; each later step is carried to the other node.

use time::OffsetDateTime;
use tonic::Request;
use tracing::{info, instrument};
use trm_core::{
    access::{self, Action},
    consent,
    exchange::{Erasure, SharedRecord},
    hearing::HearingRecord,
    ids::{AssessmentId, CaseId, NodeId, Principal, ReturnId, Shared, WitnessRecord},
    messages::PeerMessage,
    model::{CaseRecord, Purpose},
    referral::ReferralRecord,
    returns::{
        check_guards, check_risk, ReturnDecision, ReturnEvent, ReturnRecord, ReturnStatus,
        RiskAssessment, StepDetails,
    },
    tasks::{due, Task, TaskKind},
    GuardError,
};
use trm_proto::{
    command::ProposeReturn,
    convert,
    v1::{self as w, return_planning_service_server::ReturnPlanningService},
};
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::{self, actor},
    ctx::{today, Ctx, TxResult},
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
}

/// The guards of a return of `case` on its latest risk assessment and decision (`days`:
/// the node's reflection period): a storage fault is the outer error, a refusal the inner.
fn guards_of(days: u32, tx: &mut Tx<'_>, case: &CaseRecord) -> TxResult<Result<(), GuardError>> {
    let risk = tx.risk_assessments(case.case_id)?;
    let decisions = tx.return_decisions(case.case_id)?;
    Ok(check_guards(
        case,
        risk.last(),
        decisions.last(),
        days,
        today(),
    ))
}

/// Halts every return of case `case` this node requested that has not left yet (`to`: only
/// those to that country), HALTED with the word of `why`'s guard as reason, told to the other
/// node, audited as `p`'s. Returns how many.
pub(crate) fn halt_open_returns(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    case: CaseId,
    to: Option<NodeId>,
    why: &GuardError,
) -> TxResult<usize> {
    let mut halted = 0;
    for shared in disclosure::shared_of_case(tx, case)? {
        let Shared::Return(id) = shared else { continue };
        let Some(mut r) = tx.record::<ReturnRecord>(id)? else {
            continue;
        };
        if r.origin != ctx.id
            || !r.status.before_departure()
            || to.is_some_and(|to| r.destination != to)
        {
            continue;
        }
        let step = StepDetails {
            // The guard's word only: why it tripped (an asylum claim, a risk to the family)
            // is the victim's and never reaches the country of return.
            reason: why.guard.as_str().to_owned(),
            ..Default::default()
        };
        r.apply(ReturnEvent::Halt, &step).map_err(ApiError::from)?;
        lifecycle::keep_and_announce(ctx, tx, p, &r, &step)?;
        lifecycle::StepRules::after_step(&r, tx, ReturnEvent::Halt)?;
        halted += 1;
    }
    Ok(halted)
}

/// Returns whether a hearing of case `case` is open on this node, either direction (the
/// hearing names the case, or a referral or plan of it).
fn hearing_pending(tx: &mut Tx<'_>, case: CaseId) -> trm_store::Result<bool> {
    for h in tx.records_where::<HearingRecord>(|h| !h.status.is_final())? {
        if case_heard(tx, h.subject)? == Some(case) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// At the country of return: a plan `plan` of the person this node knows by `subject` (the
/// record received under the plan's reference) arrived; a judicial authority here that asked
/// to hear that person in a hearing still open is told (a task).
pub(crate) fn tell_of_arriving_witness(
    tx: &mut Tx<'_>,
    me: NodeId,
    subject: WitnessRecord,
    plan: ReturnId,
    now: OffsetDateTime,
) -> trm_store::Result<()> {
    let asked = tx.records_where::<HearingRecord>(|h| {
        !h.status.is_final() && h.requesting_country == me && h.subject == subject
    })?;
    if !asked.is_empty() {
        tell_prosecutor(tx, plan, now)?;
    }
    Ok(())
}

/// Returns the case of this node's own a hearing's subject is (none for a copy received
/// from a peer, or an erased record).
pub(crate) fn case_heard(
    tx: &mut Tx<'_>,
    subject: WitnessRecord,
) -> trm_store::Result<Option<CaseId>> {
    Ok(match subject {
        WitnessRecord::Case(c) => Some(c),
        WitnessRecord::Referral(id) => tx.record::<ReferralRecord>(id)?.and_then(|r| r.case_id),
        WitnessRecord::Return(id) => tx.record::<ReturnRecord>(id)?.and_then(|r| r.case_id),
    })
}

/// After hearing `h` opened or ended here (by `by`, as the audit names it): the open
/// return plans of its case proposed by this node take their coordination flags again
/// ([`refresh_flags`]).
pub(crate) fn after_hearing(
    tx: &mut Tx<'_>,
    signer: &trm_crypto::signing::Signer,
    (me, by): (NodeId, &str),
    h: &HearingRecord,
) -> trm_store::Result<()> {
    match case_heard(tx, h.subject)? {
        Some(case) => refresh_flags(tx, signer, (me, by), case),
        None => Ok(()),
    }
}

/// After claim `c` opened or ended here (by `by`): the open return plans of its case, if
/// this node holds the case, take their coordination flags again ([`refresh_flags`]).
pub(crate) fn after_claim(
    tx: &mut Tx<'_>,
    signer: &trm_crypto::signing::Signer,
    (me, by): (NodeId, &str),
    c: &trm_core::remedies::ClaimRecord,
) -> trm_store::Result<()> {
    match c.case_id {
        Some(case) => refresh_flags(tx, signer, (me, by), case),
        None => Ok(()),
    }
}

/// Derives again the coordination flags of every open return plan of case `case` that this
/// node proposed (a hearing or a compensation claim of the case opened or ended since): a
/// plan whose flags changed is kept and its destination told (`ReturnUpdate` with `flags`),
/// so that both nodes show them while, and only while, the hearing or claim is open.
/// Audited as `by`'s (the user or peer whose step changed them).
pub(crate) fn refresh_flags(
    tx: &mut Tx<'_>,
    signer: &trm_crypto::signing::Signer,
    (me, by): (NodeId, &str),
    case: CaseId,
) -> trm_store::Result<()> {
    // The case's own plans, found through its index (never by reading every plan).
    let consents = tx.consents(case)?;
    let mut open = Vec::new();
    for shared in disclosure::shared_under(tx, &consents)? {
        let Shared::Return(id) = shared else { continue };
        if let Some(r) = tx.record::<ReturnRecord>(id)? {
            if r.origin == me && !r.status.is_final() {
                open.push(r);
            }
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    let flags = (
        hearing_pending(tx, case)?,
        crate::remedies::open_claims_of(tx, case)? > 0,
    );
    for mut r in open {
        if (r.hearing_pending, r.compensation_pending) == flags {
            continue;
        }
        (r.hearing_pending, r.compensation_pending) = flags;
        r.updated_at = OffsetDateTime::now_utc();
        tx.put_record(&r)?;
        // Nothing more crosses for a plan whose consent lapsed (it is being halted or
        // erased): the flags are kept here only.
        let granted =
            consent::grant(&consents, Purpose::ReturnPlanning, r.destination, today()).is_ok();
        if granted {
            let message = PeerMessage::ReturnFlags {
                return_id: r.return_id,
                hearing_pending: flags.0,
                compensation_pending: flags.1,
            };
            trm_federation::outbox::enqueue(
                tx,
                &signer.current(),
                r.destination,
                r.topic(),
                &r.disclosed.case_ref,
                trm_proto::peer::to_wire(&message),
            )?;
        }
        tx.audit(
            AuditRecord::new(by, "return.flags", r.return_id.to_string(), "updated").detail(
                format!(
                    "hearing_pending={} compensation_pending={} sent={granted}",
                    flags.0, flags.1
                ),
            ),
        )?;
    }
    Ok(())
}

/// Returns whether a hearing of case `case` is open on this node; if one is, the
/// judicial authority that asked to hear the person is told of its return `plan` (a task).
fn tell_of_witness(
    tx: &mut Tx<'_>,
    me: NodeId,
    case: CaseId,
    plan: ReturnId,
    now: OffsetDateTime,
) -> TxResult<bool> {
    // A hearing of the case open in either direction is pending; only one a judicial
    // authority here asked for is told here (one the other country asked for is told
    // there, when the plan arrives).
    let (mut witness, mut asked_here) = (false, false);
    for h in tx.records_where::<HearingRecord>(|h| !h.status.is_final())? {
        if case_heard(tx, h.subject)? == Some(case) {
            witness = true;
            asked_here |= h.requesting_country == me;
        }
    }
    if asked_here {
        tell_prosecutor(tx, plan, now)?;
    }
    Ok(witness)
}

/// Opens the task that tells the judicial authorities of this node of the return `plan` of
/// a witness they asked to hear.
fn tell_prosecutor(tx: &mut Tx<'_>, plan: ReturnId, now: OffsetDateTime) -> trm_store::Result<()> {
    tx.open_task(&Task::due_in(
        TaskKind::ReturnOfWitnessProposed,
        plan.uuid(),
        due::REVIEW,
        now,
    ))
}

impl lifecycle::StepRules for ReturnRecord {
    /// Scheduling and travel check every guard of the return again, on the case as it
    /// stands now: a risk found, a decision taken back or the consent withdrawn since the
    /// plan was requested stops the person from leaving.
    fn check_step(&self, ctx: &Ctx, tx: &mut Tx<'_>, event: ReturnEvent) -> TxResult<()> {
        if !matches!(event, ReturnEvent::Schedule | ReturnEvent::Travel) {
            return Ok(());
        }
        // A plan whose case was erased is already ended.
        let Some(case_id) = self.case_id else {
            return Ok(());
        };
        let case = load_case(tx, case_id)?;
        guards_of(ctx.reflection_period_days, tx, &case)?.map_err(ApiError::from)?;
        crate::safety::check_returns(tx, ctx.id, case_id, self.destination)?
            .map_err(ApiError::from)?;
        let consents = tx.consents(case_id)?;
        let grant = consent::grant(
            &consents,
            Purpose::ReturnPlanning,
            self.destination,
            today(),
        )
        .map_err(ApiError::from)?;
        // The plan goes on under these consents, whichever it was requested under (that one
        // may have lapsed): withdrawing any of them halts it and erases the copy.
        for c in grant.consent_ids {
            tx.record_disclosure(c, trm_core::ids::Shared::Return(self.return_id))?;
        }
        Ok(())
    }

    /// Confirming reception or raising a concern answers the incoming request's task; once
    /// the person has left (or the plan ended), the witness's prosecutor has nothing left
    /// to weigh.
    fn after_step(&self, tx: &mut Tx<'_>, event: ReturnEvent) -> TxResult<()> {
        if matches!(
            event,
            ReturnEvent::ConfirmReception | ReturnEvent::RaiseConcern
        ) {
            tx.close_task(TaskKind::AnswerReturn, self.return_id.uuid())?;
        }
        if !self.status.before_departure() {
            tx.close_task(TaskKind::ReturnOfWitnessProposed, self.return_id.uuid())?;
        }
        Ok(())
    }
}

/// The guards of a return of case `case_id` to `destination`, each on its own, as the
/// console's checklist shows them: those of the case, then the consent for return planning
/// to that country and the safety alerts naming it. Only for who may read the case (its
/// organisation's provider, a focal point); read and audited in one transaction.
pub async fn guard_checklist(
    ctx: &Ctx,
    p: &Principal,
    case_id: CaseId,
    destination: NodeId,
) -> ApiResult<Vec<trm_core::returns::GuardCheck>> {
    access::require(p, Action::ReadCase)?;
    let (c, who) = (ctx.clone(), p.clone());
    ctx.commit(move |tx| {
        let case = load_case(tx, case_id)?;
        access::require_owner(&who, Some(&case.organisation)).map_err(ApiError::from)?;
        let risk = tx.risk_assessments(case_id)?;
        let decisions = tx.return_decisions(case_id)?;
        let mut list = trm_core::returns::guard_checklist(
            &case,
            risk.last(),
            decisions.last(),
            c.reflection_period_days,
            today(),
        );
        let consents = tx.consents(case_id)?;
        list.push(trm_core::returns::GuardCheck {
            guard: trm_core::Guard::Consent,
            asks: "the victim's consent to return planning with the country of return",
            refusal: consent::grant(&consents, Purpose::ReturnPlanning, destination, today()).err(),
        });
        list.push(trm_core::returns::GuardCheck {
            guard: trm_core::Guard::SafetyAlert,
            asks: "no safety alert naming the country of return, or a risk assessment since",
            refusal: crate::safety::check_returns(tx, c.id, case_id, destination)?.err(),
        });
        tx.audit(
            AuditRecord::new(actor(&who), "return.checklist", case_id.to_string(), "ok")
                .detail(format!("to={destination}")),
        )?;
        Ok(list)
    })
    .await
}

/// Returns the items a case keeps of one kind with `item` added last: at most the latest
/// [`MAX_ITEMS`](trm_core::limits::MAX_ITEMS), the oldest dropped. A new assessment or
/// decision is never refused for the number before it: it may be the one that stops a
/// return, and the guards read only the latest.
fn with_one_more<T>(mut all: Vec<T>, item: T) -> Vec<T> {
    all.push(item);
    let extra = all.len().saturating_sub(trm_core::limits::MAX_ITEMS);
    all.drain(..extra);
    all
}

impl Replay for RiskAssessment {
    fn key(&self) -> String {
        format!("{}/{}", self.case_id, self.assessment_id)
    }
    fn replay(ctx: &Ctx, key: &str) -> ApiResult<Self> {
        let (case, id): (_, AssessmentId) = rpc::case_key(key, "risk assessment")?;
        ctx.store
            .risk_assessments(case)?
            .into_iter()
            .find(|a| a.assessment_id == id)
            .ok_or(ApiError::NotFound("risk assessment"))
    }
}

crate::replay_record!(ReturnRecord, read "return.read");

impl rpc::ToWire for ReturnRecord {
    type Wire = trm_proto::v1::ReturnPlan;
    fn to_wire(&self) -> Self::Wire {
        trm_proto::convert::return_to_wire(self)
    }
    /// An immigration authority sees what crossed for travel documents and the plan's
    /// course, never the victim's needs, exploitation or follow-up notes.
    fn seen_by(&self, _: &Ctx, p: &Principal) -> ApiResult<Self::Wire> {
        Ok(trm_proto::convert::return_to_wire(
            &access::return_plan_seen_by(p, self),
        ))
    }
}

crate::grpc_service!(Returns => ReturnPlanningService {
    record_risk_assessment(w::RecordRiskAssessmentRequest) -> w::RiskAssessment;
    record_return_decision(w::RecordReturnDecisionRequest) -> w::ReturnDecision;
    propose_return(w::ProposeReturnRequest) -> w::ReturnPlan;
} steps of ReturnRecord {
    respond_to_return(w::RespondToReturnRequest) -> w::ReturnPlan = AnswerReturn;
    schedule_return(w::ScheduleReturnRequest) -> w::ReturnPlan = ScheduleReturn;
    confirm_arrival(w::ConfirmArrivalRequest) -> w::ReturnPlan = ConfirmArrival;
    record_follow_up(w::RecordFollowUpRequest) -> w::ReturnPlan = RecordFollowUp;
    halt_return(w::HaltReturnRequest) -> w::ReturnPlan = HaltReturn;
    record_travel(w::RecordTravelRequest) -> w::ReturnPlan = RecordTravel;
    resolve_concern(w::ResolveConcernRequest) -> w::ReturnPlan = ResolveConcern;
    close_return(w::CloseReturnRequest) -> w::ReturnPlan = CloseReturn;
} reads of ReturnRecord {
    get get_return_plan(w::GetReturnPlanRequest) -> w::ReturnPlan;
    list list_return_plans(w::ListReturnPlansRequest) -> w::ListReturnPlansResponse { return_plans };
});

impl Returns {
    #[instrument(skip_all)]
    async fn record_risk_assessment(
        &self,
        request: Request<w::RecordRiskAssessmentRequest>,
    ) -> ApiResult<w::RiskAssessment> {
        let (p, idem) = authz::caller(&request, Action::RecordRiskAssessment)?;
        let assessment = RiskAssessment::try_from(request.get_ref())?;
        let case_id = assessment.case_id;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let assessment: RiskAssessment = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                access::require_owner(&who, Some(&case.organisation)).map_err(ApiError::from)?;
                let all = with_one_more(tx.risk_assessments(case_id)?, assessment.clone());
                tx.put_risk_assessments(case_id, &all)?;
                // A risk found stops every return of the case not yet under way.
                let halted = match check_risk(&assessment) {
                    Ok(()) => 0,
                    Err(why) => halt_open_returns(&ctx, tx, &who, case_id, None, &why)?,
                };
                tx.audit(
                    AuditRecord::new(
                        actor(&who),
                        "risk.record",
                        assessment.assessment_id.to_string(),
                        "ok",
                    )
                    .detail(format!("case={case_id} returns_halted={halted}")),
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
        let (p, idem) = authz::caller(&request, Action::RecordReturnDecision)?;
        let decision = ReturnDecision::try_from(request.get_ref())?;
        let case_id = decision.case_id;
        let (record, who, ctx) = (decision.clone(), p.clone(), self.ctx.clone());
        let _: Remembered = self
            .ctx
            .once(idem, &p, move |tx| {
                let case = load_case(tx, case_id)?;
                access::require_owner(&who, Some(&case.organisation)).map_err(ApiError::from)?;
                let all = with_one_more(tx.return_decisions(case_id)?, record.clone());
                tx.put_return_decisions(case_id, &all)?;
                // A decision withdrawn or changed so that a return no longer holds (not
                // voluntary, not informed, a waiver taken back) stops every return of the
                // case not yet under way.
                let halted = match guards_of(ctx.reflection_period_days, tx, &case)? {
                    Ok(()) => 0,
                    Err(why) => halt_open_returns(&ctx, tx, &who, case_id, None, &why)?,
                };
                tx.audit(
                    AuditRecord::new(actor(&who), "return.decision", case_id.to_string(), "ok")
                        .detail(format!("returns_halted={halted}")),
                )?;
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
        let (p, idem) = authz::caller(&request, Action::ProposeReturn)?;
        let req: ProposeReturn = request.get_ref().try_into()?;
        let (case_id, destination) = (req.case_id, req.destination);
        disclosure::peer_destination(&self.ctx, "destination", destination)?;
        let return_id = ReturnId::new();
        let reflection_days = self.ctx.reflection_period_days;
        let (ctx, who) = (self.ctx.clone(), p.clone());
        let r: ReturnRecord = self
            .ctx
            .once(idem, &p, move |tx| {
                // Every guard of the return, on the latest assessment and decision.
                let me = ctx.id;
                let guards = |tx: &mut Tx<'_>, case: &CaseRecord| -> TxResult<()> {
                    guards_of(reflection_days, tx, case)?.map_err(ApiError::from)?;
                    crate::safety::check_returns(tx, me, case.case_id, destination)?
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
                let witness = tell_of_witness(tx, ctx.id, case_id, return_id, now)?;
                let record = ReturnRecord {
                    return_id,
                    origin: ctx.id,
                    destination,
                    status: ReturnStatus::Requested,
                    disclosed: d.disclosed.clone(),
                    // Derived, never typed in: a hearing of the case open on this node.
                    hearing_pending: witness,
                    // Derived, never typed in: a claim of the case open on this node.
                    compensation_pending: crate::remedies::open_claims_of(tx, case_id)? > 0,
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
                    risk_assessed_at: tx.risk_assessments(case_id)?.last().map(|r| r.recorded_at),
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
}
