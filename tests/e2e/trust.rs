//! Trust that holds against a hostile peer, a stolen key and a stolen certificate. Every
//! node has a federation CA of its own, as members of a real federation do.

use prost::Message;
use tonic::{transport::Channel, Code};
use trm_core::ids::{NodeId, Role};
use trm_crypto::{
    files,
    pki::Authority,
    signing::{SigningIdentity, RECEIPT_TAG},
};
use trm_federation::envelope;
use trm_proto::v1::{
    self as w, envelope_body::Payload, federation_service_client::FederationServiceClient,
    BatchReceiptBody, ReceiptBody, ReceiptOutcome,
};
use trm_tests::{eventually, refer, requests, TestFederation};

use crate::transport::{as_ro, federation_client, offer};

/// Returns the outcome and reason of a single-envelope receipt.
fn outcome_of(receipt: &w::SignedReceipt) -> anyhow::Result<(i32, String)> {
    let body = ReceiptBody::decode(receipt.body.as_slice())?;
    Ok((body.outcome, body.reason))
}

async fn incoming_referrals(fed: &TestFederation, node: &str) -> anyhow::Result<Vec<w::Referral>> {
    Ok(fed
        .referrals(node, Role::FocalPoint)
        .await?
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals)
}

async fn dead_letters(fed: &TestFederation, node: &str) -> anyhow::Result<Vec<w::OutboxEntry>> {
    Ok(fed
        .admin(node, Role::Operator)
        .await?
        .list_outbox(w::ListOutboxRequest {
            dead_letters_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries)
}

/// Creates a case at AT with a referral consent to RO and submits the referral; returns
/// (case id, consent id, referral id).
async fn referred(fed: &TestFederation) -> anyhow::Result<(String, String, String)> {
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case = sp
        .create_case(requests::case("Queued", 5))
        .await?
        .into_inner();
    let consent = sp
        .record_consent(requests::consent(
            &case.case_id,
            &[w::Purpose::ReferralAssistance],
            &["RO"],
            &[],
        ))
        .await?
        .into_inner();
    let referral = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((case.case_id, consent.consent_id, referral.referral_id))
}

#[tokio::test]
async fn a_referral_queued_under_a_withdrawn_consent_is_destroyed_and_never_sent(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    fed.stop_node("RO").await?;
    let (case_id, consent_id, referral_id) = referred(&fed).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.withdraw_consent(w::WithdrawConsentRequest {
        case_id,
        consent_id,
        ..Default::default()
    })
    .await?;
    fed.start_node("RO").await?;
    eventually("RO's erasure confirmation", || {
        let mut sp = sp.clone();
        let id = referral_id.clone();
        async move {
            let r = sp
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            Ok(r.erasure_confirmed.then_some(()))
        }
    })
    .await?;
    assert!(
        incoming_referrals(&fed, "RO").await?.is_empty(),
        "the queued referral never reached RO, not even as a tombstone"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_of_an_erased_case_is_destroyed_and_cannot_be_retried() -> anyhow::Result<()>
{
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    // RO refuses AT for good, so AT's referral becomes a dead letter.
    fed.admin("RO", Role::Operator)
        .await?
        .remove_peer(w::RemovePeerRequest {
            node_id: "AT".into(),
            ..Default::default()
        })
        .await?;
    let (case_id, _, _) = referred(&fed).await?;
    let dead = eventually("the dead letter", || async {
        let d = dead_letters(&fed, "AT").await?;
        Ok((!d.is_empty()).then_some(d))
    })
    .await?;
    fed.referrals("AT", Role::ServiceProvider)
        .await?
        .erase_case(w::EraseCaseRequest {
            case_id,
            reason: "victim asked".into(),
            ..Default::default()
        })
        .await?;
    let err = fed
        .admin("AT", Role::Operator)
        .await?
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead[0].message_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("an erased case's dead letter is never sent");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().starts_with("consent"), "{}", err.message());
    fed.stop().await?;
    Ok(())
}

/// Rotates RO's signing key and waits until AT lists both of RO's keys.
async fn rotate_ro(fed: &TestFederation) -> anyhow::Result<(SigningIdentity, SigningIdentity)> {
    let old = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    fed.admin("RO", Role::Operator)
        .await?
        .rotate_signing_key(w::RotateSigningKeyRequest {
            overlap_days: 7,
            ..Default::default()
        })
        .await?;
    let new = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    eventually("AT to learn RO's new key", || async {
        let peers = fed
            .admin("AT", Role::Operator)
            .await?
            .list_peers(w::ListPeersRequest::default())
            .await?
            .into_inner()
            .peers;
        Ok(peers
            .iter()
            .any(|p| p.node_id == "RO" && p.signing_keys.len() == 2)
            .then_some(()))
    })
    .await?;
    Ok((old, new))
}

#[tokio::test]
async fn a_retired_key_cannot_announce_a_successor_or_end_the_real_one() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let (old, new) = rotate_ro(&fed).await?;
    // Someone holding RO's retired key announces a key of their own, backdated into the
    // retired key's window.
    let forged = SigningIdentity::generate();
    let backdated = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let announcement = Payload::KeyAnnouncement(w::KeyAnnouncement {
        key: Some(w::SigningKey {
            key_id: forged.key_id().to_owned(),
            public_key: forged.public().as_bytes().to_vec(),
            valid_from: Some(trm_proto::convert::ts(backdated)),
            valid_until: None,
        }),
    });
    let env = envelope::seal_with_id(
        &old,
        ro,
        at,
        "",
        announcement,
        &uuid::Uuid::now_v7().to_string(),
        backdated,
    );
    let mut client = as_ro(&fed).await?;
    let (outcome, reason) = outcome_of(&client.deliver(env).await?.into_inner())?;
    assert_eq!(outcome, ReceiptOutcome::Rejected as i32, "{reason}");
    assert!(reason.contains("newest key"), "{reason}");
    // RO's real new key still signs; the forged one is unknown.
    let fresh = envelope::seal(&new, ro, at, "n1", offer("n1", None));
    let (outcome, _) = outcome_of(&client.deliver(fresh).await?.into_inner())?;
    assert_eq!(outcome, ReceiptOutcome::Accepted as i32);
    let err = client
        .deliver(envelope::seal(&forged, ro, at, "n2", offer("n2", None)))
        .await
        .expect_err("forged key");
    assert_eq!(err.code(), Code::Unauthenticated);
    fed.stop().await?;
    Ok(())
}

/// A federation client of `node`'s port presenting `cert` (trusting `node`'s own CA).
async fn federation_as(
    fed: &TestFederation,
    node: &str,
    cert: &trm_crypto::pki::CertifiedKey,
) -> anyhow::Result<FederationServiceClient<Channel>> {
    federation_client(
        fed.node(node)?.addrs.federation,
        &fed.dir().join(node).join("tls/federation-ca.pem"),
        &cert.cert_pem,
        &cert.key_pem,
    )
    .await
}

fn ca_of(fed: &TestFederation, node: &str) -> anyhow::Result<Authority> {
    let tls = fed.dir().join(node).join("tls");
    Ok(Authority::load(
        &files::read_text(&tls.join("federation-ca.pem"))?,
        &files::read_text(&tls.join("federation-ca.key"))?,
    )?)
}

#[tokio::test]
async fn one_members_ca_cannot_certify_another_member() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let (at, ng): (NodeId, NodeId) = ("AT".parse()?, "NG".parse()?);
    let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    // Control: NG's own certificate is accepted as NG.
    let genuine = trm_crypto::pki::CertifiedKey {
        cert_pem: files::read_text(&fed.dir().join("NG/tls/federation.pem"))?,
        key_pem: files::read_text(&fed.dir().join("NG/tls/federation.key"))?,
    };
    federation_as(&fed, "AT", &genuine)
        .await?
        .get_node_info(w::GetNodeInfoRequest {})
        .await?;
    // RO's CA, trusted by AT for RO, certifies "NG".
    let forged = ca_of(&fed, "RO")?.issue_node(ng, &hosts)?;
    let mut client = federation_as(&fed, "AT", &forged).await?;
    assert!(
        client
            .get_node_info(w::GetNodeInfoRequest {})
            .await
            .is_err(),
        "a certificate from RO's CA is not NG's"
    );
    let ng_key = SigningIdentity::load(&fed.dir().join("NG/keys/signing.pem"))?;
    assert!(client
        .deliver(envelope::seal(&ng_key, ng, at, "x", offer("x", None)))
        .await
        .is_err());
    assert!(incoming_referrals(&fed, "AT").await?.is_empty());
    fed.stop().await?;
    Ok(())
}

/// The entry that trusts `node` (its CA and signing key, from its files) at `endpoint`.
pub(crate) fn peer_entry(
    fed: &TestFederation,
    node: &str,
    endpoint: std::net::SocketAddr,
) -> w::Peer {
    let nd = fed.dir().join(node);
    w::Peer {
        node_id: node.into(),
        endpoint: endpoint.to_string(),
        tls_ca_pem: files::read_text(&nd.join("tls/federation-ca.pem")).unwrap_or_default(),
        signing_keys_pem: vec![
            files::read_text(&nd.join("keys/signing.pub.pem")).unwrap_or_default()
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_peer_added_at_run_time_is_trusted_without_a_restart() -> anyhow::Result<()> {
    let fed = TestFederation::builder()
        .nodes(&["AT", "NG"])
        .not_peers("AT", "NG")
        .start()
        .await?;
    let (at_addr, ng_addr) = (
        fed.node("AT")?.addrs.federation,
        fed.node("NG")?.addrs.federation,
    );
    fed.admin("AT", Role::Operator)
        .await?
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(peer_entry(&fed, "NG", ng_addr)),
            ..Default::default()
        })
        .await?;
    fed.admin("NG", Role::Operator)
        .await?
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(peer_entry(&fed, "AT", at_addr)),
            ..Default::default()
        })
        .await?;
    refer(&fed, "NG", "AT").await?;
    eventually("NG's referral at AT", || async {
        Ok((incoming_referrals(&fed, "AT").await?.len() == 1).then_some(()))
    })
    .await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_peer_cannot_reach_a_local_record_through_an_id_it_chose() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at_returns = crate::returns::returns(&fed, "AT", Role::ServiceProvider).await?;
    let case_id = crate::returns::ready_case(&mut sp, &mut at_returns, &[]).await?;
    let plan = at_returns
        .propose_return(crate::returns::propose(&case_id))
        .await?
        .into_inner();
    let return_id = plan.return_id.clone();
    let case_ref = plan
        .disclosed
        .as_ref()
        .map(|d| d.case_ref.clone())
        .unwrap_or_default();
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let mut client = as_ro(&fed).await?;
    // RO, which received return plan R, offers a "referral" with id R, then asks AT to
    // erase R.
    let hostile_offer = Payload::ReferralOffer(w::ReferralOffer {
        referral_id: return_id.clone(),
        disclosed: Some(w::DisclosedCase {
            case_ref: case_ref.clone(),
            age_band: w::AgeBand::AgeBand1820 as i32,
            ..Default::default()
        }),
        requested_services: vec![w::NeedKind::Shelter as i32],
    });
    let (outcome, reason) = outcome_of(
        &client
            .deliver(envelope::seal(&ro_key, ro, at, &case_ref, hostile_offer))
            .await?
            .into_inner(),
    )?;
    assert_eq!(outcome, ReceiptOutcome::Rejected as i32, "{reason}");
    let erase = Payload::ErasureRequest(w::ErasureRequest {
        subject_id: return_id.clone(),
        reason: "withdrawn".into(),
    });
    let (outcome, reason) = outcome_of(
        &client
            .deliver(envelope::seal(&ro_key, ro, at, &case_ref, erase))
            .await?
            .into_inner(),
    )?;
    assert_eq!(outcome, ReceiptOutcome::Rejected as i32, "{reason}");
    let still = at_returns
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: return_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(still.return_id, return_id);
    assert!(
        still
            .disclosed
            .and_then(|d| d.identity)
            .is_some_and(|i| !i.given_name.is_empty()),
        "AT's own return plan is intact"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_duplicate_in_a_batch_carries_the_original_rejection() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let unknown = Payload::ReferralUpdate(w::ReferralUpdate {
        referral_id: uuid::Uuid::now_v7().to_string(),
        status: w::ReferralStatus::Accepted as i32,
        reason: String::new(),
        disclosed: None,
    });
    let env = envelope::seal(&ro_key, ro, at, "ref", unknown);
    let mut client = as_ro(&fed).await?;
    let (outcome, reason) = outcome_of(&client.deliver(env.clone()).await?.into_inner())?;
    assert_eq!(outcome, ReceiptOutcome::Rejected as i32);
    let receipt = client
        .deliver_batch(w::DeliverBatchRequest {
            envelopes: vec![env],
            ..Default::default()
        })
        .await?
        .into_inner();
    let body = BatchReceiptBody::decode(receipt.body.as_slice())?;
    assert_eq!(body.entries.len(), 1);
    let entry = &body.entries[0];
    assert_eq!(
        entry.outcome,
        ReceiptOutcome::Rejected as i32,
        "the duplicate keeps its rejection"
    );
    assert!(entry.duplicate);
    assert_eq!(entry.reason, reason);
    trm_crypto::signing::verify(
        &SigningIdentity::load(&fed.dir().join("AT/keys/signing.pem"))?.public(),
        RECEIPT_TAG,
        &receipt.body,
        &receipt.signature,
    )?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_directory_keeps_key_windows_through_a_list_and_upsert() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let (old, new) = rotate_ro(&fed).await?;
    let mut at_admin = fed.admin("AT", Role::Operator).await?;
    let listed = at_admin
        .list_peers(w::ListPeersRequest::default())
        .await?
        .into_inner()
        .peers;
    let ro_entry = listed
        .iter()
        .find(|p| p.node_id == "RO")
        .cloned()
        .expect("RO listed");
    let old_listed = ro_entry
        .signing_keys
        .iter()
        .find(|k| k.key_id == old.key_id())
        .expect("old key listed with its id");
    let new_listed = ro_entry
        .signing_keys
        .iter()
        .find(|k| k.key_id == new.key_id())
        .expect("new key listed with its id");
    assert!(
        old_listed.valid_until.is_some(),
        "the old key's window ended"
    );
    assert_eq!(new_listed.valid_from, old_listed.valid_until);
    // A list-then-upsert round trip revives nothing.
    at_admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(ro_entry.clone()),
            ..Default::default()
        })
        .await?;
    let mut client = as_ro(&fed).await?;
    let err = client
        .deliver(envelope::seal(&old, ro, at, "r", offer("r", None)))
        .await
        .expect_err("the retired key stays retired");
    assert!(
        err.message().starts_with("retired_key"),
        "{}",
        err.message()
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_key_announcement_never_overrides_the_configuration() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let (_, new) = rotate_ro(&fed).await?;
    // The operator pins RO's certificate after the announcement was learnt (changing only
    // the pin, as `trmctl peer update --pin` does), then restarts the node.
    let mut cli = trmctl::admin::connect(&fed.config_path(at), None, None).await?;
    trmctl::admin::update_peer(
        &mut cli,
        &trmctl::admin::PeerChange {
            node_id: "RO".into(),
            pin: Some("0".repeat(64)),
            ..Default::default()
        },
    )
    .await?;
    fed.stop_node("AT").await?;
    fed.start_node("AT").await?;
    let err = as_ro(&fed)
        .await?
        .deliver(envelope::seal(&new, ro, at, "p", offer("p", None)))
        .await
        .expect_err("the configured pin refuses RO's certificate");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("pinned"), "{}", err.message());
    // The announced key is still known.
    let peers = fed
        .admin("AT", Role::Operator)
        .await?
        .list_peers(w::ListPeersRequest::default())
        .await?
        .into_inner()
        .peers;
    assert!(peers
        .iter()
        .any(|p| p.node_id == "RO" && p.signing_keys.iter().any(|k| k.key_id == new.key_id())));
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_rotation_that_cannot_complete_changes_nothing() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let before = SigningIdentity::load(&fed.dir().join("AT/keys/signing.pem"))?;
    let err = fed
        .admin("AT", Role::Operator)
        .await?
        .rotate_signing_key(w::RotateSigningKeyRequest {
            overlap_days: u32::MAX,
            ..Default::default()
        })
        .await
        .expect_err("an overlap of millions of years");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("overlap_days"),
        "{}",
        err.message()
    );
    let after = SigningIdentity::load(&fed.dir().join("AT/keys/signing.pem"))?;
    assert_eq!(after.key_id(), before.key_id(), "the key file is unchanged");
    // AT still signs with the key RO knows.
    let id = refer(&fed, "AT", "RO").await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    trm_tests::referral_with_status(&sp, &id, w::ReferralStatus::Delivered).await?;
    fed.stop().await?;
    Ok(())
}

fn serial_of(pem: &str) -> anyhow::Result<String> {
    trm_crypto::pki::serial_hex(&trm_crypto::pki::first_der(pem)?)
        .ok_or_else(|| anyhow::anyhow!("no serial"))
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_at_once_and_after_a_restart() -> anyhow::Result<()>
{
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let sp_pem = files::read_text(&fed.dir().join("AT/clients/service_provider.pem"))?;
    let serial = serial_of(&sp_pem)?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.list_cases(w::ListCasesRequest::default()).await?;
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let err = admin
        .revoke_client_certificate(w::RevokeClientCertificateRequest {
            serial_hex: format!("0{serial}"),
            ..Default::default()
        })
        .await
        .expect_err("leading zero");
    assert!(err.message().starts_with("serial_hex"), "{}", err.message());
    let audited = admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner()
        .entries_checked;
    admin
        .revoke_client_certificate(w::RevokeClientCertificateRequest {
            serial_hex: serial.clone(),
            ..Default::default()
        })
        .await?;
    // The open connection is refused at its next request.
    let err = sp
        .list_cases(w::ListCasesRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Others are not.
    fed.referrals("AT", Role::FocalPoint)
        .await?
        .list_cases(w::ListCasesRequest::default())
        .await?;
    let listed = admin
        .list_revoked_client_certificates(w::ListRevokedClientCertificatesRequest::default())
        .await?
        .into_inner()
        .certificates;
    assert_eq!(
        listed
            .iter()
            .map(|c| c.serial_hex.as_str())
            .collect::<Vec<_>>(),
        vec![serial.as_str()]
    );
    let export = admin
        .export_audit(w::ExportAuditRequest::default())
        .await?
        .into_inner();
    let revocations: Vec<_> = export
        .entries
        .iter()
        .filter(|e| e.seq > audited && e.action == "client.revoke")
        .collect();
    assert_eq!(revocations.len(), 1, "the revocation is audited");
    assert_eq!(revocations[0].subject, serial);
    // The operator CLI's way: by certificate file.
    let ja = fed.dir().join("AT/clients/judicial_authority.pem");
    let mut cli = trmctl::admin::connect(&fed.config_path("AT".parse()?), None, None).await?;
    let ja_serial = trmctl::admin::serial_of_pem(&ja)?;
    trmctl::admin::revoke(&mut cli, &ja_serial, "").await?;
    let listed: Vec<String> = trmctl::admin::revoked(&mut cli)
        .await?
        .into_iter()
        .map(|r| r.serial_hex)
        .collect();
    assert!(listed.contains(&ja_serial) && listed.contains(&serial));
    // After a restart, a new connection is refused too.
    fed.stop_node("AT").await?;
    fed.start_node("AT").await?;
    let refused = match fed.referrals("AT", Role::ServiceProvider).await {
        Err(_) => true,
        Ok(mut c) => c.list_cases(w::ListCasesRequest::default()).await.is_err(),
    };
    assert!(refused, "the revocation survives a restart");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn client_certificates_that_are_expired_early_uri_less_or_ambiguous_are_refused(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT"]).await?;
    let nd = fed.dir().join("AT");
    let client_ca = Authority::load(
        &files::read_text(&nd.join("tls/client-ca.pem"))?,
        &files::read_text(&nd.join("tls/client-ca.key"))?,
    )?;
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let sp_uri = "trm://client/service_provider/sp1".to_owned();
    let issued = client_ca.issue_client(Role::ServiceProvider, &"sp1".parse()?)?;
    let validity = trm_crypto::pki::not_after(&trm_crypto::pki::first_der(&issued.cert_pem)?)
        .expect("validity");
    assert_eq!(
        (validity - now).whole_days(),
        397 - 1,
        "client certificates are valid for 397 days by default"
    );
    let cases = vec![
        ("control", issued),
        (
            "expired",
            client_ca.issue_client_raw(
                "e",
                std::slice::from_ref(&sp_uri),
                now - 3 * day,
                now - day,
            )?,
        ),
        (
            "not yet valid",
            client_ca.issue_client_raw(
                "n",
                std::slice::from_ref(&sp_uri),
                now + day,
                now + 3 * day,
            )?,
        ),
        (
            "without a URI",
            client_ca.issue_client_raw("u", &[], now - day, now + day)?,
        ),
        (
            "with two URIs",
            client_ca.issue_client_raw(
                "m",
                &[sp_uri.clone(), "trm://client/focal_point/nfp".into()],
                now - day,
                now + day,
            )?,
        ),
        (
            "a federation certificate",
            trm_crypto::pki::CertifiedKey {
                cert_pem: files::read_text(&nd.join("tls/federation.pem"))?,
                key_pem: files::read_text(&nd.join("tls/federation.key"))?,
            },
        ),
    ];
    for (what, cert) in cases {
        let prefix = fed.dir().join(what.replace(' ', "-"));
        let (pem, key) = (prefix.with_extension("pem"), prefix.with_extension("key"));
        files::write_public(&pem, cert.cert_pem.as_bytes())?;
        files::write_secret(&key, cert.key_pem.as_bytes())?;
        let result = match trm_tests::connect(
            fed.node("AT")?.addrs.services,
            &nd.join("services-ca.pem"),
            &pem,
            &key,
        )
        .await
        {
            Err(_) => Err(Code::Unavailable),
            Ok(ch) => trm_proto::v1::referral_service_client::ReferralServiceClient::new(ch)
                .list_cases(w::ListCasesRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.code()),
        };
        if what == "control" {
            assert_eq!(result, Ok(()), "{what}");
        } else {
            assert!(
                matches!(
                    result,
                    Err(Code::Unavailable | Code::Unauthenticated | Code::Unknown)
                ),
                "{what}: {result:?}"
            );
        }
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn service_providers_cannot_touch_another_organisations_returns_or_referrals(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp1 = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut sp1_returns = crate::returns::returns(&fed, "AT", Role::ServiceProvider).await?;
    let case_id = crate::returns::ready_case(&mut sp1, &mut sp1_returns, &[]).await?;
    let plan = sp1_returns
        .propose_return(crate::returns::propose(&case_id))
        .await?
        .into_inner();
    let referral_id = refer(&fed, "AT", "RO").await?;
    // A second organisation of AT.
    let nd = fed.dir().join("AT");
    let ca = Authority::load(
        &files::read_text(&nd.join("tls/client-ca.pem"))?,
        &files::read_text(&nd.join("tls/client-ca.key"))?,
    )?;
    let sp2 = ca.issue_client(Role::ServiceProvider, &"sp2".parse()?)?;
    let (pem, key) = (fed.dir().join("sp2.pem"), fed.dir().join("sp2.key"));
    files::write_public(&pem, sp2.cert_pem.as_bytes())?;
    files::write_secret(&key, sp2.key_pem.as_bytes())?;
    let ch = trm_tests::connect(
        fed.node("AT")?.addrs.services,
        &nd.join("services-ca.pem"),
        &pem,
        &key,
    )
    .await?;
    let mut sp2_returns =
        trm_proto::v1::return_planning_service_client::ReturnPlanningServiceClient::new(ch.clone());
    let mut sp2_referrals = trm_proto::v1::referral_service_client::ReferralServiceClient::new(ch);
    let err = sp2_returns
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: plan.return_id.clone(),
        })
        .await
        .expect_err("another organisation's return plan");
    assert_eq!(err.code(), Code::PermissionDenied);
    let listed = sp2_returns
        .list_return_plans(w::ListReturnPlansRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .return_plans;
    assert!(listed.is_empty());
    let err = sp2_returns
        .halt_return(w::HaltReturnRequest {
            return_id: plan.return_id.clone(),
            reason: "not mine".into(),
            ..Default::default()
        })
        .await
        .expect_err("halting another organisation's plan");
    assert_eq!(err.code(), Code::PermissionDenied);
    for (what, result) in [
        (
            "close",
            sp2_referrals
                .close_referral(w::CloseReferralRequest {
                    referral_id: referral_id.clone(),
                    reason: "x".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "withdraw",
            sp2_referrals
                .withdraw_referral(w::WithdrawReferralRequest {
                    referral_id: referral_id.clone(),
                    reason: "x".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
    ] {
        let err = result.expect_err(what);
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    }
    let r = sp1
        .get_referral(w::GetReferralRequest { referral_id })
        .await?
        .into_inner();
    assert_ne!(r.status, w::ReferralStatus::Withdrawn as i32);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn connections_and_requests_are_bounded() -> anyhow::Result<()> {
    let fed = TestFederation::builder()
        .nodes(&["AT", "RO"])
        .config(|_, cfg| {
            cfg.limits.handshake_timeout_secs = 1;
            cfg.limits.client_requests_per_second = 20;
            cfg.limits.client_burst = 20;
        })
        .start()
        .await?;
    // A connection that never starts its TLS handshake is closed.
    {
        use tokio::io::AsyncReadExt;
        let mut tcp = tokio::net::TcpStream::connect(fed.node("AT")?.addrs.services).await?;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("closed within the handshake deadline");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // One client flooding gets RESOURCE_EXHAUSTED; another is served.
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let floods = (0..120).map(|_| {
        let mut c = sp.clone();
        async move { c.list_cases(w::ListCasesRequest::default()).await }
    });
    let results = futures_join(floods).await;
    let exhausted = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert!(exhausted > 0, "the flood is limited");
    assert!(
        results.iter().any(|r| r.is_ok()),
        "within the rate is served"
    );
    fed.referrals("AT", Role::FocalPoint)
        .await?
        .list_cases(w::ListCasesRequest::default())
        .await?;
    fed.stop().await?;
    Ok(())
}

async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[tokio::test]
async fn lists_come_in_pages_and_lists_inside_records_are_bounded() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            sp.create_case(requests::case(&format!("P{i}"), 1))
                .await?
                .into_inner()
                .case_id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = sp
            .list_cases(w::ListCasesRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        assert!(page.cases.len() <= 2);
        seen.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every case once, in order");
    let err = sp
        .list_cases(w::ListCasesRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .expect_err("negative page size");
    assert!(err.message().starts_with("page_size"), "{}", err.message());
    let big = sp
        .list_cases(w::ListCasesRequest {
            page_size: 100_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(big.cases.len(), 5, "a large page is served at most 100");

    let mut rp = crate::returns::returns(&fed, "AT", Role::ServiceProvider).await?;
    let risk = w::RecordRiskAssessmentRequest {
        case_id: ids[0].clone(),
        level: w::RiskLevel::Low as i32,
        ..Default::default()
    };
    for _ in 0..trm_core::limits::MAX_ITEMS {
        rp.record_risk_assessment(risk.clone()).await?;
    }
    // The 65th is kept (it may be the one that stops a return), the oldest dropped.
    let latest = rp
        .record_risk_assessment(risk)
        .await?
        .into_inner()
        .assessment_id;
    fed.stop_node("AT").await?;
    let store = trm_tests::open_store(&fed, "AT")?;
    let case = trm_core::ids::CaseId::from_uuid(uuid::Uuid::parse_str(&ids[0])?);
    let kept = store.risk_assessments(case)?;
    store.close()?;
    drop(store);
    assert_eq!(kept.len(), trm_core::limits::MAX_ITEMS, "bounded");
    assert_eq!(
        kept.last().map(|a| a.assessment_id.to_string()),
        Some(latest),
        "the latest kept last"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_flood_of_refused_envelopes_is_audited_in_aggregate() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let before = fed
        .admin("AT", Role::Operator)
        .await?
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner()
        .entries_checked;
    let mut client = as_ro(&fed).await?;
    for i in 0..40 {
        let mut env = envelope::seal(&ro_key, ro, at, "f", offer(&format!("f{i}"), None));
        env.signature[0] ^= 1;
        let err = client.deliver(env).await.expect_err("bad signature");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let during = fed
        .admin("AT", Role::Operator)
        .await?
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner()
        .entries_checked;
    assert_eq!(
        during - before,
        u64::from(trm_federation::refusals::EACH),
        "the first refusals are audited one by one, the rest counted"
    );
    // The count is written when the window closes, at the latest on the way out.
    fed.stop_node("AT").await?;
    fed.start_node("AT").await?;
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let export = admin
        .export_audit(w::ExportAuditRequest::default())
        .await?
        .into_inner();
    let aggregate = export
        .entries
        .iter()
        .find(|e| e.action == "envelope.refuse.aggregate")
        .expect("an aggregate entry");
    assert!(
        aggregate.detail.contains("reason=bad_signature count=35"),
        "{}",
        aggregate.detail
    );
    fed.stop().await?;
    Ok(())
}

/// A node that rotates its key while a peer is away still reaches it: what it queued after
/// the rotation is signed with the new key, which the peer learns from the announcement
/// queued before it, so the announcement goes first and alone ends its batch.
#[tokio::test]
async fn envelopes_queued_after_a_rotation_reach_a_peer_that_was_away() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    fed.stop_node("RO").await?;
    fed.admin("AT", Role::Operator)
        .await?
        .rotate_signing_key(w::RotateSigningKeyRequest {
            overlap_days: 7,
            ..Default::default()
        })
        .await?;
    let referral_id = trm_tests::refer(&fed, "AT", "RO").await?;
    fed.start_node("RO").await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    trm_tests::referral_with_status(&sp, &referral_id, w::ReferralStatus::Delivered).await?;
    fed.stop().await?;
    Ok(())
}

/// An operator who adds a peer's new key by hand before its announcement arrives does not
/// keep the old key alive: the announcement, when it comes, still ends the key that signed
/// it (the usual reason to rotate is a stolen key).
#[tokio::test]
async fn an_announcement_of_a_key_added_by_hand_still_retires_the_old_one() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    // RO cannot reach AT for now: its announcement waits in its outbox.
    let mut ro_admin = fed.admin("RO", Role::Operator).await?;
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse()?;
    ro_admin
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(peer_entry(&fed, "AT", nowhere)),
            ..Default::default()
        })
        .await?;
    let old = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    ro_admin
        .rotate_signing_key(w::RotateSigningKeyRequest {
            overlap_days: 7,
            ..Default::default()
        })
        .await?;
    // AT's operator adds RO's new key by hand, the old one kept.
    let mut by_hand = peer_entry(&fed, "RO", fed.node("RO")?.addrs.federation);
    by_hand
        .signing_keys_pem
        .push(trm_crypto::signing::public_to_pem(&old.public())?);
    fed.admin("AT", Role::Operator)
        .await?
        .upsert_peer(w::UpsertPeerRequest {
            peer: Some(by_hand),
            ..Default::default()
        })
        .await?;
    crate::directory::trust_again(&fed, &mut ro_admin, "AT").await?;
    trm_tests::eventually("RO's announcement delivered", || async {
        let left = crate::directory::outbox(&fed, "RO", false).await?;
        Ok(left.is_empty().then_some(()))
    })
    .await?;
    let err = as_ro(&fed)
        .await?
        .deliver(envelope::seal(&old, ro, at, "r", offer("r", None)))
        .await
        .expect_err("the old key is retired");
    assert!(
        err.message().starts_with("retired_key"),
        "{}",
        err.message()
    );
    fed.stop().await?;
    Ok(())
}
