//! The outbox and its delivery worker. An envelope is signed and queued in the same store
//! transaction as the state change that caused it ([`enqueue`]), sealed under the key of
//! the record it is about (so erasing the record destroys the queued copy too). One worker
//! per peer delivers its queue in order, only what is durable, in batches, several in flight
//! on one delivery session that the peer applies in order ([`crate::sequence`]); verifies
//! the peer's signed receipt against the exact bytes sent; and records each batch's receipt
//! in one transaction with the outbox removals and the flow's reactions. Failures back off exponentially with
//! jitter up to a cap; one peer's trouble never holds up another's queue. Work left in the
//! outbox is picked up again at start-up.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use prost::Message;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use trm_core::{
    ids::{MessageId, NodeId},
    messages::{EnvelopeKind, Topic},
};
use trm_crypto::signing::{Signer, SigningIdentity};
use trm_proto::v1::{
    envelope_body::Payload, federation_service_client::FederationServiceClient,
    DeliverBatchRequest, ReceiptOutcome, SignedEnvelope, SignedReceipt,
};
use trm_store::{
    audit::AuditRecord, repo::outbox::OutboxItem, Note, Store, StoreError, Tx, TxFail,
};

use crate::{envelope, payload_kind, Counters, FlowHandler, PeerDirectory};

/// What a connection to a peer was built for: its endpoint, CA and pin.
type TrustKey = (String, String, Option<String>);

/// The most sealed bytes sent in one batch (well inside the receiver's 16 MiB limit).
const SEND_BATCH_BYTES: usize = 8 << 20;

/// Locks `m`, recovering it if a thread panicked while holding it: these maps stay
/// consistent whatever the panic, and a poisoned lock must never turn into silently doing
/// nothing (a worker not started, a wake-up lost).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often a peer's failing deliveries are logged at the default level.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A peer's run of failed deliveries: how many in a row, and when the last warning was
/// logged.
#[derive(Debug, Default)]
struct Trouble {
    failures: u32,
    warned: Option<std::time::Instant>,
}

/// Waits for the peer's worker to be woken (a directory or queue change), or `wait`;
/// `false` when shutdown came first.
async fn woken(notify: &Notify, wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = notify.notified() => true,
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.changed() => false,
    }
}

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

/// Decodes a queued envelope once opened (`None`: its subject was erased).
fn decode_envelope(opened: Option<Vec<u8>>) -> Result<Option<SignedEnvelope>, Failure> {
    opened
        .map(|bytes| {
            SignedEnvelope::decode(bytes.as_slice())
                .map_err(|_| Failure::Store("queued envelope corrupt".into()))
        })
        .transpose()
}

/// Signs an envelope for `peer` and queues it inside the caller's transaction. Returns the
/// message id. The peer's worker is woken once the transaction is durable.
pub fn enqueue(
    tx: &mut Tx<'_>,
    identity: &SigningIdentity,
    peer: NodeId,
    topic: Topic,
    case_ref: &str,
    payload: Payload,
) -> Result<MessageId, StoreError> {
    enqueue_at(
        tx,
        identity,
        peer,
        topic,
        case_ref,
        payload,
        OffsetDateTime::now_utc(),
    )
}

/// Same as [`enqueue`], dated `created_at` (a key announcement is dated at the rotation
/// instant, the last moment the old key signs).
pub fn enqueue_at(
    tx: &mut Tx<'_>,
    identity: &SigningIdentity,
    peer: NodeId,
    topic: Topic,
    case_ref: &str,
    payload: Payload,
    created_at: OffsetDateTime,
) -> Result<MessageId, StoreError> {
    let kind = payload_kind(&payload);
    let message_id = MessageId::new();
    let env = envelope::seal_with_id(
        identity,
        tx.node(),
        peer,
        case_ref,
        payload,
        &message_id.to_string(),
        created_at,
    );
    tx.queue_envelope(peer, message_id, topic, kind, &env.encode_to_vec())?;
    Ok(message_id)
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
    /// The most envelopes in one batch.
    pub batch_envelopes: usize,
    /// The most batches in flight to one peer.
    pub batches_in_flight: usize,
    /// This node's federation certificate and key (PEM), presented as TLS client.
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
    /// How long an idle worker waits before it looks at its queue again unwoken: short
    /// where other replicas of the node queue envelopes it is not told of.
    pub idle_poll: Duration,
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
    /// While deliveries fail: the last failure's reason (explained for people) and since
    /// when they fail. Cleared by the next delivery the peer acknowledges.
    pub failing: Option<(String, OffsetDateTime)>,
}

/// A peer's answer to a probe.
#[derive(Debug, Clone)]
pub struct Probe {
    /// How long the probe took.
    pub latency: Duration,
    /// The key ids the peer holds for this node, each with whether it is valid now; `None`
    /// when the peer does not say (an older version).
    pub holds_for_us: Option<Vec<(String, bool)>>,
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
    /// Whether this process may deliver (it holds the delivery lease among the node's
    /// replicas; always, for a node without replicas).
    active: watch::Sender<bool>,
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

impl Failure {
    /// A peer's gRPC error: for good (dead letter) or worth another attempt, explained.
    fn of(s: tonic::Status, peer: NodeId, endpoint: &str) -> Self {
        let why = crate::connect::explain(&s, peer, endpoint);
        if is_permanent(s.code()) {
            Failure::Permanent(why)
        } else {
            Failure::Retry(why)
        }
    }
}

impl<E: std::fmt::Debug> From<TxFail<E>> for Failure {
    fn from(e: TxFail<E>) -> Self {
        match e {
            TxFail::Store(e) => Failure::Store(e.to_string()),
            TxFail::Abort(e) => Failure::Store(format!("{e:?}")),
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

/// Records a peer's verified answer for a queued item: the signed receipt kept as proof, a
/// refusal moved to the dead letters, the flow told, and the audit entry.
fn record_outcome(
    tx: &mut Tx<'_>,
    handler: &dyn FlowHandler,
    item: &OutboxItem,
    proof: &trm_store::Proof,
    outcome: ReceiptOutcome,
    reason: &str,
    how: &str,
) -> Result<(), TxFail<crate::Rejection>> {
    if outcome == ReceiptOutcome::Rejected {
        tx.dead_letter(item, reason, Some(proof))?;
    } else {
        tx.finish_queued(item, Some(proof))?;
    }
    handler.on_receipt(tx, item, outcome, reason)?;
    tx.audit(
        AuditRecord::new(
            crate::inbound::peer_actor(item.peer),
            "envelope.receipt",
            item.message_id.to_string(),
            outcome.as_str_name(),
        )
        .detail(format!("{} {reason}{how}", item.kind)),
    )?;
    Ok(())
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
                active: watch::channel(true).0,
            }),
        };
        for peer in delivery.inner.directory.ids() {
            delivery.ensure_worker(peer);
        }
        delivery
    }

    /// Starts the worker of `peer` if it has none (a peer added at run time).
    pub fn ensure_worker(&self, peer: NodeId) {
        let mut wakers = lock(&self.inner.wakers);
        if wakers.contains_key(&peer) {
            return;
        }
        wakers.insert(peer, Arc::new(Notify::new()));
        let d = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let task = tokio::spawn(async move { d.run_peer(peer, shutdown).await });
        lock(&self.inner.tasks).push(task);
    }

    /// Lets the workers deliver, or stops them at once (another replica of the node holds
    /// the delivery lease). An attempt in flight is abandoned: the receiver is idempotent.
    pub fn set_active(&self, active: bool) {
        self.inner.active.send_if_modified(|a| {
            let changed = *a != active;
            *a = active;
            changed
        });
    }

    /// Whether this process delivers now.
    pub fn is_active(&self) -> bool {
        *self.inner.active.borrow()
    }

    /// Waits until every worker has stopped (after the shutdown signal).
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Wakes the worker of every peer a durable transaction queued envelopes for.
    pub fn wake_noted(&self, notes: &[Note]) {
        for n in notes {
            if let Note::Wake(peer) = n {
                self.wake(*peer);
            }
        }
    }

    /// Tells the worker of `peer` that new work is queued.
    pub fn wake(&self, peer: NodeId) {
        if let Some(n) = lock(&self.inner.wakers).get(&peer).cloned() {
            n.notify_one();
        }
    }

    /// Returns what the worker knows of `peer`.
    pub fn peer_state(&self, peer: NodeId) -> PeerState {
        lock(&self.inner.states)
            .get(&peer)
            .cloned()
            .unwrap_or_default()
    }

    /// Records the outcome of an attempt: delivered (`failure` is `None`) or failed, why.
    fn set_state(&self, peer: NodeId, reachable: bool, failure: Option<&str>) {
        let mut states = lock(&self.inner.states);
        let s = states.entry(peer).or_default();
        s.reachable = reachable;
        let now = OffsetDateTime::now_utc();
        match failure {
            None => {
                s.last_delivery = Some(now);
                s.failing = None;
            }
            Some(why) => {
                let since = s.failing.as_ref().map_or(now, |(_, since)| *since);
                s.failing = Some((why.to_owned(), since));
            }
        }
    }

    /// Probes `peer` now: a GetNodeInfo over a new mutual-TLS connection that must prove
    /// the peer's identity, within `timeout`. Returns how long it took and which of our keys
    /// the peer holds, or why it failed (explained, with the likely causes).
    pub async fn probe(&self, peer: NodeId, timeout: Duration) -> Result<Probe, String> {
        let endpoint = self.endpoint_of(peer);
        let mut client = self.client(peer).ok_or_else(|| {
            format!(
                "no usable connection to {peer}: its endpoint or CA in the directory is unusable"
            )
        })?;
        let started = std::time::Instant::now();
        match tokio::time::timeout(
            timeout,
            client.get_node_info(trm_proto::v1::GetNodeInfoRequest::default()),
        )
        .await
        {
            Ok(Ok(info)) => {
                let now = OffsetDateTime::now_utc();
                let keys = &info.get_ref().caller_keys;
                Ok(Probe {
                    latency: started.elapsed(),
                    holds_for_us: (!keys.is_empty()).then(|| {
                        keys.iter()
                            .map(|k| {
                                let until = k.valid_until.as_ref().and_then(|t| {
                                    OffsetDateTime::from_unix_timestamp(t.seconds).ok()
                                });
                                (k.key_id.clone(), until.is_none_or(|u| u > now))
                            })
                            .collect()
                    }),
                })
            }
            Ok(Err(status)) => Err(crate::connect::explain(&status, peer, &endpoint)),
            Err(_) => Err(format!(
                "no answer from {endpoint} within {} s: a firewall drops the traffic, or the \
                 endpoint is wrong",
                timeout.as_secs()
            )),
        }
    }

    /// Returns the endpoint the directory holds for `peer` (empty when it is none).
    fn endpoint_of(&self, peer: NodeId) -> String {
        self.inner
            .directory
            .get(peer)
            .map(|p| p.endpoint)
            .unwrap_or_default()
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

    /// The worker of one peer: delivers its queue from the head while this process is
    /// active, backs off on failures, and stops at shutdown.
    async fn run_peer(self, peer: NodeId, mut shutdown: watch::Receiver<bool>) {
        let Some(notify) = lock(&self.inner.wakers).get(&peer).cloned() else {
            return;
        };
        // The client (and its connection) is rebuilt when the peer's endpoint or TLS trust
        // (CA, pin) changes: identity is checked when a connection is made.
        let mut client: Option<(TrustKey, FederationServiceClient<Channel>)> = None;
        let mut trouble = Trouble::default();
        let mut single = false;
        let mut active = self.inner.active.subscribe();
        let idle = self.inner.cfg.idle_poll;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !*active.borrow_and_update() {
                tokio::select! {
                    _ = active.wait_for(|a| *a) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let Some(client) = self.current_client(peer, &mut client) else {
                if !woken(&notify, Duration::from_secs(30), &mut shutdown).await {
                    return;
                }
                continue;
            };
            let Some(item) = self.head(peer) else {
                if !woken(&notify, idle, &mut shutdown).await {
                    return;
                }
                continue;
            };
            let window = time::Duration::try_from(self.inner.cfg.replay_window)
                .unwrap_or(time::Duration::days(7));
            let expired = OffsetDateTime::now_utc() - item.created_at > window;
            // Shutdown interrupts an attempt in flight: the receiver is idempotent, so an
            // envelope whose receipt is lost is simply sent again after the restart.
            let (outcome, failed_batch) = if expired {
                let why = "undelivered within the replay window".into();
                (Err(Failure::Permanent(why)), 0)
            } else {
                tokio::select! {
                    r = self.send_from_head(client, peer, &item, window, single) => r,
                    _ = shutdown.changed() => return,
                    _ = active.wait_for(|a| !*a) => continue,
                }
            };
            // A batch refused as a whole is sent one by one, so that only the envelope at
            // fault goes to the dead letters.
            let outcome = match outcome {
                Err(Failure::Permanent(why)) if failed_batch > 1 => {
                    debug!(peer = %peer, reason = %why, "batch refused; sending one by one");
                    single = true;
                    continue;
                }
                other => other,
            };
            single = false;
            if let Some(wait) = self.settle(peer, &item, outcome, &mut trouble).await {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Returns the client for `peer`, built again when its endpoint or TLS trust changed;
    /// `None` while the peer is not in the directory (removed: nothing is sent until it is
    /// a peer again) or its entry cannot be used (warned).
    fn current_client<'a>(
        &self,
        peer: NodeId,
        client: &'a mut Option<(TrustKey, FederationServiceClient<Channel>)>,
    ) -> Option<&'a mut FederationServiceClient<Channel>> {
        let entry = self.inner.directory.get(peer)?;
        let built_for = (
            entry.endpoint.clone(),
            entry.tls_ca_pem.clone(),
            entry.tls_pin.clone(),
        );
        if client.as_ref().is_none_or(|(b, _)| *b != built_for) {
            *client = self.client(peer).map(|c| (built_for, c));
        }
        match client.as_mut() {
            Some((_, client)) => Some(client),
            None => {
                warn!(peer = %peer, "peer endpoint or trust anchor unusable; waiting for a directory change");
                None
            }
        }
    }

    /// Returns the head of the peer's queue; `None` when it is empty or cannot be read
    /// (warned).
    fn head(&self, peer: NodeId) -> Option<OutboxItem> {
        match self.inner.store.outbox_head(peer, 1) {
            Ok(items) => items.into_iter().next(),
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot read the outbox");
                None
            }
        }
    }

    /// Sends from the head of the queue: `item` alone (`single`), or the queue in pipelined
    /// batches. Returns the outcome and the size of the batch that failed (0 when none did,
    /// or nothing was sent).
    async fn send_from_head(
        &self,
        client: &mut FederationServiceClient<Channel>,
        peer: NodeId,
        item: &OutboxItem,
        window: time::Duration,
        single: bool,
    ) -> (Result<(), Failure>, usize) {
        if single {
            return (self.attempt(client, peer, item).await, 0);
        }
        match self.pipeline(client, peer, window).await {
            Ok(()) => (Ok(()), 0),
            // Every batch before the failed one was recorded: it is at the head.
            Err((failure, sent)) => (Err(failure), sent),
        }
    }

    /// Acts on the outcome of an attempt at the head `item`: a refusal for good moves it to
    /// the dead letters, a delivery ends the peer's trouble, a failure is recorded. Returns
    /// how long to back off before the next attempt (`None`: go on at once).
    async fn settle(
        &self,
        peer: NodeId,
        item: &OutboxItem,
        outcome: Result<(), Failure>,
        trouble: &mut Trouble,
    ) -> Option<Duration> {
        let outcome = match outcome {
            Err(Failure::Permanent(why)) => match self.dead_letter(item, &why).await {
                // The peer answers but refuses: operators see why in `status`.
                Ok(()) => {
                    self.set_state(peer, true, Some(&why));
                    return None;
                }
                Err(e) => Err(e),
            },
            other => other,
        };
        match outcome {
            Ok(()) => {
                if trouble.failures > 0 {
                    info!(peer = %peer, failures = trouble.failures, "delivery resumed");
                }
                *trouble = Trouble::default();
                self.set_state(peer, true, None);
                None
            }
            Err(failure) => Some(self.failed(peer, item, failure, trouble).await),
        }
    }

    /// Records a failed attempt at `item`: the peer's state, the counters, the failure
    /// noted on the queued item, and a log line (a warning at most once a minute per peer).
    /// Returns the backoff before the next attempt.
    async fn failed(
        &self,
        peer: NodeId,
        item: &OutboxItem,
        failure: Failure,
        trouble: &mut Trouble,
    ) -> Duration {
        let (reachable, why) = match failure {
            Failure::Retry(why) => (false, why),
            Failure::Store(why) | Failure::Permanent(why) => (true, why),
        };
        Counters::bump(&self.inner.counters.attempts_failed);
        self.set_state(peer, reachable, Some(&why));
        trouble.failures = trouble.failures.saturating_add(1);
        let failures = trouble.failures;
        self.note_failure(item, &why).await;
        let wait = self.backoff(failures);
        // At the default level, at most once a minute per peer.
        if trouble
            .warned
            .is_none_or(|at: std::time::Instant| at.elapsed() >= WARN_EVERY)
        {
            trouble.warned = Some(std::time::Instant::now());
            warn!(peer = %peer, failures, queued = self.inner.store.outbox_depth(peer).unwrap_or_default(), wait_ms = wait.as_millis() as u64, reason = %why, "cannot deliver to the peer; retrying");
        } else {
            debug!(peer = %peer, message_id = %item.message_id, wait_ms = wait.as_millis() as u64, reason = %why, "delivery failed; backing off");
        }
        wait
    }

    /// Returns the wait after `failures` consecutive failures: exponential from 200 ms,
    /// capped, with full jitter over its upper half.
    fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_millis(200).saturating_mul(1u32 << failures.min(20));
        let capped = base.min(self.inner.cfg.backoff_cap);
        let half = capped / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    async fn note_failure(&self, item: &OutboxItem, why: &str) {
        let (peer, seq, why) = (item.peer, item.seq, why.to_owned());
        let r = self
            .inner
            .store
            .commit::<(), (), _>(move |tx| Ok(tx.note_attempt(peer, seq, &why)?))
            .await;
        if r.is_err() {
            warn!(message_id = %item.message_id, "cannot record a delivery failure");
        }
    }

    /// Opens a queued envelope; `None` when its subject was erased.
    fn open(&self, item: &OutboxItem) -> Result<Option<SignedEnvelope>, Failure> {
        decode_envelope(
            self.inner
                .store
                .open_envelope(item)
                .map_err(|e| Failure::Store(e.to_string()))?,
        )
    }

    /// Drops a queued item whose subject was erased: the queued copy went with it.
    async fn drop_erased(&self, item: &OutboxItem) -> Result<(), Failure> {
        info!(peer = %item.peer, message_id = %item.message_id, "queued envelope's subject erased; dropped");
        let item = item.clone();
        self.inner
            .store
            .commit::<(), (), _>(move |tx| {
                tx.finish_queued(&item, None)?;
                tx.audit(
                    AuditRecord::new("node", "outbox.drop", item.message_id.to_string(), "erased")
                        .detail(item.kind.as_str()),
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn attempt(
        &self,
        client: &mut FederationServiceClient<Channel>,
        peer: NodeId,
        item: &OutboxItem,
    ) -> Result<(), Failure> {
        let Some(env) = self.open(item)? else {
            return self.drop_erased(item).await;
        };
        let receipt = client
            .deliver(env.clone())
            .await
            .map_err(|s| Failure::of(s, peer, &self.endpoint_of(peer)))?
            .into_inner();
        let outcome = self
            .verify_receipt(peer, item, &env, &receipt)
            .map_err(Failure::Retry)?;
        self.record_outcomes(std::slice::from_ref(item), vec![outcome], &receipt, "")
            .await
    }

    /// Delivers the queue from its head in batches, up to `batches_in_flight` of them in flight on
    /// one delivery session (the receiver applies them in the session's order), and records
    /// each batch's outcomes, in order, in one transaction. Returns when nothing more can be
    /// sent this way (queue empty, or its next envelope past the replay window); on the first
    /// failure the session is abandoned (the receiver refuses its later batches) and the
    /// caller goes back to the head; the error carries the size of the failed batch (0 when
    /// nothing was sent), which is then at the head of the queue.
    async fn pipeline(
        &self,
        client: &mut FederationServiceClient<Channel>,
        peer: NodeId,
        window: time::Duration,
    ) -> Result<(), (Failure, usize)> {
        type Sent = (
            Vec<OutboxItem>,
            Vec<SignedEnvelope>,
            Result<tonic::Response<SignedReceipt>, tonic::Status>,
        );
        let session = uuid::Uuid::new_v4().simple().to_string();
        let mut sequence = 0u64;
        let mut after: Option<u64> = None;
        let mut more = true;
        let mut in_flight: VecDeque<tokio::task::JoinHandle<Sent>> = VecDeque::new();
        // Requests still in flight when this returns are abandoned.
        struct AbortOnDrop<'a>(&'a mut VecDeque<tokio::task::JoinHandle<Sent>>);
        impl Drop for AbortOnDrop<'_> {
            fn drop(&mut self) {
                for t in self.0.drain(..) {
                    t.abort();
                }
            }
        }
        let in_flight = AbortOnDrop(&mut in_flight);
        loop {
            while more && in_flight.0.len() < self.inner.cfg.batches_in_flight.max(1) {
                let (batch, envelopes, more_after) = self
                    .next_batch(peer, &mut after, window)
                    .await
                    .map_err(|f| (f, 0))?;
                more = more_after;
                if batch.is_empty() {
                    continue;
                }
                let request = DeliverBatchRequest {
                    envelopes: envelopes.clone(),
                    session: session.clone(),
                    sequence,
                };
                sequence += 1;
                let mut c = client.clone();
                in_flight.0.push_back(tokio::spawn(async move {
                    let r = c.deliver_batch(request).await;
                    (batch, envelopes, r)
                }));
            }
            let Some(task) = in_flight.0.pop_front() else {
                return Ok(());
            };
            let (batch, envelopes, result) = task
                .await
                .map_err(|_| (Failure::Retry("delivery task failed".into()), 0))?;
            let sent = batch.len();
            let receipt = result
                .map_err(|s| (Failure::of(s, peer, &self.endpoint_of(peer)), sent))?
                .into_inner();
            self.record_batch(peer, &batch, &envelopes, receipt)
                .await
                .map_err(|f| (f, sent))?;
        }
    }

    /// Reads the next batch to send from the peer's queue, after `after` (moved past each
    /// item taken, or dropped because its subject was erased meanwhile): at most
    /// `batch_envelopes` envelopes and [`SEND_BATCH_BYTES`] sealed bytes, opened. Returns
    /// the items, their envelopes, and whether more may follow (not when the queue ended or
    /// its next envelope is past the replay `window`). The batch may be empty.
    async fn next_batch(
        &self,
        peer: NodeId,
        after: &mut Option<u64>,
        window: time::Duration,
    ) -> Result<(Vec<OutboxItem>, Vec<SignedEnvelope>, bool), Failure> {
        let items = self
            .inner
            .store
            .outbox_after(peer, *after, self.inner.cfg.batch_envelopes.max(1))
            .map_err(|e| Failure::Store(e.to_string()))?;
        if items.is_empty() {
            return Ok((Vec::new(), Vec::new(), false));
        }
        let now = OffsetDateTime::now_utc();
        let opened = self
            .inner
            .store
            .open_envelopes(&items)
            .map_err(|e| Failure::Store(e.to_string()))?;
        let (mut batch, mut envelopes, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        for (item, opened) in items.into_iter().zip(opened) {
            if now - item.created_at > window {
                // Goes to the dead letters from the head, after what is in flight.
                return Ok((batch, envelopes, false));
            }
            if bytes + item.sealed.len() > SEND_BATCH_BYTES && !batch.is_empty() {
                break;
            }
            *after = Some(item.seq);
            // What follows a key announcement is signed with the announced key, which the
            // peer learns only once it has applied the announcement: the announcement ends
            // the batch and the pipeline, and the rest goes after its receipt.
            let announces = item.kind == EnvelopeKind::KeyAnnouncement;
            match decode_envelope(opened)? {
                Some(env) => {
                    bytes += item.sealed.len();
                    envelopes.push(env);
                    batch.push(item);
                }
                // Erased meanwhile: the queued copy went with it.
                None => self.drop_erased(&item).await?,
            }
            if announces {
                return Ok((batch, envelopes, false));
            }
        }
        Ok((batch, envelopes, true))
    }

    /// Verifies a batch receipt and records every outcome in one transaction.
    async fn record_batch(
        &self,
        peer: NodeId,
        batch: &[OutboxItem],
        envelopes: &[SignedEnvelope],
        receipt: SignedReceipt,
    ) -> Result<(), Failure> {
        let outcomes = self
            .verify_batch_receipt(peer, batch, envelopes, &receipt)
            .map_err(Failure::Retry)?;
        self.record_outcomes(batch, outcomes, &receipt, " (batch)")
            .await
    }

    /// Records the peer's verified outcomes of `items` (see [`record_outcome`]; `how` is
    /// added to the audit detail) in one transaction, with the receipt as proof, and counts
    /// them delivered.
    async fn record_outcomes(
        &self,
        items: &[OutboxItem],
        outcomes: Vec<(ReceiptOutcome, String)>,
        receipt: &SignedReceipt,
        how: &'static str,
    ) -> Result<(), Failure> {
        let handler = self.inner.handler.clone();
        let proof = trm_store::Proof::new(receipt.encode_to_vec());
        let queued = items.to_vec();
        let committed = self
            .inner
            .store
            .commit(move |tx| {
                for (item, (outcome, reason)) in queued.iter().zip(&outcomes) {
                    record_outcome(tx, handler.as_ref(), item, &proof, *outcome, reason, how)?;
                }
                Ok(())
            })
            .await?;
        // What the flows queued in reaction (to this peer or another) leaves now, not at
        // the next idle poll.
        self.wake_noted(&committed.notes);
        let now = OffsetDateTime::now_utc();
        for item in items {
            Counters::bump(&self.inner.counters.delivered);
            self.inner
                .counters
                .delivery_latency
                .observe((now - item.created_at).as_seconds_f64());
        }
        Ok(())
    }

    /// Checks a batch receipt against the directory entry of `peer` (see
    /// [`envelope::open_batch_receipt`]).
    fn verify_batch_receipt(
        &self,
        peer: NodeId,
        batch: &[OutboxItem],
        envelopes: &[SignedEnvelope],
        receipt: &SignedReceipt,
    ) -> Result<Vec<(ReceiptOutcome, String)>, String> {
        let entry = self
            .inner
            .directory
            .get(peer)
            .ok_or("peer no longer in the directory")?;
        let sent: Vec<(MessageId, &[u8])> = batch
            .iter()
            .zip(envelopes)
            .map(|(item, env)| (item.message_id, env.body.as_slice()))
            .collect();
        envelope::open_batch_receipt(&entry, &sent, receipt)
    }

    /// Checks a receipt against the directory entry of `peer` (see
    /// [`envelope::open_receipt`]).
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
        envelope::open_receipt(&entry, item.message_id, &env.body, receipt)
    }

    /// Moves an entry the peer will never accept to the dead letters, where operators see it
    /// (`ListOutbox`) and may retry it (`RetryDelivery`); the flow is told that it was not
    /// delivered (nobody signed a refusal).
    async fn dead_letter(&self, item: &OutboxItem, why: &str) -> Result<(), Failure> {
        warn!(peer = %item.peer, message_id = %item.message_id, reason = %why, "envelope moved to the dead letters");
        let handler = self.inner.handler.clone();
        let (item, why) = (item.clone(), why.to_owned());
        let committed = self
            .inner
            .store
            .commit(move |tx| {
                tx.dead_letter(&item, &why, None)?;
                handler.undelivered(tx, &item, &why)?;
                tx.audit(
                    AuditRecord::new(
                        "node",
                        "outbox.dead_letter",
                        item.message_id.to_string(),
                        "dead_letter",
                    )
                    .detail(format!("{} to {}: {why}", item.kind, item.peer)),
                )?;
                Ok(())
            })
            .await?;
        self.wake_noted(&committed.notes);
        Counters::bump(&self.inner.counters.dead_lettered);
        Ok(())
    }

    /// An operator's retry of a dead letter: the envelope is re-sealed with the same message
    /// id and a fresh `created_at`, and queued again in its place.
    pub async fn retry(&self, message_id: MessageId, actor: &str) -> Result<NodeId, RetryError> {
        let actor = actor.to_owned();
        let identity = self.inner.identity.clone();
        let node = self.inner.cfg.node;
        let r = self
            .inner
            .store
            .commit(move |tx| {
                let Some(dead) = tx.dead_letter_of(message_id)? else {
                    return Err(TxFail::Abort(RetryError::NotFound));
                };
                let Some(bytes) = tx.open_envelope(&dead)? else {
                    return Err(TxFail::Abort(RetryError::Erased));
                };
                let env = SignedEnvelope::decode(bytes.as_slice())
                    .map_err(|_| TxFail::Abort(RetryError::Store("dead letter corrupt".into())))?;
                let body = trm_proto::v1::EnvelopeBody::decode(env.body.as_slice())
                    .map_err(|_| TxFail::Abort(RetryError::Store("dead letter corrupt".into())))?;
                let payload = body.payload.ok_or_else(|| {
                    TxFail::Abort(RetryError::Store("dead letter has no payload".into()))
                })?;
                let fresh = envelope::seal_with_id(
                    &identity.current(),
                    node,
                    dead.peer,
                    &body.case_ref,
                    payload,
                    &message_id.to_string(),
                    OffsetDateTime::now_utc(),
                );
                tx.requeue(&dead, &fresh.encode_to_vec())?;
                tx.audit(
                    AuditRecord::new(
                        actor.clone(),
                        "outbox.retry",
                        message_id.to_string(),
                        "queued",
                    )
                    .detail(dead.kind.as_str()),
                )?;
                Ok(dead.peer)
            })
            .await;
        match r {
            Ok(c) => {
                self.wake_noted(&c.notes);
                Ok(c.value)
            }
            Err(TxFail::Abort(e)) => Err(e),
            Err(TxFail::Store(e)) => Err(RetryError::Store(e.to_string())),
        }
    }
}
