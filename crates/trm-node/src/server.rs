//! Wiring: load the node's keys and peers, open the store, start the delivery worker and the
//! four ports from already-bound listeners, and stop everything on a shutdown future with a
//! grace period, flushing the store on the way out.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info, warn};
use trm_core::limits::{MAX_BATCH, MAX_LOCAL_REQUEST};
use trm_crypto::{
    aead::SecretKey,
    files,
    signing::{Signer, SigningIdentity},
};
use trm_federation::directory::DirectoryChanges;
use trm_federation::{
    inbound::InboundConfig, Delivery, DeliveryConfig, FederationServer, Peer, PeerDirectory,
    PeerKey,
};
use trm_proto::v1::{
    admin_service_server::AdminServiceServer, federation_service_server::FederationServiceServer,
    referral_service_server::ReferralServiceServer,
    return_planning_service_server::ReturnPlanningServiceServer,
    witness_hearing_service_server::WitnessHearingServiceServer, FILE_DESCRIPTOR_SET,
};
use trm_store::{Store, TreeName};

/// Key of the operator's peer-directory changes in the meta tree.
pub const DIRECTORY_CHANGES: &[u8] = b"directory_changes";

use crate::{
    admin::Admin,
    config::{ListenSection, NodeConfig},
    ctx::Ctx,
    flows::Flows,
    hearing::Hearings,
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
    #[error("storage: {0}")]
    Store(#[from] trm_store::StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("a server task failed: {0}")]
    Task(String),
}

/// The node's four listening sockets, bound before the node starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub services: TcpListener,
    pub federation: TcpListener,
    pub admin: TcpListener,
    pub metrics: TcpListener,
}

/// The addresses a node listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub services: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
}

impl Listeners {
    /// Binds the addresses of a `[listen]` section.
    pub async fn bind(listen: &ListenSection) -> std::io::Result<Self> {
        Ok(Self {
            services: TcpListener::bind(listen.services).await?,
            federation: TcpListener::bind(listen.federation).await?,
            admin: TcpListener::bind(listen.admin).await?,
            metrics: TcpListener::bind(listen.metrics).await?,
        })
    }

    /// Returns the bound addresses.
    pub fn addrs(&self) -> std::io::Result<Addrs> {
        Ok(Addrs {
            services: self.services.local_addr()?,
            federation: self.federation.local_addr()?,
            admin: self.admin.local_addr()?,
            metrics: self.metrics.local_addr()?,
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
    Ok(PeerDirectory::new(peers))
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Periodic upkeep until shutdown: forgets inbound message ids older than twice the replay
/// window (at start, then hourly).
async fn housekeeping(store: Store, replay_window: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let before = time::OffsetDateTime::now_utc() - 2 * replay_window;
        match trm_federation::inbound::prune_inbox(&store, before) {
            Ok(0) => {}
            Ok(n) => info!(forgotten = n, "old inbound message ids pruned"),
            Err(e) => warn!(error = %e, "cannot prune the inbox"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let node = config.node.id;
    let identity = Arc::new(Signer::new(SigningIdentity::load(&config.signing.key)?));
    let master = SecretKey::load(&config.node.master_key)?;
    let store = Store::open(&config.node.data_dir, &config.node.key_store, master)?;
    let directory = load_directory(&config)?;
    if let Some(changes) = store.get_json::<DirectoryChanges>(TreeName::Meta, DIRECTORY_CHANGES)? {
        directory.apply(&changes)?;
    }
    let directory = Arc::new(directory);
    let tls = &config.tls;
    let fed_cert = files::read_text(&tls.federation_cert)?;
    let fed_key = files::read_text(&tls.federation_key)?;
    let mut fed_roots = files::read_text(&tls.federation_ca)?;
    for peer in directory.all() {
        if !fed_roots.contains(peer.tls_ca_pem.trim()) {
            fed_roots.push('\n');
            fed_roots.push_str(&peer.tls_ca_pem);
        }
    }
    let services_identity = Identity::from_pem(
        files::read(&tls.services_cert)?,
        files::read(&tls.services_key)?,
    );
    let client_ca = Certificate::from_pem(files::read(&tls.client_ca)?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let counters = Arc::new(trm_federation::Counters::default());
    let replay_window =
        std::time::Duration::from_secs(u64::from(config.policy.replay_window_days) * 86_400);
    let handler = Arc::new(Flows {
        id: node,
        identity: identity.clone(),
        directory: directory.clone(),
    });
    let delivery = Delivery::start(
        DeliveryConfig {
            node,
            replay_window,
            backoff_cap: Duration::from_secs(config.delivery.backoff_cap_secs),
            request_timeout: Duration::from_secs(config.delivery.request_timeout_secs),
            tls_cert_pem: fed_cert.clone(),
            tls_key_pem: fed_key.clone(),
        },
        store.clone(),
        identity.clone(),
        counters.clone(),
        directory.clone(),
        handler.clone(),
        stop_rx.clone(),
    );
    let ctx = Ctx {
        id: node,
        store: store.clone(),
        identity: identity.clone(),
        directory: directory.clone(),
        delivery: delivery.clone(),
        reflection_period_days: config.policy.reflection_period_days,
        counters: counters.clone(),
        signing_key_path: config.signing.key.clone(),
        replay_window_days: config.policy.replay_window_days,
    };
    let mut inbound = InboundConfig::new(node);
    inbound.replay_window = time::Duration::days(i64::from(config.policy.replay_window_days));

    let federation = FederationServiceServer::new(FederationServer::new(
        inbound,
        identity,
        directory,
        store.clone(),
        handler,
        delivery.clone(),
        counters.clone(),
    ))
    .max_decoding_message_size(MAX_BATCH + FRAMING);
    let fed_server = Server::builder()
        .tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&fed_cert, &fed_key))
                .client_ca_root(Certificate::from_pem(fed_roots)),
        )?
        .add_service(federation)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.federation),
            shutdown_signal(stop_rx.clone()),
        );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ReferralServiceServer<Referrals>>()
        .await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1 for current tools, v1alpha for the many clients that still only speak it.
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let local_tls = ServerTlsConfig::new()
        .identity(services_identity)
        .client_ca_root(client_ca);
    let services_server = Server::builder()
        .tls_config(local_tls.clone())?
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
        .add_service(health_service.clone())
        .add_service(reflection_v1.clone())
        .add_service(reflection_v1alpha.clone())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.services),
            shutdown_signal(stop_rx.clone()),
        );
    let admin_server = Server::builder()
        .tls_config(local_tls)?
        .add_service(
            AdminServiceServer::new(Admin::new(ctx.clone()))
                .max_decoding_message_size(MAX_LOCAL_REQUEST),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.admin),
            shutdown_signal(stop_rx.clone()),
        );
    let metrics_server = axum::serve(listeners.metrics, metrics::router(ctx))
        .with_graceful_shutdown(shutdown_signal(stop_rx.clone()));

    let housekeeping = tokio::spawn(housekeeping(store.clone(), replay_window, stop_rx.clone()));
    let tasks: Vec<(&str, JoinHandle<Result<(), String>>)> = vec![
        (
            "federation",
            tokio::spawn(async move { fed_server.await.map_err(|e| e.to_string()) }),
        ),
        (
            "services",
            tokio::spawn(async move { services_server.await.map_err(|e| e.to_string()) }),
        ),
        (
            "admin",
            tokio::spawn(async move { admin_server.await.map_err(|e| e.to_string()) }),
        ),
        (
            "metrics",
            tokio::spawn(async move { metrics_server.await.map_err(|e| e.to_string()) }),
        ),
    ];
    info!(node = %node, "node running");
    shutdown.await;
    info!(node = %node, "shutting down");
    let _ = stop_tx.send(true);
    let mut failure = None;
    // One grace period for all servers; whatever still runs then is stopped, so that no
    // request is served (and no port held) after the node has stopped.
    let deadline = tokio::time::Instant::now() + GRACE;
    for (name, mut task) in tasks {
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
    delivery.stopped().await;
    let _ = housekeeping.await;
    store.close()?;
    info!(node = %node, "stopped");
    failure.map_or(Ok(()), Err)
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
        let addrs = listeners.addrs()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let id = config.node.id;
        let task = tokio::spawn(run(config, listeners, async move {
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
