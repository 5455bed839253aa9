//! A disclosure leaving this node: the purpose's allowance intersected with the victim's
//! consent, under the pairwise reference of (case, recipient), recorded on the consents it
//! relies on (so withdrawing one erases it at the recipient) and sent with its audit entry
//! in the caller's transaction.

use trm_core::{
    consent::{self, Consent},
    ids::{NodeId, Principal},
    model::{CaseRecord, DisclosedCase, Purpose},
    policy, FieldError,
};
use trm_federation::outbox;
use trm_proto::v1::envelope_body::Payload;
use trm_store::{audit::AuditRecord, Subject, TreeName, Tx};
use uuid::Uuid;

use crate::{
    authz::{actor, require_org},
    ctx::{case_ref_for, consents_of, load_case, today, Ctx, TxResult},
    error::{ApiError, ApiResult},
};

/// Parses a destination that must be a peer of this node; `field` names it in the error.
pub fn peer_destination(ctx: &Ctx, field: &str, s: &str) -> ApiResult<NodeId> {
    let destination = trm_proto::convert::country(field, s)?;
    if destination == ctx.id || ctx.directory.get(destination).is_none() {
        return Err(FieldError::new(field, "is not a peer of this node").into());
    }
    Ok(destination)
}

/// What is about to cross for one purpose to one recipient.
#[derive(Debug)]
pub struct Disclosure {
    pub case: CaseRecord,
    pub purpose: Purpose,
    pub recipient: NodeId,
    pub case_ref: String,
    pub disclosed: DisclosedCase,
    pub consent_ids: Vec<Uuid>,
    consents: Vec<Consent>,
}

/// Prepares a disclosure of case `case_id` inside `tx`: the principal must look after the
/// case, `guards` must pass (the flow's own preconditions), and an active consent must cover
/// `purpose` to `recipient` (the `consent` guard otherwise).
pub fn prepare(
    tx: &Tx<'_>,
    p: &Principal,
    case_id: &Uuid,
    purpose: Purpose,
    recipient: NodeId,
    guards: impl Fn(&Tx<'_>, &CaseRecord) -> TxResult<()>,
) -> TxResult<Disclosure> {
    let case = load_case(tx, case_id)?;
    require_org(p, Some(&case.organisation))?;
    guards(tx, &case)?;
    let consents = consents_of(tx, case_id)?;
    let grant = consent::grant(&consents, purpose, recipient, today()).map_err(ApiError::from)?;
    let case_ref = case_ref_for(tx, case_id, recipient)?;
    let disclosed = policy::disclose(&case, purpose, &grant.categories, case_ref.clone(), today());
    Ok(Disclosure {
        case,
        purpose,
        recipient,
        case_ref,
        disclosed,
        consent_ids: grant.consent_ids,
        consents,
    })
}

impl Disclosure {
    /// Records `subject` on the consents the disclosure relies on, queues `payload` to the
    /// recipient and audits `action` with the fields that crossed (names, never values).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        mut self,
        tx: &Tx<'_>,
        ctx: &Ctx,
        p: &Principal,
        subject: Uuid,
        tree: TreeName,
        payload: Payload,
        action: &str,
        outcome: &str,
        detail: &str,
    ) -> TxResult<String> {
        let case_id = self.case.case_id;
        for c in self
            .consents
            .iter_mut()
            .filter(|c| self.consent_ids.contains(&c.consent_id))
        {
            c.disclosures.push(subject);
        }
        tx.put_json(TreeName::Consents, case_id.as_bytes(), &self.consents)?;
        let message_id = outbox::enqueue(
            tx,
            &ctx.identity.current(),
            ctx.id,
            self.recipient,
            outbox::About {
                id: &subject.to_string(),
                sealed_under: &Subject::of(tree, subject.as_bytes()),
            },
            &self.case_ref,
            payload,
        )?;
        let fields: Vec<&str> = policy::fields_present(&self.disclosed)
            .iter()
            .map(|f| f.path())
            .collect();
        tx.audit(
            AuditRecord::new(actor(p), action, subject.to_string(), outcome).detail(format!(
                "case={case_id} to={} purpose={} message={message_id} fields={} {detail}",
                self.recipient,
                self.purpose.as_str(),
                fields.join(","),
            )),
        )?;
        Ok(message_id)
    }
}
