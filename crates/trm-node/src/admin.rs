//! `AdminService`, for operators only: node status, peers, the outbox, audit verification,
//! key rotation and client-certificate revocation. Never returns victim records.

use std::sync::Arc;

use time::OffsetDateTime;
use tonic::Request;
use tracing::{error, info};
use trm_core::{
    ids::{MessageId, NodeId},
    messages::Topic,
    model::parse_date,
    stats::Period,
};
use trm_core::{policy::POLICY_VERSION, FieldError, Guard, GuardError};
use trm_crypto::signing::SigningIdentity;
use trm_federation::{
    directory::{record_change, stored_from_peer},
    keys,
    outbox::{self, RetryError},
    Peer, PeerKey,
};
use trm_proto::v1::envelope_body::Payload;
use trm_proto::{
    convert::{self, ts},
    v1 as w,
    v1::admin_service_server::AdminService,
};
use trm_store::{audit::AuditRecord, repo::directory::Revoked, repo::outbox::OutboxItem};

use crate::{
    authz,
    ctx::{Ctx, Idempotent},
    error::{ApiError, ApiResult},
};

/// The longest overlap a rotation may ask for (ten years).
pub const MAX_OVERLAP_DAYS: u32 = 3650;

/// The admin service of one node.
#[derive(Debug, Clone)]
pub struct Admin {
    ctx: Ctx,
    /// One key rotation at a time (a retried rotation must see the first one's result).
    rotation: Arc<tokio::sync::Mutex<()>>,
}

/// Refuses a request's field, naming it and what is wrong with it.
fn field_error(field: &str, problem: &str) -> ApiError {
    FieldError::new(field, problem).into()
}

impl Admin {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self {
            ctx,
            rotation: Arc::default(),
        }
    }

    /// Refuses every caller but an operator; returns the operator's name for the audit log:
    /// `operator:<org>/<certificate serial>`, so that an entry says which operator acted.
    fn operator<T>(request: &Request<T>) -> ApiResult<String> {
        let p = authz::principal(request)?;
        trm_core::access::require(&p, trm_core::access::Action::Administer)?;
        Ok(format!("operator:{}/{}", p.org, authz::client_key(request)))
    }
}

fn time_of(t: Option<OffsetDateTime>) -> Option<prost_types::Timestamp> {
    t.map(ts)
}

/// Returns the wire form of a peer: its keys as PEM and with their ids and windows.
fn peer_to_wire(p: Peer) -> w::Peer {
    w::Peer {
        node_id: p.id.to_string(),
        endpoint: p.endpoint,
        tls_ca_pem: p.tls_ca_pem,
        tls_pin_sha256: p.tls_pin.unwrap_or_default(),
        signing_keys_pem: p
            .keys
            .iter()
            .filter_map(|k| trm_crypto::signing::public_to_pem(&k.public).ok())
            .collect(),
        signing_keys: p
            .keys
            .iter()
            .map(|k| w::SigningKey {
                key_id: k.key_id.clone(),
                public_key: k.public.as_bytes().to_vec(),
                valid_from: time_of(k.valid_from),
                valid_until: time_of(k.valid_until),
            })
            .collect(),
    }
}

/// Parses the keys of an `UpsertPeer`: the windowed keys when given, else the PEMs, each
/// keeping the window the directory already knows for it (so nothing retired revives).
fn keys_from_wire(wire: &w::Peer, known: &[PeerKey]) -> ApiResult<Vec<PeerKey>> {
    if !wire.signing_keys.is_empty() {
        let mut keys = Vec::new();
        for (i, k) in wire.signing_keys.iter().enumerate() {
            let name = format!("peer.signing_keys[{i}]");
            let public = trm_crypto::signing::public_from_bytes(&k.public_key).map_err(|_| {
                field_error(
                    &format!("{name}.public_key"),
                    "must be 32 raw bytes of an ed25519 key",
                )
            })?;
            let key_id = trm_crypto::signing::key_id(&public);
            if !k.key_id.is_empty() && k.key_id != key_id {
                return Err(field_error(
                    &format!("{name}.key_id"),
                    "does not match public_key",
                ));
            }
            let window = |f: &str, t: Option<&prost_types::Timestamp>| {
                t.map(|t| convert::from_ts(&format!("{name}.{f}"), Some(t)))
                    .transpose()
            };
            let valid_from = window("valid_from", k.valid_from.as_ref())?;
            let valid_until = window("valid_until", k.valid_until.as_ref())?;
            if let (Some(f), Some(u)) = (valid_from, valid_until) {
                if u < f {
                    return Err(field_error(
                        &format!("{name}.valid_until"),
                        "is before valid_from",
                    ));
                }
            }
            keys.push(PeerKey {
                key_id,
                public,
                valid_from,
                valid_until,
            });
        }
        return Ok(keys);
    }
    if wire.signing_keys_pem.is_empty() {
        return Err(field_error(
            "peer.signing_keys_pem",
            "at least one key is required",
        ));
    }
    let mut keys = Vec::new();
    for (i, pem) in wire.signing_keys_pem.iter().enumerate() {
        let public = trm_crypto::signing::public_from_pem(pem).map_err(|_| {
            field_error(
                &format!("peer.signing_keys_pem[{i}]"),
                "must be an ed25519 public key PEM",
            )
        })?;
        let fresh = PeerKey::new(public);
        keys.push(
            known
                .iter()
                .find(|k| k.key_id == fresh.key_id)
                .cloned()
                .unwrap_or(fresh),
        );
    }
    Ok(keys)
}

/// Parses the peer of an `UpsertPeerRequest` (from node `own`): node id, endpoint, trust
/// anchor, signing keys (raw with windows, or PEM, whose windows are kept from `known`, the
/// keys the directory holds for a node) and pin. A bad field is refused naming it.
pub fn peer_from_wire(
    wire: &w::Peer,
    own: NodeId,
    known: impl FnOnce(NodeId) -> Vec<PeerKey>,
) -> ApiResult<Peer> {
    let id = convert::country("peer.node_id", &wire.node_id)?;
    if id == own {
        return Err(field_error("peer.node_id", "a node is not its own peer"));
    }
    let endpoint = convert::short("peer.endpoint", &wire.endpoint, true)?;
    if !endpoint.contains(':') {
        return Err(field_error("peer.endpoint", "must be host:port"));
    }
    if trm_federation::PeerDirectory::check_anchor(&wire.tls_ca_pem).is_err() {
        return Err(field_error("peer.tls_ca_pem", "must be a PEM certificate"));
    }
    let keys = keys_from_wire(wire, &known(id))?;
    let tls_pin = match wire.tls_pin_sha256.as_str() {
        "" => None,
        pin if crate::config::valid_pin(pin) => Some(pin.to_owned()),
        _ => {
            return Err(field_error(
                "peer.tls_pin_sha256",
                "must be 64 lowercase hex characters",
            ))
        }
    };
    Ok(Peer {
        id,
        endpoint,
        tls_ca_pem: wire.tls_ca_pem.clone(),
        tls_pin,
        keys,
    })
}

/// Returns why traffic with peer `id` is stopped, for people (empty when nothing stops it):
/// the probe failed, the peer does not hold our current signing key `our_key` (so it will
/// refuse what we sign with it), or its answers to our deliveries are refusals.
pub fn peer_problem(
    id: NodeId,
    our_key: &str,
    probe: &Result<trm_federation::outbox::Probe, String>,
    state: &trm_federation::outbox::PeerState,
) -> String {
    match probe {
        Err(why) => return format!("unreachable: {why}"),
        Ok(p) => {
            if let Some(held) = &p.holds_for_us {
                if !held.iter().any(|(k, valid)| k == our_key && *valid) {
                    let held: Vec<&str> = held.iter().map(|(k, _)| k.as_str()).collect();
                    return format!(
                        "{id} does not hold our current signing key {our_key} (it holds {}): it \
                         refuses what we sign (unknown_key); its operator adds our key with \
                         `trmctl peer update --node-id <us> --signing-key <file>`, the file from \
                         our `trmctl keys show --pem`",
                        held.join(", ")
                    );
                }
            }
        }
    }
    match &state.failing {
        Some((why, _)) => format!("deliveries fail: {why}"),
        None => String::new(),
    }
}

/// Parses a certificate serial as `RevokeClientCertificate` takes it.
pub fn serial(s: &str) -> ApiResult<String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (s == "0" || !s.starts_with('0'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(field_error(
            "serial_hex",
            "must be the serial number in lower-case hex, without separators or leading zeros",
        ))
    }
}

/// Parses an `ExportAudit` page: its size (0 asks for 500, at most 1000) and the sequence
/// number of the last entry already read (an empty token starts from the first).
pub fn audit_page(size: i32, token: &str) -> ApiResult<(usize, u64)> {
    let size = match usize::try_from(size) {
        Err(_) => return Err(field_error("page_size", "must not be negative")),
        Ok(0) => 500,
        Ok(n) => n.min(1000),
    };
    let after = match token {
        "" => 0,
        t => t
            .parse::<u64>()
            .map_err(|_| field_error("page_token", "is not a token this node gave"))?,
    };
    Ok((size, after))
}

impl Admin {
    /// Returns the public key of this node's signing key `key_id` (current or still listed;
    /// a storage fault is an error, never "no such key").
    fn own_key(&self, key_id: &str) -> ApiResult<Option<trm_crypto::signing::PublicKey>> {
        let current = self.ctx.identity.current();
        if current.key_id() == key_id {
            return Ok(Some(current.public()));
        }
        let Some(k) = keys::listed(&self.ctx.store, &current)?
            .into_iter()
            .find(|k| k.key_id == key_id)
        else {
            return Ok(None);
        };
        // A listed key that does not read is a damaged store, never "no such key".
        let public = hex::decode(&k.public)
            .ok()
            .and_then(|b| trm_crypto::signing::public_from_bytes(&b).ok())
            .ok_or_else(|| ApiError::Store(format!("own signing key {key_id} does not read")))?;
        Ok(Some(public))
    }

    /// Verifies the audit chain and that it matches the head this node signed: a chain
    /// recomputed by someone who could write the database, but does not hold the signing
    /// key, is detected.
    async fn verified_audit(&self) -> ApiResult<w::VerifyAuditResponse> {
        let store = &self.ctx.store;
        let mut attempt = 0;
        loop {
            // Every entry so far is then covered by a signed head, unless a write lands in
            // between (tried again).
            store.durable().await?;
            let report = store.verify_audit()?;
            let mut out = w::VerifyAuditResponse {
                ok: report.ok,
                entries_checked: report.entries_checked,
                first_bad_entry: report.first_bad_entry,
                signed_through: 0,
                signed_by: String::new(),
            };
            if !report.ok {
                return Ok(out);
            }
            let Some(signed) = report.signed else {
                out.ok = out.entries_checked == 0;
                out.first_bad_entry = u64::from(!out.ok);
                return Ok(out);
            };
            let signature_ok = self.own_key(&signed.key_id)?.is_some_and(|key| {
                hex::decode(&signed.signature).is_ok_and(|sig| {
                    trm_crypto::signing::verify(
                        &key,
                        trm_store::audit::HEAD_TAG,
                        &trm_store::audit::SignedHead::body(signed.seq, &signed.hash),
                        &sig,
                    )
                    .is_ok()
                })
            });
            out.signed_by = signed.key_id.clone();
            let matches = signed.seq == 0 || report.hash_at_signed.as_deref() == Some(&signed.hash);
            if !signature_ok || !matches || signed.seq > report.entries_checked {
                out.ok = false;
                out.first_bad_entry = if signature_ok { signed.seq.max(1) } else { 1 };
                return Ok(out);
            }
            out.signed_through = signed.seq;
            if signed.seq == report.entries_checked || attempt >= 3 {
                out.ok = signed.seq == report.entries_checked;
                if !out.ok {
                    out.first_bad_entry = signed.seq + 1;
                }
                return Ok(out);
            }
            attempt += 1;
        }
    }
}

crate::grpc_service!(Admin => AdminService {
    status(w::StatusRequest) -> w::StatusResponse;
    list_peers(w::ListPeersRequest) -> w::ListPeersResponse;
    upsert_peer(w::UpsertPeerRequest) -> w::Peer;
    remove_peer(w::RemovePeerRequest) -> w::RemovePeerResponse;
    list_outbox(w::ListOutboxRequest) -> w::ListOutboxResponse;
    retry_delivery(w::RetryDeliveryRequest) -> w::RetryDeliveryResponse;
    verify_audit(w::VerifyAuditRequest) -> w::VerifyAuditResponse;
    export_audit(w::ExportAuditRequest) -> w::ExportAuditResponse;
    rotate_signing_key(w::RotateSigningKeyRequest) -> w::RotateSigningKeyResponse;
    export_statistics(w::ExportStatisticsRequest) -> w::ExportStatisticsResponse;
    backup(w::BackupRequest) -> w::BackupResponse;
    revoke_client_certificate(w::RevokeClientCertificateRequest) -> w::RevokedClientCertificate;
    list_signing_keys(w::ListSigningKeysRequest) -> w::ListSigningKeysResponse;
    list_revoked_client_certificates(
        w::ListRevokedClientCertificatesRequest
    ) -> w::ListRevokedClientCertificatesResponse;
});

/// Returns the wire form of a revoked client certificate.
fn revoked_to_wire(r: Revoked) -> w::RevokedClientCertificate {
    w::RevokedClientCertificate {
        serial_hex: r.serial_hex,
        revoked_at: Some(ts(r.revoked_at)),
        issuer: r.issuer,
    }
}

/// Returns the wire form of an outbox entry (`dead`: a dead letter).
fn outbox_entry_to_wire(i: OutboxItem, dead: bool) -> w::OutboxEntry {
    w::OutboxEntry {
        message_id: i.message_id.to_string(),
        peer: i.peer.to_string(),
        kind: i.kind.as_str().to_owned(),
        attempts: i.attempts,
        created_at: Some(convert::ts(i.created_at)),
        next_attempt_at: None,
        dead_letter: dead,
        last_error: i.last_error,
    }
}

/// Returns the wire form of an audit entry.
fn audit_entry_to_wire(e: trm_store::audit::AuditEntry) -> w::AuditEntry {
    w::AuditEntry {
        seq: e.seq,
        at: e
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        actor: e.record.actor,
        action: e.record.action,
        subject: e.record.subject,
        outcome: e.record.outcome,
        detail: e.record.detail,
        prev: e.prev,
        hash: e.hash,
    }
}

/// Parses the issuer of a `RevokeClientCertificate`: empty for every client CA of the node
/// (`client_issuers`), else the id of one issuer (16 lower-case hex characters).
fn issuers(issuer: &str, client_issuers: &[String]) -> ApiResult<Vec<String>> {
    match issuer {
        "" => Ok(client_issuers.to_vec()),
        i if i.len() == 16
            && i.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(vec![i.to_owned()])
        }
        _ => Err(field_error(
            "issuer",
            "must be 16 lower-case hex characters (the issuer id), or empty for the node's client CA",
        )),
    }
}

/// What a key rotation commits: the old key retired at `now`, the new one announced.
struct Rotation {
    actor: String,
    idem: Option<Idempotent>,
    old: Arc<SigningIdentity>,
    new_id: String,
    announced: keys::OwnKey,
    now: OffsetDateTime,
    overlap_days: u32,
}

impl Admin {
    /// Probes every peer at once and returns how traffic with each stands, by node id (a
    /// storage fault is an error, never an empty queue).
    async fn peer_statuses(&self) -> ApiResult<Vec<w::PeerStatus>> {
        let ctx = &self.ctx;
        let store = &ctx.store;
        let mut probes = tokio::task::JoinSet::new();
        for id in ctx.directory.ids() {
            let delivery = ctx.delivery.clone();
            probes.spawn(async move {
                (
                    id,
                    delivery.probe(id, std::time::Duration::from_secs(3)).await,
                )
            });
        }
        let mut peers = Vec::new();
        let our_key = ctx.identity.current().key_id().to_owned();
        while let Some(done) = probes.join_next().await {
            let Ok((id, probe)) = done else { continue };
            let state = ctx.delivery.peer_state(id);
            let oldest = store.outbox_head(id, 1)?.first().map(|i| ts(i.created_at));
            let problem = peer_problem(id, &our_key, &probe, &state);
            let (delivery_error, delivery_failing_since) = match state.failing {
                Some((why, since)) => (why, Some(ts(since))),
                None => (String::new(), None),
            };
            peers.push(w::PeerStatus {
                node_id: id.to_string(),
                reachable: probe.is_ok(),
                outbox_depth: store.outbox_depth(id)?,
                last_delivery: state.last_delivery.map(ts),
                probe_ms: probe.as_ref().map_or(0, |p| {
                    u32::try_from(p.latency.as_millis()).unwrap_or(u32::MAX)
                }),
                probe_error: probe.err().unwrap_or_default(),
                oldest_queued: oldest,
                healthy: problem.is_empty(),
                problem,
                delivery_error,
                delivery_failing_since,
            });
        }
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(peers)
    }

    async fn status(&self, request: Request<w::StatusRequest>) -> ApiResult<w::StatusResponse> {
        Self::operator(&request)?;
        let ctx = &self.ctx;
        let store = &ctx.store;
        // Every peer is probed now, all at once.
        let peers = self.peer_statuses().await?;
        let health = match store.write_fault() {
            None => "SERVING".to_owned(),
            Some(why) => format!("NOT_SERVING: {why}"),
        };
        Ok(w::StatusResponse {
            node_id: ctx.id.to_string(),
            policy_version: POLICY_VERSION.to_owned(),
            outbox_depth: peers.iter().map(|p| p.outbox_depth).sum(),
            dead_letters: store.dead_letter_count()?,
            peers,
            health,
            expiries: ctx
                .expiries
                .iter()
                .map(|(name, at)| w::Expiry {
                    name: name.clone(),
                    not_after: at.map(ts),
                })
                .collect(),
            signing_key_id: ctx.identity.current().key_id().to_owned(),
            key_encryption_key_created_at: Some(ts(store.keys().epochs().1)),
        })
    }

    async fn list_peers(
        &self,
        request: Request<w::ListPeersRequest>,
    ) -> ApiResult<w::ListPeersResponse> {
        Self::operator(&request)?;
        let req = request.get_ref();
        let page = convert::page(req.page_size, &req.page_token)?;
        let (peers, next_page_token) = page.take(self.ctx.directory.all(), |p| p.id.to_string());
        Ok(w::ListPeersResponse {
            peers: peers.into_iter().map(peer_to_wire).collect(),
            next_page_token,
        })
    }

    async fn upsert_peer(&self, request: Request<w::UpsertPeerRequest>) -> ApiResult<w::Peer> {
        let actor = Self::operator(&request)?;
        let wire = request
            .into_inner()
            .peer
            .ok_or_else(|| field_error("peer", "is required"))?;
        let peer = peer_from_wire(&wire, self.ctx.id, |id| {
            self.ctx
                .directory
                .get(id)
                .map(|p| p.keys)
                .unwrap_or_default()
        })?;
        let id = peer.id;
        let stored = stored_from_peer(&peer).map_err(|e| ApiError::Store(e.to_string()))?;
        self.ctx
            .commit(move |tx| Ok(record_change(tx, &actor, id, Some(stored.clone()))?))
            .await?;
        if let Err(e) = self.ctx.directory.upsert(peer.clone()) {
            // Checked above; the change is stored and applies at the next start.
            error!(peer = %id, error = %e, "peer change stored but not applied");
            return Err(ApiError::Store(e.to_string()));
        }
        self.ctx.delivery.ensure_worker(id);
        self.ctx.delivery.wake(id);
        info!(peer = %id, "peer added or changed");
        Ok(peer_to_wire(peer))
    }

    async fn remove_peer(
        &self,
        request: Request<w::RemovePeerRequest>,
    ) -> ApiResult<w::RemovePeerResponse> {
        let actor = Self::operator(&request)?;
        let idem = Idempotent::of(&request)?;
        let id = convert::country("node_id", &request.get_ref().node_id)?;
        if self.ctx.done_before(&idem).await?.is_some() {
            return Ok(w::RemovePeerResponse {});
        }
        if self.ctx.directory.get(id).is_none() {
            return Err(ApiError::NotFound("peer"));
        }
        self.ctx
            .commit(move |tx| Ok(record_change(tx, &actor, id, None)?))
            .await?;
        self.ctx.directory.remove(id);
        info!(peer = %id, "peer removed: no traffic either way");
        self.ctx.remember(idem, id.to_string()).await?;
        Ok(w::RemovePeerResponse {})
    }

    async fn list_outbox(
        &self,
        request: Request<w::ListOutboxRequest>,
    ) -> ApiResult<w::ListOutboxResponse> {
        Self::operator(&request)?;
        let req = request.get_ref();
        let page = convert::page(req.page_size, &req.page_token)?;
        let peer = if req.peer.is_empty() {
            None
        } else {
            Some(convert::country("peer", &req.peer)?)
        };
        let store = &self.ctx.store;
        let mut items: Vec<(OutboxItem, bool)> = store
            .dead_letters(None, usize::MAX)?
            .into_iter()
            .map(|i| (i, true))
            .collect();
        if !req.dead_letters_only {
            items.extend(
                store
                    .outbox_items(None, usize::MAX)?
                    .into_iter()
                    .map(|i| (i, false)),
            );
        }
        items.retain(|(i, _)| peer.is_none_or(|p| i.peer == p));
        items.sort_by_key(|(i, _)| i.message_id);
        let (items, next_page_token) = page.take(items, |(i, _)| i.message_id.to_string());
        Ok(w::ListOutboxResponse {
            entries: items
                .into_iter()
                .map(|(i, dead)| outbox_entry_to_wire(i, dead))
                .collect(),
            next_page_token,
        })
    }

    async fn retry_delivery(
        &self,
        request: Request<w::RetryDeliveryRequest>,
    ) -> ApiResult<w::RetryDeliveryResponse> {
        let actor = Self::operator(&request)?;
        let idem = Idempotent::of(&request)?;
        let message_id = MessageId::parse("message_id", &request.get_ref().message_id)?;
        if self.ctx.done_before(&idem).await?.is_some() {
            return Ok(w::RetryDeliveryResponse {});
        }
        match self.ctx.delivery.retry(message_id, &actor).await {
            Ok(_) => {
                self.ctx.remember(idem, message_id.to_string()).await?;
                Ok(w::RetryDeliveryResponse {})
            }
            Err(RetryError::NotFound) => Err(ApiError::NotFound("dead letter")),
            Err(RetryError::Erased) => Err(GuardError::new(
                Guard::Consent,
                "the envelope's subject was erased (consent withdrawn or case erased); nothing may be sent",
            )
            .into()),
            Err(RetryError::Store(detail)) => Err(ApiError::Store(detail)),
        }
    }

    async fn verify_audit(
        &self,
        request: Request<w::VerifyAuditRequest>,
    ) -> ApiResult<w::VerifyAuditResponse> {
        Self::operator(&request)?;
        self.verified_audit().await
    }

    async fn export_audit(
        &self,
        request: Request<w::ExportAuditRequest>,
    ) -> ApiResult<w::ExportAuditResponse> {
        Self::operator(&request)?;
        let req = request.get_ref();
        let (size, after) = audit_page(req.page_size, &req.page_token)?;
        let store = &self.ctx.store;
        store.durable().await?;
        let report = store.verify_audit()?;
        let entries = store.audit_entries(after, size + 1)?;
        let more = entries.len() > size;
        let entries: Vec<w::AuditEntry> = entries
            .into_iter()
            .take(size)
            .map(audit_entry_to_wire)
            .collect();
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        let head = match report.signed {
            Some(s) => Some(w::SignedAuditHead {
                public_key: self
                    .own_key(&s.key_id)?
                    .map(|k| k.as_bytes().to_vec())
                    .unwrap_or_default(),
                seq: s.seq,
                hash: s.hash,
                key_id: s.key_id,
                signature_hex: s.signature,
            }),
            None => None,
        };
        Ok(w::ExportAuditResponse {
            entries,
            head,
            next_page_token,
        })
    }

    /// Rotates the node's signing key: the new key is announced to every peer, signed by
    /// the old one, which stays listed for the overlap; a retried request gets the first
    /// rotation's key.
    async fn rotate_signing_key(
        &self,
        request: Request<w::RotateSigningKeyRequest>,
    ) -> ApiResult<w::RotateSigningKeyResponse> {
        let actor = Self::operator(&request)?;
        let idem = Idempotent::of(&request)?;
        let _one_at_a_time = self.rotation.lock().await;
        if let Some(key_id) = self.ctx.done_before(&idem).await? {
            return Ok(w::RotateSigningKeyResponse { key_id });
        }
        let overlap_days = self.overlap_days(request.get_ref().overlap_days)?;
        let ctx = &self.ctx;
        let old = ctx.identity.current();
        let new = SigningIdentity::generate();
        // The rotation instant is a whole second: key windows are kept and announced in
        // seconds, and the announcement (dated at it) must not predate the new key.
        let now = OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        // The new key is staged beside the old one and takes its place only once its
        // announcement is durable: a crash in between is finished (or undone) at start-up,
        // so the node never signs with a key its peers were not told about.
        let staged = keys::staged_path(&ctx.signing_key_path);
        new.save(&staged)
            .map_err(|e| ApiError::Store(e.to_string()))?;
        // From now on the old key dates what it signs no later than `now`, the instant its
        // validity ends at the peers.
        ctx.identity.replace(old.retiring_at(now));
        let rotation = Rotation {
            actor,
            idem,
            old: old.clone(),
            new_id: new.key_id().to_owned(),
            announced: keys::own_key(&new, Some(now)),
            now,
            overlap_days,
        };
        if let Err(e) = self.commit_rotation(rotation).await {
            ctx.identity.replace((*old).clone());
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        Ok(w::RotateSigningKeyResponse {
            key_id: self.put_new_key_in_place(new),
        })
    }

    /// Returns the overlap a rotation keeps the old key listed for: as asked (at most
    /// [`MAX_OVERLAP_DAYS`]), and never shorter than the replay window.
    fn overlap_days(&self, requested: u32) -> ApiResult<u32> {
        if requested > MAX_OVERLAP_DAYS {
            return Err(field_error(
                "overlap_days",
                &format!("must be at most {MAX_OVERLAP_DAYS}"),
            ));
        }
        Ok(requested.max(self.ctx.replay_window_days))
    }

    /// Commits a rotation in one transaction: the node's keys (the old one valid until the
    /// rotation instant, listed for the overlap; the new one added), an announcement of the
    /// new key to every peer, signed by the old key and dated at its last instant, and the
    /// audit entry.
    async fn commit_rotation(&self, r: Rotation) -> ApiResult<()> {
        let ctx = &self.ctx;
        let listed_until = r.now + time::Duration::days(i64::from(r.overlap_days));
        let mut keys = keys::listed(&ctx.store, &r.old)?;
        for k in keys.iter_mut().filter(|k| k.key_id == r.old.key_id()) {
            k.valid_until = Some(r.now);
            k.listed_until = Some(listed_until);
        }
        keys.push(r.announced.clone());
        let peers = ctx.directory.ids();
        ctx.commit(move |tx| {
            if let Some(i) = &r.idem {
                i.remember(tx, r.new_id.clone())?;
            }
            tx.put_own_keys(&keys)?;
            for peer in &peers {
                // Signed by the old key, which the peer trusts, dated at its last instant.
                let payload = Payload::KeyAnnouncement(w::KeyAnnouncement {
                    key: Some(keys::to_wire(&r.announced)),
                });
                outbox::enqueue_at(tx, &r.old, *peer, Topic::NodeKeys, "", payload, r.now)?;
            }
            tx.audit(
                AuditRecord::new(r.actor.clone(), "keys.rotate", r.new_id.clone(), "ok").detail(
                    format!(
                        "previous={} overlap_days={} announced_to={}",
                        r.old.key_id(),
                        r.overlap_days,
                        peers.len()
                    ),
                ),
            )?;
            Ok(())
        })
        .await
    }

    /// Once a rotation is committed, moves the staged key into place, rewrites the public
    /// key file and signs with the new key from now on; returns its id.
    fn put_new_key_in_place(&self, new: SigningIdentity) -> String {
        let ctx = &self.ctx;
        if let Err(e) = keys::recover_rotation(&ctx.store, &ctx.signing_key_path) {
            // The rotation is committed; the staged key takes its place at the next start.
            error!(error = %e, "cannot move the new signing key into place yet");
        }
        let key_id = new.key_id().to_owned();
        if let Err(e) = keys::publish_public(&ctx.signing_key_path, &new) {
            // Rewritten at the next start; `trmctl keys show` prints the key meanwhile.
            error!(error = %e, "cannot rewrite the public signing key file");
        }
        ctx.identity.replace(new);
        info!(key_id = %key_id, "signing key rotated");
        key_id
    }

    async fn export_statistics(
        &self,
        request: Request<w::ExportStatisticsRequest>,
    ) -> ApiResult<w::ExportStatisticsResponse> {
        let actor = Self::operator(&request)?;
        let req = request.get_ref();
        let start = parse_date("period_start", &req.period_start)?;
        let end = parse_date("period_end", &req.period_end)?;
        let period = Period::closed(start, end, crate::ctx::today())?;
        crate::statistics::export(&self.ctx, period, &actor).await
    }

    async fn backup(&self, request: Request<w::BackupRequest>) -> ApiResult<w::BackupResponse> {
        let actor = Self::operator(&request)?;
        let path = std::path::PathBuf::from(&request.get_ref().path);
        if !path.is_absolute() {
            return Err(field_error(
                "path",
                "must be an absolute path on the node's host",
            ));
        }
        let ctx = &self.ctx;
        let manifest = ctx
            .store
            .backup(&path, ctx.backup_retention)
            .await
            .map_err(|e| match e {
                trm_store::StoreError::Io(io) if io.kind() == std::io::ErrorKind::AlreadyExists => {
                    field_error("path", "must not exist or be empty")
                }
                e => ApiError::from(e),
            })?;
        let detail = format!(
            "records={} bytes={} created_at={} backup_key={} expires_at={}",
            manifest.records,
            manifest.bytes(),
            manifest.created_at,
            manifest.backup_key,
            manifest
                .expires_at
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
        let entry = AuditRecord::new(actor, "node.backup", "store", "ok").detail(detail);
        audit_alone(ctx, entry).await?;
        info!(
            records = manifest.records,
            bytes = manifest.bytes(),
            "backup written"
        );
        Ok(w::BackupResponse {
            path: path.display().to_string(),
            bytes: manifest.bytes(),
        })
    }

    async fn revoke_client_certificate(
        &self,
        request: Request<w::RevokeClientCertificateRequest>,
    ) -> ApiResult<w::RevokedClientCertificate> {
        let actor = Self::operator(&request)?;
        let serial_hex = serial(&request.get_ref().serial_hex)?;
        let issuers = issuers(&request.get_ref().issuer, &self.ctx.client_issuers)?;
        let now = OffsetDateTime::now_utc();
        let serial_for = serial_hex.clone();
        let revoked = self
            .ctx
            .commit(move |tx| {
                let serial_hex = serial_for.clone();
                let mut all = tx.revoked_clients()?;
                let mut these = Vec::new();
                for issuer in &issuers {
                    let r = Revoked {
                        issuer: issuer.clone(),
                        serial_hex: serial_hex.clone(),
                        revoked_at: now,
                    };
                    match all.iter().find(|x| x.same_certificate(&r)) {
                        Some(before) => these.push(before.clone()),
                        None => {
                            all.push(r.clone());
                            these.push(r);
                        }
                    }
                }
                if these.iter().any(|r| r.revoked_at == now) {
                    tx.put_revoked_clients(&all)?;
                    tx.changed_shared_state()?;
                    tx.audit(
                        AuditRecord::new(actor.clone(), "client.revoke", &serial_hex, "revoked")
                            .detail(format!("issuers={}", issuers.join(","))),
                    )?;
                }
                Ok(these)
            })
            .await?;
        for r in &revoked {
            self.ctx.revocations.add(r);
        }
        info!(serial = %serial_hex, "client certificate revoked");
        let first = revoked
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Store("the node has no client CA to revoke under".into()))?;
        Ok(revoked_to_wire(first))
    }

    async fn list_signing_keys(
        &self,
        request: Request<w::ListSigningKeysRequest>,
    ) -> ApiResult<w::ListSigningKeysResponse> {
        Self::operator(&request)?;
        let current = self.ctx.identity.current();
        let mut keys = keys::listed(&self.ctx.store, &current)?;
        keys.sort_by_key(|k| k.valid_from);
        Ok(w::ListSigningKeysResponse {
            keys: keys.iter().map(keys::to_wire).collect(),
            current_key_id: current.key_id().to_owned(),
            current_public_key_pem: trm_crypto::signing::public_to_pem(&current.public())
                .map_err(|e| ApiError::Store(e.to_string()))?,
        })
    }

    async fn list_revoked_client_certificates(
        &self,
        request: Request<w::ListRevokedClientCertificatesRequest>,
    ) -> ApiResult<w::ListRevokedClientCertificatesResponse> {
        Self::operator(&request)?;
        let req = request.get_ref();
        let page = convert::page(req.page_size, &req.page_token)?;
        let (items, next_page_token) = page.take(self.ctx.revocations.list(), |r| {
            format!("{}/{}", r.serial_hex, r.issuer)
        });
        Ok(w::ListRevokedClientCertificatesResponse {
            certificates: items.into_iter().map(revoked_to_wire).collect(),
            next_page_token,
        })
    }
}

/// Writes the audit entry of an operator's act that changed nothing else, in a transaction
/// of its own.
pub(crate) async fn audit_alone(ctx: &Ctx, entry: AuditRecord) -> ApiResult<()> {
    ctx.commit(move |tx| {
        tx.audit(entry.clone())?;
        Ok(())
    })
    .await
}
