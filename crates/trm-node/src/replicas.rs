//! Replicas of one node sharing one database (the PostgreSQL engine): any replica serves
//! every RPC; exactly one runs the delivery workers and the key rotation, under the
//! `delivery` lease in the database. Every replica takes or renews the lease every fifth of
//! its length; a replica that holds it delivers until a third of its length before it
//! ends, so when the holder dies another takes over within the lease's length (plus one
//! renewal interval). What a replica keeps in memory from the database (the peer
//! directory with the keys peers announced, revoked client certificates, queue depths) is
//! read again every few seconds, so a change made through one replica reaches the others.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};
use trm_federation::{directory::PeerDirectory, outbox::Delivery};
use trm_store::Store;

use crate::gate::Revocations;

/// The lease of the delivery workers.
pub const DELIVERY_LEASE: &str = "delivery";

/// How often a replica reads the shared state again.
const RELOAD: Duration = Duration::from_secs(2);

/// What the replica task works on.
pub struct Replica {
    pub store: Store,
    pub delivery: Delivery,
    pub directory: Arc<PeerDirectory>,
    pub revocations: Arc<Revocations>,
    pub lease: Duration,
}

impl Replica {
    /// Runs until `stop` turns true, then stops delivering and gives the lease up.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let holder = uuid::Uuid::new_v4().to_string();
        let length = time::Duration::try_from(self.lease).unwrap_or(time::Duration::seconds(5));
        let renew = self.lease / 5;
        let mut usable_until: Option<OffsetDateTime> = None;
        let mut last_reload = tokio::time::Instant::now();
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
                // A peer added through another replica gets its worker here.
                for peer in self.directory.ids() {
                    self.delivery.ensure_worker(peer);
                }
            }
            self.delivery.set_active(active);
            if last_reload.elapsed() >= RELOAD {
                self.reload();
                last_reload = tokio::time::Instant::now();
            }
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
        self.delivery.set_active(false);
        self.delivery.stopped().await;
        if let Err(e) = self.store.release_lease(DELIVERY_LEASE, holder).await {
            warn!(error = %e, "cannot give the delivery lease up");
        }
    }

    /// Reads what other replicas may have changed.
    fn reload(&self) {
        let changes = self
            .store
            .directory_changes()
            .and_then(|c| Ok((c, self.store.learned_keys()?)));
        match changes {
            Ok((changes, learned)) => {
                if let Err(e) = self.directory.apply(&changes, &learned) {
                    warn!(error = %e, "cannot apply the shared peer directory");
                }
            }
            Err(e) => warn!(error = %e, "cannot read the shared peer directory"),
        }
        match self.store.revoked_clients() {
            Ok(revoked) => revoked.iter().for_each(|r| self.revocations.add(r)),
            Err(e) => warn!(error = %e, "cannot read the revoked client certificates"),
        }
        if let Err(e) = self.store.recount_outbox() {
            warn!(error = %e, "cannot count the outbox");
        }
    }
}
