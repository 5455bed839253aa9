//! Storage faults on a real small file system: the data folder of a `trm-node` process is a
//! 16 MiB tmpfs of its own, in a user and mount namespace of its own (`unshare`, no root
//! needed), filled to the last byte, then made read-only, then given back. What a user
//! cares about: writes are refused (UNAVAILABLE) and change nothing, no read of a victim
//! record is served without its audit entry, reads without one are served, readiness and
//! the log say why, writes come back by themselves when the disk does, nothing
//! acknowledged is lost and SIGTERM exits 0.
//!
//! Linux refuses to remount a file system read-only while a file on it is open for writing
//! (sled's database is), except when the kernel does it itself after an error
//! (`errors=remount-ro`). So "read-only" here is a read-only bind mount laid over the data
//! folder while the node runs: the node sees what it sees after such a remount (statvfs
//! reports the folder read-only, a new file there fails with EROFS).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{anyhow, bail, ensure, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::health_check_response::ServingStatus;
use trm_core::ids::Role;
use trm_proto::v1::{
    self as w, admin_service_client::AdminServiceClient,
    referral_service_client::ReferralServiceClient,
};
use trm_tests::{eventually, free_node_spec as spec, http_get, requests};
use trmctl::sandbox;

const NODE: &str = env!("CARGO_BIN_EXE_trm-test-node");

/// A tmpfs mounted on a folder inside a user and mount namespace of its own, kept alive by
/// a holder process; nodes are started inside that namespace, the test reaches the tmpfs
/// through the holder's `/proc/<pid>/root`.
struct SmallDisk {
    holder: Child,
    at: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB on `at` (created if missing) in a new namespace.
    async fn mount(at: &Path, mib: u32) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let mut holder = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$0" && echo mounted && exec cat"#)
            .arg(at)
            .arg(format!("{mib}m"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context(
                "the storage-fault tests run util-linux `unshare` (and `nsenter`, `mount`): \
                 install util-linux",
            )?;
        let stdout = holder.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        if line.trim() != "mounted" {
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                e.read_to_string(&mut err).await?;
            }
            bail!(
                "cannot mount a small file system in a user and mount namespace of its own \
                 (`unshare --user --map-root-user --mount`): unprivileged user namespaces must \
                 be allowed (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also \
                 kernel.apparmor_restrict_unprivileged_userns=0): {}",
                err.trim()
            );
        }
        Ok(Self {
            holder,
            at: at.to_path_buf(),
        })
    }

    fn pid(&self) -> anyhow::Result<String> {
        Ok(self
            .holder
            .id()
            .ok_or_else(|| anyhow!("the namespace holder is gone"))?
            .to_string())
    }

    /// `nsenter` into the namespace, then `args`.
    fn enter(&self) -> anyhow::Result<Command> {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.pid()?,
            "-U",
            "-m",
            "--preserve-credentials",
            "--",
        ]);
        Ok(c)
    }

    /// Runs `args` inside the namespace (as its root).
    async fn run(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let out = self.enter()?.args(args).output().await?;
        ensure!(
            out.status.success(),
            "{args:?} in the namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Runs the node of `config` inside the namespace (its log, on stdout, and anything on
    /// stderr to `<config>.log`).
    fn spawn_node(&self, config: &Path) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_extension("log"))?;
        Ok(self
            .enter()?
            .arg(NODE)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    /// The filler file, as this process reaches it.
    fn filler(&self) -> anyhow::Result<PathBuf> {
        let inside = self.at.strip_prefix("/").context("an absolute path")?;
        Ok(Path::new("/proc")
            .join(self.pid()?)
            .join("root")
            .join(inside)
            .join("filler"))
    }

    /// Fills the file system to its last byte.
    fn fill(&self) -> anyhow::Result<()> {
        let mut f = std::fs::File::create(self.filler()?)?;
        let block = vec![0x5a_u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e.into()),
            }
        }
        // The last partial block, to the byte.
        for size in [4096usize, 512, 1] {
            while f.write(&block[..size]).is_ok_and(|n| n > 0) {}
        }
        Ok(())
    }

    /// Frees what `fill` took.
    fn free(&self) -> anyhow::Result<()> {
        Ok(std::fs::remove_file(self.filler()?)?)
    }

    /// Lays a read-only bind mount over the data folder.
    async fn read_only(&self) -> anyhow::Result<()> {
        let at = self.at.as_os_str();
        self.run(&[
            "mount".as_ref(),
            "--bind".as_ref(),
            "-o".as_ref(),
            "ro".as_ref(),
            at,
            at,
        ])
        .await
    }

    /// Takes the read-only mount away again.
    async fn writable(&self) -> anyhow::Result<()> {
        self.run(&["umount".as_ref(), self.at.as_os_str()]).await
    }
}

async fn channel(dir: &Path, role: Role, admin: bool) -> anyhow::Result<Channel> {
    eventually("the node to serve", || async move {
        Ok(trmctl::scenario::client(dir, "AT".parse()?, role, admin)
            .await
            .ok())
    })
    .await
}

/// Polls `/readyz` until it answers `code`; returns the answer.
async fn readyz(metrics: std::net::SocketAddr, code: &str) -> anyhow::Result<String> {
    eventually(&format!("/readyz {code}"), || async move {
        let r = http_get(metrics, "/readyz").await?;
        Ok(r.starts_with(&format!("HTTP/1.0 {code}")).then_some(r))
    })
    .await
}

/// Polls the gRPC health of `ReferralService` (clear text on the metrics port) until it
/// is `want`.
async fn grpc_health(metrics: std::net::SocketAddr, want: ServingStatus) -> anyhow::Result<()> {
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{metrics}"))?
        .connect()
        .await?;
    trm_tests::referral_health_becomes(&plain, want).await
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> anyhow::Result<()> {
    let err = r
        .err()
        .ok_or_else(|| anyhow!("{what} was taken on a disk that cannot take it"))?;
    ensure!(err.code() == Code::Unavailable, "{what}: {err:?}");
    ensure!(
        err.message() == "storage unavailable",
        "{what}: the client is told storage, no detail: {err:?}"
    );
    Ok(())
}

/// The given names of this test's victims: none may reach the log.
const NAMES: [&str; 5] = ["Kestrel", "Ondine", "Thessaly", "Quillon", "Refusenik"];

/// What the node does while its data folder cannot take writes (`cause` is how readiness,
/// Status and the log name it). Returns how many reads of `kept` it served.
async fn while_refusing(
    sp: &mut ReferralServiceClient<Channel>,
    admin: &mut AdminServiceClient<Channel>,
    metrics: std::net::SocketAddr,
    kept: &w::Case,
    cause: &str,
) -> anyhow::Result<u64> {
    unavailable(
        sp.create_case(requests::case(NAMES[4], 2)).await,
        "a new case",
    )?;
    // A read of a victim record: refused, or served with its audit entry (counted and
    // checked against the audit log at the end).
    let served = match sp
        .get_case(w::GetCaseRequest {
            case_id: kept.case_id.clone(),
        })
        .await
    {
        Ok(c) => {
            ensure!(c.into_inner().person == kept.person);
            1
        }
        Err(e) => {
            ensure!(e.code() == Code::Unavailable, "{e:?}");
            0
        }
    };
    // Reads that need no audit entry are served.
    let status = admin
        .status(w::StatusRequest::default())
        .await
        .context("Status is served while the disk cannot take writes")?
        .into_inner();
    ensure!(
        status.health.starts_with("NOT_SERVING") && status.health.contains(cause),
        "{}",
        status.health
    );
    admin
        .list_outbox(w::ListOutboxRequest::default())
        .await
        .context("ListOutbox is served")?;
    let ready = readyz(metrics, "503").await?;
    ensure!(ready.contains(cause), "readiness names the cause: {ready}");
    // Alive: a restart would not free the disk, and the node recovers by itself.
    let live = http_get(metrics, "/healthz").await?;
    ensure!(live.starts_with("HTTP/1.0 200"), "{live}");
    grpc_health(metrics, ServingStatus::NotServing).await?;
    Ok(served)
}

/// Every audit entry of the node, page after page.
async fn audit(admin: &mut AdminServiceClient<Channel>) -> anyhow::Result<Vec<w::AuditEntry>> {
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = admin
            .export_audit(w::ExportAuditRequest {
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        all.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

async fn outgoing(sp: &mut ReferralServiceClient<Channel>) -> anyhow::Result<Vec<w::Referral>> {
    Ok(sp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Outgoing as i32,
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals)
}

async fn refer(
    sp: &mut ReferralServiceClient<Channel>,
    case: &w::Case,
) -> Result<(), tonic::Status> {
    sp.submit_referral(w::SubmitReferralRequest {
        case_id: case.case_id.clone(),
        destination: "RO".into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn consent(sp: &mut ReferralServiceClient<Channel>, case: &w::Case) -> anyhow::Result<()> {
    sp.record_consent(requests::consent(
        &case.case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;
    Ok(())
}

/// Waits until AT holds RO's receipt for every outgoing referral (then nothing is left for
/// delivery to write).
async fn all_delivered(sp: &ReferralServiceClient<Channel>, n: usize) -> anyhow::Result<()> {
    eventually("every referral delivered", || {
        let mut sp = sp.clone();
        async move {
            let out = outgoing(&mut sp).await?;
            Ok((out.len() == n
                && out
                    .iter()
                    .all(|r| r.status == w::ReferralStatus::Delivered as i32))
            .then_some(()))
        }
    })
    .await
}

#[tokio::test]
async fn a_full_then_read_only_data_folder_refuses_writes_serves_reads_and_takes_writes_again_without_restart(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    sandbox::init(root, &[spec("AT")?, spec("RO")?], false)?;
    let config = root.join("AT/node.toml");
    let metrics = trm_node::NodeConfig::load(&config)?.listen.metrics;
    let disk = SmallDisk::mount(&root.join("AT/data"), 16).await?;
    let mut at = disk.spawn_node(&config)?;
    let mut ro = trm_tests::spawn_node_process(NODE, &root.join("RO/node.toml"))?;
    let mut sp = ReferralServiceClient::new(channel(root, Role::ServiceProvider, false).await?);
    let mut admin = AdminServiceClient::new(channel(root, Role::Operator, true).await?);

    // Acknowledged before the disk fills: a case referred to RO, a second with consent.
    let kept = sp
        .create_case(requests::case(NAMES[0], 5))
        .await?
        .into_inner();
    consent(&mut sp, &kept).await?;
    refer(&mut sp, &kept).await?;
    let second = sp
        .create_case(requests::case(NAMES[1], 5))
        .await?
        .into_inner();
    consent(&mut sp, &second).await?;
    all_delivered(&sp, 1).await?;
    sp.get_case(w::GetCaseRequest {
        case_id: kept.case_id.clone(),
    })
    .await?;
    let mut served_reads = 1;

    // Full to the last byte.
    disk.fill()?;
    unavailable(refer(&mut sp, &second).await, "a referral")?;
    served_reads += while_refusing(&mut sp, &mut admin, metrics, &kept, "full").await?;
    disk.free()?;
    readyz(metrics, "200").await?;
    grpc_health(metrics, ServingStatus::Serving).await?;
    // Without a restart: the refused referral was not half-applied (no referral of the
    // second case, nothing queued), and submitting it now works.
    ensure!(
        outgoing(&mut sp).await?.len() == 1,
        "the refused referral left nothing"
    );
    refer(&mut sp, &second).await?;
    let third = sp
        .create_case(requests::case(NAMES[2], 1))
        .await?
        .into_inner();
    all_delivered(&sp, 2).await?;

    // Read-only.
    disk.read_only().await?;
    served_reads += while_refusing(&mut sp, &mut admin, metrics, &kept, "read-only").await?;
    disk.writable().await?;
    readyz(metrics, "200").await?;
    let fourth = sp
        .create_case(requests::case(NAMES[3], 1))
        .await?
        .into_inner();

    // Never a served read without its audit entry.
    let reads = audit(&mut admin)
        .await?
        .into_iter()
        .filter(|e| e.action == "case.read" && e.subject == kept.case_id)
        .count() as u64;
    assert_eq!(reads, served_reads, "one audit entry per read served");

    let log = std::fs::read_to_string(config.with_extension("log"))?;
    for cause in ["the data folder is full", "the data folder is read-only"] {
        assert!(
            log.contains(cause),
            "the log names the cause ({cause}):\n{log}"
        );
    }
    for name in NAMES {
        assert!(!log.contains(name), "no personal data in the log");
    }

    drop((sp, admin));
    let status = trm_tests::terminate(&mut at).await?;
    assert!(status.success(), "a clean shutdown exits 0: {status:?}");

    // Everything acknowledged is on the disk, exactly once.
    let _at = disk.spawn_node(&config)?;
    let mut sp = ReferralServiceClient::new(channel(root, Role::ServiceProvider, false).await?);
    let mut ids: Vec<String> = sp
        .list_cases(w::ListCasesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .cases
        .into_iter()
        .map(|c| c.case_id)
        .collect();
    ids.sort();
    let mut want = vec![kept.case_id, second.case_id, third.case_id, fourth.case_id];
    want.sort();
    assert_eq!(ids, want, "every acknowledged case, and no refused one");
    assert_eq!(outgoing(&mut sp).await?.len(), 2);
    drop(sp);
    assert!(trm_tests::terminate(&mut ro).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_write_that_fails_inside_sled_latches_the_node_until_a_restart_and_loses_nothing_acknowledged(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    sandbox::init(root, &[spec("AT")?], false)?;
    let config = root.join("AT/node.toml");
    // No reserve: sled itself meets the full disk.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&config)?
        .write_all(b"\n[storage]\nmin_free_mib = 0\n")?;
    let metrics = trm_node::NodeConfig::load(&config)?.listen.metrics;
    let disk = SmallDisk::mount(&root.join("AT/data"), 16).await?;
    let mut at = disk.spawn_node(&config)?;
    let mut sp = ReferralServiceClient::new(channel(root, Role::ServiceProvider, false).await?);
    let kept = sp
        .create_case(requests::case(NAMES[0], 5))
        .await?
        .into_inner();

    disk.fill()?;
    unavailable(
        sp.create_case(requests::case(NAMES[4], 2)).await,
        "a new case",
    )?;
    disk.free()?;
    // sled keeps its first I/O error until it is opened again, and what it holds in memory
    // may not be on the disk: the node stays latched, and tells its liveness probe so.
    unavailable(
        sp.create_case(requests::case(NAMES[4], 2)).await,
        "a case after space returned",
    )?;
    let live = http_get(metrics, "/healthz").await?;
    assert!(live.starts_with("HTTP/1.0 503"), "{live}");
    readyz(metrics, "503").await?;
    let log = std::fs::read_to_string(config.with_extension("log"))?;
    assert!(
        log.contains("a durable point failed") && log.contains("No space left on device"),
        "the log names the cause:\n{log}"
    );
    for name in NAMES {
        assert!(!log.contains(name), "no personal data in the log");
    }
    drop(sp);
    let status = trm_tests::terminate(&mut at).await?;
    assert!(status.success(), "a clean shutdown exits 0: {status:?}");

    let _at = disk.spawn_node(&config)?;
    let mut sp = ReferralServiceClient::new(channel(root, Role::ServiceProvider, false).await?);
    let back = sp
        .get_case(w::GetCaseRequest {
            case_id: kept.case_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        back.person, kept.person,
        "acknowledged before the fault, kept"
    );
    let cases = sp
        .list_cases(w::ListCasesRequest::default())
        .await?
        .into_inner()
        .cases;
    assert_eq!(cases.len(), 1, "the refused case is not there");
    sp.create_case(requests::case(NAMES[2], 1)).await?;
    Ok(())
}
