//! Legal remedies across borders (paper §25-27, §31-34; DOMAIN "Beyond the three flows").
//!
//! A compensation **claim** is filed by the node that holds the case, in a forum: its own
//! country (the claim stays local) or a peer's (the claim travels there under the purpose
//! LEGAL_REMEDIES). `filed -> under_review -> awarded | rejected`, `awarded -> paid`, and
//! `withdrawn` from any open state. The forum reviews, awards and rejects; the filing side
//! withdraws; either side records a payment (the forum when a court or a state fund pays, the
//! filing side when the victim received it from the offender). Nothing else closes a claim:
//! a return, a closed or withdrawn referral, an erased copy leave its status as it is
//! (DOMAIN §33).
//!
//! A **victim-status request** asks the node that sent a case's copy whether the person was
//! identified as a victim (non-punishment): its focal point attests (a signed
//! [`SignedAttestation`]) or declines.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    error::{Guard, GuardError},
    exchange::{Erasure, Side},
    ids::{CaseId, ClaimId, ConsentId, NodeId, OrgId, WitnessRecord},
    model::DisclosedCase,
};

crate::ids::record_id!(
    /// A request for an attestation of victim status; the same on both nodes.
    StatusRequestId
);

/// The ASCII tag an attestation's signature is made over (then one zero byte, then the
/// serialized attestation).
pub const ATTESTATION_TAG: &[u8] = b"trm/attestation/v1";

/// What a claim asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClaimKind {
    CriminalCompensation,
    CivilDamages,
    StateFund,
    UnpaidWages,
    ConfiscatedAssets,
}

impl ClaimKind {
    /// Returns the kind's name, as audit entries write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::CriminalCompensation => "criminal_compensation",
            ClaimKind::CivilDamages => "civil_damages",
            ClaimKind::StateFund => "state_fund",
            ClaimKind::UnpaidWages => "unpaid_wages",
            ClaimKind::ConfiscatedAssets => "confiscated_assets",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClaimStatus {
    Filed,
    UnderReview,
    Awarded,
    Paid,
    Rejected,
    Withdrawn,
}

impl ClaimStatus {
    /// Returns the status name as used in errors and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimStatus::Filed => "filed",
            ClaimStatus::UnderReview => "under_review",
            ClaimStatus::Awarded => "awarded",
            ClaimStatus::Paid => "paid",
            ClaimStatus::Rejected => "rejected",
            ClaimStatus::Withdrawn => "withdrawn",
        }
    }

    /// Returns whether the claim is over (paid, rejected or withdrawn).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ClaimStatus::Paid | ClaimStatus::Rejected | ClaimStatus::Withdrawn
        )
    }
}

/// A step of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimEvent {
    /// Forum: the claim is being examined.
    Review,
    /// Forum: compensation was awarded.
    Award,
    /// Forum: the claim was rejected.
    Reject,
    /// Either side: the award was paid.
    Pay,
    /// Filing side: the victim withdrew the claim.
    Withdraw,
}

impl ClaimEvent {
    /// Returns whether `side` may take it: the forum (destination) reviews, awards and
    /// rejects; the filing side (origin) withdraws; either records a payment.
    pub fn allowed_for(self, side: Side) -> bool {
        match self {
            ClaimEvent::Review | ClaimEvent::Award | ClaimEvent::Reject => {
                side == Side::Destination
            }
            ClaimEvent::Withdraw => side == Side::Origin,
            ClaimEvent::Pay => true,
        }
    }

    /// Returns the event that leads to `status` (none leads to `filed`).
    pub fn leading_to(status: ClaimStatus) -> Option<Self> {
        Some(match status {
            ClaimStatus::UnderReview => ClaimEvent::Review,
            ClaimStatus::Awarded => ClaimEvent::Award,
            ClaimStatus::Rejected => ClaimEvent::Reject,
            ClaimStatus::Paid => ClaimEvent::Pay,
            ClaimStatus::Withdrawn => ClaimEvent::Withdraw,
            ClaimStatus::Filed => return None,
        })
    }
}

/// Returns the status after `event`, or the `state` guard's refusal naming the current state.
pub fn next(status: ClaimStatus, event: ClaimEvent) -> Result<ClaimStatus, GuardError> {
    use ClaimEvent as E;
    use ClaimStatus as S;
    let to = match (status, event) {
        (S::Filed, E::Review) => S::UnderReview,
        (S::Filed | S::UnderReview, E::Award) => S::Awarded,
        (S::Filed | S::UnderReview, E::Reject) => S::Rejected,
        (S::Awarded, E::Pay) => S::Paid,
        (s, E::Withdraw) if !s.is_final() => S::Withdrawn,
        _ => {
            return Err(GuardError::new(
                Guard::State,
                format!("claim is {}; {:?} is not possible", status.as_str(), event),
            ))
        }
    };
    Ok(to)
}

/// A claim as one node holds it; `claim_id` is the same on both nodes. A claim whose forum
/// is the filing node's own country has `origin == forum_country` and is never sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub claim_id: ClaimId,
    /// The node that filed the claim (holds the case).
    pub origin: NodeId,
    /// Where the claim is heard.
    pub forum_country: NodeId,
    pub kind: ClaimKind,
    pub status: ClaimStatus,
    /// At the filing node what was sent (empty for a local claim), at the forum what arrived.
    pub disclosed: DisclosedCase,
    /// The local case (filing node only).
    pub case_id: Option<CaseId>,
    /// The organisation that looks after the claim besides focal points (filing node: the
    /// case's owner; forum: none).
    pub organisation: Option<OrgId>,
    pub status_reason: String,
    /// Filing node only: the consents the disclosure relied on.
    #[serde(default)]
    pub consent_ids: Vec<ConsentId>,
    /// Filing node only: where the erasure of the forum's copy stands.
    #[serde(default)]
    pub erasure: Erasure,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What a claim step carries besides its event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimStep {
    pub reason: String,
}

impl ClaimRecord {
    /// Returns the forum's copy of a claim filed by `origin`, as it arrived.
    pub fn received(
        claim_id: ClaimId,
        origin: NodeId,
        forum_country: NodeId,
        kind: ClaimKind,
        disclosed: DisclosedCase,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            claim_id,
            origin,
            forum_country,
            kind,
            status: ClaimStatus::Filed,
            disclosed,
            case_id: None,
            organisation: None,
            status_reason: String::new(),
            consent_ids: vec![],
            erasure: Erasure::NotRequested,
            created_at: now,
            updated_at: now,
        }
    }

    /// Returns whether the claim is heard in the filing node's own country (never sent).
    pub fn is_local(&self) -> bool {
        self.origin == self.forum_country
    }

    /// Returns whether the claim is open (not paid, rejected or withdrawn).
    pub fn is_open(&self) -> bool {
        !self.status.is_final()
    }

    /// Applies `event` with its reason.
    pub fn apply(&mut self, event: ClaimEvent, step: &ClaimStep) -> Result<(), GuardError> {
        self.status = next(self.status, event)?;
        self.status_reason = step.reason.clone();
        self.updated_at = OffsetDateTime::now_utc();
        Ok(())
    }

    /// At the filing node: asks for the forum's copy to be erased (a local claim has none);
    /// with `erase_own`, this node's record of what it sent keeps only the pairwise
    /// reference too. The claim's status is left as it is: erasing data is not withdrawing
    /// a claim (only the filing side's WITHDRAWN does that). Returns `false` when erasure
    /// was already requested.
    pub fn request_erasure(&mut self, reason: &str, erase_own: bool, now: OffsetDateTime) -> bool {
        // Erasing this node's record too holds even when the forum's erasure was asked for
        // before (a consent withdrawn, then the whole case erased).
        if erase_own {
            self.disclosed = self.disclosed.tombstone();
        }
        if self.erasure.requested() || self.is_local() {
            return false;
        }
        self.erasure = Erasure::Requested;
        self.status_reason = reason.to_owned();
        self.updated_at = now;
        true
    }

    /// At the forum: erases this copy (only the pairwise reference is kept; the status
    /// stays).
    pub fn erase_copy(&mut self, reason: &str, now: OffsetDateTime) {
        self.disclosed = self.disclosed.tombstone();
        self.status_reason = reason.to_owned();
        self.updated_at = now;
    }
}

impl crate::exchange::SharedRecord for ClaimRecord {
    type Id = ClaimId;
    type Status = ClaimStatus;
    type Event = ClaimEvent;
    type Step = ClaimStep;
    const KIND: crate::exchange::RecordKind = crate::exchange::RecordKind::Claim;

    crate::exchange::record_accessors!(claim_id: ClaimId, ClaimStatus);

    fn origin(&self) -> NodeId {
        self.origin
    }
    fn destination(&self) -> NodeId {
        self.forum_country
    }
    fn case_ref(&self) -> &str {
        &self.disclosed.case_ref
    }
    fn owner(&self) -> Option<&OrgId> {
        self.organisation.as_ref()
    }
    fn may_take(event: ClaimEvent, side: Side) -> bool {
        event.allowed_for(side)
    }
    fn event_to(status: ClaimStatus, side: Side) -> Option<ClaimEvent> {
        ClaimEvent::leading_to(status).filter(|e| e.allowed_for(side))
    }
    fn apply(&mut self, event: ClaimEvent, step: &ClaimStep) -> Result<(), GuardError> {
        ClaimRecord::apply(self, event, step)
    }
    fn update_message(&self, step: &ClaimStep) -> crate::messages::PeerMessage {
        crate::messages::PeerMessage::ClaimUpdate {
            claim_id: self.claim_id,
            status: self.status,
            reason: step.reason.clone(),
        }
    }
    fn topic(&self) -> crate::messages::Topic {
        crate::messages::Topic::Claim(self.claim_id)
    }
}

// The forum's copy carries the victim's data: withdrawing the consent it relied on, or
// erasing the case, erases it. The forum needs that data while it decides and pays; a
// claim heard here sent no copy.
crate::exchange::erasable_record!(ClaimRecord, crate::model::Purpose::LegalRemedies, |c| !c
    .is_local()
    && c.is_open());

/// Where a victim-status request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VictimStatusState {
    Requested,
    Attested,
    Declined,
}

impl VictimStatusState {
    /// Returns the state's name as used in errors and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            VictimStatusState::Requested => "requested",
            VictimStatusState::Attested => "attested",
            VictimStatusState::Declined => "declined",
        }
    }

    /// Returns whether the request was answered.
    pub fn is_final(self) -> bool {
        self != VictimStatusState::Requested
    }
}

/// The issuing node's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttestDecision {
    Attest,
    Decline,
}

/// An attestation as its issuer signed it: the serialized `VictimStatusAttestation`, the
/// key id and the ed25519 signature over [`ATTESTATION_TAG`], a zero byte, the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAttestation {
    pub attestation: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// What an answer carries besides its decision: the signed attestation of an ATTEST.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusStep {
    pub attestation: Option<SignedAttestation>,
}

/// A victim-status request as each node holds it; `status_request_id` is the same on both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VictimStatusRecord {
    pub status_request_id: StatusRequestId,
    /// The node that asked (a judicial authority of it).
    pub requesting_country: NodeId,
    /// The node asked: the one that sent the case's copy.
    pub issuing_country: NodeId,
    pub state: VictimStatusState,
    /// Pairwise reference of the case between the two nodes.
    pub case_ref: String,
    /// The local record the reference names (requester: the copy received; issuer: the case).
    pub subject: WitnessRecord,
    pub attestation: Option<SignedAttestation>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Issuer: the consents the attestation was given under (withdrawing one erases it at
    /// the requester).
    #[serde(default)]
    pub consent_ids: Vec<crate::ids::ConsentId>,
    /// Issuer: where the erasure of the requester's attestation stands.
    #[serde(default)]
    pub erasure: crate::exchange::Erasure,
    /// Requester: the issuer had the attestation erased (the consent was withdrawn or the
    /// case erased); only the answer's state is kept.
    #[serde(default)]
    pub attestation_erased: bool,
}

impl VictimStatusRecord {
    /// A request just made, as each of the two nodes keeps it.
    pub fn requested(
        status_request_id: StatusRequestId,
        requesting_country: NodeId,
        issuing_country: NodeId,
        case_ref: String,
        subject: WitnessRecord,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            status_request_id,
            requesting_country,
            issuing_country,
            state: VictimStatusState::Requested,
            case_ref,
            subject,
            attestation: None,
            created_at: now,
            updated_at: now,
            consent_ids: vec![],
            erasure: crate::exchange::Erasure::NotRequested,
            attestation_erased: false,
        }
    }

    /// Answers the request: an attestation needs its signed bytes.
    pub fn apply(&mut self, decision: AttestDecision, step: &StatusStep) -> Result<(), GuardError> {
        if self.state.is_final() {
            return Err(GuardError::new(
                Guard::State,
                format!("victim status request is {}", self.state.as_str()),
            ));
        }
        match decision {
            AttestDecision::Attest => {
                let signed = step.attestation.clone().ok_or_else(|| {
                    GuardError::new(Guard::State, "an attestation must be signed")
                })?;
                self.attestation = Some(signed);
                self.state = VictimStatusState::Attested;
            }
            AttestDecision::Decline => self.state = VictimStatusState::Declined,
        }
        self.updated_at = OffsetDateTime::now_utc();
        Ok(())
    }
}

impl crate::exchange::SharedRecord for VictimStatusRecord {
    type Id = StatusRequestId;
    type Status = VictimStatusState;
    type Event = AttestDecision;
    type Step = StatusStep;
    const KIND: crate::exchange::RecordKind = crate::exchange::RecordKind::VictimStatus;

    fn id(&self) -> StatusRequestId {
        self.status_request_id
    }
    fn status(&self) -> VictimStatusState {
        self.state
    }
    fn status_name(&self) -> &'static str {
        self.state.as_str()
    }
    fn is_final(&self) -> bool {
        self.state.is_final()
    }
    fn updated_at(&self) -> OffsetDateTime {
        self.updated_at
    }
    fn origin(&self) -> NodeId {
        self.requesting_country
    }
    fn destination(&self) -> NodeId {
        self.issuing_country
    }
    fn case_ref(&self) -> &str {
        &self.case_ref
    }
    /// Owned by no organisation: judicial authorities and focal points act on it by role.
    fn owner(&self) -> Option<&OrgId> {
        None
    }
    /// Only the issuing node answers.
    fn may_take(_: AttestDecision, side: Side) -> bool {
        side == Side::Destination
    }
    fn event_to(status: VictimStatusState, side: Side) -> Option<AttestDecision> {
        let event = match status {
            VictimStatusState::Attested => AttestDecision::Attest,
            VictimStatusState::Declined => AttestDecision::Decline,
            VictimStatusState::Requested => return None,
        };
        (side == Side::Destination).then_some(event)
    }
    fn apply(&mut self, event: AttestDecision, step: &StatusStep) -> Result<(), GuardError> {
        VictimStatusRecord::apply(self, event, step)
    }
    fn update_message(&self, _step: &StatusStep) -> crate::messages::PeerMessage {
        crate::messages::PeerMessage::VictimStatusAnswer {
            status_request_id: self.status_request_id,
            state: self.state,
            attestation: self.attestation.clone(),
        }
    }
    fn topic(&self) -> crate::messages::Topic {
        crate::messages::Topic::VictimStatus(self.status_request_id)
    }
}

/// Returns the month of a decision as an attestation writes it (`YYYY-MM`).
pub fn decided_month(d: time::Date) -> String {
    format!("{:04}-{:02}", d.year(), u8::from(d.month()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClaimEvent as E;
    use ClaimStatus as S;

    #[test]
    fn a_claim_runs_to_paid_and_final_states_refuse_everything() {
        let mut s = S::Filed;
        for e in [E::Review, E::Award, E::Pay] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, S::Paid);
        for s in [S::Paid, S::Rejected, S::Withdrawn] {
            assert!(s.is_final());
            for e in [E::Review, E::Award, E::Reject, E::Pay, E::Withdraw] {
                assert_eq!(next(s, e).unwrap_err().guard, Guard::State, "{s:?} {e:?}");
            }
        }
        assert_eq!(next(S::Filed, E::Pay).unwrap_err().guard, Guard::State);
        assert_eq!(next(S::Awarded, E::Withdraw), Ok(S::Withdrawn));
    }

    #[test]
    fn the_forum_decides_the_filing_side_withdraws_either_records_payment() {
        for e in [E::Review, E::Award, E::Reject] {
            assert!(e.allowed_for(Side::Destination) && !e.allowed_for(Side::Origin));
        }
        assert!(
            E::Withdraw.allowed_for(Side::Origin) && !E::Withdraw.allowed_for(Side::Destination)
        );
        assert!(E::Pay.allowed_for(Side::Origin) && E::Pay.allowed_for(Side::Destination));
        assert_eq!(ClaimEvent::leading_to(S::Filed), None);
        for s in [
            S::UnderReview,
            S::Awarded,
            S::Paid,
            S::Rejected,
            S::Withdrawn,
        ] {
            let e = ClaimEvent::leading_to(s).unwrap();
            assert!(next(S::Filed, e).is_ok() || next(S::Awarded, e) == Ok(s));
        }
    }

    #[test]
    fn an_erased_copy_keeps_its_status() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut c = ClaimRecord::received(
            ClaimId::new(),
            "AT".parse().unwrap(),
            "RO".parse().unwrap(),
            ClaimKind::StateFund,
            DisclosedCase {
                case_ref: "ref".into(),
                ..Default::default()
            },
            now,
        );
        c.apply(E::Review, &ClaimStep::default()).unwrap();
        c.erase_copy("consent withdrawn", now);
        assert_eq!(c.status, S::UnderReview);
        assert!(c.disclosed.is_tombstone());
        assert_eq!(c.disclosed.case_ref, "ref");
    }

    #[test]
    fn a_status_request_is_answered_once_and_an_attestation_is_signed() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut r = VictimStatusRecord::requested(
            StatusRequestId::new(),
            "RO".parse().unwrap(),
            "AT".parse().unwrap(),
            "ref".into(),
            WitnessRecord::Case(CaseId::new()),
            now,
        );
        assert!(r
            .apply(AttestDecision::Attest, &StatusStep::default())
            .is_err());
        let step = StatusStep {
            attestation: Some(SignedAttestation::default()),
        };
        r.apply(AttestDecision::Attest, &step).unwrap();
        assert_eq!(r.state, VictimStatusState::Attested);
        assert!(r.apply(AttestDecision::Decline, &step).is_err());
        assert_eq!(
            decided_month(time::macros::date!(2026 - 03 - 09)),
            "2026-03"
        );
    }
}
