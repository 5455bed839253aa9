//! `--nodes N`: a federation of N nodes, each a peer of every other, on this machine, at
//! the same total offered load as two nodes.
//!
//! Two federations are measured one after the other in the same run: AT and RO alone, then
//! N nodes. Each gets the same referrals per second in all (`--rate`, for `--seconds`),
//! spread evenly over every ordered pair of its nodes, each referral on its own case, after
//! one referral per pair has opened the pair's connection (as in a federation that has run
//! for a while). For
//! each federation: the submission-to-arrival p99 over every referral and the worst pair's
//! p99, and the resident memory of its nodes after the run. With `--down-secs D`, one node
//! of the N is then killed, the others go on referring (to it as well, which waits in their
//! outboxes) for D seconds at `--down-rate`, it is started again, and the benchmark reports
//! how long it took to receive its backlog and the p99 of the other pairs meanwhile.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::process::Child;
use tonic::transport::Channel;
use trm_core::ids::{NodeId, Role};
use trm_proto::v1::{
    self as w, admin_service_client::AdminServiceClient,
    referral_service_client::ReferralServiceClient,
};
use trmctl::sandbox::{self, NodeSpec};

use crate::{
    cases_for, child, drive, free_ports, node_client, percentile, rss_mb, tempfile_dir,
    write_configs, Cli,
};

/// The nodes' countries, in the order they are taken.
const COUNTRIES: [&str; 24] = [
    "AT", "RO", "DE", "FR", "IT", "ES", "PL", "NL", "BE", "CZ", "HU", "BG", "GR", "PT", "SE", "DK",
    "FI", "IE", "SK", "SI", "HR", "LT", "LV", "EE",
];

/// One referral of the workload: from node `origin` to node `destination` (indexes), on its
/// own case.
#[derive(Debug, Clone)]
struct Work {
    origin: usize,
    destination: usize,
    case_id: String,
}

/// A referral submitted: when, and between which nodes.
#[derive(Debug, Clone)]
struct Sent {
    referral_id: String,
    origin: usize,
    destination: usize,
    at: time::OffsetDateTime,
}

/// A running federation of nodes, each a child process of the benchmark.
struct Federation {
    dir: PathBuf,
    ids: Vec<NodeId>,
    nodes: Vec<Option<Child>>,
    sp: Vec<ReferralServiceClient<Channel>>,
    fp: Vec<ReferralServiceClient<Channel>>,
    admin: Vec<AdminServiceClient<Channel>>,
}

impl Federation {
    /// Writes a sandbox of `n` nodes (each a peer of every other), starts them and connects.
    async fn start(cli: &Cli, n: usize) -> Result<Self> {
        if !(2..=COUNTRIES.len()).contains(&n) {
            bail!("--nodes takes 2 to {}", COUNTRIES.len());
        }
        let dir = tempfile_dir()?;
        let base = free_ports(u16::try_from(n * 10)?)?;
        let names = &COUNTRIES[..n];
        let ids: Vec<NodeId> = names.iter().map(|c| c.parse()).collect::<Result<_, _>>()?;
        let specs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| NodeSpec::from_base(*id, i, base))
            .collect::<Result<Vec<_>>>()?;
        sandbox::init(&dir, &specs, true)?;
        write_configs(&dir, cli, names)?;
        let mut f = Self {
            dir,
            ids,
            nodes: Vec::new(),
            sp: Vec::new(),
            fp: Vec::new(),
            admin: Vec::new(),
        };
        for i in 0..n {
            f.nodes.push(Some(f.spawn(i)?));
        }
        for &id in &f.ids {
            let channel = |role| node_client(&f.dir, id, role);
            f.sp.push(ReferralServiceClient::new(
                channel(Role::ServiceProvider).await?,
            ));
            f.fp.push(ReferralServiceClient::new(channel(Role::FocalPoint).await?));
            f.admin.push(AdminServiceClient::new(
                trmctl::scenario::client(&f.dir, id, Role::Operator, true).await?,
            ));
        }
        Ok(f)
    }

    fn spawn(&self, i: usize) -> Result<Child> {
        let config = sandbox::config_path(&self.dir, self.ids[i]);
        child(&["node".as_ref(), config.as_os_str()])
    }

    /// Kills node `i` (as a crash would stop it).
    async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill().await?;
            node.wait().await?;
        }
        Ok(())
    }

    /// Starts node `i` again from its store and waits until it serves.
    async fn restart(&mut self, i: usize) -> Result<()> {
        self.nodes[i] = Some(self.spawn(i)?);
        node_client(&self.dir, self.ids[i], Role::FocalPoint).await?;
        Ok(())
    }

    /// The resident memory of each running node, in MB.
    fn rss(&self) -> Vec<f64> {
        self.nodes
            .iter()
            .flatten()
            .filter_map(Child::id)
            .map(rss_mb)
            .collect()
    }

    /// `count` referrals spread evenly over every ordered pair of the nodes (`skip`: a node
    /// that refers nothing, being down), each on a case made for it.
    async fn workload(&self, count: usize, skip: Option<usize>) -> Result<Vec<Work>> {
        let n = self.ids.len();
        let origins: Vec<usize> = (0..n).filter(|i| Some(*i) != skip).collect();
        let pairs: Vec<(usize, usize)> = (0..count)
            .map(|k| {
                let origin = origins[k % origins.len()];
                let step = 1 + (k / origins.len()) % (n - 1);
                (origin, (origin + step) % n)
            })
            .collect();
        let mut by_pair: HashMap<(usize, usize), usize> = HashMap::new();
        for p in &pairs {
            *by_pair.entry(*p).or_default() += 1;
        }
        let mut cases: HashMap<(usize, usize), Vec<String>> = HashMap::new();
        for (&(o, d), &m) in &by_pair {
            let ids = cases_for(&self.sp[o], m, self.ids[d].as_str()).await?;
            cases.insert((o, d), ids);
        }
        pairs
            .into_iter()
            .map(|(origin, destination)| {
                let case_id = cases
                    .get_mut(&(origin, destination))
                    .and_then(Vec::pop)
                    .context("a case for each referral")?;
                Ok(Work {
                    origin,
                    destination,
                    case_id,
                })
            })
            .collect()
    }

    /// Submits the workload at `rate` referrals a second in all (64 in flight at most).
    async fn offer(&self, work: Vec<Work>, rate: f64) -> Result<Vec<Sent>> {
        let n = work.len();
        let work = Arc::new(work);
        let sent = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
        let (sp, ids, out) = (self.sp.clone(), self.ids.clone(), sent.clone());
        let started = Instant::now();
        drive(n, 64, move |i| {
            let (work, out) = (work.clone(), out.clone());
            let mut client = sp[work[i].origin].clone();
            let destination = ids[work[i].destination].to_string();
            async move {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let at = time::OffsetDateTime::now_utc();
                let r = client
                    .submit_referral(w::SubmitReferralRequest {
                        case_id: work[i].case_id.clone(),
                        destination,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                if let Ok(mut o) = out.lock() {
                    o.push(Sent {
                        referral_id: r.referral_id,
                        origin: work[i].origin,
                        destination: work[i].destination,
                        at,
                    });
                }
                Ok(())
            }
        })
        .await?;
        let sent = sent.lock().map(|v| v.clone()).unwrap_or_default();
        Ok(sent)
    }

    /// Waits until every running node's outbox is empty, then returns when each referral
    /// of `sent` arrived at its destination (its creation there), by referral id.
    async fn arrivals(&self, sent: &[Sent]) -> Result<HashMap<String, time::OffsetDateTime>> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        for (i, admin) in self.admin.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            drained(admin, self.ids[i], deadline).await?;
        }
        let mut destinations: Vec<usize> = sent.iter().map(|s| s.destination).collect();
        destinations.sort_unstable();
        destinations.dedup();
        let mut known = HashMap::new();
        for d in destinations {
            incoming(&self.fp[d], &mut known).await?;
        }
        Ok(known)
    }
}

/// Waits until node `id`'s outbox is empty (each envelope delivered and its receipt kept),
/// polling its status (O(1), so the node is not loaded while it sends), until `deadline`.
pub(crate) async fn drained(
    admin: &AdminServiceClient<Channel>,
    id: NodeId,
    deadline: Instant,
) -> Result<()> {
    loop {
        let depth = admin
            .clone()
            .status(w::StatusRequest::default())
            .await?
            .into_inner()
            .outbox_depth;
        if depth == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{id}'s outbox did not drain");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads every referral a node received; records when each arrived.
pub(crate) async fn incoming(
    fp: &ReferralServiceClient<Channel>,
    known: &mut HashMap<String, time::OffsetDateTime>,
) -> Result<()> {
    let mut token = String::new();
    loop {
        let page = fp
            .clone()
            .list_referrals(w::ListReferralsRequest {
                direction: w::Direction::Incoming as i32,
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for r in page.referrals {
            if let Some(t) = r.created_at {
                let at = time::OffsetDateTime::from_unix_timestamp(t.seconds)?
                    + time::Duration::nanoseconds(i64::from(t.nanos));
                known.entry(r.referral_id).or_insert(at);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

/// Latencies (ms) by ordered pair of nodes (origin, destination).
type ByPair = HashMap<(usize, usize), Vec<f64>>;

/// Submission-to-arrival latencies (ms) of `sent`, all of them and by ordered pair.
fn latencies(
    sent: &[Sent],
    arrived: &HashMap<String, time::OffsetDateTime>,
) -> Result<(Vec<f64>, ByPair)> {
    let mut all = Vec::with_capacity(sent.len());
    let mut by_pair = ByPair::new();
    for s in sent {
        let at = arrived
            .get(&s.referral_id)
            .with_context(|| format!("referral {} not received", s.referral_id))?;
        let ms = (*at - s.at).as_seconds_f64() * 1000.0;
        all.push(ms);
        by_pair
            .entry((s.origin, s.destination))
            .or_default()
            .push(ms);
    }
    Ok((all, by_pair))
}

/// What one federation measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Measured {
    nodes: usize,
    referrals: usize,
    rate: f64,
    p99_ms: f64,
    worst_pair_p99_ms: f64,
    rss_max_mb: f64,
    rss_mean_mb: f64,
}

/// Starts `n` nodes, offers them the workload and measures; returns the federation still
/// running (for the peer-down phase).
async fn measure(cli: &Cli, n: usize) -> Result<(Measured, Federation)> {
    eprintln!("{n} nodes: starting");
    let f = Federation::start(cli, n).await?;
    // A federation runs on connections made long before: one referral per ordered pair
    // first, so that no measured referral waits for a TLS handshake.
    let pairs = n * (n - 1);
    eprintln!("{n} nodes: warming {pairs} connections");
    let warm = f.workload(pairs, None).await?;
    let warmed = f.offer(warm, cli.rate).await?;
    f.arrivals(&warmed).await?;
    let count = (cli.rate * cli.seconds as f64).round() as usize;
    eprintln!("{n} nodes: {count} cases");
    let work = f.workload(count, None).await?;
    eprintln!("{n} nodes: {count} referrals at {:.0}/s", cli.rate);
    let sent = f.offer(work, cli.rate).await?;
    let arrived = f.arrivals(&sent).await?;
    let (mut all, by_pair) = latencies(&sent, &arrived)?;
    let worst = by_pair
        .into_values()
        .map(|mut v| percentile(&mut v, 0.99))
        .fold(0.0, f64::max);
    let rss = f.rss();
    let measured = Measured {
        nodes: n,
        referrals: count,
        rate: cli.rate,
        p99_ms: percentile(&mut all, 0.99),
        worst_pair_p99_ms: worst,
        rss_max_mb: rss.iter().copied().fold(0.0, f64::max),
        rss_mean_mb: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
    };
    Ok((measured, f))
}

/// What the peer-down phase measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Recovery {
    down_secs: u64,
    rate: f64,
    backlog: usize,
    catch_up_secs: f64,
    others_p99_ms: f64,
}

/// Kills the last node, goes on referring for `--down-secs` at `--down-rate` (to it too),
/// starts it again while the load goes on, and measures how long its backlog took to arrive
/// and the other pairs' p99 meanwhile.
async fn peer_down(cli: &Cli, f: &mut Federation) -> Result<Recovery> {
    let down = f.ids.len() - 1;
    let rate = cli.down_rate;
    let during = (rate * cli.down_secs as f64).round() as usize;
    // The load that goes on while it catches up: as long again as it was down, at most a
    // minute.
    let after = (rate * (cli.down_secs.min(60)) as f64).round() as usize;
    eprintln!("peer down: {} cases", during + after);
    let first = f.workload(during, Some(down)).await?;
    let then = f.workload(after, Some(down)).await?;
    eprintln!("peer down: {} stopped for {} s", f.ids[down], cli.down_secs);
    f.kill(down).await?;
    let sent_down = f.offer(first, rate).await?;
    let backlog = sent_down.iter().filter(|s| s.destination == down).count();
    eprintln!("peer down: {backlog} referrals wait for it; starting it again");
    let restarted = Instant::now();
    f.restart(down).await?;
    let fp = f.fp[down].clone();
    let waiting: Vec<String> = sent_down
        .iter()
        .filter(|s| s.destination == down)
        .map(|s| s.referral_id.clone())
        .collect();
    let catch_up = tokio::spawn(async move {
        let mut known = HashMap::new();
        loop {
            incoming(&fp, &mut known).await?;
            if waiting.iter().all(|id| known.contains_key(id)) {
                return Ok::<_, anyhow::Error>(restarted.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let sent_after = f.offer(then, rate).await?;
    let catch_up_secs = catch_up.await??;
    let arrived = f.arrivals(&sent_after).await?;
    let others: Vec<Sent> = sent_after
        .into_iter()
        .filter(|s| s.destination != down)
        .collect();
    let (mut lat, _) = latencies(&others, &arrived)?;
    Ok(Recovery {
        down_secs: cli.down_secs,
        rate,
        backlog,
        catch_up_secs,
        others_p99_ms: percentile(&mut lat, 0.99),
    })
}

/// The mesh benchmark: two nodes, then `--nodes`, then (with `--down-secs`) a peer down
/// among them; prints the table and writes the JSON if asked.
pub(crate) async fn run(cli: &Cli) -> Result<()> {
    let (two, f) = measure(cli, 2).await?;
    stop(f, cli.keep).await?;
    let (many, mut f) = measure(cli, cli.nodes).await?;
    let recovery = if cli.down_secs > 0 {
        Some(peer_down(cli, &mut f).await?)
    } else {
        None
    };
    stop(f, cli.keep).await?;
    println!(
        "{:>5} {:>9} {:>8} {:>10} {:>15} {:>12} {:>13}",
        "nodes", "referrals", "rate/s", "p99", "worst pair p99", "RSS max", "RSS mean"
    );
    for m in [&two, &many] {
        println!(
            "{:>5} {:>9} {:>8.0} {:>8.1}ms {:>13.1}ms {:>9.1} MB {:>10.1} MB",
            m.nodes,
            m.referrals,
            m.rate,
            m.p99_ms,
            m.worst_pair_p99_ms,
            m.rss_max_mb,
            m.rss_mean_mb
        );
    }
    println!(
        "p99 with {} nodes / with 2: {:.2}",
        many.nodes,
        many.p99_ms / two.p99_ms.max(1e-9)
    );
    if let Some(r) = &recovery {
        println!(
            "a peer down {} s at {:.0}/s: {} referrals waited for it, received {:.1} s after it started again; the other pairs' p99 meanwhile {:.1} ms ({:.2} x)",
            r.down_secs,
            r.rate,
            r.backlog,
            r.catch_up_secs,
            r.others_p99_ms,
            r.others_p99_ms / many.p99_ms.max(1e-9)
        );
    }
    crate::write_json(
        cli.json.as_deref(),
        &serde_json::json!({ "two": two, "mesh": many, "peer_down": recovery }),
    )
}

/// Stops every node and removes the federation's folder, unless `keep` (then printed).
async fn stop(mut f: Federation, keep: bool) -> Result<()> {
    for i in 0..f.nodes.len() {
        f.kill(i).await?;
    }
    if keep {
        eprintln!("kept {}", f.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&f.dir);
    }
    Ok(())
}
