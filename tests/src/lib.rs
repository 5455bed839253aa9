//! Test support for cross-node tests: [`TestFederation`] starts real nodes in this process,
//! each with sled in a temporary folder, listeners on `127.0.0.1:0` and mutual-TLS material
//! of its own: one federation CA per country (as in a real federation, where no member's CA
//! may certify another member), a services CA, a client CA and one client certificate per
//! role. [`FederationBuilder`] chooses the nodes, the topology and config overrides per test.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use trm_core::ids::{NodeId, OrgId, Role};
use trm_crypto::{aead::SecretKey, files, pki::Authority, signing::SigningIdentity};
use trm_node::{Listeners, NodeConfig, NodeHandle};
use trm_proto::v1::{
    admin_service_client::AdminServiceClient, referral_service_client::ReferralServiceClient,
    remedies_service_client::RemediesServiceClient,
    return_planning_service_client::ReturnPlanningServiceClient,
    witness_hearing_service_client::WitnessHearingServiceClient,
    work_service_client::WorkServiceClient,
};
/// Real nodes on loopback, stopped by [`TestFederation::stop`] (or dropped with the runtime).
pub struct TestFederation {
    dir: TempDir,
    specs: Vec<Spec>,
    nodes: Vec<NodeHandle>,
    overrides: Vec<Override>,
    options: std::collections::HashMap<String, trm_node::NodeOptions>,
}

/// Returns a free loopback port below the kernel's range of ephemeral ports (32768 and up
/// on Linux), bound: a node stopped and started again on its port never finds it taken by
/// the local end of some other test's outgoing connection. A port is handed out once per
/// test process: a test that lays out a sandbox releases its ports until its node processes
/// bind them, and no other test of the process may take one in between.
fn reserve_port() -> Result<std::net::TcpListener> {
    static HANDED_OUT: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u16>>> =
        std::sync::OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let mut last = None;
    for _ in 0..200 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let fresh = handed_out
            .lock()
            .map_err(|_| anyhow::anyhow!("port registry poisoned"))?
            .insert(port);
        if !fresh {
            continue;
        }
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no free port"), Into::into))
}

async fn bind() -> Result<(TcpListener, SocketAddr)> {
    let l = reserve_port()?;
    l.set_nonblocking(true)?;
    let l = TcpListener::from_std(l)?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Everything the nodes of this test process logged (at debug level and above, trace for the
/// project's own crates), for tests that check no personal data reaches a log line.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().map(|b| b.clone()).unwrap_or_default())
        .into_owned()
}

fn log_buffer() -> &'static std::sync::Mutex<Vec<u8>> {
    static BUFFER: std::sync::OnceLock<std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    BUFFER.get_or_init(Default::default)
}

struct BufferWriter;

impl std::io::Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = log_buffer().lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this process's log lines to the buffer [`captured_logs`] reads (once; later calls do
/// nothing).
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,trm_node=trace,trm_federation=trace,trm_store=trace,trm_core=trace,trmctl=trace",
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| BufferWriter)
            .try_init();
    });
}

/// Where one test node listens.
#[derive(Debug, Clone, Copy)]
struct Spec {
    id: NodeId,
    services: SocketAddr,
    federation: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    console: SocketAddr,
}

/// A change to a node's configuration before it starts (every start, restarts included).
pub type Override = Arc<dyn Fn(NodeId, &mut NodeConfig) + Send + Sync>;

/// Chooses the nodes of a test federation, who peers with whom and config overrides.
pub struct FederationBuilder {
    ids: Vec<String>,
    options: std::collections::HashMap<String, trm_node::NodeOptions>,
    /// Pairs that are not each other's peers (both directions).
    strangers: Vec<(String, String)>,
    overrides: Vec<Override>,
    capture_logs: bool,
}

impl FederationBuilder {
    /// Every node is a peer of every other unless [`FederationBuilder::not_peers`] says so.
    pub fn nodes(mut self, ids: &[&str]) -> Self {
        self.ids = ids.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// `a` and `b` do not list each other as peers.
    pub fn not_peers(mut self, a: &str, b: &str) -> Self {
        self.strangers.push((a.to_owned(), b.to_owned()));
        self
    }

    /// Changes every node's configuration before it starts.
    pub fn config(mut self, f: impl Fn(NodeId, &mut NodeConfig) + Send + Sync + 'static) -> Self {
        self.overrides.push(Arc::new(f));
        self
    }

    /// Runs `hook` before each sync of node `id`'s durable point (an error fails it). The
    /// hook is on sled's file syncs, so node `id` runs on sled whatever engine the suite
    /// runs on (the PostgreSQL suite fails its commits by stopping the database instead).
    pub fn sync_hook(
        mut self,
        id: &str,
        hook: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.options.entry(id.to_owned()).or_default().sync_hook = Some(Arc::new(hook));
        let on = id.to_owned();
        self.config(move |node, c| {
            if node.as_str() == on {
                c.storage = Default::default();
            }
        })
    }

    /// Does not capture the nodes' logs (benchmarks).
    pub fn quiet(mut self) -> Self {
        self.capture_logs = false;
        self
    }

    fn peers(&self, a: &str, b: &str) -> bool {
        a != b
            && !self
                .strangers
                .iter()
                .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// Writes every node's keys, certificates and config, and starts the nodes.
    pub async fn start(self) -> Result<TestFederation> {
        if self.capture_logs {
            capture_logs();
        }
        trm_node::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let mut listeners = Vec::new();
        let mut specs = Vec::new();
        for id in &self.ids {
            let (services, s) = bind().await?;
            let (federation, f) = bind().await?;
            let (admin, a) = bind().await?;
            let (metrics, m) = bind().await?;
            let (console, c) = bind().await?;
            listeners.push(Listeners {
                services,
                federation,
                admin,
                metrics,
                console: Some(console),
            });
            specs.push(Spec {
                id: id.parse()?,
                services: s,
                federation: f,
                admin: a,
                metrics: m,
                console: c,
            });
        }
        for spec in &specs {
            write_node(dir.path(), spec)?;
        }
        for spec in &specs {
            let peers: Vec<&Spec> = specs
                .iter()
                .filter(|p| self.peers(spec.id.as_str(), p.id.as_str()))
                .collect();
            write_config(dir.path(), spec, &peers)?;
        }
        let mut fed = TestFederation {
            dir,
            specs,
            nodes: Vec::new(),
            overrides: self.overrides,
            options: self.options,
        };
        for (spec, l) in fed.specs.clone().iter().zip(listeners) {
            let cfg = fed.config(spec.id)?;
            let options = fed.options_of(spec.id);
            fed.nodes.push(NodeHandle::spawn_with(cfg, options, l)?);
        }
        Ok(fed)
    }
}

/// Returns the organisation of each role's test client certificate.
pub fn test_org(role: Role) -> OrgId {
    let org = match role {
        Role::ServiceProvider => "sp1",
        Role::FocalPoint => "nfp",
        Role::JudicialAuthority => "prosecutor",
        Role::Operator => "ops",
        Role::ImmigrationAuthority => "immigration",
    };
    OrgId::parse("org", org).unwrap_or_else(|_| unreachable!("fixed organisation ids parse"))
}

/// Writes one node's keys and certificates: its own federation CA (`tls/federation-ca.pem`
/// and `.key`), its federation certificate, services and client CAs, a client certificate
/// per role.
fn write_node(dir: &Path, spec: &Spec) -> Result<()> {
    let nd = dir.join(spec.id.as_str());
    for sub in ["keys", "tls", "clients", "peers", "data"] {
        std::fs::create_dir_all(nd.join(sub))?;
    }
    let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let signing = SigningIdentity::generate();
    signing.save(&nd.join("keys/signing.pem"))?;
    files::write_public(
        &nd.join("keys/signing.pub.pem"),
        trm_crypto::signing::public_to_pem(&signing.public())?.as_bytes(),
    )?;
    SecretKey::generate().save(&nd.join("keys/master.key"))?;
    let fed_ca = Authority::generate(&format!("TRM test {} federation CA", spec.id))?;
    files::write_public(
        &nd.join("tls/federation-ca.pem"),
        fed_ca.cert_pem().as_bytes(),
    )?;
    files::write_secret(
        &nd.join("tls/federation-ca.key"),
        fed_ca.key_pem().as_bytes(),
    )?;
    let node_cert = fed_ca.issue_node(spec.id, &hosts)?;
    files::write_public(
        &nd.join("tls/federation.pem"),
        node_cert.cert_pem.as_bytes(),
    )?;
    files::write_secret(&nd.join("tls/federation.key"), node_cert.key_pem.as_bytes())?;
    let services_ca = Authority::generate(&format!("TRM test {} services CA", spec.id))?;
    files::write_public(
        &nd.join("services-ca.pem"),
        services_ca.cert_pem().as_bytes(),
    )?;
    let server = services_ca.issue_server(&format!("trm node {} services", spec.id), &hosts)?;
    files::write_public(&nd.join("tls/services.pem"), server.cert_pem.as_bytes())?;
    files::write_secret(&nd.join("tls/services.key"), server.key_pem.as_bytes())?;
    let client_ca = Authority::generate(&format!("TRM test {} client CA", spec.id))?;
    files::write_public(
        &nd.join("tls/client-ca.pem"),
        client_ca.cert_pem().as_bytes(),
    )?;
    files::write_secret(
        &nd.join("tls/client-ca.key"),
        client_ca.key_pem().as_bytes(),
    )?;
    for role in Role::ALL {
        let c = client_ca.issue_client(role, &test_org(role))?;
        files::write_public(
            &nd.join(format!("clients/{role}.pem")),
            c.cert_pem.as_bytes(),
        )?;
        files::write_secret(
            &nd.join(format!("clients/{role}.key")),
            c.key_pem.as_bytes(),
        )?;
    }
    Ok(())
}

/// The `[storage]` section of a test node in `node_dir`: the PostgreSQL engine, a schema of
/// its own, when the suite runs on PostgreSQL (see [`trm_store::testing`]); else none (sled).
fn storage_section(node_dir: &Path) -> Result<String> {
    Ok(match trm_store::testing::postgres_url() {
        Some(url) => format!(
            "\n[storage]\nengine = \"postgres\"\nurl = \"{url}\"\nschema = \"{}\"\n",
            trm_store::testing::schema_for(node_dir)?
        ),
        None => String::new(),
    })
}

/// Whether this run of the suite is on PostgreSQL.
pub fn on_postgres() -> bool {
    trm_store::testing::postgres_url().is_some()
}

/// Writes `node.toml` for `spec`, listing `peers` with each peer's own CA and key.
fn write_config(dir: &Path, spec: &Spec, peers: &[&Spec]) -> Result<()> {
    let nd = dir.join(spec.id.as_str());
    let mut peer_sections = String::new();
    for peer in peers {
        let pd = dir.join(peer.id.as_str());
        let ca = format!("peers/{}-ca.pem", peer.id);
        let key = format!("peers/{}.pub.pem", peer.id);
        std::fs::copy(pd.join("tls/federation-ca.pem"), nd.join(&ca))?;
        std::fs::copy(pd.join("keys/signing.pub.pem"), nd.join(&key))?;
        peer_sections.push_str(&format!(
            "\n[[peers]]\nid = \"{}\"\nendpoint = \"{}\"\ntls_ca = \"{ca}\"\nsigning_keys = [\"{key}\"]\n",
            peer.id, peer.federation
        ));
    }
    let toml = format!(
        r#"[node]
id = "{id}"
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

[delivery]
backoff_cap_secs = 5
{storage}{peer_sections}"#,
        storage = storage_section(&nd)?,
        id = spec.id,
        services = spec.services,
        federation = spec.federation,
        admin = spec.admin,
        metrics = spec.metrics,
        console = spec.console,
    );
    files::write_public(&nd.join("node.toml"), toml.as_bytes())?;
    Ok(())
}

/// Opens a channel to `addr` trusting `ca` for the server (host name `localhost`) and
/// presenting the client certificate `cert`/`key` (PEM files), as any client of a node does.
pub async fn connect(addr: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> Result<Channel> {
    connect_with(None, addr, ca, cert, key).await
}

/// Same as [`connect`], from source address `local` (loopback has many: 127.0.0.0/8).
pub async fn connect_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Channel> {
    connect_with(Some(local), addr, ca, cert, key).await
}

async fn connect_with(
    local: Option<std::net::IpAddr>,
    addr: SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files::read(ca)?))
        .identity(Identity::from_pem(files::read(cert)?, files::read(key)?))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .local_address(local)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

impl TestFederation {
    /// Returns a builder: one federation CA per country, every node a peer of every other.
    pub fn builder() -> FederationBuilder {
        FederationBuilder {
            ids: Vec::new(),
            strangers: Vec::new(),
            overrides: Vec::new(),
            options: Default::default(),
            capture_logs: true,
        }
    }

    /// Starts one node per id, every node a peer of every other, capturing their logs.
    pub async fn start(ids: &[&str]) -> Result<Self> {
        Self::builder().nodes(ids).start().await
    }

    /// Same as [`TestFederation::start`] without capturing logs (benchmarks).
    pub async fn start_quiet(ids: &[&str]) -> Result<Self> {
        Self::builder().nodes(ids).quiet().start().await
    }

    /// Returns the configuration of node `id` as it starts: its file, then the overrides.
    pub fn config(&self, id: NodeId) -> Result<NodeConfig> {
        let mut cfg = NodeConfig::load(&self.config_path(id))?;
        for o in &self.overrides {
            o(id, &mut cfg);
        }
        Ok(cfg)
    }

    /// Returns the config file of node `id`.
    pub fn config_path(&self, id: NodeId) -> std::path::PathBuf {
        self.dir().join(id.as_str()).join("node.toml")
    }

    /// Stops node `id` (flushing its store); its folder and ports stay reserved for it.
    pub async fn stop_node(&mut self, id: &str) -> Result<()> {
        let id: NodeId = id.parse()?;
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .context("node not running")?;
        self.nodes.remove(i).stop().await?;
        Ok(())
    }

    /// Starts node `id` again on its own addresses, from what is on disk.
    pub async fn start_node(&mut self, id: &str) -> Result<()> {
        let id: NodeId = id.parse()?;
        let spec = *self
            .specs
            .iter()
            .find(|s| s.id == id)
            .context("no such node")?;
        let listeners = Listeners {
            services: TcpListener::bind(spec.services).await?,
            federation: TcpListener::bind(spec.federation).await?,
            admin: TcpListener::bind(spec.admin).await?,
            metrics: TcpListener::bind(spec.metrics).await?,
            console: Some(TcpListener::bind(spec.console).await?),
        };
        let cfg = self.config(id)?;
        let options = self.options_of(id);
        self.nodes
            .push(NodeHandle::spawn_with(cfg, options, listeners)?);
        Ok(())
    }

    fn options_of(&self, id: NodeId) -> trm_node::NodeOptions {
        self.options.get(id.as_str()).cloned().unwrap_or_default()
    }

    /// Returns the federation folder (node folders, certificates, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the folder of node `id`.
    pub fn node_dir(&self, id: &str) -> std::path::PathBuf {
        self.dir().join(id)
    }

    /// Returns the running node `id`.
    pub fn node(&self, id: &str) -> Result<&NodeHandle> {
        let id: NodeId = id.parse()?;
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .context("no such node")
    }

    /// Returns the addresses node `id` listens on, running or not.
    fn spec(&self, id: &str) -> Result<Spec> {
        let id: NodeId = id.parse()?;
        self.specs
            .iter()
            .find(|s| s.id == id)
            .copied()
            .context("no such node")
    }

    /// Opens a channel to node `id`'s services (or admin) port as `role`.
    pub async fn channel(&self, id: &str, role: Role, admin: bool) -> Result<Channel> {
        let spec = self.spec(id)?;
        let nd = self.node_dir(id);
        connect(
            if admin { spec.admin } else { spec.services },
            &nd.join("services-ca.pem"),
            &nd.join(format!("clients/{role}.pem")),
            &nd.join(format!("clients/{role}.key")),
        )
        .await
    }

    /// Returns a client of node `id`'s services port authenticated as `role`, made by `new`,
    /// a generated client's constructor: `fed.client("AT", role, SafetyServiceClient::new)`.
    /// A new service needs no helper of its own. The admin service is on the admin port:
    /// [`TestFederation::admin`].
    pub async fn client<C>(&self, id: &str, role: Role, new: fn(Channel) -> C) -> Result<C> {
        Ok(new(self.channel(id, role, false).await?))
    }

    /// Returns a `ReferralService` client of node `id` authenticated as `role`.
    pub async fn referrals(&self, id: &str, role: Role) -> Result<ReferralServiceClient<Channel>> {
        self.client(id, role, ReferralServiceClient::new).await
    }

    /// Returns a `ReferralService` client of node `id` for a service provider of another
    /// organisation, `org`, with a certificate from `trmctl client issue`.
    pub async fn referrals_of_org(
        &self,
        id: &str,
        org: &str,
    ) -> Result<ReferralServiceClient<Channel>> {
        Ok(ReferralServiceClient::new(
            self.channel_of_org(id, org).await?,
        ))
    }

    /// Returns a `WorkService` client of node `id` for a service provider of `org`.
    pub async fn work_of_org(&self, id: &str, org: &str) -> Result<WorkServiceClient<Channel>> {
        Ok(WorkServiceClient::new(self.channel_of_org(id, org).await?))
    }

    /// Returns a channel to node `id`'s services as a service provider of `org`, with a
    /// certificate from `trmctl client issue`.
    async fn channel_of_org(&self, id: &str, org: &str) -> Result<Channel> {
        let trmctl::client::IssueReport { cert, key, .. } = trmctl::client::issue(
            &self.dir().join(format!("{id}/node.toml")),
            Role::ServiceProvider,
            &org.parse()?,
            &self.dir().join(format!("{org}-at-{id}")),
            trm_crypto::pki::CLIENT_VALIDITY_DAYS,
        )?;
        trmctl::connect::channel(
            &self.node(id)?.addrs.services.to_string(),
            &self.dir().join(format!("{id}/services-ca.pem")),
            &cert,
            &key,
        )
        .await
    }

    /// Returns a `WitnessHearingService` client of node `id` authenticated as `role`.
    pub async fn hearings(
        &self,
        id: &str,
        role: Role,
    ) -> Result<WitnessHearingServiceClient<Channel>> {
        self.client(id, role, WitnessHearingServiceClient::new)
            .await
    }

    /// Delivers `payload` to node `to` as node `from` would, under `case_ref`: signed with
    /// `from`'s own key over its own TLS identity (what a peer that ignores a rule of its
    /// own can send). Returns the decoded receipt.
    pub async fn deliver_as(
        &self,
        (from, to): (&str, &str),
        case_ref: &str,
        payload: trm_proto::v1::envelope_body::Payload,
    ) -> Result<trm_proto::v1::ReceiptBody> {
        use prost::Message;
        let key = SigningIdentity::load(&self.dir().join(from).join("keys/signing.pem"))?;
        let tls = self.dir().join(from).join("tls");
        let channel =
            Endpoint::from_shared(format!("https://{}", self.node(to)?.addrs.federation))?
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(files::read(
                            &self.dir().join(from).join(format!("peers/{to}-ca.pem")),
                        )?))
                        .identity(Identity::from_pem(
                            files::read(&tls.join("federation.pem"))?,
                            files::read(&tls.join("federation.key"))?,
                        ))
                        .domain_name("localhost"),
                )?
                .connect()
                .await?;
        let env =
            trm_federation::envelope::seal(&key, from.parse()?, to.parse()?, case_ref, payload);
        let receipt =
            trm_proto::v1::federation_service_client::FederationServiceClient::new(channel)
                .deliver(env)
                .await?
                .into_inner();
        Ok(trm_proto::v1::ReceiptBody::decode(receipt.body.as_slice())?)
    }

    /// Returns a `RemediesService` client of node `id` authenticated as `role`.
    pub async fn remedies(&self, id: &str, role: Role) -> Result<RemediesServiceClient<Channel>> {
        self.client(id, role, RemediesServiceClient::new).await
    }

    /// Returns a `WorkService` client of node `id` authenticated as `role`.
    pub async fn work(&self, id: &str, role: Role) -> Result<WorkServiceClient<Channel>> {
        self.client(id, role, WorkServiceClient::new).await
    }

    /// Returns a `ReturnPlanningService` client of node `id` authenticated as `role`.
    pub async fn returns(
        &self,
        id: &str,
        role: Role,
    ) -> Result<ReturnPlanningServiceClient<Channel>> {
        self.client(id, role, ReturnPlanningServiceClient::new)
            .await
    }

    /// Returns an `AdminService` client of node `id` authenticated as `role`.
    pub async fn admin(&self, id: &str, role: Role) -> Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(self.channel(id, role, true).await?))
    }

    /// Returns the audit entries of node `id` with `action`, oldest first (its whole log,
    /// page by page, as its operator exports it).
    pub async fn audited(&self, id: &str, action: &str) -> Result<Vec<trm_proto::v1::AuditEntry>> {
        let mut admin = self.admin(id, Role::Operator).await?;
        let (mut found, mut token) = (Vec::new(), String::new());
        loop {
            let page = admin
                .export_audit(trm_proto::v1::ExportAuditRequest {
                    page_size: 1000,
                    page_token: token,
                })
                .await?
                .into_inner();
            found.extend(page.entries.into_iter().filter(|e| e.action == action));
            if page.next_page_token.is_empty() {
                return Ok(found);
            }
            token = page.next_page_token;
        }
    }

    /// Stops every node, flushing their stores. The folder stays until what this returns
    /// is dropped.
    pub async fn stop(self) -> Result<Stopped> {
        for n in self.nodes {
            n.stop().await?;
        }
        Ok(Stopped { dir: self.dir })
    }
}

/// The folder of a stopped federation, there to be looked at. On PostgreSQL its nodes'
/// schemas go with it, so that a run of the suite leaves no schema in the database.
pub struct Stopped {
    dir: TempDir,
}

impl Stopped {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let Some(url) = trm_store::testing::postgres_url() else {
            return;
        };
        for file in files_below(self.dir.path()) {
            if file.file_name().is_none_or(|n| n != "pg-schema") {
                continue;
            }
            let Ok(schema) = std::fs::read_to_string(&file) else {
                continue;
            };
            let options = trm_store::engine::postgres::PostgresOptions {
                url: url.clone(),
                ca_file: None,
                schema: schema.trim().to_owned(),
                readers: 1,
            };
            // Best effort: a schema left behind costs a little room, nothing else.
            let _ = trm_store::engine::postgres::drop_schema(&options);
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, for at most 30 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Returns the files below `dir` that contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Builders of requests that the tests repeat.
pub mod requests {
    use trm_proto::v1 as w;

    /// A case of an adult woman identified `days_ago` days ago, with a full identity.
    pub fn case(given_name: &str, identified_days_ago: i64) -> w::CreateCaseRequest {
        let identified =
            time::OffsetDateTime::now_utc().date() - time::Duration::days(identified_days_ago);
        w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: given_name.into(),
                family_name: "Testperson".into(),
                date_of_birth: "1995-05-05".into(),
                gender: w::Gender::Female as i32,
                citizenship: vec!["RO".into()],
                languages: vec!["ro".into()],
                document_number: "P-1234567".into(),
                address: "Strada Test 1".into(),
                phone: "+40 700 000 000".into(),
            }),
            needs: Some(w::Needs {
                kinds: vec![w::NeedKind::Shelter as i32],
                urgency: w::Urgency::Routine as i32,
                notes: String::new(),
            }),
            identified_on: trm_core::model::format_date(identified),
            ..Default::default()
        }
    }

    /// An informed consent for `purposes` to `recipients`, narrowed to `categories` if any.
    pub fn consent(
        case_id: &str,
        purposes: &[w::Purpose],
        recipients: &[&str],
        categories: &[w::DataCategory],
    ) -> w::RecordConsentRequest {
        w::RecordConsentRequest {
            case_id: case_id.into(),
            purposes: purposes.iter().map(|p| *p as i32).collect(),
            recipients: recipients.iter().map(|r| (*r).into()).collect(),
            expires_on: String::new(),
            informed: true,
            information_language: "ro".into(),
            categories: categories.iter().map(|c| *c as i32).collect(),
            ..Default::default()
        }
    }
}

/// Reads a node's metrics page (plain HTTP on the metrics port).
pub async fn metrics(addr: SocketAddr) -> Result<String> {
    http_get(addr, "/metrics").await
}

/// Returns the whole HTTP/1.0 answer (status line, headers, body) to `GET path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Creates a case at `from` (as its service provider), records a referral consent to `to`
/// and submits a referral there. Returns the referral id.
pub async fn refer(fed: &TestFederation, from: &str, to: &str) -> Result<String> {
    refer_with(&fed.referrals(from, Role::ServiceProvider).await?, to).await
}

/// Creates a case through `sp` (a service provider's client), records its consent to `to`
/// and submits a referral to `to`; returns the referral id.
pub async fn refer_with(sp: &ReferralServiceClient<Channel>, to: &str) -> Result<String> {
    let mut sp = sp.clone();
    let case = sp
        .create_case(requests::case("Referred", 5))
        .await?
        .into_inner();
    refer_case(&sp, &case.case_id, to).await
}

/// Withdraws every consent of case `case_id`, as `sp` (the case's provider): the victim
/// takes back all they agreed to.
pub async fn withdraw_all_consents(
    sp: &ReferralServiceClient<Channel>,
    case_id: &str,
) -> Result<()> {
    let mut sp = sp.clone();
    let consents = sp
        .list_consents(trm_proto::v1::ListConsentsRequest {
            case_id: case_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents;
    for c in consents {
        sp.withdraw_consent(trm_proto::v1::WithdrawConsentRequest {
            case_id: case_id.into(),
            consent_id: c.consent_id,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

/// Records a referral consent of case `case_id` to `to` and submits a referral there, as
/// `sp`. Returns the referral id.
pub async fn refer_case(
    sp: &ReferralServiceClient<Channel>,
    case_id: &str,
    to: &str,
) -> Result<String> {
    let mut sp = sp.clone();
    sp.record_consent(requests::consent(
        case_id,
        &[trm_proto::v1::Purpose::ReferralAssistance],
        &[to],
        &[],
    ))
    .await?;
    Ok(sp
        .submit_referral(trm_proto::v1::SubmitReferralRequest {
            case_id: case_id.into(),
            destination: to.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .referral_id)
}

/// Polls `client` until referral `id` has `status`; returns it.
pub async fn referral_with_status(
    client: &ReferralServiceClient<Channel>,
    id: &str,
    status: trm_proto::v1::ReferralStatus,
) -> Result<trm_proto::v1::Referral> {
    eventually(&format!("referral {status:?}"), || {
        let mut c = client.clone();
        let id = id.to_owned();
        async move {
            let r = c
                .get_referral(trm_proto::v1::GetReferralRequest { referral_id: id })
                .await;
            Ok(r.ok()
                .map(|r| r.into_inner())
                .filter(|r| r.status == status as i32))
        }
    })
    .await
}

/// Polls the gRPC health of `ReferralService` over `channel` until it is `want`.
pub async fn referral_health_becomes(
    channel: &Channel,
    want: tonic_health::pb::health_check_response::ServingStatus,
) -> Result<()> {
    eventually(&format!("gRPC health {want:?}"), || {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            let s = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "trm.v1.ReferralService".into(),
                })
                .await?
                .into_inner()
                .status;
            Ok((s == want as i32).then_some(()))
        }
    })
    .await
}

/// Polls `client` until it holds referral `id` (in whatever state); returns it.
pub async fn referral_arrived(
    client: &ReferralServiceClient<Channel>,
    id: &str,
) -> Result<trm_proto::v1::Referral> {
    eventually("the referral to arrive", || {
        let mut c = client.clone();
        let id = id.to_owned();
        async move {
            Ok(
                c.get_referral(trm_proto::v1::GetReferralRequest { referral_id: id })
                    .await
                    .ok()
                    .map(|r| r.into_inner()),
            )
        }
    })
    .await
}

/// Opens the store of stopped node `id` of `fed` (its config's folders and keys).
pub fn open_store(fed: &TestFederation, id: &str) -> Result<trm_store::Store> {
    let cfg = fed.config(id.parse()?)?;
    Ok(trm_store::Store::open(trm_store::StoreOptions {
        node: cfg.node.id,
        data_dir: cfg.node.data_dir.clone(),
        key_store: cfg.node.key_store.clone(),
        master: SecretKey::load(&cfg.node.master_key)?,
        engine: trm_node::config::engine_options(&cfg)?,
    })?)
}

/// The raw database of a stopped node, as an intruder with access to its storage sees it:
/// the store's layout (audit entries under `a/` by sequence, small node state under `m/`,
/// every small value behind a zero tag byte), in sled's folder or in the node's PostgreSQL
/// table, whichever engine the suite runs on.
pub enum RawDb {
    Sled(sled::Db),
    Postgres(Box<std::sync::Mutex<postgres::Client>>),
}

impl RawDb {
    /// Opens the database of a stopped node whose data folder is `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        if let Some(url) = trm_store::testing::postgres_url() {
            let node_dir = data_dir.parent().context("a data folder has a parent")?;
            let schema = trm_store::testing::schema_for(node_dir)?;
            let url = url.clone();
            let client = std::thread::spawn(move || -> Result<postgres::Client> {
                let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
                c.batch_execute(&format!("SET search_path TO {schema}"))?;
                Ok(c)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL"))??;
            return Ok(Self::Postgres(Box::new(std::sync::Mutex::new(client))));
        }
        // sled releases its lock once its last background write of the stopped node ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match sled::open(data_dir) {
                Ok(db) => return Ok(Self::Sled(db)),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs `f` on the PostgreSQL client (a blocking client: off the async runtime).
    fn pg<R: Send>(
        client: &std::sync::Mutex<postgres::Client>,
        f: impl FnOnce(&mut postgres::Client) -> Result<R> + Send,
    ) -> Result<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = client
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f(&mut c)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a PostgreSQL call panicked"))?
        })
    }

    /// Returns every audit entry, raw, in order.
    pub fn audit_raw(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            Self::Sled(db) => db
                .scan_prefix(b"a/")
                .map(|r| {
                    let (k, v) = r?;
                    Ok((k.to_vec(), v.to_vec()))
                })
                .collect(),
            Self::Postgres(c) => Self::pg(c, |c| {
                Ok(c.query(
                    "SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k",
                    &[&&b"a/"[..], &&b"a0"[..]],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
            }),
        }
    }

    /// Returns every audit entry, decoded, with its key.
    pub fn audit(&self) -> Result<Vec<(Vec<u8>, trm_store::audit::AuditEntry)>> {
        self.audit_raw()?
            .into_iter()
            .map(|(k, v)| Ok((k, self.decode(&v)?)))
            .collect()
    }

    /// Decodes a raw value (sled's engine puts a tag byte before each small value).
    pub fn decode<T: serde::de::DeserializeOwned>(&self, raw: &[u8]) -> Result<T> {
        let v = match self {
            Self::Sled(_) => raw.get(1..).context("a tagged value")?,
            Self::Postgres(_) => raw,
        };
        Ok(serde_json::from_slice(v)?)
    }

    /// Encodes a value as the engine stores it.
    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        let mut v = match self {
            Self::Sled(_) => vec![0u8],
            Self::Postgres(_) => Vec::new(),
        };
        v.extend(serde_json::to_vec(value)?);
        Ok(v)
    }

    /// Writes an audit entry under `key`.
    pub fn put_audit(&self, key: &[u8], e: &trm_store::audit::AuditEntry) -> Result<()> {
        self.put_raw(key, &self.encode(e)?)
    }

    /// Writes `value` under `key` as the store encodes a small value.
    pub fn put_json<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        self.put_raw(key, &self.encode(value)?)
    }

    /// Writes raw bytes under `key`.
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Self::Sled(db) => {
                db.insert(key, value)?;
            }
            Self::Postgres(c) => Self::pg(c, |c| {
                c.execute(
                    "INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    &[&key, &value],
                )?;
                Ok(())
            })?,
        }
        Ok(())
    }

    /// Removes `key`.
    pub fn remove(&self, key: &[u8]) -> Result<()> {
        match self {
            Self::Sled(db) => {
                db.remove(key)?;
            }
            Self::Postgres(c) => Self::pg(c, |c| {
                c.execute("DELETE FROM kv WHERE k = $1", &[&key])?;
                Ok(())
            })?,
        }
        Ok(())
    }

    /// Sets the chain's head.
    pub fn set_head(&self, head: &trm_store::audit::AuditHead) -> Result<()> {
        self.put_raw(b"m/audit_head", &self.encode(head)?)
    }

    /// Flushes and closes the database.
    pub fn close(self) -> Result<()> {
        match self {
            Self::Sled(db) => {
                db.flush()?;
            }
            // The blocking client must not be dropped on the async runtime.
            Self::Postgres(c) => std::thread::spawn(move || drop(c))
                .join()
                .map_err(|_| anyhow::anyhow!("closing the PostgreSQL client"))?,
        }
        Ok(())
    }
}

/// Checks a metrics page against the rules of the Prometheus text format that
/// `promtool check metrics` enforces: every family has HELP and TYPE before its samples and
/// is declared once; names and label names are valid; counters end in `_total`; a
/// histogram's samples are its `_bucket` (with `le`, non-decreasing, ending at `+Inf`),
/// `_sum` and `_count`; every value is a number. Returns the families by name.
pub fn check_metrics(page: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let valid = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut kinds = std::collections::BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut current: Option<(String, String)> = None;
    let mut last_bucket: Option<(String, f64)> = None;
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_owned();
            anyhow::ensure!(valid(&name), "bad family name {name}");
            anyhow::ensure!(helped.insert(name.clone()), "HELP of {name} twice");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default().to_owned();
            let kind = parts.next().unwrap_or_default().to_owned();
            anyhow::ensure!(helped.contains(&name), "TYPE of {name} before its HELP");
            anyhow::ensure!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()),
                "{name}: unknown type {kind}"
            );
            anyhow::ensure!(
                kind != "counter" || name.ends_with("_total"),
                "counter {name} must end in _total"
            );
            anyhow::ensure!(
                kinds.insert(name.clone(), kind.clone()).is_none(),
                "TYPE of {name} twice"
            );
            current = Some((name, kind));
            continue;
        }
        anyhow::ensure!(!line.starts_with('#'), "stray comment: {line}");
        if line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("no value: {line}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| anyhow::anyhow!("value is not a number: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (
                n,
                rest.strip_suffix('}')
                    .ok_or_else(|| anyhow::anyhow!("unclosed labels: {line}"))?,
            ),
            None => (series, ""),
        };
        let (family, kind) = current
            .clone()
            .ok_or_else(|| anyhow::anyhow!("sample before any TYPE: {line}"))?;
        let allowed = if kind == "histogram" {
            [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_owned())
        } else {
            name == family
        };
        anyhow::ensure!(allowed, "{name} is not of family {family}");
        let mut le = None;
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .ok_or_else(|| anyhow::anyhow!("bad label {pair} in {line}"))?;
                anyhow::ensure!(valid(k) && !k.starts_with("__"), "bad label name {k}");
                let v = v.trim_end_matches('"');
                anyhow::ensure!(!v.contains('\n'), "newline in a label value");
                if k == "le" {
                    le = Some(v.to_owned());
                }
            }
        }
        if name.ends_with("_bucket") && kind == "histogram" {
            let le = le.ok_or_else(|| anyhow::anyhow!("bucket without le: {line}"))?;
            if let Some((prev_le, prev)) = &last_bucket {
                anyhow::ensure!(prev_le != "+Inf", "bucket after +Inf: {line}");
                anyhow::ensure!(value >= *prev, "buckets decrease: {line}");
            }
            last_bucket = Some((le, value));
        } else if name.ends_with("_sum") && kind == "histogram" {
            anyhow::ensure!(
                last_bucket.as_ref().is_some_and(|(le, _)| le == "+Inf"),
                "{family}: no +Inf bucket"
            );
            last_bucket = None;
        }
    }
    Ok(kinds)
}

/// A sandbox node `id` on free loopback ports (for tests that lay out a sandbox and run
/// its nodes themselves).
pub fn free_node_spec(id: &str) -> Result<trmctl::sandbox::NodeSpec> {
    let free = || -> Result<SocketAddr> { Ok(reserve_port()?.local_addr()?) };
    Ok(trmctl::sandbox::NodeSpec {
        id: id.parse()?,
        services: free()?,
        federation: free()?,
        admin: free()?,
        metrics: free()?,
        console: free()?,
    })
}

/// Sends SIGTERM to `child` (a node process) and returns how it exited.
pub async fn terminate(child: &mut tokio::process::Child) -> Result<std::process::ExitStatus> {
    let pid = child.id().context("child already gone")?;
    tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    Ok(child.wait().await?)
}

/// Runs `exe` (a test's `trm-test-node`, from `env!("CARGO_BIN_EXE_trm-test-node")`) with
/// `--config config` as a child process, killed when dropped; its log (at the level a
/// node runs by default) is appended to `<config>.log`, one run after another.
pub fn spawn_node_process(exe: &str, config: &Path) -> Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))?;
    Ok(tokio::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// One answer of a node's console: its status code, its head (status line and headers),
/// its body.
pub struct ConsoleAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl ConsoleAnswer {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.eq_ignore_ascii_case(name)).then_some(v.trim())
        })
    }
}

/// Sends `request` (raw HTTP/1.1, `HOST` standing for the console's address) to node
/// `node`'s console over HTTPS as a browser would, presenting `role`'s client certificate
/// (or none), and reads the whole answer; an error where the console closed the connection
/// without answering.
pub async fn console_send(
    fed: &TestFederation,
    node: &str,
    role: Option<Role>,
    request: &str,
) -> Result<ConsoleAnswer> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = fed.node_dir(node);
    let addr = fed.node(node)?.addrs.console.context("no console")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&files::read(&dir.join("services-ca.pem"))?) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match role {
        None => builder.with_no_client_auth(),
        Some(role) => {
            let base = dir.join("clients").join(role.as_str());
            let chain = CertificateDer::pem_slice_iter(&files::read(&base.with_extension("pem"))?)
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(&files::read(&base.with_extension("key"))?)?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    tls.write_all(request.replace("HOST", &addr.to_string()).as_bytes())
        .await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.ok();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    Ok(ConsoleAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}
