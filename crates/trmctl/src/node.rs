//! `trmctl node init`: a production node's folder: its configuration (every key written out
//! with its default and what it does), its keys, and either self-signed certificates (a CA
//! of its own per port) or certificate signing requests for the country's own PKI.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

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
    /// The configuration's folder: node.toml, certificates, the master key (read-only to
    /// the running node).
    pub dir: PathBuf,
    /// Where the node writes: its store, its signing key (rewritten by rotations), its key
    /// store and backups. `None`: the same folder as `dir`.
    pub state_dir: Option<PathBuf>,
    pub id: NodeId,
    pub name: String,
    /// Host names or addresses the certificates are valid for.
    pub hosts: Vec<String>,
    pub services_listen: SocketAddr,
    pub federation_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub certificates: Certificates,
}

/// What `init` wrote and what the operator does next.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub written: Vec<PathBuf>,
    pub next: Vec<String>,
    /// The signing key's id and the file of its public half, for the peers.
    pub signing_key_id: String,
    pub signing_public_key: PathBuf,
    /// The node's federation CA (self-signed certificates only), for the peers.
    pub federation_ca: Option<PathBuf>,
    pub config: PathBuf,
}

/// Writes a node's folder; refuses to touch one that holds a configuration. Returns what
/// was written and what the operator must do next.
pub fn init(n: &NodeInit) -> Result<InitReport> {
    let d = &n.dir;
    let state = prepare_folders(n)?;
    let sd: &Path = state.as_deref().unwrap_or(d);
    let mut written = Written::default();
    let signing = SigningIdentity::generate();
    signing.save(&sd.join("keys/signing.pem"))?;
    let signing_public_key = sd.join("keys/signing.pub.pem");
    written.public(
        signing_public_key.clone(),
        &trm_crypto::signing::public_to_pem(&signing.public())?,
    )?;
    SecretKey::generate().save(&d.join("keys/master.key"))?;
    let mut next = vec![
        format!(
            "give your peers' operators tls/federation-ca.pem and {} (key id {}); after a key \
             rotation `trmctl keys show` prints the current key",
            signing_public_key.display(),
            signing.key_id()
        ),
        format!(
            "back up {} apart from the state folder and from any backup",
            d.join("keys/master.key").display()
        ),
    ];
    write_client_ca(n, &mut written)?;
    let federation_ca = match n.certificates {
        Certificates::SelfSigned => write_self_signed(n, &mut written, &mut next)?,
        Certificates::Requests => {
            write_requests(n, &mut written, &mut next)?;
            None
        }
    };
    let config = template(n, state.as_deref());
    written.public(d.join("node.toml"), &config)?;
    next.push(format!(
        "run `trm-node --config {}`, then add peers with `trmctl peer add` (the peer \
         directory is the node's; [[peers]] in node.toml only seeds it at a start)",
        d.join("node.toml").display()
    ));
    Ok(InitReport {
        written: written.0,
        next,
        signing_key_id: signing.key_id().to_owned(),
        signing_public_key,
        federation_ca,
        config: d.join("node.toml"),
    })
}

/// The files `init` wrote that others may read, in the order written.
#[derive(Debug, Default)]
struct Written(Vec<PathBuf>);

impl Written {
    /// Writes a file others may read (a certificate, a public key, the configuration) and
    /// notes it.
    fn public(&mut self, path: PathBuf, text: &str) -> Result<()> {
        files::write_public(&path, text.as_bytes())?;
        self.0.push(path);
        Ok(())
    }
}

/// Checks that neither the configuration's folder nor the state folder holds a node, and
/// creates their sub-folders (those of the state owner-only). Returns the state folder
/// when it is not the configuration's own: absolute, since it is written into node.toml
/// (relative paths are resolved against node.toml's folder).
fn prepare_folders(n: &NodeInit) -> Result<Option<PathBuf>> {
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
    let state = match &n.state_dir {
        None => None,
        Some(s) if s.is_absolute() => Some(s.clone()),
        Some(s) => Some(
            std::env::current_dir()
                .context("reading the current folder")?
                .join(s),
        ),
    };
    let sd: &Path = state.as_deref().unwrap_or(d);
    if sd.join("data").exists() || sd.join("keys/signing.pem").exists() {
        bail!(
            "{} already holds a node's state (data/ or keys/signing.pem): nothing was changed; \
             give another --state-dir",
            sd.display()
        );
    }
    for sub in ["keys", "tls", "clients", "peers"] {
        std::fs::create_dir_all(d.join(sub))
            .with_context(|| format!("creating {}", d.join(sub).display()))?;
    }
    for sub in ["keys", "data", "backups"] {
        create_private_dir(&sd.join(sub))?;
    }
    Ok(state)
}

/// Writes the node's client CA (always the node's own: it certifies the node's local
/// users) and an operator certificate it issued, recorded in the register of issued
/// certificates.
fn write_client_ca(n: &NodeInit, written: &mut Written) -> Result<()> {
    let d = &n.dir;
    let client_ca = pki::Authority::generate(&format!("TRM {} client CA", n.id))?;
    written.public(d.join("tls/client-ca.pem"), client_ca.cert_pem())?;
    files::write_secret(&d.join("tls/client-ca.key"), client_ca.key_pem().as_bytes())?;
    let operators = "operators".parse::<OrgId>()?;
    let operator = client_ca.issue_client(Role::Operator, &operators)?;
    written.public(d.join("clients/operator.pem"), &operator.cert_pem)?;
    files::write_secret(&d.join("clients/operator.key"), operator.key_pem.as_bytes())?;
    crate::client::record(
        &crate::client::register_path(&d.join("tls/client-ca.key")),
        &crate::client::entry_of(&operator.cert_pem, Role::Operator, &operators)?,
    )?;
    Ok(())
}

/// Writes self-signed TLS certificates: a federation CA of the node's own and the
/// federation certificate it issued, a services CA and the services certificate. Returns
/// the federation CA's file, for the peers.
fn write_self_signed(
    n: &NodeInit,
    written: &mut Written,
    next: &mut Vec<String>,
) -> Result<Option<PathBuf>> {
    let d = &n.dir;
    let fed_ca = pki::Authority::generate(&format!("TRM {} federation CA", n.id))?;
    let cert = fed_ca.issue_node(n.id, &n.hosts)?;
    written.public(d.join("tls/federation.pem"), &cert.cert_pem)?;
    files::write_secret(&d.join("tls/federation.key"), cert.key_pem.as_bytes())?;
    written.public(d.join("tls/federation-ca.pem"), fed_ca.cert_pem())?;
    let federation_ca = Some(d.join("tls/federation-ca.pem"));
    let services_ca = pki::Authority::generate(&format!("TRM {} services CA", n.id))?;
    let server = services_ca.issue_server(&format!("trm node {} services", n.id), &n.hosts)?;
    written.public(d.join("tls/services.pem"), &server.cert_pem)?;
    files::write_secret(&d.join("tls/services.key"), server.key_pem.as_bytes())?;
    written.public(d.join("services-ca.pem"), services_ca.cert_pem())?;
    next.push(
        "give local clients services-ca.pem; issue their certificates with `trmctl client issue`"
            .to_owned(),
    );
    Ok(federation_ca)
}

/// Writes the keys and certificate signing requests of the federation and services
/// certificates, for the country's own PKI to sign.
fn write_requests(n: &NodeInit, written: &mut Written, next: &mut Vec<String>) -> Result<()> {
    let d = &n.dir;
    let fed = pki::request_node(n.id, &n.hosts)?;
    written.public(d.join("tls/federation.csr"), &fed.csr_pem)?;
    files::write_secret(&d.join("tls/federation.key"), fed.key_pem.as_bytes())?;
    let services = pki::request_server(&format!("trm node {} services", n.id), &n.hosts)?;
    written.public(d.join("tls/services.csr"), &services.csr_pem)?;
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
    Ok(())
}

/// Creates a folder (and its parents) readable by its owner only.
fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// Returns how a path of the state folder is written into node.toml: relative to node.toml
/// when the state is beside it, else absolute.
fn state_path(state: Option<&Path>, rel: &str) -> String {
    match state {
        None => rel.to_owned(),
        Some(s) => s.join(rel).display().to_string().replace('\\', "/"),
    }
}

/// The configuration `node init` writes, with `{id}`, `{name}`, the four listen addresses
/// and the state paths to fill in.
const TEMPLATE: &str = include_str!("node.toml.template");

fn template(n: &NodeInit, state: Option<&Path>) -> String {
    let values = [
        ("{id}", n.id.to_string()),
        ("{services}", n.services_listen.to_string()),
        ("{federation}", n.federation_listen.to_string()),
        ("{admin}", n.admin_listen.to_string()),
        ("{metrics}", n.metrics_listen.to_string()),
        ("{data_dir}", state_path(state, "data")),
        ("{key_store}", state_path(state, "keys/data-keys.store")),
        ("{signing_key}", state_path(state, "keys/signing.pem")),
        // Last: a name is the operator's text, replaced into nothing after it.
        ("{name}", n.name.replace(['"', '\\'], "'")),
    ];
    values
        .iter()
        .fold(TEMPLATE.to_owned(), |text, (key, value)| {
            text.replace(key, value)
        })
}

/// Returns whether `dir` holds what a node needs to start.
pub fn ready(dir: &Path) -> Result<trm_node::NodeConfig> {
    Ok(trm_node::NodeConfig::load(&dir.join("node.toml"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the init of node `id` in `dir` with self-signed certificates, its ports
    /// counted from `port` (services, then federation, admin and metrics).
    fn self_signed(dir: PathBuf, id: &str, name: &str, hosts: &[&str], port: u16) -> NodeInit {
        let listen = |host: &str, n: u16| format!("{host}:{}", port + n).parse().unwrap();
        NodeInit {
            dir,
            state_dir: None,
            id: id.parse().unwrap(),
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            services_listen: listen("127.0.0.1", 0),
            federation_listen: listen("0.0.0.0", 1),
            admin_listen: listen("127.0.0.1", 2),
            metrics_listen: listen("127.0.0.1", 3),
            certificates: Certificates::SelfSigned,
        }
    }

    #[test]
    fn a_self_signed_node_folder_is_a_valid_config_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let n = self_signed(
            dir.path().join("at"),
            "AT",
            "Austria national focal point",
            &["trm.at.example", "127.0.0.1"],
            7400,
        );
        let report = init(&n).unwrap();
        let (written, next) = (report.written, report.next);
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
        let next = init(&csr).unwrap().next;
        let request = files::read_text(&csr.dir.join("tls/federation.csr")).unwrap();
        assert!(request.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(next.iter().any(|s| s.contains("trm://node/RO")));
        let err = ready(&csr.dir).unwrap_err().to_string();
        assert!(err.contains("tls.federation_cert"), "{err}");
    }

    /// The folders deploy/trm-node.service lets the node write (ReadWritePaths=).
    fn writable_in_the_unit() -> Vec<PathBuf> {
        include_str!("../../../deploy/trm-node.service")
            .lines()
            .filter_map(|l| l.strip_prefix("ReadWritePaths="))
            .flat_map(|l| l.split_whitespace().map(PathBuf::from).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn the_guides_layout_puts_everything_the_node_writes_where_the_unit_lets_it_write() {
        let root = tempfile::tempdir().unwrap();
        // The operator guide: --dir /etc/trm --state-dir /var/lib/trm, inside a scratch root.
        let etc = root.path().join("etc/trm");
        let var = root.path().join("var/lib/trm");
        let n = NodeInit {
            state_dir: Some(var.clone()),
            ..self_signed(etc.clone(), "DE", "Germany", &["trm.de.example"], 7500)
        };
        let report = init(&n).unwrap();
        assert_eq!(report.signing_public_key, var.join("keys/signing.pub.pem"));
        let cfg = ready(&etc).unwrap();
        let writable: Vec<PathBuf> = writable_in_the_unit()
            .iter()
            .map(|p| root.path().join(p.strip_prefix("/").unwrap()))
            .collect();
        assert!(!writable.is_empty());
        let under = |p: &Path| writable.iter().any(|w| p.starts_with(w));
        for (what, path) in [
            ("node.data_dir", cfg.node.data_dir.clone()),
            ("node.key_store", cfg.node.key_store.clone()),
            ("signing.key", cfg.signing.key.clone()),
            ("backups", var.join("backups")),
        ] {
            assert!(
                under(&path),
                "{what} {} is not writable under the unit",
                path.display()
            );
            assert!(path.starts_with(&var), "{what}");
        }
        for (what, path) in [
            ("node.master_key", cfg.node.master_key.clone()),
            ("tls.federation_key", cfg.tls.federation_key.clone()),
        ] {
            assert!(
                path.starts_with(&etc),
                "{what} stays with the configuration"
            );
        }
        assert_eq!(cfg.listen.services.port(), 7500);
        assert_eq!(cfg.listen.admin.port(), 7502);
        assert_eq!(cfg.listen.metrics.port(), 7503);
        let again = init(&NodeInit {
            dir: root.path().join("etc/other"),
            ..n
        });
        assert!(
            again.unwrap_err().to_string().contains("state"),
            "state is never overwritten"
        );
    }
}
