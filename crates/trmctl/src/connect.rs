//! gRPC channels to a node's services and admin ports, authenticated with a client
//! certificate: what any client of a node does.

use std::path::Path;

use anyhow::{Context, Result};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use trm_crypto::files;

/// Opens a channel to `addr` (`host:port`), trusting `ca_pem` for the server and presenting
/// the client certificate `cert`/`key` (PEM files).
pub async fn channel(addr: &str, ca_pem: &Path, cert: &Path, key: &Path) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files::read(ca_pem)?))
        .identity(Identity::from_pem(files::read(cert)?, files::read(key)?))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(channel)
}
