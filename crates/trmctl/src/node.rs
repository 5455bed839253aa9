//! `trmctl node init`: a production node's folder: its configuration (every key written out
//! with its default and what it does), its keys, and either self-signed certificates (a CA
//! of its own per port) or certificate signing requests for the country's own PKI.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use trm_core::ids::{NodeId, OrgId, Role};
use trm_crypto::{aead::SecretKey, files, pki, signing::SigningIdentity};

/// How the node's TLS certificates come about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certificates {
    /// A CA of the node's own issues them now (its federation CA is what peers trust).
    SelfSigned,
    /// Keys and signing requests are written; the country's PKI issues the certificates.
    Requests,
}

/// What `node init` is asked for.
#[derive(Debug, Clone)]
pub struct NodeInit {
    pub dir: PathBuf,
    pub id: NodeId,
    pub name: String,
    /// Host names or addresses the certificates are valid for.
    pub hosts: Vec<String>,
    pub federation_listen: String,
    pub certificates: Certificates,
}

/// Writes a node's folder; refuses to touch one that holds a configuration. Returns what
/// was written and what the operator must do next.
pub fn init(n: &NodeInit) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let d = &n.dir;
    if d.join("node.toml").exists() {
        bail!(
            "{} already holds a node (node.toml): nothing was changed",
            d.display()
        );
    }
    if n.hosts.is_empty() {
        bail!("name at least one host the node is reached at (--host)");
    }
    for sub in ["keys", "tls", "clients", "peers", "data", "backups"] {
        std::fs::create_dir_all(d.join(sub))
            .with_context(|| format!("creating {}", d.join(sub).display()))?;
    }
    let mut written = Vec::new();
    let mut public = |path: PathBuf, text: &str| -> Result<()> {
        files::write_public(&path, text.as_bytes())?;
        written.push(path);
        Ok(())
    };
    let signing = SigningIdentity::generate();
    signing.save(&d.join("keys/signing.pem"))?;
    public(
        d.join("keys/signing.pub.pem"),
        &trm_crypto::signing::public_to_pem(&signing.public())?,
    )?;
    SecretKey::generate().save(&d.join("keys/master.key"))?;
    let mut next = vec![
        format!(
            "give your peers tls/federation-ca.pem and keys/signing.pub.pem (key id {})",
            signing.key_id()
        ),
        "back up keys/master.key apart from data/ and from any backup".to_owned(),
    ];
    // The client CA is always the node's own: it certifies the node's local users.
    let client_ca = pki::Authority::generate(&format!("TRM {} client CA", n.id))?;
    public(d.join("tls/client-ca.pem"), client_ca.cert_pem())?;
    files::write_secret(&d.join("tls/client-ca.key"), client_ca.key_pem().as_bytes())?;
    let operator = client_ca.issue_client(Role::Operator, &"operators".parse::<OrgId>()?)?;
    public(d.join("clients/operator.pem"), &operator.cert_pem)?;
    files::write_secret(&d.join("clients/operator.key"), operator.key_pem.as_bytes())?;
    match n.certificates {
        Certificates::SelfSigned => {
            let fed_ca = pki::Authority::generate(&format!("TRM {} federation CA", n.id))?;
            let cert = fed_ca.issue_node(n.id, &n.hosts)?;
            public(d.join("tls/federation.pem"), &cert.cert_pem)?;
            files::write_secret(&d.join("tls/federation.key"), cert.key_pem.as_bytes())?;
            public(d.join("tls/federation-ca.pem"), fed_ca.cert_pem())?;
            let services_ca = pki::Authority::generate(&format!("TRM {} services CA", n.id))?;
            let server =
                services_ca.issue_server(&format!("trm node {} services", n.id), &n.hosts)?;
            public(d.join("tls/services.pem"), &server.cert_pem)?;
            files::write_secret(&d.join("tls/services.key"), server.key_pem.as_bytes())?;
            public(d.join("services-ca.pem"), services_ca.cert_pem())?;
            next.push(
                "give local clients services-ca.pem; issue their certificates with `trmctl client issue`"
                    .to_owned(),
            );
        }
        Certificates::Requests => {
            let fed = pki::request_node(n.id, &n.hosts)?;
            public(d.join("tls/federation.csr"), &fed.csr_pem)?;
            files::write_secret(&d.join("tls/federation.key"), fed.key_pem.as_bytes())?;
            let services = pki::request_server(&format!("trm node {} services", n.id), &n.hosts)?;
            public(d.join("tls/services.csr"), &services.csr_pem)?;
            files::write_secret(&d.join("tls/services.key"), services.key_pem.as_bytes())?;
            next.push(format!(
                "have tls/federation.csr signed (it carries trm://node/{}) and save the \
                 certificate as tls/federation.pem and its CA as tls/federation-ca.pem",
                n.id
            ));
            next.push(
                "have tls/services.csr signed and save it as tls/services.pem; give local \
                 clients its CA as services-ca.pem"
                    .to_owned(),
            );
        }
    }
    let config = template(n);
    public(d.join("node.toml"), &config)?;
    next.push(format!(
        "add peers (`trmctl peer add` once running, or [[peers]] in node.toml), then run \
         `trm-node --config {}`",
        d.join("node.toml").display()
    ));
    Ok((written, next))
}

fn template(n: &NodeInit) -> String {
    format!(
        r#"# Node {id}: written by `trmctl node init`. Every key is shown with its default.
# Relative paths are resolved against this file's folder.

[node]
id = "{id}"                                 # ISO 3166-1 alpha-2 code of the country
name = "{name}"
data_dir = "data"                           # the store; everything personal sealed
master_key = "keys/master.key"              # 32 bytes, mode 0600; back it up apart
key_store = "keys/data-keys.store"          # the KEKs (outside data_dir); the erasure
                                            # journal and audit anchor live beside it

[listen]
services = "127.0.0.1:7400"                 # local users (client mTLS)
federation = "{federation}"                 # peer nodes (node mTLS)
admin = "127.0.0.1:7402"                    # operators (operator mTLS); keep on loopback
metrics = "127.0.0.1:7403"                  # plain HTTP /metrics /healthz /readyz

[tls]
federation_cert = "tls/federation.pem"      # carries trm://node/{id}
federation_key = "tls/federation.key"
federation_ca = "tls/federation-ca.pem"     # this node's own CA, given to its peers
services_cert = "tls/services.pem"
services_key = "tls/services.key"
client_ca = "tls/client-ca.pem"
client_ca_key = "tls/client-ca.key"         # only where `trmctl client issue` runs

[signing]
key = "keys/signing.pem"                    # ed25519, PKCS#8 PEM, mode 0600

[policy]
reflection_period_days = 30                 # never below 30
replay_window_days = 7                      # 1..90

[log]
format = "text"                             # or "json": one object a line
level = "info"                              # RUST_LOG, when set, overrides it

[statistics]
min_cell_count = 11                         # CTDC's threshold; never below 5

[delivery]
backoff_cap_secs = 600                      # longest wait between attempts to one peer
request_timeout_secs = 10                   # one delivery attempt
batch_envelopes = 64                        # 1..512 per batch
batches_in_flight = 4                       # 1..8, applied in order by the peer

[storage]
engine = "sled"                             # embedded; or "postgres" with url or url_file
kek_rotation_hours = 24                     # old copies stop opening erased records within
# min_free_mib = 64                         # sled: refuse writes below this free space;
                                            # default: the lesser of 64 MiB, 1/16 of disk

[limits]
max_connections = 1024                      # per port, TLS handshakes included
max_connections_per_client = 64             # per client certificate or peer, per port
handshake_timeout_secs = 10
max_concurrent_streams = 64                 # HTTP/2 streams per connection
keepalive_interval_secs = 30
keepalive_timeout_secs = 10
client_requests_per_second = 200            # per client certificate (services, admin)
client_burst = 400
peer_requests_per_second = 500              # per peer node (federation)
peer_burst = 1000

# A peer: its federation endpoint, the CA its certificate chains to, its signing keys.
# [[peers]]
# id = "RO"
# endpoint = "trm.ro.example:7401"
# tls_ca = "peers/RO-ca.pem"
# signing_keys = ["peers/RO-signing.pub.pem"]
# tls_pin_sha256 = ""                       # optional: pin the peer's exact certificate
"#,
        id = n.id,
        name = n.name.replace('"', "'"),
        federation = n.federation_listen,
    )
}

/// Returns whether `dir` holds what a node needs to start.
pub fn ready(dir: &Path) -> Result<trm_node::NodeConfig> {
    Ok(trm_node::NodeConfig::load(&dir.join("node.toml"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_node_folder_is_a_valid_config_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let n = NodeInit {
            dir: dir.path().join("at"),
            id: "AT".parse().unwrap(),
            name: "Austria national focal point".into(),
            hosts: vec!["trm.at.example".into(), "127.0.0.1".into()],
            federation_listen: "0.0.0.0:7401".into(),
            certificates: Certificates::SelfSigned,
        };
        let (written, next) = init(&n).unwrap();
        assert!(written.iter().any(|p| p.ends_with("node.toml")));
        assert!(next.iter().any(|s| s.contains("master.key")));
        let cfg = ready(&n.dir).unwrap();
        assert_eq!(cfg.node.id.as_str(), "AT");
        let cert = files::read_text(&n.dir.join("tls/federation.pem")).unwrap();
        let der = pki::first_der(&cert).unwrap();
        assert_eq!(pki::node_of(&der), Some(n.id));
        assert!(init(&n).is_err(), "an existing node is left alone");

        let csr = NodeInit {
            dir: dir.path().join("ro"),
            id: "RO".parse().unwrap(),
            certificates: Certificates::Requests,
            ..n
        };
        let (_, next) = init(&csr).unwrap();
        let request = files::read_text(&csr.dir.join("tls/federation.csr")).unwrap();
        assert!(request.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(next.iter().any(|s| s.contains("trm://node/RO")));
        let err = ready(&csr.dir).unwrap_err().to_string();
        assert!(err.contains("tls.federation_cert"), "{err}");
    }
}
