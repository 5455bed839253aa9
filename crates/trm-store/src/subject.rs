//! Whose data key seals something. Subjects are namespaced per kind of record, so that an
//! id chosen by a peer for one kind of record can never name the key of a record of
//! another kind.

use trm_core::ids::{CaseId, HearingId, ReferralId, ReturnId};

/// A data-key subject: a kind of record and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(Vec<u8>);

impl Subject {
    /// Returns the subject `id` of kind `kind`.
    pub fn named(kind: &str, id: &[u8]) -> Self {
        let mut bytes = kind.as_bytes().to_vec();
        bytes.push(b'/');
        bytes.extend_from_slice(id);
        Self(bytes)
    }

    /// A case: its record, consents' details, risk assessments and return decisions.
    pub fn case(id: CaseId) -> Self {
        Self::named("case", id.as_bytes())
    }

    /// A referral (at either node).
    pub fn referral(id: ReferralId) -> Self {
        Self::named("referral", id.as_bytes())
    }

    /// A return plan (at either node).
    pub fn return_plan(id: ReturnId) -> Self {
        Self::named("return", id.as_bytes())
    }

    /// A hearing (at either node).
    pub fn hearing(id: HearingId) -> Self {
        Self::named("hearing", id.as_bytes())
    }

    /// A claim (at either node).
    pub fn claim(id: trm_core::ids::ClaimId) -> Self {
        Self::named("claim", id.as_bytes())
    }

    /// A victim-status request (at either node).
    pub fn victim_status(id: trm_core::ids::StatusRequestId) -> Self {
        Self::named("victim_status", id.as_bytes())
    }

    /// The subject of a shared record of `kind` (the same names as the kind's own
    /// constructor above).
    pub fn of_record(kind: trm_core::exchange::RecordKind, id: &[u8; 16]) -> Self {
        use trm_core::exchange::RecordKind as K;
        Self::named(
            match kind {
                K::Referral => "referral",
                K::Return => "return",
                K::Hearing => "hearing",
                K::SafetyAlert => "safety_alert",
                K::Claim => "claim",
                K::VictimStatus => "victim_status",
            },
            id,
        )
    }

    /// Returns the subject's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the subject of bytes written by [`Subject::as_bytes`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}
