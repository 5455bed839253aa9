//! Node-to-node federation: who our peers are, how envelopes are sealed and opened, the
//! inbound `FederationService`, and the outbox delivery worker.
//! - [`connect`]: outbound connections that verify the peer's identity;
//! - [`counters`]: traffic counters and the refusal reasons;
//! - [`directory`]: peers with their endpoint, TLS trust (CA, optional pin) and signing keys,
//!   changed at run time;
//! - [`envelope`]: sealing outbound envelopes and signing receipts;
//! - [`inbound`]: the receive pipeline, verifying in DESIGN.md's order before any effect;
//! - [`keys`]: this node's signing keys over time (rotation with overlap);
//! - [`slots`]: the per-peer cap on concurrent inbound requests;
//! - [`refusals`]: auditing refusals, aggregated under a flood;
//! - [`outbox`]: queueing envelopes in the same transaction as the state change, and the
//!   worker that delivers them and keeps the peers' signed receipts.
#![forbid(unsafe_code)]

pub mod connect;
pub mod counters;
pub mod directory;
pub mod envelope;
pub mod inbound;
pub mod keys;
pub mod outbox;
pub mod refusals;
pub mod slots;

use trm_proto::v1::envelope_body::Payload;
use trm_store::Tx;
use trm_store::TxFail;

pub use counters::{Counters, Refusal};
pub use directory::{Peer, PeerDirectory, PeerKey};
pub use inbound::{FederationServer, InboundConfig};
pub use outbox::{Delivery, DeliveryConfig, OutboxItem};

/// Why a node refuses an authenticated envelope on policy or state: the reason goes into the
/// signed REJECTED receipt and the audit log, so it names fields and states, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

/// An authenticated, decoded inbound envelope.
#[derive(Debug)]
pub struct Inbound<'a> {
    pub sender: trm_core::ids::NodeId,
    /// The key that signed the envelope.
    pub key_id: &'a str,
    pub message_id: &'a str,
    pub case_ref: &'a str,
    pub created_at: time::OffsetDateTime,
    pub payload: &'a Payload,
}

/// What the node does with the federation's traffic. Both calls run inside the store
/// transaction that also records the receipt, so effect and receipt commit together.
pub trait FlowHandler: Send + Sync + 'static {
    /// Applies an inbound payload; a [`Rejection`] writes nothing and is answered REJECTED.
    fn apply(&self, tx: &Tx<'_>, inbound: &Inbound<'_>) -> Result<(), TxFail<Rejection>>;

    /// Records the peer's verified receipt for one of our outbox entries.
    fn on_receipt(
        &self,
        tx: &Tx<'_>,
        item: &OutboxItem,
        outcome: trm_proto::v1::ReceiptOutcome,
        reason: &str,
    ) -> Result<(), TxFail<Rejection>>;
}

/// Returns the name of a payload kind, for the outbox and audit entries.
pub fn payload_kind(p: &Payload) -> &'static str {
    match p {
        Payload::ReferralOffer(_) => "referral_offer",
        Payload::ReferralUpdate(_) => "referral_update",
        Payload::ReturnRequest(_) => "return_request",
        Payload::ReturnUpdate(_) => "return_update",
        Payload::HearingRequest(_) => "hearing_request",
        Payload::HearingUpdate(_) => "hearing_update",
        Payload::ErasureRequest(_) => "erasure_request",
        Payload::ErasureConfirmation(_) => "erasure_confirmation",
        Payload::KeyAnnouncement(_) => "key_announcement",
    }
}
