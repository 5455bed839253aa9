//! Wiring, in three steps as linkerd2-proxy's main does: [`build`] loads the node's keys,
//! peers and store; [`Built::spawn`] starts the delivery worker and the four ports from
//! already-bound listeners; [`Running::drain`] stops everything on shutdown with one grace
//! period, flushing the store on the way out.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::{
    service::{Routes, RoutesBuilder},
    transport::Server,
};
use tonic_health::{
    pb::health_server::{Health, HealthServer},
    ServingStatus,
};
use tracing::{error, info, warn};
use trm_core::limits::{MAX_BATCH, MAX_LOCAL_REQUEST};
use trm_crypto::{
    aead::SecretKey,
    files,
    signing::{Signer, SigningIdentity},
};
use trm_federation::{
    inbound::InboundConfig, refusals::RefusalLog, Delivery, DeliveryConfig, FederationServer, Peer,
    PeerDirectory, PeerKey,
};
use trm_proto::v1::{
    admin_service_server::AdminServiceServer, federation_service_server::FederationServiceServer,
    referral_service_server::ReferralServiceServer, remedies_service_server::RemediesServiceServer,
    return_planning_service_server::ReturnPlanningServiceServer,
    safety_service_server::SafetyServiceServer,
    witness_hearing_service_server::WitnessHearingServiceServer,
    work_service_server::WorkServiceServer, FILE_DESCRIPTOR_SET,
};
use trm_store::{engine::sled::SledOptions, EngineOptions, Store, StoreOptions};

use crate::{
    admin::Admin,
    config::{ListenSection, NodeConfig},
    ctx::Ctx,
    flows::Flows,
    gate::{CallerKey, Gate, GateCounters, RateLimits, Revocations},
    hearing::Hearings,
    listen::{self, AcceptLimits},
    metrics,
    referral::Referrals,
    returns::Returns,
};

/// How long in-flight requests may take to finish after shutdown is asked for.
const GRACE: Duration = Duration::from_secs(10);
/// Room for the protobuf framing around the largest allowed payload.
const FRAMING: usize = 64 * 1024;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("keys: {0}")]
    Crypto(#[from] trm_crypto::CryptoError),
    #[error(transparent)]
    Rotation(#[from] trm_federation::keys::RecoverError),
    #[error("storage: {0}")]
    Store(#[from] trm_store::StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("peer directory: {0}")]
    Directory(#[from] trm_federation::directory::DirectoryError),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("a server task failed: {0}")]
    Task(String),
    #[error("cannot listen on {addr} (listen.{key}): {source}")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The node's four listening sockets, bound before the node starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub services: TcpListener,
    pub federation: TcpListener,
    pub admin: TcpListener,
    pub metrics: TcpListener,
    /// The browser console, when `[listen] console` is set.
    pub console: Option<TcpListener>,
}

/// The addresses a node listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub services: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub console: Option<SocketAddr>,
}

impl Listeners {
    /// Binds the addresses of a `[listen]` section; an address that cannot be bound (in use,
    /// not of this host, a privileged port) is refused naming its key and address.
    pub async fn bind(listen: &ListenSection) -> Result<Self, NodeError> {
        async fn one(key: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
            TcpListener::bind(addr).await.map_err(|source| {
                let source = if source.kind() == std::io::ErrorKind::AddrInUse {
                    std::io::Error::new(
                        source.kind(),
                        "address already in use (another node, or another program, listens there)",
                    )
                } else {
                    source
                };
                NodeError::Listen { key, addr, source }
            })
        }
        Ok(Self {
            services: one("services", listen.services).await?,
            federation: one("federation", listen.federation).await?,
            admin: one("admin", listen.admin).await?,
            metrics: one("metrics", listen.metrics).await?,
            console: match listen.console {
                Some(addr) => Some(one("console", addr).await?),
                None => None,
            },
        })
    }

    /// Returns the bound addresses.
    pub fn addrs(&self) -> std::io::Result<Addrs> {
        Ok(Addrs {
            services: self.services.local_addr()?,
            federation: self.federation.local_addr()?,
            admin: self.admin.local_addr()?,
            metrics: self.metrics.local_addr()?,
            console: self.console.as_ref().map(|c| c.local_addr()).transpose()?,
        })
    }
}

/// Reads the peer directory of the configuration.
pub fn load_directory(config: &NodeConfig) -> Result<PeerDirectory, NodeError> {
    let mut peers = Vec::new();
    for p in &config.peers {
        let keys = p
            .signing_keys
            .iter()
            .map(|path| {
                trm_crypto::signing::public_from_pem(&files::read_text(path)?).map(PeerKey::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        peers.push(Peer {
            id: p.id,
            endpoint: p.endpoint.clone(),
            tls_ca_pem: files::read_text(&p.tls_ca)?,
            tls_pin: p.tls_pin_sha256.clone(),
            keys,
        });
    }
    Ok(PeerDirectory::new(peers)?)
}

/// Takes node.toml's `[[peers]]` into the peer directory the store keeps, by one rule: the
/// store's directory is the node's one peer directory, changed by `trmctl peer`; a
/// `[[peers]]` entry only introduces a node the directory has never held (neither as a peer
/// nor as a node an operator removed), as if an operator had added it (audited, actor
/// `node.toml`). Entries for nodes the directory already holds are not read: where one
/// differs from the directory, or names a removed node, a warning says so and which command
/// changes the directory.
pub async fn seed_directory(config: &NodeConfig, store: &Store) -> Result<(), NodeError> {
    let configured = load_directory(config)?.all();
    let changes = store.directory_changes()?;
    let mut new = Vec::new();
    for peer in configured {
        if changes.removed.contains(&peer.id) {
            warn!(
                peer = %peer.id,
                "node.toml lists a peer an operator removed: it stays removed (`trmctl peer add` \
                 takes it back); delete its [[peers]] entry"
            );
            continue;
        }
        match changes.upserted.iter().find(|p| p.id == peer.id) {
            Some(held) => {
                let differs = directory_differences(&peer, held);
                if !differs.is_empty() {
                    warn!(
                        peer = %peer.id,
                        differs = %differs.join(","),
                        "node.toml's [[peers]] entry differs from the peer directory, which holds \
                         (see `trmctl peer list`): change the directory with `trmctl peer update`, \
                         and node.toml to match"
                    );
                }
            }
            None => new.push(
                trm_federation::directory::stored_from_peer(&peer)
                    .map_err(|e| NodeError::Tls(e.to_string()))?,
            ),
        }
    }
    if new.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = new.iter().map(|p| p.id.to_string()).collect();
    store
        .commit::<(), (), _>(move |tx| {
            for p in &new {
                trm_federation::directory::record_change(tx, "node.toml", p.id, Some(p.clone()))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Store(e.into_store()))?;
    info!(peers = %ids.join(","), "peers of node.toml taken into the peer directory");
    Ok(())
}

/// Returns what of `configured` the directory's `held` entry does not match (field names).
fn directory_differences(
    configured: &Peer,
    held: &trm_federation::directory::StoredPeer,
) -> Vec<&'static str> {
    let mut differs = Vec::new();
    if configured.endpoint != held.endpoint {
        differs.push("endpoint");
    }
    if configured.tls_ca_pem.trim() != held.tls_ca_pem.trim() {
        differs.push("tls_ca");
    }
    if configured.tls_pin != held.tls_pin {
        differs.push("tls_pin_sha256");
    }
    let held_keys: Vec<String> = held
        .keys
        .iter()
        .filter_map(|k| trm_federation::directory::key_from_stored(k).ok())
        .map(|k| k.key_id)
        .collect();
    if configured
        .keys
        .iter()
        .any(|k| !held_keys.contains(&k.key_id))
    {
        differs.push("signing_keys");
    }
    differs
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Periodic upkeep until shutdown: forgets inbound message ids older than twice the replay
/// window and request ids older than a day, and rotates the key-encryption key when due (at
/// start, then hourly; among replicas, only the one that delivers does this, the others
/// look again every window); writes the aggregate entries of refusal floods (every window,
/// and once more on the way out).
async fn housekeeping(
    store: Store,
    delivery: Delivery,
    refusals: Arc<RefusalLog>,
    replay_window: Duration,
    kek_rotation: Duration,
    backup_retention: time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        let due = last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
        if due && delivery.is_active() {
            let before = time::OffsetDateTime::now_utc() - 2 * replay_window;
            match trm_federation::inbound::prune_inbox(&store, before).await {
                Ok(0) => {}
                Ok(n) => info!(forgotten = n, "old inbound message ids pruned"),
                Err(e) => warn!(error = %e, "cannot prune the inbox"),
            }
            let day_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(24);
            match store.prune_requests(day_ago).await {
                Ok(0) => {}
                Ok(n) => info!(forgotten = n, "request ids older than a day forgotten"),
                Err(e) => warn!(error = %e, "cannot forget old request ids"),
            }
            match store.rotate_kek_if_due(kek_rotation.as_secs() as i64).await {
                Ok(true) | Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot rotate the key-encryption key"),
            }
            if let Err(e) = store.expire_backups(backup_retention) {
                warn!(error = %e, "cannot destroy the keys of expired backups");
            }
            match store.expire_drafts().await {
                Ok(0) => {}
                Ok(n) => info!(destroyed = n, "drafts past keeping destroyed"),
                Err(e) => warn!(error = %e, "cannot destroy drafts past keeping"),
            }
            last_prune = Some(tokio::time::Instant::now());
        }
        if let Err(e) = refusals.flush(false).await {
            warn!(error = %e, "cannot audit a flood of refusals");
        }
        if let Err(e) = store.anchor_audit_head() {
            warn!(error = %e, "cannot anchor the signed audit head");
        }
        let stopping = tokio::select! {
            _ = tokio::time::sleep(trm_federation::refusals::WINDOW) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            if let Err(e) = refusals.flush(true).await {
                warn!(error = %e, "cannot audit a flood of refusals");
            }
            return;
        }
    }
}

fn tls_error(e: impl std::fmt::Display) -> NodeError {
    NodeError::Tls(e.to_string())
}

/// Reads a PEM certificate chain and its private key.
fn cert_and_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NodeError> {
    let chain = CertificateDer::pem_slice_iter(&files::read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NodeError::Tls(format!("{}: not a PEM certificate", cert.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&files::read(key)?)
        .map_err(|_| NodeError::Tls(format!("{}: not a PEM private key", key.display())))?;
    Ok((chain, key))
}

/// Returns a TLS server configuration presenting `cert`/`key` and verifying clients with
/// `verifier`, speaking `alpn` (HTTP/2 for gRPC, HTTP/1.1 for browsers).
fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    let (chain, key) = cert_and_key(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Returns the verifier of local client certificates: the node's client CA. Revoked
/// certificates pass the handshake and are refused at every request (see [`crate::gate`]).
/// With `optional` (the console), a client without a certificate completes the handshake
/// too, and is told how to get one.
fn client_verifier(
    client_ca: &std::path::Path,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, NodeError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&files::read(client_ca)?) {
        roots.add(c.map_err(tls_error)?).map_err(tls_error)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match optional {
        true => builder.allow_unauthenticated(),
        false => builder,
    };
    builder.build().map_err(tls_error)
}

/// What a node is built with besides its configuration (tests inject faults here).
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Run before each sync of the durable point; an error fails it (fault injection).
    pub sync_hook: Option<trm_store::engine::sled::SyncHook>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("sync_hook", &self.sync_hook.is_some())
            .finish()
    }
}

/// Sets the gRPC health of every service of a node (and of the node as a whole, "").
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health
        .set_service_status(
            <ReferralServiceServer<Referrals> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <AdminServiceServer<Admin> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// Marks every service of a node NOT_SERVING for gRPC health checking.
async fn not_serving(health: &tonic_health::server::HealthReporter) {
    set_health(health, ServingStatus::NotServing).await;
}

/// A node whose state is loaded, ready to serve.
pub struct Built {
    config: NodeConfig,
    ctx: Ctx,
    store: Store,
    delivery: Delivery,
    federation: FederationServer,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    federation_tls: Arc<rustls::ServerConfig>,
    local_tls: Arc<rustls::ServerConfig>,
    gates: GateCounters,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("node", &self.ctx.id)
            .finish_non_exhaustive()
    }
}

/// Loads everything a node needs before it listens: keys (finishing a rotation a crash
/// interrupted), the store, the peer directory with the operator's changes and the keys
/// peers announced, revoked client certificates, TLS configurations, the delivery worker.
pub async fn build(config: NodeConfig, options: NodeOptions) -> Result<Built, NodeError> {
    let node = config.node.id;
    check_secret_files(&config)?;
    let store = open_store(&config, options).await?;
    let identity = load_identity(&config)?;
    store.sign_audit_head_with(identity.clone()).await?;
    let directory = load_peers(&config, &store).await?;
    let revocations = Arc::new(Revocations::new(&store.revoked_clients()?));
    let tls = &config.tls;
    let federation_tls = server_tls(
        &tls.federation_cert,
        &tls.federation_key,
        directory.client_verifier(),
        b"h2",
    )?;
    let local_tls = server_tls(
        &tls.services_cert,
        &tls.services_key,
        client_verifier(&tls.client_ca, false)?,
        b"h2",
    )?;

    let (stop, stopped) = watch::channel(false);
    let counters = Arc::new(trm_federation::Counters::default());
    let handler = Arc::new(Flows {
        id: node,
        identity: identity.clone(),
        due: config.tasks.due_times(),
        directory: directory.clone(),
        replay_window: time::Duration::days(i64::from(config.policy.replay_window_days)),
    });
    let delivery = Delivery::start(
        delivery_config(&config, &store)?,
        store.clone(),
        identity.clone(),
        counters.clone(),
        directory.clone(),
        handler.clone(),
        stopped.clone(),
    );
    let ctx = Ctx {
        id: node,
        store: store.clone(),
        identity,
        directory,
        delivery: delivery.clone(),
        reflection_period_days: config.policy.reflection_period_days,
        residence_notice_days: config.policy.residence_notice_days,
        counters,
        signing_key_path: config.signing.key.clone(),
        replay_window_days: config.policy.replay_window_days,
        revocations,
        min_cell_count: config.statistics.min_cell_count,
        expiries: expiries(&config),
        client_issuers: client_issuers(&tls.client_ca)?,
        backup_retention: time::Duration::days(i64::from(config.storage.backup_retention_days)),
        stopped: stopped.clone(),
        watchers: Arc::default(),
    };
    let federation = federation_server(&config, &ctx, handler);
    Ok(Built {
        config,
        ctx,
        store,
        delivery,
        federation,
        stop,
        stopped,
        federation_tls,
        local_tls,
        gates: GateCounters::default(),
    })
}

/// Refuses to start with a secret key file that other accounts of the machine may read or
/// write (copied with `cp` or `scp` defaults: 0644), naming its key in the configuration:
/// the node's master key, signing key and TLS keys are for the node's account (and, at
/// most, its group: a mounted secret's 0440).
fn check_secret_files(config: &NodeConfig) -> Result<(), NodeError> {
    #[cfg(unix)]
    for (key, path) in [
        ("node.master_key", &config.node.master_key),
        ("signing.key", &config.signing.key),
        ("tls.federation_key", &config.tls.federation_key),
        ("tls.services_key", &config.tls.services_key),
    ] {
        use std::os::unix::fs::PermissionsExt;
        // A file that cannot be read is named by its loader.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(NodeError::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{key} {} can be read or written by other accounts (mode {:o}): make it \
                     the node's alone (chmod 0600) and start again",
                    path.display(),
                    mode & 0o777
                ),
            )));
        }
    }
    Ok(())
}

/// Opens the store (finishing a key rotation a crash interrupted). Opening reads the disk
/// or waits for the database (and counts the outbox): on a thread for blocking work, so
/// that nothing else of the process waits meanwhile.
async fn open_store(config: &NodeConfig, options: NodeOptions) -> Result<Store, NodeError> {
    let store_options = StoreOptions {
        node: config.node.id,
        data_dir: config.node.data_dir.clone(),
        key_store: config.node.key_store.clone(),
        master: SecretKey::load(&config.node.master_key)?,
        engine: match crate::config::engine_options(config)? {
            EngineOptions::Sled(sled) => EngineOptions::Sled(SledOptions {
                sync_hook: options.sync_hook,
                ..sled
            }),
            pg => pg,
        },
    };
    let signing_key = config.signing.key.clone();
    tokio::task::spawn_blocking(move || -> Result<Store, NodeError> {
        let store = Store::open(store_options)?;
        trm_federation::keys::recover_rotation(&store, &signing_key)?;
        Ok(store)
    })
    .await
    .map_err(|e| NodeError::Task(format!("opening the store: {e}")))?
}

/// Loads the node's signing key. The file peers are given always holds the key that signs
/// (a rotation that a crash interrupted, or a file copied from elsewhere, is corrected
/// here).
fn load_identity(config: &NodeConfig) -> Result<Arc<Signer>, NodeError> {
    let identity = Arc::new(Signer::new(SigningIdentity::load(&config.signing.key)?));
    match trm_federation::keys::publish_public(&config.signing.key, &identity.current()) {
        Ok(true) => info!(
            key_id = identity.current().key_id(),
            "public signing key file rewritten"
        ),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot write the public signing key file"),
    }
    Ok(identity)
}

/// Returns the peer directory: node.toml's new peers taken in, then the operator's changes
/// and the keys peers announced.
async fn load_peers(config: &NodeConfig, store: &Store) -> Result<Arc<PeerDirectory>, NodeError> {
    seed_directory(config, store).await?;
    let changes = store.directory_changes()?;
    // A removed node that node.toml still lists keeps its trust anchor among the removed
    // ones, so that its connections get through the handshake to be refused
    // PERMISSION_DENIED (for good) rather than fail like a network fault (retried).
    let removed_configured = load_directory(config)?
        .all()
        .into_iter()
        .filter(|p| changes.removed.contains(&p.id));
    let directory = PeerDirectory::new(removed_configured)?;
    directory.apply(&changes, &store.learned_keys()?)?;
    Ok(Arc::new(directory))
}

/// Returns the settings of the delivery worker: `[delivery]`, the replay window, the
/// federation certificate it presents, and how often it looks for work (often when
/// replicas share the queues).
fn delivery_config(config: &NodeConfig, store: &Store) -> Result<DeliveryConfig, NodeError> {
    let d = &config.delivery;
    Ok(DeliveryConfig {
        node: config.node.id,
        replay_window: Duration::from_secs(u64::from(config.policy.replay_window_days) * 86_400),
        backoff_cap: Duration::from_secs(d.backoff_cap_secs),
        request_timeout: Duration::from_secs(d.request_timeout_secs),
        batch_envelopes: d.batch_envelopes,
        batches_in_flight: d.batches_in_flight,
        tls_cert_pem: files::read_text(&config.tls.federation_cert)?,
        tls_key_pem: files::read_text(&config.tls.federation_key)?,
        idle_poll: if store.shared_by_replicas() {
            Duration::from_millis(d.replica_poll_ms)
        } else {
            Duration::from_secs(30)
        },
    })
}

/// Returns the federation service: envelopes from peers, checked against the replay
/// window and handed to `handler`.
fn federation_server(config: &NodeConfig, ctx: &Ctx, handler: Arc<Flows>) -> FederationServer {
    let mut inbound = InboundConfig::new(ctx.id);
    inbound.replay_window = time::Duration::days(i64::from(config.policy.replay_window_days));
    FederationServer::new(
        inbound,
        ctx.identity.clone(),
        ctx.directory.clone(),
        ctx.store.clone(),
        handler,
        ctx.delivery.clone(),
        ctx.counters.clone(),
    )
}

/// Returns the ids of the client CAs in `client_ca` (who issues the node's clients).
fn client_issuers(client_ca: &std::path::Path) -> Result<Vec<String>, NodeError> {
    Ok(CertificateDer::pem_slice_iter(&files::read(client_ca)?)
        .filter_map(|c| c.ok())
        .filter_map(|c| trm_crypto::pki::subject_id(c.as_ref()))
        .collect())
}

/// Returns when each of the node's certificates expires (`None`: unreadable).
fn expiries(config: &NodeConfig) -> Vec<(String, Option<time::OffsetDateTime>)> {
    let t = &config.tls;
    [
        ("federation certificate", &t.federation_cert),
        ("federation CA", &t.federation_ca),
        ("services certificate", &t.services_cert),
        ("client CA", &t.client_ca),
    ]
    .into_iter()
    .map(|(name, path)| {
        let not_after = files::read_text(path)
            .ok()
            .and_then(|pem| trm_crypto::pki::first_der(&pem).ok())
            .and_then(|der| trm_crypto::pki::not_after(&der));
        (name.to_owned(), not_after)
    })
    .collect()
}

/// How often the gRPC health follows a disk that is full or read-only, and back.
const STORAGE_CHECK: Duration = Duration::from_secs(1);

/// Keeps the gRPC health of the node in step with its store: NOT_SERVING for good once a
/// durable point has failed, and NOT_SERVING while the data folder is full or read-only
/// (SERVING again as soon as it takes writes).
fn latch_health(store: &Store, health: tonic_health::server::HealthReporter) -> JoinHandle<()> {
    let mut failure = store.watch_failure();
    let store = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORAGE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refusing = false;
        loop {
            tokio::select! {
                changed = failure.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            if store.failure().is_some() {
                not_serving(&health).await;
                return;
            }
            let now = store.write_fault().is_some();
            if now != refusing {
                refusing = now;
                let status = if now {
                    ServingStatus::NotServing
                } else {
                    ServingStatus::Serving
                };
                set_health(&health, status).await;
            }
        }
    })
}

/// A server task of one port, named for the logs.
type ServerTask = (&'static str, JoinHandle<Result<(), String>>);

/// Runs the server of port `name` as a task.
fn serve<F, E>(name: &'static str, server: F) -> ServerTask
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    (
        name,
        tokio::spawn(async move { server.await.map_err(|e| e.to_string()) }),
    )
}

/// Serves the browser console on `listener`: the services port's certificate, the node's
/// client CA (a certificate is asked for, not required: a browser without one is told how
/// to get one), its accept limits and its callers' request rate (`gate`).
fn console_server(
    config: &NodeConfig,
    ctx: &Ctx,
    listener: tokio::net::TcpListener,
    (limits, gate): (AcceptLimits, Arc<Gate>),
    stopped: watch::Receiver<bool>,
) -> Result<
    (
        impl Future<Output = Result<(), std::convert::Infallible>> + Send + 'static,
        JoinHandle<()>,
    ),
    NodeError,
> {
    let tls = &config.tls;
    let tls = server_tls(
        &tls.services_cert,
        &tls.services_key,
        client_verifier(&tls.client_ca, true)?,
        b"http/1.1",
    )?;
    let local = listener.local_addr()?;
    let header_deadline = limits.handshake_timeout;
    // The same accept limits as the services port: a connection cap, handshake deadlines,
    // places per certificate and per address.
    let (incoming, acceptor) = listen::incoming(
        listener,
        tls,
        limits,
        CallerKey::ClientCertificate,
        stopped.clone(),
    );
    // The same request rate per certificate as the services port, counted together.
    let app = crate::console::router(ctx.clone(), gate);
    let server = crate::console::serve((incoming, local), app, header_deadline, stopped);
    Ok((server, acceptor))
}

/// A running node: its server tasks, to drain on shutdown.
pub struct Running {
    node: trm_core::ids::NodeId,
    health: tonic_health::server::HealthReporter,
    health_task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    tasks: Vec<ServerTask>,
    acceptors: Vec<JoinHandle<()>>,
    housekeeping: JoinHandle<()>,
    /// Holds the delivery lease among the node's replicas (shared database only).
    replica: Option<JoinHandle<()>>,
    delivery: Delivery,
    store: Store,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Built {
    /// Returns a tonic server with the node's connection limits.
    fn server(&self) -> Server {
        let l = &self.config.limits;
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(l.keepalive_interval_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(l.keepalive_timeout_secs)))
            .max_concurrent_streams(Some(l.max_concurrent_streams))
            .http2_max_pending_accept_reset_streams(Some(64))
    }

    fn gate(&self, key: CallerKey) -> Arc<Gate> {
        let l = &self.config.limits;
        let (limits, revocations) = match key {
            CallerKey::ClientCertificate => (
                RateLimits {
                    per_second: l.client_requests_per_second,
                    burst: l.client_burst,
                },
                Some(self.ctx.revocations.clone()),
            ),
            CallerKey::PeerNode => (
                RateLimits {
                    per_second: l.peer_requests_per_second,
                    burst: l.peer_burst,
                },
                None,
            ),
        };
        Arc::new(Gate::new(limits, key, revocations, &self.gates))
    }

    /// Returns the bounds on the connections of every port.
    fn accept_limits(&self) -> AcceptLimits {
        let l = &self.config.limits;
        AcceptLimits {
            max_connections: l.max_connections,
            max_connections_per_client: l.per_client(),
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
            max_handshakes_per_address: l.per_address(),
            reserved_for_known_addresses: l.reserved(),
            pressure_timeout: Duration::from_millis(l.pressure_timeout_ms()),
        }
    }

    /// Prepares the gRPC port of `listener`: connections accepted under the node's limits
    /// with `tls` (the accepting task joins `acceptors`), callers counted by `key` and every
    /// request counted in `requests` and passed through `gate`.
    fn port(
        &self,
        listener: TcpListener,
        tls: &Arc<rustls::ServerConfig>,
        key: CallerKey,
        gate: Arc<Gate>,
        requests: &metrics::CountRequests,
        acceptors: &mut Vec<JoinHandle<()>>,
    ) -> Port {
        let (incoming, task) = listen::incoming(
            listener,
            tls.clone(),
            self.accept_limits(),
            key,
            self.stopped.clone(),
        );
        acceptors.push(task);
        Port {
            server: self.server(),
            requests: requests.clone(),
            gate,
            incoming,
            stopped: self.stopped.clone(),
        }
    }

    /// Prepares the three gRPC ports: federation (peers, under the peers' gate), services
    /// and admin (clients, under one gate: a client's rate counts across both). Returns
    /// them with the tasks that accept their connections.
    fn grpc_ports(
        &self,
        federation: TcpListener,
        services: TcpListener,
        admin: TcpListener,
        requests: &metrics::CountRequests,
    ) -> (Port, Port, Port, Vec<JoinHandle<()>>, Arc<Gate>) {
        let client_gate = self.gate(CallerKey::ClientCertificate);
        let console_gate = client_gate.clone();
        let mut acceptors = Vec::new();
        let fed_port = self.port(
            federation,
            &self.federation_tls,
            CallerKey::PeerNode,
            self.gate(CallerKey::PeerNode),
            requests,
            &mut acceptors,
        );
        let services_port = self.port(
            services,
            &self.local_tls,
            CallerKey::ClientCertificate,
            client_gate.clone(),
            requests,
            &mut acceptors,
        );
        let admin_port = self.port(
            admin,
            &self.local_tls,
            CallerKey::ClientCertificate,
            client_gate,
            requests,
            &mut acceptors,
        );
        (fed_port, services_port, admin_port, acceptors, console_gate)
    }

    /// Starts the housekeeping and the four ports on `listeners`.
    pub async fn spawn(self, listeners: Listeners) -> Result<Running, NodeError> {
        let addrs = listeners.addrs()?;
        let requests = metrics::CountRequests(Arc::default());
        let (fed_port, services_port, admin_port, acceptors, client_gate) = self.grpc_ports(
            listeners.federation,
            listeners.services,
            listeners.admin,
            &requests,
        );
        let console_limits = self.accept_limits();
        let (config, ctx, store, stopped) = (self.config, self.ctx, self.store, self.stopped);
        // Erasures a restore found asked for after its backup are asked for again first.
        crate::erasure::resume_requests(&ctx).await?;
        let refusals = self.federation.refusal_log();
        let fed_server = fed_port.serve_federation(self.federation);

        let (health, health_service) = tonic_health::server::health_reporter();
        let introspection = introspection(health_service.clone())?;
        set_health(&health, ServingStatus::Serving).await;
        let health_task = latch_health(&store, health.clone());
        let services_server = services_port.serve(services_routes(&ctx, introspection.clone()));
        let admin_server = admin_port.serve(admin_routes(&ctx, introspection));
        let metrics_server = axum::serve(
            listeners.metrics,
            metrics::router(ctx.clone(), self.gates, requests.0.clone(), health_service),
        )
        .with_graceful_shutdown(shutdown_signal(stopped.clone()));

        let mut acceptors = acceptors;
        let console = match listeners.console {
            Some(listener) => {
                let (server, acceptor) = console_server(
                    &config,
                    &ctx,
                    listener,
                    (console_limits, client_gate),
                    stopped.clone(),
                )?;
                acceptors.push(acceptor);
                Some(server)
            }
            None => None,
        };
        // Logged before any port answers: an operator (or a test) who got an answer reads
        // this line in the log already.
        info!(
            node = %ctx.id,
            services = %addrs.services,
            federation = %addrs.federation,
            admin = %addrs.admin,
            metrics = %addrs.metrics,
            console = ?addrs.console,
            "node running: listening"
        );
        let replica = start_replica(&config, &ctx, &stopped);
        let housekeeping = start_housekeeping(&config, &ctx, refusals, stopped);
        let mut tasks = vec![
            serve("federation", fed_server),
            serve("services", services_server),
            serve("admin", admin_server),
            serve(
                "metrics",
                std::future::IntoFuture::into_future(metrics_server),
            ),
        ];
        tasks.extend(console.map(|server| serve("console", server)));
        Ok(Running {
            node: ctx.id,
            health,
            health_task,
            stop: self.stop,
            tasks,
            acceptors,
            housekeeping,
            replica,
            delivery: self.delivery,
            store,
        })
    }
}

/// A gRPC port about to be served: a server with the node's connection limits, the count
/// of requests, the gate every request passes, the established connections and the signal
/// to stop.
struct Port {
    server: Server,
    requests: metrics::CountRequests,
    gate: Arc<Gate>,
    incoming: listen::Incoming,
    stopped: watch::Receiver<bool>,
}

impl Port {
    /// Serves `routes` on a local port: every request counted, then passed through the gate
    /// (a revoked certificate, a caller over its rate, is refused).
    fn serve(
        self,
        routes: Routes,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static {
        let gate = self.gate;
        self.server
            .layer(self.requests)
            .layer(tonic::service::InterceptorLayer::new(
                move |r: tonic::Request<()>| gate.check(&r).map(|()| r),
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(self.incoming, shutdown_signal(self.stopped))
    }

    /// Serves the federation service to peers: every request counted, then prechecked (a
    /// removed or unknown peer is refused before any work), then passed through the gate.
    fn serve_federation(
        self,
        federation: FederationServer,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static {
        let (gate, precheck) = (self.gate, federation.precheck());
        let federation =
            FederationServiceServer::new(federation).max_decoding_message_size(MAX_BATCH + FRAMING);
        self.server
            .layer(self.requests)
            .layer(tonic::service::InterceptorLayer::new(
                move |r: tonic::Request<()>| {
                    precheck.check(&r)?;
                    gate.check(&r).map(|()| r)
                },
            ))
            .add_service(federation)
            .serve_with_incoming_shutdown(self.incoming, shutdown_signal(self.stopped))
    }
}

/// The services both local ports answer besides their own: gRPC health, and reflection
/// (v1 for current tools, v1alpha for the many clients that still only speak it).
fn introspection(health: HealthServer<impl Health>) -> Result<RoutesBuilder, NodeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(routes)
}

/// The routes of the services port: referrals, return planning, witness hearings and the
/// work queue, with
/// `introspection`.
fn services_routes(ctx: &Ctx, mut introspection: RoutesBuilder) -> Routes {
    introspection
        .add_service(
            ReferralServiceServer::new(Referrals::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        )
        .add_service(
            ReturnPlanningServiceServer::new(Returns::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        )
        .add_service(
            WitnessHearingServiceServer::new(Hearings::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        )
        .add_service(
            SafetyServiceServer::new(crate::safety::Safety::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        )
        .add_service(
            RemediesServiceServer::new(crate::remedies::Remedies::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        )
        .add_service(
            WorkServiceServer::new(crate::work::Work::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        );
    introspection.routes()
}

/// The routes of the admin port: the admin service, with `introspection`.
fn admin_routes(ctx: &Ctx, mut introspection: RoutesBuilder) -> Routes {
    introspection.add_service(
        AdminServiceServer::new(Admin::new(ctx.clone()))
            .max_decoding_message_size(MAX_LOCAL_REQUEST),
    );
    introspection.routes()
}

/// Starts the periodic upkeep of the node (see [`housekeeping`]).
fn start_housekeeping(
    config: &NodeConfig,
    ctx: &Ctx,
    refusals: Arc<RefusalLog>,
    stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(housekeeping(
        ctx.store.clone(),
        ctx.delivery.clone(),
        refusals,
        Duration::from_secs(u64::from(config.policy.replay_window_days) * 86_400),
        Duration::from_secs(u64::from(config.storage.kek_rotation_hours) * 3600),
        ctx.backup_retention,
        stopped,
    ))
}

/// Starts the task that holds the delivery lease among the node's replicas, when they
/// share a database; until the lease says so, this replica does not deliver.
fn start_replica(
    config: &NodeConfig,
    ctx: &Ctx,
    stopped: &watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !ctx.store.shared_by_replicas() {
        return None;
    }
    let replica = tokio::spawn(
        crate::replicas::Replica {
            store: ctx.store.clone(),
            delivery: ctx.delivery.clone(),
            directory: ctx.directory.clone(),
            revocations: ctx.revocations.clone(),
            lease: Duration::from_secs(config.delivery.lease_secs),
            poll: Duration::from_millis(config.delivery.replica_poll_ms),
        }
        .run(stopped.clone()),
    );
    // Until the lease says this replica delivers.
    ctx.delivery.set_active(false);
    Some(replica)
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within one grace period (whatever
    /// still runs then is stopped, so that no request is served and no port held after the
    /// node has stopped), stops the delivery worker and flushes the store.
    pub async fn drain(self) -> Result<(), NodeError> {
        info!(node = %self.node, "shutting down");
        // Load balancers and probes see the node leave before its ports close. The task that
        // follows the store's health goes first, so that it cannot turn a service back to
        // SERVING while the node drains.
        self.health_task.abort();
        let _ = self.health_task.await;
        not_serving(&self.health).await;
        let _ = self.stop.send(true);
        let mut failure = None;
        let deadline = tokio::time::Instant::now() + GRACE;
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    error!(server = name, error = %e, "server stopped with an error");
                    failure = Some(NodeError::Task(format!("{name}: {e}")));
                }
                Ok(Err(e)) => failure = Some(NodeError::Task(format!("{name}: {e}"))),
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    warn!(server = name, "grace period over; connections dropped");
                }
            }
        }
        for a in self.acceptors {
            a.abort();
            let _ = a.await;
        }
        self.delivery.stopped().await;
        if let Some(r) = self.replica {
            let _ = r.await;
        }
        let _ = self.housekeeping.await;
        self.store.close()?;
        info!(node = %self.node, "stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_with(config, NodeOptions::default(), listeners, shutdown).await
}

/// Same as [`run`], with `options`.
pub async fn run_with(
    config: NodeConfig,
    options: NodeOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let running = build(config, options).await?.spawn(listeners).await?;
    shutdown.await;
    running.drain().await
}

/// A node running in this process (tests, the sandbox).
#[derive(Debug)]
pub struct NodeHandle {
    pub id: trm_core::ids::NodeId,
    pub addrs: Addrs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl NodeHandle {
    /// Starts a node on already-bound listeners.
    pub fn spawn(config: NodeConfig, listeners: Listeners) -> Result<Self, NodeError> {
        Self::spawn_with(config, NodeOptions::default(), listeners)
    }

    /// Starts a node with `options` on already-bound listeners.
    pub fn spawn_with(
        config: NodeConfig,
        options: NodeOptions,
        listeners: Listeners,
    ) -> Result<Self, NodeError> {
        let addrs = listeners.addrs()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let id = config.node.id;
        let task = tokio::spawn(run_with(config, options, listeners, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            id,
            addrs,
            stop: Some(tx),
            task,
        })
    }

    /// Stops the node and waits for it.
    pub async fn stop(mut self) -> Result<(), NodeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .map_err(|e| NodeError::Task(e.to_string()))?
    }
}
