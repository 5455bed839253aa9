//! The peer directory at run time: removing a peer stops traffic both ways; refused
//! envelopes become dead letters that operators see and retry.

use tonic::transport::Channel;
use trm_core::ids::Role;
use trm_crypto::files;
use trm_proto::v1::{self as w, admin_service_client::AdminServiceClient};
use trm_tests::{eventually, metrics, refer, referral_with_status, TestFederation};

async fn incoming(fed: &TestFederation, node: &str) -> anyhow::Result<usize> {
    let mut fp = fed.referrals(node, Role::FocalPoint).await?;
    Ok(fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals
        .len())
}

/// Has the node of `admin` remove `peer` from its directory.
pub(crate) async fn remove_peer(
    admin: &mut AdminServiceClient<Channel>,
    peer: &str,
) -> anyhow::Result<()> {
    admin
        .remove_peer(w::RemovePeerRequest {
            node_id: peer.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Has the node of `admin` trust `peer` again, from the peer's own files.
pub(crate) async fn trust_again(
    fed: &TestFederation,
    admin: &mut AdminServiceClient<Channel>,
    peer: &str,
) -> anyhow::Result<()> {
    let endpoint = fed.node(peer)?.addrs.federation;
    admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(crate::trust::peer_entry(fed, peer, endpoint)),
            ..Default::default()
        })
        .await?;
    Ok(())
}

pub(crate) async fn outbox(
    fed: &TestFederation,
    node: &str,
    dead_only: bool,
) -> anyhow::Result<Vec<w::OutboxEntry>> {
    let mut admin = fed.admin(node, Role::Operator).await?;
    Ok(admin
        .list_outbox(w::ListOutboxRequest {
            peer: String::new(),
            dead_letters_only: dead_only,
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries)
}

#[tokio::test]
async fn a_removed_peer_gets_nothing_and_is_refused_and_dead_letters_can_be_retried(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    // RO -> AT queued while AT is down; then RO removes AT.
    fed.stop_node("AT").await?;
    refer(&fed, "RO", "AT").await?;
    let mut ro_admin = fed.admin("RO", Role::Operator).await?;
    remove_peer(&mut ro_admin, "AT").await?;
    let err = fed
        .referrals("RO", Role::ServiceProvider)
        .await?
        .submit_referral(w::SubmitReferralRequest {
            case_id: uuid::Uuid::now_v7().to_string(),
            destination: "AT".into(),
            ..Default::default()
        })
        .await
        .expect_err("AT is no longer a peer");
    assert!(
        err.message().starts_with("destination"),
        "{}",
        err.message()
    );
    // The removal survives a restart; RO's fresh worker would send at once if it ignored it.
    fed.stop_node("RO").await?;
    fed.start_node("RO").await?;
    fed.start_node("AT").await?;
    let mut ro_admin = fed.admin("RO", Role::Operator).await?;
    assert!(
        ro_admin
            .list_peers(w::ListPeersRequest::default())
            .await?
            .into_inner()
            .peers
            .is_empty(),
        "AT stays removed"
    );

    // AT -> RO: refused with PERMISSION_DENIED, so it becomes a dead letter at AT.
    let at_referral = refer(&fed, "AT", "RO").await?;
    let dead = eventually("the dead letter", || async {
        let d = outbox(&fed, "AT", true).await?;
        Ok((!d.is_empty()).then_some(d))
    })
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].kind.as_str(), dead[0].peer.as_str()),
        ("referral_offer", "RO")
    );
    assert!(dead[0].dead_letter);
    assert!(
        dead[0].last_error.contains("PermissionDenied")
            && dead[0].last_error.contains("removed_peer"),
        "{}",
        dead[0].last_error
    );
    let mut at_sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let r = at_sp
        .get_referral(w::GetReferralRequest {
            referral_id: at_referral.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(r.status, w::ReferralStatus::Sent as i32);
    assert!(
        r.status_reason.starts_with("refused by RO"),
        "{}",
        r.status_reason
    );
    let page = metrics(fed.node("RO")?.addrs.metrics).await?;
    assert!(
        page.contains("trm_envelopes_refused_total{reason=\"removed_peer\"} 1"),
        "{page}"
    );
    // Nothing went from RO to AT either.
    assert_eq!(incoming(&fed, "AT").await?, 0);
    let queued = outbox(&fed, "RO", false).await?;
    assert_eq!(queued.len(), 1);
    assert!(!queued[0].dead_letter);

    // AT is a peer again: RO's queued referral goes out; AT's operator retries the dead letter.
    trust_again(&fed, &mut ro_admin, "AT").await?;
    eventually("RO's referral to reach AT", || async {
        Ok((incoming(&fed, "AT").await? == 1).then_some(()))
    })
    .await?;
    // The focal point has it in its queue until the envelope is sent again.
    let failed = || async {
        let list = fed
            .work("AT", Role::FocalPoint)
            .await?
            .list_tasks(w::ListTasksRequest {
                kinds: vec![w::TaskKind::DeliveryFailed as i32],
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::Ok(
            list.tasks
                .into_iter()
                .map(|t| t.record_id)
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(failed().await?, std::slice::from_ref(&dead[0].message_id));
    let mut at_admin = fed.admin("AT", Role::Operator).await?;
    at_admin
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead[0].message_id.clone(),
            ..Default::default()
        })
        .await?;
    assert!(failed().await?.is_empty(), "sent again: nothing waits");
    referral_with_status(&at_sp, &at_referral, w::ReferralStatus::Delivered).await?;
    assert_eq!(incoming(&fed, "RO").await?, 1);
    assert!(outbox(&fed, "AT", false).await?.is_empty());
    let err = at_admin
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead[0].message_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no longer a dead letter");
    assert_eq!(err.code(), tonic::Code::NotFound);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_pinned_certificate_is_required_both_ways_and_unknown_nodes_are_refused(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let ro = fed.dir().join("RO");
    let ro_cert = trm_crypto::pki::first_der(&files::read_text(&ro.join("tls/federation.pem"))?)?;
    let right_pin = hex::encode(trm_crypto::sha256(&ro_cert));
    let mut at_admin = fed.admin("AT", Role::Operator).await?;
    let pin_ro = |pin: String| w::UpsertPeerRequest {
        peer: Some(w::Peer {
            node_id: "RO".into(),
            endpoint: fed
                .node("RO")
                .map(|n| n.addrs.federation.to_string())
                .unwrap_or_default(),
            tls_ca_pem: files::read_text(&ro.join("tls/federation-ca.pem")).unwrap_or_default(),
            signing_keys_pem: vec![
                files::read_text(&ro.join("keys/signing.pub.pem")).unwrap_or_default()
            ],
            tls_pin_sha256: pin,
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = at_admin
        .upsert_peer(pin_ro("abc".into()))
        .await
        .expect_err("malformed pin");
    assert!(
        err.message().starts_with("peer.tls_pin_sha256"),
        "{}",
        err.message()
    );

    // The right pin: traffic flows both ways.
    at_admin.upsert_peer(pin_ro(right_pin)).await?;
    refer(&fed, "AT", "RO").await?;
    refer(&fed, "RO", "AT").await?;
    eventually("both referrals", || async {
        Ok((incoming(&fed, "RO").await? == 1 && incoming(&fed, "AT").await? == 1).then_some(()))
    })
    .await?;

    // A pin RO's certificate does not match: AT neither sends to RO nor accepts from it.
    at_admin.upsert_peer(pin_ro("0".repeat(64))).await?;
    refer(&fed, "AT", "RO").await?;
    refer(&fed, "RO", "AT").await?;
    let at_queue = eventually("AT's refused attempt", || async {
        let q = outbox(&fed, "AT", false).await?;
        Ok(q.first().filter(|e| e.attempts > 0).cloned())
    })
    .await?;
    assert!(
        at_queue.last_error.contains("pinned"),
        "{}",
        at_queue.last_error
    );
    let ro_queue = eventually("RO's refused attempt", || async {
        let q = outbox(&fed, "RO", false).await?;
        Ok(q.first().filter(|e| e.attempts > 0).cloned())
    })
    .await?;
    assert!(
        ro_queue.last_error.contains("Unauthenticated") && ro_queue.last_error.contains("pinned"),
        "{}",
        ro_queue.last_error
    );
    assert_eq!(
        (incoming(&fed, "RO").await?, incoming(&fed, "AT").await?),
        (1, 1)
    );

    // A node with a certificate from a peer's genuine CA that is not in the directory.
    let ca = trm_crypto::pki::Authority::load(
        &files::read_text(&ro.join("tls/federation-ca.pem"))?,
        &files::read_text(&ro.join("tls/federation-ca.key"))?,
    )?;
    let xx = ca.issue_node("XX".parse()?, &["localhost".into()])?;
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://{}",
        fed.node("AT")?.addrs.federation
    ))?
    .tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(files::read(
                &fed.dir().join("AT/tls/federation-ca.pem"),
            )?))
            .identity(tonic::transport::Identity::from_pem(
                &xx.cert_pem,
                &xx.key_pem,
            ))
            .domain_name("localhost"),
    )?
    .connect()
    .await?;
    let err = trm_proto::v1::federation_service_client::FederationServiceClient::new(channel)
        .get_node_info(w::GetNodeInfoRequest {})
        .await
        .expect_err("XX is no peer");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().starts_with("unknown_peer"),
        "{}",
        err.message()
    );
    fed.stop().await?;
    Ok(())
}

/// A return request the other node refuses leaves the plan REQUESTED at the origin, saying
/// who refused it and why (as a refused referral does), with the envelope in the dead
/// letters for the operator.
#[tokio::test]
async fn a_return_request_the_peer_refuses_says_so_on_the_plan() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = crate::returns::returns(&fed, "AT", Role::ServiceProvider).await?;
    let case_id = crate::returns::ready_case(&mut sp, &mut at, &[]).await?;
    fed.admin("RO", Role::Operator)
        .await?
        .remove_peer(w::RemovePeerRequest {
            node_id: "AT".into(),
            ..Default::default()
        })
        .await?;
    let plan = at
        .propose_return(crate::returns::propose(&case_id))
        .await?
        .into_inner();
    let refused = crate::returns::plan_where(&at, &plan.return_id, "the refusal", |p| {
        !p.status_reason.is_empty()
    })
    .await?;
    assert_eq!(refused.status, w::ReturnStatus::Requested as i32);
    assert!(
        refused.status_reason.starts_with("refused by RO")
            && refused.status_reason.contains("removed_peer"),
        "{}",
        refused.status_reason
    );
    let dead = outbox(&fed, "AT", true).await?;
    assert_eq!(
        dead.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(),
        ["return_request"]
    );
    fed.stop().await?;
    Ok(())
}
