//! What every service of a node shares.

use std::sync::Arc;

use time::{Date, OffsetDateTime};
use trm_core::{
    consent::Consent,
    ids::{NodeId, Principal},
    model::CaseRecord,
};
use trm_crypto::signing::SigningIdentity;
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
    pub identity: Arc<SigningIdentity>,
    pub directory: Arc<PeerDirectory>,
    pub delivery: Delivery,
    /// The node's recovery and reflection period (never below 30 days).
    pub reflection_period_days: u32,
}

impl Ctx {
    /// Commits `f`, waits for durability, then wakes the delivery worker of `wake` if any:
    /// the caller answers only after this returns.
    pub async fn commit<R>(
        &self,
        wake: Option<NodeId>,
        f: impl Fn(&Tx<'_>) -> TxResult<R>,
    ) -> ApiResult<R> {
        let r = self.store.transact(f)?;
        self.store.durable().await?;
        if let Some(peer) = wake {
            self.delivery.wake(peer);
        }
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
pub fn case_ref_key(case: &uuid::Uuid, peer: NodeId) -> Vec<u8> {
    format!("out/{case}/{peer}").into_bytes()
}

/// Key resolving a reference received from `peer` to the local record (receiving side).
pub fn inbound_ref_key(peer: NodeId, case_ref: &str) -> Vec<u8> {
    format!("in/{peer}/{case_ref}").into_bytes()
}
