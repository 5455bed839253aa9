//! Floods, bounded in count and time, on loopback, against a `trm-node` process: one client
//! certificate or one peer sending as fast as it can starves no other client or peer;
//! connections that never finish their TLS handshake, from one address or from many, stop
//! no one else and are closed; connections over a caller's share of a port are closed.
//! Loopback has many source addresses (127.0.0.0/8): a client binds to one of its own.
//! (The node's memory and the latencies under a flood are measured by `trm-bench --flood`,
//! not asserted here.)

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{transport::Channel, Code};
use trm_core::ids::Role;
use trm_proto::v1::{
    self as w, federation_service_client::FederationServiceClient,
    referral_service_client::ReferralServiceClient,
};
use trm_tests::{eventually, free_node_spec as spec};
use trmctl::sandbox;

use crate::crash::{channel, start};

/// How long each flood runs.
const FLOOD: Duration = Duration::from_secs(3);
/// How long a referral of another peer may take to arrive while a flood runs before it
/// counts as starved (a deadline to poll against, not a speed target: `trm-bench --flood`
/// measures the latencies).
const ARRIVES_WITHIN: Duration = Duration::from_secs(30);
/// How long a client's request may take, connecting included (as the channels' own
/// deadline: a deadline to poll against, not a speed target).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// AT's bounds in this test.
const MAX_CONNECTIONS: usize = 32;
const PER_CLIENT: usize = 8;
const PER_ADDRESS: usize = 4;
/// Places of MAX_CONNECTIONS new addresses may take (the rest is kept for known ones).
const UNKNOWN_PLACES: usize = MAX_CONNECTIONS - MAX_CONNECTIONS / 4;
const RATE: u64 = 100;
const BURST: u64 = 100;

/// Requests a caller held to RATE and BURST can have had served in `elapsed`.
fn within_rate(elapsed: Duration) -> u64 {
    BURST + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64
}

/// What a flood's requests got back.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    exhausted: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn count<T>(&self, r: &Result<T, tonic::Status>) {
        match r {
            Ok(_) => &self.ok,
            Err(s) if s.code() == Code::ResourceExhausted => &self.exhausted,
            Err(_) => &self.other,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.exhausted.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// Runs `call` on each of `channels` from 16 tasks at once, as fast as they go, for FLOOD.
fn flood<F, Fut, T>(channels: Vec<Channel>, call: F) -> (Arc<Tally>, tokio::task::JoinSet<()>)
where
    F: Fn(Channel) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send,
    T: Send,
{
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + FLOOD;
    let mut tasks = tokio::task::JoinSet::new();
    for ch in channels {
        for _ in 0..16 {
            let (ch, call, tally) = (ch.clone(), call.clone(), tally.clone());
            tasks.spawn(async move {
                while Instant::now() < until {
                    tally.count(&call(ch.clone()).await);
                }
            });
        }
    }
    (tally, tasks)
}

/// Resident memory of process `pid`, in MiB (for the test's report only).
fn rss_mib(pid: Option<u32>) -> f64 {
    let status = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `n` connections to AT's services port as `role`, each its own TLS connection.
async fn connections(dir: &Path, role: Role, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(channel(dir, "AT", role).await?);
    }
    Ok(out)
}

/// `n` connections to `addr` from source address `ip` that never finish a TLS handshake:
/// every other one sends the first bytes of a record and stops.
async fn stall(
    addr: std::net::SocketAddr,
    ip: [u8; 4],
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let mut out = Vec::new();
    for i in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((std::net::Ipv4Addr::from(ip), 0).into())?;
        let mut tcp = socket.connect(addr).await?;
        if i % 2 == 1 {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
        }
        out.push(tcp);
    }
    Ok(out)
}

/// A focal point's connection to AT's services port from source address `ip`.
async fn connect_from(dir: &Path, ip: [u8; 4]) -> anyhow::Result<Channel> {
    let at = trm_node::NodeConfig::load(&sandbox::config_path(dir, "AT".parse()?))?;
    let nd = dir.join("AT");
    let fp = Role::FocalPoint;
    trm_tests::connect_from(
        std::net::Ipv4Addr::from(ip).into(),
        at.listen.services,
        &nd.join("services-ca.pem"),
        &nd.join(format!("clients/{fp}.pem")),
        &nd.join(format!("clients/{fp}.key")),
    )
    .await
}

/// A focal point from source address `ip` connects to AT and lists cases, within its
/// request deadline (connecting included: a client starved behind stalled handshakes
/// would miss it). Returns the client.
async fn served_from(dir: &Path, ip: [u8; 4]) -> anyhow::Result<ReferralServiceClient<Channel>> {
    let served = tokio::time::timeout(REQUEST_DEADLINE, async {
        let mut c = ReferralServiceClient::new(connect_from(dir, ip).await?);
        c.list_cases(w::ListCasesRequest::default()).await?;
        anyhow::Ok(c)
    })
    .await;
    match served {
        Ok(c) => c,
        Err(_) => anyhow::bail!(
            "a client from {} missed its {REQUEST_DEADLINE:?} deadline",
            std::net::Ipv4Addr::from(ip)
        ),
    }
}

/// A connection to AT's federation port presenting `peer`'s federation certificate.
async fn as_peer(dir: &Path, peer: &str) -> anyhow::Result<Channel> {
    let at = trm_node::NodeConfig::load(&sandbox::config_path(dir, "AT".parse()?))?;
    let tls = dir.join(peer).join("tls");
    trm_tests::connect(
        at.listen.federation,
        &tls.join("federation-ca.pem"),
        &tls.join("federation.pem"),
        &tls.join("federation.key"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_or_peer_starves_no_one_and_stalled_or_surplus_connections_are_closed(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    sandbox::init(dir.path(), &[spec("AT")?, spec("RO")?, spec("NG")?], false)?;
    let config = sandbox::config_path(dir.path(), "AT".parse()?);
    let mut text = std::fs::read_to_string(&config)?;
    // A handshake may take a minute, longer than any request here waits: only the limits
    // before the handshake, and the short deadline under pressure, let anyone in.
    text.push_str(&format!(
        "\n[limits]\nmax_connections = {MAX_CONNECTIONS}\nmax_connections_per_client = \
         {PER_CLIENT}\nhandshake_timeout_secs = 60\nmax_handshakes_per_address = \
         {PER_ADDRESS}\nhandshake_timeout_under_pressure_ms = 500\n\
         client_requests_per_second = {RATE}\nclient_burst = {BURST}\n\
         peer_requests_per_second = {RATE}\npeer_burst = {BURST}\n"
    ));
    std::fs::write(&config, text)?;
    let mut at = start(dir.path(), "AT")?;
    let (mut ro, mut ng) = (start(dir.path(), "RO")?, start(dir.path(), "NG")?);
    let d = dir.path();
    let fp = ReferralServiceClient::new(channel(d, "AT", Role::FocalPoint).await?);
    let rss_before = rss_mib(at.id());

    // 1. One client certificate floods the services port over all the connections it may
    // hold; another client's reads and writes are all served, each within its channel's
    // 30 s request deadline (a starved request fails the test with DEADLINE_EXCEEDED).
    let started = Instant::now();
    let (tally, mut tasks) = flood(
        connections(d, Role::ServiceProvider, PER_CLIENT).await?,
        |ch| async move {
            ReferralServiceClient::new(ch)
                .list_cases(w::ListCasesRequest::default())
                .await
        },
    );
    let until = Instant::now() + FLOOD;
    let (mut served, mut slowest) = (0, Duration::ZERO);
    while Instant::now() < until {
        let t = Instant::now();
        let mut c = fp.clone();
        let case_id = c
            .create_case(trm_tests::requests::case("Floodtest", 3))
            .await?
            .into_inner()
            .case_id;
        c.get_case(w::GetCaseRequest { case_id }).await?;
        slowest = slowest.max(t.elapsed());
        served += 1;
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let (ok, exhausted, other) = tally.get();
    println!(
        "flood: client: {} requests of the flooder ({ok} served, {exhausted} refused \
         RESOURCE_EXHAUSTED, {other} other); the other client: {served} served, slowest \
         {slowest:?}",
        ok + exhausted + other
    );
    assert!(exhausted > 0, "the flooder met its rate");
    assert!(
        ok <= within_rate(elapsed),
        "the flooder is held to its rate: {ok} served"
    );
    assert!(
        served > 0,
        "the other client is served (each request above succeeded)"
    );

    // 2. One peer floods the federation port; another peer's referrals arrive.
    let started = Instant::now();
    let (tally, mut tasks) = flood(
        {
            let mut chs = Vec::new();
            for _ in 0..PER_CLIENT {
                chs.push(as_peer(d, "RO").await?);
            }
            chs
        },
        |ch| async move {
            FederationServiceClient::new(ch)
                .get_node_info(w::GetNodeInfoRequest::default())
                .await
        },
    );
    let ng_sp = ReferralServiceClient::new(channel(d, "NG", Role::ServiceProvider).await?);
    let until = Instant::now() + FLOOD;
    let (mut arrived, mut slowest) = (0, Duration::ZERO);
    while Instant::now() < until {
        let t = Instant::now();
        let id = trm_tests::refer_with(&ng_sp, "AT").await?;
        let deadline = t + ARRIVES_WITHIN;
        loop {
            let got = fp
                .clone()
                .get_referral(w::GetReferralRequest {
                    referral_id: id.clone(),
                })
                .await;
            if got.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "NG's referral {id} did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest = slowest.max(t.elapsed());
        arrived += 1;
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let (ok, exhausted, other) = tally.get();
    println!(
        "flood: peer: {} requests of the flooding peer ({ok} served, {exhausted} refused \
         RESOURCE_EXHAUSTED, {other} other); the other peer: {arrived} referrals arrived, \
         slowest {slowest:?}",
        ok + exhausted + other
    );
    assert!(exhausted > 0, "the flooding peer met its rate");
    // RO's own delivery worker, if any, shares RO's rate with the flood.
    assert!(
        ok <= within_rate(elapsed),
        "the flooding peer is held to its rate: {ok} served"
    );
    assert!(arrived > 0, "the other peer's referrals arrive");
    // The flooding peer is served again once it slows down.
    let ro_sp = ReferralServiceClient::new(channel(d, "RO", Role::ServiceProvider).await?);
    let id = trm_tests::refer_with(&ro_sp, "AT").await?;
    trm_tests::referral_arrived(&fp, &id).await?;

    // 3. Connections that never finish a handshake (silent, or stalled half-way through a
    // record), several times the port's places, from one address: a client from another
    // address is served, each request within its deadline, and the flood keeps no more
    // places than one address may hold: every connection past them is closed at once.
    let services = trm_node::NodeConfig::load(&config)?.listen.services;
    let mut stalled = stall(services, [127, 0, 0, 1], 3 * MAX_CONNECTIONS).await?;
    let t = Instant::now();
    let other = served_from(d, [127, 0, 0, 2]).await?;
    println!(
        "flood: {} stalled handshakes from one address; a client from another served after \
         {:?}",
        stalled.len(),
        t.elapsed()
    );
    // (A connection still held waits for the deadline of its handshake: a minute.)
    let closed = || {
        stalled
            .iter()
            .filter(|tcp| {
                let mut buf = [0u8; 64];
                match tcp.try_read(&mut buf) {
                    Ok(0) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    Ok(_) => false,
                }
            })
            .count()
    };
    eventually("all but one address's places to be closed", || async {
        Ok((closed() >= stalled.len() - PER_ADDRESS).then_some(()))
    })
    .await?;

    // Then as many addresses as it takes to hold every place new addresses may take: a
    // client from an address a caller was served from (127.0.0.2, above) still gets in, and
    // under this pressure every stalled connection is closed long before a minute.
    let mut addresses = 0;
    while addresses * PER_ADDRESS < UNKNOWN_PLACES + PER_ADDRESS {
        let ip = [127, 0, 1, 1 + addresses as u8];
        stalled.extend(stall(services, ip, PER_ADDRESS).await?);
        addresses += 1;
    }
    let t = Instant::now();
    let known = served_from(d, [127, 0, 0, 2]).await?;
    println!(
        "flood: stalled handshakes from {addresses} more addresses; a client from a known \
         address served after {:?}",
        t.elapsed()
    );
    for (i, tcp) in stalled.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "stalled connection {i} still open: {read:?}"
        );
    }
    // And a client from a new address is served again.
    served_from(d, [127, 0, 0, 3]).await?;
    let late = (other, known);

    // 4. A caller holds at most its share of the port's connections; others still connect,
    // and a place given back is taken again.
    let mut held = Vec::new();
    for _ in 0..PER_CLIENT {
        let mut c = ReferralServiceClient::new(channel(d, "AT", Role::ServiceProvider).await?);
        c.list_cases(w::ListCasesRequest::default()).await?;
        held.push(c);
    }
    let sp = Role::ServiceProvider;
    let (ca, cert, key) = (
        d.join("AT/services-ca.pem"),
        d.join(format!("AT/clients/{sp}.pem")),
        d.join(format!("AT/clients/{sp}.key")),
    );
    let sp_connection = || trm_tests::connect(services, &ca, &cert, &key);
    let surplus = sp_connection().await;
    let refused = match surplus {
        Err(_) => true,
        Ok(ch) => ReferralServiceClient::new(ch)
            .list_cases(w::ListCasesRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a connection over the caller's share is closed");
    fp.clone()
        .list_cases(w::ListCasesRequest::default())
        .await?;
    held.pop();
    eventually("the place given back to be taken again", || async {
        let Ok(ch) = sp_connection().await else {
            return Ok(None);
        };
        Ok(ReferralServiceClient::new(ch)
            .list_cases(w::ListCasesRequest::default())
            .await
            .ok())
    })
    .await?;
    // The same on the federation port, where one peer is one caller however many
    // certificates its CA issues it: a second certificate of RO gets no more places.
    let ca = trm_crypto::pki::Authority::load(
        &std::fs::read_to_string(d.join("federation-ca.pem"))?,
        &std::fs::read_to_string(d.join("federation-ca.key"))?,
    )?;
    let second = ca.issue_node("RO".parse()?, &["localhost".into(), "127.0.0.1".into()])?;
    let (cert, key) = (d.join("RO-second.pem"), d.join("RO-second.key"));
    std::fs::write(&cert, &second.cert_pem)?;
    std::fs::write(&key, &second.key_pem)?;
    let federation = trm_node::NodeConfig::load(&config)?.listen.federation;
    let ro_ca = d.join("RO/tls/federation-ca.pem");
    let node_info = |ch: Channel| async move {
        FederationServiceClient::new(ch)
            .get_node_info(w::GetNodeInfoRequest::default())
            .await
    };
    // RO's node holds connections of its own to AT: stopped, it gives them back.
    ro.start_kill()?;
    ro.wait().await?;
    let mut held_by_ro = Vec::new();
    for _ in 0..PER_CLIENT {
        held_by_ro.push(
            eventually("a place for RO", || async {
                let Ok(ch) = as_peer(d, "RO").await else {
                    return Ok(None);
                };
                Ok(node_info(ch.clone()).await.ok().map(|_| ch))
            })
            .await?,
        );
    }
    let refused = match trm_tests::connect(federation, &ro_ca, &cert, &key).await {
        Err(_) => true,
        Ok(ch) => node_info(ch).await.is_err(),
    };
    assert!(
        refused,
        "another certificate of the same peer gets no more places"
    );
    held_by_ro.pop();
    eventually(
        "RO's place given back to be taken by its other certificate",
        || async {
            let Ok(ch) = trm_tests::connect(federation, &ro_ca, &cert, &key).await else {
                return Ok(None);
            };
            Ok(node_info(ch).await.ok())
        },
    )
    .await?;
    println!(
        "flood: AT's resident memory {rss_before:.1} MiB before the floods, {:.1} MiB after",
        rss_mib(at.id())
    );
    drop((held, held_by_ro, late, fp, ng_sp, ro_sp));
    for child in [&mut at, &mut ro, &mut ng] {
        child.start_kill()?;
        child.wait().await?;
    }
    Ok(())
}
