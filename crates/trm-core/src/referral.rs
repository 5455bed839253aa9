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
    /// pairwise reference too, even when erasure was asked for before. Returns `false` when
    /// erasure was already requested (no new request to send).
    pub fn request_erasure(&mut self, reason: &str, erase_own: bool, now: OffsetDateTime) -> bool {
        // Erasing this node's record too holds even when the other copy's erasure was
        // asked for before (a consent withdrawn, then the whole case erased).
        if erase_own {
            self.disclosed = self.disclosed.tombstone();
            self.requested_services.clear();
        }
        if self.erasure.requested() {
            return false;
        }
        if let Ok(withdrawn) = next(self.status, ReferralEvent::Withdraw) {
            self.status = withdrawn;
        }
        self.status_reason = reason.to_owned();
        self.erasure = Erasure::Requested;
        self.updated_at = now;
        true
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

/// What a referral step carries besides its event: a reason, and for an assignment the
/// local service provider that takes the case on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralStep {
    pub reason: String,
    pub assign: Option<OrgId>,
}

impl crate::exchange::SharedRecord for ReferralRecord {
    type Id = ReferralId;
    type Status = ReferralStatus;
    type Event = ReferralEvent;
    type Step = ReferralStep;
    const KIND: crate::exchange::RecordKind = crate::exchange::RecordKind::Referral;

    crate::exchange::record_accessors!(referral_id: ReferralId, ReferralStatus);

    crate::exchange::disclosed_record_accessors!(ReferralEvent, ReferralStatus);
    fn apply(&mut self, event: ReferralEvent, step: &ReferralStep) -> Result<(), GuardError> {
        ReferralRecord::apply(self, event, &step.reason, OffsetDateTime::now_utc())?;
        if let Some(org) = &step.assign {
            self.organisation = Some(org.clone());
        }
        Ok(())
    }
    fn update_message(&self, step: &ReferralStep) -> crate::messages::PeerMessage {
        crate::messages::PeerMessage::ReferralUpdate {
            referral_id: self.referral_id,
            status: self.status,
            reason: step.reason.clone(),
        }
    }
    fn topic(&self) -> crate::messages::Topic {
        crate::messages::Topic::Referral(self.referral_id)
    }
}

// A referral's copy is used until the referral ends.
crate::exchange::erasable_record!(
    ReferralRecord,
    crate::model::Purpose::ReferralAssistance,
    |r| !r.status.is_final()
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::SharedRecord;
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
            for e in EVENTS {
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
    const STATUSES: [ReferralStatus; 8] = [
        S::Draft,
        S::Sent,
        S::Delivered,
        S::Accepted,
        S::Declined,
        S::InAssistance,
        S::Closed,
        S::Withdrawn,
    ];
    const EVENTS: [ReferralEvent; 7] = [
        E::Send,
        E::Delivered,
        E::Accept,
        E::Decline,
        E::Assign,
        E::Close,
        E::Withdraw,
    ];

    #[test]
    fn status_names_are_the_ones_errors_and_audit_entries_use() {
        let names: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "draft",
                "sent",
                "delivered",
                "accepted",
                "declined",
                "in_assistance",
                "closed",
                "withdrawn"
            ]
        );
        let err = next(S::Delivered, E::Close).unwrap_err();
        assert_eq!(err.reason, "referral is delivered; Close is not possible");
    }

    #[test]
    fn every_open_referral_can_be_withdrawn() {
        for s in STATUSES {
            let open = ![S::Declined, S::Closed, S::Withdrawn].contains(&s);
            assert_eq!(s.is_final(), !open, "{s:?}");
            assert_eq!(next(s, E::Withdraw).is_ok(), open, "{s:?}");
        }
    }

    #[test]
    fn each_side_may_make_only_its_own_events() {
        let made_by = |side| -> Vec<ReferralEvent> {
            EVENTS.into_iter().filter(|e| e.allowed_for(side)).collect()
        };
        assert_eq!(
            made_by(Side::Origin),
            [E::Send, E::Delivered, E::Close, E::Withdraw]
        );
        assert_eq!(
            made_by(Side::Destination),
            [E::Accept, E::Decline, E::Assign, E::Close, E::Withdraw]
        );
    }

    /// A peer's update announcing a status is read back as exactly the event that made it,
    /// from the side that may make it. Draft, sent and delivered are never announced by an
    /// update: the offer and its signed receipt carry them.
    #[test]
    fn an_announced_status_is_read_back_as_the_event_that_made_it_from_its_side_only() {
        crate::exchange::tests::assert_announcements_read_back(
            &STATUSES,
            &[
                S::Accepted,
                S::Declined,
                S::InAssistance,
                S::Closed,
                S::Withdrawn,
            ],
            &EVENTS,
            next,
            ReferralEvent::allowed_for,
            ReferralEvent::leading_to,
        );
        for side in [Side::Origin, Side::Destination] {
            for s in [S::Draft, S::Sent, S::Delivered] {
                assert_eq!(ReferralEvent::leading_to(s, side), None);
            }
        }
    }

    fn offer() -> ReferralRecord {
        let disclosed = DisclosedCase {
            case_ref: "ref-1".into(),
            languages: vec!["ro".into()],
            ..Default::default()
        };
        ReferralRecord::received(
            ReferralId::new(),
            "AT".parse().unwrap(),
            "RO".parse().unwrap(),
            disclosed,
            vec![NeedKind::Shelter],
            time::macros::datetime!(2026-01-01 0:00 UTC),
        )
    }

    #[test]
    fn a_received_offer_is_delivered_and_incoming_from_its_origin() {
        let r = offer();
        let (at, ro) = (r.origin, r.destination);
        assert_eq!(r.status, S::Delivered);
        assert_eq!(r.requested_services, [NeedKind::Shelter]);
        assert_eq!((r.case_id, r.organisation.as_ref()), (None, None));
        assert_eq!(r.erasure, Erasure::NotRequested);
        assert_eq!(r.created_at, r.updated_at);
        assert_eq!(
            (r.direction(ro), r.direction(at)),
            (Direction::Incoming, Direction::Outgoing)
        );
        assert_eq!((r.side(ro), r.side(at)), (Side::Destination, Side::Origin));
        assert_eq!((r.peer(ro), r.peer(at)), (at, ro));
    }

    #[test]
    fn a_step_keeps_its_reason_and_a_refused_one_changes_nothing() {
        let later = time::macros::datetime!(2026-01-02 0:00 UTC);
        let mut r = offer();
        r.apply(E::Accept, "shelter place free", later).unwrap();
        assert_eq!(
            (r.status, r.status_reason.as_str(), r.updated_at),
            (S::Accepted, "shelter place free", later)
        );
        let before = r.clone();
        let err = r.apply(E::Send, "again", later).unwrap_err();
        assert_eq!(err.guard, Guard::State);
        assert_eq!(r, before);
    }

    #[test]
    fn erasure_withdraws_keeps_only_the_reference_and_is_asked_once() {
        let later = time::macros::datetime!(2026-01-02 0:00 UTC);
        let mut copy = offer();
        copy.apply(E::Accept, "", later).unwrap();
        copy.erase_copy("victim's request", later);
        assert_eq!(copy.status, S::Withdrawn);
        assert_eq!(copy.disclosed, offer().disclosed.tombstone());
        assert!(copy.requested_services.is_empty());
        assert_eq!(copy.status_reason, "victim's request");

        let mut sent = offer();
        assert!(sent.request_erasure("consent withdrawn", true, later));
        assert_eq!(sent.status, S::Withdrawn, "an open referral is withdrawn");
        assert_eq!(sent.erasure, Erasure::Requested);
        assert_eq!(
            sent.disclosed,
            offer().disclosed.tombstone(),
            "its own copy too"
        );
        assert!(sent.requested_services.is_empty());
        assert_eq!(
            (sent.status_reason.as_str(), sent.updated_at),
            ("consent withdrawn", later)
        );
        assert!(!sent.request_erasure("again", false, later), "asked once");
        assert_eq!(sent.status_reason, "consent withdrawn");

        let mut kept = offer();
        kept.apply(E::Decline, "no place", later).unwrap();
        assert!(kept.request_erasure("consent withdrawn", false, later));
        assert_eq!(
            kept.status,
            S::Declined,
            "a final referral stays as it ended"
        );
        assert_eq!(
            kept.disclosed,
            offer().disclosed,
            "without erase_own it is kept"
        );
        assert_eq!(kept.requested_services, [NeedKind::Shelter]);
    }
}
