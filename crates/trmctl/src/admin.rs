//! Operator commands over a node's admin port: status, audit verification and export,
//! client-certificate revocation, backups; and the restore of a stopped node.

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
        .with_context(|| {
            format!(
                "cannot reach the node's admin port {} ([listen] admin of {}): is the node running?",
                cfg.listen.admin,
                config.display()
            )
        })?;
    Ok(AdminServiceClient::new(channel))
}

/// Returns the node's own signing keys as it publishes them.
pub async fn signing_keys(
    admin: &mut AdminServiceClient<Channel>,
) -> Result<w::ListSigningKeysResponse> {
    Ok(admin
        .list_signing_keys(w::ListSigningKeysRequest {})
        .await?
        .into_inner())
}

/// Returns every key the running node trusts for statistics and other signed documents:
/// its own published keys and each peer's keys as its directory holds them (the directory
/// is the node's one list of peers), with the node each belongs to.
pub async fn directory_keys(
    admin: &mut AdminServiceClient<Channel>,
) -> Result<Vec<(String, trm_crypto::signing::PublicKey)>> {
    let own = signing_keys(admin).await?;
    let node = status_node_id(admin).await?;
    let mut keys = Vec::new();
    for k in &own.keys {
        keys.push((
            node.clone(),
            trm_crypto::signing::public_from_bytes(&k.public_key)?,
        ));
    }
    for p in peers(admin).await? {
        for k in &p.signing_keys {
            keys.push((
                p.node_id.clone(),
                trm_crypto::signing::public_from_bytes(&k.public_key)?,
            ));
        }
    }
    Ok(keys)
}

async fn status_node_id(admin: &mut AdminServiceClient<Channel>) -> Result<String> {
    // ListPeers does not name the node itself; its outbox listing needs no probe either,
    // but Status is the one answer that carries the id.
    Ok(status(admin).await?.node_id)
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

/// Returns the serial (lower-case hex, no leading zeros) of the certificate in a PEM file.
pub fn serial_of_pem(path: &Path) -> Result<String> {
    let pem = trm_crypto::files::read_text(path)?;
    let der = trm_crypto::pki::first_der(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    trm_crypto::pki::serial_hex(&der)
        .with_context(|| format!("{} does not parse as a certificate", path.display()))
}

/// Returns who issued the certificate in the PEM file at `path` (its issuer id).
pub fn issuer_of_pem(path: &Path) -> Result<String> {
    let pem = trm_crypto::files::read_text(path)?;
    let der = trm_crypto::pki::first_der(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    trm_crypto::pki::issuer_id(&der)
        .with_context(|| format!("{} does not parse as a certificate", path.display()))
}

/// Revokes the client certificate with `serial_hex` issued by `issuer` (empty: the node's
/// own client CA).
pub async fn revoke(
    admin: &mut AdminServiceClient<Channel>,
    serial_hex: &str,
    issuer: &str,
) -> Result<w::RevokedClientCertificate> {
    Ok(admin
        .revoke_client_certificate(w::RevokeClientCertificateRequest {
            serial_hex: serial_hex.to_owned(),
            issuer: issuer.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Returns every revoked client certificate, page by page.
pub async fn revoked(
    admin: &mut AdminServiceClient<Channel>,
) -> Result<Vec<w::RevokedClientCertificate>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_revoked_client_certificates(w::ListRevokedClientCertificatesRequest {
                page_size: 100,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        out.extend(page.certificates);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Writes the node's audit chain to `out` as JSON lines (one entry a line, then one line
/// with the signed head), after checking that the chain links up and matches the head's
/// signature. Returns the number of entries written.
pub async fn export_audit(
    admin: &mut AdminServiceClient<Channel>,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    let mut page_token = String::new();
    let mut count = 0u64;
    let mut prev = String::new();
    let mut hashes = Vec::new();
    let head = loop {
        let page = admin
            .export_audit(w::ExportAuditRequest {
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for e in &page.entries {
            if e.prev != prev {
                anyhow::bail!("the exported chain does not link up at entry {}", e.seq);
            }
            if !hash_matches(e) {
                anyhow::bail!(
                    "entry {} of the exported chain does not match its contents (its hash)",
                    e.seq
                );
            }
            prev = e.hash.clone();
            hashes.push(e.hash.clone());
            let line = serde_json::json!({
                "seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action,
                "subject": e.subject, "outcome": e.outcome, "detail": e.detail,
                "prev": e.prev, "hash": e.hash,
            });
            writeln!(out, "{line}")?;
            count += 1;
        }
        if page.next_page_token.is_empty() {
            break page.head;
        }
        page_token = page.next_page_token;
    };
    let Some(head) = head else {
        anyhow::bail!("the node has no signed audit head");
    };
    let public = trm_crypto::signing::public_from_bytes(&head.public_key)
        .context("the signed head names no usable public key")?;
    let signature = hex::decode(&head.signature_hex).context("the head's signature is not hex")?;
    trm_crypto::signing::verify(
        &public,
        trm_store_head_tag(),
        format!("{}:{}", head.seq, head.hash).as_bytes(),
        &signature,
    )
    .context("the head's signature does not verify")?;
    let at_head = usize::try_from(head.seq)
        .ok()
        .and_then(|s| s.checked_sub(1))
        .and_then(|i| hashes.get(i));
    if head.seq > 0 && at_head != Some(&head.hash) {
        anyhow::bail!("the signed head does not match the exported chain");
    }
    let line = serde_json::json!({
        "signed_head": { "seq": head.seq, "hash": head.hash, "key_id": head.key_id,
            "signature_hex": head.signature_hex, "public_key_hex": hex::encode(&head.public_key) }
    });
    writeln!(out, "{line}")?;
    Ok(count)
}

/// Whether an exported entry's hash is the hash of its contents, as the node chains them.
fn hash_matches(e: &w::AuditEntry) -> bool {
    let Ok(at) = time::OffsetDateTime::parse(&e.at, &time::format_description::well_known::Rfc3339)
    else {
        return false;
    };
    let record = trm_store::audit::AuditRecord::new(&e.actor, &e.action, &e.subject, &e.outcome)
        .detail(&e.detail);
    trm_store::audit::AuditEntry::chain(e.seq, at, record, e.prev.clone()).hash == e.hash
}

/// The tag of audit-head signatures (`trm/audit-head/v1`).
fn trm_store_head_tag() -> &'static [u8] {
    b"trm/audit-head/v1"
}

/// Asks the node to write a backup into `out` (a folder on the node's host: absolute, new or
/// empty).
pub async fn backup(
    admin: &mut AdminServiceClient<Channel>,
    out: &Path,
) -> Result<w::BackupResponse> {
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir()?.join(out)
    };
    Ok(admin
        .backup(w::BackupRequest {
            path: out.display().to_string(),
        })
        .await?
        .into_inner())
}

/// Restores the backup in `from` into the stopped node of `config` (with `force` over
/// existing data), with the node's own key file, then re-applies the node's journal
/// (erasures, revocations, peer changes, ended keys, published statistics). The audit
/// names the operating-system account that ran it.
pub fn restore(config: &Path, from: &Path, force: bool) -> Result<trm_store::backup::Restored> {
    let cfg = NodeConfig::load(config)?;
    let master = trm_crypto::aead::SecretKey::load(&cfg.node.master_key)
        .with_context(|| format!("reading the master key {}", cfg.node.master_key.display()))?;
    trm_store::backup::restore(
        trm_store::StoreOptions {
            node: cfg.node.id,
            data_dir: cfg.node.data_dir.clone(),
            key_store: cfg.node.key_store.clone(),
            master,
            engine: trm_node::config::engine_options(&cfg)?,
        },
        from,
        force,
        &format!(
            "os:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ),
    )
    .map_err(|e| anyhow::anyhow!("restore from {}: {e}", from.display()))
}

/// Returns every peer of the node's directory, page by page.
pub async fn peers(admin: &mut AdminServiceClient<Channel>) -> Result<Vec<w::Peer>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_peers(w::ListPeersRequest {
                page_size: 100,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        out.extend(page.peers);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// A change of a known peer: each field given replaces that one thing; keys are added
/// (`add_keys`) or removed by id (`remove_keys`), every other key kept with its window
/// (including the keys the peer announced itself).
#[derive(Debug, Clone, Default)]
pub struct PeerChange {
    pub node_id: String,
    pub endpoint: Option<String>,
    pub ca: Option<PathBuf>,
    pub add_keys: Vec<PathBuf>,
    pub remove_keys: Vec<String>,
    /// `Some("")` removes the pin.
    pub pin: Option<String>,
}

impl PeerChange {
    /// Returns whether the change changes anything.
    pub fn is_empty(&self) -> bool {
        self.endpoint.is_none()
            && self.ca.is_none()
            && self.add_keys.is_empty()
            && self.remove_keys.is_empty()
            && self.pin.is_none()
    }
}

/// Reads every ed25519 public key of a PEM file (one or several PUBLIC KEY blocks).
pub fn public_keys_of(path: &Path) -> Result<Vec<trm_crypto::signing::PublicKey>> {
    let text = trm_crypto::files::read_text(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    let mut keys = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN PUBLIC KEY-----") {
        let block_end = rest[start..]
            .find("-----END PUBLIC KEY-----")
            .map(|e| start + e + "-----END PUBLIC KEY-----".len())
            .with_context(|| {
                format!("{} has a PUBLIC KEY block without its end", path.display())
            })?;
        keys.push(
            trm_crypto::signing::public_from_pem(&rest[start..block_end]).with_context(|| {
                format!("{} holds a public key that is not ed25519", path.display())
            })?,
        );
        rest = &rest[block_end..];
    }
    if keys.is_empty() {
        anyhow::bail!(
            "{} holds no PUBLIC KEY (the peer's signing.pub.pem, or `trmctl keys show --pem` on its node)",
            path.display()
        );
    }
    Ok(keys)
}

/// Applies `change` to the peer as the node's directory holds it and sends the result:
/// a list-then-upsert of the windowed keys, so nothing not named changes.
pub async fn update_peer(
    admin: &mut AdminServiceClient<Channel>,
    change: &PeerChange,
) -> Result<w::Peer> {
    let Some(mut peer) = peers(admin)
        .await?
        .into_iter()
        .find(|p| p.node_id == change.node_id)
    else {
        anyhow::bail!(
            "{} is not a peer: use `trmctl peer add` to add it",
            change.node_id
        );
    };
    if let Some(e) = &change.endpoint {
        peer.endpoint = e.clone();
    }
    if let Some(ca) = &change.ca {
        peer.tls_ca_pem = trm_crypto::files::read_text(ca)
            .with_context(|| format!("reading the peer's CA {}", ca.display()))?;
    }
    if let Some(pin) = &change.pin {
        peer.tls_pin_sha256 = pin.clone();
    }
    for id in &change.remove_keys {
        let before = peer.signing_keys.len();
        peer.signing_keys.retain(|k| &k.key_id != id);
        if peer.signing_keys.len() == before {
            anyhow::bail!(
                "--remove-key {id}: {} holds no key with that id (see `trmctl peer list`)",
                change.node_id
            );
        }
    }
    for path in &change.add_keys {
        for public in public_keys_of(path)? {
            let key_id = trm_crypto::signing::key_id(&public);
            if !peer.signing_keys.iter().any(|k| k.key_id == key_id) {
                peer.signing_keys.push(w::SigningKey {
                    key_id,
                    public_key: public.as_bytes().to_vec(),
                    valid_from: None,
                    valid_until: None,
                });
            }
        }
    }
    if peer.signing_keys.is_empty() {
        anyhow::bail!("--remove-key: a peer keeps at least one signing key");
    }
    peer.signing_keys_pem.clear();
    Ok(admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(peer),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner())
}

/// What a peer is, as an operator gives it.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub node_id: String,
    /// `host:port` of its federation port.
    pub endpoint: String,
    /// PEM file of the CA its federation certificate chains to.
    pub ca: PathBuf,
    /// PEM files of its signing public keys.
    pub keys: Vec<PathBuf>,
    /// SHA-256 of its federation certificate (64 lower-case hex), to pin it.
    pub pin: Option<String>,
}

/// Adds a peer (`must_exist = false`: refused if known) or changes one (`true`: refused if
/// unknown).
pub async fn upsert_peer(
    admin: &mut AdminServiceClient<Channel>,
    spec: &PeerSpec,
    must_exist: bool,
) -> Result<w::Peer> {
    let known = peers(admin)
        .await?
        .iter()
        .any(|p| p.node_id == spec.node_id);
    match (known, must_exist) {
        (true, false) => anyhow::bail!(
            "{} is already a peer: use `trmctl peer update` to change it",
            spec.node_id
        ),
        (false, true) => anyhow::bail!(
            "{} is not a peer: use `trmctl peer add` to add it",
            spec.node_id
        ),
        _ => {}
    }
    let tls_ca_pem = trm_crypto::files::read_text(&spec.ca)
        .with_context(|| format!("reading the peer's CA {}", spec.ca.display()))?;
    let mut signing_keys_pem = Vec::new();
    for k in &spec.keys {
        for public in public_keys_of(k)? {
            signing_keys_pem.push(trm_crypto::signing::public_to_pem(&public)?);
        }
    }
    Ok(admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(w::Peer {
                node_id: spec.node_id.clone(),
                endpoint: spec.endpoint.clone(),
                tls_ca_pem,
                signing_keys_pem,
                tls_pin_sha256: spec.pin.clone().unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Removes a peer: nothing is sent to it or accepted from it from now on.
pub async fn remove_peer(admin: &mut AdminServiceClient<Channel>, node_id: &str) -> Result<()> {
    admin
        .remove_peer(w::RemovePeerRequest {
            node_id: node_id.to_owned(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Returns the queued envelopes (or only the dead letters), of one peer or all.
pub async fn outbox(
    admin: &mut AdminServiceClient<Channel>,
    peer: Option<&str>,
    dead_letters_only: bool,
) -> Result<Vec<w::OutboxEntry>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_outbox(w::ListOutboxRequest {
                peer: peer.unwrap_or_default().to_owned(),
                dead_letters_only,
                page_size: 100,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        out.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Queues a dead letter again.
pub async fn retry(admin: &mut AdminServiceClient<Channel>, message_id: &str) -> Result<()> {
    admin
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: message_id.to_owned(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Rotates the node's signing key; returns the new key id.
pub async fn rotate(admin: &mut AdminServiceClient<Channel>, overlap_days: u32) -> Result<String> {
    Ok(admin
        .rotate_signing_key(w::RotateSigningKeyRequest {
            overlap_days,
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner()
        .key_id)
}
