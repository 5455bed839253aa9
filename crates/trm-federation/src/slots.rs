//! A per-peer cap on concurrent inbound requests: one peer cannot take all of a node's
//! capacity. A request over the cap is refused (RESOURCE_EXHAUSTED) rather than queued.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use trm_core::ids::NodeId;

/// In-flight request counts per peer.
#[derive(Debug)]
pub struct PeerSlots {
    limit: usize,
    used: Arc<Mutex<HashMap<NodeId, usize>>>,
}

/// A held slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    peer: NodeId,
    used: Arc<Mutex<HashMap<NodeId, usize>>>,
}

impl PeerSlots {
    /// Returns a cap of `limit` concurrent requests per peer.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: Arc::default(),
        }
    }

    /// Takes a slot for `peer`, or `None` when it already has `limit` requests in flight.
    pub fn try_acquire(&self, peer: NodeId) -> Option<Slot> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let n = used.entry(peer).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            peer,
            used: self.used.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = used.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_has_its_own_cap_and_slots_come_back() {
        let slots = PeerSlots::new(2);
        let (ro, ng): (NodeId, NodeId) = ("RO".parse().unwrap(), "NG".parse().unwrap());
        let a = slots.try_acquire(ro).unwrap();
        let _b = slots.try_acquire(ro).unwrap();
        assert!(
            slots.try_acquire(ro).is_none(),
            "third concurrent request from RO"
        );
        assert!(slots.try_acquire(ng).is_some(), "NG is not held up by RO");
        drop(a);
        assert!(slots.try_acquire(ro).is_some());
    }
}
