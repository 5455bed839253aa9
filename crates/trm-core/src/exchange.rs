//! What the shared records (referral, return plan, hearing) have in common, and what a new
//! one implements to join them: one lifecycle ([`SharedRecord`]) between two nodes, one of
//! which acts at each step ([`Side`]), its kind registered once ([`RecordKind`]), and, for a
//! record that carries a victim's data, where the erasure of the other node's copy stands
//! ([`Erasure`], [`ErasableRecord`]). The store keys, indexes and counts records by kind, and
//! the node takes, announces, lists and erases them with one pipeline each, over this trait.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::{
    access::Action,
    error::{Guard, GuardError},
    ids::{NodeId, OrgId},
    referral::Direction,
};

/// The kinds of shared record, registered once: whatever iterates them (the store's key
/// layout, the rule that a peer never reaches a local record through an id it chose,
/// statistics) covers a new kind by its entry here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKind {
    Referral,
    Return,
    Hearing,
    SafetyAlert,
    Claim,
    VictimStatus,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 6] = [
        RecordKind::Referral,
        RecordKind::Return,
        RecordKind::Hearing,
        RecordKind::SafetyAlert,
        RecordKind::Claim,
        RecordKind::VictimStatus,
    ];

    /// Returns what is fixed about the kind, in one row per kind.
    pub const fn info(self) -> &'static KindInfo {
        match self {
            RecordKind::Referral => &KindInfo {
                name: "referral",
                code: "referral",
                type_name: "referral",
                update_action: "referral.update",
                tag: b'r',
                read: Action::ReadReferrals,
            },
            RecordKind::Return => &KindInfo {
                name: "return plan",
                code: "return",
                type_name: "return_plan",
                update_action: "return.update",
                tag: b't',
                read: Action::ReadReturnPlans,
            },
            RecordKind::Hearing => &KindInfo {
                name: "hearing",
                code: "hearing",
                type_name: "hearing",
                update_action: "hearing.update",
                tag: b'h',
                read: Action::ReadHearings,
            },
            RecordKind::SafetyAlert => &KindInfo {
                name: "safety alert",
                code: "safety_alert",
                type_name: "safety_alert",
                update_action: "safety_alert.update",
                tag: b'w',
                read: Action::ReadSafetyAlerts,
            },
            RecordKind::Claim => &KindInfo {
                name: "claim",
                code: "claim",
                type_name: "claim",
                update_action: "claim.update",
                tag: b'l',
                read: Action::ReadClaims,
            },
            RecordKind::VictimStatus => &KindInfo {
                name: "victim status request",
                code: "victim_status",
                type_name: "victim_status_request",
                update_action: "victim_status.answer",
                tag: b'v',
                read: Action::ReadVictimStatus,
            },
        }
    }

    /// Returns the kind in words ("referral", "return plan", "hearing"), as errors name it.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Returns the kind's name in data-key subjects (`hearing/<id>`).
    pub fn code(self) -> &'static str {
        self.info().code
    }

    /// Returns the audit action of a local step announced to the other node.
    pub fn update_action(self) -> &'static str {
        self.info().update_action
    }

    /// Returns the kind's one-byte tag in keys.
    pub fn tag(self) -> u8 {
        self.info().tag
    }
}

/// What is fixed about a kind of shared record. Stored keys are found by `code` and `tag`,
/// and clients read `type_name`: none of them ever changes for a kind.
#[derive(Debug)]
pub struct KindInfo {
    /// The kind in words, as errors name it.
    pub name: &'static str,
    /// Its name in data-key subjects (`hearing/<id>`).
    pub code: &'static str,
    /// The record type as the contract writes it (events, the console).
    pub type_name: &'static str,
    /// The audit action of a local step announced to the other node.
    pub update_action: &'static str,
    /// Its one-byte tag in keys. Its `X/` and `Xi/` must not already be key prefixes in
    /// `trm_store::repo::layout`.
    pub tag: u8,
    /// The action of the role table that reads records of the kind (and their events).
    pub read: Action,
}

/// One lifecycle for every record two nodes share: who holds which side, which events each
/// side may take, what an event does. Implemented by each shared record; the pipelines of
/// the node and the repository of the store are written once over it.
pub trait SharedRecord: Clone + Debug + Send + Sync + 'static {
    /// The record's id (the same on both nodes).
    type Id: crate::ids::RecordId;
    type Status: Copy + Eq + Debug + Send + Sync + 'static;
    type Event: Copy + Eq + Debug + Send + Sync + 'static;
    /// What a step carries besides its event (a reason, a date ...).
    type Step: Clone + Debug + Default + Send + Sync + 'static;
    const KIND: RecordKind;

    fn id(&self) -> Self::Id;
    /// The node that created the record and sent it.
    fn origin(&self) -> NodeId;
    /// The node it was sent to.
    fn destination(&self) -> NodeId;
    fn status(&self) -> Self::Status;
    /// Returns whether the record is over (no step is left to take).
    fn is_final(&self) -> bool;
    /// When the record last changed on this node.
    fn updated_at(&self) -> time::OffsetDateTime;
    /// Returns the status's name, as audit entries and errors write it.
    fn status_name(&self) -> &'static str;
    /// The pairwise reference the two nodes know the case by.
    fn case_ref(&self) -> &str;
    /// The organisation that looks after the record on this node besides focal points.
    fn owner(&self) -> Option<&OrgId>;
    /// Returns whether `side` may take `event`.
    fn may_take(event: Self::Event, side: Side) -> bool;
    /// Returns the event the other node, on `side`, took to reach `status` (what its update
    /// announces), when that side may.
    fn event_to(status: Self::Status, side: Side) -> Option<Self::Event>;
    /// Applies `event` with `step` (a local step, or the other node's announcement of it).
    fn apply(&mut self, event: Self::Event, step: &Self::Step) -> Result<(), GuardError>;
    /// The other node's `event`, which [`SharedRecord::apply`] refused because it crossed
    /// this node's own last step in transit (each taken from the state before the other's):
    /// settles the two if the record has a rule for that crossing, and returns whether it
    /// did. Only the other node's announcement comes here, never a local step. None by
    /// default.
    fn settle_crossing(&mut self, _event: Self::Event, _step: &Self::Step) -> bool {
        false
    }
    /// Returns the message that tells the other node of a step just taken (`step`, the
    /// record in its new state).
    fn update_message(&self, step: &Self::Step) -> crate::messages::PeerMessage;
    /// Returns what the record's envelopes are about.
    fn topic(&self) -> crate::messages::Topic;

    /// Returns the side `me` is on.
    fn side(&self, me: NodeId) -> Side {
        Side::of(self.origin(), me)
    }

    /// Returns the other node.
    fn peer(&self, me: NodeId) -> NodeId {
        if self.origin() == me {
            self.destination()
        } else {
            self.origin()
        }
    }

    /// Returns which way the record travelled, seen from `me`.
    fn direction(&self, me: NodeId) -> Direction {
        if self.origin() == me {
            Direction::Outgoing
        } else {
            Direction::Incoming
        }
    }
}

/// Writes the accessors of [`SharedRecord`] that every record has alike: its id (the
/// field named), its status and when it changed.
macro_rules! record_accessors {
    ($id:ident: $id_type:ty, $status:ty) => {
        fn id(&self) -> $id_type {
            self.$id
        }
        fn status(&self) -> $status {
            self.status
        }
        fn status_name(&self) -> &'static str {
            self.status.as_str()
        }
        fn is_final(&self) -> bool {
            self.status.is_final()
        }
        fn updated_at(&self) -> time::OffsetDateTime {
            self.updated_at
        }
    };
}
pub(crate) use record_accessors;

/// Writes the rest of [`SharedRecord`]'s accessors for a record that carries a disclosed
/// case (a referral, a return plan): its two nodes, the disclosed case's reference, the
/// organisation that looks after it, and which side takes which event (the event's own
/// `allowed_for` and `leading_to`).
macro_rules! disclosed_record_accessors {
    ($event:ty, $status:ty) => {
        fn origin(&self) -> crate::ids::NodeId {
            self.origin
        }
        fn destination(&self) -> crate::ids::NodeId {
            self.destination
        }
        fn case_ref(&self) -> &str {
            &self.disclosed.case_ref
        }
        fn owner(&self) -> Option<&crate::ids::OrgId> {
            self.organisation.as_ref()
        }
        fn may_take(event: $event, side: crate::exchange::Side) -> bool {
            event.allowed_for(side)
        }
        fn event_to(status: $status, side: crate::exchange::Side) -> Option<$event> {
            <$event>::leading_to(status, side)
        }
    };
}
pub(crate) use disclosed_record_accessors;

/// A local request for one step of record `R`: which record, which event, with what. Parsed
/// from the wire by trm-proto (`TryFrom` of each step's request), taken by the node's one
/// step pipeline.
#[derive(Debug, Clone)]
pub struct StepRequest<R: SharedRecord> {
    pub id: R::Id,
    pub event: R::Event,
    pub step: R::Step,
}

/// A shared record that carries a victim's data (a disclosed case): the origin keeps the
/// copy current while the other node uses it, and can ask for it to be erased; the other
/// node erases it. Every such kind is a [`Shared`](crate::ids::Shared), and code that works
/// on any of them is written once, generic over this trait, and run on the kind a `Shared`
/// names by [`on_shared!`](crate::on_shared).
pub trait ErasableRecord: SharedRecord {
    /// What the case was disclosed for (the disclosure table's row).
    const PURPOSE: crate::model::Purpose;
    /// The victim's data the record carries.
    fn disclosed(&self) -> &crate::model::DisclosedCase;
    fn disclosed_mut(&mut self) -> &mut crate::model::DisclosedCase;
    /// The consents its disclosure relies on.
    fn consent_ids_mut(&mut self) -> &mut Vec<crate::ids::ConsentId>;
    /// Returns whether the other node still uses its copy, by the record's own rule (its
    /// status), so that an update of the case reaches it. It does not look at the erasure:
    /// a caller that sends the copy anything checks [`ErasableRecord::erasure`] too (an
    /// open claim stays open when its copy's erasure is asked for).
    fn copy_in_use(&self) -> bool;
    /// Where the erasure of the other node's copy stands (kept at the origin).
    fn erasure(&self) -> Erasure;
    /// At the origin: asks for the other copy's erasure (an open record is ended); with
    /// `erase_own`, this node's record keeps only the pairwise reference too. Returns
    /// `false` when erasure was already requested.
    fn request_erasure(&mut self, reason: &str, erase_own: bool, now: time::OffsetDateTime)
        -> bool;
    /// At the destination: erases this copy (only the pairwise reference is kept).
    fn erase_copy(&mut self, reason: &str, now: time::OffsetDateTime);
    /// At the origin: the destination confirmed the erasure of its copy.
    fn confirm_erasure(&mut self) -> Result<(), GuardError>;
}

/// Writes [`ErasableRecord`] for a record that keeps its [`Erasure`] in a field `erasure`,
/// its disclosed case in `disclosed` and its consents in `consent_ids`, discloses for
/// `$purpose`, and erases through its own `request_erasure` and `erase_copy` (what each
/// erases is the record's own rule); `$in_use` says whether the other node still uses the
/// copy. A confirmation is recorded the same way for every record.
macro_rules! erasable_record {
    ($record:ty, $purpose:expr, $in_use:expr) => {
        impl crate::exchange::ErasableRecord for $record {
            const PURPOSE: crate::model::Purpose = $purpose;
            fn disclosed(&self) -> &crate::model::DisclosedCase {
                &self.disclosed
            }
            fn disclosed_mut(&mut self) -> &mut crate::model::DisclosedCase {
                &mut self.disclosed
            }
            fn consent_ids_mut(&mut self) -> &mut Vec<crate::ids::ConsentId> {
                &mut self.consent_ids
            }
            fn copy_in_use(&self) -> bool {
                let in_use: fn(&$record) -> bool = $in_use;
                in_use(self)
            }
            fn erasure(&self) -> crate::exchange::Erasure {
                self.erasure
            }
            fn request_erasure(
                &mut self,
                reason: &str,
                erase_own: bool,
                now: time::OffsetDateTime,
            ) -> bool {
                <$record>::request_erasure(self, reason, erase_own, now)
            }
            fn erase_copy(&mut self, reason: &str, now: time::OffsetDateTime) {
                <$record>::erase_copy(self, reason, now)
            }
            fn confirm_erasure(&mut self) -> Result<(), crate::error::GuardError> {
                self.erasure.confirm()?;
                self.updated_at = time::OffsetDateTime::now_utc();
                Ok(())
            }
        }
    };
}
pub(crate) use erasable_record;

/// Which node of a shared record acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The node that created the record and sent it: a referral's origin, the country that
    /// requests a return (where the victim is), the country that requests a hearing.
    Origin,
    /// The node it was sent to: a referral's destination, the country of return, the
    /// witness's country.
    Destination,
}

impl Side {
    /// Returns the side of `node` in a record created by `origin`.
    pub fn of(origin: NodeId, node: NodeId) -> Side {
        if node == origin {
            Side::Origin
        } else {
            Side::Destination
        }
    }
}

/// Where the erasure of the destination's copy stands (kept at the origin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Erasure {
    #[default]
    NotRequested,
    /// Asked of the destination; its confirmation is awaited.
    Requested,
    /// The destination confirmed it erased its copy.
    Confirmed,
}

impl Erasure {
    /// Returns whether the erasure was asked for (confirmed or not).
    pub fn requested(self) -> bool {
        self != Erasure::NotRequested
    }

    /// Returns whether the destination confirmed it.
    pub fn confirmed(self) -> bool {
        self == Erasure::Confirmed
    }

    /// Records the destination's confirmation: only of a requested erasure.
    pub fn confirm(&mut self) -> Result<(), GuardError> {
        match self {
            Erasure::NotRequested => Err(GuardError::new(Guard::State, "no erasure was requested")),
            _ => {
                *self = Erasure::Confirmed;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Asserts, for a record whose events each side may take, that the other node's
    /// announcement of each status of `targets` (`leading_to`, read from `side`) is exactly
    /// the one event of that side that made it from any status, and that an event read
    /// where none of that side makes it is one `next` then refuses.
    pub(crate) fn assert_announcements_read_back<S, E>(
        statuses: &[S],
        targets: &[S],
        events: &[E],
        next: impl Fn(S, E) -> Result<S, GuardError>,
        allowed_for: impl Fn(E, Side) -> bool,
        leading_to: impl Fn(S, Side) -> Option<E>,
    ) where
        S: Copy + PartialEq + Debug,
        E: Copy + PartialEq + Debug,
    {
        for side in [Side::Origin, Side::Destination] {
            for &from in statuses {
                for &to in targets {
                    let made_by: Vec<E> = events
                        .iter()
                        .copied()
                        .filter(|e| allowed_for(*e, side) && next(from, *e).ok() == Some(to))
                        .collect();
                    let read = leading_to(to, side);
                    match made_by.as_slice() {
                        [] => {
                            if let Some(e) = read {
                                assert!(allowed_for(e, side), "{side:?} {from:?} -> {to:?}");
                                assert_ne!(next(from, e).ok(), Some(to), "{from:?} {e:?}");
                            }
                        }
                        [e] => assert_eq!(read, Some(*e), "{side:?} {from:?} -> {to:?}"),
                        many => panic!("{from:?} -> {to:?} by {many:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn only_a_requested_erasure_can_be_confirmed() {
        let mut e = Erasure::default();
        assert!(e.confirm().is_err());
        assert_eq!(e, Erasure::NotRequested);
        e = Erasure::Requested;
        assert!(e.requested() && !e.confirmed());
        e.confirm().unwrap();
        assert!(e.requested() && e.confirmed());
        let (at, ro): (NodeId, NodeId) = ("AT".parse().unwrap(), "RO".parse().unwrap());
        assert_eq!(Side::of(at, at), Side::Origin);
        assert_eq!(Side::of(at, ro), Side::Destination);
    }
}
