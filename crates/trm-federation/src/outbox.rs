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
use trm_crypto::signing::{Signer, SigningIdentity, RECEIPT_TAG};
use trm_proto::v1::{
    envelope_body::Payload, federation_service_client::FederationServiceClient, BatchReceiptBody,
    DeliverBatchRequest, ReceiptBody, ReceiptOutcome, SignedEnvelope, SignedReceipt,
};

/// What a connection to a peer was built for: its endpoint, CA and pin.
type TrustKey = (String, String, Option<String>);

/// The most envelopes sent in one batch.
const SEND_BATCH: usize = 64;
/// The most sealed bytes sent in one batch (well inside the receiver's 16 MiB limit).
const SEND_BATCH_BYTES: usize = 8 << 20;
use trm_store::{audit::AuditRecord, Store, Subject, TreeName, Tx, TxError, TxFail};

use crate::{envelope, payload_kind, Counters, FlowHandler, PeerDirectory};

/// Why a dead letter could not be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no dead letter has that message id")]
    NotFound,
    #[error("the envelope's subject was erased; there is nothing to send")]
    Erased,
    #[error("storage: {0}")]
    Store(String),
}

/// Returns the dead letters.
pub fn dead_letters(store: &Store) -> Result<Vec<OutboxItem>, trm_store::StoreError> {
    Ok(store
        .scan_json::<OutboxItem>(TreeName::DeadLetters, b"")?
        .into_iter()
        .map(|(_, item)| item)
        .collect())
}

/// A queued outbound envelope. The envelope itself is sealed; the rest is metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub message_id: String,
    pub peer: NodeId,
    /// The record the envelope is about (referral id, return id ...).
    pub subject: String,
    /// Hex of the data-key subject that seals the envelope (the record's): shredding it
    /// destroys the queued copy with the record.
    pub sealed_under: String,
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

/// What an outbound envelope is about: the record's id (for the flow's reaction to the
/// receipt) and the data-key subject that seals the queued copy.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    pub id: &'a str,
    pub sealed_under: &'a Subject,
}

/// Seals an envelope for `peer` and queues it inside the caller's transaction. Returns the
/// message id. Call [`Delivery::wake`] after the transaction is durable.
pub fn enqueue(
    tx: &Tx<'_>,
    identity: &SigningIdentity,
    me: NodeId,
    peer: NodeId,
    about: About<'_>,
    case_ref: &str,
    payload: Payload,
) -> Result<String, TxError> {
    enqueue_at(
        tx,
        identity,
        me,
        peer,
        about,
        case_ref,
        payload,
        OffsetDateTime::now_utc(),
    )
}

/// The note a transaction carries for each peer it queued an envelope for.
fn wake_note(peer: NodeId) -> String {
    format!("outbox/{peer}")
}

/// Same as [`enqueue`], dated `created_at` (a key announcement is dated at the rotation
/// instant, the last moment the old key signs).
#[allow(clippy::too_many_arguments)]
pub fn enqueue_at(
    tx: &Tx<'_>,
    identity: &SigningIdentity,
    me: NodeId,
    peer: NodeId,
    about: About<'_>,
    case_ref: &str,
    payload: Payload,
    created_at: OffsetDateTime,
) -> Result<String, TxError> {
    let kind = payload_kind(&payload).to_owned();
    tx.notify_after_commit(&wake_note(peer));
    let message_id = uuid::Uuid::now_v7().to_string();
    let env = envelope::seal_with_id(
        identity,
        me,
        peer,
        case_ref,
        payload,
        &message_id,
        created_at,
    );
    let sealed = tx.seal_for(
        about.sealed_under,
        &envelope_aad(&message_id),
        &env.encode_to_vec(),
    )?;
    let item = OutboxItem {
        message_id: message_id.clone(),
        peer,
        subject: about.id.to_owned(),
        sealed_under: hex::encode(about.sealed_under.as_bytes()),
        kind,
        sealed: hex::encode(sealed),
        attempts: 0,
        created_at: OffsetDateTime::now_utc().unix_timestamp(),
        last_error: String::new(),
    };
    tx.put_json(TreeName::Outbox, &outbox_key(peer, tx.next_id()?), &item)?;
    Ok(message_id)
}

impl OutboxItem {
    /// Returns the data-key subject that seals the queued envelope.
    pub fn sealed_under(&self) -> Option<Subject> {
        hex::decode(&self.sealed_under)
            .ok()
            .map(Subject::from_bytes)
    }
}

/// Opens a queued envelope: the exact signed bytes that will be sent. `None` when its
/// subject was erased (the queued copy is shredded with it).
pub fn open_queued(store: &Store, item: &OutboxItem) -> Result<Option<SignedEnvelope>, String> {
    let sealed = hex::decode(&item.sealed).map_err(|_| "outbox entry corrupt".to_owned())?;
    let subject = item
        .sealed_under()
        .ok_or_else(|| "outbox entry corrupt".to_owned())?;
    let opened = store
        .open_for(&subject, &envelope_aad(&item.message_id), &sealed)
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

/// Records a peer's verified answer for a queued item (already removed from the outbox):
/// the signed receipt kept as proof, a refusal moved to the dead letters, the flow told,
/// and the audit entry.
#[allow(clippy::too_many_arguments)]
fn record_outcome(
    tx: &Tx<'_>,
    handler: &dyn FlowHandler,
    key: &[u8],
    item: &OutboxItem,
    proof: &str,
    outcome: ReceiptOutcome,
    reason: &str,
    how: &str,
) -> Result<(), TxFail<crate::Rejection>> {
    tx.put_json(TreeName::Receipts, item.message_id.as_bytes(), &proof)?;
    if outcome == ReceiptOutcome::Rejected {
        let mut dead = item.clone();
        dead.last_error = reason.to_owned();
        tx.put_json(TreeName::DeadLetters, key, &dead)?;
    }
    handler.on_receipt(tx, item, outcome, reason)?;
    tx.audit(
        AuditRecord::new(
            format!("peer:{}", item.peer),
            "envelope.receipt",
            &item.message_id,
            outcome.as_str_name(),
        )
        .detail(format!("{} {reason}{how}", item.kind)),
    )
}

/// Settings of the delivery worker.
#[derive(Clone)]
pub struct DeliveryConfig {
    pub node: NodeId,
    /// An envelope still undelivered this long after it was sealed becomes a dead letter
    /// (the receiver would refuse it as stale anyway).
    pub replay_window: Duration,
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
    identity: Arc<Signer>,
    counters: Arc<Counters>,
    directory: Arc<PeerDirectory>,
    handler: Arc<dyn FlowHandler>,
    wakers: std::sync::Mutex<HashMap<NodeId, Arc<Notify>>>,
    shutdown: watch::Receiver<bool>,
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
    /// The peer refused the envelope for good: it goes to the dead letters.
    Permanent(String),
    /// The store failed; retry later too, but say so.
    Store(String),
}

impl From<tonic::Status> for Failure {
    /// A peer's gRPC error: for good (dead letter) or worth another attempt.
    fn from(s: tonic::Status) -> Self {
        let why = format!("{:?}: {}", s.code(), s.message());
        if is_permanent(s.code()) {
            Failure::Permanent(why)
        } else {
            Failure::Retry(why)
        }
    }
}

/// Returns whether a gRPC refusal of an envelope can never turn into an acceptance.
fn is_permanent(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::Unimplemented
    )
}

impl Delivery {
    /// Starts one worker per peer in the directory; they stop when `shutdown` turns true.
    pub fn start(
        cfg: DeliveryConfig,
        store: Store,
        identity: Arc<Signer>,
        counters: Arc<Counters>,
        directory: Arc<PeerDirectory>,
        handler: Arc<dyn FlowHandler>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let delivery = Delivery {
            inner: Arc::new(Inner {
                cfg,
                store,
                identity,
                counters,
                directory,
                handler,
                wakers: Default::default(),
                shutdown,
                states: Default::default(),
                tasks: Default::default(),
            }),
        };
        for peer in delivery.inner.directory.ids() {
            delivery.ensure_worker(peer);
        }
        delivery
    }

    /// Starts the worker of `peer` if it has none (a peer added at run time).
    pub fn ensure_worker(&self, peer: NodeId) {
        let Ok(mut wakers) = self.inner.wakers.lock() else {
            return;
        };
        if wakers.contains_key(&peer) {
            return;
        }
        wakers.insert(peer, Arc::new(Notify::new()));
        let d = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let task = tokio::spawn(async move { d.run_peer(peer, shutdown).await });
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.push(task);
        }
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

    /// Wakes the worker of every peer a committed transaction queued envelopes for (the
    /// notes of [`trm_store::Store::transact_noting`]). Call after the durable point.
    pub fn wake_noted(&self, notes: &[String]) {
        for peer in notes
            .iter()
            .filter_map(|n| n.strip_prefix("outbox/")?.parse::<NodeId>().ok())
        {
            self.wake(peer);
        }
    }

    /// Tells the worker of `peer` that new work is queued.
    pub fn wake(&self, peer: NodeId) {
        if let Some(n) = self
            .inner
            .wakers
            .lock()
            .ok()
            .and_then(|w| w.get(&peer).cloned())
        {
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
        let Some(notify) = self
            .inner
            .wakers
            .lock()
            .ok()
            .and_then(|w| w.get(&peer).cloned())
        else {
            return;
        };
        // The client (and its connection) is rebuilt when the peer's endpoint or TLS trust
        // (CA, pin) changes: identity is checked when a connection is made.
        let mut client: Option<(TrustKey, FederationServiceClient<Channel>)> = None;
        let mut failures: u32 = 0;
        let mut single = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let Some(entry) = self.inner.directory.get(peer) else {
                // Removed: nothing is sent until it is a peer again.
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            let built_for = (
                entry.endpoint.clone(),
                entry.tls_ca_pem.clone(),
                entry.tls_pin.clone(),
            );
            if client.as_ref().is_none_or(|(b, _)| *b != built_for) {
                client = self.client(peer).map(|c| (built_for, c));
            }
            let Some((_, client)) = client.as_mut() else {
                warn!(peer = %peer, "peer endpoint or trust anchor unusable; waiting for a directory change");
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            let mut queue = match self.inner.store.scan_json_first::<OutboxItem>(
                TreeName::Outbox,
                peer.as_str().as_bytes(),
                SEND_BATCH,
            ) {
                Ok(items) => items,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            if queue.is_empty() {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let window = self.inner.cfg.replay_window.as_secs() as i64;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            // A batch: the envelopes at the head of the queue still inside the window, within
            // the batch limits; the first one past the window goes to the dead letters alone.
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            for (k, item) in queue.drain(..) {
                let expired = now - item.created_at > window;
                if (expired && !batch.is_empty())
                    || batch.len() >= SEND_BATCH
                    || bytes + item.sealed.len() / 2 > SEND_BATCH_BYTES && !batch.is_empty()
                {
                    break;
                }
                bytes += item.sealed.len() / 2;
                batch.push((k, item));
                if expired {
                    break;
                }
            }
            let (key, item) = batch[0].clone();
            let outcome = if now - item.created_at > window {
                Err(Failure::Permanent(
                    "undelivered within the replay window".into(),
                ))
            } else if batch.len() > 1 && !single {
                // Shutdown interrupts an attempt in flight: the receiver is idempotent, so an
                // envelope whose receipt is lost is simply sent again after the restart.
                tokio::select! {
                    r = self.attempt_batch(client, peer, &batch) => r,
                    _ = shutdown.changed() => return,
                }
            } else {
                tokio::select! {
                    r = self.attempt(client, peer, &key, &item) => r,
                    _ = shutdown.changed() => return,
                }
            };
            // A batch refused as a whole is sent one by one, so that only the envelope at
            // fault goes to the dead letters.
            let outcome = match outcome {
                Err(Failure::Permanent(why)) if batch.len() > 1 && !single => {
                    debug!(peer = %peer, reason = %why, "batch refused; sending one by one");
                    single = true;
                    continue;
                }
                other => other,
            };
            single = false;
            let outcome = match outcome {
                Err(Failure::Permanent(why)) => match self.dead_letter(&key, &item, &why).await {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
                other => other,
            };
            match outcome {
                Ok(()) => {
                    failures = 0;
                    self.set_state(peer, true, true);
                }
                Err(failure) => {
                    let (reachable, why) = match failure {
                        Failure::Retry(why) => (false, why),
                        Failure::Store(why) | Failure::Permanent(why) => (true, why),
                    };
                    Counters::bump(&self.inner.counters.attempts_failed);
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
        let Some(env) = open_queued(&self.inner.store, item).map_err(Failure::Store)? else {
            // The subject was erased: its queued copy is shredded with it.
            info!(peer = %peer, message_id = %item.message_id, "queued envelope's subject erased; dropped");
            return self.finish(key, item, None).await;
        };
        let receipt = client
            .deliver(env.clone())
            .await
            .map_err(Failure::from)?
            .into_inner();
        let (outcome, reason) = self
            .verify_receipt(peer, item, &env, &receipt)
            .map_err(Failure::Retry)?;
        self.finish(key, item, Some((receipt, outcome, reason)))
            .await
    }

    /// Sends several queued envelopes in one `DeliverBatch` and records every outcome.
    async fn attempt_batch(
        &self,
        client: &mut FederationServiceClient<Channel>,
        peer: NodeId,
        batch: &[(Vec<u8>, OutboxItem)],
    ) -> Result<(), Failure> {
        let mut envelopes = Vec::with_capacity(batch.len());
        for (key, item) in batch {
            match open_queued(&self.inner.store, item).map_err(Failure::Store)? {
                Some(env) => envelopes.push(env),
                // Erased meanwhile: drop it and try again with what is left.
                None => return self.finish(key, item, None).await,
            }
        }
        let receipt = client
            .deliver_batch(DeliverBatchRequest {
                envelopes: envelopes.clone(),
            })
            .await
            .map_err(Failure::from)?
            .into_inner();
        let outcomes = self
            .verify_batch_receipt(peer, batch, &envelopes, &receipt)
            .map_err(Failure::Retry)?;
        let handler = &self.inner.handler;
        let proof = hex::encode(receipt.encode_to_vec());
        self.inner
            .store
            .transact(|tx| {
                for ((key, item), (outcome, reason)) in batch.iter().zip(&outcomes) {
                    tx.remove(TreeName::Outbox, key)?;
                    record_outcome(
                        tx,
                        handler.as_ref(),
                        key,
                        item,
                        &proof,
                        *outcome,
                        reason,
                        " (batch)",
                    )?;
                }
                Ok(())
            })
            .map_err(|e| Failure::Store(format!("{e:?}")))?;
        self.inner
            .store
            .durable()
            .await
            .map_err(|e| Failure::Store(e.to_string()))?;
        for _ in batch {
            Counters::bump(&self.inner.counters.delivered);
        }
        Ok(())
    }

    /// Checks a batch receipt: signed by a key of `peer`, one entry per envelope sent, each
    /// naming its message id and the hash of its exact body.
    fn verify_batch_receipt(
        &self,
        peer: NodeId,
        batch: &[(Vec<u8>, OutboxItem)],
        envelopes: &[SignedEnvelope],
        receipt: &SignedReceipt,
    ) -> Result<Vec<(ReceiptOutcome, String)>, String> {
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
        let body = BatchReceiptBody::decode(receipt.body.as_slice())
            .map_err(|_| "batch receipt does not decode")?;
        if body.receiver != peer.as_str() || body.entries.len() != batch.len() {
            return Err("batch receipt is not for the batch sent".into());
        }
        batch
            .iter()
            .zip(envelopes)
            .zip(&body.entries)
            .map(|(((_, item), env), e)| {
                if e.message_id != item.message_id || e.body_sha256 != trm_crypto::sha256(&env.body)
                {
                    return Err("batch receipt entry is not for the envelope sent".to_owned());
                }
                match ReceiptOutcome::try_from(e.outcome) {
                    Ok(ReceiptOutcome::Unspecified) | Err(_) => {
                        Err("batch receipt outcome unknown".to_owned())
                    }
                    Ok(o) => Ok((o, e.reason.clone())),
                }
            })
            .collect()
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
            let proof = hex::encode(receipt.encode_to_vec());
            record_outcome(
                tx,
                handler.as_ref(),
                key,
                item,
                &proof,
                *outcome,
                reason,
                "",
            )
        });
        r.map_err(|e| Failure::Store(format!("{e:?}")))?;
        self.inner
            .store
            .durable()
            .await
            .map_err(|e| Failure::Store(e.to_string()))?;
        if receipt.is_some() {
            Counters::bump(&self.inner.counters.delivered);
        }
        Ok(())
    }

    /// Moves an entry the peer will never accept to the dead letters, where operators see it
    /// (`ListOutbox`) and may retry it (`RetryDelivery`); the flow is told as for a refusal.
    async fn dead_letter(&self, key: &[u8], item: &OutboxItem, why: &str) -> Result<(), Failure> {
        warn!(peer = %item.peer, message_id = %item.message_id, reason = %why, "envelope moved to the dead letters");
        let mut dead = item.clone();
        dead.last_error = why.to_owned();
        dead.attempts = dead.attempts.saturating_add(1);
        let handler = &self.inner.handler;
        self.inner
            .store
            .transact(|tx| {
                tx.remove(TreeName::Outbox, key)?;
                tx.put_json(TreeName::DeadLetters, key, &dead)?;
                handler.on_receipt(tx, item, ReceiptOutcome::Rejected, why)?;
                tx.audit(
                    AuditRecord::new(
                        "node",
                        "outbox.dead_letter",
                        &item.message_id,
                        "dead_letter",
                    )
                    .detail(format!("{} to {}: {why}", item.kind, item.peer)),
                )
            })
            .map_err(|e| Failure::Store(format!("{e:?}")))?;
        self.inner
            .store
            .durable()
            .await
            .map_err(|e| Failure::Store(e.to_string()))?;
        Counters::bump(&self.inner.counters.dead_lettered);
        Ok(())
    }

    /// An operator's retry of a dead letter: the envelope is re-sealed with the same message
    /// id and a fresh `created_at`, and queued again in its place.
    pub async fn retry(&self, message_id: &str) -> Result<NodeId, RetryError> {
        let store = &self.inner.store;
        let (key, item) = store
            .scan_json::<OutboxItem>(TreeName::DeadLetters, b"")
            .map_err(|e| RetryError::Store(e.to_string()))?
            .into_iter()
            .find(|(_, i)| i.message_id == message_id)
            .ok_or(RetryError::NotFound)?;
        let env = open_queued(store, &item)
            .map_err(RetryError::Store)?
            .ok_or(RetryError::Erased)?;
        let body = trm_proto::v1::EnvelopeBody::decode(env.body.as_slice())
            .map_err(|_| RetryError::Store("dead letter corrupt".into()))?;
        let payload = body
            .payload
            .ok_or_else(|| RetryError::Store("dead letter has no payload".into()))?;
        let fresh = envelope::seal_with_id(
            &self.inner.identity.current(),
            self.inner.cfg.node,
            item.peer,
            &body.case_ref,
            payload,
            message_id,
            OffsetDateTime::now_utc(),
        );
        let mut queued = item.clone();
        queued.created_at = OffsetDateTime::now_utc().unix_timestamp();
        queued.attempts = 0;
        queued.last_error.clear();
        let subject = item
            .sealed_under()
            .ok_or_else(|| RetryError::Store("dead letter corrupt".into()))?;
        store
            .transact::<(), (), _>(|tx| {
                let sealed =
                    tx.seal_for(&subject, &envelope_aad(message_id), &fresh.encode_to_vec())?;
                let mut q = queued.clone();
                q.sealed = hex::encode(sealed);
                tx.remove(TreeName::DeadLetters, &key)?;
                tx.put_json(TreeName::Outbox, &key, &q)?;
                tx.audit(
                    AuditRecord::new("operator", "outbox.retry", message_id, "queued")
                        .detail(item.kind.clone()),
                )
            })
            .map_err(|e| RetryError::Store(format!("{e:?}")))?;
        store
            .durable()
            .await
            .map_err(|e| RetryError::Store(e.to_string()))?;
        self.wake(item.peer);
        Ok(item.peer)
    }
}
