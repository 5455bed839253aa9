//! The peer directory at run time: removing a peer stops traffic both ways; refused
//! envelopes become dead letters that operators see and retry.

use trm_core::ids::Role;
use trm_crypto::files;
use trm_proto::v1 as w;
use trm_tests::{eventually, metrics, requests, TestFederation};

async fn refer(fed: &TestFederation, from: &str, to: &str) -> anyhow::Result<String> {
    let mut sp = fed.referrals(from, Role::ServiceProvider).await?;
    let case = sp.create_case(requests::case("Dir", 5)).await?.into_inner();
    sp.record_consent(requests::consent(
        &case.case_id,
        &[w::Purpose::ReferralAssistance],
        &[to],
        &[],
    ))
    .await?;
    Ok(sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id,
            destination: to.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .referral_id)
}

async fn incoming(fed: &TestFederation, node: &str) -> anyhow::Result<usize> {
    let mut fp = fed.referrals(node, Role::FocalPoint).await?;
    Ok(fp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
        })
        .await?
        .into_inner()
        .referrals
        .len())
}

async fn outbox(
    fed: &TestFederation,
    node: &str,
    dead_only: bool,
) -> anyhow::Result<Vec<w::OutboxEntry>> {
    let mut admin = fed.admin(node, Role::Operator).await?;
    Ok(admin
        .list_outbox(w::ListOutboxRequest {
            peer: String::new(),
            dead_letters_only: dead_only,
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
    ro_admin
        .remove_peer(w::RemovePeerRequest {
            node_id: "AT".into(),
        })
        .await?;
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
            .list_peers(w::ListPeersRequest {})
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
    let at = fed.dir().join("AT");
    ro_admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(w::Peer {
                node_id: "AT".into(),
                endpoint: fed.node("AT")?.addrs.federation.to_string(),
                tls_ca_pem: files::read_text(&at.join("tls/federation-ca.pem"))?,
                signing_keys_pem: vec![files::read_text(&at.join("keys/signing.pub.pem"))?],
            }),
        })
        .await?;
    eventually("RO's referral to reach AT", || async {
        Ok((incoming(&fed, "AT").await? == 1).then_some(()))
    })
    .await?;
    let mut at_admin = fed.admin("AT", Role::Operator).await?;
    at_admin
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead[0].message_id.clone(),
        })
        .await?;
    eventually("AT's retried referral to be delivered", || {
        let mut sp = at_sp.clone();
        let id = at_referral.clone();
        async move {
            let r = sp
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            Ok((r.status == w::ReferralStatus::Delivered as i32).then_some(()))
        }
    })
    .await?;
    assert_eq!(incoming(&fed, "RO").await?, 1);
    assert!(outbox(&fed, "AT", false).await?.is_empty());
    let err = at_admin
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead[0].message_id.clone(),
        })
        .await
        .expect_err("no longer a dead letter");
    assert_eq!(err.code(), tonic::Code::NotFound);
    fed.stop().await?;
    Ok(())
}
