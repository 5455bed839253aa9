//! The referral state machine: `draft -> sent -> delivered -> accepted | declined ->
//! in_assistance -> closed`, and `withdrawn` from any open state. The destination's copy
//! starts `delivered` ([`ReferralRecord::received`]); an erased copy is `withdrawn` whatever
//! it was ([`ReferralRecord::erase_copy`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    error::{Guard, GuardError},
    exchange::{Erasure, Side},
    ids::{CaseId, ConsentId, NodeId, OrgId, ReferralId},
    model::{DisclosedCase, NeedKind},
};

/// A referral as one node holds it. At the origin, `disclosed` is exactly what was sent; at
/// the destination, exactly what arrived. `referral_id` is the same on both nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralRecord {
    pub referral_id: ReferralId,
    pub origin: NodeId,
    pub destination: NodeId,
    pub status: ReferralStatus,
    pub disclosed: DisclosedCase,
    pub requested_services: Vec<NeedKind>,
    /// The local case (origin only).
    pub case_id: Option<CaseId>,
    /// The organisation that may read the referral besides focal points: at the origin the
    /// case's owner, at the destination the assigned service provider.
    pub organisation: Option<OrgId>,
    pub status_reason: String,
    /// Origin only: the consents the disclosure relied on. Withdrawing any of them erases
    /// the destination's copy.
    #[serde(default)]
    pub consent_ids: Vec<ConsentId>,
    /// Origin only: where the erasure of the destination's copy stands.
    #[serde(default)]
    pub erasure: Erasure,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Which way a record travelled, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Incoming,
    Outgoing,
}

impl ReferralRecord {
    /// Returns the destination's copy of a referral offered by `origin`, as it arrived.
    pub fn received(
        referral_id: ReferralId,
        origin: NodeId,
        destination: NodeId,
        disclosed: DisclosedCase,
        requested_services: Vec<NeedKind>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            referral_id,
            origin,
            destination,
            status: ReferralStatus::Delivered,
            disclosed,
            requested_services,
            case_id: None,
            organisation: None,
            status_reason: String::new(),
            consent_ids: vec![],
            erasure: Erasure::NotRequested,
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies `event` with its reason.
    pub fn apply(
        &mut self,
        event: ReferralEvent,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), GuardError> {
        self.status = next(self.status, event)?;
        self.status_reason = reason.to_owned();
        self.updated_at = now;
        Ok(())
    }

    /// Erases the destination's copy on the origin's request: only the pairwise reference is
    /// kept, and the referral is withdrawn whatever its state.
    pub fn erase_copy(&mut self, reason: &str, now: OffsetDateTime) {
        self.disclosed = self.disclosed.tombstone();
        self.requested_services.clear();
        self.status = ReferralStatus::Withdrawn;
        self.status_reason = reason.to_owned();
        self.updated_at = now;
    }

    /// At the origin: asks for the destination's copy to be erased (an open referral is
    /// withdrawn); with `erase_own`, this node's record of what it sent keeps only the
    /// pairwise reference too. Returns `false` when erasure was already requested.
    pub fn request_erasure(&mut self, reason: &str, erase_own: bool, now: OffsetDateTime) -> bool {
        if self.erasure.requested() {
            return false;
        }
        if let Ok(withdrawn) = next(self.status, ReferralEvent::Withdraw) {
            self.status = withdrawn;
        }
        self.status_reason = reason.to_owned();
        self.erasure = Erasure::Requested;
        if erase_own {
            self.disclosed = self.disclosed.tombstone();
            self.requested_services.clear();
        }
        self.updated_at = now;
        true
    }

    /// Returns the side `me` is on.
    pub fn side(&self, me: NodeId) -> Side {
        Side::of(self.origin, me)
    }

    /// Returns the direction of the referral as seen from `me`.
    pub fn direction(&self, me: NodeId) -> Direction {
        if self.origin == me {
            Direction::Outgoing
        } else {
            Direction::Incoming
        }
    }

    /// Returns the other node of the referral, seen from `me`.
    pub fn peer(&self, me: NodeId) -> NodeId {
        if self.origin == me {
            self.destination
        } else {
            self.origin
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReferralStatus {
    Draft,
    Sent,
    Delivered,
    Accepted,
    Declined,
    InAssistance,
    Closed,
    Withdrawn,
}

impl ReferralStatus {
    /// Returns the status name as used in errors and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            ReferralStatus::Draft => "draft",
            ReferralStatus::Sent => "sent",
            ReferralStatus::Delivered => "delivered",
            ReferralStatus::Accepted => "accepted",
            ReferralStatus::Declined => "declined",
            ReferralStatus::InAssistance => "in_assistance",
            ReferralStatus::Closed => "closed",
            ReferralStatus::Withdrawn => "withdrawn",
        }
    }

    /// Returns whether no further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReferralStatus::Declined | ReferralStatus::Closed | ReferralStatus::Withdrawn
        )
    }
}

/// What happens to a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferralEvent {
    /// The origin sent the offer.
    Send,
    /// The origin holds the destination's signed receipt.
    Delivered,
    Accept,
    Decline,
    /// The destination assigned the case to a local service provider.
    Assign,
    Close,
    Withdraw,
}

impl ReferralEvent {
    /// Returns whether `side` may cause this event: only the destination answers and
    /// assigns; either side closes or withdraws.
    pub fn allowed_for(self, side: Side) -> bool {
        match self {
            ReferralEvent::Accept | ReferralEvent::Decline | ReferralEvent::Assign => {
                side == Side::Destination
            }
            ReferralEvent::Close | ReferralEvent::Withdraw => true,
            ReferralEvent::Send | ReferralEvent::Delivered => side == Side::Origin,
        }
    }

    /// Returns the event a peer's update to `status` announces, if that side may cause it.
    pub fn leading_to(status: ReferralStatus, side: Side) -> Option<Self> {
        let event = match status {
            ReferralStatus::Accepted => ReferralEvent::Accept,
            ReferralStatus::Declined => ReferralEvent::Decline,
            ReferralStatus::InAssistance => ReferralEvent::Assign,
            ReferralStatus::Closed => ReferralEvent::Close,
            ReferralStatus::Withdrawn => ReferralEvent::Withdraw,
            ReferralStatus::Draft | ReferralStatus::Sent | ReferralStatus::Delivered => {
                return None
            }
        };
        event.allowed_for(side).then_some(event)
    }
}

/// Returns the status after `event`, or the `state` guard's refusal naming the current state.
pub fn next(status: ReferralStatus, event: ReferralEvent) -> Result<ReferralStatus, GuardError> {
    use ReferralEvent as E;
    use ReferralStatus as S;
    let to = match (status, event) {
        (S::Draft, E::Send) => S::Sent,
        (S::Sent, E::Delivered) => S::Delivered,
        // The answer may overtake the receipt at the origin.
        (S::Sent | S::Delivered, E::Accept) => S::Accepted,
        (S::Sent | S::Delivered, E::Decline) => S::Declined,
        (S::Accepted, E::Assign) => S::InAssistance,
        (S::Accepted | S::InAssistance, E::Close) => S::Closed,
        (s, E::Withdraw) if !s.is_final() => S::Withdrawn,
        _ => {
            return Err(GuardError::new(
                Guard::State,
                format!(
                    "referral is {}; {:?} is not possible",
                    status.as_str(),
                    event
                ),
            ))
        }
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReferralEvent as E;
    use ReferralStatus as S;

    #[test]
    fn the_happy_path_runs_to_closed() {
        let mut s = S::Draft;
        for e in [E::Send, E::Delivered, E::Accept, E::Assign, E::Close] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, S::Closed);
    }

    #[test]
    fn final_states_refuse_everything_naming_the_state() {
        for s in [S::Declined, S::Closed, S::Withdrawn] {
            for e in [
                E::Send,
                E::Delivered,
                E::Accept,
                E::Decline,
                E::Assign,
                E::Close,
                E::Withdraw,
            ] {
                let err = next(s, e).unwrap_err();
                assert_eq!(err.guard, Guard::State);
                assert!(err.reason.contains(s.as_str()));
            }
        }
    }

    #[test]
    fn only_the_destination_answers_and_either_side_closes() {
        use Side::{Destination, Origin};
        assert_eq!(
            ReferralEvent::leading_to(S::Accepted, Destination),
            Some(E::Accept)
        );
        assert_eq!(ReferralEvent::leading_to(S::Accepted, Origin), None);
        assert_eq!(ReferralEvent::leading_to(S::InAssistance, Origin), None);
        assert_eq!(ReferralEvent::leading_to(S::Closed, Origin), Some(E::Close));
        assert_eq!(
            ReferralEvent::leading_to(S::Withdrawn, Destination),
            Some(E::Withdraw)
        );
        assert_eq!(ReferralEvent::leading_to(S::Delivered, Destination), None);
    }

    #[test]
    fn cannot_assign_before_acceptance() {
        assert!(next(S::Delivered, E::Assign).is_err());
        assert_eq!(next(S::Delivered, E::Withdraw), Ok(S::Withdrawn));
    }
}
