//! What nodes send each other, as the domain names it: the kinds of envelope and the record
//! each is about.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    hearing::{HearingStatus, HearingStep, ProtectiveMeasure},
    ids::{HearingId, ReferralId, ReturnId},
    model::{DisclosedCase, NeedKind},
    referral::ReferralStatus,
    returns::{ReturnStatus, StepDetails},
};

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

/// A peer's payload as the domain reads it: parsed and checked field by field at the edge
/// (trm-proto) before any flow sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// A referral of a case to this node.
    ReferralOffer {
        referral_id: ReferralId,
        disclosed: DisclosedCase,
        requested_services: Vec<NeedKind>,
    },
    /// The other side's step in a referral's life.
    ReferralUpdate {
        referral_id: ReferralId,
        status: ReferralStatus,
        reason: String,
    },
    /// A return plan proposed to this node.
    ReturnRequest {
        return_id: ReturnId,
        disclosed: DisclosedCase,
        hearing_pending: bool,
        compensation_pending: bool,
    },
    /// The other side's step in a return plan.
    ReturnUpdate {
        return_id: ReturnId,
        status: ReturnStatus,
        step: StepDetails,
    },
    /// A hearing of a witness held here, named only by the envelope's case reference.
    HearingRequest {
        hearing_id: HearingId,
        proceeding_reference: String,
        legal_basis: String,
        measures: Vec<ProtectiveMeasure>,
        language: String,
        proposed_times: Vec<OffsetDateTime>,
    },
    /// The other side's step in a hearing.
    HearingUpdate {
        hearing_id: HearingId,
        status: HearingStatus,
        step: HearingStep,
    },
    /// Erase the copy of a referral or return plan (by its id) received from the sender.
    ErasureRequest {
        subject_id: uuid::Uuid,
        reason: String,
    },
    /// The sender erased its copy of a record this node sent it.
    ErasureConfirmation { subject_id: uuid::Uuid },
    /// The sender's new signing key (its curve point is checked by the flow).
    KeyAnnouncement {
        key_id: String,
        public_key: [u8; 32],
        valid_from: Option<OffsetDateTime>,
    },
}

impl PeerMessage {
    /// Returns the kind of envelope that carries it.
    pub fn kind(&self) -> EnvelopeKind {
        match self {
            PeerMessage::ReferralOffer { .. } => EnvelopeKind::ReferralOffer,
            PeerMessage::ReferralUpdate { .. } => EnvelopeKind::ReferralUpdate,
            PeerMessage::ReturnRequest { .. } => EnvelopeKind::ReturnRequest,
            PeerMessage::ReturnUpdate { .. } => EnvelopeKind::ReturnUpdate,
            PeerMessage::HearingRequest { .. } => EnvelopeKind::HearingRequest,
            PeerMessage::HearingUpdate { .. } => EnvelopeKind::HearingUpdate,
            PeerMessage::ErasureRequest { .. } => EnvelopeKind::ErasureRequest,
            PeerMessage::ErasureConfirmation { .. } => EnvelopeKind::ErasureConfirmation,
            PeerMessage::KeyAnnouncement { .. } => EnvelopeKind::KeyAnnouncement,
        }
    }
}
