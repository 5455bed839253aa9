//! `trmctl`: the operator CLI of the TRM federation.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use trm_core::ids::{NodeId, OrgId, Role};
use trmctl::sandbox::{self, InitOutcome, NodeSpec};

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
    /// Local client certificates.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The node's status: outbox, dead letters, peers.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
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

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates the signing key and master key named in the config if missing (mode 0600);
    /// never overwrites one.
    Init {
        #[arg(long)]
        config: PathBuf,
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
    },
    /// Runs every node of the sandbox (initialising it if needed) until Ctrl-C; with
    /// --scenario, plays the story through the public API and exits.
    Up {
        #[arg(long, default_value = "sandbox")]
        dir: PathBuf,
        #[arg(long)]
        scenario: bool,
    },
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    trm_node::install_crypto_provider();
    match cli.command {
        Command::Sandbox {
            command:
                SandboxCommand::Init {
                    dir,
                    nodes,
                    base_port,
                    force,
                },
        } => init(&dir, &nodes, base_port, force),
        Command::Sandbox {
            command: SandboxCommand::Up { dir, scenario },
        } => tokio::runtime::Runtime::new()?.block_on(up(dir, scenario)),
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
        Command::Status { admin } => tokio::runtime::Runtime::new()?.block_on(status(admin)),
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

async fn status(admin: AdminArgs) -> Result<()> {
    let mut c =
        trmctl::admin::connect(&admin.config, admin.client.as_deref(), admin.ca.as_deref()).await?;
    let s = trmctl::admin::status(&mut c).await?;
    println!(
        "node {} (policy {}): outbox {}, dead letters {}",
        s.node_id, s.policy_version, s.outbox_depth, s.dead_letters
    );
    for p in s.peers {
        println!(
            "  peer {}: reachable={} outbox={}",
            p.node_id, p.reachable, p.outbox_depth
        );
    }
    Ok(())
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

fn init(dir: &std::path::Path, nodes: &[NodeId], base_port: u16, force: bool) -> Result<()> {
    if nodes.is_empty() {
        bail!("--nodes names no node");
    }
    let specs = nodes
        .iter()
        .enumerate()
        .map(|(i, id)| NodeSpec::from_base(*id, i, base_port))
        .collect::<Result<Vec<_>>>()?;
    for outcome in sandbox::init(dir, &specs, force)? {
        match outcome {
            InitOutcome::Created(p) => println!("created {}", p.display()),
            InitOutcome::Kept(p) => {
                println!("kept {} as it is (use --force to rewrite it)", p.display())
            }
        }
    }
    Ok(())
}

async fn up(dir: PathBuf, scenario: bool) -> Result<()> {
    if !dir.is_dir() || sandbox::nodes_in(&dir)?.is_empty() {
        init(
            &dir,
            &["AT".parse()?, "RO".parse()?, "NG".parse()?],
            7400,
            false,
        )?;
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
