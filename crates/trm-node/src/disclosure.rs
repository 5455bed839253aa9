//! A disclosure leaving this node: the purpose's allowance intersected with the victim's
//! consent, under the pairwise reference of (case, recipient), recorded on the consents it
//! relies on (so withdrawing one erases it at the recipient) and sent with its audit entry
//! in the caller's transaction.

use trm_core::{
    access::Action,
    consent,
    exchange::{ErasableRecord, SharedRecord},
    ids::{CaseId, ConsentId, NodeId, Principal, Shared},
    messages::PeerMessage,
    messages::Topic,
    model::{CaseRecord, DisclosedCase, Purpose},
    policy, FieldError,
};
use trm_federation::outbox;
use trm_store::{audit::AuditRecord, Tx};

use crate::{
    authz::actor,
    ctx::{today, Ctx, TxResult},
    error::{ApiError, ApiResult},
};

/// Parses a destination that must be a peer of this node; `field` names it in the error.
pub fn peer_destination(ctx: &Ctx, field: &str, destination: NodeId) -> ApiResult<()> {
    if destination == ctx.id || ctx.directory.get(destination).is_none() {
        return Err(FieldError::new(field, "is not a peer of this node").into());
    }
    Ok(())
}

/// Returns every record this node sent with data of case `case`, under any of its
/// consents (each once).
pub fn shared_of_case(tx: &mut Tx<'_>, case: CaseId) -> trm_store::Result<Vec<Shared>> {
    let consents = tx.consents(case)?;
    shared_under(tx, &consents)
}

/// Returns every record this node sent under any of `consents` (each once), for a caller
/// that holds the case's consents already.
pub fn shared_under(
    tx: &mut Tx<'_>,
    consents: &[consent::Consent],
) -> trm_store::Result<Vec<Shared>> {
    let mut shared = Vec::new();
    for c in consents {
        shared.extend(tx.disclosures(c.consent_id)?);
    }
    shared.sort();
    shared.dedup();
    Ok(shared)
}

/// After a change of `case`, brings every copy this node sent of it up to date: each
/// referral or return plan whose consent still covers its purpose and recipient, and whose
/// erasure was not asked for, gets what the purpose and the consent allow of the case as
/// it now stands, sent to the recipient as a copy update and audited (field names only).
/// Returns how many copies changed.
pub fn refresh_copies(
    ctx: &Ctx,
    tx: &mut Tx<'_>,
    p: &Principal,
    case: &CaseRecord,
) -> TxResult<usize> {
    let consents = tx.consents(case.case_id)?;
    let mut sent = 0;
    for shared in shared_under(tx, &consents)? {
        let Some((purpose, recipient, held)) = copy_in_use(tx, shared)? else {
            continue;
        };
        // A copy whose consent lapsed is being erased, not updated.
        let Ok(grant) = consent::grant(&consents, purpose, recipient, today()) else {
            continue;
        };
        let now = disclosed(case, purpose, &grant, held.case_ref.clone());
        if now == held {
            continue;
        }
        // The copy now relies on every consent the grant combined: withdrawing any of them
        // erases it.
        for c in &grant.consent_ids {
            tx.record_disclosure(*c, shared)?;
        }
        keep_copy(tx, shared, &now, &grant.consent_ids)?;
        let topic = Topic::from(shared);
        let message = PeerMessage::CopyUpdate {
            subject: shared,
            disclosed: now.clone(),
        };
        let message_id = outbox::enqueue(
            tx,
            &ctx.identity.current(),
            recipient,
            topic,
            &now.case_ref,
            trm_proto::peer::to_wire(&message),
        )?;
        let fields: Vec<&str> = policy::fields_present(&now)
            .iter()
            .map(|f| f.path())
            .collect();
        tx.audit(
            AuditRecord::new(actor(p), "case.copy_update", topic.to_string(), "sent").detail(
                format!(
                    "case={} to={recipient} purpose={} message={message_id} fields={}",
                    case.case_id,
                    purpose.as_str(),
                    fields.join(",")
                ),
            ),
        )?;
        sent += 1;
    }
    Ok(sent)
}

/// Returns what the copies of case `case_id` that `peer` holds and still uses carry, as
/// this node sent them (a copy being erased is not counted).
pub fn copies_held_by(
    tx: &mut Tx<'_>,
    case_id: CaseId,
    peer: NodeId,
) -> TxResult<Vec<DisclosedCase>> {
    let mut held = Vec::new();
    for shared in shared_of_case(tx, case_id)? {
        if let Some((_, recipient, copy)) = copy_in_use(tx, shared)? {
            if recipient == peer {
                held.push(copy);
            }
        }
    }
    Ok(held)
}

/// The purpose, recipient and held data of the copy `shared` this node sent, while it is
/// still in use ([`ErasableRecord::copy_in_use`]) and its erasure was not asked for.
fn copy_in_use(
    tx: &mut Tx<'_>,
    shared: Shared,
) -> TxResult<Option<(Purpose, NodeId, DisclosedCase)>> {
    trm_core::on_shared!(shared, R, id => Ok(tx
        .record::<R>(id)?
        .filter(|r| !r.erasure().requested() && r.copy_in_use())
        .map(|r| (R::PURPOSE, r.destination(), r.disclosed().clone()))))
}

/// Keeps, in this node's record of a copy it sent, what the copy now holds and the
/// consents it relies on.
fn keep_copy(
    tx: &mut Tx<'_>,
    shared: Shared,
    now: &DisclosedCase,
    consents: &[ConsentId],
) -> TxResult<()> {
    trm_core::on_shared!(shared, R, id => {
        if let Some(mut r) = tx.record::<R>(id)? {
            *r.disclosed_mut() = now.clone();
            let held = r.consent_ids_mut();
            for c in consents {
                if !held.contains(c) {
                    held.push(*c);
                }
            }
            tx.put_record(&r)?;
        }
    });
    Ok(())
}

/// Loads a case inside a transaction; NOT_FOUND when absent.
pub fn load_case(tx: &mut Tx<'_>, id: CaseId) -> TxResult<CaseRecord> {
    // With its consents, which most steps on a case read next: one round trip.
    tx.prefetch_case(id)?;
    tx.case(id)?
        .ok_or_else(|| ApiError::NotFound("case").into())
}

/// What is about to cross for one purpose to one recipient.
#[derive(Debug)]
pub struct Disclosure {
    pub case: CaseRecord,
    pub purpose: Purpose,
    pub recipient: NodeId,
    pub case_ref: String,
    pub disclosed: DisclosedCase,
    pub consent_ids: Vec<ConsentId>,
}

/// Prepares a disclosure of case `case_id` inside `tx`: the principal must look after the
/// case, `guards` must pass (the flow's own preconditions), and an active consent must cover
/// `purpose` to `recipient` (the `consent` guard otherwise).
pub fn prepare(
    tx: &mut Tx<'_>,
    p: &Principal,
    case_id: CaseId,
    purpose: Purpose,
    recipient: NodeId,
    guards: impl Fn(&mut Tx<'_>, &CaseRecord) -> TxResult<()>,
) -> TxResult<Disclosure> {
    tx.prefetch_disclosure(case_id, recipient)?;
    let case = load_case(tx, case_id)?;
    trm_core::access::require_owner(p, Some(&case.organisation)).map_err(ApiError::from)?;
    guards(tx, &case)?;
    let consents = tx.consents(case_id)?;
    let grant = consent::grant(&consents, purpose, recipient, today()).map_err(ApiError::from)?;
    let case_ref = tx.case_ref_or_new(case_id, recipient)?;
    let disclosed = disclosed(&case, purpose, &grant, case_ref.clone());
    Ok(Disclosure {
        case,
        purpose,
        recipient,
        case_ref,
        disclosed,
        consent_ids: grant.consent_ids,
    })
}

/// What crosses for `purpose` under `grant`: the one computation behind a disclosure and
/// its preview.
fn disclosed(
    case: &CaseRecord,
    purpose: Purpose,
    grant: &consent::Grant,
    case_ref: String,
) -> DisclosedCase {
    policy::disclose(case, purpose, &grant.categories, case_ref, today())
}

/// What a disclosure of case `case_id` for `purpose` to `recipient` would hold if it were
/// sent now, for the person about to send it (the console's "what will cross the border"),
/// without sending anything or minting a reference: the pair's `case_ref` where one exists,
/// else empty. Refused like the disclosure itself (owner, `consent` guard); audited as a
/// read of the case.
pub async fn preview(
    ctx: &Ctx,
    p: &Principal,
    case_id: CaseId,
    purpose: Purpose,
    recipient: NodeId,
) -> ApiResult<DisclosedCase> {
    // Who may send this disclosure may see it first; no one else (the owner check below
    // lets every node-wide role through).
    let action = match purpose {
        Purpose::ReferralAssistance => Action::SubmitReferral,
        Purpose::ReturnPlanning => Action::ProposeReturn,
        _ => return Err(FieldError::new("purpose", "has no preview").into()),
    };
    trm_core::access::require(p, action)?;
    peer_destination(ctx, "destination", recipient)?;
    let case = ctx.store.case(case_id)?.ok_or(ApiError::NotFound("case"))?;
    trm_core::access::require_owner(p, Some(&case.organisation))?;
    let consents = ctx.store.consents(case_id)?;
    let grant = consent::grant(&consents, purpose, recipient, today())?;
    let case_ref = ctx.store.case_ref(case_id, recipient)?.unwrap_or_default();
    ctx.audit_read(
        p,
        "case.preview",
        case_id.to_string(),
        format!("purpose={purpose:?} recipient={recipient}"),
    )
    .await?;
    Ok(disclosed(&case, purpose, &grant, case_ref))
}

impl Disclosure {
    /// Records `shared` under the consents the disclosure relies on, queues `message` to the
    /// recipient and audits `action` with the fields that crossed (names, never values).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        self,
        tx: &mut Tx<'_>,
        ctx: &Ctx,
        p: &Principal,
        shared: Shared,
        message: &PeerMessage,
        action: &str,
        outcome: &str,
        detail: &str,
    ) -> TxResult<()> {
        for c in &self.consent_ids {
            tx.record_disclosure(*c, shared)?;
        }
        let topic = Topic::from(shared);
        let subject = topic.to_string();
        let message_id = outbox::enqueue(
            tx,
            &ctx.identity.current(),
            self.recipient,
            topic,
            &self.case_ref,
            trm_proto::peer::to_wire(message),
        )?;
        let fields: Vec<&str> = policy::fields_present(&self.disclosed)
            .iter()
            .map(|f| f.path())
            .collect();
        tx.audit(
            AuditRecord::new(actor(p), action, subject, outcome).detail(format!(
                "case={} to={} purpose={} message={message_id} fields={} {detail}",
                self.case.case_id,
                self.recipient,
                self.purpose.as_str(),
                fields.join(","),
            )),
        )?;
        Ok(())
    }
}
