//! `trmctl client issue`: a local client certificate signed by a node's client CA.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use trm_core::ids::{OrgId, Role};
use trm_crypto::{files, pki::Authority};
use trm_node::NodeConfig;

/// Issues a client certificate for `role` and `org`, valid for `days` days, from the client
/// CA of the node configured in `config`; writes `PREFIX.pem` and `PREFIX.key` (mode 0600).
pub fn issue(
    config: &Path,
    role: Role,
    org: &OrgId,
    out: &Path,
    days: u32,
) -> Result<(PathBuf, PathBuf)> {
    if days == 0 || days > 3650 {
        bail!("--days must be between 1 and 3650");
    }
    let cfg = NodeConfig::load(config)?;
    let Some(ca_key) = cfg.tls.client_ca_key.as_ref() else {
        bail!(
            "tls.client_ca_key is not set in {}: this host cannot issue client certificates",
            config.display()
        );
    };
    let ca = Authority::load(
        &files::read_text(&cfg.tls.client_ca)?,
        &files::read_text(ca_key)?,
    )
    .context("loading the client CA")?;
    let issued = ca.issue_client_for(role, org, days)?;
    let cert = with_ext(out, "pem");
    let key = with_ext(out, "key");
    files::write_public(&cert, issued.cert_pem.as_bytes())?;
    files::write_secret(&key, issued.key_pem.as_bytes())?;
    Ok((cert, key))
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}
