//! The `trm-node` command as a real process, killed with SIGKILL right after it
//! acknowledged a client: what it acknowledged is delivered after it restarts.

use std::path::Path;

use tokio::process::{Child, Command};

use trm_core::ids::Role;
use trm_proto::v1::{self as w, referral_service_client::ReferralServiceClient};
use trm_tests::eventually;
use trm_tests::free_node_spec as spec;
use trmctl::sandbox;

/// Runs `trm-node --config DIR/<ID>/node.toml` as a child process.
fn start(dir: &Path, id: &str) -> anyhow::Result<Child> {
    trm_tests::spawn_node_process(
        env!("CARGO_BIN_EXE_trm-test-node"),
        &dir.join(id).join("node.toml"),
    )
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

/// Every referral id of `direction`, page after page.
async fn all_referrals(
    c: &mut ReferralServiceClient<tonic::transport::Channel>,
    direction: w::Direction,
) -> anyhow::Result<Vec<String>> {
    let (mut ids, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = c
            .list_referrals(w::ListReferralsRequest {
                direction: direction as i32,
                page_size: 100,
                page_token,
            })
            .await?
            .into_inner();
        ids.extend(page.referrals.into_iter().map(|r| r.referral_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// A small deterministic generator: a storm's seed makes its kills repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs `call` until it succeeds, as a client retrying with the same request id does;
/// a new connection each time one fails (the node may have been restarted).
async fn until_ok<T, F, Fut>(
    dir: &Path,
    node: &str,
    role: Role,
    what: &str,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut(ReferralServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let c = client(dir, node, role).await?;
        match call(c).await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("{what} at {node}: still failing: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// SIGKILL either node at random moments during a stream of referrals (every third
/// accepted by RO: a step the other way), restarting it each time. Every request is
/// retried with its request id until acknowledged, as a client does. Then: every referral
/// is at RO exactly once, and both sides agree on its state.
///
/// `TRM_STORM_KILLS` (default 6) kills; `TRM_STORM_SEED` repeats a run (the seed is
/// printed). The documented long run: `TRM_STORM_KILLS=100 cargo test -p trm-tests --test
/// e2e -- storm --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_sigkills_on_either_node_loses_nothing_and_applies_nothing_twice(
) -> anyhow::Result<()> {
    let kills: usize = std::env::var("TRM_STORM_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("TRM_STORM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(uuid::Uuid::new_v4().as_fields().0) | 1);
    println!("storm: seed {seed}, {kills} kills");
    let dir = tempfile::tempdir()?;
    sandbox::init(dir.path(), &[spec("AT")?, spec("RO")?], false)?;
    for id in ["AT", "RO"] {
        let path = dir.path().join(id).join("node.toml");
        let text =
            std::fs::read_to_string(&path)?.replace("backoff_cap_secs = 5", "backoff_cap_secs = 1");
        std::fs::write(&path, text)?;
    }
    let d = dir.path().to_path_buf();
    let nodes = std::sync::Arc::new(tokio::sync::Mutex::new([
        start(&d, "AT")?,
        start(&d, "RO")?,
    ]));
    let storm_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (nodes, done, d) = (nodes.clone(), storm_done.clone(), d.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut killed = [0usize; 2];
            for _ in 0..kills {
                tokio::time::sleep(std::time::Duration::from_millis(150 + rng.below(600))).await;
                let victim = rng.below(2) as usize;
                let mut n = nodes.lock().await;
                n[victim].start_kill()?;
                n[victim].wait().await?;
                n[victim] = start(&d, ["AT", "RO"][victim])?;
                killed[victim] += 1;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            anyhow::Ok(killed)
        })
    };

    let mut referrals: Vec<(String, bool)> = Vec::new();
    let mut i = 0;
    while !storm_done.load(std::sync::atomic::Ordering::SeqCst) || referrals.len() < 3 {
        i += 1;
        let (case_req, consent_req, submit_req) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        let case_id = until_ok(
            dir.path(),
            "AT",
            Role::ServiceProvider,
            "create case",
            |mut c| {
                let request_id = case_req.clone();
                async move {
                    Ok(c.create_case(w::CreateCaseRequest {
                        request_id,
                        ..trm_tests::requests::case(&format!("Storm {i}"), 3)
                    })
                    .await?
                    .into_inner()
                    .case_id)
                }
            },
        )
        .await?;
        until_ok(
            dir.path(),
            "AT",
            Role::ServiceProvider,
            "record consent",
            |mut c| {
                let (request_id, case_id) = (consent_req.clone(), case_id.clone());
                async move {
                    c.record_consent(w::RecordConsentRequest {
                        request_id,
                        ..trm_tests::requests::consent(
                            &case_id,
                            &[w::Purpose::ReferralAssistance],
                            &["RO"],
                            &[],
                        )
                    })
                    .await
                }
            },
        )
        .await?;
        let referral_id = until_ok(
            dir.path(),
            "AT",
            Role::ServiceProvider,
            "submit",
            |mut c| {
                let (request_id, case_id) = (submit_req.clone(), case_id.clone());
                async move {
                    Ok(c.submit_referral(w::SubmitReferralRequest {
                        case_id,
                        destination: "RO".into(),
                        request_id,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .referral_id)
                }
            },
        )
        .await?;
        let accept = i % 3 == 0;
        if accept {
            let respond_req = uuid::Uuid::new_v4().to_string();
            until_ok(dir.path(), "RO", Role::FocalPoint, "accept", |mut c| {
                let (request_id, referral_id) = (respond_req.clone(), referral_id.clone());
                async move {
                    c.respond_to_referral(w::RespondToReferralRequest {
                        referral_id,
                        decision: w::ReferralDecision::Accept as i32,
                        request_id,
                        ..Default::default()
                    })
                    .await
                }
            })
            .await?;
        }
        referrals.push((referral_id, accept));
    }
    let killed = killer.await??;

    // Both sides agree on every referral's state; RO holds each exactly once.
    let (mut at, mut ro) = (
        client(dir.path(), "AT", Role::ServiceProvider).await?,
        client(dir.path(), "RO", Role::FocalPoint).await?,
    );
    for (id, accepted) in &referrals {
        let want = if *accepted {
            w::ReferralStatus::Accepted
        } else {
            w::ReferralStatus::Delivered
        };
        trm_tests::referral_with_status(&at, id, want).await?;
        let at_ro = ro
            .get_referral(w::GetReferralRequest {
                referral_id: id.clone(),
            })
            .await?
            .into_inner();
        if *accepted {
            assert_eq!(at_ro.status, w::ReferralStatus::Accepted as i32, "{id}");
        }
    }
    let (incoming, outgoing) = (
        all_referrals(&mut ro, w::Direction::Incoming).await?,
        all_referrals(&mut at, w::Direction::Outgoing).await?,
    );
    let distinct: std::collections::BTreeSet<&String> = incoming.iter().collect();
    assert_eq!(distinct.len(), incoming.len(), "no referral twice at RO");
    assert_eq!(incoming.len(), referrals.len(), "each once at RO");
    assert_eq!(outgoing.len(), referrals.len(), "each once at AT");
    println!(
        "storm: seed {seed}: {} kills (AT {}, RO {}), {} referrals acknowledged, {} accepted; \
         lost 0, applied twice 0, both sides agree",
        kills,
        killed[0],
        killed[1],
        referrals.len(),
        referrals.iter().filter(|(_, a)| *a).count()
    );
    let mut n = nodes.lock().await;
    for child in n.iter_mut() {
        if let Some(pid) = child.id() {
            Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
            assert!(child.wait().await?.success());
        }
    }
    Ok(())
}
