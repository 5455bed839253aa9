//! Node configuration: one TOML file per node. Parsed with unknown keys refused (the error
//! names the key), relative paths resolved against the file's folder, then validated for
//! meaning (files exist, peers unique, reflection period at least 30 days).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use trm_core::ids::NodeId;

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub listen: ListenSection,
    pub tls: TlsSection,
    pub signing: SigningSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub statistics: StatisticsSection,
    #[serde(default)]
    pub tasks: TasksSection,
    #[serde(default)]
    pub log: LogSection,
    /// The peer directory.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// ISO 3166-1 alpha-2 code of the country running the node.
    pub id: NodeId,
    /// Human name, e.g. "Austria national focal point".
    #[serde(default)]
    pub name: String,
    /// Folder of the sled database.
    pub data_dir: PathBuf,
    /// The master key that wraps every data key (32 bytes, mode 0600); kept outside
    /// `data_dir` so a copy of the data alone reveals nothing.
    #[serde(default = "default_master_key")]
    pub master_key: PathBuf,
    /// The wrapped per-record data keys, outside `data_dir`: a backup of `data_dir` then
    /// holds ciphertext only, and an erased record stays erased in every copy of it.
    #[serde(default = "default_key_store")]
    pub key_store: PathBuf,
}

fn default_key_store() -> PathBuf {
    PathBuf::from("keys/data-keys.store")
}

fn default_master_key() -> PathBuf {
    PathBuf::from("keys/master.key")
}

/// Listen addresses, each `"host:port"`. The services, admin and metrics ports default to
/// loopback: exposing them is a deliberate act.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    #[serde(default = "default_services")]
    pub services: SocketAddr,
    #[serde(default = "default_federation")]
    pub federation: SocketAddr,
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    #[serde(default = "default_metrics")]
    pub metrics: SocketAddr,
    /// The browser console (HTTPS, the services port's certificate and client CA); none
    /// when absent.
    #[serde(default)]
    pub console: Option<SocketAddr>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
fn default_services() -> SocketAddr {
    loopback(7400)
}
fn default_federation() -> SocketAddr {
    loopback(7401)
}
fn default_admin() -> SocketAddr {
    loopback(7402)
}
fn default_metrics() -> SocketAddr {
    loopback(7403)
}

impl Default for ListenSection {
    fn default() -> Self {
        Self {
            services: default_services(),
            federation: default_federation(),
            admin: default_admin(),
            metrics: default_metrics(),
            console: None,
        }
    }
}

/// TLS material (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// This node's federation certificate (server and client auth, `trm://node/<ID>`).
    pub federation_cert: PathBuf,
    pub federation_key: PathBuf,
    /// The CA peers' federation certificates chain to.
    pub federation_ca: PathBuf,
    /// Server certificate of the services and admin ports.
    pub services_cert: PathBuf,
    pub services_key: PathBuf,
    /// The CA of local client certificates.
    pub client_ca: PathBuf,
    /// The client CA's private key: needed only by `trmctl client issue`.
    #[serde(default)]
    pub client_ca_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// The ed25519 signing key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Recovery and reflection period in days; never below 30 (CoE Convention art. 13).
    #[serde(default = "default_reflection")]
    pub reflection_period_days: u32,
    /// How old an inbound envelope may be, in days.
    #[serde(default = "default_replay_window")]
    pub replay_window_days: u32,
    /// How many days before a residence permit's `valid_until` it shows as a task, so that
    /// its renewal is asked for in time (DESIGN.md, "Cases over time").
    #[serde(default = "default_residence_notice")]
    pub residence_notice_days: u32,
}

fn default_reflection() -> u32 {
    30
}
fn default_residence_notice() -> u32 {
    30
}
fn default_replay_window() -> u32 {
    7
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            reflection_period_days: default_reflection(),
            replay_window_days: default_replay_window(),
            residence_notice_days: default_residence_notice(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Longest wait between two delivery attempts to one peer, in seconds.
    #[serde(default = "default_backoff_cap")]
    pub backoff_cap_secs: u64,
    /// How long one delivery attempt may take, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// The most envelopes in one batch to a peer.
    #[serde(default = "default_batch_envelopes")]
    pub batch_envelopes: usize,
    /// The most batches in flight to one peer (the peer applies them in order).
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
    /// With replicas (the PostgreSQL engine): how long the delivery lease lasts; another
    /// replica takes delivery over at most this long after its holder died.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// With replicas: how often the delivering replica looks for envelopes the others
    /// queued, and every replica for a change the others made to the peer directory or the
    /// revoked client certificates (milliseconds).
    #[serde(default = "default_replica_poll_ms")]
    pub replica_poll_ms: u64,
}

/// A minute: once a peer that was down is back, what waited for it leaves within a minute
/// (with ten, a peer down for an hour could wait ten more minutes for its backlog), and a
/// peer that stays down costs each sender one failed connection a minute.
fn default_backoff_cap() -> u64 {
    60
}
fn default_request_timeout() -> u64 {
    10
}
fn default_batch_envelopes() -> usize {
    64
}
fn default_lease_secs() -> u64 {
    5
}
fn default_replica_poll_ms() -> u64 {
    200
}
fn default_batches_in_flight() -> usize {
    4
}

impl Default for DeliverySection {
    fn default() -> Self {
        Self {
            backoff_cap_secs: default_backoff_cap(),
            request_timeout_secs: default_request_timeout(),
            batch_envelopes: default_batch_envelopes(),
            batches_in_flight: default_batches_in_flight(),
            lease_secs: default_lease_secs(),
            replica_poll_ms: default_replica_poll_ms(),
        }
    }
}

/// What the node logs and how. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (for people) or `json` (one object a line, for log collectors).
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter: `info`, `warn`, or per module (`info,trm_federation=debug`).
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// When the tasks of the work queue fall due, in hours from the arrival.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSection {
    /// An incoming referral.
    #[serde(default = "default_answer_referral")]
    pub answer_referral_hours: u32,
    /// An incoming referral whose needs are URGENT or EMERGENCY.
    #[serde(default = "default_urgent_referral")]
    pub urgent_referral_hours: u32,
    /// An incoming return request.
    #[serde(default = "default_answer_return")]
    pub answer_return_hours: u32,
    /// An incoming hearing request.
    #[serde(default = "default_answer_hearing")]
    pub answer_hearing_hours: u32,
}

fn default_answer_referral() -> u32 {
    48
}
fn default_urgent_referral() -> u32 {
    4
}
fn default_answer_return() -> u32 {
    72
}
fn default_answer_hearing() -> u32 {
    168
}

impl Default for TasksSection {
    fn default() -> Self {
        Self {
            answer_referral_hours: default_answer_referral(),
            urgent_referral_hours: default_urgent_referral(),
            answer_return_hours: default_answer_return(),
            answer_hearing_hours: default_answer_hearing(),
        }
    }
}

impl TasksSection {
    /// The due times the flows open tasks with.
    pub fn due_times(&self) -> trm_core::tasks::DueTimes {
        let hours = |h: u32| time::Duration::hours(i64::from(h));
        trm_core::tasks::DueTimes {
            answer_referral: hours(self.answer_referral_hours),
            answer_urgent_referral: hours(self.urgent_referral_hours),
            answer_return: hours(self.answer_return_hours),
            answer_hearing: hours(self.answer_hearing_hours),
        }
    }

    /// Each due time: at least an hour, at most a year.
    fn bounds(&self) -> [Bound; 4] {
        [
            (
                "tasks.answer_referral_hours",
                self.answer_referral_hours.into(),
                1,
                8760,
            ),
            (
                "tasks.urgent_referral_hours",
                self.urgent_referral_hours.into(),
                1,
                8760,
            ),
            (
                "tasks.answer_return_hours",
                self.answer_return_hours.into(),
                1,
                8760,
            ),
            (
                "tasks.answer_hearing_hours",
                self.answer_hearing_hours.into(),
                1,
                8760,
            ),
        ]
    }
}

/// Monitoring statistics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsSection {
    /// Cells counting fewer persons than this are suppressed (CTDC publishes none below
    /// 11; a node refuses to start below 5).
    #[serde(default = "default_min_cell_count")]
    pub min_cell_count: u64,
}

fn default_min_cell_count() -> u64 {
    trm_core::stats::DEFAULT_MIN_CELL_COUNT
}

impl Default for StatisticsSection {
    fn default() -> Self {
        Self {
            min_cell_count: default_min_cell_count(),
        }
    }
}

/// The storage engine and its key hierarchy.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `sled` (embedded, the default) or `postgres` (a database the node's replicas share).
    #[serde(default = "default_engine")]
    pub engine: String,
    /// With `postgres`: the database, e.g.
    /// `postgres://trm@db.example/trm?sslmode=verify-full` (prefer `url_file` when the URL
    /// carries a password). `sslmode` as libpq reads it; unset, `prefer` on a loopback host
    /// and `verify-full` on any other, where only `verify-full` and `verify-ca` are taken.
    #[serde(default)]
    pub url: Option<String>,
    /// With `postgres`: a file holding the URL (a secret mounted beside the config).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// With `postgres`: the PEM file of the CA that signed the PostgreSQL server's
    /// certificate; needed with `sslmode=verify-full` or `verify-ca`, and so for any host
    /// that is not loopback.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With `postgres`: the node's schema in that database (default `trm_<node id in lower
    /// case>`); replicas of one node name the same.
    #[serde(default)]
    pub schema: Option<String>,
    /// With `postgres`: connections kept for reads outside transactions.
    #[serde(default = "default_pg_readers")]
    pub readers: usize,
    /// Hours between rotations of the key-encryption key: older copies of the database
    /// (sled's log segments, copies of the folder) stop opening erased records within this
    /// bound.
    #[serde(default = "default_kek_rotation")]
    pub kek_rotation_hours: u32,
    /// Days a backup stays restorable (with the node's key file): its key is destroyed
    /// after, and it opens for no one.
    #[serde(default = "default_backup_retention")]
    pub backup_retention_days: u32,
    /// With `sled`: MiB the data folder's file system must keep free before a write is
    /// tried; below it writes are refused (UNAVAILABLE) until space returns, so sled never
    /// meets a full disk. Default: the smaller of 64 MiB and a sixteenth of the file system;
    /// `0`: no reserve (a full disk then fails a write inside sled, and the node takes no
    /// writes until it is restarted).
    #[serde(default)]
    pub min_free_mib: Option<u64>,
}

fn default_engine() -> String {
    "sled".into()
}
fn default_pg_readers() -> usize {
    4
}
fn default_kek_rotation() -> u32 {
    24
}
fn default_backup_retention() -> u32 {
    35
}

impl std::fmt::Debug for StorageSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry the database password.
        f.debug_struct("StorageSection")
            .field("engine", &self.engine)
            .field("url", &self.url.as_ref().map(|_| "(hidden)"))
            .field("url_file", &self.url_file)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .field("readers", &self.readers)
            .field("kek_rotation_hours", &self.kek_rotation_hours)
            .field("min_free_mib", &self.min_free_mib)
            .finish()
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            engine: default_engine(),
            url: None,
            url_file: None,
            ca_file: None,
            schema: None,
            readers: default_pg_readers(),
            kek_rotation_hours: default_kek_rotation(),
            backup_retention_days: default_backup_retention(),
            min_free_mib: None,
        }
    }
}

/// Bounds on what callers may take of the node (every port).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Connections open at once on each port, TLS handshakes included.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Established connections one client certificate (on the local ports) or one peer
    /// (on the federation port) may hold at once on each port: one caller cannot take every
    /// place of `max_connections`. Default: 64, or `max_connections` if lower (see
    /// [`LimitsSection::per_client`]).
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
    /// Seconds a client may take to finish the TLS handshake before it is disconnected.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Connections from one source address (an IPv4 address, or an IPv6 /64) still in
    /// their TLS handshake at once on each port: a further one is closed as soon as it is
    /// accepted, before any TLS work, so that stalled sockets from one address cannot take
    /// every place. Default: 64, or `max_connections` if lower (see
    /// [`LimitsSection::per_address`]). Behind a balancer that hides clients' addresses,
    /// every connection comes from its address: raise this to `max_connections`.
    #[serde(default)]
    pub max_handshakes_per_address: Option<usize>,
    /// Places of `max_connections` that connections still in their handshake may take only
    /// if they come from an address a caller completed a handshake from in the last day:
    /// stalled sockets from new addresses, however many, leave these to callers already
    /// known. Default: a quarter of `max_connections` (see [`LimitsSection::reserved`]).
    #[serde(default)]
    pub reserved_for_known_addresses: Option<usize>,
    /// Milliseconds a handshake may take while the port is under pressure (connections in
    /// their handshake hold half of the places new addresses may take, or more), instead
    /// of `handshake_timeout_secs`; handshakes already under way are held to it too.
    /// Default: 2000, or `handshake_timeout_secs` if shorter (see
    /// [`LimitsSection::pressure_timeout_ms`]).
    #[serde(default)]
    pub handshake_timeout_under_pressure_ms: Option<u64>,
    /// Concurrent requests (HTTP/2 streams) on one connection.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 keepalive pings to an idle connection.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval_secs: u64,
    /// Seconds to wait for a keepalive answer before the connection is closed.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_secs: u64,
    /// Sustained requests per second one client certificate may make (services, admin).
    #[serde(default = "default_client_rate")]
    pub client_requests_per_second: u32,
    /// Requests one client certificate may make at once above its sustained rate.
    #[serde(default = "default_client_burst")]
    pub client_burst: u32,
    /// Sustained requests per second one peer node may make (federation).
    #[serde(default = "default_peer_rate")]
    pub peer_requests_per_second: u32,
    /// Requests one peer may make at once above its sustained rate.
    #[serde(default = "default_peer_burst")]
    pub peer_burst: u32,
}

fn default_max_connections() -> usize {
    1024
}
/// Connections per caller when the configuration does not say.
const DEFAULT_PER_CLIENT: usize = 64;

/// Handshakes per address when the configuration does not say.
const DEFAULT_PER_ADDRESS: usize = 64;
/// The handshake timeout under pressure when the configuration does not say.
const DEFAULT_PRESSURE_TIMEOUT_MS: u64 = 2000;

impl LimitsSection {
    /// Established connections one caller may hold on each port.
    pub fn per_client(&self) -> usize {
        self.max_connections_per_client
            .unwrap_or(DEFAULT_PER_CLIENT.min(self.max_connections))
    }

    /// Connections one source address may hold in their handshake on each port.
    pub fn per_address(&self) -> usize {
        self.max_handshakes_per_address
            .unwrap_or(DEFAULT_PER_ADDRESS.min(self.max_connections))
    }

    /// Places kept for handshakes from addresses callers are known at.
    pub fn reserved(&self) -> usize {
        self.reserved_for_known_addresses
            .unwrap_or(self.max_connections / 4)
    }

    /// How long a handshake may take under pressure, in milliseconds.
    pub fn pressure_timeout_ms(&self) -> u64 {
        self.handshake_timeout_under_pressure_ms.unwrap_or(
            DEFAULT_PRESSURE_TIMEOUT_MS.min(self.handshake_timeout_secs.saturating_mul(1000)),
        )
    }
}

fn default_handshake_timeout() -> u64 {
    10
}
fn default_max_streams() -> u32 {
    64
}
fn default_keepalive_interval() -> u64 {
    30
}
fn default_keepalive_timeout() -> u64 {
    10
}
fn default_client_rate() -> u32 {
    200
}
fn default_client_burst() -> u32 {
    400
}
fn default_peer_rate() -> u32 {
    500
}
fn default_peer_burst() -> u32 {
    1000
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_client: None,
            handshake_timeout_secs: default_handshake_timeout(),
            max_handshakes_per_address: None,
            reserved_for_known_addresses: None,
            handshake_timeout_under_pressure_ms: None,
            max_concurrent_streams: default_max_streams(),
            keepalive_interval_secs: default_keepalive_interval(),
            keepalive_timeout_secs: default_keepalive_timeout(),
            client_requests_per_second: default_client_rate(),
            client_burst: default_client_burst(),
            peer_requests_per_second: default_peer_rate(),
            peer_burst: default_peer_burst(),
        }
    }
}

/// Refuses `value` outside `lo..=hi`, naming `key`.
fn bounded<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(invalid(key, format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

/// One peer of the directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub id: NodeId,
    /// `"host:port"` of the peer's federation port.
    pub endpoint: String,
    /// PEM file of the CA the peer's TLS certificate chains to.
    pub tls_ca: PathBuf,
    /// PEM files of the peer's ed25519 public signing keys.
    pub signing_keys: Vec<PathBuf>,
    /// Optional pin: lowercase hex SHA-256 of the peer's TLS certificate (DER).
    #[serde(default)]
    pub tls_pin_sha256: Option<String>,
}

/// Returns whether `pin` is 64 lowercase hex characters (a SHA-256).
pub fn valid_pin(pin: &str) -> bool {
    pin.len() == 64
        && pin
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A numeric setting with its bounds: its key, its value, the least and the most allowed.
type Bound = (&'static str, u64, u64, u64);

/// A count as a setting's value.
fn count(v: usize) -> u64 {
    v as u64
}

impl DeliverySection {
    /// The bounds of delivery: back-off, timeouts, batches and the replicas' lease.
    fn bounds(&self) -> [Bound; 6] {
        [
            (
                "delivery.backoff_cap_secs",
                self.backoff_cap_secs,
                1,
                86_400,
            ),
            (
                "delivery.request_timeout_secs",
                self.request_timeout_secs,
                1,
                600,
            ),
            // A peer takes at most 512 envelopes per batch and 16 requests in flight.
            (
                "delivery.batch_envelopes",
                count(self.batch_envelopes),
                1,
                512,
            ),
            (
                "delivery.batches_in_flight",
                count(self.batches_in_flight),
                1,
                8,
            ),
            ("delivery.lease_secs", self.lease_secs, 2, 300),
            ("delivery.replica_poll_ms", self.replica_poll_ms, 10, 60_000),
        ]
    }
}

impl LimitsSection {
    /// The bounds of the connections of a port: how many, per caller and per address, and
    /// how long a handshake may take.
    fn connection_bounds(&self) -> [Bound; 6] {
        let max = count(self.max_connections);
        [
            ("limits.max_connections", max, 1, 65_536),
            (
                "limits.max_connections_per_client",
                count(self.per_client()),
                1,
                max,
            ),
            (
                "limits.handshake_timeout_secs",
                self.handshake_timeout_secs,
                1,
                300,
            ),
            (
                "limits.max_handshakes_per_address",
                count(self.per_address()),
                1,
                max,
            ),
            // New addresses keep at least one place.
            (
                "limits.reserved_for_known_addresses",
                count(self.reserved()),
                0,
                max.saturating_sub(1),
            ),
            (
                "limits.handshake_timeout_under_pressure_ms",
                self.pressure_timeout_ms(),
                100,
                self.handshake_timeout_secs.saturating_mul(1000).max(100),
            ),
        ]
    }

    /// The bounds of the requests on a connection: streams, keepalive and request rates.
    fn request_bounds(&self) -> [Bound; 7] {
        [
            (
                "limits.max_concurrent_streams",
                self.max_concurrent_streams.into(),
                1,
                4096,
            ),
            (
                "limits.keepalive_interval_secs",
                self.keepalive_interval_secs,
                1,
                3600,
            ),
            (
                "limits.keepalive_timeout_secs",
                self.keepalive_timeout_secs,
                1,
                600,
            ),
            (
                "limits.client_requests_per_second",
                self.client_requests_per_second.into(),
                1,
                1_000_000,
            ),
            (
                "limits.client_burst",
                self.client_burst.into(),
                1,
                1_000_000,
            ),
            (
                "limits.peer_requests_per_second",
                self.peer_requests_per_second.into(),
                1,
                1_000_000,
            ),
            ("limits.peer_burst", self.peer_burst.into(), 1, 1_000_000),
        ]
    }
}

impl NodeConfig {
    /// Reads, resolves and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg = Self::load_unvalidated(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and resolves a configuration file without checking that its files exist (for
    /// the commands that create them).
    pub fn load_unvalidated(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        cfg.resolve(base);
        Ok(cfg)
    }

    /// Parses TOML text (no path resolution, no validation).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// Makes every relative path relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.node.data_dir);
        fix(&mut self.node.master_key);
        fix(&mut self.node.key_store);
        for p in [
            &mut self.tls.federation_cert,
            &mut self.tls.federation_key,
            &mut self.tls.federation_ca,
            &mut self.tls.services_cert,
            &mut self.tls.services_key,
            &mut self.tls.client_ca,
            &mut self.signing.key,
        ] {
            fix(p);
        }
        if let Some(p) = self.tls.client_ca_key.as_mut() {
            fix(p);
        }
        if let Some(p) = self.storage.url_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.storage.ca_file.as_mut() {
            fix(p);
        }
        for peer in &mut self.peers {
            fix(&mut peer.tls_ca);
            peer.signing_keys.iter_mut().for_each(fix);
        }
    }

    /// Checks meaning: files exist, peers unique and not this node, limits respected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.policy.reflection_period_days < 30 {
            return Err(invalid(
                "policy.reflection_period_days",
                "must be at least 30 (Council of Europe Convention art. 13)",
            ));
        }
        for (key, value, lo, hi) in self.bounds() {
            bounded(key, value, lo, hi)?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "log.level",
                "must be a tracing filter such as info, warn or info,trm_federation=debug",
            ));
        }
        self.validate_storage()?;
        if self.node.key_store.starts_with(&self.node.data_dir) {
            return Err(invalid(
                "node.key_store",
                "must be outside node.data_dir, so that copies of the data cannot open erased records",
            ));
        }
        let files = [
            ("tls.federation_cert", &self.tls.federation_cert),
            ("tls.federation_key", &self.tls.federation_key),
            ("tls.federation_ca", &self.tls.federation_ca),
            ("tls.services_cert", &self.tls.services_cert),
            ("tls.services_key", &self.tls.services_key),
            ("tls.client_ca", &self.tls.client_ca),
            ("signing.key", &self.signing.key),
            ("node.master_key", &self.node.master_key),
        ];
        for (key, path) in files {
            if !path.is_file() {
                return Err(invalid(
                    key,
                    format!("file {} does not exist", path.display()),
                ));
            }
        }
        self.validate_peers()
    }

    /// Every numeric setting with its bounds: below, nothing would work; above, a value
    /// would overflow a duration or stall the node.
    fn bounds(&self) -> Vec<Bound> {
        [
            &self.retention_bounds()[..],
            &self.delivery.bounds(),
            &[(
                "storage.kek_rotation_hours",
                self.storage.kek_rotation_hours.into(),
                1,
                24 * 30,
            )],
            &self.limits.connection_bounds(),
            &self.limits.request_bounds(),
            &self.tasks.bounds(),
        ]
        .concat()
    }

    /// The bounds of what the node keeps and publishes: the reflection period, the replay
    /// window, the notice before a residence permit ends and the smallest count a
    /// statistics cell shows.
    fn retention_bounds(&self) -> [Bound; 4] {
        [
            (
                "policy.reflection_period_days",
                self.policy.reflection_period_days.into(),
                30,
                3650,
            ),
            (
                "policy.replay_window_days",
                self.policy.replay_window_days.into(),
                1,
                90,
            ),
            (
                "policy.residence_notice_days",
                self.policy.residence_notice_days.into(),
                1,
                365,
            ),
            (
                "statistics.min_cell_count",
                self.statistics.min_cell_count,
                trm_core::stats::MIN_CELL_COUNT_FLOOR,
                1000,
            ),
        ]
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        match s.engine.as_str() {
            "sled" => {
                if s.url.is_some() || s.url_file.is_some() || s.schema.is_some() {
                    return Err(invalid(
                        "storage.url",
                        "url, url_file and schema are settings of engine = \"postgres\"",
                    ));
                }
                if s.ca_file.is_some() {
                    return Err(invalid(
                        "storage.ca_file",
                        "a setting of engine = \"postgres\"",
                    ));
                }
            }
            "postgres" => {
                match (&s.url, &s.url_file) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "storage.url_file",
                            "give url or url_file, not both",
                        ))
                    }
                    (None, None) => {
                        return Err(invalid(
                            "storage.url",
                            "engine = \"postgres\" needs url or url_file",
                        ))
                    }
                    (None, Some(f)) if !f.is_file() => {
                        return Err(invalid(
                            "storage.url_file",
                            format!("{} is not a readable file", f.display()),
                        ))
                    }
                    _ => {}
                }
                if !trm_store::engine::postgres::valid_schema(&self.pg_schema()) {
                    return Err(invalid(
                        "storage.schema",
                        "lower-case letters, digits and _, starting with a letter, at most 63",
                    ));
                }
                if !(1..=64).contains(&s.readers) {
                    return Err(invalid("storage.readers", "must be 1 to 64"));
                }
                // The URL and the CA as the engine will take them: a host off this machine
                // without its certificate verified, or a CA file that does not hold one,
                // stops the node here.
                use trm_store::engine::postgres::tls::SettingError as Setting;
                let (key, url) = storage_url(self)?;
                trm_store::engine::postgres::tls::Connector::new(&url, s.ca_file.as_deref())
                    .map_err(|e| match e {
                        Setting::Url(problem) => invalid(key, problem),
                        Setting::CaFile(problem) => invalid("storage.ca_file", problem),
                    })?;
            }
            _ => {
                return Err(invalid(
                    "storage.engine",
                    "must be \"sled\" or \"postgres\"",
                ))
            }
        }
        Ok(())
    }

    /// The node's PostgreSQL schema: `storage.schema`, else `trm_<id in lower case>`.
    pub fn pg_schema(&self) -> String {
        self.storage
            .schema
            .clone()
            .unwrap_or_else(|| format!("trm_{}", self.node.id.as_str().to_ascii_lowercase()))
    }

    fn validate_peers(&self) -> Result<(), ConfigError> {
        let mut seen = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            if peer.id == self.node.id {
                return Err(invalid(&format!("{key}.id"), "a node is not its own peer"));
            }
            if seen.contains(&peer.id) {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("peer {} listed twice", peer.id),
                ));
            }
            seen.push(peer.id);
            if !peer.endpoint.contains(':') {
                return Err(invalid(&format!("{key}.endpoint"), "must be host:port"));
            }
            if peer
                .tls_pin_sha256
                .as_deref()
                .is_some_and(|p| !valid_pin(p))
            {
                return Err(invalid(
                    &format!("{key}.tls_pin_sha256"),
                    "must be 64 lowercase hex characters",
                ));
            }
            if peer.signing_keys.is_empty() {
                return Err(invalid(
                    &format!("{key}.signing_keys"),
                    "at least one key is required",
                ));
            }
            for p in std::iter::once(&peer.tls_ca).chain(&peer.signing_keys) {
                if !p.is_file() {
                    return Err(invalid(
                        &key,
                        format!("file {} does not exist", p.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Returns the PostgreSQL URL of `config` (reading `storage.url_file`) and the key it
/// came from.
fn storage_url(config: &NodeConfig) -> Result<(&'static str, String), ConfigError> {
    let s = &config.storage;
    match (&s.url, &s.url_file) {
        (Some(u), _) => Ok(("storage.url", u.clone())),
        (None, Some(f)) => Ok((
            "storage.url_file",
            std::fs::read_to_string(f)
                .map_err(|source| ConfigError::Read {
                    path: f.display().to_string(),
                    source,
                })?
                .trim()
                .to_owned(),
        )),
        (None, None) => Err(invalid(
            "storage.url",
            "engine = \"postgres\" needs url or url_file",
        )),
    }
}

/// Returns the store's engine settings of `config` (reading `storage.url_file`).
pub fn engine_options(config: &NodeConfig) -> Result<trm_store::EngineOptions, ConfigError> {
    let s = &config.storage;
    if s.engine != "postgres" {
        return Ok(trm_store::EngineOptions::Sled(
            trm_store::engine::sled::SledOptions {
                min_free_bytes: s.min_free_mib.map(|m| m.saturating_mul(1 << 20)),
                ..Default::default()
            },
        ));
    }
    let (_, url) = storage_url(config)?;
    Ok(trm_store::EngineOptions::Postgres(
        trm_store::engine::postgres::PostgresOptions {
            url,
            ca_file: s.ca_file.clone(),
            schema: config.pg_schema(),
            readers: s.readers,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `node.toml` of a Kubernetes manifest's ConfigMap.
    fn manifest_config(manifest: &str) -> String {
        manifest
            .lines()
            .skip_while(|l| l.trim() != "node.toml: |")
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| l.get(4..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_deployment_manifests_configs_parse_with_every_key_known() {
        for manifest in [
            include_str!("../../../deploy/kubernetes/trm-node.yaml"),
            include_str!("../../../deploy/kubernetes/trm-node-replicas.yaml"),
        ] {
            let text = manifest_config(manifest);
            assert!(text.contains("[node]"), "{text}");
            let cfg = NodeConfig::parse(&text).unwrap();
            assert_eq!(cfg.node.id.as_str(), "AT");
        }
        let replicas = NodeConfig::parse(&manifest_config(include_str!(
            "../../../deploy/kubernetes/trm-node-replicas.yaml"
        )))
        .unwrap();
        assert_eq!(replicas.storage.engine, "postgres");
        assert_eq!(replicas.pg_schema(), "trm_at");
    }

    #[test]
    fn a_printed_configuration_holds_no_database_password() {
        let cfg = NodeConfig::parse(&format!(
            "{MINIMAL}\n[storage]\nengine = \"postgres\"\nurl = \"postgres://trm:s3cret@localhost/trm\"\n"
        ))
        .unwrap();
        let printed = format!("{cfg:?}");
        assert!(
            printed.contains("StorageSection") && !printed.contains("s3cret"),
            "{printed}"
        );
    }

    #[test]
    fn the_replicas_manifest_reaches_postgresql_with_its_certificate_verified() {
        let manifest = include_str!("../../../deploy/kubernetes/trm-node-replicas.yaml");
        // The URL the manifest tells the operator to put in the secret trm-at-postgres.
        let url = manifest
            .lines()
            .find_map(|l| l.split("--from-literal=url='").nth(1))
            .and_then(|rest| rest.split('\'').next())
            .unwrap();
        let mut cfg = NodeConfig::parse(&manifest_config(manifest)).unwrap();
        assert_eq!(
            cfg.storage.ca_file.as_deref(),
            Some(Path::new("/etc/trm/postgres-ca/ca.crt"))
        );
        // The secrets as the pod mounts them, here in a folder of the test's.
        let dir = tempfile::tempdir().unwrap();
        let (url_file, ca_file) = (dir.path().join("url"), dir.path().join("ca.crt"));
        std::fs::write(&url_file, url).unwrap();
        let ca = trm_crypto::pki::Authority::generate("trm-pg ca").unwrap();
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        cfg.storage.url_file = Some(url_file);
        cfg.storage.ca_file = Some(ca_file);
        cfg.validate_storage().unwrap();
    }

    const MINIMAL: &str = r#"
[node]
id = "AT"
data_dir = "data"
[tls]
federation_cert = "a"
federation_key = "a"
federation_ca = "a"
services_cert = "a"
services_key = "a"
client_ca = "a"
[signing]
key = "a"
"#;

    #[test]
    fn defaults_are_safe() {
        let cfg = NodeConfig::parse(MINIMAL).unwrap();
        assert_eq!(cfg.policy.reflection_period_days, 30);
        assert_eq!(cfg.policy.residence_notice_days, 30);
        assert!(cfg.listen.services.ip().is_loopback());
        assert!(cfg.listen.admin.ip().is_loopback());
        assert!(cfg.listen.metrics.ip().is_loopback());
        assert_eq!(cfg.delivery.backoff_cap_secs, 60);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            NodeConfig::parse(&format!("{MINIMAL}\n[policy]\nreflection_days = 10\n")).unwrap_err();
        assert!(err.contains("reflection_days"), "{err}");
    }

    #[test]
    fn the_documented_example_parses() {
        let cfg = NodeConfig::parse(include_str!("../../../node-config/AT.toml")).unwrap();
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.node.id.as_str(), "AT");
    }

    /// The example says it documents every key with its default: where it sets a section
    /// of defaults, the values are the defaults, or whoever copies it gets others.
    #[test]
    fn the_documented_example_shows_the_defaults() {
        let cfg = NodeConfig::parse(include_str!("../../../node-config/AT.toml")).unwrap();
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        };
        same(&cfg.policy, &PolicySection::default());
        same(&cfg.delivery, &DeliverySection::default());
        same(&cfg.tasks, &TasksSection::default());
        same(&cfg.statistics, &StatisticsSection::default());
        // `[limits]` writes out what its unset keys derive from `max_connections`.
    }

    #[test]
    fn the_key_store_must_live_outside_the_data_dir() {
        let mut cfg = NodeConfig::parse(MINIMAL).unwrap();
        cfg.resolve(Path::new("/srv/trm"));
        assert_eq!(
            cfg.node.key_store,
            Path::new("/srv/trm/keys/data-keys.store")
        );
        cfg.node.key_store = cfg.node.data_dir.join("keys.store");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("node.key_store"), "{err}");
    }

    #[test]
    fn values_that_would_overflow_or_stall_are_refused_naming_the_key() {
        type Change = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "policy.replay_window_days",
                Box::new(|c| c.policy.replay_window_days = 1_000_000_000),
            ),
            (
                "policy.reflection_period_days",
                Box::new(|c| c.policy.reflection_period_days = u32::MAX),
            ),
            (
                "policy.residence_notice_days",
                Box::new(|c| c.policy.residence_notice_days = 0),
            ),
            (
                "policy.residence_notice_days",
                Box::new(|c| c.policy.residence_notice_days = 366),
            ),
            (
                "tasks.urgent_referral_hours",
                Box::new(|c| c.tasks.urgent_referral_hours = 0),
            ),
            (
                "delivery.request_timeout_secs",
                Box::new(|c| c.delivery.request_timeout_secs = 0),
            ),
            (
                "delivery.backoff_cap_secs",
                Box::new(|c| c.delivery.backoff_cap_secs = u64::MAX),
            ),
            (
                "delivery.batch_envelopes",
                Box::new(|c| c.delivery.batch_envelopes = 513),
            ),
            (
                "statistics.min_cell_count",
                Box::new(|c| c.statistics.min_cell_count = 4),
            ),
            ("log.format", Box::new(|c| c.log.format = "xml".into())),
            ("log.level", Box::new(|c| c.log.level = "info,[=".into())),
            (
                "delivery.batches_in_flight",
                Box::new(|c| c.delivery.batches_in_flight = 0),
            ),
            (
                "limits.max_connections_per_client",
                Box::new(|c| {
                    c.limits.max_connections_per_client = Some(c.limits.max_connections + 1)
                }),
            ),
            (
                "limits.handshake_timeout_secs",
                Box::new(|c| c.limits.handshake_timeout_secs = 0),
            ),
            (
                "limits.handshake_timeout_secs",
                Box::new(|c| c.limits.handshake_timeout_secs = u64::MAX),
            ),
            (
                "limits.max_handshakes_per_address",
                Box::new(|c| c.limits.max_handshakes_per_address = Some(0)),
            ),
            (
                "limits.reserved_for_known_addresses",
                Box::new(|c| {
                    c.limits.reserved_for_known_addresses = Some(c.limits.max_connections)
                }),
            ),
            (
                "limits.handshake_timeout_under_pressure_ms",
                Box::new(|c| {
                    c.limits.handshake_timeout_under_pressure_ms =
                        Some(c.limits.handshake_timeout_secs * 1000 + 1)
                }),
            ),
        ];
        for (key, change) in cases {
            let mut cfg = NodeConfig::parse(MINIMAL).unwrap();
            change(&mut cfg);
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_node_with_few_connections_gives_each_caller_at_most_all_of_them() {
        // A configuration written before the per-caller limit existed still starts.
        let cfg =
            NodeConfig::parse(&format!("{MINIMAL}\n[limits]\nmax_connections = 16\n")).unwrap();
        // (Its made-up files fail later checks; the limits pass.)
        let checked = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(checked.starts_with("tls."), "{checked}");
        assert_eq!(cfg.limits.per_client(), 16);
        assert_eq!(cfg.limits.per_address(), 16);
        assert_eq!(cfg.limits.reserved(), 4);
        let defaults = NodeConfig::parse(MINIMAL).unwrap().limits;
        assert_eq!(
            (
                defaults.per_client(),
                defaults.per_address(),
                defaults.reserved(),
                defaults.pressure_timeout_ms()
            ),
            (64, 64, 256, 2000)
        );
        let cfg = NodeConfig::parse(&format!(
            "{MINIMAL}\n[limits]\nmax_connections = 16\nmax_connections_per_client = 17\n"
        ))
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("limits.max_connections_per_client"),
            "{err}"
        );
    }

    /// The storage error of MINIMAL with `storage` as its `[storage]` section, loaded from
    /// a file in `dir` (relative paths resolved there); `None` when storage passes (the
    /// made-up TLS files then fail).
    fn storage_error(dir: &Path, storage: &str) -> Option<String> {
        let path = dir.join("node.toml");
        std::fs::write(&path, format!("{MINIMAL}\n[storage]\n{storage}\n")).unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        (!err.starts_with("tls.")).then_some(err)
    }

    #[test]
    fn a_postgresql_host_off_this_machine_needs_its_certificate_verified_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = trm_crypto::pki::Authority::generate("postgresql ca").unwrap();
        std::fs::write(dir.path().join("pg-ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("not-a-ca.pem"), "trm").unwrap();
        let pg = "engine = \"postgres\"";
        for mode in ["disable", "prefer", "require"] {
            let err = storage_error(
                dir.path(),
                &format!("{pg}\nurl = \"postgres://trm:s3cret@db.example/trm?sslmode={mode}\""),
            )
            .unwrap();
            assert!(
                err.starts_with(&format!("storage.url: sslmode={mode} does not verify")),
                "{err}"
            );
            assert!(
                err.contains("verify-full") && !err.contains("s3cret"),
                "{err}"
            );
        }
        std::fs::write(
            dir.path().join("pg.url"),
            "postgres://trm@db.example/trm?sslmode=require\n",
        )
        .unwrap();
        let err = storage_error(dir.path(), &format!("{pg}\nurl_file = \"pg.url\"")).unwrap();
        assert!(
            err.starts_with("storage.url_file: sslmode=require"),
            "{err}"
        );
        // Unset: verify-full off loopback, which needs the CA.
        let remote = format!("{pg}\nurl = \"postgres://trm@db.example/trm\"");
        let err = storage_error(dir.path(), &remote).unwrap();
        assert!(err.starts_with("storage.ca_file: missing"), "{err}");
        let err = storage_error(dir.path(), &format!("{remote}\nca_file = \"not-a-ca.pem\""));
        let err = err.unwrap();
        assert!(
            err.starts_with("storage.ca_file: ") && err.contains("no PEM"),
            "{err}"
        );
        let err = storage_error(dir.path(), &format!("{remote}\nca_file = \"missing.pem\""));
        assert!(err.unwrap().starts_with("storage.ca_file: "));
        // Verified, the CA beside the config: storage passes.
        for url in [
            "postgres://trm@db.example/trm",
            "postgres://trm@db.example/trm?sslmode=verify-full",
            "postgres://trm@db.example/trm?sslmode=verify-ca",
        ] {
            let verified = format!("{pg}\nurl = \"{url}\"\nca_file = \"pg-ca.pem\"");
            assert_eq!(storage_error(dir.path(), &verified), None, "{url}");
        }
        // Loopback: libpq's modes, the default prefer.
        for url in [
            "postgres://root@127.0.0.1:5432/test",
            "postgres://root@localhost/test?sslmode=disable",
            "postgres://root@[::1]/test?sslmode=require",
        ] {
            let local = format!("{pg}\nurl = \"{url}\"");
            assert_eq!(storage_error(dir.path(), &local), None, "{url}");
        }
        let err = storage_error(dir.path(), "ca_file = \"pg-ca.pem\"").unwrap();
        assert!(err.starts_with("storage.ca_file: "), "sled: {err}");
    }

    #[test]
    fn reflection_period_below_30_days_is_refused() {
        let mut cfg = NodeConfig::parse(MINIMAL).unwrap();
        cfg.policy.reflection_period_days = 29;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("policy.reflection_period_days"), "{err}");
    }
}
