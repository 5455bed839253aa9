//! `AdminService`, for operators only: node status, peers, audit verification. Never
//! returns victim records.

use tonic::{Request, Response, Status};
use tracing::info;
use trm_core::FieldError;
use trm_core::{ids::Role, policy::POLICY_VERSION};
use trm_crypto::signing::SigningIdentity;
use trm_federation::{
    directory::{DirectoryChanges, StoredPeer},
    keys::{self, OwnKey},
    outbox::{self, OutboxItem, RetryError},
    Peer, PeerKey,
};
use trm_proto::v1::envelope_body::Payload;
use trm_proto::{
    convert::{self, ts},
    v1 as w,
    v1::admin_service_server::AdminService,
};
use trm_store::audit::AuditRecord;
use trm_store::TreeName;

use crate::{
    authz::{self, require},
    ctx::Ctx,
    error::ApiError,
    server::DIRECTORY_CHANGES,
};

/// The admin service of one node.
#[derive(Debug, Clone)]
pub struct Admin {
    ctx: Ctx,
}

impl Admin {
    /// Records a change of the peer directory durably (it is applied over the configured
    /// peers at every start), audited.
    async fn change_directory(&self, f: impl Fn(&mut DirectoryChanges)) -> Result<(), ApiError> {
        self.ctx
            .commit(|tx| {
                let mut changes: DirectoryChanges = tx
                    .get_json(TreeName::Meta, DIRECTORY_CHANGES)?
                    .unwrap_or_default();
                f(&mut changes);
                tx.put_json(TreeName::Meta, DIRECTORY_CHANGES, &changes)?;
                tx.audit(
                    AuditRecord::new("operator", "peers.change", "-", "ok").detail(format!(
                        "peers_changed={} removed={}",
                        changes.upserted.len(),
                        changes
                            .removed
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    )),
                )?;
                Ok(())
            })
            .await
    }

    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    fn operator<T>(request: &Request<T>) -> Result<(), Status> {
        let p = authz::principal(request)?;
        require(&p, &[Role::Operator], "use the admin service").map_err(Status::from)
    }
}

fn unavailable(rpc: &str, capability: &str) -> Status {
    Status::unimplemented(format!("{rpc}: {capability} is not available yet"))
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn status(
        &self,
        request: Request<w::StatusRequest>,
    ) -> Result<Response<w::StatusResponse>, Status> {
        Self::operator(&request)?;
        let store = &self.ctx.store;
        let peers = self
            .ctx
            .directory
            .ids()
            .into_iter()
            .map(|id| {
                let state = self.ctx.delivery.peer_state(id);
                w::PeerStatus {
                    node_id: id.to_string(),
                    reachable: state.reachable,
                    outbox_depth: store.count(TreeName::Outbox, id.as_str().as_bytes()) as u64,
                    last_delivery: state.last_delivery.map(ts),
                }
            })
            .collect();
        Ok(Response::new(w::StatusResponse {
            node_id: self.ctx.id.to_string(),
            policy_version: POLICY_VERSION.to_owned(),
            outbox_depth: store.count(TreeName::Outbox, b"") as u64,
            dead_letters: store.count(TreeName::DeadLetters, b"") as u64,
            peers,
        }))
    }

    async fn list_peers(
        &self,
        request: Request<w::ListPeersRequest>,
    ) -> Result<Response<w::ListPeersResponse>, Status> {
        Self::operator(&request)?;
        let peers = self
            .ctx
            .directory
            .all()
            .into_iter()
            .map(|p| w::Peer {
                node_id: p.id.to_string(),
                endpoint: p.endpoint,
                tls_ca_pem: p.tls_ca_pem,
                tls_pin_sha256: p.tls_pin.unwrap_or_default(),
                signing_keys_pem: p
                    .keys
                    .iter()
                    .filter_map(|k| trm_crypto::signing::public_to_pem(&k.public).ok())
                    .collect(),
            })
            .collect();
        Ok(Response::new(w::ListPeersResponse { peers }))
    }

    async fn upsert_peer(
        &self,
        request: Request<w::UpsertPeerRequest>,
    ) -> Result<Response<w::Peer>, Status> {
        Self::operator(&request)?;
        let wire = request
            .into_inner()
            .peer
            .ok_or_else(|| ApiError::from(FieldError::new("peer", "is required")))?;
        let id = convert::country("peer.node_id", &wire.node_id).map_err(ApiError::from)?;
        if id == self.ctx.id {
            return Err(ApiError::from(FieldError::new(
                "peer.node_id",
                "a node is not its own peer",
            ))
            .into());
        }
        let endpoint =
            convert::short("peer.endpoint", &wire.endpoint, true).map_err(ApiError::from)?;
        if !endpoint.contains(':') {
            return Err(
                ApiError::from(FieldError::new("peer.endpoint", "must be host:port")).into(),
            );
        }
        if trm_crypto::pki::first_der(&wire.tls_ca_pem).is_err() {
            return Err(ApiError::from(FieldError::new(
                "peer.tls_ca_pem",
                "must be a PEM certificate",
            ))
            .into());
        }
        if wire.signing_keys_pem.is_empty() {
            return Err(ApiError::from(FieldError::new(
                "peer.signing_keys_pem",
                "at least one key is required",
            ))
            .into());
        }
        let mut keys = Vec::new();
        for (i, pem) in wire.signing_keys_pem.iter().enumerate() {
            let public = trm_crypto::signing::public_from_pem(pem).map_err(|_| {
                ApiError::from(FieldError::new(
                    format!("peer.signing_keys_pem[{i}]"),
                    "must be an ed25519 public key PEM",
                ))
            })?;
            keys.push(PeerKey::new(public));
        }
        let tls_pin = match wire.tls_pin_sha256.as_str() {
            "" => None,
            pin if crate::config::valid_pin(pin) => Some(pin.to_owned()),
            _ => {
                return Err(ApiError::from(FieldError::new(
                    "peer.tls_pin_sha256",
                    "must be 64 lowercase hex characters",
                ))
                .into())
            }
        };
        let peer = Peer {
            id,
            endpoint,
            tls_ca_pem: wire.tls_ca_pem.clone(),
            tls_pin,
            keys,
        };
        let stored = StoredPeer::from_peer(&peer).map_err(|e| ApiError::Store(e.to_string()))?;
        self.change_directory(|changes| {
            changes.removed.retain(|r| *r != id);
            changes.upserted.retain(|p| p.id != id);
            changes.upserted.push(stored.clone());
        })
        .await?;
        self.ctx.directory.upsert(peer);
        self.ctx.delivery.ensure_worker(id);
        self.ctx.delivery.wake(id);
        info!(peer = %id, "peer added or changed");
        Ok(Response::new(w::Peer {
            node_id: id.to_string(),
            ..wire
        }))
    }

    async fn remove_peer(
        &self,
        request: Request<w::RemovePeerRequest>,
    ) -> Result<Response<w::RemovePeerResponse>, Status> {
        Self::operator(&request)?;
        let id = convert::country("node_id", &request.get_ref().node_id).map_err(ApiError::from)?;
        if self.ctx.directory.get(id).is_none() {
            return Err(ApiError::NotFound("peer").into());
        }
        self.change_directory(|changes| {
            changes.upserted.retain(|p| p.id != id);
            if !changes.removed.contains(&id) {
                changes.removed.push(id);
            }
        })
        .await?;
        self.ctx.directory.remove(id);
        info!(peer = %id, "peer removed: no traffic either way");
        Ok(Response::new(w::RemovePeerResponse {}))
    }

    async fn list_outbox(
        &self,
        request: Request<w::ListOutboxRequest>,
    ) -> Result<Response<w::ListOutboxResponse>, Status> {
        Self::operator(&request)?;
        let req = request.get_ref();
        let peer = if req.peer.is_empty() {
            None
        } else {
            Some(convert::country("peer", &req.peer).map_err(ApiError::from)?)
        };
        let store = &self.ctx.store;
        let mut items: Vec<(OutboxItem, bool)> = outbox::dead_letters(store)
            .map_err(ApiError::from)?
            .into_iter()
            .map(|i| (i, true))
            .collect();
        if !req.dead_letters_only {
            items.extend(
                outbox::queued(store)
                    .map_err(ApiError::from)?
                    .into_iter()
                    .map(|i| (i, false)),
            );
        }
        let entries = items
            .into_iter()
            .filter(|(i, _)| peer.is_none_or(|p| i.peer == p))
            .map(|(i, dead)| w::OutboxEntry {
                message_id: i.message_id,
                peer: i.peer.to_string(),
                kind: i.kind,
                attempts: i.attempts,
                created_at: time::OffsetDateTime::from_unix_timestamp(i.created_at)
                    .ok()
                    .map(convert::ts),
                next_attempt_at: None,
                dead_letter: dead,
                last_error: i.last_error,
            })
            .collect();
        Ok(Response::new(w::ListOutboxResponse { entries }))
    }

    async fn retry_delivery(
        &self,
        request: Request<w::RetryDeliveryRequest>,
    ) -> Result<Response<w::RetryDeliveryResponse>, Status> {
        Self::operator(&request)?;
        let message_id =
            convert::id("message_id", &request.get_ref().message_id).map_err(ApiError::from)?;
        match self.ctx.delivery.retry(&message_id.to_string()).await {
            Ok(_) => Ok(Response::new(w::RetryDeliveryResponse {})),
            Err(RetryError::NotFound) => Err(ApiError::NotFound("dead letter").into()),
            Err(RetryError::Erased) => Err(Status::failed_precondition(
                "state: the envelope's subject was erased; nothing to send",
            )),
            Err(RetryError::Store(detail)) => Err(ApiError::Store(detail).into()),
        }
    }

    async fn verify_audit(
        &self,
        request: Request<w::VerifyAuditRequest>,
    ) -> Result<Response<w::VerifyAuditResponse>, Status> {
        Self::operator(&request)?;
        let report = self.ctx.store.verify_audit().map_err(ApiError::from)?;
        Ok(Response::new(w::VerifyAuditResponse {
            ok: report.ok,
            entries_checked: report.entries_checked,
            first_bad_entry: report.first_bad_entry,
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<w::RotateSigningKeyRequest>,
    ) -> Result<Response<w::RotateSigningKeyResponse>, Status> {
        Self::operator(&request)?;
        let overlap_days = match request.get_ref().overlap_days {
            0 => self.ctx.replay_window_days,
            d => d.max(self.ctx.replay_window_days),
        };
        let ctx = &self.ctx;
        let old = ctx.identity.current();
        let new = SigningIdentity::generate();
        let now = time::OffsetDateTime::now_utc();
        // The new key replaces the file first: after a crash here the node restarts signing
        // with the new key, and the operator announces it again by rotating once more.
        let staged = ctx.signing_key_path.with_extension("rotating");
        new.save(&staged)
            .map_err(|e| ApiError::Store(e.to_string()))?;
        std::fs::rename(&staged, &ctx.signing_key_path)
            .map_err(|e| ApiError::Store(e.to_string()))?;
        let mut keys = keys::listed(&ctx.store, &old);
        for k in keys.iter_mut().filter(|k| k.key_id == old.key_id()) {
            k.valid_until = Some(now.unix_timestamp());
            k.listed_until =
                Some((now + time::Duration::days(i64::from(overlap_days))).unix_timestamp());
        }
        let announced = OwnKey::new(&new, Some(now));
        keys.push(announced.clone());
        let peers = ctx.directory.ids();
        ctx.commit(|tx| {
            tx.put_json(TreeName::Meta, keys::OWN_KEYS, &keys)?;
            for peer in &peers {
                // Signed by the old key, which the peer trusts, dated at its last instant.
                let payload = Payload::KeyAnnouncement(w::KeyAnnouncement {
                    key: Some(announced.to_wire()),
                });
                outbox::enqueue_at(tx, &old, ctx.id, *peer, "keys", "", payload, now)?;
            }
            tx.audit(
                AuditRecord::new("operator", "keys.rotate", new.key_id(), "ok").detail(format!(
                    "previous={} overlap_days={overlap_days} announced_to={}",
                    old.key_id(),
                    peers.len()
                )),
            )?;
            Ok(())
        })
        .await?;
        let key_id = new.key_id().to_owned();
        ctx.identity.replace(new);
        info!(key_id = %key_id, "signing key rotated");
        Ok(Response::new(w::RotateSigningKeyResponse { key_id }))
    }

    async fn export_statistics(
        &self,
        request: Request<w::ExportStatisticsRequest>,
    ) -> Result<Response<w::ExportStatisticsResponse>, Status> {
        Self::operator(&request)?;
        Err(unavailable("ExportStatistics", "aggregate statistics"))
    }

    async fn backup(
        &self,
        request: Request<w::BackupRequest>,
    ) -> Result<Response<w::BackupResponse>, Status> {
        Self::operator(&request)?;
        Err(unavailable("Backup", "online backup"))
    }
}
