//! What an operator does to keep a node alive: backups and restores.

use tonic::Code;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{requests, TestFederation};

/// Runs `trmctl restore` (blocking, as the command is) off the test's runtime.
async fn restore(
    config: &std::path::Path,
    from: &std::path::Path,
    force: bool,
) -> anyhow::Result<trm_store::backup::Restored> {
    let (config, from) = (config.to_path_buf(), from.to_path_buf());
    tokio::task::spawn_blocking(move || trmctl::admin::restore(&config, &from, force)).await?
}

/// Pages through `ListCases` with pages of `size`; returns the case ids in order. A page is
/// full or it is the last.
async fn list_all_cases(
    client: &mut trm_proto::v1::referral_service_client::ReferralServiceClient<
        tonic::transport::Channel,
    >,
    size: i32,
) -> anyhow::Result<Vec<String>> {
    let (mut ids, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_cases(w::ListCasesRequest {
                page_size: size,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        let n = page.cases.len();
        ids.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        anyhow::ensure!(n == size as usize, "a page with a next token is full: {n}");
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_restored_backup_brings_back_what_it_held_but_nothing_erased_since() -> anyhow::Result<()>
{
    let mut fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let kept = sp
        .create_case(requests::case("Kept", 3))
        .await?
        .into_inner();
    let erased = sp
        .create_case(requests::case("Erased", 3))
        .await?
        .into_inner();
    let later = sp
        .create_case(requests::case("Later", 3))
        .await?
        .into_inner();
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let backup = fed.dir().join("backups/at-1");
    let r = admin
        .backup(w::BackupRequest {
            path: backup.display().to_string(),
        })
        .await?
        .into_inner();
    assert!(r.bytes > 0);
    let err = admin
        .backup(w::BackupRequest {
            path: backup.display().to_string(),
        })
        .await
        .expect_err("the folder is not empty");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("path"), "{}", err.message());
    let err = admin
        .backup(w::BackupRequest {
            path: "relative/folder".into(),
        })
        .await
        .expect_err("relative");
    assert!(err.message().starts_with("path"), "{}", err.message());

    // After the backup: a case is erased, and a new one created.
    sp.erase_case(w::EraseCaseRequest {
        case_id: erased.case_id.clone(),
        reason: "victim's request".into(),
        ..Default::default()
    })
    .await?;
    drop((sp, admin));
    fed.stop_node("AT").await?;

    let config = fed.dir().join("AT/node.toml");
    let err = restore(&config, &backup, false)
        .await
        .expect_err("data present");
    assert!(err.to_string().contains("--force"), "{err}");
    // A backup whose files do not match the manifest is refused.
    let forged = fed.dir().join("backups/forged");
    std::fs::create_dir_all(&forged)?;
    for f in std::fs::read_dir(&backup)? {
        let f = f?;
        std::fs::copy(f.path(), forged.join(f.file_name()))?;
    }
    let mut bytes = std::fs::read(forged.join("store.kv"))?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(forged.join("store.kv"), bytes)?;
    let err = restore(&config, &forged, true).await.expect_err("tampered");
    assert!(err.to_string().contains("digest"), "{err}");

    let restored = restore(&config, &backup, true).await?;
    assert!(restored.erasures_applied >= 1);
    fed.start_node("AT").await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let back = sp
        .get_case(w::GetCaseRequest {
            case_id: kept.case_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(back.person.map(|p| p.given_name), Some("Kept".to_owned()));
    let err = sp
        .get_case(w::GetCaseRequest {
            case_id: erased.case_id.clone(),
        })
        .await
        .expect_err("erased after the backup: still erased");
    assert_eq!(err.code(), Code::NotFound);
    // The erased case's sealed record is back with the backup, but not its key: a client
    // paging through the cases one at a time passes over it and reaches every other case.
    for role in [Role::ServiceProvider, Role::FocalPoint] {
        let listed = list_all_cases(&mut fed.referrals("AT", role).await?, 1).await?;
        assert_eq!(
            listed,
            [kept.case_id.clone(), later.case_id.clone()],
            "{role} pages through every case"
        );
    }
    let audit = fed
        .admin("AT", Role::Operator)
        .await?
        .verify_audit(w::VerifyAuditRequest::default())
        .await?
        .into_inner();
    assert!(audit.ok, "{audit:?}");
    fed.stop().await?;
    Ok(())
}

/// A PostgreSQL server that takes connections and never answers, until told to hang up
/// (or after `hold`): a database that does not answer yet.
struct SilentDatabase {
    addr: std::net::SocketAddr,
    hang_up: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl SilentDatabase {
    fn start(hold: std::time::Duration) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (hang_up, told) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let until = std::time::Instant::now() + hold;
            let mut held = Vec::new();
            while std::time::Instant::now() < until {
                if let Ok((conn, _)) = listener.accept() {
                    held.push(conn);
                }
                if told
                    .recv_timeout(std::time::Duration::from_millis(10))
                    .is_ok()
                {
                    break;
                }
            }
        });
        Ok(Self {
            addr,
            hang_up,
            thread,
        })
    }

    fn hang_up(self) {
        let _ = self.hang_up.send(());
        let _ = self.thread.join();
    }
}

#[tokio::test]
async fn a_node_whose_database_does_not_answer_yet_holds_up_nothing_else_in_its_process(
) -> anyhow::Result<()> {
    // One thread runs everything here, as it may in a process that runs several nodes.
    let fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let db = SilentDatabase::start(std::time::Duration::from_secs(20))?;
    let mut cfg = fed.config("AT".parse()?)?;
    cfg.storage.engine = "postgres".into();
    cfg.storage.url = Some(format!("postgres://trm@{}/trm", db.addr));
    cfg.storage.url_file = None;
    cfg.node.data_dir = fed.dir().join("silent");
    let building = tokio::spawn(trm_node::server::build(cfg, Default::default()));
    // While the other node waits for its database, this one serves.
    for _ in 0..3 {
        tokio::task::yield_now().await;
        sp.list_cases(w::ListCasesRequest::default()).await?;
    }
    assert!(
        !building.is_finished(),
        "the other node is still opening its store, and held up nothing"
    );
    db.hang_up();
    let refused = building.await?;
    assert!(refused.is_err(), "a database that hangs up is refused");
    fed.stop().await?;
    Ok(())
}
