//! Node-to-node federation: who our peers are, how envelopes are sealed and opened, the
//! inbound `FederationService`, and the outbox delivery worker.
//! - [`connect`]: outbound connections that verify the peer's identity;
//! - [`counters`]: traffic counters and the refusal reasons;
//! - [`directory`]: peers with their endpoint, TLS trust (CA, optional pin) and signing keys,
//!   changed at run time;
//! - [`envelope`]: sealing outbound envelopes and signing receipts;
//! - [`error`]: what the federation port answers a request it does not take;
//! - [`inbound`]: the receive pipeline, verifying in DESIGN.md's order before any effect;
//! - [`keys`]: this node's signing keys over time (rotation with overlap);
//! - [`slots`]: the per-peer cap on concurrent inbound requests;
//! - [`sequence`]: applying a peer's pipelined batches in their session's order;
//! - [`refusals`]: auditing refusals, aggregated under a flood;
//! - [`outbox`]: queueing envelopes in the same transaction as the state change, and the
//!   worker that delivers them and keeps the peers' signed receipts.
#![forbid(unsafe_code)]

pub mod announce;
pub mod connect;
pub mod counters;
pub mod directory;
pub mod envelope;
pub mod error;
pub mod inbound;
pub mod keys;
pub mod outbox;
pub mod refusals;
pub mod sequence;
pub mod slots;

use trm_core::ids::{MessageId, NodeId};
use trm_store::{repo::outbox::OutboxItem, Tx, TxFail};

pub use counters::{Counters, Refusal};
pub use directory::{Peer, PeerDirectory, PeerKey};
pub use inbound::{FederationServer, InboundConfig};
pub use outbox::{Delivery, DeliveryConfig};

/// Why a node refuses an authenticated envelope on policy or state: the reason goes into the
/// signed REJECTED receipt and the audit log, so it names fields and states, never values.
/// Its text starts with the kind (`policy violation: ...`), which peers read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The payload carries, or would need, what its purpose does not allow.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    /// The step is not one the record's state machine allows from this sender.
    #[error("invalid transition: {0}")]
    InvalidTransition(String),
    /// The payload names a record this node does not share with the sender.
    #[error("unknown case reference: {0}")]
    UnknownCaseReference(String),
    /// A field is missing or malformed.
    #[error("malformed: {0}")]
    Malformed(String),
}

impl From<trm_proto::peer::PayloadError> for Rejection {
    fn from(e: trm_proto::peer::PayloadError) -> Self {
        use trm_proto::peer::PayloadError;
        match e {
            PayloadError::Malformed(f) => Rejection::Malformed(f.to_string()),
            PayloadError::Disclosure(f) => Rejection::PolicyViolation(f.to_string()),
        }
    }
}

impl From<trm_core::policy::PolicyViolation> for Rejection {
    fn from(v: trm_core::policy::PolicyViolation) -> Self {
        Rejection::PolicyViolation(v.detail())
    }
}

/// An authenticated inbound envelope with its payload parsed.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub sender: NodeId,
    /// The key that signed the envelope.
    pub key_id: String,
    pub message_id: MessageId,
    pub case_ref: String,
    pub created_at: time::OffsetDateTime,
    pub message: trm_core::messages::PeerMessage,
}

/// What the node does with the federation's traffic. Both calls run inside the store
/// transaction that also records the receipt, so effect and receipt commit together.
pub trait FlowHandler: Send + Sync + 'static {
    /// Applies an inbound message; a [`Rejection`] keeps nothing it wrote and is answered
    /// REJECTED.
    fn apply(&self, tx: &mut Tx<'_>, inbound: &Inbound) -> Result<(), TxFail<Rejection>>;

    /// Records the peer's verified receipt for one of our outbox entries.
    fn on_receipt(
        &self,
        tx: &mut Tx<'_>,
        item: &OutboxItem,
        outcome: trm_proto::v1::ReceiptOutcome,
        reason: &str,
    ) -> Result<(), TxFail<Rejection>>;

    /// Records that one of our outbox entries went to the dead letters without the peer's
    /// signed answer (the peer's node answered with an error status, or the envelope grew
    /// too old to send): not the peer's decision, so no record may take it as one; an
    /// operator's retry may still deliver the entry.
    fn undelivered(
        &self,
        tx: &mut Tx<'_>,
        item: &OutboxItem,
        why: &str,
    ) -> Result<(), TxFail<Rejection>>;
}

/// Returns the kind of a payload (written beside the payload's parse, in trm-proto).
pub use trm_proto::peer::kind as payload_kind;
