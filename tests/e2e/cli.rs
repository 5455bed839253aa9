//! The operator's commands, run as a new operator would run them (the real `trmctl`
//! command line as a process) against running nodes.

use std::path::Path;

use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::TestFederation;

/// Runs `trmctl ARGS...`; returns (success, stdout, stderr).
pub(crate) async fn trmctl(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trm-test-ctl"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn an_operator_watches_changes_and_repairs_a_node_with_trmctl() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro) = (
        fed.dir().join("AT/node.toml"),
        fed.dir().join("RO/node.toml"),
    );
    let (at, ro) = (s(&at), s(&ro));

    // Status probes each peer now.
    let (ok, out, err) = trmctl(&["status", "--config", &at]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("node AT: SERVING"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("RO") && l.contains(" yes ")),
        "{out}"
    );
    assert!(out.contains("federation certificate   expires 20"), "{out}");
    let (ok, out, _) = trmctl(&["status", "--config", &at, "--json"]).await?;
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(status["peers"][0]["node_id"], "RO");
    assert_eq!(status["peers"][0]["reachable"], true);
    fed.stop_node("RO").await?;
    let (_, out, _) = trmctl(&["status", "--config", &at, "--json"]).await?;
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(status["peers"][0]["reachable"], false, "{out}");
    assert_ne!(status["peers"][0]["probe_error"], "", "{out}");
    fed.start_node("RO").await?;

    // Peers: RO removes AT, so what AT sends is refused for good and dead-lettered.
    let (ok, out, _) = trmctl(&["peer", "list", "--config", &ro, "--json"]).await?;
    assert!(ok);
    let peers: serde_json::Value = serde_json::from_str(&out)?;
    let endpoint = peers[0]["endpoint"].as_str().unwrap_or_default().to_owned();
    assert_eq!(peers[0]["node_id"], "AT");
    let (ok, out, err) = trmctl(&["peer", "remove", "--config", &ro, "--node-id", "AT"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("removed peer AT"), "{out}");
    let referral = trm_tests::refer(&fed, "AT", "RO").await?;
    let dead = trm_tests::eventually("the dead letter", || async {
        let (_, out, _) = trmctl(&["outbox", "list", "--config", &at, "--dead", "--json"]).await?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        Ok(list
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e["message_id"].as_str().map(str::to_owned)))
    })
    .await?;
    let (_, out, _) = trmctl(&["outbox", "list", "--config", &at, "--dead"]).await?;
    assert!(
        out.contains("referral_offer") && out.contains("DEAD"),
        "{out}"
    );
    // RO adds AT back, the second time is refused with what to do, and AT retries.
    let add = |verb: &'static str| {
        let (ro, endpoint) = (ro.clone(), endpoint.clone());
        let ca = s(&fed.dir().join("AT/tls/federation-ca.pem"));
        let key = s(&fed.dir().join("AT/keys/signing.pub.pem"));
        async move {
            trmctl(&[
                "peer",
                verb,
                "--config",
                &ro,
                "--node-id",
                "AT",
                "--endpoint",
                &endpoint,
                "--tls-ca",
                &ca,
                "--signing-key",
                &key,
            ])
            .await
        }
    };
    let (ok, out, err) = add("add").await?;
    assert!(ok && out.contains("added peer AT"), "{out} {err}");
    let (ok, _, err) = add("add").await?;
    assert!(!ok && err.contains("peer update"), "{err}");
    let (ok, out, err) = add("update").await?;
    assert!(ok && out.contains("changed peer AT"), "{out} {err}");
    let (ok, out, err) =
        trmctl(&["outbox", "retry", "--config", &at, "--message-id", &dead]).await?;
    assert!(ok && out.contains("queued"), "{out} {err}");
    let fp = fed.referrals("RO", Role::FocalPoint).await?;
    trm_tests::eventually("the retried referral at RO", || {
        let (mut fp, id) = (fp.clone(), referral.clone());
        async move {
            Ok(fp
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await
                .ok())
        }
    })
    .await?;

    // Keys, audit, statistics, revocations, backups.
    let (ok, out, err) = trmctl(&["keys", "rotate", "--config", &at]).await?;
    assert!(ok, "{err}");
    let key_id = out
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .trim_end_matches(':')
        .to_owned();
    let (_, out, _) = trmctl(&["status", "--config", &at]).await?;
    assert!(
        out.contains(&format!("signing key {key_id}")),
        "{key_id}: {out}"
    );
    let (ok, out, _) = trmctl(&["audit", "verify", "--config", &at]).await?;
    assert!(ok && out.starts_with("audit chain ok"), "{out}");
    let (ok, out, _) = trmctl(&["client", "revoked", "--config", &at]).await?;
    assert!(
        ok && out.contains("no client certificate is revoked"),
        "{out}"
    );
    let today = time::OffsetDateTime::now_utc().date();
    let this_month = today.replace_day(1).unwrap_or(today);
    let last = (this_month - time::Duration::days(1))
        .replace_day(1)
        .unwrap_or(today);
    let (ok, out, err) = trmctl(&[
        "stats",
        "export",
        "--config",
        &at,
        "--from",
        &last.to_string(),
        "--to",
        &this_month.to_string(),
    ])
    .await?;
    assert!(ok, "{err}");
    assert!(out.starts_with("table,labels,count,suppressed"), "{out}");
    let (ok, _, err) = trmctl(&[
        "stats",
        "export",
        "--config",
        &at,
        "--from",
        &this_month.to_string(),
        "--to",
        &this_month.to_string(),
    ])
    .await?;
    assert!(!ok && err.contains("--to"), "{err}");
    let backup = s(&fed.dir().join("backups/cli"));
    let (ok, out, err) = trmctl(&["backup", "--config", &at, "--out", &backup]).await?;
    assert!(ok && out.starts_with("backup written to"), "{out} {err}");
    // A restore never replaces the store under the running node, whatever the flags.
    for force in [&[][..], &["--force"][..]] {
        let mut args = vec!["restore", "--config", &at, "--from", &backup];
        args.extend_from_slice(force);
        let (ok, _, err) = trmctl(&args).await?;
        assert!(!ok && err.contains("node AT is running"), "{err}");
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_node_made_by_node_init_starts_and_answers_its_operator() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The operator guide's layout: configuration apart from what the node writes.
    let (node, state) = (dir.path().join("etc/trm"), dir.path().join("var/lib/trm"));
    let free = || -> anyhow::Result<String> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string())
    };
    let (services, federation, admin, metrics) = (free()?, free()?, free()?, free()?);
    let (ok, out, err) = trmctl(&[
        "node",
        "init",
        "--dir",
        &s(&node),
        "--state-dir",
        &s(&state),
        "--id",
        "AT",
        "--name",
        "Austria national focal point",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
        "--services-listen",
        &services,
        "--federation-listen",
        &federation,
        "--admin-listen",
        &admin,
        "--metrics-listen",
        &metrics,
    ])
    .await?;
    assert!(ok, "{err}");
    assert!(out.contains("next:") && out.contains("master.key"), "{out}");
    assert!(state.join("data").is_dir() && state.join("keys/signing.pem").is_file());
    assert!(
        !node.join("data").exists(),
        "nothing the node writes under the configuration"
    );
    let (ok, _, err) = trmctl(&[
        "node",
        "init",
        "--dir",
        &s(&node),
        "--id",
        "AT",
        "--name",
        "x",
        "--host",
        "localhost",
    ])
    .await?;
    assert!(!ok && err.contains("already holds a node"), "{err}");
    // The real node process, its log going to a file as under a service manager.
    let config = node.join("node.toml");
    let mut child = trm_tests::spawn_node_process(env!("CARGO_BIN_EXE_trm-test-node"), &config)?;
    let out = trm_tests::eventually("the new node to answer", || {
        let config = s(&config);
        async move {
            let (ok, out, _) = trmctl(&["status", "--config", &config]).await?;
            Ok(ok.then_some(out))
        }
    })
    .await?;
    assert!(out.contains("node AT: SERVING"), "{out}");
    let log = std::fs::read_to_string(config.with_extension("log"))?;
    let started = log
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_default();
    for addr in [&services, &federation, &admin, &metrics] {
        assert!(started.contains(addr.as_str()), "{addr} not in: {log}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    // A second node on the same addresses is refused, naming the address and its key.
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_trm-test-node"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .await?;
    assert!(!second.status.success());
    let err = String::from_utf8(second.stderr)?;
    assert!(
        err.contains(&services) && err.contains("listen.services") && err.contains("in use"),
        "{err}"
    );
    trm_tests::terminate(&mut child).await?;
    Ok(())
}
