//! The pipelines of every shared record, written once over its lifecycle
//! ([`SharedRecord`](trm_core::exchange::SharedRecord) in trm-core, [`StoredRecord`] in trm-store): a local step (load,
//! authorize, apply, keep, announce), the other node's update, the erasure of the copy a
//! node received, and the confirmation of it. A new shared record implements those two
//! traits, and the services and the federation flows take it through
//! these functions (docs/architecture.md).

use time::OffsetDateTime;
use tonic::Request;
use trm_core::{
    access::{self, Action},
    exchange::{ErasableRecord, StepRequest},
    ids::{CaseId, NodeId, OrgId, Principal, RecordId, Shared},
    FieldError,
};
use trm_federation::{Inbound, Rejection};
use trm_proto::command::{List, Paged};
use trm_store::{repo::flows::StoredRecord, Subject, Tx, TxFail};

use crate::{
    authz,
    ctx::{Ctx, Retryable, TxResult},
    error::{ApiError, ApiResult},
    rpc::{self, Replay, ToWire},
};

/// Loads record `id` of kind `R` in a transaction; NOT_FOUND naming the kind when absent.
pub fn load<R: StoredRecord>(tx: &mut Tx<'_>, id: R::Id) -> TxResult<R> {
    tx.record::<R>(id)?
        .ok_or_else(|| ApiError::NotFound(R::KIND.name()).into())
}

/// A step request of a local client (`action`, of the role table): the caller allowed the
/// action, the request parsed into its step ([`StepRequest`], by trm-proto), then the step
/// taken once whatever the client retries ([`step`]). What every step RPC runs.
pub async fn take<R, Q>(ctx: &Ctx, request: Request<Q>, action: Action) -> ApiResult<R>
where
    R: StepRules + Replay,
    Q: Retryable,
    for<'a> StepRequest<R>: TryFrom<&'a Q, Error = FieldError>,
{
    let (p, idem) = authz::caller(&request, action)?;
    let command = StepRequest::<R>::try_from(request.get_ref())?;
    let (c, who) = (ctx.clone(), p.clone());
    ctx.once(idem, &p, move |tx| step(&c, tx, &who, action, &command))
        .await
}

/// A page of the shared records of kind `R` that the caller may read and find
/// ([`access::readable`], then [`ToWire::listed`] for a kind with rules of its own) and that
/// the request asks for (its statuses, changed since), as the caller sees them
/// ([`ToWire::seen_by`]), their ids audited as read under `<kind>.list`. What every
/// `List*` RPC of a shared record runs. Returns the records and the next page's token.
pub async fn list<R, M>(ctx: &Ctx, request: &Request<M>) -> ApiResult<(Vec<R::Wire>, String)>
where
    R: StoredRecord + ToWire,
    for<'a> List<R::Id, R::Status>: TryFrom<&'a M, Error = FieldError>,
{
    let (p, list) = authz::reader::<M, List<R::Id, R::Status>>(request, R::KIND.info().read)?;
    let Paged { page, after } = &list.paged;
    let limit = page.size + 1;
    let visible = |org: Option<&OrgId>| access::readable(&p, R::KIND, org).is_ok();
    let wanted = |r: &R| -> trm_store::Result<bool> {
        Ok(list.keeps(r.status(), r.updated_at()) && r.listed(ctx, &p)?)
    };
    let (read, _) = ctx
        .store
        .records::<R>(list.direction, *after, limit, visible, wanted)?;
    let (found, token) = rpc::cut(page, read, |r| r.id());
    let seen = found
        .iter()
        .map(|r| r.seen_by(ctx, &p))
        .collect::<ApiResult<Vec<_>>>()?;
    let ids: Vec<String> = found.iter().map(|r| r.id().to_string()).collect();
    let audit = format!("{}.list", R::KIND.code());
    ctx.audit_read(&p, &audit, "-".into(), ids.join(","))
        .await?;
    Ok((seen, token))
}

/// What a record's own rules check before a local step, beyond its state machine and the
/// role table: a return's guards, which hold until departure; the protection a child
/// witness needs. Implemented beside each record's service (most check nothing more).
pub trait StepRules: StoredRecord {
    /// Refuses `event` on the record as it stands (before the step), naming the guard.
    fn check_step(&self, _ctx: &Ctx, _tx: &mut Tx<'_>, _event: Self::Event) -> TxResult<()> {
        Ok(())
    }

    /// What the step changes besides the record, in its transaction (after it): the task
    /// it answers closes.
    fn after_step(&self, _tx: &mut Tx<'_>, _event: Self::Event) -> TxResult<()> {
        Ok(())
    }

    /// The case of this node's own whose return plans' coordination flags the record
    /// decides (a hearing of the case), if any: they are derived again after each step.
    fn coordinated_case(&self, _tx: &mut Tx<'_>) -> trm_store::Result<Option<CaseId>> {
        Ok(None)
    }
}

/// One step of a shared record by a local user (`action`, of the role table): authorised
/// for the caller and the record's side, valid for its state and its own rules
/// ([`StepRules`]), kept and announced to the other node in the caller's transaction.
pub fn step<R: StepRules>(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    action: Action,
    command: &StepRequest<R>,
) -> TxResult<R> {
    let me = ctx.id;
    let mut r = load::<R>(tx, command.id)?;
    let side = r.side(me);
    let turn = R::may_take(command.event, side);
    access::reach(p, action, Some(R::KIND), side, r.owner(), Some(turn)).map_err(ApiError::from)?;
    r.check_step(ctx, tx, command.event)?;
    r.apply(command.event, &command.step)
        .map_err(ApiError::from)?;
    keep_and_announce(ctx, tx, p, &r, &command.step)?;
    r.after_step(tx, command.event)?;
    if let Some(case) = r.coordinated_case(tx)? {
        let by = crate::authz::actor(p);
        crate::returns::refresh_flags(tx, &ctx.identity, (ctx.id, &by), case)?;
    }
    Ok(r)
}

/// Keeps a record that just took a step (`step`) and announces the step to the other node,
/// audited as `p`'s, in `tx`.
pub fn keep_and_announce<R: StoredRecord>(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    r: &R,
    step: &R::Step,
) -> TxResult<()> {
    tx.put_record(r)?;
    ctx.announce(
        tx,
        p,
        r.peer(ctx.id),
        r.topic(),
        r.case_ref(),
        &r.update_message(step),
        R::KIND.update_action(),
        r.status_name(),
    )
}

/// The result of applying what a peer sent.
pub type FlowResult = Result<(), TxFail<Rejection>>;

/// Refuses what a peer sent, for the reason given.
pub fn unknown(why: impl Into<String>) -> TxFail<Rejection> {
    TxFail::Abort(Rejection::UnknownCaseReference(why.into()))
}

/// Refuses a step the record's state machine does not allow.
pub fn transition(why: impl Into<String>) -> TxFail<Rejection> {
    TxFail::Abort(Rejection::InvalidTransition(why.into()))
}

/// The other node's step of a shared record (`status`, with `step`): the record must be
/// shared with the sender, the sender's side may announce that status, and the record's
/// state must lead to it. Returns the record as it now stands.
pub fn update_in<R: StoredRecord>(
    me: NodeId,
    tx: &mut Tx<'_>,
    inbound: &Inbound,
    id: R::Id,
    status: R::Status,
    step: &R::Step,
) -> Result<R, TxFail<Rejection>> {
    let mut r = tx
        .record::<R>(id)?
        .ok_or_else(|| unknown(format!("no such {}", R::KIND.name())))?;
    if r.peer(me) != inbound.sender {
        return Err(unknown(format!(
            "{} not shared with the sender",
            R::KIND.name()
        )));
    }
    let event = R::event_to(status, r.side(inbound.sender))
        .ok_or_else(|| transition(format!("{status:?} from this sender")))?;
    if let Err(g) = r.apply(event, step) {
        // Unless it crossed this node's own last step in transit, and the record settles
        // that crossing.
        if !r.settle_crossing(event, step) {
            return Err(transition(g.reason));
        }
    }
    tx.put_record(&r)?;
    // A record the other node ended waits for no answer here.
    if r.is_final() {
        tx.close_tasks_of(id.to_uuid())?;
    }
    Ok(r)
}

/// At the destination: erases the copy of record `id` of kind `R` received from `sender`
/// (only the pairwise reference is kept, its data key destroyed). Returns whether this
/// node held such a record.
pub fn erase_copy_in<R: StoredRecord + ErasableRecord>(
    me: NodeId,
    tx: &mut Tx<'_>,
    sender: NodeId,
    id: uuid::Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> Result<bool, TxFail<Rejection>> {
    let why = "subject not received from the sender";
    let Some(mut r) = record_between::<R>(tx, id, (sender, me), why)? else {
        return Ok(false);
    };
    r.erase_copy(reason, now);
    tx.shred(&Subject::of_record(R::KIND, id.as_bytes()))?;
    tx.put_record(&r)?;
    tx.record_event(
        trm_core::events::EventKind::Erased,
        trm_core::events::EventRecord::Shared(R::KIND),
        id,
        r.status_name(),
        r.owner(),
    )?;
    tx.close_tasks_of(id)?;
    Ok(true)
}

/// At the origin: the destination (`sender`) confirmed it erased its copy of record `id`.
/// Returns whether this node holds such a record.
pub fn confirm_erasure_in<R: StoredRecord + ErasableRecord>(
    me: NodeId,
    tx: &mut Tx<'_>,
    sender: NodeId,
    id: uuid::Uuid,
) -> Result<bool, TxFail<Rejection>> {
    let why = "subject not sent to the sender";
    let Some(mut r) = record_between::<R>(tx, id, (me, sender), why)? else {
        return Ok(false);
    };
    r.confirm_erasure().map_err(|g| transition(g.reason))?;
    tx.put_record(&r)?;
    Ok(true)
}

/// The record `id` of kind `R` this node holds, sent by `origin` to `destination`: none
/// when it holds no such record, refused (`why`) when its parties are others.
pub(crate) fn record_between<R: StoredRecord>(
    tx: &mut Tx<'_>,
    id: uuid::Uuid,
    (origin, destination): (NodeId, NodeId),
    why: &str,
) -> Result<Option<R>, TxFail<Rejection>> {
    let Some(r) = tx.record::<R>(R::Id::of_uuid(id))? else {
        return Ok(None);
    };
    if r.origin() != origin || r.destination() != destination {
        return Err(unknown(why));
    }
    Ok(Some(r))
}

/// Erases the copy of whichever erasable record `id` names (see [`erase_copy_in`]).
pub fn erase_any_copy(
    me: NodeId,
    tx: &mut Tx<'_>,
    sender: NodeId,
    id: uuid::Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> Result<bool, TxFail<Rejection>> {
    // The records whose copies carry a victim's data (a hearing names none).
    for shared in Shared::every(id) {
        if trm_core::on_shared!(shared, R, _id => erase_copy_in::<R>(me, tx, sender, id, reason, now)?)
        {
            return Ok(true);
        }
    }
    // An attestation travels the other way: the issuer asks the requester.
    crate::remedies::erase_attestation_in(me, tx, sender, id)
}

/// Confirms the erasure of whichever erasable record `id` names (see
/// [`confirm_erasure_in`]).
pub fn confirm_any_erasure(
    me: NodeId,
    tx: &mut Tx<'_>,
    sender: NodeId,
    id: uuid::Uuid,
) -> Result<bool, TxFail<Rejection>> {
    for shared in Shared::every(id) {
        if trm_core::on_shared!(shared, R, _id => confirm_erasure_in::<R>(me, tx, sender, id)?) {
            return Ok(true);
        }
    }
    crate::remedies::confirm_attestation_erased_in(me, tx, sender, id)
}
