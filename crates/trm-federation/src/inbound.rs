//! The inbound `FederationService`. An envelope is checked in this order, and nothing is
//! decoded or changed before the signature verifies: the TLS peer is a directory entry; the
//! key id names one of its keys; the signature over the exact body bytes; the body decodes;
//! sender = TLS peer; the key was valid at `created_at`; recipient = this node; `created_at`
//! within the replay window and not ahead by more than the clock skew; the message id not seen
//! before (a duplicate gets the original receipt); then the payload is applied by the
//! [`FlowHandler`], whose refusal becomes a signed REJECTED receipt. Every refusal is audited.

use std::sync::Arc;

use prost::Message;
use time::{Duration, OffsetDateTime};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use trm_core::{
    ids::{MessageId, NodeId},
    limits::{MAX_BATCH, MAX_ENVELOPE},
    messages::{EnvelopeKind, PeerMessage},
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
use trm_store::{
    audit::AuditRecord, repo::outbox::InboxEntry, Note, Store, StoreError, Tx, TxFail,
};

use crate::error::FederationError;
use crate::refusals::RefusalLog;
use crate::sequence::Sequencer;
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

/// How far ahead of this node's clock a peer may date what it signs (DESIGN.md).
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

impl InboundConfig {
    /// Returns the defaults of DESIGN.md for `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            replay_window: Duration::days(7),
            clock_skew: CLOCK_SKEW,
            max_in_flight_per_peer: 16,
        }
    }
}

/// Returns the outcome and reason a receipt body gave, and whether it was given for
/// exactly `body`.
fn outcome_of(receipt_body: &[u8], body: &[u8]) -> Option<(ReceiptOutcome, String, bool)> {
    let r = ReceiptBody::decode(receipt_body).ok()?;
    let outcome = ReceiptOutcome::try_from(r.outcome).ok()?;
    let same = r.body_sha256 == trm_crypto::sha256(body).as_slice();
    Some((outcome, r.reason, same))
}

/// Forgets inbound message ids received before `before` (DESIGN.md: remembered for at least
/// twice the replay window; older envelopes are refused as stale anyway). Returns how many.
pub async fn prune_inbox(store: &Store, before: OffsetDateTime) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let n = store
            .commit::<usize, (), _>(move |tx| Ok(tx.forget_inbox_before(before, 512)?))
            .await
            .map_err(TxFail::into_store)?
            .value;
        total += n;
        if n < 512 {
            return Ok(total);
        }
    }
}

/// The most envelopes one batch may carry.
pub const MAX_BATCH_ENVELOPES: usize = 512;

/// What applying one envelope gave.
struct Applied {
    /// The receipt's body (signed outside the writer, after the commit).
    receipt_body: Vec<u8>,
    outcome: ReceiptOutcome,
    reason: String,
    /// Seen before: no second effect.
    duplicate: bool,
}

/// An envelope that passed every check before any effect (see [`open`]).
#[derive(Debug, Clone)]
pub struct Checked {
    sender: NodeId,
    message_id: MessageId,
    kind: EnvelopeKind,
    /// The envelope with its payload parsed, or why the payload does not parse (answered
    /// REJECTED, as a flow's refusal is).
    inbound: Result<Inbound, Rejection>,
    /// The exact body bytes received (receipts are bound to them).
    body: Vec<u8>,
    policy_version: String,
}

impl Checked {
    /// Returns the envelope's message id.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// Returns the envelope with its payload parsed, or why the payload does not parse
    /// (what the REJECTED receipt says).
    pub fn inbound(&self) -> Result<&Inbound, &Rejection> {
        self.inbound.as_ref()
    }
}

/// Why [`open`] refused an envelope: the message id when the body decoded far enough to
/// name one (`-` otherwise), the refusal and its detail (field names, never values).
pub type Refused = (String, Refusal, &'static str);

/// What the receive pipeline needs inside the writer's transaction.
#[derive(Clone)]
struct Applier {
    node: NodeId,
    directory: Arc<PeerDirectory>,
    handler: Arc<dyn FlowHandler>,
}

impl Applier {
    /// Applies one checked envelope in `tx`: a duplicate gets its original receipt (and
    /// outcome) back with no second effect; otherwise the flow applies it under a savepoint
    /// of its own, and the receipt's body (ACCEPTED, or REJECTED with the reason) is kept with
    /// its audit entry.
    fn apply(&self, tx: &mut Tx<'_>, c: &Checked) -> Result<Applied, StoreError> {
        let mid = c.message_id;
        if let Some(seen) = seen_before(tx, c)? {
            // A duplicate carries the original outcome: the same bytes first rejected stay
            // rejected. A refused message its sender sealed again (a retry from its dead
            // letters) is judged again: refused, it changed nothing.
            let (outcome, reason, sealed_again) = match outcome_of(&seen.receipt_body, &c.body) {
                Some((ReceiptOutcome::Rejected, reason, same)) => {
                    (ReceiptOutcome::Rejected, reason, !same)
                }
                _ => (ReceiptOutcome::Duplicate, String::new(), false),
            };
            if !sealed_again {
                return Ok(Applied {
                    receipt_body: seen.receipt_body,
                    outcome,
                    reason,
                    duplicate: true,
                });
            }
        }
        let kind = c.kind;
        let result = if c.policy_version != POLICY_VERSION {
            Err(Rejection::PolicyViolation(format!(
                "policy version {} is not {POLICY_VERSION}",
                named_version(&c.policy_version)
            )))
        } else {
            match &c.inbound {
                // A peer's new key is the directory's, before any flow.
                Ok(inbound) => tx.attempt(|tx| match inbound.message {
                    PeerMessage::KeyAnnouncement { .. } => {
                        crate::announce::learn_key(&self.directory, tx, inbound)
                    }
                    _ => self.handler.apply(tx, inbound),
                })?,
                Err(unparsed) => Err(unparsed.clone()),
            }
        };
        let (outcome, reason) = match result {
            Ok(()) => (ReceiptOutcome::Accepted, String::new()),
            Err(rejection) => (ReceiptOutcome::Rejected, rejection.to_string()),
        };
        let receipt_body =
            envelope::receipt_body(self.node, &mid.to_string(), &c.body, outcome, &reason);
        tx.put_inbox(c.sender, mid, &receipt_body)?;
        let actor = peer_actor(c.sender);
        let record = match outcome {
            ReceiptOutcome::Accepted => {
                AuditRecord::new(actor, ACCEPTED_ACTION, mid.to_string(), "accepted")
                    .detail(kind.as_str())
            }
            _ => AuditRecord::new(actor, REJECTED_ACTION, mid.to_string(), "rejected")
                .detail(format!("{kind}: {reason}")),
        };
        tx.audit(record)?;
        Ok(Applied {
            receipt_body,
            outcome,
            reason,
            duplicate: false,
        })
    }
}

/// Returns the receipt given before for this message of this sender, if any. A message id
/// is unique per sender: two peers may use the same. Versions before this one kept receipts
/// by message id alone: such an entry is this sender's when the receipt is bound to these
/// very bytes, or when the audit entry written with it names this sender (a retry re-sealed
/// with a fresh `created_at` has other bytes); when neither can be told, it counts, as it
/// did when it was written.
fn seen_before(tx: &mut Tx<'_>, c: &Checked) -> Result<Option<InboxEntry>, StoreError> {
    if let Some(seen) = tx.inbox(c.sender, c.message_id)? {
        return Ok(Some(seen));
    }
    let Some(legacy) = tx.legacy_inbox(c.message_id)? else {
        return Ok(None);
    };
    let bound_to = ReceiptBody::decode(legacy.receipt_body.as_slice())
        .ok()
        .map(|b| b.body_sha256);
    if bound_to.as_deref() == Some(trm_crypto::sha256(&c.body).as_slice()) {
        return Ok(Some(legacy));
    }
    let actor = tx.audited_actor_near(
        &c.message_id.to_string(),
        &[ACCEPTED_ACTION, REJECTED_ACTION],
        legacy.received_at,
    )?;
    Ok(match actor {
        Some(actor) if actor != peer_actor(c.sender) => None,
        _ => Some(legacy),
    })
}

/// The audit actions of an applied envelope.
const ACCEPTED_ACTION: &str = "envelope.accept";
const REJECTED_ACTION: &str = "envelope.reject";

/// How a refusal names the policy version a peer's envelope carries: the peer's text only
/// when it looks like a version name (a few printable characters), so that the receipt, the
/// audit log and the logs never carry a peer's text of any length.
fn named_version(v: &str) -> String {
    const MOST: usize = 32;
    if v.is_empty() {
        "(none)".to_owned()
    } else if v.len() <= MOST
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        v.to_owned()
    } else {
        format!("({} bytes, not a version name)", v.len())
    }
}

/// Returns how a peer is named in the audit log.
pub fn peer_actor(peer: NodeId) -> String {
    format!("peer:{peer}")
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
    sequencer: Sequencer,
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
            sequencer: Sequencer::new(std::time::Duration::from_secs(10)),
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
            return FederationError::Storage(format!("cannot audit a refusal: {e}")).into();
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

    fn applier(&self) -> Applier {
        Applier {
            node: self.cfg.node,
            directory: self.directory.clone(),
            handler: self.handler.clone(),
        }
    }

    /// Counts what applying gave and logs a rejection.
    fn count(&self, applied: &Applied, c: &Checked) {
        match (applied.duplicate, applied.outcome) {
            (true, _) => {
                Counters::bump(&self.counters.duplicates);
                info!(peer = %c.sender, message_id = %c.message_id, "duplicate envelope: original receipt returned");
            }
            (false, ReceiptOutcome::Rejected) => {
                Counters::bump(&self.counters.rejected);
                warn!(peer = %c.sender, message_id = %c.message_id, kind = %c.kind, reason = %applied.reason, "envelope rejected");
            }
            _ => Counters::bump(&self.counters.accepted),
        }
    }

    /// Runs the receive pipeline for one envelope from the authenticated TLS peer `entry`.
    pub async fn receive(
        &self,
        entry: &Peer,
        env: SignedEnvelope,
    ) -> Result<SignedReceipt, Status> {
        let peer = entry.id;
        let checked = match self.check(entry, &env) {
            Ok(checked) => checked,
            Err((message_id, refusal, detail)) => {
                return Err(self.refuse(Some(peer), &message_id, refusal, detail).await)
            }
        };
        let applier = self.applier();
        let c = checked.clone();
        let committed = self
            .store
            .commit::<Applied, (), _>(move |tx| Ok(applier.apply(tx, &c)?))
            .await
            .map_err(|e| self.unavailable(e))?;
        self.count(&committed.value, &checked);
        self.after_durable(&committed.notes);
        Ok(envelope::sign_receipt(
            &self.identity.current(),
            committed.value.receipt_body,
        ))
    }

    /// Runs the pipeline for a batch: every envelope is checked before any has an effect
    /// (one failing check refuses the whole batch), then all are applied in one transaction
    /// and made durable at once, and one signed receipt lists each message's id, hash and
    /// outcome.
    pub async fn receive_batch(
        &self,
        entry: &Peer,
        batch: DeliverBatchRequest,
    ) -> Result<SignedReceipt, Status> {
        let peer = entry.id;
        let DeliverBatchRequest {
            envelopes,
            session,
            sequence,
        } = batch;
        if session.len() > crate::sequence::MAX_SESSION {
            return Err(self
                .refuse(
                    Some(peer),
                    "-",
                    Refusal::Malformed,
                    "session: longer than 64 characters",
                )
                .await);
        }
        // Dropped on any refusal below: the session's later batches are refused too.
        let turn = self.sequencer.turn(peer, &session, sequence);
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
        let checked = self.check_batch(entry, &envelopes).await?;
        if let Some(turn) = &turn {
            turn.wait().await.map_err(|why| {
                debug!(peer = %peer, reason = %why, "batch out of turn");
                FederationError::from(why)
            })?;
        }
        let applier = self.applier();
        let all = checked.clone();
        let queued = self
            .store
            .queue::<Vec<Applied>, (), _>(move |tx| {
                let mut out = Vec::with_capacity(all.len());
                for c in &all {
                    out.push(applier.apply(tx, c)?);
                }
                Ok(out)
            })
            .map_err(|e| self.unavailable(TxFail::Store(e)))?;
        // Queued behind the session's earlier batches: the next one may queue now.
        if let Some(turn) = turn {
            turn.taken();
        }
        let committed = queued.await.map_err(|e| self.unavailable(e))?;
        Ok(self.batch_receipt(&checked, &committed.value, &committed.notes))
    }

    /// Checks every envelope of a batch before any has an effect: the first that fails a
    /// check refuses the whole batch.
    async fn check_batch(
        &self,
        entry: &Peer,
        envelopes: &[SignedEnvelope],
    ) -> Result<Vec<Checked>, Status> {
        let mut checked = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            match self.check(entry, env) {
                Ok(c) => checked.push(c),
                Err((message_id, refusal, detail)) => {
                    return Err(self
                        .refuse(Some(entry.id), &message_id, refusal, detail)
                        .await)
                }
            }
        }
        Ok(checked)
    }

    /// Once a batch is durable: counts each envelope's outcome, does what they asked for
    /// (see [`Self::after_durable`]), and returns the signed receipt listing each message's
    /// id, hash and outcome.
    fn batch_receipt(
        &self,
        checked: &[Checked],
        applied: &[Applied],
        notes: &[Note],
    ) -> SignedReceipt {
        let mut entries = Vec::with_capacity(checked.len());
        for (c, applied) in checked.iter().zip(applied) {
            self.count(applied, c);
            entries.push(BatchReceiptEntry {
                message_id: c.message_id.to_string(),
                body_sha256: trm_crypto::sha256(&c.body).to_vec(),
                outcome: applied.outcome as i32,
                reason: applied.reason.clone(),
                duplicate: applied.duplicate,
            });
        }
        Counters::bump(&self.counters.batches);
        self.after_durable(notes);
        let body = BatchReceiptBody {
            receiver: self.cfg.node.to_string(),
            received_at: Some(trm_proto::convert::ts(OffsetDateTime::now_utc())),
            entries,
        }
        .encode_to_vec();
        envelope::sign_receipt(&self.identity.current(), body)
    }

    /// Logs a storage fault and returns what the peer is told.
    fn unavailable(&self, e: TxFail<()>) -> Status {
        FederationError::Storage(format!("applying envelopes: {}", e.into_store())).into()
    }

    /// The checks before any effect, at the present time.
    fn check(&self, entry: &Peer, env: &SignedEnvelope) -> Result<Checked, Refused> {
        open(&self.cfg, entry, env, OffsetDateTime::now_utc())
    }

    /// What the applied envelopes asked for once durable: replies they queued (an erasure
    /// confirmation, say) go out, and keys a peer announced take effect.
    fn after_durable(&self, notes: &[Note]) {
        self.delivery.wake_noted(notes);
        for n in notes {
            if let Note::PeerKeys(peer) = n {
                if let Err(e) = self.directory.reload_learned(&self.store, *peer) {
                    warn!(peer = %peer, error = %e, "cannot apply the keys a peer announced");
                }
            }
        }
    }
}

/// Parses an envelope's message id: a UUIDv7, not dated after `latest`. The id orders the
/// sender's messages (a later one replaces what an earlier one set), so one dated ahead of
/// the clock would outrank every later one.
fn checked_message_id(
    id: &str,
    latest: OffsetDateTime,
) -> Result<MessageId, (Refusal, &'static str)> {
    let id = match uuid::Uuid::try_parse(id) {
        Ok(u) if u.get_version_num() == 7 => u,
        _ => return Err((Refusal::Malformed, "message_id must be a UUIDv7")),
    };
    let dated = id
        .get_timestamp()
        .map(|t| t.to_unix().0)
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok());
    if dated.is_none_or(|at| at > latest) {
        return Err((
            Refusal::Future,
            "message_id is dated ahead of the allowed clock skew",
        ));
    }
    Ok(MessageId::from_uuid(id))
}

/// Opens an envelope from the authenticated TLS peer `entry`, with every check of DESIGN.md
/// that comes before an effect, in its order, as of `now`: size, key id, the signature over
/// the exact body bytes, only then the decoding of the body, sender, the key's validity at
/// `created_at`, recipient, replay window and clock skew, message id (a UUIDv7, not dated
/// ahead of the clock skew: it orders the sender's messages), and the payload parsed
/// into its domain message (a payload that does not parse is carried as the rejection its
/// receipt will give). Nothing is read from or written to the store: a duplicate is found
/// when the envelope is applied.
pub fn open(
    cfg: &InboundConfig,
    entry: &Peer,
    env: &SignedEnvelope,
    now: OffsetDateTime,
) -> Result<Checked, Refused> {
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
    if body.recipient != cfg.node.as_str() {
        return Err(fail(Refusal::WrongRecipient, "recipient is not this node"));
    }
    if created_at < now - cfg.replay_window {
        return Err(fail(
            Refusal::Stale,
            "created_at is outside the replay window",
        ));
    }
    if created_at > now + cfg.clock_skew {
        return Err(fail(
            Refusal::Future,
            "created_at is ahead of the allowed clock skew",
        ));
    }
    let message_id =
        checked_message_id(&body.message_id, now + cfg.clock_skew).map_err(|(r, d)| fail(r, d))?;
    let Some(payload) = body.payload else {
        return Err(fail(Refusal::Malformed, "payload is required"));
    };
    let inbound = trm_proto::peer::parse(&payload)
        .map_err(Rejection::from)
        .map(|message| Inbound {
            sender: entry.id,
            key_id: env.key_id.clone(),
            message_id,
            case_ref: body.case_ref,
            created_at,
            message,
        });
    Ok(Checked {
        sender: entry.id,
        message_id,
        kind: payload_kind(&payload),
        inbound,
        body: env.body.clone(),
        policy_version: body.policy_version,
    })
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
        self.receive_batch(&peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_node_info(
        &self,
        request: Request<GetNodeInfoRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        let caller = self.tls_peer(&request).await?;
        Ok(Response::new(NodeInfo {
            node_id: self.cfg.node.to_string(),
            keys: crate::keys::listed(&self.store, &self.identity.current())
                .map_err(|e| self.unavailable(TxFail::Store(e)))?
                .iter()
                .map(crate::keys::to_wire)
                .collect(),
            policy_version: POLICY_VERSION.to_owned(),
            // The caller's own public keys: telling it which we hold discloses nothing.
            caller_keys: caller
                .keys
                .iter()
                .map(crate::keys::peer_key_to_wire)
                .collect(),
        }))
    }
}
