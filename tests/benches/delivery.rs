//! Delivery rate between two nodes: AT and RO in this process, real mutual TLS on loopback,
//! sled in temporary folders with the real durable point. N referrals are submitted through
//! the public API by C concurrent clients; each is acknowledged only once durable, then
//! delivered in signed envelopes (batched per peer) and acknowledged by a signed receipt.
//!
//! Run: `cargo bench -p trm-tests --bench delivery -- [N] [C]` (default 2000 referrals, 16
//! clients). Prints the submit rate, the delivery rate from the first submission to the last
//! arrival, and the latency from submission to arrival at RO (p50, p99, max).

use std::{collections::HashMap, time::Instant};

use time::OffsetDateTime;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{eventually, metrics, requests, TestFederation};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(2000);
    let clients = args.get(1).copied().unwrap_or(16).max(1);
    let fed = TestFederation::start_quiet(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case = sp
        .create_case(requests::case("Bench", 40))
        .await?
        .into_inner();
    sp.record_consent(requests::consent(
        &case.case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;

    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
        let case_id = case.case_id.clone();
        let share = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::with_capacity(share);
            for _ in 0..share {
                let at = OffsetDateTime::now_utc();
                let r = sp
                    .submit_referral(w::SubmitReferralRequest {
                        case_id: case_id.clone(),
                        destination: "RO".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                sent.push((r.referral_id, at));
            }
            Ok::<_, anyhow::Error>(sent)
        }));
    }
    let mut submitted: HashMap<String, OffsetDateTime> = HashMap::new();
    for t in tasks {
        submitted.extend(t.await??);
    }
    let submit_secs = started.elapsed().as_secs_f64();

    let ro_metrics = fed.node("RO")?.addrs.metrics;
    let target = format!("trm_envelopes_accepted_total {n}\n");
    eventually("every referral at RO", || {
        let target = target.clone();
        async move { Ok(metrics(ro_metrics).await?.contains(&target).then_some(())) }
    })
    .await?;
    let mut fp = fed.referrals("RO", Role::FocalPoint).await?;
    let arrived = fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals;
    anyhow::ensure!(
        arrived.len() == n,
        "expected {n} referrals at RO, found {}",
        arrived.len()
    );
    let mut latencies = Vec::with_capacity(n);
    let mut last = started_at;
    for r in &arrived {
        let t = r.created_at.unwrap_or_default();
        let at = OffsetDateTime::from_unix_timestamp(t.seconds)?
            + time::Duration::nanoseconds(i64::from(t.nanos));
        last = last.max(at);
        if let Some(sent) = submitted.get(&r.referral_id) {
            latencies.push((at - *sent).as_seconds_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let total_secs = (last - started_at).as_seconds_f64();
    let page = metrics(ro_metrics).await?;
    let batches = page
        .lines()
        .find_map(|l| l.strip_prefix("trm_batches_received_total "))
        .unwrap_or("?")
        .to_owned();
    println!("delivery bench: {n} referrals AT -> RO, {clients} concurrent clients");
    println!(
        "  submitted (acknowledged after the durable point): {:.0}/s",
        n as f64 / submit_secs
    );
    println!(
        "  delivered (first submission to last arrival):     {:.0} messages/s over {:.2} s",
        n as f64 / total_secs,
        total_secs
    );
    println!(
        "  latency submission -> arrival at RO: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    println!("  batches received by RO: {batches}");
    fed.stop().await?;
    Ok(())
}
