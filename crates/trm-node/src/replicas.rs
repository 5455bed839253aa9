//! Replicas of one node sharing one database (the PostgreSQL engine): any replica serves
//! every RPC; exactly one runs the delivery workers and the key rotation, under the
//! `delivery` lease in the database. Every replica takes or renews the lease every fifth of
//! its length; a replica that holds it delivers until a third of its length before it
//! ends, so when the holder dies another takes over within the lease's length (plus one
//! renewal interval).
//!
//! What a replica keeps in memory from the database (the peer directory with the keys
//! peers announced, revoked client certificates) follows a change counter that every such
//! change increments in its own transaction: each replica reads that one number every
//! `[delivery] replica_poll_ms` (200 ms by default) and reads the rest again only when it
//! moved, so a revocation made through one replica holds on the others within a second.
//! Everything is also read again every [`RELOAD`], for changes made by a replica of an
//! older version that does not count them (during a rolling upgrade). Queue depths are
//! counted when asked (see `Store::outbox_depth`), not here.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};
use trm_federation::{directory::PeerDirectory, outbox::Delivery};
use trm_store::Store;

use crate::gate::Revocations;

/// The lease of the delivery workers.
pub const DELIVERY_LEASE: &str = "delivery";

/// How often a replica reads the shared state again whatever the change counter says.
pub const RELOAD: Duration = Duration::from_secs(30);

/// What the replica task works on.
pub struct Replica {
    pub store: Store,
    pub delivery: Delivery,
    pub directory: Arc<PeerDirectory>,
    pub revocations: Arc<Revocations>,
    pub lease: Duration,
    /// How often the change counter is read.
    pub poll: Duration,
}

impl Replica {
    /// Runs until `stop` turns true, then stops delivering and gives the lease up.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        tokio::join!(self.hold_lease(stop.clone()), self.follow(stop));
    }

    /// Takes or renews the delivery lease until `stop`, and delivers while it holds it;
    /// gives it up on the way out.
    async fn hold_lease(&self, mut stop: watch::Receiver<bool>) {
        let holder = uuid::Uuid::new_v4().to_string();
        let length = time::Duration::try_from(self.lease).unwrap_or(time::Duration::seconds(5));
        let renew = self.lease / 5;
        let mut usable_until: Option<OffsetDateTime> = None;
        loop {
            match self
                .store
                .hold_lease(DELIVERY_LEASE, holder.clone(), length)
                .await
            {
                Ok(until) => {
                    if until.is_some() != usable_until.is_some() {
                        info!(holder = %holder, held = until.is_some(), "delivery lease");
                    }
                    usable_until = until;
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the delivery lease");
                    // Kept only while it is surely still ours.
                }
            }
            let now = OffsetDateTime::now_utc();
            let active = usable_until.is_some_and(|u| u > now);
            if !active {
                usable_until = None;
            } else {
                self.ensure_workers();
            }
            self.delivery.set_active(active);
            // Wakes up no later than when the lease stops being usable.
            let wait = usable_until
                .map(|u| {
                    (u - OffsetDateTime::now_utc())
                        .try_into()
                        .unwrap_or_default()
                })
                .map_or(renew, |left: Duration| left.min(renew));
            let stopping = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                break;
            }
        }
        // Given up only once this replica's workers have stopped sending.
        self.delivery.set_active(false);
        self.delivery.stopped().await;
        if let Err(e) = self.store.release_lease(DELIVERY_LEASE, holder).await {
            warn!(error = %e, "cannot give the delivery lease up");
        }
    }

    /// A peer added through another replica gets its worker here, on the one that delivers.
    fn ensure_workers(&self) {
        if self.delivery.is_active() {
            for peer in self.directory.ids() {
                self.delivery.ensure_worker(peer);
            }
        }
    }

    /// Reads the change counter every `poll` until `stop`, and what replicas keep in memory
    /// whenever it moved (and every [`RELOAD`] in any case).
    async fn follow(&self, mut stop: watch::Receiver<bool>) {
        // Read once at the start too: the node was built from the state before this runs.
        let mut seen: Option<u64> = None;
        let mut last_reload = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(self.poll) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                return;
            }
            let version = match self.store.shared_version() {
                Ok(v) => Some(v),
                Err(e) => {
                    warn!(error = %e, "cannot read the count of shared changes");
                    None
                }
            };
            let moved = version.is_some() && version != seen;
            if moved || last_reload.elapsed() >= RELOAD {
                // Read before what it counts: a change counted later is read next time.
                if self.reload() {
                    seen = version.or(seen);
                }
                last_reload = tokio::time::Instant::now();
            }
        }
    }

    /// Reads what other replicas may have changed; returns whether all of it was read.
    fn reload(&self) -> bool {
        let mut ok = true;
        let changes = self
            .store
            .directory_changes()
            .and_then(|c| Ok((c, self.store.learned_keys()?)));
        match changes {
            Ok((changes, learned)) => {
                if let Err(e) = self.directory.apply(&changes, &learned) {
                    warn!(error = %e, "cannot apply the shared peer directory");
                    ok = false;
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the shared peer directory");
                ok = false;
            }
        }
        match self.store.revoked_clients() {
            // The stored list is whole (a revocation is committed before it takes effect).
            Ok(revoked) => self.revocations.replace(&revoked),
            Err(e) => {
                warn!(error = %e, "cannot read the revoked client certificates");
                ok = false;
            }
        }
        self.ensure_workers();
        ok
    }
}
