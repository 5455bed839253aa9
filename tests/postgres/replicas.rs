//! Two `trm-node` processes of one country on one PostgreSQL schema: either serves, one
//! delivers under the lease; SIGKILL the one that delivers during a stream of referrals and
//! the other takes delivery over: nothing acknowledged is lost, nothing arrives twice. And
//! what one replica changes (a revocation, a peer removed) or queues holds on the other.

use std::{net::SocketAddr, path::Path, time::Instant};

use tokio::process::Child;
use trm_core::ids::Role;
use trm_proto::v1::{
    self as w, admin_service_client::AdminServiceClient,
    federation_service_client::FederationServiceClient,
    referral_service_client::ReferralServiceClient,
};
use trm_tests::free_node_spec as spec;
use trm_tests::{eventually, http_get};
use trmctl::sandbox;

fn start(config: &Path) -> anyhow::Result<Child> {
    trm_tests::spawn_node_process(env!("CARGO_BIN_EXE_trm-test-node"), config)
}

/// A replica of AT: its config, services and metrics addresses.
struct Replica {
    config: std::path::PathBuf,
    services: SocketAddr,
    metrics: SocketAddr,
}

async fn referrals(
    dir: &Path,
    at: SocketAddr,
) -> anyhow::Result<ReferralServiceClient<tonic::transport::Channel>> {
    let nd = dir.join("AT");
    let ch = eventually("the replica to serve", || {
        let nd = nd.clone();
        async move {
            Ok(trmctl::connect::channel(
                &at.to_string(),
                &nd.join("services-ca.pem"),
                &nd.join("clients/service_provider.pem"),
                &nd.join("clients/service_provider.key"),
            )
            .await
            .ok())
        }
    })
    .await?;
    Ok(ReferralServiceClient::new(ch))
}

async fn delivers(metrics: SocketAddr) -> Option<bool> {
    let page = http_get(metrics, "/metrics").await.ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix("trm_delivery_active "))
        .map(|v| v.trim() == "1")
}

async fn submit(
    sp: &mut ReferralServiceClient<tonic::transport::Channel>,
    i: usize,
) -> Result<String, tonic::Status> {
    let case = sp
        .create_case(trm_tests::requests::case(&format!("Stream {i}"), 3))
        .await?
        .into_inner();
    sp.record_consent(trm_tests::requests::consent(
        &case.case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;
    Ok(sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id,
            destination: "RO".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .referral_id)
}

#[tokio::test]
async fn the_replica_that_delivers_is_killed_mid_stream_and_the_other_delivers_everything_once(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (at, ro) = (spec("AT")?, spec("RO")?);
    sandbox::init(dir.path(), &[at, ro], false)?;
    // AT on PostgreSQL, a short lease; a second replica beside the first on ports of its own.
    let schema = crate::fresh_schema();
    let first = dir.path().join("AT/node.toml");
    let text = std::fs::read_to_string(&first)?.replace(
        "backoff_cap_secs = 5\n",
        &format!(
            "backoff_cap_secs = 1\nlease_secs = 2\n\n[storage]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n",
            crate::url()
        ),
    );
    std::fs::write(&first, &text)?;
    let other = spec("AT")?;
    let mut second_text = text.clone();
    for (a, b) in [
        (at.services, other.services),
        (at.federation, other.federation),
        (at.admin, other.admin),
        (at.metrics, other.metrics),
        (at.console, other.console),
    ] {
        second_text = second_text.replace(&format!("\"{a}\""), &format!("\"{b}\""));
    }
    let second = dir.path().join("AT/node-2.toml");
    std::fs::write(&second, second_text)?;
    let replicas = [
        Replica {
            config: first,
            services: at.services,
            metrics: at.metrics,
        },
        Replica {
            config: second,
            services: other.services,
            metrics: other.metrics,
        },
    ];

    let mut ro_node = start(&dir.path().join("RO/node.toml"))?;
    let mut children = Vec::new();
    for r in &replicas {
        children.push(start(&r.config)?);
    }
    let mut clients = Vec::new();
    for r in &replicas {
        match referrals(dir.path(), r.services).await {
            Ok(c) => clients.push(c),
            Err(e) => {
                let log = std::fs::read_to_string(r.config.with_extension("log"))?;
                anyhow::bail!("{e}; the replica's log:\n{log}");
            }
        }
    }
    let holder = eventually("one replica to hold the delivery lease", || {
        let m = [replicas[0].metrics, replicas[1].metrics];
        async move {
            let (a, b) = (delivers(m[0]).await, delivers(m[1]).await);
            Ok(match (a, b) {
                (Some(true), Some(false)) => Some(0),
                (Some(false), Some(true)) => Some(1),
                _ => None,
            })
        }
    })
    .await?;
    let survivor = 1 - holder;

    let total = 30;
    let mut acknowledged = Vec::new();
    let mut killed_at = None;
    for i in 0..total {
        if i == total / 2 {
            children[holder].start_kill()?; // SIGKILL, mid-stream
            children[holder].wait().await?;
            killed_at = Some(Instant::now());
        }
        // Both replicas take submissions until one is gone.
        let to = if killed_at.is_some() { survivor } else { i % 2 };
        if let Ok(id) = submit(&mut clients[to], i).await {
            // Every third referral is withdrawn at once: a second envelope that must reach
            // RO after the first, across the takeover too.
            let withdrawn = i % 3 == 0
                && clients[to]
                    .withdraw_referral(w::WithdrawReferralRequest {
                        referral_id: id.clone(),
                        reason: "the person moved on".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok();
            acknowledged.push((id, withdrawn));
        }
    }
    let killed_at = killed_at.ok_or_else(|| anyhow::anyhow!("no kill"))?;
    eventually("the survivor to take the delivery lease", || {
        let m = replicas[survivor].metrics;
        async move { Ok(delivers(m).await.filter(|d| *d)) }
    })
    .await?;
    let takeover = killed_at.elapsed();

    let fp = trmctl::scenario::client(dir.path(), "RO".parse()?, Role::FocalPoint, false).await?;
    let fp = ReferralServiceClient::new(fp);
    let sp = clients[survivor].clone();
    let mut withdrawn = 0;
    for (id, was_withdrawn) in &acknowledged {
        let status = if *was_withdrawn {
            withdrawn += 1;
            w::ReferralStatus::Withdrawn
        } else {
            w::ReferralStatus::Delivered
        };
        // In order at RO: a withdrawal overtaking its referral would have been refused.
        let at_ro = if *was_withdrawn {
            w::ReferralStatus::Withdrawn
        } else {
            w::ReferralStatus::Sent
        };
        let r = eventually(
            "every acknowledged referral at RO, in its last state",
            || {
                let mut fp = fp.clone();
                let id = id.clone();
                async move {
                    Ok(fp
                        .get_referral(w::GetReferralRequest { referral_id: id })
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                        .filter(|r| !*was_withdrawn || r.status == at_ro as i32))
                }
            },
        )
        .await?;
        assert_eq!(r.origin, "AT");
        trm_tests::referral_with_status(&sp, id, status).await?;
    }
    let incoming = fp
        .clone()
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        incoming.referrals.len(),
        acknowledged.len(),
        "each acknowledged referral arrived exactly once"
    );
    println!(
        "failover: {} acknowledged ({withdrawn} withdrawn right after), {} arrived, lost 0, \
         applied twice 0, in order, takeover {} ms",
        acknowledged.len(),
        incoming.referrals.len(),
        takeover.as_millis()
    );
    assert!(
        acknowledged.len() >= total - 1,
        "only a request cut by the kill may fail"
    );

    for child in children.iter_mut().chain(std::iter::once(&mut ro_node)) {
        if child.id().is_some() {
            let status = trm_tests::terminate(child).await?;
            assert!(status.success(), "{status:?}");
        }
    }
    let schema_sql = format!("DROP SCHEMA {schema} CASCADE");
    std::thread::spawn(move || -> anyhow::Result<()> {
        postgres::Client::connect(&crate::url(), postgres::NoTls)?.batch_execute(&schema_sql)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("dropping the schema"))??;
    Ok(())
}

/// Stops an in-process replica.
async fn stop(node: trm_node::NodeHandle) -> anyhow::Result<()> {
    Ok(node.stop().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_changes_or_queues_holds_on_the_other() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (at, ro) = (spec("AT")?, spec("RO")?);
    sandbox::init(dir.path(), &[at, ro], false)?;
    // Two replicas of AT on one schema, with the longest lease there is: how soon a replica
    // sees what another changed must not hang on how often it renews the lease.
    let schema = crate::fresh_schema();
    let first = dir.path().join("AT/node.toml");
    let text = std::fs::read_to_string(&first)?.replace(
        "backoff_cap_secs = 5\n",
        &format!(
            "backoff_cap_secs = 5\nlease_secs = 300\n\n[storage]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n",
            crate::url()
        ),
    );
    std::fs::write(&first, &text)?;
    let other = spec("AT")?;
    let mut second_text = text.clone();
    for (a, b) in [
        (at.services, other.services),
        (at.federation, other.federation),
        (at.admin, other.admin),
        (at.metrics, other.metrics),
        (at.console, other.console),
    ] {
        second_text = second_text.replace(&format!("\"{a}\""), &format!("\"{b}\""));
    }
    let second = dir.path().join("AT/node-2.toml");
    std::fs::write(&second, second_text)?;
    let mut replicas = Vec::new();
    for config in [&first, &second] {
        let cfg = trm_node::NodeConfig::load(config)?;
        let listeners = trm_node::server::Listeners::bind(&cfg.listen).await?;
        replicas.push(trm_node::NodeHandle::spawn(cfg, listeners)?);
    }

    // On the second replica: a service provider's open connection, and RO.
    let nd = dir.path().join("AT");
    let (ca, cert, key) = (
        nd.join("services-ca.pem"),
        nd.join("clients/service_provider.pem"),
        nd.join("clients/service_provider.key"),
    );
    let sp_connection = || trm_tests::connect(other.services, &ca, &cert, &key);
    let mut sp = ReferralServiceClient::new(
        eventually("the second replica to serve", || async {
            Ok(sp_connection().await.ok())
        })
        .await?,
    );
    sp.list_cases(w::ListCasesRequest::default()).await?;
    let ro_tls = dir.path().join("RO/tls");
    let ro_channel = trm_tests::connect(
        other.federation,
        &dir.path().join("AT/tls/federation-ca.pem"),
        &ro_tls.join("federation.pem"),
        &ro_tls.join("federation.key"),
    )
    .await?;
    let mut as_ro = FederationServiceClient::new(ro_channel);
    as_ro
        .get_node_info(w::GetNodeInfoRequest::default())
        .await?;

    // A referral queued through the first replica (RO is down) is counted on the second.
    let mut first_sp = referrals(dir.path(), at.services).await?;
    submit(&mut first_sp, 0).await?;
    let second_admin = AdminServiceClient::new(
        trm_tests::connect(
            other.admin,
            &ca,
            &nd.join("clients/operator.pem"),
            &nd.join("clients/operator.key"),
        )
        .await?,
    );
    eventually("the second replica to count the queued referral", || {
        let mut a = second_admin.clone();
        async move {
            let s = a.status(w::StatusRequest {}).await?.into_inner();
            let ro = s
                .peers
                .iter()
                .find(|p| p.node_id == "RO")
                .map(|p| p.outbox_depth);
            Ok((s.outbox_depth == 1 && ro == Some(1)).then_some(()))
        }
    })
    .await?;

    // Through the first replica: the certificate revoked, RO removed.
    let mut admin = AdminServiceClient::new(
        trmctl::scenario::client(dir.path(), "AT".parse()?, Role::Operator, true).await?,
    );
    let pem = std::fs::read_to_string(nd.join("clients/service_provider.pem"))?;
    let serial = trm_crypto::pki::serial_hex(&trm_crypto::pki::first_der(&pem)?)
        .ok_or_else(|| anyhow::anyhow!("no serial"))?;
    let changed = Instant::now();
    admin
        .revoke_client_certificate(w::RevokeClientCertificateRequest {
            serial_hex: serial,
            ..Default::default()
        })
        .await?;
    admin
        .remove_peer(w::RemovePeerRequest {
            node_id: "RO".into(),
            ..Default::default()
        })
        .await?;
    eventually(
        "the second replica to refuse the revoked certificate",
        || {
            let mut sp = sp.clone();
            async move {
                Ok(match sp.list_cases(w::ListCasesRequest::default()).await {
                    Err(e) if e.code() == tonic::Code::Unauthenticated => Some(()),
                    _ => None,
                })
            }
        },
    )
    .await?;
    eventually("the second replica to refuse the removed peer", || {
        let mut as_ro = as_ro.clone();
        async move {
            Ok(
                match as_ro.get_node_info(w::GetNodeInfoRequest::default()).await {
                    Err(e) if e.code() == tonic::Code::PermissionDenied => Some(()),
                    _ => None,
                },
            )
        }
    })
    .await?;
    println!(
        "replicas: a revocation and a peer removal through one replica held on the other \
         after {} ms",
        changed.elapsed().as_millis()
    );
    // A new connection with the revoked certificate gets nowhere either.
    let refused = match sp_connection().await {
        Err(_) => true,
        Ok(ch) => ReferralServiceClient::new(ch)
            .list_cases(w::ListCasesRequest::default())
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a new connection with the revoked certificate is refused"
    );

    drop((sp, as_ro, admin, second_admin, first_sp));
    for r in replicas {
        stop(r).await?;
    }
    let schema_sql = format!("DROP SCHEMA {schema} CASCADE");
    std::thread::spawn(move || -> anyhow::Result<()> {
        postgres::Client::connect(&crate::url(), postgres::NoTls)?.batch_execute(&schema_sql)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("dropping the schema"))??;
    Ok(())
}
