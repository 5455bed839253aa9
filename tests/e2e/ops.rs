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
    assert!(restored.reapplied.erasures >= 1);
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

/// Copies `from` into `to`, leaving out the entries `skip` names.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, skip: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if skip.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &to.join(&name), skip)?;
        } else {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_backup_restored_on_a_fresh_host_without_the_key_file_is_refused() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT"]).await?;
    if trm_tests::on_postgres() {
        // The fresh host would share the database schema: this is about files.
        return fed.stop().await.map(drop);
    }
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let erased = sp
        .create_case(requests::case("Erased Before-Restore", 3))
        .await?
        .into_inner();
    let backup = fed.dir().join("backups/at");
    fed.admin("AT", Role::Operator)
        .await?
        .backup(w::BackupRequest {
            path: backup.display().to_string(),
        })
        .await?;
    sp.erase_case(w::EraseCaseRequest {
        case_id: erased.case_id.clone(),
        reason: "victim's request".into(),
        ..Default::default()
    })
    .await?;
    drop(sp);
    fed.stop_node("AT").await?;
    // Someone holding the backup and the master key, on a host of their own: the node's
    // folder without its data, key file and journal.
    let node = fed.dir().join("AT");
    let cfg = trm_node::NodeConfig::load(&node.join("node.toml"))?;
    let fresh = fed.dir().join("fresh-AT");
    let key_file = cfg
        .node
        .key_store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key_stem = key_file.split('.').next().unwrap_or_default().to_owned();
    let data = cfg
        .node
        .data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    copy_tree(&node, &fresh, &[&data, &key_stem])?;
    let err = restore(&fresh.join("node.toml"), &backup, true)
        .await
        .expect_err("no key file: nothing opens")
        .to_string();
    assert!(
        err.contains("key file") && err.contains(&key_file),
        "the refusal names the file it needs: {err}"
    );
    assert!(
        trm_tests::files_containing(&fresh, b"Erased Before-Restore").is_empty(),
        "nothing of the erased case in clear"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_restore_never_undoes_a_revocation_or_a_peer_removal_and_is_audited() -> anyhow::Result<()>
{
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let backup = fed.dir().join("backups/at");
    admin
        .backup(w::BackupRequest {
            path: backup.display().to_string(),
        })
        .await?;
    // After the backup: a client certificate revoked, the peer RO removed.
    let ja = fed.dir().join("AT/clients/judicial_authority.pem");
    let serial = trmctl::admin::serial_of_pem(&ja)?;
    admin
        .revoke_client_certificate(w::RevokeClientCertificateRequest {
            serial_hex: serial.clone(),
            ..Default::default()
        })
        .await?;
    admin
        .remove_peer(w::RemovePeerRequest {
            node_id: "RO".into(),
            ..Default::default()
        })
        .await?;
    drop(admin);
    fed.stop_node("AT").await?;
    restore(&fed.config_path("AT".parse()?), &backup, true).await?;
    fed.start_node("AT").await?;
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let revoked = admin
        .list_revoked_client_certificates(w::ListRevokedClientCertificatesRequest::default())
        .await?
        .into_inner()
        .certificates;
    assert!(
        revoked.iter().any(|c| c.serial_hex == serial),
        "the revocation holds after the restore: {revoked:?}"
    );
    let refused = match fed.hearings("AT", Role::JudicialAuthority).await {
        Err(_) => true,
        Ok(mut c) => c
            .list_hearings(w::ListHearingsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "the revoked certificate is refused");
    let peers = admin
        .list_peers(w::ListPeersRequest::default())
        .await?
        .into_inner()
        .peers;
    assert!(
        peers.iter().all(|p| p.node_id != "RO"),
        "the removed peer stays removed: {peers:?}"
    );
    let audit = admin
        .export_audit(w::ExportAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let restore_entry = audit
        .entries
        .iter()
        .find(|e| e.action == "store.restore")
        .ok_or_else(|| anyhow::anyhow!("the restore is not in the restored chain"))?;
    assert!(restore_entry.actor.starts_with("os:"), "{restore_entry:?}");
    assert!(
        restore_entry.detail.contains("revocations=") && restore_entry.detail.contains("backup="),
        "{restore_entry:?}"
    );
    let verified = admin
        .verify_audit(w::VerifyAuditRequest::default())
        .await?
        .into_inner();
    assert!(verified.ok, "{verified:?}");
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

/// An erasure asked for after the backup a node is restored from is asked for again: the
/// request queued then is not in the backup, and without it the other node would keep the
/// victim's data for good.
#[tokio::test]
async fn an_erasure_request_queued_after_the_backup_is_sent_again_after_a_restore(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .clone()
        .create_case(requests::case("Erased after the backup", 30))
        .await?
        .into_inner()
        .case_id;
    let referral_id = trm_tests::refer_case(&sp, &case_id, "RO").await?;
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    trm_tests::referral_arrived(&ro, &referral_id).await?;
    let backup = fed.dir().join("backups/at-1");
    fed.admin("AT", Role::Operator)
        .await?
        .backup(w::BackupRequest {
            path: backup.display().to_string(),
        })
        .await?;
    // RO is away: the erasure request waits in AT's outbox, which the backup predates.
    fed.stop_node("RO").await?;
    fed.referrals("AT", Role::ServiceProvider)
        .await?
        .erase_case(w::EraseCaseRequest {
            case_id: case_id.clone(),
            reason: "victim's request".into(),
            ..Default::default()
        })
        .await?;
    fed.stop_node("AT").await?;
    restore(&fed.config_path("AT".parse()?), &backup, true).await?;
    fed.start_node("AT").await?;
    fed.start_node("RO").await?;
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    trm_tests::eventually("RO's copy erased", || {
        let (mut ro, id) = (ro.clone(), referral_id.clone());
        async move {
            let copy = ro
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            let erased = copy
                .disclosed
                .is_some_and(|d| d.age_band == 0 && d.gender == 0 && d.needs.is_none());
            Ok(erased.then_some(()))
        }
    })
    .await?;
    // AT's record of what it sent was ended again, and takes RO's confirmation.
    let at = fed.referrals("AT", Role::FocalPoint).await?;
    trm_tests::eventually("RO's confirmation at AT", || {
        let (mut at, id) = (at.clone(), referral_id.clone());
        async move {
            let r = at
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            Ok(r.erasure_confirmed.then_some(()))
        }
    })
    .await?;
    fed.stop().await?;
    Ok(())
}

/// A secret key file other accounts of the machine can read (copied with `cp` or `scp`
/// defaults: 0644) stops the node at start, naming the file, rather than running with it.
#[cfg(unix)]
#[tokio::test]
async fn a_node_whose_secret_key_files_others_can_read_does_not_start() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut fed = TestFederation::start(&["AT"]).await?;
    fed.stop_node("AT").await?;
    let cfg = trm_node::NodeConfig::load(&fed.config_path("AT".parse()?))?;
    for (key, path) in [
        ("node.master_key", cfg.node.master_key.clone()),
        ("signing.key", cfg.signing.key.clone()),
        ("tls.federation_key", cfg.tls.federation_key.clone()),
        ("tls.services_key", cfg.tls.services_key.clone()),
    ] {
        let before = std::fs::metadata(&path)?.permissions();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let err = match trm_node::server::build(cfg.clone(), Default::default()).await {
            Ok(_) => anyhow::bail!("started with {key} readable by others"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key) && err.contains("0600"), "{err}");
        std::fs::set_permissions(&path, before)?;
    }
    fed.start_node("AT").await?;
    fed.stop().await?;
    Ok(())
}
