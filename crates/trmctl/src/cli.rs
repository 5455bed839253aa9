//! The `trmctl` command line: parsing and printing; each command's work is in the library's
//! modules. Every command that prints data takes `--json` (times in RFC 3339, absent ones
//! `null`); every error is one line naming the flag to fix ([`crate::out::describe`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate as trmctl;
use crate::out::{json_datetime, json_time, print_json, when};
use crate::sandbox::{self, InitOutcome, NodeSpec};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
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
    /// The node's health, each peer probed now (reachable, holds our signing key, accepts
    /// our deliveries), queues, dead letters, and when its certificates expire.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// The node's peer directory (changes take effect at once and survive restarts; the
    /// directory, not node.toml, is the node's list of peers).
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
        /// The folder to write (new or empty), on the node's host.
        #[arg(long)]
        out: PathBuf,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
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
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Monitoring statistics (counts that expose no one).
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
    /// Victim-status attestations (non-punishment), verified offline.
    Attestation {
        #[command(subcommand)]
        command: AttestationCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AttestationCommand {
    /// Verifies an attestation file against the issuing node's published signing key and
    /// prints what it attests; exits non-zero if it was altered or signed by another key.
    /// FILE is JSON {"attestation": base64, "key_id": "...", "signature": base64}, the
    /// SignedAttestation of RemediesService.GetVictimStatus.
    Verify {
        /// The attestation file.
        file: PathBuf,
        /// The issuer's ed25519 public key, SubjectPublicKeyInfo PEM (its
        /// keys/signing.pub.pem, `trmctl keys show --pem` on its node, or `openssl pkey
        /// -pubout` of its signing key).
        #[arg(long)]
        public_key: PathBuf,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
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
        /// The same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Also trust this public key (PEM) for the signature.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Adds the JSON reports of several nodes for one period together and suppresses small
    /// cells of the sums again. Each signature is verified against the keys the running
    /// node of --config publishes and holds for its peers (its peer directory), or --key.
    Merge {
        #[command(flatten)]
        admin: AdminArgs,
        /// Also trust this public key (PEM).
        #[arg(long)]
        key: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// The same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Reports written by `trmctl stats export --format json`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

/// How to reach a node's admin port.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The node's configuration file (its [listen] admin is where trmctl connects).
    #[arg(long)]
    config: PathBuf,
    /// Operator certificate prefix (PREFIX.pem, PREFIX.key); default: clients/operator
    /// beside the config, as `node init` and the sandbox write it.
    #[arg(long)]
    client: Option<PathBuf>,
    /// CA of the node's admin server certificate; default: services-ca.pem beside the config.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// A new peer, as the operator gives it.
#[derive(Debug, clap::Args)]
struct PeerArgs {
    /// The peer's node id (ISO 3166-1 alpha-2, upper case).
    #[arg(long)]
    node_id: NodeId,
    /// host:port of the peer's federation port.
    #[arg(long, value_parser = endpoint)]
    endpoint: String,
    /// PEM file of the CA the peer's federation certificate chains to (its
    /// tls/federation-ca.pem).
    #[arg(long)]
    tls_ca: PathBuf,
    /// PEM file of the peer's signing public key (its keys/signing.pub.pem, or the output of
    /// `trmctl keys show --pem` on its node); repeat for several.
    #[arg(long = "signing-key", required = true)]
    keys: Vec<PathBuf>,
    /// SHA-256 of the peer's federation certificate (64 lower-case hex), to pin it.
    #[arg(long, value_parser = pin)]
    pin: Option<String>,
    /// Prints the peer as the node now holds it, as JSON.
    #[arg(long)]
    json: bool,
}

/// A change to a known peer: only what is given changes.
#[derive(Debug, clap::Args)]
struct PeerUpdateArgs {
    /// The peer's node id (ISO 3166-1 alpha-2, upper case).
    #[arg(long)]
    node_id: NodeId,
    /// A new host:port of the peer's federation port.
    #[arg(long, value_parser = endpoint)]
    endpoint: Option<String>,
    /// A new CA (PEM file) the peer's federation certificate chains to.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Adds the signing public key(s) of this PEM file (its keys already known stay, with
    /// their windows, including those the peer announced itself); repeat for several.
    #[arg(long = "signing-key")]
    keys: Vec<PathBuf>,
    /// Removes the signing key with this id (see `trmctl peer list`); repeat for several.
    #[arg(long = "remove-key")]
    remove_keys: Vec<String>,
    /// Pins the peer's federation certificate (SHA-256, 64 lower-case hex).
    #[arg(long, value_parser = pin, conflicts_with = "no_pin")]
    pin: Option<String>,
    /// Removes the pin.
    #[arg(long)]
    no_pin: bool,
    /// Prints the peer as the node now holds it, as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `--endpoint`: host:port.
fn endpoint(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_owned()),
        _ => Err("must be host:port, e.g. trm.ro.example:7401".to_owned()),
    }
}

/// Parses `--pin`: a SHA-256 in lower-case hex.
fn pin(s: &str) -> Result<String, String> {
    if trm_node::config::valid_pin(s) {
        Ok(s.to_owned())
    } else {
        Err("must be 64 lower-case hex characters (the SHA-256 of the DER certificate)".to_owned())
    }
}

/// Parses `--serial`: lower-case hex without separators or leading zeros.
fn serial(s: &str) -> Result<String, String> {
    trm_node::admin::serial(s).map_err(|_| {
        "must be the serial number in lower-case hex without separators or leading zeros \
         (`trmctl client list` shows each)"
            .to_owned()
    })
}

/// Parses `--org`.
fn org(s: &str) -> Result<OrgId, String> {
    s.parse::<OrgId>()
        .map_err(|_| "must be 1 to 64 characters of a-z, 0-9, '-' or '_' (e.g. ngo-lefo)".into())
}

/// Parses `--role`.
fn role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|_| {
        let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("must be one of {}", all.join(", "))
    })
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
    /// Changes what is given of a known peer (endpoint, CA, pin; adds or removes keys) and
    /// keeps everything else, its announced keys included.
    Update {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        peer: PeerUpdateArgs,
    },
    /// Removes a peer: nothing is sent to it or accepted from it any more.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        node_id: NodeId,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
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
        peer: Option<NodeId>,
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
        /// The dead letter's message id (`trmctl outbox list --dead`).
        #[arg(long)]
        message_id: String,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Writes a new node: node.toml with every key and its default, signing and master
    /// keys, a client CA with an operator certificate, and either self-signed TLS
    /// certificates or signing requests for your PKI. Never overwrites a node. With
    /// --state-dir, what the node writes (its store, signing key, key store, backups) goes
    /// there and the configuration stays read-only in --dir (deploy/trm-node.service:
    /// --dir /etc/trm --state-dir /var/lib/trm).
    Init {
        /// The configuration's folder (node.toml, certificates, master key).
        #[arg(long)]
        dir: PathBuf,
        /// The folder the node writes into (data/, keys/signing.pem, the key store,
        /// backups/); default: --dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The country's ISO 3166-1 alpha-2 code.
        #[arg(long)]
        id: NodeId,
        /// A name for people, e.g. "Austria national focal point".
        #[arg(long)]
        name: String,
        /// A host name or address the node is reached at (repeat for several).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where the services port (local users) listens.
        #[arg(long, default_value = "127.0.0.1:7400")]
        services_listen: SocketAddr,
        /// Where the federation port (peer nodes) listens.
        #[arg(long, default_value = "0.0.0.0:7401")]
        federation_listen: SocketAddr,
        /// Where the admin port (operators) listens; keep it on loopback.
        #[arg(long, default_value = "127.0.0.1:7402")]
        admin_listen: SocketAddr,
        /// Where the metrics port (plain HTTP /metrics, /healthz, /readyz) listens.
        #[arg(long, default_value = "127.0.0.1:7403")]
        metrics_listen: SocketAddr,
        /// Write keys and certificate signing requests instead of self-signed certificates.
        #[arg(long)]
        csr: bool,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates the signing key and master key named in the config if missing (mode 0600);
    /// never overwrites one.
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints the signing keys the running node publishes to its peers: the one that signs
    /// now (give it to the peers' operators: `trmctl peer update --signing-key`) and the
    /// retired ones still listed for the overlap.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints only the current key as PEM, for a file to give the peers.
        #[arg(long, conflicts_with = "json")]
        pem: bool,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotates the running node's signing key: the new key is announced to every peer, the
    /// old one keeps verifying what it signed for the overlap (at least the replay window),
    /// and the public key file beside the signing key is rewritten.
    Rotate {
        #[command(flatten)]
        admin: AdminArgs,
        /// Days the old key stays listed.
        #[arg(long, default_value_t = 0)]
        overlap_days: u32,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies the hash chain and the head the node signed; exits non-zero if any entry
    /// was modified, reordered, removed or the chain recomputed.
    Verify {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints JSON (also when the chain is broken; the exit code still says so).
        #[arg(long)]
        json: bool,
    },
    /// Writes the audit chain (ids, actions, outcomes, the operator's certificate serial;
    /// no personal data) and the node's signed head as JSON lines, after checking the
    /// signature.
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
        /// The i-th node listens on base+10i (services), +1 (federation), +2 (admin),
        /// +3 (metrics).
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
        /// The base port of a sandbox this command initialises (default 7400); a sandbox
        /// already initialised keeps its ports (`sandbox init --force --base-port` moves
        /// them).
        #[arg(long)]
        base_port: Option<u16>,
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
    /// Issues a client certificate signed by a node's client CA, prints its serial and
    /// records it in the register of issued certificates beside the CA's key.
    Issue {
        #[arg(long)]
        config: PathBuf,
        /// service_provider, focal_point, judicial_authority, operator or
        /// immigration_authority.
        #[arg(long, value_parser = role)]
        role: Role,
        /// The organisation the certificate speaks for: 1 to 64 characters of a-z, 0-9,
        /// '-' or '_' (e.g. ngo-lefo). A service provider sees only its organisation's
        /// cases.
        #[arg(long, value_parser = org)]
        org: OrgId,
        /// Writes PREFIX.pem and PREFIX.key.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = trm_crypto::pki::CLIENT_VALIDITY_DAYS)]
        days: u32,
        /// Also writes PREFIX.p12 for a browser (the console), encrypted under a passphrase
        /// printed once: give it to the person apart from the file.
        #[arg(long)]
        p12: bool,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the certificates issued with this host's client CA (serial, role,
    /// organisation, expiry) and whether the running node has revoked each.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a client certificate of the node: every request made with it is refused from
    /// now on, open connections included.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// The certificate's serial number (lower-case hex, no separators or leading zeros).
        #[arg(long, conflicts_with = "cert", required_unless_present = "cert", value_parser = serial)]
        serial: Option<String>,
        /// The certificate itself (PEM file); its serial is read from it.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
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

/// Runs `trmctl` with the process's arguments: prints a failure as one line on standard
/// error (never a backtrace, whatever RUST_BACKTRACE says) and returns the exit code.
pub fn main() -> std::process::ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("trmctl: internal error: {info}");
    }));
    match main_with(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trmctl: {}", crate::out::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    trm_node::install_crypto_provider();
    match cli.command {
        Command::Sandbox { command } => sandbox_command(command),
        Command::Node { command } => node_command(command),
        Command::Keys { command } => keys_command(command),
        Command::Status { admin, json } => runtime()?.block_on(status(admin, json)),
        Command::Peer { command } => runtime()?.block_on(peer(command)),
        Command::Outbox { command } => runtime()?.block_on(outbox(command)),
        Command::Audit { command } => audit_command(command),
        Command::Client { command } => client_command(command),
        Command::Backup { admin, out, json } => runtime()?.block_on(backup(admin, out, json)),
        Command::Restore {
            config,
            from,
            force,
            json,
        } => restore(&config, &from, force, json),
        Command::Stats { command } => stats_command(command),
        Command::Attestation { command } => attestation_command(command),
    }
}

/// `trmctl attestation verify`: prints the attestation once its signature verifies.
fn attestation_command(command: AttestationCommand) -> Result<()> {
    let AttestationCommand::Verify {
        file,
        public_key,
        json,
    } = command;
    let v = trmctl::attestation::verify_files(&file, &public_key)?;
    if json {
        return trmctl::out::print_json(&serde_json::to_value(&v)?);
    }
    println!("signature: valid");
    println!("case_ref: {}", v.case_ref);
    println!("stage: {}", v.stage);
    println!("decided_month: {}", v.decided_month);
    println!("issuer: {}", v.issuer);
    println!("issued_at: {}", v.issued_at);
    Ok(())
}

/// Starts the async runtime of a command that talks to a running node.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}
/// `trmctl sandbox`: writes a sandbox (for loopback, or for containers with --compose),
/// or runs one.
fn sandbox_command(command: SandboxCommand) -> Result<()> {
    match command {
        SandboxCommand::Init {
            dir,
            nodes,
            base_port,
            force,
            compose,
            storage,
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
        SandboxCommand::Up {
            dir,
            scenario,
            base_port,
            storage,
        } => {
            let storage = storage.storage()?;
            runtime()?.block_on(up(dir, scenario, base_port, storage))
        }
    }
}

/// `trmctl node init`: writes a new node's folder and prints what was written and what
/// to do next.
fn node_command(command: NodeCommand) -> Result<()> {
    let NodeCommand::Init {
        dir,
        state_dir,
        id,
        name,
        hosts,
        services_listen,
        federation_listen,
        admin_listen,
        metrics_listen,
        csr,
        json,
    } = command;
    let r = trmctl::node::init(&trmctl::node::NodeInit {
        dir,
        state_dir,
        id,
        name,
        hosts,
        services_listen,
        federation_listen,
        admin_listen,
        metrics_listen,
        certificates: if csr {
            trmctl::node::Certificates::Requests
        } else {
            trmctl::node::Certificates::SelfSigned
        },
    })?;
    if json {
        return print_json(&json!({
            "config": r.config, "written": r.written, "next": r.next,
            "signing_key_id": r.signing_key_id,
            "signing_public_key": r.signing_public_key,
            "federation_ca": r.federation_ca,
        }));
    }
    for p in &r.written {
        println!("wrote {}", p.display());
    }
    println!("next:");
    for step in &r.next {
        println!("  - {step}");
    }
    Ok(())
}

/// `trmctl keys`: creates a node's keys, or shows or rotates the running node's signing
/// key.
fn keys_command(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Init { config, json } => keys_init(&config, json),
        KeysCommand::Show { admin, pem, json } => runtime()?.block_on(keys_show(admin, pem, json)),
        KeysCommand::Rotate {
            admin,
            overlap_days,
            json,
        } => runtime()?.block_on(rotate(admin, overlap_days, json)),
    }
}

/// `trmctl keys init`: creates the signing and master keys the config names if missing,
/// and prints which were created and which kept.
fn keys_init(config: &Path, json: bool) -> Result<()> {
    let r = trmctl::keys::init(config)?;
    if json {
        return print_json(&json!({
            "key_id": r.key_id, "public_key": r.public_key,
            "created": r.created, "kept": r.kept,
        }));
    }
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

/// `trmctl audit`: verifies or exports the running node's audit chain.
fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify { admin, json } => runtime()?.block_on(verify_audit(admin, json)),
        AuditCommand::Export { admin, out } => runtime()?.block_on(export_audit(admin, out)),
    }
}

/// `trmctl client`: issues a client certificate, or lists, revokes or shows the revoked
/// certificates of the running node.
fn client_command(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Issue {
            config,
            role,
            org,
            out,
            days,
            p12,
            json,
        } => client_issue(&config, role, &org, (&out, days, p12), json),
        ClientCommand::List { admin, json } => runtime()?.block_on(client_list(admin, json)),
        ClientCommand::Revoke {
            admin,
            serial,
            cert,
            json,
        } => runtime()?.block_on(revoke(admin, serial, cert, json)),
        ClientCommand::Revoked { admin, json } => runtime()?.block_on(revoked(admin, json)),
    }
}

/// `trmctl client issue`: issues a client certificate with the node's client CA and prints
/// where it was written and what it holds.
fn client_issue(
    config: &Path,
    role: Role,
    org: &OrgId,
    (out, days, p12): (&Path, u32, bool),
    json: bool,
) -> Result<()> {
    let r = trmctl::client::issue(config, role, org, out, days)?;
    let bundle = match p12 {
        true => Some(trmctl::client::write_p12(config, &r, out)?),
        false => None,
    };
    if json {
        return print_json(&json!({
            "cert": r.cert, "key": r.key, "serial_hex": r.issued.serial_hex,
            "role": r.issued.role, "org": r.issued.org,
            "not_after": json_datetime(r.issued.not_after),
            "p12": bundle.as_ref().map(|b| &b.p12),
            "p12_passphrase": bundle.as_ref().map(|b| &b.passphrase),
        }));
    }
    if let Some(b) = &bundle {
        println!(
            "wrote {} for a browser; its passphrase (shown once, give it apart from the file): {}",
            b.p12.display(),
            b.passphrase
        );
    }
    println!(
        "wrote {} and {}: serial {}, {} of {}, valid until {}",
        r.cert.display(),
        r.key.display(),
        r.issued.serial_hex,
        r.issued.role,
        r.issued.org,
        json_datetime(r.issued.not_after)
            .as_str()
            .unwrap_or_default()
    );
    Ok(())
}

/// `trmctl backup`: has the running node write a backup and prints where and how large.
async fn backup(admin: AdminArgs, out: PathBuf, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let r = trmctl::admin::backup(&mut c, &out)
        .await
        .context("writing the backup")?;
    if json {
        return print_json(&json!({"path": r.path, "bytes": r.bytes}));
    }
    println!("backup written to {} ({} bytes)", r.path, r.bytes);
    Ok(())
}

/// `trmctl restore`: restores a backup into the stopped node of `config` and prints what
/// was restored and what the journal re-applied.
fn restore(config: &Path, from: &Path, force: bool, json: bool) -> Result<()> {
    let r = trmctl::admin::restore(config, from, force)?;
    let a = r.reapplied;
    if json {
        return print_json(&json!({
            "node": r.manifest.node, "records": r.manifest.records,
            "created_at": json_datetime(r.manifest.created_at),
            "backup_key": r.manifest.backup_key,
            "expires_at": r.manifest.expires_at.map(json_datetime),
            "reapplied": a,
        }));
    }
    println!(
        "restored {} records of node {} taken {}; re-applied from the journal: {} \
         erasures, {} revocations, {} peer directory changes, {} key changes, {} \
         published months",
        r.manifest.records,
        r.manifest.node,
        json_datetime(r.manifest.created_at)
            .as_str()
            .unwrap_or_default(),
        a.erasures,
        a.revocations,
        a.directory_changes,
        a.key_changes,
        a.published_months
    );
    Ok(())
}

/// `trmctl stats`: exports the node's signed report of a period, or merges several nodes'
/// reports.
fn stats_command(command: StatsCommand) -> Result<()> {
    match command {
        StatsCommand::Export {
            admin,
            from,
            to,
            format,
            json,
            key,
        } => runtime()?.block_on(stats_export(
            admin,
            from,
            to,
            if json { Format::Json } else { format },
            key,
        )),
        StatsCommand::Merge {
            admin,
            key,
            format,
            json,
            reports,
        } => runtime()?.block_on(stats_merge(
            admin,
            &key,
            if json { Format::Json } else { format },
            &reports,
        )),
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
    let mut keys = trmctl::stats::trusted_keys(&admin.config, &key)?;
    let mut c = connect(&admin).await?;
    keys.extend(trmctl::admin::directory_keys(&mut c).await?);
    let report = trmctl::stats::export(&mut c, &keys, &from, &to).await?;
    print_report(&report, format)
}

async fn stats_merge(
    admin: AdminArgs,
    key: &[PathBuf],
    format: Format,
    reports: &[PathBuf],
) -> Result<()> {
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
    let mut keys = trmctl::stats::trusted_keys(&admin.config, key)?;
    let mut c = connect(&admin).await.context(
        "the peers' keys are those of the node's peer directory; start the node, or name every \
         signer's key with --key",
    );
    match &mut c {
        Ok(c) => keys.extend(trmctl::admin::directory_keys(c).await?),
        Err(_) if !key.is_empty() => {}
        Err(_) => return c.map(|_| ()),
    }
    let min = trm_node::NodeConfig::load(&admin.config)?
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

async fn status(admin: AdminArgs, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let s = trmctl::admin::status(&mut c).await?;
    if json {
        let peers: Vec<_> = s
            .peers
            .iter()
            .map(|p| {
                json!({
                    "node_id": p.node_id, "healthy": p.healthy, "problem": p.problem,
                    "reachable": p.reachable, "probe_ms": p.probe_ms,
                    "probe_error": p.probe_error, "delivery_error": p.delivery_error,
                    "delivery_failing_since": json_time(p.delivery_failing_since.as_ref()),
                    "outbox_depth": p.outbox_depth,
                    "oldest_queued": json_time(p.oldest_queued.as_ref()),
                    "last_delivery": json_time(p.last_delivery.as_ref()),
                })
            })
            .collect();
        let expiries: Vec<_> = s
            .expiries
            .iter()
            .map(|e| json!({"name": e.name, "not_after": json_time(e.not_after.as_ref())}))
            .collect();
        return print_json(&json!({
            "node_id": s.node_id, "health": s.health, "policy_version": s.policy_version,
            "outbox_depth": s.outbox_depth, "dead_letters": s.dead_letters,
            "signing_key_id": s.signing_key_id,
            "key_encryption_key_created_at": json_time(s.key_encryption_key_created_at.as_ref()),
            "peers": peers, "expiries": expiries,
        }));
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
        "{:<6} {:<8} {:<10} {:>8} {:>7}  {:<25} {:<25}",
        "peer", "healthy", "reachable", "probe", "queued", "oldest queued", "last delivery"
    );
    for p in &s.peers {
        println!(
            "{:<6} {:<8} {:<10} {:>6}ms {:>7}  {:<25} {:<25}",
            p.node_id,
            if p.healthy { "yes" } else { "NO" },
            if p.reachable { "yes" } else { "NO" },
            p.probe_ms,
            p.outbox_depth,
            when(p.oldest_queued.as_ref()),
            when(p.last_delivery.as_ref()),
        );
        if !p.problem.is_empty() {
            println!("       problem: {}", p.problem);
        }
    }
    for e in &s.expiries {
        println!("{:<24} expires {}", e.name, when(e.not_after.as_ref()));
    }
    Ok(())
}

/// The JSON of a peer as the directory holds it.
fn peer_json(p: &trm_proto::v1::Peer) -> serde_json::Value {
    let keys: Vec<_> = p
        .signing_keys
        .iter()
        .map(|k| {
            json!({
                "key_id": k.key_id,
                "valid_from": json_time(k.valid_from.as_ref()),
                "valid_until": json_time(k.valid_until.as_ref()),
            })
        })
        .collect();
    json!({
        "node_id": p.node_id, "endpoint": p.endpoint,
        "tls_pin_sha256": p.tls_pin_sha256, "signing_keys": keys,
    })
}

/// `trmctl peer`: lists, adds, changes or removes the running node's peers.
async fn peer(command: PeerCommand) -> Result<()> {
    match command {
        PeerCommand::List { admin, json } => peer_list(admin, json).await,
        PeerCommand::Add { admin, peer } => peer_add(admin, peer).await,
        PeerCommand::Update { admin, peer } => peer_update(admin, peer).await,
        PeerCommand::Remove {
            admin,
            node_id,
            json,
        } => {
            let mut c = connect(&admin).await?;
            trmctl::admin::remove_peer(&mut c, node_id.as_str()).await?;
            if json {
                return print_json(&json!({"node_id": node_id.to_string(), "removed": true}));
            }
            println!("removed peer {node_id}: nothing goes to it or is taken from it any more");
            Ok(())
        }
    }
}

/// `trmctl peer list`: one line per peer (id, endpoint, keys with the end of their window,
/// the start of its pin).
async fn peer_list(admin: AdminArgs, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let peers = trmctl::admin::peers(&mut c).await?;
    if json {
        return print_json(&serde_json::Value::Array(
            peers.iter().map(peer_json).collect(),
        ));
    }
    if peers.is_empty() {
        println!("no peers");
    }
    for p in peers {
        let keys: Vec<String> = p
            .signing_keys
            .iter()
            .map(|k| match k.valid_until.as_ref() {
                Some(until) => format!("{} (until {})", k.key_id, when(Some(until))),
                None => k.key_id.clone(),
            })
            .collect();
        println!(
            "{:<4} {:<24} keys {}{}",
            p.node_id,
            p.endpoint,
            keys.join(", "),
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

/// `trmctl peer add`: adds a peer (refused if it is one already).
async fn peer_add(admin: AdminArgs, peer: PeerArgs) -> Result<()> {
    let mut c = connect(&admin).await?;
    let spec = trmctl::admin::PeerSpec {
        node_id: peer.node_id.to_string(),
        endpoint: peer.endpoint,
        ca: peer.tls_ca,
        keys: peer.keys,
        pin: peer.pin,
    };
    let p = trmctl::admin::upsert_peer(&mut c, &spec, false).await?;
    if peer.json {
        return print_json(&peer_json(&p));
    }
    println!("added peer {} at {}", p.node_id, p.endpoint);
    Ok(())
}

/// `trmctl peer update`: changes what is given of a known peer; refused when nothing is.
async fn peer_update(admin: AdminArgs, peer: PeerUpdateArgs) -> Result<()> {
    let change = trmctl::admin::PeerChange {
        node_id: peer.node_id.to_string(),
        endpoint: peer.endpoint,
        ca: peer.tls_ca,
        add_keys: peer.keys,
        remove_keys: peer.remove_keys,
        pin: if peer.no_pin {
            Some(String::new())
        } else {
            peer.pin
        },
    };
    if change.is_empty() {
        bail!(
            "nothing to change: give --endpoint, --tls-ca, --signing-key, --remove-key, \
             --pin or --no-pin"
        );
    }
    let mut c = connect(&admin).await?;
    let p = trmctl::admin::update_peer(&mut c, &change).await?;
    if peer.json {
        return print_json(&peer_json(&p));
    }
    let keys: Vec<&str> = p.signing_keys.iter().map(|k| k.key_id.as_str()).collect();
    println!(
        "changed peer {}: at {}, keys {}",
        p.node_id,
        p.endpoint,
        keys.join(", ")
    );
    Ok(())
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
            let peer = peer.map(|p| p.to_string());
            let entries = trmctl::admin::outbox(&mut c, peer.as_deref(), dead).await?;
            if json {
                let items: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        json!({
                            "message_id": e.message_id, "peer": e.peer, "kind": e.kind,
                            "attempts": e.attempts, "created_at": json_time(e.created_at.as_ref()),
                            "dead_letter": e.dead_letter, "last_error": e.last_error,
                        })
                    })
                    .collect();
                return print_json(&serde_json::Value::Array(items));
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
        OutboxCommand::Retry {
            admin,
            message_id,
            json,
        } => {
            if uuid::Uuid::parse_str(&message_id).is_err() {
                bail!("--message-id must be a message id as `trmctl outbox list --dead` shows it");
            }
            let mut c = connect(&admin).await?;
            trmctl::admin::retry(&mut c, &message_id).await?;
            if json {
                return print_json(&json!({"message_id": message_id, "queued": true}));
            }
            println!("queued {message_id} again");
            Ok(())
        }
    }
}

async fn keys_show(admin: AdminArgs, pem: bool, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let keys = trmctl::admin::signing_keys(&mut c).await?;
    if pem {
        print!("{}", keys.current_public_key_pem);
        return Ok(());
    }
    if json {
        let items: Vec<_> = keys
            .keys
            .iter()
            .map(|k| {
                json!({
                    "key_id": k.key_id, "current": k.key_id == keys.current_key_id,
                    "public_key_hex": hex::encode(&k.public_key),
                    "valid_from": json_time(k.valid_from.as_ref()),
                    "valid_until": json_time(k.valid_until.as_ref()),
                })
            })
            .collect();
        return print_json(&json!({
            "current_key_id": keys.current_key_id,
            "current_public_key_pem": keys.current_public_key_pem,
            "keys": items,
        }));
    }
    for k in &keys.keys {
        let state = if k.key_id == keys.current_key_id {
            "signs now".to_owned()
        } else {
            format!(
                "retired {}, verifies what it signed before",
                when(k.valid_until.as_ref())
            )
        };
        println!(
            "{}  valid from {}  {state}",
            k.key_id,
            when(k.valid_from.as_ref())
        );
    }
    println!(
        "the key peers need (give it to their operators: `trmctl peer update --node-id <this \
         node> --signing-key FILE`):"
    );
    print!("{}", keys.current_public_key_pem);
    Ok(())
}

async fn rotate(admin: AdminArgs, overlap_days: u32, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let key_id = trmctl::admin::rotate(&mut c, overlap_days).await?;
    let public = trm_node::NodeConfig::load(&admin.config)
        .map(|cfg| trm_federation_public_path(&cfg.signing.key))
        .ok();
    if json {
        return print_json(&json!({"key_id": key_id, "public_key_file": public}));
    }
    println!(
        "signing key rotated: {key_id} signs from now on; every peer is told. Its public key is \
         in {} and `trmctl keys show` prints it",
        public.as_ref().map_or_else(
            || "the file beside the signing key".to_owned(),
            |p| p.display().to_string()
        )
    );
    Ok(())
}

/// The public key file beside a signing key (the node rewrites it on rotation).
fn trm_federation_public_path(key: &Path) -> PathBuf {
    key.with_extension("pub.pem")
}

async fn verify_audit(admin: AdminArgs, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let r = trmctl::admin::verify_audit(&mut c).await?;
    if json {
        print_json(&json!({
            "ok": r.ok, "entries_checked": r.entries_checked,
            "first_bad_entry": r.first_bad_entry, "signed_through": r.signed_through,
            "signed_by": r.signed_by,
        }))?;
    }
    if !r.ok {
        bail!(
            "audit chain broken at entry {} ({} entries verified before it)",
            r.first_bad_entry,
            r.entries_checked
        );
    }
    if !json {
        println!("audit chain ok: {} entries verified", r.entries_checked);
    }
    Ok(())
}

async fn export_audit(admin: AdminArgs, out: Option<PathBuf>) -> Result<()> {
    let mut c = connect(&admin).await?;
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

async fn revoke(
    admin: AdminArgs,
    serial: Option<String>,
    cert: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    let (serial, issuer) = match (serial, cert) {
        (Some(s), _) => (s, String::new()),
        (None, Some(path)) => (
            trmctl::admin::serial_of_pem(&path)
                .with_context(|| format!("--cert {}", path.display()))?,
            trmctl::admin::issuer_of_pem(&path)
                .with_context(|| format!("--cert {}", path.display()))?,
        ),
        (None, None) => bail!("name the certificate with --serial HEX or --cert PEM"),
    };
    let mut c = connect(&admin).await?;
    let r = trmctl::admin::revoke(&mut c, &serial, &issuer).await?;
    if json {
        return print_json(&json!({
            "serial_hex": r.serial_hex, "issuer": r.issuer,
            "revoked_at": json_time(r.revoked_at.as_ref()),
        }));
    }
    println!(
        "revoked client certificate {}: every request made with it is refused from now on",
        r.serial_hex
    );
    Ok(())
}

async fn revoked(admin: AdminArgs, json: bool) -> Result<()> {
    let mut c = connect(&admin).await?;
    let all = trmctl::admin::revoked(&mut c).await?;
    if json {
        let items: Vec<_> = all
            .iter()
            .map(|r| {
                json!({
                    "serial_hex": r.serial_hex,
                    "revoked_at": json_time(r.revoked_at.as_ref()),
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    if all.is_empty() {
        println!("no client certificate is revoked");
    }
    for r in all {
        println!("{}  revoked {}", r.serial_hex, when(r.revoked_at.as_ref()));
    }
    Ok(())
}

async fn client_list(admin: AdminArgs, json: bool) -> Result<()> {
    let register = trmctl::client::register_of(&admin.config)?;
    let issued = trmctl::client::read_register(&register)?;
    let mut c = connect(&admin).await?;
    let revoked = trmctl::admin::revoked(&mut c).await?;
    let revoked_at = |serial: &str| {
        revoked
            .iter()
            .find(|r| r.serial_hex == serial)
            .map(|r| r.revoked_at)
    };
    if json {
        let items: Vec<_> = issued
            .iter()
            .map(|i| {
                let at = revoked_at(&i.serial_hex);
                json!({
                    "serial_hex": i.serial_hex, "role": i.role, "org": i.org,
                    "issued_at": json_datetime(i.issued_at),
                    "not_after": json_datetime(i.not_after),
                    "revoked": at.is_some(),
                    "revoked_at": at.map_or(serde_json::Value::Null, |t| json_time(t.as_ref())),
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    if issued.is_empty() {
        println!("no client certificate issued here ({})", register.display());
    }
    println!(
        "{:<40} {:<20} {:<20} {:<21} revoked",
        "serial", "role", "org", "expires"
    );
    for i in &issued {
        let state = match revoked_at(&i.serial_hex) {
            Some(at) => format!("REVOKED {}", when(at.as_ref())),
            None => "no".to_owned(),
        };
        println!(
            "{:<40} {:<20} {:<20} {:<21} {state}",
            i.serial_hex,
            i.role,
            i.org,
            json_datetime(i.not_after).as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

fn init(
    dir: &Path,
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

/// Prints where a sandbox node listens, and how a browser reaches its console.
fn print_addresses(dir: &Path, id: NodeId, addrs: &trm_node::Addrs) {
    println!(
        "node {id}: services {} federation {} admin {} metrics http://{}/metrics",
        addrs.services, addrs.federation, addrs.admin, addrs.metrics
    );
    if let Some(console) = addrs.console {
        let node_dir = sandbox::node_dir(dir, id);
        println!(
            "node {id}: console https://localhost:{} (import {} into a browser, \
             passphrase \"{}\"; trust {})",
            console.port(),
            node_dir.join("clients/focal_point.p12").display(),
            sandbox::SANDBOX_P12_PASSPHRASE,
            node_dir.join("services-ca.pem").display()
        );
    }
}

async fn up(
    dir: PathBuf,
    scenario: bool,
    base_port: Option<u16>,
    storage: sandbox::Storage,
) -> Result<()> {
    if !dir.is_dir() || sandbox::nodes_in(&dir)?.is_empty() {
        let nodes = ["AT".parse()?, "RO".parse()?, "NG".parse()?];
        // Connecting to PostgreSQL blocks: off the runtime.
        let d = dir.clone();
        let base = base_port.unwrap_or(7400);
        tokio::task::spawn_blocking(move || init(&d, &nodes, base, false, &storage)).await??;
    } else if let (Some(asked), Some(held)) = (base_port, sandbox::base_port_of(&dir)?) {
        if asked != held {
            bail!(
                "--base-port {asked}: the sandbox in {} was initialised with base port {held}; \
                 move it with `trmctl sandbox init --dir {} --force --base-port {asked}`",
                dir.display(),
                dir.display()
            );
        }
    }
    let ids = sandbox::nodes_in(&dir)?;
    let mut nodes = Vec::new();
    for id in &ids {
        let cfg = trm_node::NodeConfig::load(&sandbox::config_path(&dir, *id))?;
        let listeners = trm_node::Listeners::bind(&cfg.listen)
            .await
            .with_context(|| {
                format!(
                    "starting {id} (is another sandbox running? `sandbox up --base-port` on a new \
                 --dir picks other ports)"
                )
            })?;
        let handle = trm_node::NodeHandle::spawn(cfg, listeners)?;
        print_addresses(&dir, *id, &handle.addrs);
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
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
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
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn bad_flag_values_are_refused_naming_the_flag_and_the_rule() {
        let err = |args: &[&str]| {
            super::Cli::try_parse_from(args)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let e = err(&[
            "trmctl",
            "client",
            "issue",
            "--config",
            "c",
            "--role",
            "service_provider",
            "--org",
            "NGO Lefo",
            "--out",
            "x",
        ]);
        assert!(e.contains("--org") && e.contains("a-z, 0-9"), "{e}");
        let e = err(&[
            "trmctl", "client", "revoke", "--config", "c", "--serial", "0a1",
        ]);
        assert!(e.contains("--serial") && e.contains("leading zeros"), "{e}");
        let e = err(&[
            "trmctl",
            "peer",
            "update",
            "--config",
            "c",
            "--node-id",
            "RO",
            "--endpoint",
            "ro",
        ]);
        assert!(e.contains("--endpoint") && e.contains("host:port"), "{e}");
    }
}
