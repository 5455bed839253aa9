//! The sandbox federation: a throwaway federation CA and, per node, `DIR/<ID>/node.toml`,
//! its keys and certificates, the CA a local client must trust (`services-ca.pem`) and one
//! client certificate per role (`clients/<role>.pem` and `.key`). Every node lists the others
//! as peers. The i-th node listens on base+10i (services), +1 (federation), +2 (admin),
//! +3 (metrics), all on loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use trm_core::ids::{NodeId, OrgId, Role};
use trm_crypto::{aead::SecretKey, files, pki::Authority, signing::SigningIdentity};

/// Where one sandbox node listens.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec {
    pub id: NodeId,
    pub services: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub console: SocketAddr,
}

impl NodeSpec {
    /// Returns the spec of the `index`-th node from `base_port`.
    pub fn from_base(id: NodeId, index: usize, base_port: u16) -> Result<Self> {
        let offset = u16::try_from(index * 10).context("too many nodes")?;
        let port = |d: u16| -> Result<SocketAddr> {
            let p = base_port
                .checked_add(offset + d)
                .context("port out of range: lower --base-port")?;
            Ok(SocketAddr::from(([127, 0, 0, 1], p)))
        };
        Ok(Self {
            id,
            services: port(0)?,
            federation: port(1)?,
            admin: port(2)?,
            metrics: port(3)?,
            console: port(4)?,
        })
    }
}

/// Returns the organisation of each role's sandbox client certificate.
pub fn sandbox_org(role: Role) -> Result<OrgId> {
    let org = match role {
        Role::ServiceProvider => "sp1",
        Role::FocalPoint => "nfp",
        Role::JudicialAuthority => "prosecutor",
        Role::Operator => "ops",
        Role::ImmigrationAuthority => "immigration",
    };
    Ok(OrgId::parse("org", org)?)
}

/// What `init` did with one node folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    Created(PathBuf),
    Kept(PathBuf),
}

/// Returns the node folder of `id` in `dir`.
pub fn node_dir(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(id.as_str())
}

/// Returns the config file of `id` in `dir`.
pub fn config_path(dir: &Path, id: NodeId) -> PathBuf {
    node_dir(dir, id).join("node.toml")
}

fn federation_ca(dir: &Path) -> Result<Authority> {
    let cert = dir.join("federation-ca.pem");
    let key = dir.join("federation-ca.key");
    if cert.is_file() && key.is_file() {
        return Authority::load(&files::read_text(&cert)?, &files::read_text(&key)?)
            .context("loading the sandbox federation CA");
    }
    let ca = Authority::generate("TRM sandbox federation CA")?;
    files::write_public(&cert, ca.cert_pem().as_bytes())?;
    files::write_secret(&key, ca.key_pem().as_bytes())?;
    Ok(ca)
}

/// Writes the sandbox for `nodes` into `dir`. An existing node folder is kept as it is
/// unless `force`.
pub fn init(dir: &Path, nodes: &[NodeSpec], force: bool) -> Result<Vec<InitOutcome>> {
    init_in(dir, nodes, force, false, &Storage::Sled)
}

/// Where the sandbox's nodes keep their stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// sled, in each node's `data/` (the default).
    Sled,
    /// One PostgreSQL database; each node its own schema `trm_<id in lower case>`. The URL
    /// goes to each node's `keys/postgres.url` (a secret file), not into its config; the
    /// server's CA (`ca_file`, needed by a host that is not loopback) is copied to each
    /// node's `keys/postgres-ca.pem`.
    Postgres {
        url: String,
        ca_file: Option<PathBuf>,
    },
}

/// The `[storage]` section of a sandbox node, after its store is made ready: on
/// PostgreSQL, the node's schema emptied when `force`, and refused when it holds the data
/// of another sandbox otherwise (that data cannot be read without the keys it was sealed
/// under).
fn storage_section(nd: &Path, id: NodeId, storage: &Storage, force: bool) -> Result<String> {
    let Storage::Postgres { url, ca_file } = storage else {
        return Ok(String::new());
    };
    files::write_secret(&nd.join("keys/postgres.url"), url.as_bytes())?;
    let ca_copy = nd.join("keys/postgres-ca.pem");
    if let Some(ca) = ca_file {
        std::fs::copy(ca, &ca_copy)
            .with_context(|| format!("copying the PostgreSQL CA {}", ca.display()))?;
    }
    let pg = trm_store::engine::postgres::PostgresOptions {
        url: url.clone(),
        ca_file: ca_file.as_ref().map(|_| ca_copy),
        schema: format!("trm_{}", id.as_str().to_ascii_lowercase()),
        readers: 1,
    };
    if force {
        trm_store::engine::postgres::drop_schema(&pg)
            .with_context(|| format!("emptying the schema {}", pg.schema))?;
    } else if trm_store::engine::postgres::holds_data(&pg)
        .with_context(|| format!("reaching PostgreSQL for the schema {}", pg.schema))?
    {
        anyhow::bail!(
            "the PostgreSQL schema {} holds another sandbox's data: pass --force to empty it",
            pg.schema
        );
    }
    let mut section =
        "\n[storage]\nengine = \"postgres\"\nurl_file = \"keys/postgres.url\"\n".to_owned();
    if pg.ca_file.is_some() {
        section.push_str("ca_file = \"keys/postgres-ca.pem\"\n");
    }
    Ok(section)
}

/// Returns the specs of a sandbox whose nodes run in containers of one network (compose):
/// each listens on every address on the standard ports and is reached by its lower-case id.
pub fn compose_specs(ids: &[NodeId]) -> Vec<NodeSpec> {
    let any = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
    ids.iter()
        .map(|id| NodeSpec {
            id: *id,
            services: any(7400),
            federation: any(7401),
            admin: any(7402),
            metrics: any(7403),
            console: any(7404),
        })
        .collect()
}

/// Writes the sandbox; with `compose`, for nodes reached by their lower-case ids on the
/// standard ports (see [`compose_specs`]).
pub fn init_in(
    dir: &Path,
    nodes: &[NodeSpec],
    force: bool,
    compose: bool,
    storage: &Storage,
) -> Result<Vec<InitOutcome>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fed_ca = federation_ca(dir)?;
    // Signing keys first: every node needs its peers' public keys.
    let mut publics = Vec::new();
    let mut outcomes = Vec::new();
    for spec in nodes {
        let nd = node_dir(dir, spec.id);
        if nd.join("node.toml").is_file() && !force {
            publics.push(
                files::read_text(&nd.join("keys/signing.pub.pem"))
                    .context("kept node lacks keys/signing.pub.pem")?,
            );
            outcomes.push(InitOutcome::Kept(nd));
            continue;
        }
        publics.push(write_node(&nd, spec, &fed_ca, compose)?);
        outcomes.push(InitOutcome::Created(nd));
    }
    for (i, spec) in nodes.iter().enumerate() {
        let InitOutcome::Created(nd) = &outcomes[i] else {
            continue;
        };
        let peers = peers_section(nd, i, nodes, &publics, compose)?;
        let storage = storage_section(nd, spec.id, storage, force)?;
        files::write_public(
            &nd.join("node.toml"),
            node_toml(spec, &storage, &peers).as_bytes(),
        )?;
    }
    Ok(outcomes)
}

/// The host a node is reached at in a compose network: its lower-case id.
fn compose_host(id: NodeId) -> String {
    id.as_str().to_lowercase()
}

/// Writes a new node's folder `nd` (emptied first), all but its node.toml: its signing and
/// master keys, its federation certificate issued by the sandbox's CA, a services CA and
/// certificate, and its client CA with a certificate per role. Returns the signing public
/// key (PEM), for its peers.
fn write_node(nd: &Path, spec: &NodeSpec, fed_ca: &Authority, compose: bool) -> Result<String> {
    if nd.exists() {
        std::fs::remove_dir_all(nd)?;
    }
    for sub in ["keys", "tls", "clients", "peers", "data"] {
        std::fs::create_dir_all(nd.join(sub))?;
    }
    let signing = SigningIdentity::generate();
    signing.save(&nd.join("keys/signing.pem"))?;
    let public = trm_crypto::signing::public_to_pem(&signing.public())?;
    files::write_public(&nd.join("keys/signing.pub.pem"), public.as_bytes())?;
    SecretKey::generate().save(&nd.join("keys/master.key"))?;

    let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if compose {
        hosts.push(compose_host(spec.id));
    }
    let node_cert = fed_ca.issue_node(spec.id, &hosts)?;
    files::write_public(
        &nd.join("tls/federation.pem"),
        node_cert.cert_pem.as_bytes(),
    )?;
    files::write_secret(&nd.join("tls/federation.key"), node_cert.key_pem.as_bytes())?;
    files::write_public(
        &nd.join("tls/federation-ca.pem"),
        fed_ca.cert_pem().as_bytes(),
    )?;

    let services_ca = Authority::generate(&format!("TRM sandbox {} services CA", spec.id))?;
    files::write_public(
        &nd.join("services-ca.pem"),
        services_ca.cert_pem().as_bytes(),
    )?;
    let server = services_ca.issue_server(&format!("trm node {} services", spec.id), &hosts)?;
    files::write_public(&nd.join("tls/services.pem"), server.cert_pem.as_bytes())?;
    files::write_secret(&nd.join("tls/services.key"), server.key_pem.as_bytes())?;
    write_clients(nd, spec.id)?;
    Ok(public)
}

/// Writes a node's client CA and a client certificate for each role (clients/ROLE.pem and
/// .key), each recorded in the register of issued certificates.
fn write_clients(nd: &Path, id: NodeId) -> Result<()> {
    let client_ca = Authority::generate(&format!("TRM sandbox {id} client CA"))?;
    files::write_public(
        &nd.join("tls/client-ca.pem"),
        client_ca.cert_pem().as_bytes(),
    )?;
    files::write_secret(
        &nd.join("tls/client-ca.key"),
        client_ca.key_pem().as_bytes(),
    )?;
    let register = crate::client::register_path(&nd.join("tls/client-ca.key"));
    for role in Role::ALL {
        let org = sandbox_org(role)?;
        let c = client_ca.issue_client(role, &org)?;
        crate::client::record(
            &register,
            &crate::client::entry_of(&c.cert_pem, role, &org)?,
        )?;
        files::write_public(
            &nd.join(format!("clients/{role}.pem")),
            c.cert_pem.as_bytes(),
        )?;
        files::write_secret(
            &nd.join(format!("clients/{role}.key")),
            c.key_pem.as_bytes(),
        )?;
        // For a browser (the console); a throwaway sandbox's passphrase is no secret.
        let p12 = crate::client::p12_bytes(
            (c.cert_pem.as_bytes(), c.key_pem.as_bytes()),
            client_ca.cert_pem().as_bytes(),
            &format!("TRM sandbox {id} {role}"),
            SANDBOX_P12_PASSPHRASE,
        )?;
        files::write_secret(&nd.join(format!("clients/{role}.p12")), &p12)?;
    }
    Ok(())
}

/// The passphrase of the sandbox's `clients/ROLE.p12` files (a throwaway federation).
pub const SANDBOX_P12_PASSPHRASE: &str = "sandbox";

/// Writes the public keys of node `i`'s peers (every other node) into its peers/ folder
/// and returns its `[[peers]]` tables.
fn peers_section(
    nd: &Path,
    i: usize,
    nodes: &[NodeSpec],
    publics: &[String],
    compose: bool,
) -> Result<String> {
    let mut peers = String::new();
    for (j, peer) in nodes.iter().enumerate() {
        if i == j {
            continue;
        }
        let key_file = format!("peers/{}.pub.pem", peer.id);
        files::write_public(&nd.join(&key_file), publics[j].as_bytes())?;
        let endpoint = if compose {
            format!("{}:{}", compose_host(peer.id), peer.federation.port())
        } else {
            peer.federation.to_string()
        };
        peers.push_str(&format!(
            "\n[[peers]]\nid = \"{}\"\nendpoint = \"{endpoint}\"\ntls_ca = \"tls/federation-ca.pem\"\nsigning_keys = [\"{key_file}\"]\n",
            peer.id
        ));
    }
    Ok(peers)
}

/// Returns a sandbox node's node.toml, its `[storage]` section and `[[peers]]` tables at
/// the end.
fn node_toml(spec: &NodeSpec, storage: &str, peers: &str) -> String {
    format!(
        r#"# Sandbox node {id}: throwaway keys and certificates, loopback only.
[node]
id = "{id}"
name = "{id} national focal point (sandbox)"
data_dir = "data"
master_key = "keys/master.key"
key_store = "keys/data-keys.store"

[listen]
services = "{services}"
federation = "{federation}"
admin = "{admin}"
metrics = "{metrics}"
console = "{console}"

[tls]
federation_cert = "tls/federation.pem"
federation_key = "tls/federation.key"
federation_ca = "tls/federation-ca.pem"
services_cert = "tls/services.pem"
services_key = "tls/services.key"
client_ca = "tls/client-ca.pem"
client_ca_key = "tls/client-ca.key"

[signing]
key = "keys/signing.pem"

[policy]
reflection_period_days = 30

[delivery]
backoff_cap_secs = 5
{storage}{peers}"#,
        id = spec.id,
        services = spec.services,
        federation = spec.federation,
        admin = spec.admin,
        metrics = spec.metrics,
        console = spec.console,
    )
}

/// Returns the base port a sandbox folder was initialised with: the services port of its
/// first node (`None` when it holds no node).
pub fn base_port_of(dir: &Path) -> Result<Option<u16>> {
    let Some(first) = nodes_in(dir)?.first().copied() else {
        return Ok(None);
    };
    Ok(Some(
        trm_node::NodeConfig::load(&config_path(dir, first))?
            .listen
            .services
            .port(),
    ))
}

/// Returns the ids of the nodes in a sandbox folder (every `<ID>/node.toml`), in the order
/// of their services ports (the order they were initialised in).
pub fn nodes_in(dir: &Path) -> Result<Vec<NodeId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<NodeId>().ok())
        {
            let config = entry.path().join("node.toml");
            if config.is_file() {
                let port = trm_node::NodeConfig::load(&config)?.listen.services.port();
                ids.push((port, id));
            }
        }
    }
    ids.sort();
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}
