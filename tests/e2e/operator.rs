//! The traps a new operator met, each as the operator meets it: the real `trmctl` and, where
//! it matters, the real `trm-node` process. Key rotation and peer updates, a peer that does
//! not hold our key, onboarding before the peer added us, revoked certificates, one peer
//! directory, the node's start-up log, and what every command prints.

use std::path::Path;

use tonic::Code;
use trm_core::ids::Role;
use trm_crypto::files;
use trm_proto::v1 as w;
use trm_tests::{eventually, TestFederation};

use crate::cli::{s, trmctl};

/// Runs trmctl with `--json` appended; returns the parsed output (the command must succeed).
async fn json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = trmctl(&all).await?;
    anyhow::ensure!(ok, "trmctl {args:?} failed: {err}");
    serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}"))
}

/// `trmctl peer add` of node `peer` of `fed` to the node whose config is `config`, with
/// the peer's endpoint, federation CA and signing key: (success, stdout, stderr).
async fn peer_add(
    fed: &TestFederation,
    config: &str,
    peer: &str,
) -> anyhow::Result<(bool, String, String)> {
    let dir = fed.dir().join(peer);
    trmctl(&[
        "peer",
        "add",
        "--config",
        config,
        "--node-id",
        peer,
        "--endpoint",
        &fed.node(peer)?.addrs.federation.to_string(),
        "--tls-ca",
        &s(&dir.join("tls/federation-ca.pem")),
        "--signing-key",
        &s(&dir.join("keys/signing.pub.pem")),
    ])
    .await
}

/// The key id of the public key in a PEM file.
fn key_id_of(path: &Path) -> anyhow::Result<String> {
    let public = trm_crypto::signing::public_from_pem(&files::read_text(path)?)?;
    Ok(trm_crypto::signing::key_id(&public))
}

/// Whether `v` is an RFC 3339 time.
fn is_rfc3339(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

#[tokio::test]
async fn a_rotation_then_routine_peer_updates_keep_delivery_working() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro) = (
        s(&fed.config_path("AT".parse()?)),
        s(&fed.config_path("RO".parse()?)),
    );
    let at_pub = fed.dir().join("AT/keys/signing.pub.pem");

    // The rotation rewrites the file node init tells operators to give their peers, and
    // `keys show` prints the same key.
    let rotated = json(&["keys", "rotate", "--config", &at]).await?;
    let new_key = rotated["key_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        key_id_of(&at_pub)?,
        new_key,
        "the public key file is current"
    );
    let shown = json(&["keys", "show", "--config", &at]).await?;
    assert_eq!(shown["current_key_id"], new_key.as_str());
    assert!(
        shown["keys"].as_array().is_some_and(|k| k.len() == 2),
        "{shown}"
    );
    let (ok, pem, _) = trmctl(&["keys", "show", "--config", &at, "--pem"]).await?;
    assert!(ok);
    assert_eq!(pem, files::read_text(&at_pub)?);

    // RO's operator changes AT's endpoint only, then gives AT's current public key file:
    // neither drops the key AT announced.
    let endpoint = fed.node("AT")?.addrs.federation.to_string();
    let changed = json(&[
        "peer",
        "update",
        "--config",
        &ro,
        "--node-id",
        "AT",
        "--endpoint",
        &endpoint,
    ])
    .await?;
    assert_eq!(changed["endpoint"], endpoint.as_str());
    let changed = json(&[
        "peer",
        "update",
        "--config",
        &ro,
        "--node-id",
        "AT",
        "--signing-key",
        &s(&at_pub),
    ])
    .await?;
    let held: Vec<&str> = changed["signing_keys"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| k["key_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(held.contains(&new_key.as_str()), "{changed}");
    let (ok, _, err) = trmctl(&["peer", "update", "--config", &ro, "--node-id", "AT"]).await?;
    assert!(!ok && err.contains("nothing to change"), "{err}");

    // Delivery works with the new key, and AT sees RO healthy.
    let referral = trm_tests::refer(&fed, "AT", "RO").await?;
    trm_tests::referral_arrived(&fed.referrals("RO", Role::FocalPoint).await?, &referral).await?;
    let status = json(&["status", "--config", &at]).await?;
    assert_eq!(status["peers"][0]["healthy"], true, "{status}");
    assert_eq!(status["peers"][0]["problem"], "", "{status}");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_peer_that_drops_our_new_key_shows_unhealthy_in_status_with_the_reason(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro) = (
        s(&fed.config_path("AT".parse()?)),
        s(&fed.config_path("RO".parse()?)),
    );
    let at_pub = fed.dir().join("AT/keys/signing.pub.pem");
    let old_pem = files::read_text(&at_pub)?;
    let rotated = json(&["keys", "rotate", "--config", &at]).await?;
    let new_key = rotated["key_id"].as_str().unwrap_or_default().to_owned();
    // RO learns the new key from AT's announcement...
    eventually("RO to hold AT's new key", || {
        let (ro, new_key) = (ro.clone(), new_key.clone());
        async move {
            let peers = json(&["peer", "list", "--config", &ro]).await?;
            Ok(peers.to_string().contains(&new_key).then_some(()))
        }
    })
    .await?;
    // ...then its operator sets AT's keys from a stale file, as the old `peer update` did.
    let mut admin = fed.admin("RO", Role::Operator).await?;
    admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(w::Peer {
                node_id: "AT".into(),
                endpoint: fed.node("AT")?.addrs.federation.to_string(),
                tls_ca_pem: files::read_text(&fed.dir().join("AT/tls/federation-ca.pem"))?,
                signing_keys_pem: vec![old_pem],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    // AT's status says so before anything is sent...
    let status = json(&["status", "--config", &at]).await?;
    let ro_status = &status["peers"][0];
    assert_eq!(ro_status["reachable"], true, "{status}");
    assert_eq!(ro_status["healthy"], false, "{status}");
    let problem = ro_status["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("does not hold our current signing key") && problem.contains(&new_key),
        "{problem}"
    );
    let (_, text, _) = trmctl(&["status", "--config", &at]).await?;
    assert!(text.contains("problem: RO does not hold"), "{text}");
    // ...and, once a delivery is refused, the peer's answer.
    let referral = trm_tests::refer(&fed, "AT", "RO").await?;
    let refused = eventually("a refused delivery in status", || {
        let at = at.clone();
        async move {
            let status = json(&["status", "--config", &at]).await?;
            let e = status["peers"][0]["delivery_error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Ok((!e.is_empty()).then_some((e, status)))
        }
    })
    .await?;
    assert!(refused.0.contains("unknown_key"), "{}", refused.0);
    assert!(
        is_rfc3339(&refused.1["peers"][0]["delivery_failing_since"]),
        "{}",
        refused.1
    );
    // The cure the problem names: RO adds the key `keys show --pem` prints.
    let (_, pem, _) = trmctl(&["keys", "show", "--config", &at, "--pem"]).await?;
    let key_file = fed.dir().join("at-current.pub.pem");
    std::fs::write(&key_file, pem)?;
    let (ok, _, err) = trmctl(&[
        "peer",
        "update",
        "--config",
        &ro,
        "--node-id",
        "AT",
        "--signing-key",
        &s(&key_file),
    ])
    .await?;
    assert!(ok, "{err}");
    trm_tests::referral_arrived(&fed.referrals("RO", Role::FocalPoint).await?, &referral).await?;
    eventually("RO healthy again", || {
        let at = at.clone();
        async move {
            let status = json(&["status", "--config", &at]).await?;
            Ok((status["peers"][0]["healthy"] == true).then_some(()))
        }
    })
    .await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn before_a_peer_adds_us_both_sides_say_what_is_wrong() -> anyhow::Result<()> {
    let fed = TestFederation::builder()
        .nodes(&["AT", "RO"])
        .not_peers("AT", "RO")
        .start()
        .await?;
    let at = s(&fed.config_path("AT".parse()?));
    // AT's operator adds RO; RO has not added AT yet.
    let (ok, _, err) = peer_add(&fed, &at, "RO").await?;
    assert!(ok, "{err}");
    let status = json(&["status", "--config", &at]).await?;
    let ro = &status["peers"][0];
    assert_eq!(ro["reachable"], false, "{status}");
    let why = ro["probe_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("has not added this node as a peer yet") && !why.contains("transport error"),
        "{why}"
    );
    assert!(
        ro["problem"].as_str().is_some_and(|p| p.contains(why)),
        "{status}"
    );
    // RO's log names AT and what usually causes it.
    let logged = eventually("RO to log the refused handshake", || async {
        let logs = trm_tests::captured_logs();
        Ok(logs
            .lines()
            .find(|l| l.contains("federation handshake refused") && l.contains("peer=AT"))
            .map(str::to_owned))
    })
    .await?;
    assert!(logged.contains("trmctl peer add"), "{logged}");
    // A wrong endpoint says so too.
    let (ok, _, err) = trmctl(&[
        "peer",
        "update",
        "--config",
        &at,
        "--node-id",
        "RO",
        "--endpoint",
        &fed.node("RO")?.addrs.metrics.to_string(),
    ])
    .await?;
    assert!(ok, "{err}");
    let status = json(&["status", "--config", &at]).await?;
    let why = status["peers"][0]["probe_error"]
        .as_str()
        .unwrap_or_default();
    assert!(!why.contains("transport error") && !why.is_empty(), "{why}");
    // So does an endpoint where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let (ok, _, err) = trmctl(&[
        "peer",
        "update",
        "--config",
        &at,
        "--node-id",
        "RO",
        "--endpoint",
        &closed,
    ])
    .await?;
    assert!(ok, "{err}");
    let status = json(&["status", "--config", &at]).await?;
    let why = status["peers"][0]["probe_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("nothing accepts connections"), "{why}");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_certificate_is_told_so_and_the_operator_sees_it_counted_logged_and_listed(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let at = s(&fed.config_path("AT".parse()?));
    let prefix = fed.dir().join("ngo-lefo");
    let issued = json(&[
        "client",
        "issue",
        "--config",
        &at,
        "--role",
        "service_provider",
        "--org",
        "ngo-lefo",
        "--out",
        &s(&prefix),
    ])
    .await?;
    let serial = issued["serial_hex"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        serial,
        trmctl::admin::serial_of_pem(&prefix.with_extension("pem"))?
    );
    assert!(is_rfc3339(&issued["not_after"]), "{issued}");
    let (ok, _, err) = trmctl(&["client", "revoke", "--config", &at, "--serial", &serial]).await?;
    assert!(ok, "{err}");
    // A new connection with it: the handshake completes, the request is refused, saying why.
    let channel = trmctl::connect::channel(
        &fed.node("AT")?.addrs.services.to_string(),
        &fed.dir().join("AT/services-ca.pem"),
        &prefix.with_extension("pem"),
        &prefix.with_extension("key"),
    )
    .await?;
    let err = w::referral_service_client::ReferralServiceClient::new(channel)
        .list_cases(w::ListCasesRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
    let page = trm_tests::metrics(fed.node("AT")?.addrs.metrics).await?;
    let counted = page
        .lines()
        .find(|l| l.starts_with("trm_requests_revoked_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(counted >= 1, "{page}");
    let logs = trm_tests::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("revoked") && l.contains(&serial)),
        "no log line names the revoked serial"
    );
    // The operator's list: every issued certificate, this one revoked.
    let list = json(&["client", "list", "--config", &at]).await?;
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["serial_hex"] == serial.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["role"], "service_provider", "{list}");
    assert_eq!(entry["org"], "ngo-lefo");
    assert_eq!(entry["revoked"], true);
    assert!(
        is_rfc3339(&entry["revoked_at"]) && is_rfc3339(&entry["not_after"]),
        "{entry}"
    );
    let revoked = json(&["client", "revoked", "--config", &at]).await?;
    assert!(is_rfc3339(&revoked[0]["revoked_at"]), "{revoked}");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn every_command_prints_json_with_rfc3339_times_and_errors_are_one_line() -> anyhow::Result<()>
{
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let at = s(&fed.config_path("AT".parse()?));
    let verified = json(&["audit", "verify", "--config", &at]).await?;
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["entries_checked"].is_u64());
    let rotated = json(&["keys", "rotate", "--config", &at]).await?;
    assert!(
        rotated["key_id"].as_str().is_some_and(|k| k.len() == 16),
        "{rotated}"
    );
    let backup = fed.dir().join("backups/json");
    let written = json(&["backup", "--config", &at, "--out", &s(&backup)]).await?;
    assert!(
        written["bytes"].as_u64().is_some_and(|b| b > 0),
        "{written}"
    );
    let status = json(&["status", "--config", &at]).await?;
    assert!(
        is_rfc3339(&status["key_encryption_key_created_at"]),
        "{status}"
    );
    // The rotation's announcement may have reached RO yet or not: a time, or null when
    // nothing was delivered; never "-".
    let last = &status["peers"][0]["last_delivery"];
    assert!(last.is_null() || is_rfc3339(last), "{status}");
    assert!(!status.to_string().contains("\"-\""), "{status}");
    let peers = json(&["peer", "list", "--config", &at]).await?;
    assert!(!peers.to_string().contains("\"-\""), "{peers}");

    // The audit names the operator's certificate.
    let operator = trmctl::admin::serial_of_pem(&fed.dir().join("AT/clients/operator.pem"))?;
    let export = fed.dir().join("audit.jsonl");
    let (ok, _, err) = trmctl(&["audit", "export", "--config", &at, "--out", &s(&export)]).await?;
    assert!(ok, "{err}");
    let rotation = std::fs::read_to_string(&export)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["action"] == "keys.rotate")
        .unwrap_or_default();
    assert!(
        rotation["actor"]
            .as_str()
            .is_some_and(|a| a.contains(&operator)),
        "{rotation}"
    );

    // Errors: one line, the flag named, no status dump, no backtrace (even when asked).
    let one_line = |err: &str| {
        err.trim_end().lines().count() == 1
            && err.starts_with("trmctl: ")
            && !err.contains("Status {")
            && !err.contains("metadata")
            && !err.contains("backtrace")
            && !err.contains("Caused by")
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trm-test-ctl"))
        .args([
            "stats",
            "export",
            "--config",
            &at,
            "--from",
            "2020-01-02",
            "--to",
            "2020-02-01",
        ])
        .env("RUST_BACKTRACE", "full")
        .env("RUST_LOG", "error")
        .output()
        .await?;
    let err = String::from_utf8(out.stderr)?;
    assert!(!out.status.success());
    assert!(one_line(&err) && err.contains("--from"), "{err}");
    let (ok, _, err) = trmctl(&["peer", "remove", "--config", &at, "--node-id", "NG"]).await?;
    assert!(!ok && one_line(&err) && err.contains("not found"), "{err}");
    fed.stop_node("AT").await?;
    let (ok, _, err) = trmctl(&["status", "--config", &at]).await?;
    assert!(!ok && one_line(&err), "{err}");
    assert!(
        err.contains("is the node running?") && err.contains("connection refused"),
        "{err}"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_scenario_plays_with_200_referrals_already_held_at_the_destination(
) -> anyhow::Result<()> {
    // 600 requests from one certificate at once: above the default rate.
    let fed = TestFederation::builder()
        .nodes(&["AT", "RO"])
        .config(|_, c| {
            c.limits.client_requests_per_second = 100_000;
            c.limits.client_burst = 100_000;
        })
        .start()
        .await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    // 200 referrals, 20 at a time (a connection carries at most 64 streams at once).
    for _ in 0..10 {
        let mut sent = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let sp = sp.clone();
            sent.spawn(async move { trm_tests::refer_with(&sp, "RO").await });
        }
        while let Some(r) = sent.join_next().await {
            r??;
        }
    }
    let mut log = Vec::new();
    let outcome = trmctl::scenario::run(fed.dir(), "AT".parse()?, "RO".parse()?, &mut log).await?;
    assert_eq!(
        outcome.at_destination.status,
        w::ReferralStatus::InAssistance as i32
    );
    let incoming = fed
        .referrals("RO", Role::FocalPoint)
        .await?
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        !incoming.next_page_token.is_empty(),
        "RO holds more than a page"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn node_toml_only_seeds_the_directory_and_stats_merge_trusts_the_directory(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::builder()
        .nodes(&["AT", "RO", "NG"])
        .not_peers("AT", "NG")
        .start()
        .await?;
    let (at, ng) = (
        s(&fed.config_path("AT".parse()?)),
        s(&fed.config_path("NG".parse()?)),
    );
    // AT's operator adds NG at run time: node.toml does not list it.
    let (ok, _, err) = peer_add(&fed, &at, "NG").await?;
    assert!(ok, "{err}");
    // NG's statistics verify against AT's directory.
    let today = time::OffsetDateTime::now_utc().date();
    let this_month = today.replace_day(1)?;
    let last = (this_month - time::Duration::days(1)).replace_day(1)?;
    let (from, to) = (last.to_string(), this_month.to_string());
    let mut files_of = Vec::new();
    for (node, config) in [("at", &at), ("ng", &ng)] {
        let (ok, out, err) = trmctl(&[
            "stats", "export", "--config", config, "--from", &from, "--to", &to, "--json",
        ])
        .await?;
        assert!(ok, "{err}");
        let file = fed.dir().join(format!("{node}.json"));
        std::fs::write(&file, out)?;
        files_of.push(s(&file));
    }
    let (ok, out, err) = trmctl(&[
        "stats",
        "merge",
        "--config",
        &at,
        &files_of[0],
        &files_of[1],
        "--json",
    ])
    .await?;
    assert!(ok, "{err}");
    let merged: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(merged["nodes"], serde_json::json!(["AT", "NG"]), "{merged}");

    // RO's node.toml entry for AT, edited after AT was taken in, does not override the
    // directory; the node says so at start.
    let ro_config = fed.config_path("RO".parse()?);
    let text = std::fs::read_to_string(&ro_config)?;
    let at_endpoint = fed.node("AT")?.addrs.federation.to_string();
    std::fs::write(&ro_config, text.replace(&at_endpoint, "127.0.0.1:9"))?;
    fed.stop_node("RO").await?;
    fed.start_node("RO").await?;
    let peers = json(&["peer", "list", "--config", &s(&ro_config)]).await?;
    assert!(peers.to_string().contains(&at_endpoint), "{peers}");
    let warned = eventually("RO's warning", || async {
        Ok(trm_tests::captured_logs()
            .lines()
            .find(|l| l.contains("differs from the peer directory") && l.contains("peer=AT"))
            .map(str::to_owned))
    })
    .await?;
    assert!(warned.contains("endpoint"), "{warned}");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn sandbox_up_names_a_base_port_that_differs_from_the_sandboxs_own() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sandbox = s(&dir.path().join("sandbox"));
    let (ok, _, err) = trmctl(&[
        "sandbox",
        "init",
        "--dir",
        &sandbox,
        "--nodes",
        "AT,RO",
        "--base-port",
        "27400",
    ])
    .await?;
    assert!(ok, "{err}");
    // Refused before any port is bound, saying how to move it.
    let (ok, _, err) = trmctl(&[
        "sandbox",
        "up",
        "--dir",
        &sandbox,
        "--base-port",
        "27500",
        "--scenario",
    ])
    .await?;
    assert!(!ok, "{err}");
    assert!(
        err.contains("--base-port 27500") && err.contains("27400") && err.contains("--force"),
        "{err}"
    );
    Ok(())
}
