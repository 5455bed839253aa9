//! `trm-bench`: the machine's ceiling and the node, measured side by side in one run.
//!
//! It starts, as child processes of itself, a bare tonic mutual-TLS unary echo server and
//! two nodes (AT and RO, real mutual TLS, sled) on loopback, then reports, at 1, 16 and 64
//! requests in flight: `echo_rps`; `submit_rps` (durable SubmitReferral, each on its own
//! case); `delivered_rps` (arrived at RO, from the first submission to the last arrival);
//! `submit_p99_ms`; `delivered_p99_ms` (submission to arrival at half the sustained
//! end-to-end maximum, or at `--paced-rate R` to compare two builds at one load); and
//! `idle_rss_mb` of a node. `--preload N` first stores N cases in
//! AT's store and reports `startup_s` as well. A table goes to stdout, JSON to `--json`.
//!
//! `--flood SECS` measures floods instead, against AT under its default limits: another
//! client's latency idle and while one client certificate floods the services port over
//! every connection it may hold, AT's resident memory before, during (peak) and after, and
//! how long a client from a known address, then one from a new address, waits while
//! stalled TLS handshakes from many addresses hold every place they may.
//!
//! `--nodes N` measures a full mesh of N nodes against two instead (see [`mesh`]).
#![forbid(unsafe_code)]

mod mesh;

/// The nodes' allocator, as in `trm-node`: jemalloc, measured about a quarter less CPU per
/// referral than glibc's malloc (README, "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use trm_core::ids::{NodeId, Role};
use trm_proto::v1::{
    self as w, admin_service_client::AdminServiceClient,
    referral_service_client::ReferralServiceClient,
};
use trmctl::sandbox::{self, NodeSpec};

#[derive(Debug, Parser)]
#[command(
    name = "trm-bench",
    about = "Measure a node against a bare mutual-TLS echo"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Inner>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Store this many cases in AT before it starts (reports start-up time too).
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Requests per measurement.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrency levels to measure.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Keep the nodes' folder (printed) instead of removing it, to look at afterwards.
    #[arg(long)]
    keep: bool,
    /// Pace the arrival-latency run at this many referrals a second instead of half the
    /// sustained maximum just measured: two builds compared at the same load.
    #[arg(long, value_name = "RATE")]
    paced_rate: Option<f64>,
    /// Run both nodes on PostgreSQL (each a fresh schema in this database, dropped after
    /// the run unless --keep) instead of sled.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// Measure floods of this many seconds each instead (see the crate's documentation).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    flood: u64,
    /// With more than 2: measure a full mesh of this many nodes against two, at the same
    /// total offered load (see `mesh`).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// The mesh's offered load: referrals a second, in all.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long the mesh's load is offered.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    seconds: u64,
    /// In the mesh: one node down this long under load, then started again.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    down_secs: u64,
    /// The load offered while that node is down, and while it catches up.
    #[arg(long, default_value_t = 100.0)]
    down_rate: f64,
}

#[derive(Debug, Subcommand)]
enum Inner {
    /// Runs one node (a child process of the benchmark).
    #[command(hide = true)]
    Node { config: PathBuf },
    /// Runs the bare echo server (a child process of the benchmark).
    #[command(hide = true)]
    Echo { dir: PathBuf, addr: SocketAddr },
}

/// One row of results.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Row {
    concurrency: usize,
    echo_rps: f64,
    submit_rps: f64,
    delivered_rps: f64,
    submit_p99_ms: f64,
    delivered_p99_ms: f64,
    submit_pct_of_echo: f64,
    delivered_pct_of_echo: f64,
    /// CPU time per referral (submitted and delivered, unpaced), in microseconds: of AT and
    /// RO, and of each one's store writer thread (the serial part).
    at_cpu_us: f64,
    ro_cpu_us: f64,
    at_writer_cpu_us: f64,
    ro_writer_cpu_us: f64,
    /// On PostgreSQL: the CPU time per referral of the machine's PostgreSQL server (every
    /// process named `postgres`: the nodes' backends, the WAL writer, the checkpointer).
    server_cpu_us: f64,
}

/// Linux's clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on every platform the
/// kernel supports today).
const CLOCK_TICKS: f64 = 100.0;

/// The process id of the node started with configuration file `config`.
fn pid_of(config: &Path) -> Option<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmdline.split(|b| *b == 0).any(|a| a == want).then_some(pid)
    })
}

/// The CPU seconds (user and system) process `pid` used so far, or only its threads named
/// `thread`; 0 when it cannot be read.
fn cpu_s(pid: u32, thread: Option<&str>) -> f64 {
    let of_stat = |path: std::path::PathBuf| -> f64 {
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| fields.get(i).and_then(|t| t.parse::<f64>().ok());
        (tick(11).unwrap_or(0.0) + tick(12).unwrap_or(0.0)) / CLOCK_TICKS
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Some(name) = thread else {
        return of_stat(proc_dir.join("stat"));
    };
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| of_stat(t.path().join("stat")))
        .sum()
}

/// The CPU seconds the processes named `postgres` used so far (a database server on this
/// machine; 0 when there is none).
fn server_cpu_s() -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_s(pid, None))
        .sum()
}

/// The CPU seconds AT and RO used so far: each process, then each one's store writer, then
/// the database server's.
fn cpu_now(dir: &Path) -> Result<[f64; 5]> {
    let pid = |id: &str| -> Result<u32> {
        pid_of(&sandbox::config_path(dir, id.parse()?)).context("a node is not running")
    };
    let (at, ro) = (pid("AT")?, pid("RO")?);
    const WRITER: Option<&str> = Some("trm-store-write");
    Ok([
        cpu_s(at, None),
        cpu_s(ro, None),
        cpu_s(at, WRITER),
        cpu_s(ro, WRITER),
        server_cpu_s(),
    ])
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    trm_node::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Inner::Node { config }) => rt.block_on(run_node(config)),
        Some(Inner::Echo { dir, addr }) => rt.block_on(run_echo(dir, addr)),
        None => rt.block_on(bench(cli)),
    }
}

async fn run_node(config: PathBuf) -> Result<()> {
    let config = trm_node::NodeConfig::load(&config)?;
    let listeners = trm_node::Listeners::bind(&config.listen).await?;
    trm_node::run(config, listeners, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// A bare unary gRPC service over the same mutual TLS the nodes use: the ceiling.
async fn run_echo(dir: PathBuf, addr: SocketAddr) -> Result<()> {
    let nd = dir.join("AT");
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(nd.join("tls/services.pem"))?,
            std::fs::read(nd.join("tls/services.key"))?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(
            nd.join("tls/client-ca.pem"),
        )?));
    let (_, health) = tonic_health::server::health_reporter();
    Server::builder()
        .tls_config(tls)?
        .add_service(health)
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn free_port_base() -> Result<u16> {
    // Ten ports for each of two nodes (services, federation, admin, metrics, console), and
    // the echo's.
    free_ports(24)
}

/// Returns the first of `count` consecutive free ports.
fn free_ports(count: u16) -> Result<u16> {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = l.local_addr()?.port();
        drop(l);
        if base < 65535 - count
            && (0..count).all(|d| std::net::TcpListener::bind(("127.0.0.1", base + d)).is_ok())
        {
            return Ok(base);
        }
    }
    bail!("no free ports")
}

fn child(args: &[&std::ffi::OsStr]) -> Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

async fn connect(dir: &Path, addr: SocketAddr, role: Role) -> Result<Channel> {
    connect_from(dir, None, addr, role).await
}

/// Same as [`connect`], from source address `local` (loopback has many: 127.0.0.0/8).
async fn connect_from(
    dir: &Path,
    local: Option<std::net::IpAddr>,
    addr: SocketAddr,
    role: Role,
) -> Result<Channel> {
    let nd = dir.join("AT");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            nd.join("services-ca.pem"),
        )?))
        .identity(Identity::from_pem(
            std::fs::read(nd.join(format!("clients/{role}.pem")))?,
            std::fs::read(nd.join(format!("clients/{role}.key")))?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .local_address(local)
        .timeout(Duration::from_secs(60))
        .connect()
        .await?)
}

/// Seconds until a focal point connecting from `local` is served a `ListCases`, trying
/// again while its connection is refused (a new address while stalled handshakes hold
/// every place new addresses may take).
async fn served_after(dir: &Path, local: std::net::IpAddr, addr: SocketAddr) -> Result<f64> {
    let t = Instant::now();
    loop {
        let served = match connect_from(dir, Some(local), addr, Role::FocalPoint).await {
            Ok(ch) => ReferralServiceClient::new(ch)
                .list_cases(w::ListCasesRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        };
        if served {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("a client from {local} was not served within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects to `dir/<node>`'s services port as `role`, waiting until it serves.
async fn node_client(dir: &Path, node: NodeId, role: Role) -> Result<Channel> {
    let cfg = trm_node::NodeConfig::load(&sandbox::config_path(dir, node))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match trmctl::scenario::client(dir, node, role, false).await {
            Ok(ch) => {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
                if h.check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok()
                {
                    return Ok(ch);
                }
            }
            Err(_) if Instant::now() < deadline => {}
            Err(e) => return Err(e.context(format!("node at {}", cfg.listen.services))),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `n` calls of `f` with `c` in flight; returns the elapsed time and each latency.
async fn drive<F, Fut>(n: usize, c: usize, f: F) -> Result<(Duration, Vec<f64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c.max(1) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                f(i).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((started.elapsed(), all))
}

async fn echo_rps(channel: Channel, n: usize, c: usize) -> Result<f64> {
    let (elapsed, _) = drive(n, c, move |_| {
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            h.check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Creates `n` cases at AT, each with a referral consent to RO; returns their ids.
async fn cases(sp: &ReferralServiceClient<Channel>, n: usize) -> Result<Vec<String>> {
    cases_for(sp, n, "RO").await
}

/// Creates `n` cases, each with the victim's consent to a referral to `destination`;
/// returns their ids.
async fn cases_for(
    sp: &ReferralServiceClient<Channel>,
    n: usize,
    destination: &str,
) -> Result<Vec<String>> {
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); n]));
    let (sp, out) = (sp.clone(), ids.clone());
    let destination = destination.to_owned();
    drive(n, 16, move |i| {
        let (mut sp, out, destination) = (sp.clone(), out.clone(), destination.clone());
        async move {
            let case = sp
                .create_case(w::CreateCaseRequest {
                    person: Some(w::Person {
                        given_name: format!("Bench {i}"),
                        family_name: "Person".into(),
                        gender: w::Gender::Female as i32,
                        citizenship: vec!["RO".into()],
                        date_of_birth: "1995-05-05".into(),
                        ..Default::default()
                    }),
                    needs: Some(w::Needs {
                        kinds: vec![w::NeedKind::Shelter as i32],
                        urgency: w::Urgency::Routine as i32,
                        notes: String::new(),
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            sp.record_consent(w::RecordConsentRequest {
                case_id: case.case_id.clone(),
                purposes: vec![w::Purpose::ReferralAssistance as i32],
                recipients: vec![destination],
                informed: true,
                information_language: "en".into(),
                ..Default::default()
            })
            .await?;
            if let Ok(mut o) = out.lock() {
                o[i] = case.case_id;
            }
            Ok(())
        }
    })
    .await?;
    let ids = ids.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(ids)
}

/// Submits one referral per case, `c` in flight; returns (elapsed, latencies, submission
/// instants by referral id).
async fn submit(
    sp: &ReferralServiceClient<Channel>,
    case_ids: Vec<String>,
    c: usize,
    pace: Option<f64>,
) -> Result<(Duration, Vec<f64>, Vec<(String, time::OffsetDateTime)>)> {
    let n = case_ids.len();
    let case_ids = Arc::new(case_ids);
    let sent = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let started = Instant::now();
    let (sp, out) = (sp.clone(), sent.clone());
    let (elapsed, lat) = drive(n, c, move |i| {
        let (mut sp, out, ids) = (sp.clone(), out.clone(), case_ids.clone());
        async move {
            if let Some(rate) = pace {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let at = time::OffsetDateTime::now_utc();
            let r = sp
                .submit_referral(w::SubmitReferralRequest {
                    case_id: ids[i].clone(),
                    destination: "RO".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if let Ok(mut o) = out.lock() {
                o.push((r.referral_id, at));
            }
            Ok(())
        }
    })
    .await?;
    let sent = sent.lock().map(|v| v.clone()).unwrap_or_default();
    Ok((elapsed, lat, sent))
}

/// Waits until AT's outbox is empty (every referral of `sent` delivered and its receipt
/// kept), then reads RO's incoming referrals once; returns the arrival latencies (ms) and
/// the time from the first submission to the last arrival. Polling AT's status is O(1) and
/// does not load RO while it receives.
async fn arrivals(
    admin: &AdminServiceClient<Channel>,
    ro: &ReferralServiceClient<Channel>,
    sent: &[(String, time::OffsetDateTime)],
    known: &mut std::collections::HashMap<String, time::OffsetDateTime>,
) -> Result<(Vec<f64>, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(600);
    mesh::drained(admin, "AT".parse()?, deadline).await?;
    mesh::incoming(ro, known).await?;
    let first = sent.iter().map(|(_, t)| *t).min().context("nothing sent")?;
    let mut last = first;
    let mut lat = Vec::new();
    for (id, at) in sent {
        let arrived = *known
            .get(id)
            .with_context(|| format!("referral {id} delivered but not listed at RO"))?;
        last = last.max(arrived);
        lat.push((arrived - *at).as_seconds_f64() * 1000.0);
    }
    Ok((lat, (last - first).try_into().unwrap_or_default()))
}

/// Writes `n` cases straight into a stopped node's store (the preload).
fn preload(dir: &Path, n: usize) -> Result<()> {
    let cfg = trm_node::NodeConfig::load(&sandbox::config_path(dir, "AT".parse()?))?;
    let store = trm_store::Store::open(trm_store::StoreOptions {
        node: cfg.node.id,
        data_dir: cfg.node.data_dir.clone(),
        key_store: cfg.node.key_store.clone(),
        master: trm_crypto::aead::SecretKey::load(&cfg.node.master_key)?,
        engine: trm_node::config::engine_options(&cfg)?,
    })?;
    let chunk = 1000;
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        store
            .commit_blocking::<(), (), _>(move |tx| {
                for i in 0..k {
                    let case = trm_core::model::CaseRecord {
                        case_id: trm_core::ids::CaseId::new(),
                        person: trm_core::model::Person {
                            given_name: format!("Preloaded {}", done + i),
                            family_name: "Person".into(),
                            date_of_birth: None,
                            gender: trm_core::model::Gender::Female,
                            citizenship: vec![],
                            languages: vec!["ro".into()],
                            document_number: String::new(),
                            address: String::new(),
                            phone: String::new(),
                        },
                        needs: Default::default(),
                        exploitation: Default::default(),
                        child: Default::default(),
                        identified_on: time::OffsetDateTime::now_utc().date(),
                        organisation: "sp1"
                            .parse()
                            .map_err(|_| trm_store::TxFail::Store(trm_store::StoreError::Encode))?,
                        created_at: time::OffsetDateTime::now_utc(),
                        identifications: vec![],
                        residence: None,
                    };
                    tx.put_case(&case)?;
                }
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("preload: {:?}", e.into_store()))?;
        done += k;
        if done % 100_000 == 0 {
            eprintln!("preloaded {done} cases");
        }
    }
    store.close()?;
    Ok(())
}

/// The clients of one measurement: AT's service provider and operator, RO's focal point.
struct Clients {
    sp: ReferralServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    ro: ReferralServiceClient<Channel>,
}

/// Starts AT (a child process); returns it, its clients and its start-up time (process
/// start to serving).
async fn start_at(dir: &Path) -> Result<(Child, Clients, f64)> {
    let at_cfg = sandbox::config_path(dir, "AT".parse()?);
    let started = Instant::now();
    let at = child(&["node".as_ref(), at_cfg.as_os_str()])?;
    let sp =
        ReferralServiceClient::new(node_client(dir, "AT".parse()?, Role::ServiceProvider).await?);
    let startup_s = started.elapsed().as_secs_f64();
    let admin = AdminServiceClient::new(
        trmctl::scenario::client(dir, "AT".parse()?, Role::Operator, true).await?,
    );
    let ro = ReferralServiceClient::new(node_client(dir, "RO".parse()?, Role::FocalPoint).await?);
    Ok((at, Clients { sp, admin, ro }, startup_s))
}

/// Measures the rows at each concurrency of `cli`.
async fn measure(cli: &Cli, dir: &Path, echo: &Channel, c: &Clients) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut known = std::collections::HashMap::new();
    for &k in &cli.concurrency {
        let n = cli.requests;
        eprintln!("{k} in flight: echo");
        let echo_rps = echo_rps(echo.clone(), n.max(5000), k).await?;
        eprintln!("{k} in flight: creating {n} cases");
        let ids = cases(&c.sp, n).await?;
        eprintln!("{k} in flight: submitting");
        let cpu_before = cpu_now(dir)?;
        let (elapsed, mut lat, sent) = submit(&c.sp, ids, k, None).await?;
        let submit_rps = n as f64 / elapsed.as_secs_f64();
        let (_, span) = arrivals(&c.admin, &c.ro, &sent, &mut known).await?;
        let delivered_rps = n as f64 / span.as_secs_f64().max(1e-9);
        let cpu_after = cpu_now(dir)?;
        let per_referral_us = |i: usize| 1e6 * (cpu_after[i] - cpu_before[i]) / n as f64;
        // Submission to arrival at half the sustained end-to-end maximum.
        let rate = cli
            .paced_rate
            .unwrap_or(0.5 * submit_rps.min(delivered_rps));
        let m = ((rate * 5.0) as usize).clamp(50, n);
        let ids = cases(&c.sp, m).await?;
        eprintln!("{k} in flight: {m} paced at {rate:.0}/s");
        let (_, _, paced) = submit(&c.sp, ids, k, Some(rate)).await?;
        let (mut arrival_lat, _) = arrivals(&c.admin, &c.ro, &paced, &mut known).await?;
        rows.push(Row {
            concurrency: k,
            echo_rps,
            submit_rps,
            delivered_rps,
            submit_p99_ms: percentile(&mut lat, 0.99),
            delivered_p99_ms: percentile(&mut arrival_lat, 0.99),
            submit_pct_of_echo: 100.0 * submit_rps / echo_rps,
            delivered_pct_of_echo: 100.0 * delivered_rps / echo_rps,
            at_cpu_us: per_referral_us(0),
            ro_cpu_us: per_referral_us(1),
            at_writer_cpu_us: per_referral_us(2),
            ro_writer_cpu_us: per_referral_us(3),
            server_cpu_us: if cli.postgres_url.is_some() {
                per_referral_us(4)
            } else {
                0.0
            },
        });
    }
    Ok(rows)
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:>5} {:>10} {:>10} {:>7} {:>10} {:>7} {:>10} {:>12}",
        "in", "echo/s", "submit/s", "% echo", "deliver/s", "% echo", "submit p99", "arrival p99"
    );
    for r in rows {
        println!(
            "{:>5} {:>10.0} {:>10.0} {:>6.1}% {:>10.0} {:>6.1}% {:>8.1}ms {:>10.1}ms",
            r.concurrency,
            r.echo_rps,
            r.submit_rps,
            r.submit_pct_of_echo,
            r.delivered_rps,
            r.delivered_pct_of_echo,
            r.submit_p99_ms,
            r.delivered_p99_ms
        );
    }
    println!(
        "{:>5} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "in", "AT cpu/ref", "RO cpu/ref", "AT writer", "RO writer", "PG server"
    );
    for r in rows {
        println!(
            "{:>5} {:>10.0}us {:>10.0}us {:>10.0}us {:>10.0}us {:>10.0}us",
            r.concurrency,
            r.at_cpu_us,
            r.ro_cpu_us,
            r.at_writer_cpu_us,
            r.ro_writer_cpu_us,
            r.server_cpu_us
        );
    }
}

/// The benchmark: writes two nodes, then measures them against the echo (or, with
/// `--flood`, measures floods), prints the results and writes them as JSON if asked.
async fn bench(cli: Cli) -> Result<()> {
    if cli.nodes > 2 {
        return mesh::run(&cli).await;
    }
    let tmp = tempfile_dir()?;
    let dir = tmp.clone();
    let base = free_port_base()?;
    let specs = vec![
        NodeSpec::from_base("AT".parse()?, 0, base)?,
        NodeSpec::from_base("RO".parse()?, 1, base)?,
    ];
    sandbox::init(&dir, &specs, true)?;
    let schemas = write_configs(&dir, &cli, &["AT", "RO"])?;
    if cli.flood > 0 {
        return flood_run(&dir, &cli).await;
    }
    let echo_addr: SocketAddr = ([127, 0, 0, 1], base + 20).into();
    let _echo = child(&[
        "echo".as_ref(),
        dir.as_os_str(),
        echo_addr.to_string().as_ref(),
    ])?;
    let ro_cfg = sandbox::config_path(&dir, "RO".parse()?);
    let _ro = child(&["node".as_ref(), ro_cfg.as_os_str()])?;
    let (at, clients, startup_s) = start_at(&dir).await?;
    let (at_pid, idle_rss_mb) = settled(&at).await?;
    let echo = connect_echo(&dir, echo_addr).await?;
    echo_rps(echo.clone(), 500, 16).await?; // warm-up
    let rows = measure(&cli, &dir, &echo, &clients).await?;
    let run = Measured {
        rows,
        idle_rss_mb,
        busy_rss_mb: rss_mb(at_pid),
        startup_s,
    };
    run.print();
    let mut out = serde_json::json!({
        "storage": if cli.postgres_url.is_some() { "postgres" } else { "sled" },
        "rows": run.rows,
        "idle_rss_mb": run.idle_rss_mb,
        "busy_rss_mb": run.busy_rss_mb,
        "startup_s": run.startup_s,
    });
    if cli.preload > 0 {
        out["preloaded"] = preloaded(&cli, &dir, at, clients, &echo).await?;
    }
    write_json(cli.json.as_deref(), &out)?;
    if cli.keep {
        eprintln!("kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
        for pg in &schemas {
            let pg = pg.clone();
            tokio::task::spawn_blocking(move || trm_store::engine::postgres::drop_schema(&pg))
                .await??;
        }
    }
    Ok(())
}

/// Edits the nodes' node.toml for the run: the default delivery backoff (not the
/// sandbox's short one); no rate limits unless floods are measured
/// (the benchmark measures the node, not its limits), and a fresh PostgreSQL schema each
/// with `--postgres-url`. Returns those schemas, to drop after the run.
fn write_configs(
    dir: &Path,
    cli: &Cli,
    ids: &[&str],
) -> Result<Vec<trm_store::engine::postgres::PostgresOptions>> {
    let mut schemas = Vec::new();
    for &id in ids {
        let path = dir.join(id).join("node.toml");
        // The node as deployed: the delivery backoff the sandbox shortens is the default.
        let mut text = std::fs::read_to_string(&path)?.replace("backoff_cap_secs = 5\n", "");
        if cli.flood == 0 {
            // The benchmark measures the node, not its rate limits (a flood meets them).
            text.push_str(
                "\n[limits]\nclient_requests_per_second = 1000000\nclient_burst = 1000000\npeer_requests_per_second = 1000000\npeer_burst = 1000000\n",
            );
        }
        if let Some(url) = &cli.postgres_url {
            let schema = format!(
                "trm_bench_{}_{}",
                id.to_ascii_lowercase(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            text.push_str(&format!(
                "\n[storage]\nengine = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\n"
            ));
            schemas.push(trm_store::engine::postgres::PostgresOptions {
                url: url.clone(),
                ca_file: None,
                schema,
                readers: 1,
            });
        }
        std::fs::write(&path, text)?;
    }
    Ok(schemas)
}

/// `--flood`: starts both nodes, measures the floods against AT, writes the JSON if asked
/// and removes the nodes' folder.
async fn flood_run(dir: &Path, cli: &Cli) -> Result<()> {
    let ro_cfg = sandbox::config_path(dir, "RO".parse()?);
    let _ro = child(&["node".as_ref(), ro_cfg.as_os_str()])?;
    let (at, _clients, _) = start_at(dir).await?;
    let report = flood(dir, &at, Duration::from_secs(cli.flood)).await?;
    write_json(cli.json.as_deref(), &report)?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Writes the results as JSON to `path`, if one was given.
fn write_json(path: Option<&Path>, results: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Lets AT's start-up work settle, then returns its process id and resident memory idle.
async fn settled(at: &Child) -> Result<(u32, f64)> {
    let at_pid = at.id().context("AT exited")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((at_pid, rss_mb(at_pid)))
}

/// Connects to the echo server, waiting up to 30 s for it to listen.
async fn connect_echo(dir: &Path, echo_addr: SocketAddr) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(dir, echo_addr, Role::ServiceProvider).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e),
        }
    }
}

/// What one run of the rows measured of AT.
struct Measured {
    rows: Vec<Row>,
    idle_rss_mb: f64,
    busy_rss_mb: f64,
    startup_s: f64,
}

impl Measured {
    /// Prints the rows, then AT's resident memory and start-up time.
    fn print(&self) {
        print_rows(&self.rows);
        println!(
            "idle RSS of a node: {:.1} MB (after the run: {:.1} MB); start-up {:.2} s",
            self.idle_rss_mb, self.busy_rss_mb, self.startup_s
        );
    }
}

/// `--preload`: stops AT, stores the cases straight into its store, starts it again and
/// measures the same rows; returns them as JSON.
async fn preloaded(
    cli: &Cli,
    dir: &Path,
    mut at: Child,
    clients: Clients,
    echo: &Channel,
) -> Result<serde_json::Value> {
    drop(clients);
    at.kill().await?;
    at.wait().await?;
    eprintln!("preloading {} cases", cli.preload);
    let t = Instant::now();
    let (d, n) = (dir.to_path_buf(), cli.preload);
    tokio::task::spawn_blocking(move || preload(&d, n)).await??;
    eprintln!("preloaded in {:.1} s", t.elapsed().as_secs_f64());
    let (at, clients, startup_s) = start_at(dir).await?;
    let (at_pid, idle_rss_mb) = settled(&at).await?;
    let rows = measure(cli, dir, echo, &clients).await?;
    let run = Measured {
        rows,
        idle_rss_mb,
        busy_rss_mb: rss_mb(at_pid),
        startup_s,
    };
    println!("with {} cases stored:", cli.preload);
    run.print();
    Ok(serde_json::json!({
        "cases": cli.preload,
        "rows": run.rows,
        "idle_rss_mb": run.idle_rss_mb,
        "busy_rss_mb": run.busy_rss_mb,
        "startup_s": run.startup_s,
    }))
}

/// Latencies (ms) of another client's requests (a case created, then read) made one after
/// another, 20 a second (within its own rate), for `d`, and the slowest.
async fn victim(fp: &ReferralServiceClient<Channel>, d: Duration) -> Result<(Vec<f64>, f64)> {
    let until = Instant::now() + d;
    let mut lat = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        pace.tick().await;
        let t = Instant::now();
        let mut c = fp.clone();
        let case_id = c
            .create_case(w::CreateCaseRequest {
                person: Some(w::Person {
                    given_name: "Bench".into(),
                    gender: w::Gender::Female as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .case_id;
        c.get_case(w::GetCaseRequest { case_id }).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let max = lat.iter().copied().fold(0.0, f64::max);
    Ok((lat, max))
}

/// The flood measurements of `--flood` against AT (default limits), `d` each.
async fn flood(dir: &Path, at: &Child, d: Duration) -> Result<serde_json::Value> {
    let at_pid = at.id().context("AT exited")?;
    let cfg = trm_node::NodeConfig::load(&sandbox::config_path(dir, "AT".parse()?))?;
    let limits = cfg.limits.clone();
    let services = cfg.listen.services;
    let fp = ReferralServiceClient::new(node_client(dir, "AT".parse()?, Role::FocalPoint).await?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_mb = rss_mb(at_pid);
    eprintln!("flood: another client alone for {d:?}");
    let (alone, alone_max) = victim(&fp, d).await?;
    let alone = Latencies::of(alone, alone_max);
    let conns = limits.per_client();
    let flooded = client_flood(dir, services, conns, &fp, at_pid, d).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_rss_mb = rss_mb(at_pid);
    let stalled = stalled_handshakes(dir, services, &limits, at_pid).await?;
    let Stalled {
        n,
        per_address,
        stalled_rss_mb,
        known_client_s,
        new_client_s,
        still_open,
    } = stalled;
    let Flooded {
        victim: flooded,
        served,
        refused,
        peak_rss_mb,
    } = flooded;
    println!("another client's requests (create a case, read it), one after another:");
    println!(
        "{:>10} {:>8} {:>8} {:>8} {:>8}",
        "", "n", "p50 ms", "p99 ms", "max ms"
    );
    alone.print_row("alone");
    flooded.print_row("flooded");
    println!(
        "the flooder: {} requests in {:.0} s, {served} served, {refused} refused ({:.0}/s served; limit {}/s, burst {})",
        served + refused,
        d.as_secs_f64(),
        served as f64 / d.as_secs_f64(),
        limits.client_requests_per_second,
        limits.client_burst
    );
    println!(
        "AT's RSS: {idle_rss_mb:.1} MB idle, {peak_rss_mb:.1} MB peak in the flood, {after_rss_mb:.1} MB after, {stalled_rss_mb:.1} MB with {n} stalled handshakes"
    );
    println!(
        "{n} stalled handshakes, {per_address} an address (max_connections {}, handshake_timeout {} s, {} ms under pressure): a client from a known address served after {known_client_s:.2} s, from a new address after {new_client_s:.2} s; {still_open} stalled connections open by then",
        limits.max_connections, limits.handshake_timeout_secs, limits.pressure_timeout_ms()
    );
    Ok(serde_json::json!({
        "flood_secs": d.as_secs_f64(),
        "alone": alone.json(),
        "flooded": flooded.json(),
        "flooder": {"connections": conns, "served": served, "refused": refused},
        "idle_rss_mb": idle_rss_mb,
        "peak_rss_mb": peak_rss_mb,
        "after_rss_mb": after_rss_mb,
        "stalled_handshakes": n,
        "stalled_rss_mb": stalled_rss_mb,
        "known_client_after_stalled_s": known_client_s,
        "new_client_after_stalled_s": new_client_s,
        "stalled_still_open": still_open,
    }))
}

/// Another client's request latencies over one measurement (ms).
struct Latencies {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Latencies {
    /// Summarises the latencies `lat` (ms) and their slowest, `max`.
    fn of(mut lat: Vec<f64>, max: f64) -> Self {
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        Self {
            n: lat.len(),
            p50,
            p99,
            max,
        }
    }

    /// Prints one row of the latency table, labelled `label`.
    fn print_row(&self, label: &str) {
        println!(
            "{:>10} {:>8} {:>8.1} {:>8.1} {:>8.1}",
            label, self.n, self.p50, self.p99, self.max
        );
    }

    /// The latencies as the JSON results give them.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"n": self.n, "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }
}

/// What one client flooding the services port did: another client's latencies meanwhile,
/// the flooder's requests served and refused, and AT's peak resident memory.
struct Flooded {
    victim: Latencies,
    served: u64,
    refused: u64,
    peak_rss_mb: f64,
}

/// One client certificate over every connection it may hold (`conns`), 16 requests in
/// flight on each, as fast as they go, for `d`, while another client (`fp`) makes its
/// requests and AT's resident memory is sampled.
async fn client_flood(
    dir: &Path,
    services: SocketAddr,
    conns: usize,
    fp: &ReferralServiceClient<Channel>,
    at_pid: u32,
    d: Duration,
) -> Result<Flooded> {
    eprintln!("flood: one client over {conns} connections x 16 in flight for {d:?}");
    let mut flooders = Vec::new();
    for _ in 0..conns {
        flooders.push(connect(dir, services, Role::ServiceProvider).await?);
    }
    let counts = Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let until = Instant::now() + d;
    let mut tasks = tokio::task::JoinSet::new();
    for ch in &flooders {
        for _ in 0..16 {
            let (mut c, counts) = (ReferralServiceClient::new(ch.clone()), counts.clone());
            tasks.spawn(async move {
                while Instant::now() < until {
                    let ok = c.list_cases(w::ListCasesRequest::default()).await.is_ok();
                    counts[usize::from(!ok)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    }
    let peak = {
        let stop = until;
        tokio::spawn(async move {
            let mut peak = 0.0f64;
            while Instant::now() < stop {
                peak = peak.max(rss_mb(at_pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let (flooded, flooded_max) = victim(fp, d).await?;
    while tasks.join_next().await.is_some() {}
    let peak_rss_mb = peak.await?;
    let [served, refused] = [0, 1].map(|i| counts[i].load(std::sync::atomic::Ordering::Relaxed));
    drop(flooders);
    Ok(Flooded {
        victim: Latencies::of(flooded, flooded_max),
        served,
        refused,
        peak_rss_mb,
    })
}

/// What stalled TLS handshakes did: how many, from how many an address, AT's resident
/// memory with them, how long a client from a known address and one from a new address
/// waited to be served, and how many stalled connections were still open by then.
struct Stalled {
    n: usize,
    per_address: usize,
    stalled_rss_mb: f64,
    known_client_s: f64,
    new_client_s: f64,
    still_open: usize,
}

/// Stalled handshakes: twice the port's places, from as many addresses as that takes at
/// each one's limit (127.0.1.0 onwards), each holding a place until its deadline. A
/// client from an address already served (127.0.0.1), then one from a new address.
async fn stalled_handshakes(
    dir: &Path,
    services: SocketAddr,
    limits: &trm_node::config::LimitsSection,
    at_pid: u32,
) -> Result<Stalled> {
    let n = 2 * limits.max_connections;
    let per_address = limits.per_address();
    eprintln!("flood: {n} stalled TLS handshakes, {per_address} an address");
    let mut stalled = Vec::new();
    for i in 0..n {
        let a = (i / per_address) as u32;
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 1, 0)) + a);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((ip, 0).into())?;
        stalled.push(socket.connect(services).await?);
    }
    let stalled_rss_mb = rss_mb(at_pid);
    let known_client_s = served_after(dir, [127, 0, 0, 1].into(), services).await?;
    let new_client_s = served_after(dir, [127, 0, 0, 9].into(), services).await?;
    let still_open = stalled
        .iter()
        .filter(|tcp| {
            let mut buf = [0u8; 8];
            matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(stalled);
    Ok(Stalled {
        n,
        per_address,
        stalled_rss_mb,
        known_client_s,
        new_client_s,
        still_open,
    })
}

/// Returns a fresh folder for the run's nodes.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("trm-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
