//! Operator commands over a node's admin port: status and audit verification.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tonic::transport::Channel;
use trm_node::NodeConfig;
use trm_proto::v1::{self as w, admin_service_client::AdminServiceClient};

/// Opens the admin port of the node configured in `config` with an operator certificate
/// (`client` PEM prefix; default: the sandbox's `clients/operator`) trusting `ca` (default:
/// the sandbox's `services-ca.pem` beside the config).
pub async fn connect(
    config: &Path,
    client: Option<&Path>,
    ca: Option<&Path>,
) -> Result<AdminServiceClient<Channel>> {
    let cfg = NodeConfig::load(config)?;
    let dir = config.parent().unwrap_or(Path::new("."));
    let client: PathBuf = client.map_or_else(|| dir.join("clients/operator"), Path::to_path_buf);
    let ca: PathBuf = ca.map_or_else(|| dir.join("services-ca.pem"), Path::to_path_buf);
    let cert = PathBuf::from(format!("{}.pem", client.display()));
    let key = PathBuf::from(format!("{}.key", client.display()));
    let channel = crate::connect::channel(&cfg.listen.admin.to_string(), &ca, &cert, &key)
        .await
        .context("opening the admin port")?;
    Ok(AdminServiceClient::new(channel))
}

/// Verifies the node's audit chain; returns the report.
pub async fn verify_audit(
    admin: &mut AdminServiceClient<Channel>,
) -> Result<w::VerifyAuditResponse> {
    Ok(admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner())
}

/// Returns the node's status.
pub async fn status(admin: &mut AdminServiceClient<Channel>) -> Result<w::StatusResponse> {
    Ok(admin.status(w::StatusRequest {}).await?.into_inner())
}
