//! The `trm-node` command as a real process, killed with SIGKILL right after it
//! acknowledged a client: what it acknowledged is delivered after it restarts.

use std::path::Path;

use tokio::process::Child;

use tonic::transport::Channel;
use trm_core::ids::Role;
use trm_proto::v1::{
    self as w, referral_service_client::ReferralServiceClient,
    return_planning_service_client::ReturnPlanningServiceClient,
    witness_hearing_service_client::WitnessHearingServiceClient,
};
use trm_tests::eventually;
use trm_tests::free_node_spec as spec;
use trmctl::sandbox;

/// Runs `trm-node --config DIR/<ID>/node.toml` as a child process.
pub(crate) fn start(dir: &Path, id: &str) -> anyhow::Result<Child> {
    trm_tests::spawn_node_process(
        env!("CARGO_BIN_EXE_trm-test-node"),
        &dir.join(id).join("node.toml"),
    )
}

async fn client(
    dir: &Path,
    id: &str,
    role: Role,
) -> anyhow::Result<ReferralServiceClient<Channel>> {
    Ok(ReferralServiceClient::new(channel(dir, id, role).await?))
}

/// A connection to a sandbox node's services port as `role`, once the node serves.
pub(crate) async fn channel(dir: &Path, id: &str, role: Role) -> anyhow::Result<Channel> {
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
    .await
    .map_err(|e| {
        // The node's own account of why it does not serve (a port taken, a bad config).
        let log = std::fs::read_to_string(dir.join(&id).join("node.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        e.context(format!("{id}'s log ends:\n{}", tail.join("\n")))
    })?;
    Ok(ch)
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
    let arrived = trm_tests::referral_arrived(&fp, &referral.referral_id).await?;
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
        let status = trm_tests::terminate(child).await?;
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
                ..Default::default()
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

/// What one round of the storm did; checked on both sides afterwards.
enum Step {
    /// A referral AT -> RO, `accepted` by RO or left delivered.
    Referral { id: String, accepted: bool },
    /// A referral AT -> RO accepted by RO, then a witness hearing requested by AT's
    /// judicial authority and accepted by RO.
    Hearing { referral: String, hearing: String },
    /// A return plan AT -> RO whose reception RO confirmed.
    Return { id: String },
}

/// The victims' identity and contact values every case of the storm carries
/// (`requests::case`), besides the given name `Stormvictim<n>`.
const STORM_PERSONAL: [&str; 6] = [
    "Stormvictim",
    "Testperson",
    "1995-05-05",
    "P-1234567",
    "Strada Test 1",
    "+40 700 000 000",
];

/// A storm's requests: each made with a request id of its own and retried with it until
/// acknowledged.
struct Storm<'a> {
    dir: &'a Path,
}

impl Storm<'_> {
    /// Sends `request` with `call` to `node` as `role` until it succeeds, as a client
    /// retrying with the same request (and so the same request id) does; a new connection
    /// each time one fails (the node may have been restarted).
    async fn send<R, T, F, Fut>(
        &self,
        node: &str,
        role: Role,
        what: &str,
        request: R,
        mut call: F,
    ) -> anyhow::Result<T>
    where
        R: Clone,
        F: FnMut(Channel, R) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let ch = channel(self.dir, node, role).await?;
            match call(ch, request.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!("{what} at {node}: still failing: {e}")
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// A case at AT (identified `days_ago` days ago) with an informed consent to RO for
    /// `purpose`.
    async fn case(&self, n: usize, days_ago: i64, purpose: w::Purpose) -> anyhow::Result<String> {
        let create = w::CreateCaseRequest {
            request_id: new_id(),
            ..trm_tests::requests::case(&format!("Stormvictim{n}"), days_ago)
        };
        let case_id = self
            .send(
                "AT",
                Role::ServiceProvider,
                "create case",
                create,
                |ch, r| async move {
                    let c = ReferralServiceClient::new(ch).create_case(r).await?;
                    Ok(c.into_inner().case_id)
                },
            )
            .await?;
        let consent = w::RecordConsentRequest {
            request_id: new_id(),
            ..trm_tests::requests::consent(&case_id, &[purpose], &["RO"], &[])
        };
        self.send(
            "AT",
            Role::ServiceProvider,
            "record consent",
            consent,
            |ch, r| async move { ReferralServiceClient::new(ch).record_consent(r).await },
        )
        .await?;
        Ok(case_id)
    }

    /// A referral of a new case to RO, accepted there if `accept`.
    async fn referral(&self, n: usize, accept: bool) -> anyhow::Result<String> {
        let case_id = self.case(n, 3, w::Purpose::ReferralAssistance).await?;
        let submit = w::SubmitReferralRequest {
            case_id,
            destination: "RO".into(),
            request_id: new_id(),
            ..Default::default()
        };
        let referral_id = self
            .send(
                "AT",
                Role::ServiceProvider,
                "submit",
                submit,
                |ch, r| async move {
                    let r = ReferralServiceClient::new(ch).submit_referral(r).await?;
                    Ok(r.into_inner().referral_id)
                },
            )
            .await?;
        if accept {
            let respond = w::RespondToReferralRequest {
                referral_id: referral_id.clone(),
                decision: w::ReferralDecision::Accept as i32,
                request_id: new_id(),
                ..Default::default()
            };
            self.send(
                "RO",
                Role::FocalPoint,
                "accept",
                respond,
                |ch, r| async move { ReferralServiceClient::new(ch).respond_to_referral(r).await },
            )
            .await?;
        }
        Ok(referral_id)
    }

    /// A witness hearing on a case referred to RO and accepted: requested by AT's judicial
    /// authority, accepted by RO.
    async fn hearing(&self, n: usize) -> anyhow::Result<Step> {
        let referral = self.referral(n, true).await?;
        let read = w::GetReferralRequest {
            referral_id: referral.clone(),
        };
        let case_id = self
            .send(
                "AT",
                Role::FocalPoint,
                "read referral",
                read,
                |ch, r| async move {
                    let r = ReferralServiceClient::new(ch).get_referral(r).await?;
                    Ok(r.into_inner().case_id)
                },
            )
            .await?;
        let request = w::RequestHearingRequest {
            case_id,
            witness_country: "RO".into(),
            proceeding_reference: format!("AT-LG-2026-{n:04}"),
            language: "ro".into(),
            legal_basis: "MLA request (UNTOC art. 18)".into(),
            proposed_times: vec![prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }],
            request_id: new_id(),
            ..Default::default()
        };
        let hearing = self
            .send(
                "AT",
                Role::JudicialAuthority,
                "request hearing",
                request,
                |ch, r| async move {
                    let h = WitnessHearingServiceClient::new(ch)
                        .request_hearing(r)
                        .await?;
                    Ok(h.into_inner().hearing_id)
                },
            )
            .await?;
        let accept = w::RespondToHearingRequest {
            hearing_id: hearing.clone(),
            decision: w::HearingDecision::Accept as i32,
            request_id: new_id(),
            ..Default::default()
        };
        self.send(
            "RO",
            Role::FocalPoint,
            "accept hearing",
            accept,
            |ch, r| async move {
                WitnessHearingServiceClient::new(ch)
                    .respond_to_hearing(r)
                    .await
            },
        )
        .await?;
        Ok(Step::Hearing { referral, hearing })
    }

    /// A return plan of a case past its reflection period, from risk assessment to RO's
    /// confirmed reception.
    async fn return_plan(&self, n: usize) -> anyhow::Result<Step> {
        let case_id = self.case(n, 45, w::Purpose::ReturnPlanning).await?;
        let risk = w::RecordRiskAssessmentRequest {
            case_id: case_id.clone(),
            level: w::RiskLevel::Low as i32,
            factors: vec!["family contacted".into()],
            request_id: new_id(),
            ..Default::default()
        };
        self.send(
            "AT",
            Role::ServiceProvider,
            "assess risk",
            risk,
            |ch, r| async move {
                ReturnPlanningServiceClient::new(ch)
                    .record_risk_assessment(r)
                    .await
            },
        )
        .await?;
        let decision = w::RecordReturnDecisionRequest {
            case_id: case_id.clone(),
            voluntary: true,
            informed: true,
            request_id: new_id(),
            ..Default::default()
        };
        self.send(
            "AT",
            Role::ServiceProvider,
            "decide return",
            decision,
            |ch, r| async move {
                ReturnPlanningServiceClient::new(ch)
                    .record_return_decision(r)
                    .await
            },
        )
        .await?;
        let propose = w::ProposeReturnRequest {
            case_id,
            destination: "RO".into(),
            request_id: new_id(),
            ..Default::default()
        };
        let id = self
            .send(
                "AT",
                Role::ServiceProvider,
                "propose return",
                propose,
                |ch, r| async move {
                    let p = ReturnPlanningServiceClient::new(ch)
                        .propose_return(r)
                        .await?;
                    Ok(p.into_inner().return_id)
                },
            )
            .await?;
        let confirm = w::RespondToReturnRequest {
            return_id: id.clone(),
            response: w::ReturnResponse::ConfirmReception as i32,
            details: "met at arrivals by the shelter".into(),
            request_id: new_id(),
        };
        self.send(
            "RO",
            Role::FocalPoint,
            "confirm reception",
            confirm,
            |ch, r| async move {
                ReturnPlanningServiceClient::new(ch)
                    .respond_to_return(r)
                    .await
            },
        )
        .await?;
        Ok(Step::Return { id })
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Every hearing id of `direction` at `node`, page after page.
async fn all_hearings(ch: Channel, direction: w::Direction) -> anyhow::Result<Vec<String>> {
    let mut c = WitnessHearingServiceClient::new(ch);
    let (mut ids, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = c
            .list_hearings(w::ListHearingsRequest {
                direction: direction as i32,
                page_size: 100,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.extend(page.hearings.into_iter().map(|h| h.hearing_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// Every return plan id of `direction` at `node`, page after page.
async fn all_returns(ch: Channel, direction: w::Direction) -> anyhow::Result<Vec<String>> {
    let mut c = ReturnPlanningServiceClient::new(ch);
    let (mut ids, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = c
            .list_return_plans(w::ListReturnPlansRequest {
                direction: direction as i32,
                page_size: 100,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.extend(page.return_plans.into_iter().map(|r| r.return_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// `ids` hold no id twice and exactly `want` ids.
fn exactly_once(ids: &[String], want: usize, what: &str) {
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{what}: none twice");
    assert_eq!(ids.len(), want, "{what}: each once");
}

/// SIGKILL either node at random moments during a stream of referrals, witness-hearing
/// steps and return plans, each with a step the other way (RO accepts or confirms),
/// restarting the node each time. Every request is retried with its request id until
/// acknowledged, as a client does. Then: every referral, hearing and return plan is at RO
/// exactly once, both sides agree on its state, and no file or log line of either node
/// holds a victim's identity or contact value in clear.
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

    let storm = Storm { dir: dir.path() };
    let mut steps: Vec<Step> = Vec::new();
    let mut n = 0;
    while !storm_done.load(std::sync::atomic::Ordering::SeqCst) || steps.len() < 3 {
        n += 1;
        steps.push(match n % 3 {
            0 => storm.hearing(n).await?,
            1 => Step::Referral {
                id: storm.referral(n, n % 2 == 0).await?,
                accepted: n % 2 == 0,
            },
            _ => storm.return_plan(n).await?,
        });
    }
    let killed = killer.await??;

    // Both sides agree on every step's state; RO holds each exactly once.
    let (at, ro) = (
        channel(dir.path(), "AT", Role::FocalPoint).await?,
        channel(dir.path(), "RO", Role::FocalPoint).await?,
    );
    let at_ja = channel(dir.path(), "AT", Role::JudicialAuthority).await?;
    let (at_refs, mut ro_refs) = (
        ReferralServiceClient::new(at.clone()),
        ReferralServiceClient::new(ro.clone()),
    );
    let (at_returns, mut ro_returns) = (
        ReturnPlanningServiceClient::new(at.clone()),
        ReturnPlanningServiceClient::new(ro.clone()),
    );
    let mut ro_hearings = WitnessHearingServiceClient::new(ro.clone());
    let (mut referrals, mut hearings, mut returns) = (0, 0, 0);
    for step in &steps {
        match step {
            Step::Referral { id, accepted } => {
                referrals += 1;
                let want = if *accepted {
                    w::ReferralStatus::Accepted
                } else {
                    w::ReferralStatus::Delivered
                };
                trm_tests::referral_with_status(&at_refs, id, want).await?;
                let at_ro = ro_refs
                    .get_referral(w::GetReferralRequest {
                        referral_id: id.clone(),
                    })
                    .await?
                    .into_inner();
                if *accepted {
                    assert_eq!(at_ro.status, w::ReferralStatus::Accepted as i32, "{id}");
                }
            }
            Step::Hearing { referral, hearing } => {
                referrals += 1;
                hearings += 1;
                trm_tests::referral_with_status(&at_refs, referral, w::ReferralStatus::Accepted)
                    .await?;
                let at_at = eventually("AT to see the hearing accepted", || {
                    let mut c = WitnessHearingServiceClient::new(at_ja.clone());
                    let hearing_id = hearing.clone();
                    async move {
                        let h = c
                            .get_hearing(w::GetHearingRequest { hearing_id })
                            .await?
                            .into_inner();
                        Ok((h.status == w::HearingStatus::Accepted as i32).then_some(h))
                    }
                })
                .await?;
                let at_ro = ro_hearings
                    .get_hearing(w::GetHearingRequest {
                        hearing_id: hearing.clone(),
                    })
                    .await?
                    .into_inner();
                assert_eq!(at_ro.status, at_at.status, "{hearing}");
                assert_eq!(at_ro.case_ref, at_at.case_ref, "{hearing}");
            }
            Step::Return { id } => {
                returns += 1;
                let at_at = eventually("AT to see the reception confirmed", || {
                    let mut c = at_returns.clone();
                    let return_id = id.clone();
                    async move {
                        let r = c
                            .get_return_plan(w::GetReturnPlanRequest { return_id })
                            .await?
                            .into_inner();
                        Ok((r.status == w::ReturnStatus::ReceptionConfirmed as i32).then_some(r))
                    }
                })
                .await?;
                let at_ro = ro_returns
                    .get_return_plan(w::GetReturnPlanRequest {
                        return_id: id.clone(),
                    })
                    .await?
                    .into_inner();
                assert_eq!(at_ro.status, at_at.status, "{id}");
                assert_eq!(at_ro.reception_details, at_at.reception_details, "{id}");
            }
        }
    }
    let (mut at_refs, mut ro_refs) = (at_refs, ro_refs);
    exactly_once(
        &all_referrals(&mut ro_refs, w::Direction::Incoming).await?,
        referrals,
        "referrals at RO",
    );
    exactly_once(
        &all_referrals(&mut at_refs, w::Direction::Outgoing).await?,
        referrals,
        "referrals at AT",
    );
    exactly_once(
        &all_hearings(ro.clone(), w::Direction::Incoming).await?,
        hearings,
        "hearings at RO",
    );
    exactly_once(
        &all_hearings(at_ja.clone(), w::Direction::Outgoing).await?,
        hearings,
        "hearings at AT",
    );
    exactly_once(
        &all_returns(ro.clone(), w::Direction::Incoming).await?,
        returns,
        "return plans at RO",
    );
    exactly_once(
        &all_returns(at.clone(), w::Direction::Outgoing).await?,
        returns,
        "return plans at AT",
    );
    println!(
        "storm: seed {seed}: {kills} kills (AT {}, RO {}), acknowledged: {referrals} \
         referrals ({} accepted), {hearings} hearings accepted, {returns} return plans \
         confirmed; lost 0, applied twice 0, both sides agree",
        killed[0],
        killed[1],
        steps
            .iter()
            .filter(|s| matches!(
                s,
                Step::Referral { accepted: true, .. } | Step::Hearing { .. }
            ))
            .count(),
    );
    drop((
        at,
        ro,
        at_ja,
        ro_hearings,
        ro_returns,
        at_returns,
        at_refs,
        ro_refs,
    ));
    let mut n = nodes.lock().await;
    for child in n.iter_mut() {
        assert!(trm_tests::terminate(child).await?.success());
    }
    // Every file the storm left (databases, key files, the nodes' logs of every run).
    let log = std::fs::read_to_string(dir.path().join("AT/node.log"))?;
    assert!(
        log.contains("referral submitted"),
        "the nodes' logs of every run were kept"
    );
    for needle in STORM_PERSONAL {
        let hits = trm_tests::files_containing(dir.path(), needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
    }
    Ok(())
}
