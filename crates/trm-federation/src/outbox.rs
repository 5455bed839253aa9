//! The outbox and its delivery worker. An envelope is queued in the same store transaction
//! as the state change that caused it ([`enqueue`]), sealed under the subject's data key (so
//! erasing the subject shreds queued copies too). One worker per peer delivers its queue in
//! order, verifies the peer's signed receipt against the exact bytes sent, and records it in
//! one transaction with the outbox removal and the flow's reaction. Failures back off
//! exponentially with jitter up to a cap; one peer's trouble never holds up another's queue.
//! Work left in the outbox is picked up again at start-up.

use std::{collections::HashMap, sync::Arc, time::Duration};

use prost::Message;
use rand::Rng;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use trm_core::ids::NodeId;
use trm_crypto::signing::{SigningIdentity, RECEIPT_TAG};
use trm_proto::v1::{
    envelope_body::Payload, federation_service_client::FederationServiceClient, ReceiptBody,
    ReceiptOutcome, SignedEnvelope, SignedReceipt,
};
use trm_store::{audit::AuditRecord, Store, TreeName, Tx, TxError};

use crate::{envelope, payload_kind, FlowHandler, PeerDirectory};

/// A queued outbound envelope. The envelope itself is sealed; the rest is metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub message_id: String,
    pub peer: NodeId,
    /// The record the envelope is about (referral id, return id ...): its data key seals it.
    pub subject: String,
    /// Payload kind, e.g. `referral_offer`.
    pub kind: String,
    /// Hex of the sealed, encoded `SignedEnvelope`.
    pub sealed: String,
    pub attempts: u32,
    pub created_at: i64,
    pub last_error: String,
}

fn outbox_key(peer: NodeId, seq: u64) -> Vec<u8> {
    let mut k = peer.as_str().as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn envelope_aad(message_id: &str) -> Vec<u8> {
    format!("outbox\0{message_id}").into_bytes()
}

/// Seals an envelope for `peer` and queues it inside the caller's transaction. Returns the
/// message id. Call [`Delivery::wake`] after the transaction is durable.
pub fn enqueue(
    tx: &Tx<'_>,
    identity: &SigningIdentity,
    me: NodeId,
    peer: NodeId,
    subject: &str,
    case_ref: &str,
    payload: Payload,
) -> Result<String, TxError> {
    let kind = payload_kind(&payload).to_owned();
    let env = envelope::seal(identity, me, peer, case_ref, payload);
    let message_id = trm_proto::v1::EnvelopeBody::decode(env.body.as_slice())
        .map(|b| b.message_id)
        .unwrap_or_default();
    let sealed = tx.seal_for(
        subject.as_bytes(),
        &envelope_aad(&message_id),
        &env.encode_to_vec(),
    )?;
    let item = OutboxItem {
        message_id: message_id.clone(),
        peer,
        subject: subject.to_owned(),
        kind,
        sealed: hex::encode(sealed),
        attempts: 0,
        created_at: OffsetDateTime::now_utc().unix_timestamp(),
        last_error: String::new(),
    };
    tx.put_json(TreeName::Outbox, &outbox_key(peer, tx.next_id()?), &item)?;
    Ok(message_id)
}

/// Opens a queued envelope: the exact signed bytes that will be sent. `None` when its
/// subject was erased (the queued copy is shredded with it).
pub fn open_queued(store: &Store, item: &OutboxItem) -> Result<Option<SignedEnvelope>, String> {
    let sealed = hex::decode(&item.sealed).map_err(|_| "outbox entry corrupt".to_owned())?;
    let opened = store
        .open_for(
            item.subject.as_bytes(),
            &envelope_aad(&item.message_id),
            &sealed,
        )
        .map_err(|e| e.to_string())?;
    opened
        .map(|bytes| {
            SignedEnvelope::decode(bytes.as_slice())
                .map_err(|_| "queued envelope corrupt".to_owned())
        })
        .transpose()
}

/// Returns every queued item, in delivery order per peer.
pub fn queued(store: &Store) -> Result<Vec<OutboxItem>, trm_store::StoreError> {
    Ok(store
        .scan_json::<OutboxItem>(TreeName::Outbox, b"")?
        .into_iter()
        .map(|(_, item)| item)
        .collect())
}

/// Settings of the delivery worker.
#[derive(Clone)]
pub struct DeliveryConfig {
    pub node: NodeId,
    /// Longest wait between two attempts to one peer.
    pub backoff_cap: Duration,
    /// How long one delivery attempt may take.
    pub request_timeout: Duration,
    /// This node's federation certificate and key (PEM), presented as TLS client.
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("node", &self.node)
            .field("backoff_cap", &self.backoff_cap)
            .finish_non_exhaustive()
    }
}

/// What the worker knows of a peer, for operators.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    pub reachable: bool,
    pub last_delivery: Option<OffsetDateTime>,
}

/// The delivery worker: one task per peer.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: DeliveryConfig,
    store: Store,
    directory: Arc<PeerDirectory>,
    handler: Arc<dyn FlowHandler>,
    wakers: HashMap<NodeId, Arc<Notify>>,
    states: std::sync::Mutex<HashMap<NodeId, PeerState>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth retrying later (peer down, timeout, transient refusal).
    Retry(String),
    /// The store failed; retry later too, but say so.
    Store(String),
}

impl Delivery {
    /// Starts one worker per peer in the directory; they stop when `shutdown` turns true.
    pub fn start(
        cfg: DeliveryConfig,
        store: Store,
        directory: Arc<PeerDirectory>,
        handler: Arc<dyn FlowHandler>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let wakers = directory
            .ids()
            .into_iter()
            .map(|id| (id, Arc::new(Notify::new())))
            .collect();
        let delivery = Delivery {
            inner: Arc::new(Inner {
                cfg,
                store,
                directory,
                handler,
                wakers,
                states: Default::default(),
                tasks: Default::default(),
            }),
        };
        let tasks: Vec<_> = delivery
            .inner
            .wakers
            .keys()
            .copied()
            .map(|peer| {
                let d = delivery.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { d.run_peer(peer, shutdown).await })
            })
            .collect();
        if let Ok(mut t) = delivery.inner.tasks.lock() {
            *t = tasks;
        }
        delivery
    }

    /// Waits until every worker has stopped (after the shutdown signal).
    pub async fn stopped(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Tells the worker of `peer` that new work is queued.
    pub fn wake(&self, peer: NodeId) {
        if let Some(n) = self.inner.wakers.get(&peer) {
            n.notify_one();
        }
    }

    /// Returns what the worker knows of `peer`.
    pub fn peer_state(&self, peer: NodeId) -> PeerState {
        self.inner
            .states
            .lock()
            .ok()
            .and_then(|s| s.get(&peer).cloned())
            .unwrap_or_default()
    }

    fn set_state(&self, peer: NodeId, reachable: bool, delivered: bool) {
        if let Ok(mut states) = self.inner.states.lock() {
            let s = states.entry(peer).or_default();
            s.reachable = reachable;
            if delivered {
                s.last_delivery = Some(OffsetDateTime::now_utc());
            }
        }
    }

    fn client(&self, peer: NodeId) -> Option<FederationServiceClient<Channel>> {
        let entry = self.inner.directory.get(peer)?;
        let cfg = &self.inner.cfg;
        match crate::connect::channel(
            &entry,
            &cfg.tls_cert_pem,
            &cfg.tls_key_pem,
            cfg.request_timeout,
        ) {
            Ok(channel) => Some(FederationServiceClient::new(channel)),
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot build a connection to the peer");
                None
            }
        }
    }

    async fn run_peer(self, peer: NodeId, mut shutdown: watch::Receiver<bool>) {
        let Some(notify) = self.inner.wakers.get(&peer).cloned() else {
            return;
        };
        let Some(mut client) = self.client(peer) else {
            warn!(peer = %peer, "peer endpoint or trust anchor unusable; no delivery to it");
            return;
        };
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let next = match self
                .inner
                .store
                .scan_json::<OutboxItem>(TreeName::Outbox, peer.as_str().as_bytes())
            {
                Ok(mut items) if !items.is_empty() => Some(items.swap_remove(0)),
                Ok(_) => None,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "cannot read the outbox");
                    None
                }
            };
            let Some((key, item)) = next else {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            match self.attempt(&mut client, peer, &key, &item).await {
                Ok(()) => {
                    failures = 0;
                    self.set_state(peer, true, true);
                }
                Err(failure) => {
                    let (reachable, why) = match failure {
                        Failure::Retry(why) => (false, why),
                        Failure::Store(why) => (true, why),
                    };
                    self.set_state(peer, reachable, false);
                    failures = failures.saturating_add(1);
                    self.note_failure(&key, &item, &why);
                    let wait = self.backoff(failures);
                    debug!(peer = %peer, message_id = %item.message_id, wait_ms = wait.as_millis() as u64, reason = %why, "delivery failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Returns the wait after `failures` consecutive failures: exponential from 200 ms,
    /// capped, with full jitter over its upper half.
    fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_millis(200).saturating_mul(1u32 << failures.min(20));
        let capped = base.min(self.inner.cfg.backoff_cap);
        let half = capped / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    fn note_failure(&self, key: &[u8], item: &OutboxItem, why: &str) {
        let mut updated = item.clone();
        updated.attempts = updated.attempts.saturating_add(1);
        updated.last_error = why.to_owned();
        let r = self.inner.store.transact::<(), (), _>(|tx| {
            // Only if the entry is still queued (not delivered meanwhile).
            if tx.get_json::<OutboxItem>(TreeName::Outbox, key)?.is_some() {
                tx.put_json(TreeName::Outbox, key, &updated)?;
            }
            Ok(())
        });
        if r.is_err() {
            warn!(message_id = %item.message_id, "cannot record a delivery failure");
        }
    }

    async fn attempt(
        &self,
        client: &mut FederationServiceClient<Channel>,
        peer: NodeId,
        key: &[u8],
        item: &OutboxItem,
    ) -> Result<(), Failure> {
        let store = &self.inner.store;
        let sealed =
            hex::decode(&item.sealed).map_err(|_| Failure::Store("outbox entry corrupt".into()))?;
        let opened = store
            .open_for(
                item.subject.as_bytes(),
                &envelope_aad(&item.message_id),
                &sealed,
            )
            .map_err(|e| Failure::Store(e.to_string()))?;
        let Some(bytes) = opened else {
            // The subject was erased: its queued copy is shredded with it.
            info!(peer = %peer, message_id = %item.message_id, "queued envelope's subject erased; dropped");
            return self.finish(key, item, None).await;
        };
        let env = SignedEnvelope::decode(bytes.as_slice())
            .map_err(|_| Failure::Store("queued envelope corrupt".into()))?;
        let receipt = client
            .deliver(env.clone())
            .await
            .map_err(|s| Failure::Retry(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let (outcome, reason) = self
            .verify_receipt(peer, item, &env, &receipt)
            .map_err(Failure::Retry)?;
        self.finish(key, item, Some((receipt, outcome, reason)))
            .await
    }

    /// Checks a receipt: signed by a key of `peer`, for this message id, over the exact body.
    fn verify_receipt(
        &self,
        peer: NodeId,
        item: &OutboxItem,
        env: &SignedEnvelope,
        receipt: &SignedReceipt,
    ) -> Result<(ReceiptOutcome, String), String> {
        let entry = self
            .inner
            .directory
            .get(peer)
            .ok_or("peer no longer in the directory")?;
        let key = entry
            .key(&receipt.key_id)
            .ok_or("receipt signed by an unknown key")?;
        trm_crypto::signing::verify(&key.public, RECEIPT_TAG, &receipt.body, &receipt.signature)
            .map_err(|_| "receipt signature does not verify")?;
        let body =
            ReceiptBody::decode(receipt.body.as_slice()).map_err(|_| "receipt does not decode")?;
        if body.message_id != item.message_id
            || body.body_sha256 != trm_crypto::sha256(&env.body)
            || body.receiver != peer.as_str()
        {
            return Err("receipt is not for the envelope sent".into());
        }
        let outcome =
            ReceiptOutcome::try_from(body.outcome).map_err(|_| "receipt outcome unknown")?;
        if outcome == ReceiptOutcome::Unspecified {
            return Err("receipt outcome unspecified".into());
        }
        Ok((outcome, body.reason))
    }

    /// Removes a delivered entry, keeps the receipt as proof, and lets the flow react, all in
    /// one transaction; a REJECTED receipt moves the entry to the dead letters.
    async fn finish(
        &self,
        key: &[u8],
        item: &OutboxItem,
        receipt: Option<(SignedReceipt, ReceiptOutcome, String)>,
    ) -> Result<(), Failure> {
        let handler = &self.inner.handler;
        let r = self.inner.store.transact(|tx| {
            tx.remove(TreeName::Outbox, key)?;
            let Some((receipt, outcome, reason)) = &receipt else {
                tx.audit(
                    AuditRecord::new("node", "outbox.drop", &item.message_id, "erased")
                        .detail(item.kind.clone()),
                )?;
                return Ok(());
            };
            tx.put_json(
                TreeName::Receipts,
                item.message_id.as_bytes(),
                &hex::encode(receipt.encode_to_vec()),
            )?;
            if *outcome == ReceiptOutcome::Rejected {
                let mut dead = item.clone();
                dead.last_error = reason.clone();
                tx.put_json(TreeName::DeadLetters, key, &dead)?;
            }
            handler.on_receipt(tx, item, *outcome, reason)?;
            tx.audit(
                AuditRecord::new(
                    format!("peer:{}", item.peer),
                    "envelope.receipt",
                    &item.message_id,
                    outcome.as_str_name(),
                )
                .detail(format!("{} {}", item.kind, reason)),
            )
        });
        r.map_err(|e| Failure::Store(format!("{e:?}")))?;
        self.inner
            .store
            .durable()
            .await
            .map_err(|e| Failure::Store(e.to_string()))
    }
}
