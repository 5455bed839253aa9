//! What the three shared records (referral, return plan, hearing) have in common: two nodes,
//! one of which acts at each step ([`Side`]), and, for a referral or a return plan, where
//! the erasure of the other node's copy stands ([`Erasure`]).

use serde::{Deserialize, Serialize};

use crate::{
    error::{Guard, GuardError},
    ids::NodeId,
};

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
mod tests {
    use super::*;

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
