//! The federation port trusts nobody by default: unknown CAs are refused in the TLS
//! handshake, and an envelope is verified before it has any effect.

use std::path::Path;

use prost::Message;
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code,
};
use trm_core::ids::{NodeId, Role};
use trm_crypto::{
    files,
    pki::Authority,
    signing::{self, SigningIdentity, RECEIPT_TAG},
};
use trm_federation::envelope;
use trm_proto::v1::{
    self as w, envelope_body::Payload, federation_service_client::FederationServiceClient,
    EnvelopeBody, ReceiptBody, ReceiptOutcome,
};
use trm_tests::TestFederation;

pub(crate) async fn federation_client(
    addr: std::net::SocketAddr,
    ca: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<FederationServiceClient<Channel>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files::read(ca)?))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_lazy();
    Ok(FederationServiceClient::new(channel))
}

/// A client of AT's federation port presenting RO's real federation certificate.
pub(crate) async fn as_ro(
    fed: &TestFederation,
) -> anyhow::Result<FederationServiceClient<Channel>> {
    let ro = fed.dir().join("RO/tls");
    federation_client(
        fed.node("AT")?.addrs.federation,
        &fed.dir().join("AT/tls/federation-ca.pem"),
        &files::read_text(&ro.join("federation.pem"))?,
        &files::read_text(&ro.join("federation.key"))?,
    )
    .await
}

async fn audit_entries(fed: &TestFederation, node: &str) -> anyhow::Result<u64> {
    let mut admin = fed.admin(node, Role::Operator).await?;
    let r = admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner();
    assert!(r.ok);
    Ok(r.entries_checked)
}

#[tokio::test]
async fn peer_certificate_from_an_unknown_ca_is_refused_in_the_handshake() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    // Control: RO's real certificate is let in.
    let info = as_ro(&fed)
        .await?
        .get_node_info(w::GetNodeInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.node_id, "AT");

    // Same node id, same host names, but issued by a CA AT does not trust.
    let rogue = Authority::generate("rogue CA")?;
    let cert = rogue.issue_node("RO".parse()?, &["localhost".into(), "127.0.0.1".into()])?;
    let mut client = federation_client(
        fed.node("AT")?.addrs.federation,
        &fed.dir().join("AT/tls/federation-ca.pem"),
        &cert.cert_pem,
        &cert.key_pem,
    )
    .await?;
    let err = client
        .get_node_info(w::GetNodeInfoRequest {})
        .await
        .expect_err("unknown CA");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{err:?}"
    );
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let env = envelope::seal(
        &ro_key,
        "RO".parse()?,
        "AT".parse()?,
        "ref",
        offer("ref", None),
    );
    assert!(client.deliver(env).await.is_err());
    fed.stop().await?;
    Ok(())
}

pub(crate) fn offer(case_ref: &str, identity: Option<w::Person>) -> Payload {
    Payload::ReferralOffer(w::ReferralOffer {
        referral_id: uuid::Uuid::now_v7().to_string(),
        disclosed: Some(w::DisclosedCase {
            case_ref: case_ref.into(),
            age_band: w::AgeBand::AgeBand1820 as i32,
            identity,
            ..Default::default()
        }),
        requested_services: vec![w::NeedKind::Shelter as i32],
    })
}

#[tokio::test]
async fn envelopes_are_verified_before_any_effect_and_receipts_bind_the_bytes() -> anyhow::Result<()>
{
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let (at, ro, ng): (NodeId, NodeId, NodeId) = ("AT".parse()?, "RO".parse()?, "NG".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let ng_key = SigningIdentity::load(&fed.dir().join("NG/keys/signing.pem"))?;
    let at_public = signing::public_from_pem(&files::read_text(
        &fed.dir().join("AT/keys/signing.pub.pem"),
    )?)?;
    let mut client = as_ro(&fed).await?;
    let before = audit_entries(&fed, "AT").await?;

    let good = envelope::seal(&ro_key, ro, at, "ref-a", offer("ref-a", None));
    let refusals = [
        (
            "tampered signature",
            {
                let mut e = good.clone();
                e.signature[10] ^= 1;
                e
            },
            Code::Unauthenticated,
        ),
        (
            "tampered body",
            {
                let mut e = good.clone();
                let n = e.body.len() - 1;
                e.body[n] ^= 1;
                e
            },
            Code::Unauthenticated,
        ),
        (
            "another node's key",
            envelope::seal(&ng_key, ng, at, "r", offer("r", None)),
            Code::Unauthenticated,
        ),
        (
            "sender is not the TLS peer",
            envelope::seal(&ro_key, ng, at, "r", offer("r", None)),
            Code::PermissionDenied,
        ),
        (
            "recipient is not this node",
            envelope::seal(&ro_key, ro, ng, "r", offer("r", None)),
            Code::InvalidArgument,
        ),
    ];
    for (what, env, code) in &refusals {
        let err = client.deliver(env.clone()).await.expect_err(what);
        assert_eq!(err.code(), *code, "{what}: {err:?}");
    }
    assert_eq!(
        audit_entries(&fed, "AT").await?,
        before + refusals.len() as u64,
        "each refusal is audited"
    );
    let mut at_fp = fed.referrals("AT", Role::FocalPoint).await?;
    let incoming = at_fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        incoming.referrals.is_empty(),
        "no refused envelope had an effect"
    );

    // The untampered envelope is accepted, with a receipt signed by AT over its exact bytes.
    let receipt = client.deliver(good.clone()).await?.into_inner();
    signing::verify(&at_public, RECEIPT_TAG, &receipt.body, &receipt.signature)?;
    let body = ReceiptBody::decode(receipt.body.as_slice())?;
    assert_eq!(body.outcome, ReceiptOutcome::Accepted as i32);
    assert_eq!(body.body_sha256, trm_crypto::sha256(&good.body).to_vec());
    assert_eq!(body.receiver, "AT");
    // Delivered again: the same receipt, and still one referral.
    let again = client.deliver(good).await?.into_inner();
    assert_eq!(again, receipt);
    let incoming = at_fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(incoming.referrals.len(), 1);
    assert_eq!(incoming.referrals[0].origin, "RO");

    // An update the sender may not make (the origin accepting its own referral): REJECTED.
    let update = Payload::ReferralUpdate(w::ReferralUpdate {
        referral_id: incoming.referrals[0].referral_id.clone(),
        status: w::ReferralStatus::Accepted as i32,
        reason: String::new(),
        disclosed: None,
    });
    let r = client
        .deliver(envelope::seal(&ro_key, ro, at, "ref-a", update))
        .await?
        .into_inner();
    let body = ReceiptBody::decode(r.body.as_slice())?;
    assert_eq!(body.outcome, ReceiptOutcome::Rejected as i32);
    assert!(
        body.reason.starts_with("invalid transition"),
        "{}",
        body.reason
    );

    // Authenticated but carrying identity in a referral: a signed REJECTED receipt, no effect.
    let leaky = envelope::seal(
        &ro_key,
        ro,
        at,
        "ref-b",
        offer(
            "ref-b",
            Some(w::Person {
                family_name: "Leaked".into(),
                ..Default::default()
            }),
        ),
    );
    let rejected = client.deliver(leaky).await?.into_inner();
    signing::verify(&at_public, RECEIPT_TAG, &rejected.body, &rejected.signature)?;
    let body = ReceiptBody::decode(rejected.body.as_slice())?;
    assert_eq!(body.outcome, ReceiptOutcome::Rejected as i32);
    assert!(
        body.reason.starts_with("policy violation"),
        "{}",
        body.reason
    );
    assert!(body.reason.contains("identity"), "{}", body.reason);
    assert!(!body.reason.contains("Leaked"));
    let incoming = at_fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(incoming.referrals.len(), 1);
    fed.stop().await?;
    Ok(())
}

/// What an impostor server saw.
#[derive(Default)]
struct Seen {
    handshakes: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

/// A TLS server on `addr` presenting a certificate that claims `claims` but is issued by
/// `ca_of`'s genuine federation CA (a member's CA certifying another member), requiring a
/// client certificate from `client_ca_of`'s CA; counts handshakes and the application bytes
/// it is sent. Stops accepting when the returned task is aborted.
async fn impostor(
    addr: std::net::SocketAddr,
    dir: &Path,
    ca_of: &str,
    claims: &str,
    client_ca_of: &str,
) -> anyhow::Result<(std::sync::Arc<Seen>, tokio::task::JoinHandle<()>)> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use std::sync::{atomic::Ordering, Arc};
    let tls = dir.join(ca_of).join("tls");
    let ca = Authority::load(
        &files::read_text(&tls.join("federation-ca.pem"))?,
        &files::read_text(&tls.join("federation-ca.key"))?,
    )?;
    let forged = ca.issue_node(claims.parse()?, &["localhost".into(), "127.0.0.1".into()])?;
    let chain = CertificateDer::pem_slice_iter(forged.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(forged.key_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join(client_ca_of).join("tls/federation-ca.pem"))? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, s) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    s.handshakes.fetch_add(1, Ordering::SeqCst);
                    let mut buf = Vec::new();
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        tls.read_to_end(&mut buf),
                    )
                    .await;
                    s.bytes.fetch_add(buf.len(), Ordering::SeqCst);
                    s.closed.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((seen, task))
}

#[tokio::test]
async fn delivery_goes_only_to_a_server_proving_the_peers_identity() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let mut fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let ro_addr = fed.node("RO")?.addrs.federation;
    fed.stop_node("RO").await?;
    // A certificate from RO's genuine CA claiming NG, at RO's address.
    let (seen, task) = impostor(ro_addr, fed.dir(), "RO", "NG", "AT").await?;

    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let referral_id = trm_tests::refer(&fed, "AT", "RO").await?;
    trm_tests::eventually("a delivery attempt to end at the impostor", || {
        let seen = seen.clone();
        async move { Ok((seen.closed.load(Ordering::SeqCst) >= 1).then_some(())) }
    })
    .await?;
    assert_eq!(
        seen.bytes.load(Ordering::SeqCst),
        0,
        "not one byte of the envelope reached the impostor"
    );
    let id = referral_id;
    let r = sp
        .get_referral(w::GetReferralRequest {
            referral_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        r.status,
        w::ReferralStatus::Sent as i32,
        "no receipt from an impostor"
    );

    // The impostor goes away and the real RO comes back: the referral is delivered.
    task.abort();
    let _ = task.await;
    fed.start_node("RO").await?;
    trm_tests::referral_with_status(&sp, &id, w::ReferralStatus::Delivered).await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn stale_future_and_oversize_envelopes_are_refused_counted_and_audited() -> anyhow::Result<()>
{
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let mut client = as_ro(&fed).await?;
    let before = audit_entries(&fed, "AT").await?;
    let now = time::OffsetDateTime::now_utc();
    let id = || uuid::Uuid::now_v7().to_string();
    // An offer with message id `id`, dated `when`.
    let dated =
        |id: &str, when| envelope::seal_with_id(&ro_key, ro, at, "r", offer("r", None), id, when);
    let ahead = now + time::Duration::minutes(10);
    let id_ahead = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(ahead.unix_timestamp())?,
        0,
    ))
    .to_string();
    let cases = [
        (
            "stale",
            dated(&id(), now - time::Duration::days(8)),
            Code::InvalidArgument,
        ),
        ("future", dated(&id(), ahead), Code::InvalidArgument),
        // A message id dated ahead would outrank every later message of the sender.
        ("future", dated(&id_ahead, now), Code::InvalidArgument),
        (
            "oversize",
            envelope::seal(
                &ro_key,
                ro,
                at,
                "r",
                offer(&"x".repeat(4 * 1024 * 1024 + 1), None),
            ),
            Code::ResourceExhausted,
        ),
    ];
    for (reason, env, code) in &cases {
        let err = client.deliver(env.clone()).await.expect_err(reason);
        assert_eq!(err.code(), *code, "{reason}");
        assert!(
            err.message().starts_with(reason),
            "{reason}: {}",
            err.message()
        );
    }
    // Just inside the window and the clock skew: accepted.
    let fine = envelope::seal_with_id(
        &ro_key,
        ro,
        at,
        "r2",
        offer("r2", None),
        &id(),
        now - time::Duration::days(6),
    );
    let receipt = client.deliver(fine).await?.into_inner();
    assert_eq!(
        ReceiptBody::decode(receipt.body.as_slice())?.outcome,
        ReceiptOutcome::Accepted as i32
    );

    assert_eq!(
        audit_entries(&fed, "AT").await?,
        before + cases.len() as u64 + 1
    );
    let page = trm_tests::metrics(fed.node("AT")?.addrs.metrics).await?;
    for (reason, _, _) in &cases {
        let times = cases.iter().filter(|(r, _, _)| r == reason).count();
        assert!(
            page.contains(&format!(
                "trm_envelopes_refused_total{{reason=\"{reason}\"}} {times}"
            )),
            "{reason}: {page}"
        );
    }
    assert!(page.contains("trm_envelopes_accepted_total 1"), "{page}");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_peer_that_was_down_receives_everything_exactly_once_in_order() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    fed.stop_node("RO").await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut sent = Vec::new();
    for _ in 0..6 {
        sent.push(trm_tests::refer(&fed, "AT", "RO").await?);
    }
    // The failing peer shows at the default level, not only at debug.
    trm_tests::eventually("a warning about RO", || async {
        Ok(trm_tests::captured_logs()
            .lines()
            .any(|l| {
                l.contains("WARN")
                    && l.contains("cannot deliver to the peer")
                    && l.contains("peer=RO")
            })
            .then_some(()))
    })
    .await?;
    fed.start_node("RO").await?;
    let fp = fed.referrals("RO", Role::FocalPoint).await?;
    let mut got = trm_tests::eventually("all six at RO", || {
        let mut fp = fp.clone();
        async move {
            let l = fp
                .list_referrals(w::ListReferralsRequest {
                    direction: w::Direction::Incoming as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((l.referrals.len() >= 6).then_some(l.referrals))
        }
    })
    .await?;
    assert_eq!(got.len(), 6, "exactly once");
    // In the order they were submitted: RO stamps each on arrival.
    got.sort_by_key(|r| r.created_at.map(|t| (t.seconds, t.nanos)));
    assert_eq!(
        got.iter()
            .map(|r| r.referral_id.clone())
            .collect::<Vec<_>>(),
        sent
    );
    for id in &sent {
        trm_tests::referral_with_status(&sp, id, w::ReferralStatus::Delivered).await?;
    }
    let page = trm_tests::metrics(fed.node("RO")?.addrs.metrics).await?;
    assert!(page.contains("trm_envelopes_accepted_total 6"), "{page}");
    let page_at = trm_tests::metrics(fed.node("AT")?.addrs.metrics).await?;
    let body = page_at.split("\r\n\r\n").nth(1).unwrap_or_default();
    let families = trm_tests::check_metrics(body)?;
    for bad in [
        "# TYPE x_total counter\nx_total 1\n",
        "# HELP x x\n# TYPE x counter\nx 1\n",
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n",
    ] {
        assert!(trm_tests::check_metrics(bad).is_err(), "{bad}");
    }
    for (name, kind) in [
        ("trm_grpc_requests_total", "counter"),
        ("trm_delivery_latency_seconds", "histogram"),
        ("trm_storage_sync_seconds", "histogram"),
        ("trm_outbox_oldest_age_seconds", "gauge"),
        ("trm_certificate_expiry_timestamp_seconds", "gauge"),
    ] {
        assert_eq!(families.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert!(
        page_at.contains(
            "trm_grpc_requests_total{method=\"trm.v1.ReferralService/SubmitReferral\",code=\"OK\"} 6"
        ),
        "{page_at}"
    );
    assert!(
        page_at.contains("trm_outbox_depth{peer=\"RO\"} 0"),
        "{page_at}"
    );
    assert!(
        page_at.contains("trm_delivery_latency_seconds_count 6"),
        "{page_at}"
    );
    assert!(
        !page.contains("trm_batches_received_total 0"),
        "the queue was sent in batches: {page}"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn batches_in_flight_together_are_applied_in_queue_order() -> anyhow::Result<()> {
    // Three envelopes per batch and four batches in flight: a queue of offers, each
    // followed by its withdrawal, is sent as several batches at once. A withdrawal applied
    // before its offer would be refused and dead-lettered.
    let mut fed = TestFederation::builder()
        .nodes(&["AT", "RO"])
        .config(|_, c| {
            c.delivery.batch_envelopes = 3;
            c.delivery.batches_in_flight = 4;
        })
        .start()
        .await?;
    fed.stop_node("RO").await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut sent = Vec::new();
    for _ in 0..7 {
        let id = trm_tests::refer(&fed, "AT", "RO").await?;
        sp.withdraw_referral(w::WithdrawReferralRequest {
            referral_id: id.clone(),
            reason: "plans changed".into(),
            ..Default::default()
        })
        .await?;
        sent.push(id);
    }
    fed.start_node("RO").await?;
    let fp = fed.referrals("RO", Role::FocalPoint).await?;
    for id in &sent {
        trm_tests::referral_with_status(&fp, id, w::ReferralStatus::Withdrawn).await?;
    }
    let mut got = fp
        .clone()
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals;
    got.sort_by_key(|r| r.created_at.map(|t| (t.seconds, t.nanos)));
    assert_eq!(
        got.iter()
            .map(|r| r.referral_id.clone())
            .collect::<Vec<_>>(),
        sent,
        "exactly once, in the order submitted"
    );
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let status = admin
        .status(w::StatusRequest::default())
        .await?
        .into_inner();
    assert_eq!((status.outbox_depth, status.dead_letters), (0, 0));
    let page = trm_tests::metrics(fed.node("RO")?.addrs.metrics).await?;
    assert!(page.contains("trm_envelopes_accepted_total 14"), "{page}");
    let batches: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("trm_batches_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    assert!(batches >= 5, "14 envelopes, 3 per batch: {batches} batches");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_later_batch_that_overtakes_an_earlier_one_waits_for_it() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let client = as_ro(&fed).await?;
    // Batch 0 is slow to check (many signatures) and ends with an offer; batch 1, quick to
    // check, withdraws that offer and is sent first.
    let target = offer("t", None);
    let Payload::ReferralOffer(o) = &target else {
        anyhow::bail!("an offer")
    };
    let referral_id = o.referral_id.clone();
    let mut first: Vec<_> = (0..40)
        .map(|i| {
            envelope::seal(
                &ro_key,
                ro,
                at,
                &format!("o{i}"),
                offer(&format!("o{i}"), None),
            )
        })
        .collect();
    first.push(envelope::seal(&ro_key, ro, at, "t", target));
    let withdraw = envelope::seal(
        &ro_key,
        ro,
        at,
        "t",
        Payload::ReferralUpdate(w::ReferralUpdate {
            referral_id: referral_id.clone(),
            status: w::ReferralStatus::Withdrawn as i32,
            reason: "plans changed".into(),
            disclosed: None,
        }),
    );
    let later = {
        let mut c = client.clone();
        tokio::spawn(async move {
            c.deliver_batch(w::DeliverBatchRequest {
                envelopes: vec![withdraw],
                session: "s1".into(),
                sequence: 1,
            })
            .await
        })
    };
    tokio::task::yield_now().await;
    client
        .clone()
        .deliver_batch(w::DeliverBatchRequest {
            envelopes: first,
            session: "s1".into(),
            sequence: 0,
        })
        .await?;
    let receipt = later.await??.into_inner();
    let body = w::BatchReceiptBody::decode(receipt.body.as_slice())?;
    assert_eq!(
        (body.entries[0].outcome, body.entries[0].reason.as_str()),
        (ReceiptOutcome::Accepted as i32, ""),
        "the withdrawal is applied after the offer it follows"
    );
    let fp = fed.referrals("AT", Role::FocalPoint).await?;
    trm_tests::referral_with_status(&fp, &referral_id, w::ReferralStatus::Withdrawn).await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_refused_batch_stops_the_rest_of_its_session() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let mut client = as_ro(&fed).await?;
    let batch = |n: u64, envelopes| w::DeliverBatchRequest {
        envelopes,
        session: "s1".into(),
        sequence: n,
    };
    let first = envelope::seal(&ro_key, ro, at, "q1", offer("q1", None));
    let mut tampered = envelope::seal(&ro_key, ro, at, "q2", offer("q2", None));
    tampered.signature[0] ^= 1;
    let third = envelope::seal(&ro_key, ro, at, "q3", offer("q3", None));
    client.deliver_batch(batch(0, vec![first])).await?;
    let err = client
        .deliver_batch(batch(1, vec![tampered]))
        .await
        .expect_err("tampered");
    assert_eq!(err.code(), Code::Unauthenticated);
    // Batch 2 was sent before the sender learnt of the refusal: applying it would put it
    // before the envelopes of batch 1 that the sender will send again.
    let err = client
        .deliver_batch(batch(2, vec![third.clone()]))
        .await
        .expect_err("after a refused batch");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("start a new session"),
        "{}",
        err.message()
    );
    let err = client
        .deliver_batch(w::DeliverBatchRequest {
            session: "x".repeat(65),
            ..batch(0, vec![third.clone()])
        })
        .await
        .expect_err("session name too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("session"), "{}", err.message());
    let fp = fed.referrals("AT", Role::FocalPoint).await?;
    let incoming = fp
        .clone()
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals;
    assert_eq!(incoming.len(), 1, "only the first batch took effect");
    // A new session starts from 0 and goes through.
    client
        .deliver_batch(w::DeliverBatchRequest {
            session: "s2".into(),
            ..batch(0, vec![third])
        })
        .await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_black_holed_peer_does_not_hold_up_delivery_to_another() -> anyhow::Result<()> {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let mut fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let ng_addr = fed.node("NG")?.addrs.federation;
    fed.stop_node("NG").await?;
    // Accepts TCP and never answers.
    let hole = tokio::net::TcpListener::bind(ng_addr).await?;
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = hole.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut ids = Vec::new();
    for to in ["NG", "RO"] {
        ids.push(trm_tests::refer(&fed, "AT", to).await?);
    }
    trm_tests::eventually("AT to be stuck on NG", || {
        let a = accepted.clone();
        async move { Ok((a.load(Ordering::SeqCst) >= 1).then_some(())) }
    })
    .await?;
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    trm_tests::eventually("the referral to reach RO", || {
        let mut ro = ro.clone();
        let id = ids[1].clone();
        async move {
            Ok(ro
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await
                .ok())
        }
    })
    .await?;
    // RO got its referral while AT's attempt on NG was still hanging.
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "delivery to RO waited for NG"
    );
    let ng = sp
        .get_referral(w::GetReferralRequest {
            referral_id: ids[0].clone(),
        })
        .await?
        .into_inner();
    assert_eq!(ng.status, w::ReferralStatus::Sent as i32);
    task.abort();
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn key_rotation_keeps_old_messages_valid_in_their_window_and_refuses_a_retired_key(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let old_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let before_rotation = time::OffsetDateTime::now_utc() - time::Duration::seconds(30);
    let mut ro_admin = fed.admin("RO", Role::Operator).await?;
    let new_id = ro_admin
        .rotate_signing_key(w::RotateSigningKeyRequest {
            overlap_days: 7,
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_id;
    assert_ne!(new_id, old_key.key_id());
    let new_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    assert_eq!(
        new_key.key_id(),
        new_id,
        "the new key replaced the key file"
    );

    // AT learns the new key from RO's announcement, signed by the key it trusted.
    let mut at_admin = fed.admin("AT", Role::Operator).await?;
    trm_tests::eventually("AT to learn RO's new key", || {
        let mut a = at_admin.clone();
        async move {
            let peers = a
                .list_peers(w::ListPeersRequest::default())
                .await?
                .into_inner()
                .peers;
            Ok((peers
                .iter()
                .any(|p| p.node_id == "RO" && p.signing_keys_pem.len() == 2))
            .then_some(()))
        }
    })
    .await?;
    // RO lists both keys with their windows (asked by AT over the federation port).
    let at_tls = fed.dir().join("AT/tls");
    let mut to_ro = federation_client(
        fed.node("RO")?.addrs.federation,
        &fed.dir().join("AT/peers/RO-ca.pem"),
        &files::read_text(&at_tls.join("federation.pem"))?,
        &files::read_text(&at_tls.join("federation.key"))?,
    )
    .await?;
    let info = to_ro
        .get_node_info(w::GetNodeInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.node_id, "RO");
    let old_listed = info
        .keys
        .iter()
        .find(|k| k.key_id == old_key.key_id())
        .expect("old key listed");
    let new_listed = info
        .keys
        .iter()
        .find(|k| k.key_id == new_id)
        .expect("new key listed");
    assert!(old_listed.valid_until.is_some() && old_listed.valid_from.is_none());
    assert_eq!(
        new_listed.valid_from, old_listed.valid_until,
        "the new key signs from the old one's end"
    );
    assert_eq!(new_listed.public_key, new_key.public().as_bytes().to_vec());
    let mut client = as_ro(&fed).await?;
    let id = || uuid::Uuid::now_v7().to_string();
    // Created before the rotation, signed by the old key: still verifies.
    let old_msg = envelope::seal_with_id(
        &old_key,
        ro,
        at,
        "k1",
        offer("k1", None),
        &id(),
        before_rotation,
    );
    let r = client.deliver(old_msg).await?.into_inner();
    assert_eq!(
        ReceiptBody::decode(r.body.as_slice())?.outcome,
        ReceiptOutcome::Accepted as i32
    );
    // Created now, signed by the retired key: refused.
    let late = envelope::seal(&old_key, ro, at, "k2", offer("k2", None));
    let err = client.deliver(late).await.expect_err("retired key");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().starts_with("retired_key"),
        "{}",
        err.message()
    );
    // Created now, signed by the new key: accepted.
    let fresh = envelope::seal(&new_key, ro, at, "k3", offer("k3", None));
    let r = client.deliver(fresh).await?.into_inner();
    assert_eq!(
        ReceiptBody::decode(r.body.as_slice())?.outcome,
        ReceiptOutcome::Accepted as i32
    );

    // What AT learnt survives its restart; RO's receipts (new key) verify at AT.
    fed.stop_node("AT").await?;
    fed.start_node("AT").await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let rid = trm_tests::refer(&fed, "AT", "RO").await?;
    trm_tests::referral_with_status(&sp, &rid, w::ReferralStatus::Delivered).await?;
    at_admin = fed.admin("AT", Role::Operator).await?;
    let peers = at_admin
        .list_peers(w::ListPeersRequest::default())
        .await?
        .into_inner()
        .peers;
    assert_eq!(
        peers
            .iter()
            .find(|p| p.node_id == "RO")
            .map(|p| p.signing_keys_pem.len()),
        Some(2)
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_is_checked_whole_before_any_effect_and_answered_entry_by_entry(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let at_public = signing::public_from_pem(&files::read_text(
        &fed.dir().join("AT/keys/signing.pub.pem"),
    )?)?;
    let mut client = as_ro(&fed).await?;
    let at_fp = fed.referrals("AT", Role::FocalPoint).await?;
    let incoming = |mut c: trm_proto::v1::referral_service_client::ReferralServiceClient<
        Channel,
    >| async move {
        Ok::<_, anyhow::Error>(
            c.list_referrals(w::ListReferralsRequest {
                direction: w::Direction::Incoming as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .referrals
            .len(),
        )
    };

    let first = envelope::seal(&ro_key, ro, at, "b1", offer("b1", None));
    client.deliver(first.clone()).await?;
    let second = envelope::seal(&ro_key, ro, at, "b2", offer("b2", None));
    let leaky = envelope::seal(
        &ro_key,
        ro,
        at,
        "b3",
        offer(
            "b3",
            Some(w::Person {
                given_name: "X".into(),
                ..Default::default()
            }),
        ),
    );

    // One bad signature refuses the whole batch, and nothing in it takes effect.
    let mut tampered = second.clone();
    tampered.signature[0] ^= 1;
    let err = client
        .deliver_batch(w::DeliverBatchRequest {
            envelopes: vec![second.clone(), tampered],
            ..Default::default()
        })
        .await
        .expect_err("tampered entry");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(incoming(at_fp.clone()).await?, 1);

    let receipt = client
        .deliver_batch(w::DeliverBatchRequest {
            envelopes: vec![first.clone(), second.clone(), leaky.clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    signing::verify(&at_public, RECEIPT_TAG, &receipt.body, &receipt.signature)?;
    let body = w::BatchReceiptBody::decode(receipt.body.as_slice())?;
    assert_eq!(body.receiver, "AT");
    let outcomes: Vec<i32> = body.entries.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            ReceiptOutcome::Duplicate as i32,
            ReceiptOutcome::Accepted as i32,
            ReceiptOutcome::Rejected as i32
        ]
    );
    for (entry, env) in body.entries.iter().zip([&first, &second, &leaky]) {
        assert_eq!(entry.body_sha256, trm_crypto::sha256(&env.body).to_vec());
        assert_eq!(
            entry.message_id,
            EnvelopeBody::decode(env.body.as_slice())?.message_id
        );
    }
    assert!(body.entries[2].reason.starts_with("policy violation"));
    assert_eq!(incoming(at_fp.clone()).await?, 2);

    // More envelopes than a batch may carry: refused whole, nothing applied.
    let many: Vec<_> = (0..513)
        .map(|i| {
            envelope::seal(
                &ro_key,
                ro,
                at,
                &format!("m{i}"),
                offer(&format!("m{i}"), None),
            )
        })
        .collect();
    let err = client
        .deliver_batch(w::DeliverBatchRequest {
            envelopes: many,
            ..Default::default()
        })
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().starts_with("oversize"), "{}", err.message());
    assert_eq!(incoming(at_fp.clone()).await?, 2);
    fed.stop().await?;
    Ok(())
}

/// A client of AT's federation port presenting NG's real federation certificate.
async fn as_ng(fed: &TestFederation) -> anyhow::Result<FederationServiceClient<Channel>> {
    let ng = fed.dir().join("NG/tls");
    federation_client(
        fed.node("AT")?.addrs.federation,
        &fed.dir().join("AT/tls/federation-ca.pem"),
        &files::read_text(&ng.join("federation.pem"))?,
        &files::read_text(&ng.join("federation.key"))?,
    )
    .await
}

#[tokio::test]
async fn a_message_id_is_unique_per_sender_and_receipts_kept_by_older_versions_still_count(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let (at, ro, ng): (NodeId, NodeId, NodeId) = ("AT".parse()?, "RO".parse()?, "NG".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let ng_key = SigningIdentity::load(&fed.dir().join("NG/keys/signing.pem"))?;
    let (mut from_ro, mut from_ng) = (as_ro(&fed).await?, as_ng(&fed).await?);
    let outcome = |r: &w::SignedReceipt| -> anyhow::Result<i32> {
        Ok(ReceiptBody::decode(r.body.as_slice())?.outcome)
    };
    let now = time::OffsetDateTime::now_utc();
    let shared_id = uuid::Uuid::now_v7().to_string();
    let seal = |key: &SigningIdentity, sender: NodeId, case_ref: &str, created_at| {
        envelope::seal_with_id(
            key,
            sender,
            at,
            case_ref,
            offer(case_ref, None),
            &shared_id,
            created_at,
        )
    };

    // RO's referral, then NG's under the same message id: each is a message of its own.
    let ro_env = seal(&ro_key, ro, "ro-ref", now);
    let ro_receipt = from_ro.deliver(ro_env.clone()).await?.into_inner();
    assert_eq!(outcome(&ro_receipt)?, ReceiptOutcome::Accepted as i32);
    let ng_env = seal(&ng_key, ng, "ng-ref", now);
    let ng_receipt = from_ng.deliver(ng_env.clone()).await?.into_inner();
    assert_eq!(
        ReceiptBody::decode(ng_receipt.body.as_slice())?.body_sha256,
        trm_crypto::sha256(&ng_env.body).to_vec(),
        "NG's receipt is for NG's message, not RO's"
    );
    assert_eq!(outcome(&ng_receipt)?, ReceiptOutcome::Accepted as i32);
    let incoming = fed
        .referrals("AT", Role::FocalPoint)
        .await?
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals;
    let mut origins: Vec<String> = incoming.iter().map(|r| r.origin.clone()).collect();
    origins.sort();
    assert_eq!(origins, ["NG", "RO"], "both referrals arrived");

    // RO's message again, as sent and as an operator's retry re-seals it (a fresh
    // created_at): a duplicate, answered with the original receipt.
    for again in [
        ro_env,
        seal(&ro_key, ro, "ro-ref", now + time::Duration::seconds(1)),
    ] {
        let receipt = from_ro.deliver(again).await?.into_inner();
        assert_eq!(receipt.body, ro_receipt.body, "the original receipt");
    }

    // A receipt an older version kept by message id alone (it did not say whose) still
    // makes RO's message a duplicate, however re-sealed, and is not NG's.
    let old_id = uuid::Uuid::now_v7();
    let seal_old = |key: &SigningIdentity, sender: NodeId, case_ref: &str, created_at| {
        envelope::seal_with_id(
            key,
            sender,
            at,
            case_ref,
            offer(case_ref, None),
            &old_id.to_string(),
            created_at,
        )
    };
    let first = seal_old(&ro_key, ro, "ro-old", now);
    let kept = from_ro.deliver(first.clone()).await?.into_inner();
    let received_at = ReceiptBody::decode(kept.body.as_slice())?.received_at;
    drop((from_ro, from_ng));
    fed.stop_node("AT").await?;
    let db = trm_tests::RawDb::open(&fed.config(at)?.node.data_dir)?;
    let mut current = b"ib/".to_vec();
    current.extend_from_slice(old_id.as_bytes());
    current.extend_from_slice(b"RO");
    db.remove(&current)?;
    let mut legacy = b"i/".to_vec();
    legacy.extend_from_slice(old_id.as_bytes());
    db.put_json(
        &legacy,
        &trm_store::repo::outbox::InboxEntry {
            receipt_body: kept.body.clone(),
            received_at: trm_proto::convert::from_ts("received_at", received_at.as_ref())?,
        },
    )?;
    db.close()?;
    fed.start_node("AT").await?;
    let (mut from_ro, mut from_ng) = (as_ro(&fed).await?, as_ng(&fed).await?);
    for again in [
        first,
        seal_old(&ro_key, ro, "ro-old", now + time::Duration::seconds(1)),
    ] {
        let receipt = from_ro.deliver(again).await?.into_inner();
        assert_eq!(receipt.body, kept.body, "the receipt an older version kept");
    }
    let ng_env = seal_old(&ng_key, ng, "ng-old", now);
    let receipt = from_ng.deliver(ng_env.clone()).await?.into_inner();
    let body = ReceiptBody::decode(receipt.body.as_slice())?;
    assert_eq!(body.body_sha256, trm_crypto::sha256(&ng_env.body).to_vec());
    assert_eq!(body.outcome, ReceiptOutcome::Accepted as i32);
    fed.stop().await?;
    Ok(())
}

/// A peer on another policy version is told which one this node runs; what it wrote in the
/// field is echoed only when it is a short version name, so a peer cannot fill the receipt,
/// the audit log and the logs with text of its own.
#[tokio::test]
async fn an_envelope_of_another_policy_version_is_refused_without_echoing_a_long_field(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let mut client = as_ro(&fed).await?;
    // An offer signed by RO whose body names `version`.
    let versioned = |version: &str| {
        let sealed = envelope::seal(&ro_key, "RO".parse()?, "AT".parse()?, "r", offer("r", None));
        let mut body = EnvelopeBody::decode(sealed.body.as_slice())?;
        body.policy_version = version.to_owned();
        let body = body.encode_to_vec();
        anyhow::Ok(w::SignedEnvelope {
            signature: ro_key.sign(trm_crypto::signing::ENVELOPE_TAG, &body),
            key_id: ro_key.key_id().to_owned(),
            body,
        })
    };
    let reason = |receipt: w::SignedReceipt| {
        let body = ReceiptBody::decode(receipt.body.as_slice())?;
        assert_eq!(body.outcome, ReceiptOutcome::Rejected as i32);
        anyhow::Ok(body.reason)
    };
    let old = reason(
        client
            .deliver(versioned("trm-policy-1")?)
            .await?
            .into_inner(),
    )?;
    assert!(
        old.contains("trm-policy-1") && old.contains(trm_core::policy::POLICY_VERSION),
        "{old}"
    );
    let long = reason(
        client
            .deliver(versioned(&"x".repeat(3_000_000))?)
            .await?
            .into_inner(),
    )?;
    assert!(
        long.len() < 200,
        "the reason echoes the field: {} bytes",
        long.len()
    );
    assert!(long.contains(trm_core::policy::POLICY_VERSION), "{long}");
    let audited = fed.audited("AT", "envelope.reject").await?;
    assert_eq!(audited.len(), 2);
    for entry in &audited {
        assert!(
            entry.detail.len() < 300,
            "audited {} bytes",
            entry.detail.len()
        );
    }
    fed.stop().await?;
    Ok(())
}

/// A method a client makes up is counted as `other`, never as a label of its own: a path
/// with quotes would break the page every scrape reads, and each new one would grow it.
#[tokio::test]
async fn a_made_up_method_is_counted_as_other_and_the_metrics_page_stays_well_formed(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let channel = fed.channel("AT", Role::ServiceProvider, false).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in [
        "/trm.v1.X\",code=\"OK\"}9/Y",
        "/trm.v1.ReferralService/NoSuchMethod",
    ] {
        grpc.ready().await?;
        let answer = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                tonic::codegen::http::uri::PathAndQuery::try_from(path)?,
                tonic_prost::ProstCodec::default(),
            )
            .await;
        assert!(answer.is_err(), "{path} answered");
    }
    let page = trm_tests::metrics(fed.node("AT")?.addrs.metrics).await?;
    let body = page.split("\r\n\r\n").nth(1).unwrap_or_default();
    trm_tests::check_metrics(body)?;
    assert!(
        !body.contains("trm.v1.X") && !body.contains("NoSuchMethod"),
        "{body}"
    );
    assert!(
        body.contains("trm_grpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 2"),
        "{body}"
    );
    fed.stop().await?;
    Ok(())
}

/// A message the receiver refused, sealed again by its sender (an operator's retry from the
/// dead letters once both run the same version), is judged again: it changed nothing when
/// refused, so taking it now applies it once. The same bytes sent again keep their refusal.
#[tokio::test]
async fn a_refused_message_sealed_again_is_judged_again() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let mut client = as_ro(&fed).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let payload = offer("r", None);
    let now = time::OffsetDateTime::now_utc();
    // First sealed by a sender on the older policy version.
    let first = {
        let sealed = envelope::seal_with_id(&ro_key, ro, at, "r", payload.clone(), &id, now);
        let mut body = EnvelopeBody::decode(sealed.body.as_slice())?;
        body.policy_version = "trm-policy-1".into();
        let body = body.encode_to_vec();
        w::SignedEnvelope {
            signature: ro_key.sign(trm_crypto::signing::ENVELOPE_TAG, &body),
            key_id: ro_key.key_id().to_owned(),
            body,
        }
    };
    let outcome = |r: w::SignedReceipt| anyhow::Ok(ReceiptBody::decode(r.body.as_slice())?.outcome);
    let rejected = ReceiptOutcome::Rejected as i32;
    assert_eq!(
        outcome(client.deliver(first.clone()).await?.into_inner())?,
        rejected
    );
    assert_eq!(
        outcome(client.deliver(first).await?.into_inner())?,
        rejected,
        "the same bytes keep their refusal"
    );
    let again = envelope::seal_with_id(
        &ro_key,
        ro,
        at,
        "r",
        payload,
        &id,
        now + time::Duration::seconds(1),
    );
    let accepted = client.deliver(again.clone()).await?.into_inner();
    assert_eq!(outcome(accepted.clone())?, ReceiptOutcome::Accepted as i32);
    // Sent once more: its original receipt, nothing applied twice.
    assert_eq!(
        client.deliver(again).await?.into_inner().body,
        accepted.body,
        "applied once"
    );
    fed.stop().await?;
    Ok(())
}
