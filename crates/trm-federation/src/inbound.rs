//! The inbound `FederationService`. An envelope is checked in this order, and nothing is
//! decoded or changed before the signature verifies: the TLS peer is a directory entry; the
//! key id names one of its keys; the signature over the exact body bytes; the body decodes;
//! sender = TLS peer; the key was valid at `created_at`; recipient = this node; `created_at`
//! within the replay window and not ahead by more than the clock skew; the message id not seen
//! before (a duplicate gets the original receipt); then the payload is applied by the
//! [`FlowHandler`], whose refusal becomes a signed REJECTED receipt. Every refusal is audited.

use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use trm_core::{
    ids::NodeId,
    limits::{MAX_BATCH, MAX_ENVELOPE},
    policy::POLICY_VERSION,
};
use trm_crypto::signing::{Signer, ENVELOPE_TAG};
use trm_proto::{
    convert::from_ts,
    v1::{
        federation_service_server::FederationService, BatchReceiptBody, BatchReceiptEntry,
        DeliverBatchRequest, EnvelopeBody, GetNodeInfoRequest, NodeInfo, ReceiptBody,
        ReceiptOutcome, SignedEnvelope, SignedReceipt,
    },
};
use trm_store::{audit::AuditRecord, Store, TreeName, TxFail};

use crate::refusals::RefusalLog;
use crate::slots::{PeerSlots, Slot};
use crate::{
    envelope, payload_kind, Counters, Delivery, FlowHandler, Inbound, Peer, PeerDirectory, Refusal,
    Rejection,
};

/// Settings of the receive pipeline.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// This node.
    pub node: NodeId,
    /// How old an envelope may be (default 7 days).
    pub replay_window: Duration,
    /// How far ahead of our clock an envelope may be dated (default 5 minutes).
    pub clock_skew: Duration,
    /// Concurrent requests one peer may have in flight (default 16).
    pub max_in_flight_per_peer: usize,
}

impl InboundConfig {
    /// Returns the defaults of DESIGN.md for `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            replay_window: Duration::days(7),
            clock_skew: Duration::minutes(5),
            max_in_flight_per_peer: 16,
        }
    }
}

/// The receipt given for a message id, kept so a duplicate gets it back unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Hex of the encoded `SignedReceipt`.
    pub receipt: String,
    pub received_at: i64,
}

impl InboxEntry {
    fn new(receipt: &SignedReceipt) -> Self {
        Self {
            receipt: hex::encode(receipt.encode_to_vec()),
            received_at: OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    fn receipt(&self) -> Option<SignedReceipt> {
        let bytes = hex::decode(&self.receipt).ok()?;
        SignedReceipt::decode(bytes.as_slice()).ok()
    }

    /// Returns the outcome and reason the original receipt gave.
    fn outcome(receipt: &SignedReceipt) -> Option<(ReceiptOutcome, String)> {
        let body = ReceiptBody::decode(receipt.body.as_slice()).ok()?;
        let outcome = ReceiptOutcome::try_from(body.outcome).ok()?;
        Some((outcome, body.reason))
    }
}

/// Forgets inbound message ids received before `before` (DESIGN.md: remembered for at least
/// twice the replay window; older envelopes are refused as stale anyway). Returns how many.
pub fn prune_inbox(store: &Store, before: OffsetDateTime) -> Result<usize, trm_store::StoreError> {
    let cutoff = before.unix_timestamp();
    let old: Vec<Vec<u8>> = store
        .scan_json::<InboxEntry>(TreeName::Inbox, b"")?
        .into_iter()
        .filter(|(_, e)| e.received_at < cutoff)
        .map(|(k, _)| k)
        .collect();
    for chunk in old.chunks(512) {
        store
            .transact::<(), (), _>(|tx| {
                for k in chunk {
                    tx.remove(TreeName::Inbox, k)?;
                }
                Ok(())
            })
            .map_err(|_| trm_store::StoreError::Durability)?;
    }
    Ok(old.len())
}

/// The most envelopes one batch may carry.
pub const MAX_BATCH_ENVELOPES: usize = 512;

/// What applying one envelope gave.
struct Applied {
    receipt: SignedReceipt,
    outcome: ReceiptOutcome,
    reason: String,
    /// Seen before: no second effect.
    duplicate: bool,
    /// What the flow queued while applying it (replies to wake after the durable point).
    queued: Vec<String>,
}

enum Abort {
    Duplicate(InboxEntry),
    Rejected(Rejection),
}

/// The peer check of the federation port's interceptor (see [`FederationServer::precheck`]).
#[derive(Clone)]
pub struct Precheck {
    directory: Arc<PeerDirectory>,
    counters: Arc<Counters>,
    refusals: Arc<RefusalLog>,
}

impl std::fmt::Debug for Precheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precheck").finish_non_exhaustive()
    }
}

/// Returns who a failed authentication names, the refusal and its detail.
fn refusal_of(failure: crate::directory::AuthFailure) -> (Option<NodeId>, Refusal, &'static str) {
    use crate::directory::AuthFailure;
    match failure {
        AuthFailure::NoIdentity => (
            None,
            Refusal::UnknownPeer,
            "no trm node identity in the TLS certificate",
        ),
        AuthFailure::Unknown(n) => (Some(n), Refusal::UnknownPeer, "not in the peer directory"),
        AuthFailure::Removed(n) => (
            Some(n),
            Refusal::RemovedPeer,
            "removed from the peer directory",
        ),
        AuthFailure::WrongAnchor(n) => (
            Some(n),
            Refusal::UntrustedCertificate,
            "certificate does not chain to the peer's own trust anchor",
        ),
        AuthFailure::Pin(n) => (
            Some(n),
            Refusal::UnknownPeer,
            "certificate is not the one pinned for this peer",
        ),
    }
}

impl Precheck {
    /// Lets a request from a proven peer through; refuses any other with the code DESIGN.md
    /// prescribes, counting it and auditing it in the background (the answer does not wait).
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let certs = request.peer_certs();
        let certs = certs.as_deref().map(Vec::as_slice).unwrap_or_default();
        let Err(failure) = self.directory.authenticate(certs) else {
            return Ok(());
        };
        let (node, refusal, detail) = refusal_of(failure);
        let actor = node.map_or_else(|| "peer:unknown".to_owned(), |p| format!("peer:{p}"));
        let status = refusal.status(detail);
        self.counters.refused(refusal);
        warn!(peer = %actor, reason = refusal.label(), detail, "request refused before its body was read");
        let record = AuditRecord::new(actor.clone(), "envelope.refuse", "-", "refused")
            .detail(format!("{:?}: {}", status.code(), status.message()));
        let refusals = self.refusals.clone();
        tokio::spawn(async move {
            if let Err(e) = refusals.record(&actor, refusal.label(), record).await {
                warn!(error = %e, "cannot audit a refusal");
            }
        });
        Err(status)
    }
}

/// The federation port's service.
pub struct FederationServer {
    cfg: InboundConfig,
    identity: Arc<Signer>,
    directory: Arc<PeerDirectory>,
    store: Store,
    handler: Arc<dyn FlowHandler>,
    delivery: Delivery,
    counters: Arc<Counters>,
    slots: PeerSlots,
    refusals: Arc<RefusalLog>,
}

impl FederationServer {
    /// Returns the service for this node.
    pub fn new(
        cfg: InboundConfig,
        identity: Arc<Signer>,
        directory: Arc<PeerDirectory>,
        store: Store,
        handler: Arc<dyn FlowHandler>,
        delivery: Delivery,
        counters: Arc<Counters>,
    ) -> Self {
        let cfg_slots = cfg.max_in_flight_per_peer;
        Self {
            refusals: Arc::new(RefusalLog::new(store.clone())),
            cfg,
            identity,
            directory,
            store,
            handler,
            delivery,
            counters,
            slots: PeerSlots::new(cfg_slots),
        }
    }

    /// Returns the check that runs on a request's headers, before its body is read: the TLS
    /// peer must be a directory peer proven by its own anchor (and pin). A request that
    /// fails it is refused without buffering its body; the refusal is counted and audited.
    pub fn precheck(&self) -> Precheck {
        Precheck {
            directory: self.directory.clone(),
            counters: self.counters.clone(),
            refusals: self.refusals.clone(),
        }
    }

    /// Returns the log of refusals, to flush periodically and at shutdown.
    pub fn refusal_log(&self) -> Arc<RefusalLog> {
        self.refusals.clone()
    }

    /// Counts and audits a refusal and returns it as the gRPC error DESIGN.md prescribes.
    async fn refuse(
        &self,
        peer: Option<NodeId>,
        message_id: &str,
        refusal: Refusal,
        detail: &str,
    ) -> Status {
        let actor = peer.map_or_else(|| "peer:unknown".to_owned(), |p| format!("peer:{p}"));
        let status = refusal.status(detail);
        self.counters.refused(refusal);
        warn!(peer = %actor, reason = refusal.label(), detail, "envelope refused");
        let record = AuditRecord::new(actor.clone(), "envelope.refuse", message_id, "refused")
            .detail(format!("{:?}: {}", status.code(), status.message()));
        if let Err(e) = self.refusals.record(&actor, refusal.label(), record).await {
            warn!(error = %e, "cannot audit a refusal");
            return Status::unavailable("storage unavailable");
        }
        status
    }

    /// Takes one of `peer`'s in-flight slots, or refuses the request.
    async fn slot(&self, peer: NodeId) -> Result<Slot, Status> {
        match self.slots.try_acquire(peer) {
            Some(slot) => Ok(slot),
            None => Err(self
                .refuse(
                    Some(peer),
                    "-",
                    Refusal::TooManyRequests,
                    "too many concurrent requests from this peer",
                )
                .await),
        }
    }

    /// Returns the directory entry of the authenticated TLS peer, refusing a node that is not
    /// (or no longer) a peer, whose certificate does not chain to its own trust anchor, or
    /// whose certificate is not the pinned one. Checked on every request.
    async fn tls_peer<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        let certs = request.peer_certs();
        let certs = certs.as_deref().map(Vec::as_slice).unwrap_or_default();
        match self.directory.authenticate(certs) {
            Ok(peer) => Ok(peer),
            Err(failure) => {
                let (node, refusal, detail) = refusal_of(failure);
                Err(self.refuse(node, "-", refusal, detail).await)
            }
        }
    }

    /// Runs the receive pipeline for one envelope from the authenticated TLS peer `entry`.
    pub async fn receive(
        &self,
        entry: &Peer,
        env: SignedEnvelope,
    ) -> Result<SignedReceipt, Status> {
        let peer = entry.id;
        let (body, created_at) = match self.check(entry, &env) {
            Ok(checked) => checked,
            Err((message_id, refusal, detail)) => {
                return Err(self.refuse(Some(peer), &message_id, refusal, detail).await)
            }
        };
        let applied = self.apply_one(peer, &env, body, created_at)?;
        self.durable().await?;
        self.after_durable(&applied.queued);
        Ok(applied.receipt)
    }

    /// Runs the pipeline for a batch: every envelope is checked before any has an effect
    /// (one failing check refuses the whole batch), then each is applied, all are made
    /// durable at once, and one signed receipt lists each message's id, hash and outcome.
    pub async fn receive_batch(
        &self,
        entry: &Peer,
        envelopes: Vec<SignedEnvelope>,
    ) -> Result<SignedReceipt, Status> {
        let peer = entry.id;
        let total: usize = envelopes.iter().map(|e| e.body.len()).sum();
        if envelopes.len() > MAX_BATCH_ENVELOPES || total > MAX_BATCH {
            return Err(self
                .refuse(
                    Some(peer),
                    "-",
                    Refusal::Oversize,
                    "batch larger than the limit",
                )
                .await);
        }
        let mut checked = Vec::with_capacity(envelopes.len());
        for env in &envelopes {
            match self.check(entry, env) {
                Ok(c) => checked.push(c),
                Err((message_id, refusal, detail)) => {
                    return Err(self.refuse(Some(peer), &message_id, refusal, detail).await)
                }
            }
        }
        let mut entries = Vec::with_capacity(envelopes.len());
        let mut queued = Vec::new();
        for (env, (body, created_at)) in envelopes.iter().zip(checked) {
            let message_id = body.message_id.clone();
            let applied = self.apply_one(peer, env, body, created_at)?;
            queued.extend(applied.queued);
            entries.push(BatchReceiptEntry {
                message_id,
                body_sha256: trm_crypto::sha256(&env.body).to_vec(),
                outcome: applied.outcome as i32,
                reason: applied.reason,
                duplicate: applied.duplicate,
            });
        }
        self.durable().await?;
        Counters::bump(&self.counters.batches);
        self.after_durable(&queued);
        let body = BatchReceiptBody {
            receiver: self.cfg.node.to_string(),
            received_at: Some(trm_proto::convert::ts(OffsetDateTime::now_utc())),
            entries,
        }
        .encode_to_vec();
        let signer = self.identity.current();
        Ok(SignedReceipt {
            signature: signer.sign(trm_crypto::signing::RECEIPT_TAG, &body),
            key_id: signer.key_id().to_owned(),
            body,
        })
    }

    /// The checks before any effect; a refusal carries the message id when known.
    fn check(
        &self,
        entry: &Peer,
        env: &SignedEnvelope,
    ) -> Result<(EnvelopeBody, OffsetDateTime), (String, Refusal, &'static str)> {
        let early = |r: Refusal, d: &'static str| ("-".to_owned(), r, d);
        if env.body.len() > MAX_ENVELOPE {
            return Err(early(Refusal::Oversize, "envelope larger than the limit"));
        }
        let key = entry.key(&env.key_id).ok_or_else(|| {
            early(
                Refusal::UnknownKey,
                "key id names none of the peer's signing keys",
            )
        })?;
        trm_crypto::signing::verify(&key.public, ENVELOPE_TAG, &env.body, &env.signature).map_err(
            |_| {
                early(
                    Refusal::BadSignature,
                    "signature does not verify over the body",
                )
            },
        )?;
        let body = EnvelopeBody::decode(env.body.as_slice())
            .map_err(|_| early(Refusal::Malformed, "body does not decode"))?;
        let mid = body.message_id.clone();
        let fail = |r: Refusal, d: &'static str| (mid.clone(), r, d);
        if body.sender != entry.id.as_str() {
            return Err(fail(Refusal::SenderMismatch, "sender is not the TLS peer"));
        }
        let created_at = from_ts("created_at", body.created_at.as_ref())
            .map_err(|_| fail(Refusal::Malformed, "created_at is missing or out of range"))?;
        if !key.valid_at(created_at) {
            return Err(fail(
                Refusal::RetiredKey,
                "signing key not valid at created_at",
            ));
        }
        if body.recipient != self.cfg.node.as_str() {
            return Err(fail(Refusal::WrongRecipient, "recipient is not this node"));
        }
        let now = OffsetDateTime::now_utc();
        if created_at < now - self.cfg.replay_window {
            return Err(fail(
                Refusal::Stale,
                "created_at is outside the replay window",
            ));
        }
        if created_at > now + self.cfg.clock_skew {
            return Err(fail(
                Refusal::Future,
                "created_at is ahead of the allowed clock skew",
            ));
        }
        match uuid::Uuid::try_parse(&body.message_id) {
            Ok(u) if u.get_version_num() == 7 => {}
            _ => return Err(fail(Refusal::Malformed, "message_id must be a UUIDv7")),
        }
        if body.payload.is_none() {
            return Err(fail(Refusal::Malformed, "payload is required"));
        }
        Ok((body, created_at))
    }

    fn apply_one(
        &self,
        peer: NodeId,
        env: &SignedEnvelope,
        body: EnvelopeBody,
        created_at: OffsetDateTime,
    ) -> Result<Applied, Status> {
        let Some(payload) = body.payload.as_ref() else {
            return Err(Status::invalid_argument("payload is required"));
        };
        let mid = body.message_id.as_bytes();
        let kind = payload_kind(payload);
        let inbound = Inbound {
            sender: peer,
            key_id: &env.key_id,
            message_id: &body.message_id,
            case_ref: &body.case_ref,
            created_at,
            payload,
        };
        let actor = format!("peer:{peer}");
        let result = self.store.transact_noting(|tx| {
            if let Some(seen) = tx.get_json::<InboxEntry>(TreeName::Inbox, mid)? {
                return Err(TxFail::Abort(Abort::Duplicate(seen)));
            }
            if body.policy_version != POLICY_VERSION {
                return Err(TxFail::Abort(Abort::Rejected(Rejection(format!(
                    "policy violation: policy version {} is not {POLICY_VERSION}",
                    body.policy_version
                )))));
            }
            self.handler.apply(tx, &inbound).map_err(|e| match e {
                TxFail::Abort(r) => TxFail::Abort(Abort::Rejected(r)),
                TxFail::Tx(t) => TxFail::Tx(t),
            })?;
            let receipt = envelope::receipt(
                &self.identity.current(),
                self.cfg.node,
                &body.message_id,
                &env.body,
                ReceiptOutcome::Accepted,
                "",
            );
            tx.put_json(TreeName::Inbox, mid, &InboxEntry::new(&receipt))?;
            tx.audit(
                AuditRecord::new(
                    actor.clone(),
                    "envelope.accept",
                    &body.message_id,
                    "accepted",
                )
                .detail(kind),
            )?;
            Ok(receipt)
        });
        match result {
            Ok((receipt, queued)) => {
                Counters::bump(&self.counters.accepted);
                Ok(Applied {
                    receipt,
                    outcome: ReceiptOutcome::Accepted,
                    reason: String::new(),
                    duplicate: false,
                    queued,
                })
            }
            Err(TxFail::Abort(Abort::Duplicate(seen))) => {
                Counters::bump(&self.counters.duplicates);
                info!(peer = %peer, message_id = %body.message_id, "duplicate envelope: original receipt returned");
                let receipt = seen
                    .receipt()
                    .ok_or_else(|| Status::unavailable("storage unavailable"))?;
                // A duplicate carries the original outcome: one first rejected stays rejected.
                let (outcome, reason) = match InboxEntry::outcome(&receipt) {
                    Some((ReceiptOutcome::Rejected, reason)) => (ReceiptOutcome::Rejected, reason),
                    _ => (ReceiptOutcome::Duplicate, String::new()),
                };
                Ok(Applied {
                    receipt,
                    outcome,
                    reason,
                    duplicate: true,
                    queued: Vec::new(),
                })
            }
            Err(TxFail::Abort(Abort::Rejected(Rejection(reason)))) => {
                warn!(peer = %peer, message_id = %body.message_id, kind, reason = %reason, "envelope rejected");
                Counters::bump(&self.counters.rejected);
                let receipt = self.reject(peer, env, &body.message_id, kind, &reason)?;
                Ok(Applied {
                    receipt,
                    outcome: ReceiptOutcome::Rejected,
                    reason,
                    duplicate: false,
                    queued: Vec::new(),
                })
            }
            Err(TxFail::Tx(e)) => {
                warn!(error = ?e, "storage fault while applying an envelope");
                Err(Status::unavailable("storage unavailable"))
            }
        }
    }

    /// What the applied envelopes asked for once durable: replies they queued (an erasure
    /// confirmation, say) go out, and keys a peer announced take effect.
    fn after_durable(&self, notes: &[String]) {
        self.delivery.wake_noted(notes);
        for peer in notes
            .iter()
            .filter_map(|n| crate::directory::learned_note_peer(n))
        {
            if let Err(e) = self.directory.reload_learned(&self.store, peer) {
                warn!(peer = %peer, error = %e, "cannot apply the keys a peer announced");
            }
        }
    }

    /// Waits for the durable point (acknowledge nothing before it).
    async fn durable(&self) -> Result<(), Status> {
        self.store.durable().await.map_err(|e| {
            warn!(error = %e, "storage fault at the durable point");
            Status::unavailable("storage unavailable")
        })
    }

    /// Records a REJECTED receipt (and its audit entry) for an authenticated envelope.
    fn reject(
        &self,
        peer: NodeId,
        env: &SignedEnvelope,
        message_id: &str,
        kind: &str,
        reason: &str,
    ) -> Result<SignedReceipt, Status> {
        let mid = message_id.as_bytes();
        let result = self.store.transact::<_, InboxEntry, _>(|tx| {
            if let Some(seen) = tx.get_json::<InboxEntry>(TreeName::Inbox, mid)? {
                return Err(TxFail::Abort(seen));
            }
            let receipt = envelope::receipt(
                &self.identity.current(),
                self.cfg.node,
                message_id,
                &env.body,
                ReceiptOutcome::Rejected,
                reason,
            );
            tx.put_json(TreeName::Inbox, mid, &InboxEntry::new(&receipt))?;
            tx.audit(
                AuditRecord::new(
                    format!("peer:{peer}"),
                    "envelope.reject",
                    message_id,
                    "rejected",
                )
                .detail(format!("{kind}: {reason}")),
            )?;
            Ok(receipt)
        });
        match result {
            Ok(r) => Ok(r),
            Err(TxFail::Abort(seen)) => seen
                .receipt()
                .ok_or_else(|| Status::unavailable("storage unavailable")),
            Err(TxFail::Tx(_)) => Err(Status::unavailable("storage unavailable")),
        }
    }
}

#[tonic::async_trait]
impl FederationService for FederationServer {
    async fn deliver(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<SignedReceipt>, Status> {
        let peer = self.tls_peer(&request).await?;
        let _slot = self.slot(peer.id).await?;
        self.receive(&peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn deliver_batch(
        &self,
        request: Request<DeliverBatchRequest>,
    ) -> Result<Response<SignedReceipt>, Status> {
        let peer = self.tls_peer(&request).await?;
        let _slot = self.slot(peer.id).await?;
        self.receive_batch(&peer, request.into_inner().envelopes)
            .await
            .map(Response::new)
    }

    async fn get_node_info(
        &self,
        request: Request<GetNodeInfoRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        self.tls_peer(&request).await?;
        Ok(Response::new(NodeInfo {
            node_id: self.cfg.node.to_string(),
            keys: crate::keys::listed(&self.store, &self.identity.current())
                .iter()
                .map(crate::keys::OwnKey::to_wire)
                .collect(),
            policy_version: POLICY_VERSION.to_owned(),
        }))
    }
}
