//! What every service of a node shares.

use std::sync::Arc;

use time::{Date, OffsetDateTime};
use trm_core::{
    consent::Consent,
    ids::{NodeId, Principal},
    model::CaseRecord,
};
use trm_crypto::signing::Signer;
use trm_federation::{Delivery, PeerDirectory};
use trm_store::{audit::AuditRecord, Store, TreeName, Tx, TxFail};
use uuid::Uuid;

use crate::{
    authz::actor,
    error::{ApiError, ApiResult},
};

/// Result of a transaction closure of a local service.
pub type TxResult<T> = Result<T, TxFail<ApiError>>;

/// The node's shared state, handed to each service.
#[derive(Clone)]
pub struct Ctx {
    pub id: NodeId,
    pub store: Store,
    pub identity: Arc<Signer>,
    pub directory: Arc<PeerDirectory>,
    pub delivery: Delivery,
    /// The node's recovery and reflection period (never below 30 days).
    pub reflection_period_days: u32,
    /// Federation traffic counters, for the metrics port.
    pub counters: Arc<trm_federation::Counters>,
    /// Where the signing key lives (key rotation replaces it).
    pub signing_key_path: std::path::PathBuf,
    /// How long envelopes stay acceptable; a rotated key stays listed at least this long.
    pub replay_window_days: u32,
    /// Revoked client certificates, checked on every request.
    pub revocations: Arc<crate::gate::Revocations>,
}

impl Ctx {
    /// Commits `f`, waits for durability, then wakes the delivery workers of the peers `f`
    /// queued envelopes for: the caller answers only after this returns.
    pub async fn commit<R>(&self, f: impl Fn(&Tx<'_>) -> TxResult<R>) -> ApiResult<R> {
        let (r, queued) = self.store.transact_noting(f)?;
        self.store.durable().await?;
        self.delivery.wake_noted(&queued);
        Ok(r)
    }

    /// Records a read of victim records (who, which ids, when) durably before the answer.
    pub async fn audit_read(
        &self,
        p: &Principal,
        action: &str,
        subject: String,
        ids: String,
    ) -> ApiResult<()> {
        let record = AuditRecord::new(actor(p), action, subject, "ok").detail(ids);
        Ok(self.store.audit(record).await?)
    }
}

/// Returns the consents recorded for a case. They live under the case id as one list, so a
/// disclosure reads them in its own transaction and conflicts with a concurrent withdrawal.
pub fn consents_of(tx: &Tx<'_>, case_id: &Uuid) -> TxResult<Vec<Consent>> {
    Ok(tx
        .get_json::<Vec<Consent>>(TreeName::Consents, case_id.as_bytes())?
        .unwrap_or_default())
}

/// Loads a case inside a transaction; NOT_FOUND when absent.
pub fn load_case(tx: &Tx<'_>, case_id: &Uuid) -> TxResult<CaseRecord> {
    tx.get_sealed::<CaseRecord>(TreeName::Cases, case_id.as_bytes())?
        .ok_or(TxFail::Abort(ApiError::NotFound("case")))
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Returns today's date (UTC).
pub fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

/// Returns a new pairwise case reference: 128 random bits, unlinkable across peers.
pub fn new_case_ref() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Key of the case reference of `case` towards `peer` (origin side).
fn case_ref_key(case: &Uuid, peer: NodeId) -> Vec<u8> {
    format!("out/{case}/{peer}").into_bytes()
}

/// Key resolving a reference this node gave `peer` back to the local case.
fn outbound_ref_key(peer: NodeId, case_ref: &str) -> Vec<u8> {
    format!("ref/{peer}/{case_ref}").into_bytes()
}

/// Returns the pairwise reference of `case` towards `peer`, creating it on first use.
pub fn case_ref_for(tx: &Tx<'_>, case: &Uuid, peer: NodeId) -> TxResult<String> {
    let key = case_ref_key(case, peer);
    if let Some(r) = tx.get_json::<String>(TreeName::CaseRefs, &key)? {
        return Ok(r);
    }
    let r = new_case_ref();
    tx.put_json(TreeName::CaseRefs, &key, &r)?;
    tx.put_json(
        TreeName::CaseRefs,
        &outbound_ref_key(peer, &r),
        &case.to_string(),
    )?;
    Ok(r)
}

/// Returns the existing pairwise reference of `case` towards `peer`, if the case was ever
/// exchanged with it.
pub fn existing_case_ref(tx: &Tx<'_>, case: &Uuid, peer: NodeId) -> TxResult<Option<String>> {
    Ok(tx.get_json::<String>(TreeName::CaseRefs, &case_ref_key(case, peer))?)
}

/// Resolves a reference shared with `peer` (either way) to the local record it names: a
/// case this node sent, or a referral or return plan it received.
pub fn resolve_case_ref(tx: &Tx<'_>, peer: NodeId, case_ref: &str) -> TxResult<Option<Uuid>> {
    for key in [
        inbound_ref_key(peer, case_ref),
        outbound_ref_key(peer, case_ref),
    ] {
        if let Some(id) = tx.get_json::<String>(TreeName::CaseRefs, &key)? {
            return Ok(Uuid::try_parse(&id).ok());
        }
    }
    Ok(None)
}

/// Key resolving a reference received from `peer` to the local record (receiving side).
/// The first record received under a reference is the one it resolves to.
pub fn inbound_ref_key(peer: NodeId, case_ref: &str) -> Vec<u8> {
    format!("in/{peer}/{case_ref}").into_bytes()
}
