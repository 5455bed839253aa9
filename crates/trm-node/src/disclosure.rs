//! A disclosure leaving this node: the purpose's allowance intersected with the victim's
//! consent, under the pairwise reference of (case, recipient), recorded on the consents it
//! relies on (so withdrawing one erases it at the recipient) and sent with its audit entry
//! in the caller's transaction.

use trm_core::{
    consent,
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
pub fn shared_of_case(tx: &mut Tx<'_>, case: CaseId) -> TxResult<Vec<Shared>> {
    let mut shared = Vec::new();
    for c in tx.consents(case)? {
        shared.extend(tx.disclosures(c.consent_id)?);
    }
    shared.sort();
    shared.dedup();
    Ok(shared)
}

/// Loads a case inside a transaction; NOT_FOUND when absent.
pub fn load_case(tx: &mut Tx<'_>, id: CaseId) -> TxResult<CaseRecord> {
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
    let case = load_case(tx, case_id)?;
    trm_core::access::require_owner(p, Some(&case.organisation)).map_err(ApiError::from)?;
    guards(tx, &case)?;
    let consents = tx.consents(case_id)?;
    let grant = consent::grant(&consents, purpose, recipient, today()).map_err(ApiError::from)?;
    let case_ref = tx.case_ref_or_new(case_id, recipient)?;
    let disclosed = policy::disclose(&case, purpose, &grant.categories, case_ref.clone(), today());
    Ok(Disclosure {
        case,
        purpose,
        recipient,
        case_ref,
        disclosed,
        consent_ids: grant.consent_ids,
    })
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
        let (topic, subject) = match shared {
            Shared::Referral(id) => (Topic::Referral(id), id.to_string()),
            Shared::Return(id) => (Topic::Return(id), id.to_string()),
        };
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
