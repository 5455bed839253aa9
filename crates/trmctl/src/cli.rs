//! The `trmctl` command line: parsing and printing; each command's work is in the library's
//! modules.

use std::path::PathBuf;

use crate as trmctl;
use crate::sandbox::{self, InitOutcome, NodeSpec};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use trm_core::ids::{NodeId, OrgId, Role};

#[derive(Debug, Parser)]
#[command(name = "trmctl", version, about = "Operate TRM federation nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local federation of sandbox nodes on loopback.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// A production node's folder.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Local client certificates.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The node's health, each peer probed now (reachable, latency, queue), dead letters,
    /// and when its certificates expire.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// The node's peer directory (changes take effect at once and survive restarts).
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Envelopes waiting for delivery, and the dead letters.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// A node's own keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Writes a consistent backup of the running node into a folder on its host (the
    /// store and its key file with a manifest of digests; never the master key).
    Backup {
        #[command(flatten)]
        admin: AdminArgs,
        /// The folder to write (new or empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restores a backup into a stopped node, then destroys again everything erased since
    /// (the erasure journal beside the key store).
    Restore {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The backup folder.
        #[arg(long)]
        from: PathBuf,
        /// Replace the node's existing data.
        #[arg(long)]
        force: bool,
    },
    /// Monitoring statistics (counts that expose no one).
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
enum StatsCommand {
    /// Prints the node's signed report of a closed period of whole months, after verifying
    /// its signature. The export is audited.
    Export {
        #[command(flatten)]
        admin: AdminArgs,
        /// First day of the period: the 1st of a month (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// The day after the period: the 1st of a later month, not after the 1st of this one.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Also trust this public key (PEM) for the signature.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Adds the JSON reports of several nodes for one period together (each signature
    /// verified against the keys of the node in --config and its peers, or --key), and
    /// suppresses small cells of the sums again.
    Merge {
        /// A node configuration whose own and peers' keys are trusted.
        #[arg(long)]
        config: PathBuf,
        /// Also trust this public key (PEM).
        #[arg(long)]
        key: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Reports written by `trmctl stats export --format json`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

/// How to reach a node's admin port.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The node's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Operator certificate prefix (PREFIX.pem, PREFIX.key); default: clients/operator
    /// beside the config, as in the sandbox.
    #[arg(long)]
    client: Option<PathBuf>,
    /// CA of the node's admin server certificate; default: services-ca.pem beside the config.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// A peer as the operator gives it.
#[derive(Debug, clap::Args)]
struct PeerArgs {
    /// The peer's node id (ISO 3166-1 alpha-2).
    #[arg(long)]
    node_id: String,
    /// host:port of the peer's federation port.
    #[arg(long)]
    endpoint: String,
    /// PEM file of the CA the peer's federation certificate chains to.
    #[arg(long)]
    tls_ca: PathBuf,
    /// PEM file of a signing public key of the peer (repeat for several).
    #[arg(long = "signing-key", required = true)]
    keys: Vec<PathBuf>,
    /// SHA-256 of the peer's federation certificate (64 lower-case hex), to pin it.
    #[arg(long)]
    pin: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Lists the peers with their endpoints and keys.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adds a peer (refused if it is one already).
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Changes a peer's endpoint, CA, keys or pin (refused if it is not a peer).
    Update {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Removes a peer: nothing is sent to it or accepted from it any more.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        node_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Lists queued envelopes (kind, attempts, last error; never their contents).
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this peer's.
        #[arg(long)]
        peer: Option<String>,
        /// Only the dead letters.
        #[arg(long)]
        dead: bool,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queues a dead letter again (same message id, signed anew).
    Retry {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        message_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Writes a new node's folder: node.toml with every key and its default, signing and
    /// master keys, a client CA with an operator certificate, and either self-signed TLS
    /// certificates or signing requests for your PKI. Never overwrites a node.
    Init {
        /// The folder to write.
        #[arg(long)]
        dir: PathBuf,
        /// The country's ISO 3166-1 alpha-2 code.
        #[arg(long)]
        id: NodeId,
        /// A name for people, e.g. "Austria national focal point".
        #[arg(long)]
        name: String,
        /// A host name or address the node is reached at (repeat for several).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where the federation port listens.
        #[arg(long, default_value = "0.0.0.0:7401")]
        federation_listen: String,
        /// Write keys and certificate signing requests instead of self-signed certificates.
        #[arg(long)]
        csr: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates the signing key and master key named in the config if missing (mode 0600);
    /// never overwrites one.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Rotates the running node's signing key: the new key is announced to every peer, the
    /// old one keeps verifying what it signed for the overlap (at least the replay window).
    Rotate {
        #[command(flatten)]
        admin: AdminArgs,
        /// Days the old key stays listed.
        #[arg(long, default_value_t = 0)]
        overlap_days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies the hash chain and the head the node signed; exits non-zero if any entry
    /// was modified, reordered, removed or the chain recomputed.
    Verify {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Writes the audit chain (ids, actions, outcomes; no personal data) and the node's
    /// signed head as JSON lines, after checking the signature.
    Export {
        #[command(flatten)]
        admin: AdminArgs,
        /// File to write; standard output when omitted.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Writes node configs, keys and certificates for every node.
    Init {
        #[arg(long, default_value = "sandbox")]
        dir: PathBuf,
        /// Comma-separated node ids (ISO 3166-1 alpha-2).
        #[arg(long, default_value = "AT,RO,NG", value_delimiter = ',')]
        nodes: Vec<NodeId>,
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        /// Overwrite existing node folders.
        #[arg(long)]
        force: bool,
        /// For containers of one network (deploy/compose.yaml): every node listens on all
        /// addresses on ports 7400-7403 and is reached by its lower-case id.
        #[arg(long)]
        compose: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Runs every node of the sandbox (initialising it if needed) until Ctrl-C; with
    /// --scenario, plays the story through the public API and exits.
    Up {
        #[arg(long, default_value = "sandbox")]
        dir: PathBuf,
        #[arg(long)]
        scenario: bool,
        /// The store of a sandbox initialised by this command.
        #[command(flatten)]
        storage: StorageArgs,
    },
}

/// Where a sandbox's nodes keep their stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StorageKind {
    /// Embedded, in each node's data/ folder.
    Sled,
    /// One PostgreSQL database (--postgres-url); each node its own schema trm_<id>.
    Postgres,
}

#[derive(Debug, clap::Args)]
struct StorageArgs {
    /// The storage engine of every node.
    #[arg(long, value_enum, default_value = "sled")]
    storage: StorageKind,
    /// With --storage postgres: the database, e.g. postgres://trm@127.0.0.1/trm (each
    /// node's schema is created if missing, emptied with --force). A host that is not
    /// loopback needs sslmode=verify-full (the default there) or verify-ca, and
    /// --postgres-ca.
    #[arg(long, required_if_eq("storage", "postgres"))]
    postgres_url: Option<String>,
    /// With --storage postgres: the PEM file of the CA that signed the PostgreSQL server's
    /// certificate (copied to each node as its [storage] ca_file).
    #[arg(long, value_name = "FILE")]
    postgres_ca: Option<PathBuf>,
}

impl StorageArgs {
    fn storage(&self) -> Result<sandbox::Storage> {
        match (self.storage, &self.postgres_url) {
            (StorageKind::Sled, None) if self.postgres_ca.is_none() => Ok(sandbox::Storage::Sled),
            (StorageKind::Sled, _) => {
                bail!("--postgres-url and --postgres-ca need --storage postgres")
            }
            (StorageKind::Postgres, Some(url)) => {
                // The URL and the CA checked before anything is written.
                trm_store::engine::postgres::tls::Connector::new(url, self.postgres_ca.as_deref())
                    .map_err(|e| match e {
                        trm_store::engine::postgres::tls::SettingError::Url(p) => {
                            anyhow::anyhow!("--postgres-url: {p}")
                        }
                        trm_store::engine::postgres::tls::SettingError::CaFile(p) => {
                            anyhow::anyhow!("--postgres-ca: {p}")
                        }
                    })?;
                Ok(sandbox::Storage::Postgres {
                    url: url.clone(),
                    ca_file: self.postgres_ca.clone(),
                })
            }
            (StorageKind::Postgres, None) => bail!("--storage postgres needs --postgres-url URL"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Issues a client certificate signed by a node's client CA.
    Issue {
        #[arg(long)]
        config: PathBuf,
        /// service_provider, focal_point, judicial_authority or operator.
        #[arg(long)]
        role: Role,
        #[arg(long)]
        org: OrgId,
        /// Writes PREFIX.pem and PREFIX.key.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = trm_crypto::pki::CLIENT_VALIDITY_DAYS)]
        days: u32,
    },
    /// Revokes a client certificate of the node: every request made with it is refused from
    /// now on, open connections included.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// The certificate's serial number (lower-case hex, no separators or leading zeros).
        #[arg(long, conflicts_with = "cert", required_unless_present = "cert")]
        serial: Option<String>,
        /// The certificate itself (PEM file); its serial is read from it.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// Lists the revoked client certificates.
    Revoked {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line `args` (the program name first).
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<()> {
    let cli = Cli::parse_from(args);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    trm_node::install_crypto_provider();
    match cli.command {
        Command::Sandbox {
            command:
                SandboxCommand::Init {
                    dir,
                    nodes,
                    base_port,
                    force,
                    compose,
                    storage,
                },
        } => {
            let storage = storage.storage()?;
            if compose {
                report(sandbox::init_in(
                    &dir,
                    &sandbox::compose_specs(&nodes),
                    force,
                    true,
                    &storage,
                )?);
                Ok(())
            } else {
                init(&dir, &nodes, base_port, force, &storage)
            }
        }
        Command::Sandbox {
            command:
                SandboxCommand::Up {
                    dir,
                    scenario,
                    storage,
                },
        } => {
            let storage = storage.storage()?;
            tokio::runtime::Runtime::new()?.block_on(up(dir, scenario, storage))
        }
        Command::Node {
            command:
                NodeCommand::Init {
                    dir,
                    id,
                    name,
                    hosts,
                    federation_listen,
                    csr,
                },
        } => {
            let (written, next) = trmctl::node::init(&trmctl::node::NodeInit {
                dir,
                id,
                name,
                hosts,
                federation_listen,
                certificates: if csr {
                    trmctl::node::Certificates::Requests
                } else {
                    trmctl::node::Certificates::SelfSigned
                },
            })?;
            for p in written {
                println!("wrote {}", p.display());
            }
            println!("next:");
            for step in next {
                println!("  - {step}");
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Init { config },
        } => {
            let r = trmctl::keys::init(&config)?;
            for p in &r.created {
                println!("created {}", p.display());
            }
            for p in &r.kept {
                println!("kept {} as it is", p.display());
            }
            println!(
                "signing key id {}; public key for peers: {}",
                r.key_id,
                r.public_key.display()
            );
            Ok(())
        }
        Command::Status { admin, json } => {
            tokio::runtime::Runtime::new()?.block_on(status(admin, json))
        }
        Command::Peer { command } => tokio::runtime::Runtime::new()?.block_on(peer(command)),
        Command::Outbox { command } => tokio::runtime::Runtime::new()?.block_on(outbox(command)),
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    admin,
                    overlap_days,
                },
        } => tokio::runtime::Runtime::new()?.block_on(async {
            let mut c = connect(&admin).await?;
            let key_id = trmctl::admin::rotate(&mut c, overlap_days).await?;
            println!("signing key rotated: {key_id} signs from now on; every peer is told");
            Ok(())
        }),
        Command::Audit {
            command: AuditCommand::Verify { admin },
        } => tokio::runtime::Runtime::new()?.block_on(verify_audit(admin)),
        Command::Audit {
            command: AuditCommand::Export { admin, out },
        } => tokio::runtime::Runtime::new()?.block_on(export_audit(admin, out)),
        Command::Client {
            command:
                ClientCommand::Issue {
                    config,
                    role,
                    org,
                    out,
                    days,
                },
        } => {
            let (cert, key) = trmctl::client::issue(&config, role, &org, &out, days)?;
            println!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Client {
            command:
                ClientCommand::Revoke {
                    admin,
                    serial,
                    cert,
                },
        } => tokio::runtime::Runtime::new()?.block_on(revoke(admin, serial, cert)),
        Command::Client {
            command: ClientCommand::Revoked { admin, json },
        } => tokio::runtime::Runtime::new()?.block_on(revoked(admin, json)),
        Command::Backup { admin, out } => tokio::runtime::Runtime::new()?.block_on(async {
            let mut c =
                trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref())
                    .await?;
            let r = trmctl::admin::backup(&mut c, &out).await?;
            println!("backup written to {} ({} bytes)", r.path, r.bytes);
            Ok(())
        }),
        Command::Restore {
            config,
            from,
            force,
        } => {
            let r = trmctl::admin::restore(&config, &from, force)?;
            println!(
                "restored {} records of node {} taken {}; {} erasures re-applied from the journal",
                r.manifest.records, r.manifest.node, r.manifest.created_at, r.erasures_applied
            );
            Ok(())
        }
        Command::Stats {
            command:
                StatsCommand::Export {
                    admin,
                    from,
                    to,
                    format,
                    key,
                },
        } => tokio::runtime::Runtime::new()?.block_on(stats_export(admin, from, to, format, key)),
        Command::Stats {
            command:
                StatsCommand::Merge {
                    config,
                    key,
                    format,
                    reports,
                },
        } => stats_merge(&config, &key, format, &reports),
    }
}

fn print_report(report: &trmctl::stats::ReportFile, format: Format) -> Result<()> {
    match format {
        Format::Csv => trmctl::stats::to_csv(report, &mut std::io::stdout()),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(report)?);
            Ok(())
        }
    }
}

async fn stats_export(
    admin: AdminArgs,
    from: String,
    to: String,
    format: Format,
    key: Vec<PathBuf>,
) -> Result<()> {
    let keys = trmctl::stats::trusted_keys(&admin.config, &key)?;
    let mut c =
        trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await?;
    let report = trmctl::stats::export(&mut c, &keys, &from, &to).await?;
    print_report(&report, format)
}

fn stats_merge(
    config: &std::path::Path,
    key: &[PathBuf],
    format: Format,
    reports: &[PathBuf],
) -> Result<()> {
    let keys = trmctl::stats::trusted_keys(config, key)?;
    let mut files = Vec::new();
    for path in reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        files.push(
            serde_json::from_str::<trmctl::stats::ReportFile>(&text).with_context(|| {
                format!(
                    "{} is not a report written by `trmctl stats export --format json`",
                    path.display()
                )
            })?,
        );
    }
    let min = trm_node::NodeConfig::load(config)?
        .statistics
        .min_cell_count;
    let merged = trmctl::stats::merge(&files, &keys, min)?;
    print_report(&merged, format)
}

async fn connect(
    admin: &AdminArgs,
) -> Result<trm_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>> {
    trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await
}

/// Formats a wire time as RFC 3339 ("-" when absent).
fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

async fn status(admin: AdminArgs, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let s = trmctl::admin::status(&mut c).await?;
    if json {
        let peers: Vec<_> = s
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "node_id": p.node_id, "reachable": p.reachable, "probe_ms": p.probe_ms,
                    "probe_error": p.probe_error, "outbox_depth": p.outbox_depth,
                    "oldest_queued": when(p.oldest_queued.as_ref()),
                    "last_delivery": when(p.last_delivery.as_ref()),
                })
            })
            .collect();
        let expiries: Vec<_> = s
            .expiries
            .iter()
            .map(|e| serde_json::json!({"name": e.name, "not_after": when(e.not_after.as_ref())}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node_id": s.node_id, "health": s.health, "policy_version": s.policy_version,
                "outbox_depth": s.outbox_depth, "dead_letters": s.dead_letters,
                "signing_key_id": s.signing_key_id,
                "key_encryption_key_created_at": when(s.key_encryption_key_created_at.as_ref()),
                "peers": peers, "expiries": expiries,
            }))?
        );
        return Ok(());
    }
    println!(
        "node {}: {} (policy {}); outbox {}, dead letters {}",
        s.node_id, s.health, s.policy_version, s.outbox_depth, s.dead_letters
    );
    println!(
        "signing key {}; key-encryption key made {}",
        s.signing_key_id,
        when(s.key_encryption_key_created_at.as_ref())
    );
    println!(
        "{:<6} {:<10} {:>8} {:>7}  {:<25} {:<25} problem",
        "peer", "reachable", "probe", "queued", "oldest queued", "last delivery"
    );
    for p in &s.peers {
        println!(
            "{:<6} {:<10} {:>6}ms {:>7}  {:<25} {:<25} {}",
            p.node_id,
            if p.reachable { "yes" } else { "NO" },
            p.probe_ms,
            p.outbox_depth,
            when(p.oldest_queued.as_ref()),
            when(p.last_delivery.as_ref()),
            p.probe_error
        );
    }
    for e in &s.expiries {
        println!("{:<24} expires {}", e.name, when(e.not_after.as_ref()));
    }
    Ok(())
}

async fn peer(command: PeerCommand) -> Result<()> {
    let spec = |p: PeerArgs| trmctl::admin::PeerSpec {
        node_id: p.node_id,
        endpoint: p.endpoint,
        ca: p.tls_ca,
        keys: p.keys,
        pin: p.pin,
    };
    match command {
        PeerCommand::List { admin, json } => {
            let mut c = connect(&admin).await?;
            let peers = trmctl::admin::peers(&mut c).await?;
            if json {
                let items: Vec<_> = peers
                    .iter()
                    .map(|p| {
                        let keys: Vec<_> = p
                            .signing_keys
                            .iter()
                            .map(|k| {
                                serde_json::json!({
                                    "key_id": k.key_id,
                                    "valid_from": when(k.valid_from.as_ref()),
                                    "valid_until": when(k.valid_until.as_ref()),
                                })
                            })
                            .collect();
                        serde_json::json!({
                            "node_id": p.node_id, "endpoint": p.endpoint,
                            "tls_pin_sha256": p.tls_pin_sha256, "signing_keys": keys,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
                return Ok(());
            }
            if peers.is_empty() {
                println!("no peers");
            }
            for p in peers {
                let keys: Vec<&str> = p.signing_keys.iter().map(|k| k.key_id.as_str()).collect();
                println!(
                    "{:<4} {:<24} keys {}{}",
                    p.node_id,
                    p.endpoint,
                    keys.join(","),
                    if p.tls_pin_sha256.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " pinned {}",
                            &p.tls_pin_sha256[..p.tls_pin_sha256.len().min(16)]
                        )
                    }
                );
            }
            Ok(())
        }
        PeerCommand::Add { admin, peer } => {
            let mut c = connect(&admin).await?;
            let p = trmctl::admin::upsert_peer(&mut c, &spec(peer), false).await?;
            println!("added peer {} at {}", p.node_id, p.endpoint);
            Ok(())
        }
        PeerCommand::Update { admin, peer } => {
            let mut c = connect(&admin).await?;
            let p = trmctl::admin::upsert_peer(&mut c, &spec(peer), true).await?;
            println!("changed peer {} (now at {})", p.node_id, p.endpoint);
            Ok(())
        }
        PeerCommand::Remove { admin, node_id } => {
            let mut c = connect(&admin).await?;
            trmctl::admin::remove_peer(&mut c, &node_id).await?;
            println!("removed peer {node_id}: nothing goes to it or is taken from it any more");
            Ok(())
        }
    }
}

async fn outbox(command: OutboxCommand) -> Result<()> {
    match command {
        OutboxCommand::List {
            admin,
            peer,
            dead,
            json,
        } => {
            let mut c = connect(&admin).await?;
            let entries = trmctl::admin::outbox(&mut c, peer.as_deref(), dead).await?;
            if json {
                let items: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "message_id": e.message_id, "peer": e.peer, "kind": e.kind,
                            "attempts": e.attempts, "created_at": when(e.created_at.as_ref()),
                            "dead_letter": e.dead_letter, "last_error": e.last_error,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
                return Ok(());
            }
            if entries.is_empty() {
                println!("nothing queued");
            }
            for e in entries {
                println!(
                    "{} {:<4} {:<22} {:<5} attempts {:<3} queued {} {}",
                    e.message_id,
                    e.peer,
                    e.kind,
                    if e.dead_letter { "DEAD" } else { "" },
                    e.attempts,
                    when(e.created_at.as_ref()),
                    e.last_error
                );
            }
            Ok(())
        }
        OutboxCommand::Retry { admin, message_id } => {
            let mut c = connect(&admin).await?;
            trmctl::admin::retry(&mut c, &message_id).await?;
            println!("queued {message_id} again");
            Ok(())
        }
    }
}

async fn verify_audit(admin: AdminArgs) -> Result<()> {
    let mut c =
        trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await?;
    let r = trmctl::admin::verify_audit(&mut c).await?;
    if !r.ok {
        bail!(
            "audit chain broken at entry {} ({} entries verified before it)",
            r.first_bad_entry,
            r.entries_checked
        );
    }
    println!("audit chain ok: {} entries verified", r.entries_checked);
    Ok(())
}

async fn export_audit(admin: AdminArgs, out: Option<PathBuf>) -> Result<()> {
    let mut c =
        trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await?;
    let n = match &out {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            trmctl::admin::export_audit(&mut c, &mut f).await?
        }
        None => trmctl::admin::export_audit(&mut c, &mut std::io::stdout()).await?,
    };
    if let Some(path) = out {
        println!(
            "wrote {n} audit entries and the signed head to {}",
            path.display()
        );
    }
    Ok(())
}

async fn revoke(admin: AdminArgs, serial: Option<String>, cert: Option<PathBuf>) -> Result<()> {
    let serial = match (serial, cert) {
        (Some(s), _) => s,
        (None, Some(path)) => trmctl::admin::serial_of_pem(&path)?,
        (None, None) => bail!("name the certificate with --serial HEX or --cert PEM"),
    };
    let mut c =
        trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await?;
    let r = trmctl::admin::revoke(&mut c, &serial).await?;
    println!(
        "revoked client certificate {}: every request made with it is refused from now on",
        r.serial_hex
    );
    Ok(())
}

async fn revoked(admin: AdminArgs, json: bool) -> Result<()> {
    let mut c =
        trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await?;
    let all = trmctl::admin::revoked(&mut c).await?;
    if json {
        let items: Vec<_> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "serial_hex": r.serial_hex,
                    "revoked_at": r.revoked_at.as_ref().map(|t| t.seconds),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    if all.is_empty() {
        println!("no client certificate is revoked");
    }
    for r in all {
        let at = r
            .revoked_at
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        println!("{}  revoked {at}", r.serial_hex);
    }
    Ok(())
}

fn init(
    dir: &std::path::Path,
    nodes: &[NodeId],
    base_port: u16,
    force: bool,
    storage: &sandbox::Storage,
) -> Result<()> {
    if nodes.is_empty() {
        bail!("--nodes names no node");
    }
    let specs = nodes
        .iter()
        .enumerate()
        .map(|(i, id)| NodeSpec::from_base(*id, i, base_port))
        .collect::<Result<Vec<_>>>()?;
    report(sandbox::init_in(dir, &specs, force, false, storage)?);
    Ok(())
}

fn report(outcomes: Vec<InitOutcome>) {
    for outcome in outcomes {
        match outcome {
            InitOutcome::Created(p) => println!("created {}", p.display()),
            InitOutcome::Kept(p) => {
                println!("kept {} as it is (use --force to rewrite it)", p.display())
            }
        }
    }
}

async fn up(dir: PathBuf, scenario: bool, storage: sandbox::Storage) -> Result<()> {
    if !dir.is_dir() || sandbox::nodes_in(&dir)?.is_empty() {
        let nodes = ["AT".parse()?, "RO".parse()?, "NG".parse()?];
        // Connecting to PostgreSQL blocks: off the runtime.
        let d = dir.clone();
        tokio::task::spawn_blocking(move || init(&d, &nodes, 7400, false, &storage)).await??;
    }
    let ids = sandbox::nodes_in(&dir)?;
    let mut nodes = Vec::new();
    for id in &ids {
        let cfg = trm_node::NodeConfig::load(&sandbox::config_path(&dir, *id))?;
        let listeners = trm_node::Listeners::bind(&cfg.listen)
            .await
            .with_context(|| format!("binding the ports of {id} (is another sandbox running?)"))?;
        let handle = trm_node::NodeHandle::spawn(cfg, listeners)?;
        println!(
            "node {id}: services {} federation {} admin {} metrics http://{}/metrics",
            handle.addrs.services,
            handle.addrs.federation,
            handle.addrs.admin,
            handle.addrs.metrics
        );
        nodes.push(handle);
    }
    let result = if scenario {
        if ids.len() < 2 {
            bail!("the scenario needs at least two nodes");
        }
        let mut out = std::io::stdout();
        trmctl::scenario::run(&dir, ids[0], ids[1], &mut out)
            .await
            .map(|_| ())
    } else {
        println!("sandbox running in {}; Ctrl-C stops it", dir.display());
        tokio::signal::ctrl_c().await?;
        Ok(())
    };
    for node in nodes {
        node.stop().await?;
    }
    if result.is_ok() && scenario {
        println!("scenario complete");
    }
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
