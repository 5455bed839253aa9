//! What nodes send each other, as the domain names it: the kinds of envelope and the record
//! each is about.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    hearing::{HearingStatus, HearingStep, HearingTerms},
    ids::{AlertId, ClaimId, HearingId, ReferralId, ReturnId},
    model::{DisclosedCase, NeedKind},
    referral::ReferralStatus,
    remedies::StatusRequestId,
    remedies::{ClaimKind, ClaimStatus, SignedAttestation, VictimStatusState},
    returns::{ReturnStatus, StepDetails},
    safety::{AlertTerms, SafetyAlertStatus},
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
    SafetyAlertNotice,
    SafetyAlertUpdate,
    ClaimNotice,
    ClaimUpdate,
    VictimStatusQuery,
    VictimStatusAnswer,
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
            EnvelopeKind::SafetyAlertNotice => "safety_alert_notice",
            EnvelopeKind::SafetyAlertUpdate => "safety_alert_update",
            EnvelopeKind::ClaimNotice => "claim_notice",
            EnvelopeKind::ClaimUpdate => "claim_update",
            EnvelopeKind::VictimStatusQuery => "victim_status_query",
            EnvelopeKind::VictimStatusAnswer => "victim_status_answer",
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
    SafetyAlert(AlertId),
    /// The confirmation of an erasure of a copy this node may never have held.
    Erasure(uuid::Uuid),
    /// The node's own signing keys.
    NodeKeys,
    Claim(ClaimId),
    VictimStatus(StatusRequestId),
}

impl Topic {
    /// Returns the shared record the envelope is about, by kind and id (none for an
    /// erasure's confirmation or the node's keys).
    pub fn record(&self) -> Option<(crate::exchange::RecordKind, uuid::Uuid)> {
        use crate::{exchange::RecordKind as K, ids::RecordId};
        Some(match self {
            Topic::Referral(id) => (K::Referral, id.to_uuid()),
            Topic::Return(id) => (K::Return, id.to_uuid()),
            Topic::Hearing(id) => (K::Hearing, id.to_uuid()),
            Topic::SafetyAlert(id) => (K::SafetyAlert, id.to_uuid()),
            Topic::Claim(id) => (K::Claim, id.to_uuid()),
            Topic::VictimStatus(id) => (K::VictimStatus, id.to_uuid()),
            Topic::Erasure(_) | Topic::NodeKeys => return None,
        })
    }
}

impl From<crate::ids::Shared> for Topic {
    fn from(shared: crate::ids::Shared) -> Self {
        use crate::ids::Shared;
        match shared {
            Shared::Referral(id) => Topic::Referral(id),
            Shared::Return(id) => Topic::Return(id),
            Shared::Claim(id) => Topic::Claim(id),
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Referral(id) => write!(f, "{id}"),
            Topic::Return(id) => write!(f, "{id}"),
            Topic::Hearing(id) => write!(f, "{id}"),
            Topic::SafetyAlert(id) => write!(f, "{id}"),
            Topic::Erasure(id) => write!(f, "{id}"),
            Topic::NodeKeys => f.write_str("keys"),
            Topic::Claim(id) => write!(f, "{id}"),
            Topic::VictimStatus(id) => write!(f, "{id}"),
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
        /// When the latest risk assessment of the case was recorded (the origin's clock).
        risk_assessed_at: Option<OffsetDateTime>,
    },
    /// The other side's step in a return plan.
    ReturnUpdate {
        return_id: ReturnId,
        status: ReturnStatus,
        step: StepDetails,
    },
    /// The plan's coordination flags as the node that holds the case now derives them: a
    /// hearing or a compensation claim of the case opened or ended after the plan was
    /// requested. Travels as a `ReturnUpdate` carrying `flags` only.
    ReturnFlags {
        return_id: ReturnId,
        hearing_pending: bool,
        compensation_pending: bool,
    },
    /// A hearing of a witness held here, named only by the envelope's case reference.
    HearingRequest {
        hearing_id: HearingId,
        terms: HearingTerms,
    },
    /// The other side's step in a hearing.
    HearingUpdate {
        hearing_id: HearingId,
        status: HearingStatus,
        step: HearingStep,
    },
    /// The case changed at the sender (UpdateCase): the copy it sent under `subject`
    /// (a referral or return plan) now holds `disclosed`, what its purpose and consent
    /// allow. Travels as a `ReferralUpdate` or `ReturnUpdate` carrying `disclosed` only.
    CopyUpdate {
        subject: crate::ids::Shared,
        disclosed: DisclosedCase,
    },
    /// Erase the copy of a referral or return plan (by its id) received from the sender.
    ErasureRequest {
        subject_id: uuid::Uuid,
        reason: String,
    },
    /// The sender erased its copy of a record this node sent it.
    ErasureConfirmation {
        subject_id: uuid::Uuid,
        erased_at: Option<OffsetDateTime>,
    },
    /// A safety alert about the case the envelope's reference names, whose copy this node
    /// holds (purpose SAFETY: the child flags at most, and only as the copy already has them).
    SafetyAlertNotice {
        alert_id: AlertId,
        terms: AlertTerms,
        /// When the origin raised it, by its clock.
        raised_at: OffsetDateTime,
        /// The pairwise reference, and the child flags where the copy has them.
        disclosed: DisclosedCase,
    },
    /// The recipient acknowledged the alert.
    SafetyAlertUpdate {
        alert_id: AlertId,
        status: SafetyAlertStatus,
    },
    /// The sender's new signing key (its curve point is checked by the flow).
    KeyAnnouncement {
        key_id: String,
        public_key: [u8; 32],
        valid_from: Option<OffsetDateTime>,
    },
    /// A compensation claim filed in this node's forum (purpose LEGAL_REMEDIES).
    ClaimNotice {
        claim_id: ClaimId,
        kind: ClaimKind,
        disclosed: DisclosedCase,
    },
    /// The other side's step in a claim.
    ClaimUpdate {
        claim_id: ClaimId,
        status: ClaimStatus,
        reason: String,
    },
    /// Asks this node whether the person of the envelope's case reference was identified
    /// as a victim.
    VictimStatusQuery { status_request_id: StatusRequestId },
    /// The answer to a victim-status query: attested (with the signed attestation) or
    /// declined.
    VictimStatusAnswer {
        status_request_id: StatusRequestId,
        state: VictimStatusState,
        attestation: Option<SignedAttestation>,
    },
}

impl PeerMessage {
    /// Returns the kind of envelope that carries it.
    pub fn kind(&self) -> EnvelopeKind {
        match self {
            PeerMessage::ReferralOffer { .. } => EnvelopeKind::ReferralOffer,
            PeerMessage::ReferralUpdate { .. } => EnvelopeKind::ReferralUpdate,
            PeerMessage::ReturnRequest { .. } => EnvelopeKind::ReturnRequest,
            PeerMessage::ReturnUpdate { .. } | PeerMessage::ReturnFlags { .. } => {
                EnvelopeKind::ReturnUpdate
            }
            PeerMessage::HearingRequest { .. } => EnvelopeKind::HearingRequest,
            PeerMessage::HearingUpdate { .. } => EnvelopeKind::HearingUpdate,
            PeerMessage::CopyUpdate { subject, .. } => match subject {
                crate::ids::Shared::Referral(_) => EnvelopeKind::ReferralUpdate,
                crate::ids::Shared::Return(_) => EnvelopeKind::ReturnUpdate,
                crate::ids::Shared::Claim(_) => EnvelopeKind::ClaimUpdate,
            },
            PeerMessage::ErasureRequest { .. } => EnvelopeKind::ErasureRequest,
            PeerMessage::ErasureConfirmation { .. } => EnvelopeKind::ErasureConfirmation,
            PeerMessage::KeyAnnouncement { .. } => EnvelopeKind::KeyAnnouncement,
            PeerMessage::SafetyAlertNotice { .. } => EnvelopeKind::SafetyAlertNotice,
            PeerMessage::SafetyAlertUpdate { .. } => EnvelopeKind::SafetyAlertUpdate,
            PeerMessage::ClaimNotice { .. } => EnvelopeKind::ClaimNotice,
            PeerMessage::ClaimUpdate { .. } => EnvelopeKind::ClaimUpdate,
            PeerMessage::VictimStatusQuery { .. } => EnvelopeKind::VictimStatusQuery,
            PeerMessage::VictimStatusAnswer { .. } => EnvelopeKind::VictimStatusAnswer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each payload travels in the envelope of its own kind, named as in the outbox listing
    /// and audit entries.
    #[test]
    fn each_payload_goes_in_the_envelope_of_its_kind_and_name() {
        let id = uuid::Uuid::nil();
        let messages = [
            (
                PeerMessage::ReferralOffer {
                    referral_id: ReferralId::from_uuid(id),
                    disclosed: DisclosedCase::default(),
                    requested_services: vec![],
                },
                "referral_offer",
            ),
            (
                PeerMessage::ReferralUpdate {
                    referral_id: ReferralId::from_uuid(id),
                    status: ReferralStatus::Accepted,
                    reason: String::new(),
                },
                "referral_update",
            ),
            (
                PeerMessage::ReturnRequest {
                    return_id: ReturnId::from_uuid(id),
                    disclosed: DisclosedCase::default(),
                    hearing_pending: false,
                    compensation_pending: false,
                    risk_assessed_at: None,
                },
                "return_request",
            ),
            (
                PeerMessage::ReturnUpdate {
                    return_id: ReturnId::from_uuid(id),
                    status: ReturnStatus::Halted,
                    step: StepDetails::default(),
                },
                "return_update",
            ),
            (
                PeerMessage::ReturnFlags {
                    return_id: ReturnId::from_uuid(id),
                    hearing_pending: true,
                    compensation_pending: false,
                },
                "return_update",
            ),
            (
                PeerMessage::HearingRequest {
                    hearing_id: HearingId::from_uuid(id),
                    terms: HearingTerms::default(),
                },
                "hearing_request",
            ),
            (
                PeerMessage::HearingUpdate {
                    hearing_id: HearingId::from_uuid(id),
                    status: HearingStatus::Accepted,
                    step: HearingStep::default(),
                },
                "hearing_update",
            ),
            (
                PeerMessage::ErasureRequest {
                    subject_id: id,
                    reason: String::new(),
                },
                "erasure_request",
            ),
            (
                PeerMessage::ErasureConfirmation {
                    subject_id: id,
                    erased_at: None,
                },
                "erasure_confirmation",
            ),
            (
                PeerMessage::KeyAnnouncement {
                    key_id: String::new(),
                    public_key: [0; 32],
                    valid_from: None,
                },
                "key_announcement",
            ),
        ];
        for (message, name) in messages {
            assert_eq!(message.kind().as_str(), name);
            assert_eq!(message.kind().to_string(), name);
        }
    }

    #[test]
    fn a_topic_is_written_as_the_id_of_its_record() {
        let text = "0190b1e2-7c3a-7def-8123-456789abcdef";
        let u = uuid::Uuid::parse_str(text).unwrap();
        for topic in [
            Topic::Referral(ReferralId::from_uuid(u)),
            Topic::Return(ReturnId::from_uuid(u)),
            Topic::Hearing(HearingId::from_uuid(u)),
            Topic::Erasure(u),
        ] {
            assert_eq!(topic.to_string(), text, "{topic:?}");
        }
        assert_eq!(Topic::NodeKeys.to_string(), "keys");
    }
}
