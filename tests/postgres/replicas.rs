//! Two `trm-node` processes of one country on one PostgreSQL schema: either serves, one
//! delivers under the lease; SIGKILL the one that delivers during a stream of referrals and
//! the other takes delivery over: nothing acknowledged is lost, nothing arrives twice.

use std::{net::SocketAddr, path::Path, time::Instant};

use tokio::process::Child;
use trm_core::ids::Role;
use trm_proto::v1::{self as w, referral_service_client::ReferralServiceClient};
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
