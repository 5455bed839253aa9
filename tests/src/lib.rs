//! Test support for cross-node tests: [`TestFederation`] starts real nodes in this process,
//! each with sled in a temporary folder, listeners on `127.0.0.1:0` and the mutual-TLS
//! material of a freshly initialised sandbox.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use trm_core::ids::{NodeId, Role};
use trm_node::{Listeners, NodeConfig, NodeHandle};
use trm_proto::v1::{
    admin_service_client::AdminServiceClient, referral_service_client::ReferralServiceClient,
    return_planning_service_client::ReturnPlanningServiceClient,
    witness_hearing_service_client::WitnessHearingServiceClient,
};
use trmctl::sandbox::{self, NodeSpec};

/// Real nodes on loopback, stopped by [`TestFederation::stop`] (or dropped with the runtime).
pub struct TestFederation {
    dir: TempDir,
    specs: Vec<NodeSpec>,
    nodes: Vec<NodeHandle>,
}

async fn bind() -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
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

fn capture_logs() {
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

impl TestFederation {
    /// Starts one node per id, every node a peer of every other, capturing their logs.
    pub async fn start(ids: &[&str]) -> Result<Self> {
        capture_logs();
        Self::start_quiet(ids).await
    }

    /// Same as [`TestFederation::start`] without capturing logs (benchmarks).
    pub async fn start_quiet(ids: &[&str]) -> Result<Self> {
        trm_node::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let mut listeners = Vec::new();
        let mut specs = Vec::new();
        for id in ids {
            let (services, s) = bind().await?;
            let (federation, f) = bind().await?;
            let (admin, a) = bind().await?;
            let (metrics, m) = bind().await?;
            listeners.push(Listeners {
                services,
                federation,
                admin,
                metrics,
            });
            specs.push(NodeSpec {
                id: id.parse()?,
                services: s,
                federation: f,
                admin: a,
                metrics: m,
            });
        }
        sandbox::init(dir.path(), &specs, false)?;
        let mut nodes = Vec::new();
        for (spec, l) in specs.iter().zip(listeners) {
            let cfg = NodeConfig::load(&sandbox::config_path(dir.path(), spec.id))?;
            nodes.push(NodeHandle::spawn(cfg, l)?);
        }
        Ok(Self { dir, specs, nodes })
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
        };
        let cfg = NodeConfig::load(&sandbox::config_path(self.dir(), id))?;
        self.nodes.push(NodeHandle::spawn(cfg, listeners)?);
        Ok(())
    }

    /// Returns the sandbox folder (node folders, certificates, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the running node `id`.
    pub fn node(&self, id: &str) -> Result<&NodeHandle> {
        let id: NodeId = id.parse()?;
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .context("no such node")
    }

    /// Returns a `ReferralService` client of node `id` authenticated as `role`.
    pub async fn referrals(&self, id: &str, role: Role) -> Result<ReferralServiceClient<Channel>> {
        let ch = trmctl::scenario::client(self.dir(), id.parse()?, role, false).await?;
        Ok(ReferralServiceClient::new(ch))
    }

    /// Returns a `WitnessHearingService` client of node `id` authenticated as `role`.
    pub async fn hearings(
        &self,
        id: &str,
        role: Role,
    ) -> Result<WitnessHearingServiceClient<Channel>> {
        let ch = trmctl::scenario::client(self.dir(), id.parse()?, role, false).await?;
        Ok(WitnessHearingServiceClient::new(ch))
    }

    /// Returns a `ReturnPlanningService` client of node `id` authenticated as `role`.
    pub async fn returns(
        &self,
        id: &str,
        role: Role,
    ) -> Result<ReturnPlanningServiceClient<Channel>> {
        let ch = trmctl::scenario::client(self.dir(), id.parse()?, role, false).await?;
        Ok(ReturnPlanningServiceClient::new(ch))
    }

    /// Returns an `AdminService` client of node `id` authenticated as `role`.
    pub async fn admin(&self, id: &str, role: Role) -> Result<AdminServiceClient<Channel>> {
        let ch = trmctl::scenario::client(self.dir(), id.parse()?, role, true).await?;
        Ok(AdminServiceClient::new(ch))
    }

    /// Stops every node, flushing their stores.
    pub async fn stop(self) -> Result<TempDir> {
        for n in self.nodes {
            n.stop().await?;
        }
        Ok(self.dir)
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
        }
    }
}

/// Reads a node's metrics page (plain HTTP on the metrics port).
pub async fn metrics(addr: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Creates a case at `from` (as its service provider), records a referral consent to `to`
/// and submits a referral there. Returns the referral id.
pub async fn refer(fed: &TestFederation, from: &str, to: &str) -> Result<String> {
    let mut sp = fed.referrals(from, Role::ServiceProvider).await?;
    let case = sp
        .create_case(requests::case("Referred", 5))
        .await?
        .into_inner();
    sp.record_consent(requests::consent(
        &case.case_id,
        &[trm_proto::v1::Purpose::ReferralAssistance],
        &[to],
        &[],
    ))
    .await?;
    Ok(sp
        .submit_referral(trm_proto::v1::SubmitReferralRequest {
            case_id: case.case_id,
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
