//! `AdminService`, for operators only: node status, peers, audit verification. Never
//! returns victim records.

use tonic::{Request, Response, Status};
use trm_core::{ids::Role, policy::POLICY_VERSION};
use trm_proto::{convert::ts, v1 as w, v1::admin_service_server::AdminService};
use trm_store::TreeName;

use crate::{
    authz::{self, require},
    ctx::Ctx,
    error::ApiError,
};

/// The admin service of one node.
#[derive(Debug, Clone)]
pub struct Admin {
    ctx: Ctx,
}

impl Admin {
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
        Err(unavailable(
            "UpsertPeer",
            "changing the peer directory at run time",
        ))
    }

    async fn remove_peer(
        &self,
        request: Request<w::RemovePeerRequest>,
    ) -> Result<Response<w::RemovePeerResponse>, Status> {
        Self::operator(&request)?;
        Err(unavailable(
            "RemovePeer",
            "changing the peer directory at run time",
        ))
    }

    async fn list_outbox(
        &self,
        request: Request<w::ListOutboxRequest>,
    ) -> Result<Response<w::ListOutboxResponse>, Status> {
        Self::operator(&request)?;
        Err(unavailable("ListOutbox", "outbox inspection"))
    }

    async fn retry_delivery(
        &self,
        request: Request<w::RetryDeliveryRequest>,
    ) -> Result<Response<w::RetryDeliveryResponse>, Status> {
        Self::operator(&request)?;
        Err(unavailable("RetryDelivery", "dead-letter retry"))
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
        Err(unavailable("RotateSigningKey", "signing-key rotation"))
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
