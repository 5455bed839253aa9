//! The `trm-node` command as a real process, killed with SIGKILL right after it
//! acknowledged a client: what it acknowledged is delivered after it restarts.

use std::{net::SocketAddr, path::Path, process::Stdio};

use tokio::process::{Child, Command};

use trm_core::ids::Role;
use trm_proto::v1::{self as w, referral_service_client::ReferralServiceClient};
use trm_tests::eventually;
use trmctl::sandbox::{self, NodeSpec};

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn spec(id: &str) -> anyhow::Result<NodeSpec> {
    Ok(NodeSpec {
        id: id.parse()?,
        services: free_addr()?,
        federation: free_addr()?,
        admin: free_addr()?,
        metrics: free_addr()?,
    })
}

/// Runs `trm-node --config DIR/<ID>/node.toml` as a child process.
fn start(dir: &Path, id: &str) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_trm-test-node"))
        .arg("--config")
        .arg(dir.join(id).join("node.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn client(
    dir: &Path,
    id: &str,
    role: Role,
) -> anyhow::Result<ReferralServiceClient<tonic::transport::Channel>> {
    let dir = dir.to_path_buf();
    let id = id.to_owned();
    let ch = eventually("the node to serve", || {
        let (dir, id) = (dir.clone(), id.clone());
        async move {
            Ok(trmctl::scenario::client(&dir, id.parse()?, role, false)
                .await
                .ok())
        }
    })
    .await?;
    Ok(ReferralServiceClient::new(ch))
}

#[tokio::test]
async fn a_referral_acknowledged_just_before_sigkill_is_delivered_after_restart(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    sandbox::init(dir.path(), &[spec("AT")?, spec("RO")?], false)?;

    // RO is down, so AT can only queue.
    let mut at = start(dir.path(), "AT")?;
    let mut sp = client(dir.path(), "AT", Role::ServiceProvider).await?;
    let case = sp
        .create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: "Crash".into(),
                gender: w::Gender::Female as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    sp.record_consent(w::RecordConsentRequest {
        case_id: case.case_id.clone(),
        purposes: vec![w::Purpose::ReferralAssistance as i32],
        recipients: vec!["RO".into()],
        informed: true,
        information_language: "en".into(),
        ..Default::default()
    })
    .await?;
    let referral = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    at.kill().await?; // SIGKILL: no shutdown, no flush on the way out.

    let mut ro = start(dir.path(), "RO")?;
    let mut at = start(dir.path(), "AT")?;
    let mut fp = client(dir.path(), "RO", Role::FocalPoint).await?;
    let arrived = eventually("the referral at RO", || {
        let mut fp = fp.clone();
        let id = referral.referral_id.clone();
        async move {
            Ok(fp
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await
                .ok()
                .map(|r| r.into_inner()))
        }
    })
    .await?;
    assert_eq!(arrived.origin, "AT");
    let sp = client(dir.path(), "AT", Role::ServiceProvider).await?;
    let delivered = eventually("AT to hold RO's receipt", || {
        let mut sp = sp.clone();
        let id = referral.referral_id.clone();
        async move {
            let r = sp
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            Ok((r.status == w::ReferralStatus::Delivered as i32).then_some(r))
        }
    })
    .await?;
    assert_eq!(delivered.disclosed, arrived.disclosed);
    let incoming = fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(incoming.referrals.len(), 1, "exactly once");

    // A clean stop this time: SIGTERM drains and exits 0.
    drop((sp, fp));
    for child in [&mut at, &mut ro] {
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("child already gone"))?;
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
        let status = child.wait().await?;
        assert!(status.success(), "{status:?}");
    }
    Ok(())
}
