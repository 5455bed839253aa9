//! What nodes send each other, as the domain names it: the kinds of envelope and the record
//! each is about.

use serde::{Deserialize, Serialize};

use crate::ids::{HearingId, ReferralId, ReturnId};

/// The kind of payload an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeKind {
    ReferralOffer,
    ReferralUpdate,
    ReturnRequest,
    ReturnUpdate,
    HearingRequest,
    HearingUpdate,
    ErasureRequest,
    ErasureConfirmation,
    KeyAnnouncement,
}

impl EnvelopeKind {
    /// Returns the kind's name, as in the outbox listing and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvelopeKind::ReferralOffer => "referral_offer",
            EnvelopeKind::ReferralUpdate => "referral_update",
            EnvelopeKind::ReturnRequest => "return_request",
            EnvelopeKind::ReturnUpdate => "return_update",
            EnvelopeKind::HearingRequest => "hearing_request",
            EnvelopeKind::HearingUpdate => "hearing_update",
            EnvelopeKind::ErasureRequest => "erasure_request",
            EnvelopeKind::ErasureConfirmation => "erasure_confirmation",
            EnvelopeKind::KeyAnnouncement => "key_announcement",
        }
    }
}

impl std::fmt::Display for EnvelopeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The record an outbound envelope is about: its queued copy is sealed under that record's
/// key (erasing the record destroys the copy) and the record hears of the receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    Referral(ReferralId),
    Return(ReturnId),
    Hearing(HearingId),
    /// The confirmation of an erasure of a copy this node may never have held.
    Erasure(uuid::Uuid),
    /// The node's own signing keys.
    NodeKeys,
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Referral(id) => write!(f, "{id}"),
            Topic::Return(id) => write!(f, "{id}"),
            Topic::Hearing(id) => write!(f, "{id}"),
            Topic::Erasure(id) => write!(f, "{id}"),
            Topic::NodeKeys => f.write_str("keys"),
        }
    }
}
