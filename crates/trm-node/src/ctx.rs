//! What every service of a node shares.

use std::sync::Arc;

use time::{Date, OffsetDateTime};
use trm_core::ids::NodeId;
use trm_crypto::signing::SigningIdentity;
use trm_federation::{Delivery, PeerDirectory};
use trm_store::Store;

/// The node's shared state, handed to each service.
#[derive(Clone)]
pub struct Ctx {
    pub id: NodeId,
    pub store: Store,
    pub identity: Arc<SigningIdentity>,
    pub directory: Arc<PeerDirectory>,
    pub delivery: Delivery,
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
