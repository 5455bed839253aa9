//! Legal remedies across two nodes: compensation claims filed at AT and heard in RO (or at
//! home), and victim-status attestations RO's judicial authority asks of AT.

use prost::Message;
use tonic::{transport::Channel, Code};
use trm_core::ids::{NodeId, Role};
use trm_crypto::signing::SigningIdentity;
use trm_federation::envelope;
use trm_proto::v1::{
    self as w, envelope_body::Payload, referral_service_client::ReferralServiceClient,
    remedies_service_client::RemediesServiceClient, ReceiptBody, ReceiptOutcome,
};
use trm_tests::{eventually, referral_with_status, requests, TestFederation};

use crate::returns::{plan_where, propose, ready_case, returns, wait_status};

type Remedies = RemediesServiceClient<Channel>;
type Referrals = ReferralServiceClient<Channel>;

/// A case at AT with a LEGAL_REMEDIES consent to RO (narrowed to `categories` if any).
/// Returns the case id and the consent id.
async fn case_for_claims(
    sp: &mut Referrals,
    name: &str,
    categories: &[w::DataCategory],
) -> anyhow::Result<(String, String)> {
    let case_id = sp
        .create_case(requests::case(name, 45))
        .await?
        .into_inner()
        .case_id;
    let consent = sp
        .record_consent(requests::consent(
            &case_id,
            &[w::Purpose::LegalRemedies],
            &["RO"],
            categories,
        ))
        .await?
        .into_inner();
    Ok((case_id, consent.consent_id))
}

fn file(case_id: &str, forum: &str) -> w::FileClaimRequest {
    w::FileClaimRequest {
        case_id: case_id.into(),
        kind: w::ClaimKind::StateFund as i32,
        forum_country: forum.into(),
        ..Default::default()
    }
}

fn update(claim_id: &str, status: w::ClaimStatus, reason: &str) -> w::UpdateClaimRequest {
    w::UpdateClaimRequest {
        claim_id: claim_id.into(),
        status: status as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

/// Waits until `client`'s node holds claim `id` for which `done` holds; returns it.
async fn claim_where(
    client: &Remedies,
    id: &str,
    what: &str,
    done: impl Fn(&w::Claim) -> bool,
) -> anyhow::Result<w::Claim> {
    eventually(what, || {
        let mut c = client.clone();
        let id = id.to_owned();
        let done = &done;
        async move {
            // NOT_FOUND until the claim arrives.
            let r = c.get_claim(w::GetClaimRequest { claim_id: id }).await;
            Ok(r.ok().map(|r| r.into_inner()).filter(|c| done(c)))
        }
    })
    .await
}

/// Waits until `client`'s node holds claim `id` in `status`.
async fn claim_in(client: &Remedies, id: &str, status: w::ClaimStatus) -> anyhow::Result<w::Claim> {
    claim_where(client, id, &format!("claim {status:?}"), |c| {
        c.status == status as i32
    })
    .await
}

fn identity_of(c: &w::Claim) -> Option<w::Person> {
    c.disclosed.as_ref().and_then(|d| d.identity.clone())
}

fn refused(err: tonic::Status, code: Code, word: &str) {
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.message().contains(word), "{}", err.message());
}

#[tokio::test]
async fn a_claim_reaches_its_forum_with_identity_only_where_consent_lists_it_and_steps_travel_both_ways(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = fed.remedies("AT", Role::ServiceProvider).await?;
    let mut ro = fed.remedies("RO", Role::FocalPoint).await?;
    let (plain, _) = case_for_claims(&mut sp, "Ioana", &[]).await?;
    let (named, _) = case_for_claims(
        &mut sp,
        "Maria",
        &[w::DataCategory::Identity, w::DataCategory::Demographics],
    )
    .await?;

    let c1 = at.file_claim(file(&plain, "RO")).await?.into_inner();
    assert_eq!(c1.status, w::ClaimStatus::Filed as i32);
    assert_eq!(
        (c1.origin.as_str(), c1.case_id.as_str()),
        ("AT", plain.as_str())
    );
    assert!(!c1.case_ref.is_empty());
    let c2 = at.file_claim(file(&named, "RO")).await?.into_inner();

    let r1 = claim_in(&ro, &c1.claim_id, w::ClaimStatus::Filed).await?;
    assert!(r1.case_id.is_empty(), "the forum holds no case id of AT");
    assert_eq!(r1.kind, w::ClaimKind::StateFund as i32);
    assert!(
        identity_of(&r1).is_none_or(|p| p.given_name.is_empty()),
        "no identity without IDENTITY listed in the consent"
    );
    let d1 = r1.disclosed.clone().unwrap_or_default();
    assert!(d1.needs.is_none() && d1.exploitation.is_none());
    assert_eq!(d1.gender, w::Gender::Female as i32, "demographics cross");
    let r2 = claim_in(&ro, &c2.claim_id, w::ClaimStatus::Filed).await?;
    let person = identity_of(&r2).unwrap_or_default();
    assert_eq!(person.given_name, "Maria", "a payment needs a name");
    assert!(
        person.address.is_empty() && person.phone.is_empty(),
        "contact never crosses for legal remedies"
    );

    // The forum decides; the filing side may not.
    let err = at
        .update_claim(update(&c1.claim_id, w::ClaimStatus::Awarded, ""))
        .await
        .expect_err("only the forum awards");
    assert_eq!(err.code(), Code::PermissionDenied);
    ro.update_claim(update(&c1.claim_id, w::ClaimStatus::UnderReview, ""))
        .await?;
    claim_in(&at, &c1.claim_id, w::ClaimStatus::UnderReview).await?;
    ro.update_claim(update(&c1.claim_id, w::ClaimStatus::Awarded, "order 17/26"))
        .await?;
    let awarded = claim_in(&at, &c1.claim_id, w::ClaimStatus::Awarded).await?;
    assert_eq!(awarded.status_reason, "order 17/26");
    // Either side records the payment: here the victim received it.
    at.update_claim(update(&c1.claim_id, w::ClaimStatus::Paid, ""))
        .await?;
    claim_in(&ro, &c1.claim_id, w::ClaimStatus::Paid).await?;
    // The filing side withdraws.
    at.update_claim(update(&c2.claim_id, w::ClaimStatus::Withdrawn, "settled"))
        .await?;
    claim_in(&ro, &c2.claim_id, w::ClaimStatus::Withdrawn).await?;
    let err = ro
        .update_claim(update(&c2.claim_id, w::ClaimStatus::Awarded, ""))
        .await
        .expect_err("a withdrawn claim is over");
    refused(err, Code::FailedPrecondition, "state");
    for bad in [w::ClaimStatus::Unspecified, w::ClaimStatus::Filed] {
        let err = ro
            .update_claim(update(&c1.claim_id, bad, ""))
            .await
            .expect_err("not a step");
        refused(err, Code::InvalidArgument, "status");
    }
    let incoming = ro
        .list_claims(w::ListClaimsRequest {
            direction: w::Direction::Incoming as i32,
            status: vec![w::ClaimStatus::Paid as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(incoming.claims.len(), 1);
    assert_eq!(incoming.claims[0].claim_id, c1.claim_id);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_claim_without_legal_remedies_consent_is_refused_and_a_claim_heard_at_home_stays_there(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = fed.remedies("AT", Role::ServiceProvider).await?;
    let ro = fed.remedies("RO", Role::FocalPoint).await?;
    let case_id = sp
        .create_case(requests::case("Elena", 45))
        .await?
        .into_inner()
        .case_id;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;

    let err = at
        .file_claim(file(&case_id, "RO"))
        .await
        .expect_err("no consent");
    refused(err, Code::FailedPrecondition, "consent");
    let mut no_kind = file(&case_id, "RO");
    no_kind.kind = w::ClaimKind::Unspecified as i32;
    refused(
        at.file_claim(no_kind).await.expect_err("kind"),
        Code::InvalidArgument,
        "kind",
    );
    refused(
        at.file_claim(file(&case_id, "NG"))
            .await
            .expect_err("not a peer"),
        Code::InvalidArgument,
        "forum_country",
    );
    let outgoing = at
        .list_claims(w::ListClaimsRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(outgoing.claims.is_empty(), "a refused claim leaves nothing");

    // Heard in AT's own forum: no consent needed for a border, and it never leaves.
    let local = at.file_claim(file(&case_id, "AT")).await?.into_inner();
    assert_eq!(local.forum_country, "AT");
    assert!(local.case_ref.is_empty() && local.disclosed.is_none());
    for step in [
        w::ClaimStatus::UnderReview,
        w::ClaimStatus::Awarded,
        w::ClaimStatus::Paid,
    ] {
        let c = at
            .update_claim(update(&local.claim_id, step, ""))
            .await?
            .into_inner();
        assert_eq!(c.status, step as i32);
    }
    // Anything queued for RO before this referral arrives before it (one order per peer).
    let referral_id = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .referral_id;
    let ro_referrals = fed.referrals("RO", Role::FocalPoint).await?;
    referral_with_status(&ro_referrals, &referral_id, w::ReferralStatus::Delivered).await?;
    let mut ro = ro;
    let incoming = ro
        .list_claims(w::ListClaimsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        incoming.claims.is_empty(),
        "a local claim is never announced"
    );
    let err = ro
        .get_claim(w::GetClaimRequest {
            claim_id: local.claim_id.clone(),
        })
        .await
        .expect_err("unknown at RO");
    assert_eq!(err.code(), Code::NotFound);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn compensation_pending_follows_open_claims_and_no_return_or_referral_closes_a_claim(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at_rp = returns(&fed, "AT", Role::ServiceProvider).await?;
    let mut ro_rp = returns(&fed, "RO", Role::FocalPoint).await?;
    let mut at = fed.remedies("AT", Role::ServiceProvider).await?;
    let mut ro = fed.remedies("RO", Role::FocalPoint).await?;
    let case_id = ready_case(&mut sp, &mut at_rp, &[]).await?;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::LegalRemedies, w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;
    let claim = at.file_claim(file(&case_id, "RO")).await?.into_inner();
    claim_in(&ro, &claim.claim_id, w::ClaimStatus::Filed).await?;
    ro.update_claim(update(&claim.claim_id, w::ClaimStatus::UnderReview, ""))
        .await?;
    claim_in(&at, &claim.claim_id, w::ClaimStatus::UnderReview).await?;

    let plan = at_rp.propose_return(propose(&case_id)).await?.into_inner();
    assert!(plan.compensation_pending, "a claim of the case is open");
    let id = plan.return_id.clone();
    let arrived = wait_status(&ro_rp, &id, w::ReturnStatus::Requested).await?;
    assert!(
        arrived.compensation_pending,
        "the flag crosses with the plan"
    );

    // A referral of the case withdrawn.
    let referral_id = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .referral_id;
    let ro_referrals = fed.referrals("RO", Role::FocalPoint).await?;
    referral_with_status(&ro_referrals, &referral_id, w::ReferralStatus::Delivered).await?;
    sp.withdraw_referral(w::WithdrawReferralRequest {
        referral_id: referral_id.clone(),
        reason: "victim moved".into(),
        ..Default::default()
    })
    .await?;
    referral_with_status(&ro_referrals, &referral_id, w::ReferralStatus::Withdrawn).await?;
    // Another referral, accepted and closed once assistance is over.
    let closed = trm_tests::refer_case(&sp, &case_id, "RO").await?;
    let mut ro_fp = ro_referrals.clone();
    referral_with_status(&ro_fp, &closed, w::ReferralStatus::Delivered).await?;
    ro_fp
        .respond_to_referral(w::RespondToReferralRequest {
            referral_id: closed.clone(),
            decision: w::ReferralDecision::Accept as i32,
            ..Default::default()
        })
        .await?;
    ro_fp
        .close_referral(w::CloseReferralRequest {
            referral_id: closed.clone(),
            reason: "assistance completed".into(),
            ..Default::default()
        })
        .await?;
    referral_with_status(&sp, &closed, w::ReferralStatus::Closed).await?;

    // The return runs to its end.
    ro_rp
        .respond_to_return(w::RespondToReturnRequest {
            return_id: id.clone(),
            response: w::ReturnResponse::ConfirmReception as i32,
            details: "met at the airport".into(),
            ..Default::default()
        })
        .await?;
    wait_status(&at_rp, &id, w::ReturnStatus::ReceptionConfirmed).await?;
    at_rp
        .schedule_return(w::ScheduleReturnRequest {
            return_id: id.clone(),
            travel_at: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
            details: "flight".into(),
            ..Default::default()
        })
        .await?;
    at_rp
        .record_travel(w::RecordTravelRequest {
            return_id: id.clone(),
            ..Default::default()
        })
        .await?;
    wait_status(&ro_rp, &id, w::ReturnStatus::Travelled).await?;
    ro_rp
        .confirm_arrival(w::ConfirmArrivalRequest {
            return_id: id.clone(),
            details: String::new(),
            ..Default::default()
        })
        .await?;
    wait_status(&at_rp, &id, w::ReturnStatus::Arrived).await?;
    assert_eq!(
        at.get_claim(w::GetClaimRequest {
            claim_id: claim.claim_id.clone()
        })
        .await?
        .into_inner()
        .status,
        w::ClaimStatus::UnderReview as i32,
        "an arrival closes no claim"
    );
    at_rp
        .close_return(w::CloseReturnRequest {
            return_id: id.clone(),
            reason: "reintegrated".into(),
            ..Default::default()
        })
        .await?;
    wait_status(&ro_rp, &id, w::ReturnStatus::Closed).await?;
    for (node, client) in [("AT", &mut at), ("RO", &mut ro)] {
        let c = client
            .get_claim(w::GetClaimRequest {
                claim_id: claim.claim_id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(
            c.status,
            w::ClaimStatus::UnderReview as i32,
            "{node}: a closed return, a closed and a withdrawn referral close no claim"
        );
    }

    ro.update_claim(update(&claim.claim_id, w::ClaimStatus::Rejected, ""))
        .await?;
    claim_in(&at, &claim.claim_id, w::ClaimStatus::Rejected).await?;
    let again = at_rp.propose_return(propose(&case_id)).await?.into_inner();
    assert!(!again.compensation_pending, "no claim of the case is open");
    fed.stop().await?;
    Ok(())
}

/// `compensation_pending` is derived while a claim of the case is open, not only when the
/// plan is proposed: a claim filed or ended later turns it on or off on both nodes, whether
/// it is heard abroad or at home.
#[tokio::test]
async fn compensation_pending_turns_on_and_off_on_both_nodes_as_claims_open_and_end(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at_rp = returns(&fed, "AT", Role::ServiceProvider).await?;
    let ro_rp = returns(&fed, "RO", Role::FocalPoint).await?;
    let mut at = fed.remedies("AT", Role::ServiceProvider).await?;
    let mut ro = fed.remedies("RO", Role::FocalPoint).await?;
    let case_id = ready_case(&mut sp, &mut at_rp, &[]).await?;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::LegalRemedies],
        &["RO"],
        &[],
    ))
    .await?;
    let plan = at_rp.propose_return(propose(&case_id)).await?.into_inner();
    assert!(!plan.compensation_pending, "no claim of the case yet");
    let id = plan.return_id.clone();
    wait_status(&ro_rp, &id, w::ReturnStatus::Requested).await?;
    let pending = |on: bool| move |p: &w::ReturnPlan| p.compensation_pending == on;

    // A claim heard in RO, filed after the plan was proposed, then rejected there.
    let abroad = at.file_claim(file(&case_id, "RO")).await?.into_inner();
    plan_where(&at_rp, &id, "AT: pending with a claim filed", pending(true)).await?;
    plan_where(&ro_rp, &id, "RO: told of the claim", pending(true)).await?;
    claim_in(&ro, &abroad.claim_id, w::ClaimStatus::Filed).await?;
    ro.update_claim(update(&abroad.claim_id, w::ClaimStatus::Rejected, ""))
        .await?;
    plan_where(&at_rp, &id, "AT: no claim open", pending(false)).await?;
    plan_where(&ro_rp, &id, "RO: told it ended", pending(false)).await?;

    // A claim heard at home, filed and withdrawn at AT.
    let home = at.file_claim(file(&case_id, "AT")).await?.into_inner();
    plan_where(&ro_rp, &id, "RO: told of the claim at home", pending(true)).await?;
    at.update_claim(update(&home.claim_id, w::ClaimStatus::Withdrawn, ""))
        .await?;
    plan_where(&ro_rp, &id, "RO: told it was withdrawn", pending(false)).await?;
    let at_plan = at_rp
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        !at_plan.compensation_pending,
        "no claim of the case is open"
    );
    fed.stop().await?;
    Ok(())
}

/// A plan's flags come only from the node that sent the plan, under the plan's own
/// reference: a third node's, or one under another reference, is REJECTED and changes
/// nothing; flags for a plan this side already ended are taken and change nothing.
#[tokio::test]
async fn flags_from_a_node_that_did_not_send_the_plan_are_rejected_and_change_nothing(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at_rp = returns(&fed, "AT", Role::ServiceProvider).await?;
    let mut ro_rp = returns(&fed, "RO", Role::FocalPoint).await?;
    let case_id = ready_case(&mut sp, &mut at_rp, &[]).await?;
    let plan = at_rp.propose_return(propose(&case_id)).await?.into_inner();
    let copy = wait_status(&ro_rp, &plan.return_id, w::ReturnStatus::Requested).await?;
    let case_ref = copy
        .disclosed
        .as_ref()
        .map(|d| d.case_ref.clone())
        .unwrap_or_default();
    let flags = Payload::ReturnUpdate(w::ReturnUpdate {
        return_id: plan.return_id.clone(),
        flags: Some(w::CoordinationFlags {
            hearing_pending: true,
            compensation_pending: true,
        }),
        ..Default::default()
    });
    let (at, ro, ng): (NodeId, NodeId, NodeId) = ("AT".parse()?, "RO".parse()?, "NG".parse()?);
    let send = |from: NodeId, case_ref: &str| {
        let (fed, flags, case_ref) = (&fed, flags.clone(), case_ref.to_owned());
        async move {
            let dir = fed.dir().join(from.as_str());
            let key = SigningIdentity::load(&dir.join("keys/signing.pem"))?;
            let mut client = crate::transport::federation_client(
                fed.node("RO")?.addrs.federation,
                &fed.dir().join("RO/tls/federation-ca.pem"),
                &trm_crypto::files::read_text(&dir.join("tls/federation.pem"))?,
                &trm_crypto::files::read_text(&dir.join("tls/federation.key"))?,
            )
            .await?;
            let receipt = client
                .deliver(envelope::seal(&key, from, ro, &case_ref, flags))
                .await?
                .into_inner();
            outcome_of(&receipt)
        }
    };
    for (from, reference, why) in [
        (ng, case_ref.as_str(), "not received from the sender"),
        (at, "another-ref", "case_ref"),
    ] {
        let (outcome, reason) = send(from, reference).await?;
        assert_eq!(outcome, ReceiptOutcome::Rejected as i32, "{from}: {reason}");
        assert!(reason.contains(why), "{from}: {reason}");
    }
    let held = ro_rp
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: plan.return_id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        !held.hearing_pending && !held.compensation_pending,
        "nothing changed: {held:?}"
    );

    // The plan ends; flags the origin sent meanwhile are taken and change nothing.
    at_rp
        .halt_return(w::HaltReturnRequest {
            return_id: plan.return_id.clone(),
            reason: "concern".into(),
            ..Default::default()
        })
        .await?;
    let ended = wait_status(&ro_rp, &plan.return_id, w::ReturnStatus::Halted).await?;
    let (outcome, reason) = send(at, &case_ref).await?;
    assert_eq!(outcome, ReceiptOutcome::Accepted as i32, "{reason}");
    let after = wait_status(&ro_rp, &plan.return_id, w::ReturnStatus::Halted).await?;
    assert_eq!(
        (after.hearing_pending, after.compensation_pending),
        (ended.hearing_pending, ended.compensation_pending)
    );
    fed.stop().await?;
    Ok(())
}

/// Returns the outcome and reason of a single-envelope receipt.
fn outcome_of(receipt: &w::SignedReceipt) -> anyhow::Result<(i32, String)> {
    let body = ReceiptBody::decode(receipt.body.as_slice())?;
    Ok((body.outcome, body.reason))
}

#[tokio::test]
async fn a_claim_notice_carrying_more_than_legal_remedies_allows_is_rejected_naming_the_field(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let mut client = crate::transport::as_ro(&fed).await?;
    let case_ref = "ref-claim-1";
    let base = w::DisclosedCase {
        case_ref: case_ref.into(),
        age_band: w::AgeBand::AgeBand2123 as i32,
        ..Default::default()
    };
    let leaks = [
        (
            "needs",
            w::DisclosedCase {
                needs: Some(w::Needs {
                    kinds: vec![w::NeedKind::Shelter as i32],
                    urgency: w::Urgency::Routine as i32,
                    notes: String::new(),
                }),
                ..base.clone()
            },
        ),
        (
            "exploitation",
            w::DisclosedCase {
                exploitation: Some(w::Exploitation {
                    types: vec![w::ExploitationType::ForcedLabour as i32],
                    countries: vec![],
                }),
                ..base.clone()
            },
        ),
        (
            "address",
            w::DisclosedCase {
                identity: Some(w::Person {
                    given_name: "Ana".into(),
                    address: "Strada 1".into(),
                    ..Default::default()
                }),
                ..base.clone()
            },
        ),
    ];
    for (field, disclosed) in leaks {
        let notice = Payload::ClaimNotice(w::ClaimNotice {
            claim_id: uuid::Uuid::now_v7().to_string(),
            kind: w::ClaimKind::CivilDamages as i32,
            disclosed: Some(disclosed),
        });
        let receipt = client
            .deliver(envelope::seal(&ro_key, ro, at, case_ref, notice))
            .await?
            .into_inner();
        let (outcome, reason) = outcome_of(&receipt)?;
        assert_eq!(
            outcome,
            ReceiptOutcome::Rejected as i32,
            "{field}: {reason}"
        );
        assert!(reason.contains(field), "{field}: {reason}");
    }
    let mut fp = fed.remedies("AT", Role::FocalPoint).await?;
    let incoming = fp
        .list_claims(w::ListClaimsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        incoming.claims.is_empty(),
        "a rejected notice keeps nothing"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn withdrawing_the_consent_or_erasing_the_case_erases_the_claim_copy_at_the_forum(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = fed.remedies("AT", Role::ServiceProvider).await?;
    let ro = fed.remedies("RO", Role::FocalPoint).await?;
    let categories = [w::DataCategory::Identity, w::DataCategory::Demographics];
    let (withdrawn, consent_id) = case_for_claims(&mut sp, "Oana", &categories).await?;
    let (erased, _) = case_for_claims(&mut sp, "Irina", &categories).await?;
    let c1 = at.file_claim(file(&withdrawn, "RO")).await?.into_inner();
    let c2 = at.file_claim(file(&erased, "RO")).await?.into_inner();
    for c in [&c1, &c2] {
        let held = claim_in(&ro, &c.claim_id, w::ClaimStatus::Filed).await?;
        assert!(identity_of(&held).is_some_and(|p| !p.given_name.is_empty()));
    }
    ro.clone()
        .update_claim(update(&c1.claim_id, w::ClaimStatus::UnderReview, ""))
        .await?;
    claim_in(&at, &c1.claim_id, w::ClaimStatus::UnderReview).await?;

    sp.withdraw_consent(w::WithdrawConsentRequest {
        case_id: withdrawn.clone(),
        consent_id,
        ..Default::default()
    })
    .await?;
    sp.erase_case(w::EraseCaseRequest {
        case_id: erased.clone(),
        reason: "victim's request".into(),
        ..Default::default()
    })
    .await?;
    for c in [&c1, &c2] {
        let copy = claim_where(&ro, &c.claim_id, "the claim copy erased", |c| {
            identity_of(c).is_none_or(|p| p.given_name.is_empty())
        })
        .await?;
        let d = copy.disclosed.unwrap_or_default();
        assert_eq!(d.case_ref, c.case_ref, "only the pairwise reference stays");
        assert_eq!((d.age_band, d.gender), (0, 0));
    }
    let confirmed = claim_where(&at, &c1.claim_id, "erasure confirmed", |c| {
        c.erasure_confirmed
    })
    .await?;
    assert_eq!(
        confirmed.status,
        w::ClaimStatus::UnderReview as i32,
        "erasing data withdraws no claim"
    );
    let ro_view = ro
        .clone()
        .get_claim(w::GetClaimRequest {
            claim_id: c1.claim_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(ro_view.status, w::ClaimStatus::UnderReview as i32);
    fed.stop().await?;
    Ok(())
}

/// A case at AT identified (CONCLUSIVE, `decided_on`) if `identified`, with consent for
/// `purposes` to RO, referred to RO. Returns the case id and the referral id once RO holds it.
async fn referred_case(
    fed: &TestFederation,
    identified: Option<&str>,
    purposes: &[w::Purpose],
) -> anyhow::Result<(String, String)> {
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .create_case(requests::case("Daria", 45))
        .await?
        .into_inner()
        .case_id;
    if let Some(day) = identified {
        sp.record_identification(w::RecordIdentificationRequest {
            case_id: case_id.clone(),
            stage: w::IdentificationStage::Conclusive as i32,
            decided_on: day.into(),
            ..Default::default()
        })
        .await?;
    }
    sp.record_consent(requests::consent(&case_id, purposes, &["RO"], &[]))
        .await?;
    let referral_id = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .referral_id;
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    referral_with_status(&ro, &referral_id, w::ReferralStatus::Delivered).await?;
    Ok((case_id, referral_id))
}

fn attest(id: &str, decision: w::AttestationDecision) -> w::AttestVictimStatusRequest {
    w::AttestVictimStatusRequest {
        request_id_of_peer: id.into(),
        decision: decision as i32,
        ..Default::default()
    }
}

/// Waits until RO's judicial authority reads request `id` in `state`.
async fn status_in(
    ja: &Remedies,
    id: &str,
    state: w::VictimStatusState,
) -> anyhow::Result<w::VictimStatusRequest> {
    eventually(&format!("victim status {state:?}"), || {
        let mut ja = ja.clone();
        let id = id.to_owned();
        async move {
            let r = ja
                .get_victim_status(w::GetVictimStatusRequest {
                    status_request_id: id,
                })
                .await?
                .into_inner();
            Ok(Some(r).filter(|r| r.state == state as i32))
        }
    })
    .await
}

/// Writes the raw ed25519 key as SubjectPublicKeyInfo PEM, by hand (the fixed DER prefix
/// of RFC 8410, then the 32 bytes), as an issuer would publish it.
fn spki_pem(raw: &[u8; 32]) -> String {
    use base64::Engine as _;
    let mut der = hex::decode("302a300506032b6570032100").unwrap_or_default();
    der.extend_from_slice(raw);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// Runs `openssl pkeyutl -verify` over the attestation's signed bytes.
fn openssl_verifies(
    dir: &std::path::Path,
    pem: &str,
    a: &w::SignedAttestation,
) -> anyhow::Result<bool> {
    let mut msg = trm_core::remedies::ATTESTATION_TAG.to_vec();
    msg.push(0);
    msg.extend_from_slice(&a.attestation);
    std::fs::write(dir.join("key.pem"), pem)?;
    std::fs::write(dir.join("msg"), msg)?;
    std::fs::write(dir.join("sig"), &a.signature)?;
    let out = std::process::Command::new("openssl")
        .args([
            "pkeyutl", "-verify", "-pubin", "-inkey", "key.pem", "-rawin", "-in", "msg",
        ])
        .args(["-sigfile", "sig"])
        .current_dir(dir)
        .output()?;
    Ok(out.status.success())
}

#[tokio::test]
async fn an_attestation_of_victim_status_is_signed_by_the_issuer_and_verifies_offline(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let decided = time::OffsetDateTime::now_utc().date() - time::Duration::days(40);
    let day = trm_core::model::format_date(decided);
    let purposes = [w::Purpose::ReferralAssistance, w::Purpose::LegalRemedies];
    let (case_id, referral_id) = referred_case(&fed, Some(&day), &purposes).await?;
    let mut ja = fed.remedies("RO", Role::JudicialAuthority).await?;

    // A judicial authority reads no case: an id not received from a peer is unknown.
    for unknown in [uuid::Uuid::now_v7().to_string(), case_id.clone()] {
        let err = ja
            .request_victim_status(w::RequestVictimStatusRequest {
                case_id: unknown,
                ..Default::default()
            })
            .await
            .expect_err("not received");
        assert_eq!(err.code(), Code::NotFound);
    }
    let asked = ja
        .request_victim_status(w::RequestVictimStatusRequest {
            case_id: referral_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(asked.state, w::VictimStatusState::Requested as i32);
    assert_eq!(asked.issuing_country, "AT");
    let id = asked.status_request_id.clone();

    let work = fed.work("AT", Role::FocalPoint).await?;
    let tasks = || {
        let mut work = work.clone();
        async move {
            Ok::<_, anyhow::Error>(
                work.list_tasks(w::ListTasksRequest {
                    kinds: vec![w::TaskKind::AttestVictimStatus as i32],
                    ..Default::default()
                })
                .await?
                .into_inner()
                .tasks,
            )
        }
    };
    eventually("the task to attest", || {
        let (id, tasks) = (id.clone(), tasks());
        async move { Ok(tasks.await?.iter().any(|t| t.record_id == id).then_some(())) }
    })
    .await?;
    let mut fp = fed.remedies("AT", Role::FocalPoint).await?;
    let answered = fp
        .attest_victim_status(attest(&id, w::AttestationDecision::Attest))
        .await?
        .into_inner();
    assert_eq!(answered.state, w::VictimStatusState::Attested as i32);
    assert!(
        tasks().await?.iter().all(|t| t.record_id != id),
        "task closed"
    );
    let err = fp
        .attest_victim_status(attest(&id, w::AttestationDecision::Decline))
        .await
        .expect_err("answered once");
    refused(err, Code::FailedPrecondition, "state");

    let got = status_in(&ja, &id, w::VictimStatusState::Attested).await?;
    // Both sides audited: who asked and who answered, and each message as it arrived.
    let by = |node: &'static str, action: &'static str, detail: &'static str| {
        let fed = &fed;
        let id = id.clone();
        async move {
            let found = fed
                .audited(node, action)
                .await?
                .into_iter()
                .any(|e| e.subject.contains(&id) || (!detail.is_empty() && e.detail == detail));
            anyhow::ensure!(found, "{node} audits {action} {detail}");
            Ok::<_, anyhow::Error>(())
        }
    };
    by("RO", "victim_status.request", "").await?;
    by("AT", "envelope.accept", "victim_status_query").await?;
    by("AT", "victim_status.answer", "").await?;
    by("RO", "envelope.accept", "victim_status_answer").await?;
    let asked_by = fed.audited("RO", "victim_status.request").await?;
    assert!(
        asked_by
            .iter()
            .all(|e| e.actor.contains("judicial_authority")),
        "{asked_by:?}"
    );
    let signed = got.attestation.clone().unwrap_or_default();
    let a = w::VictimStatusAttestation::decode(signed.attestation.as_slice())?;
    assert_eq!(a.case_ref, asked.case_ref);
    assert_eq!(a.stage, w::IdentificationStage::Conclusive as i32);
    assert_eq!(a.decided_month, day[..7].to_owned());
    assert_eq!(a.issuer, "AT");

    let at_key = SigningIdentity::load(&fed.dir().join("AT/keys/signing.pem"))?;
    assert_eq!(signed.key_id, at_key.key_id());
    let pem = spki_pem(at_key.public().as_bytes());
    let dir = tempfile::tempdir()?;
    assert!(
        openssl_verifies(dir.path(), &pem, &signed)?,
        "openssl verifies it"
    );
    let file = trmctl::attestation::AttestationFile::of(&signed);
    let file_path = dir.path().join("attestation.json");
    std::fs::write(&file_path, serde_json::to_string(&file)?)?;
    let verified = trmctl::attestation::verify_files(&file_path, &dir.path().join("key.pem"))?;
    assert_eq!(
        (verified.stage.as_str(), verified.issuer.as_str()),
        ("IDENTIFICATION_STAGE_CONCLUSIVE", "AT")
    );
    let args = ["trmctl", "attestation", "verify"].map(std::ffi::OsString::from);
    trmctl::cli::main_with(args.into_iter().chain([
        file_path.clone().into_os_string(),
        "--public-key".into(),
        dir.path().join("key.pem").into_os_string(),
        "--json".into(),
    ]))?;

    // A forged or altered attestation fails both.
    let mut altered = signed.clone();
    let last = altered.attestation.len() - 1;
    altered.attestation[last] ^= 1;
    assert!(!openssl_verifies(dir.path(), &pem, &altered)?);
    let forged = dir.path().join("forged.json");
    let file = trmctl::attestation::AttestationFile::of(&altered);
    std::fs::write(&forged, serde_json::to_string(&file)?)?;
    assert!(trmctl::attestation::verify_files(&forged, &dir.path().join("key.pem")).is_err());

    // The victim withdraws the consent it was given under: RO keeps the answer's state and
    // nothing of the attestation; AT learns RO erased it.
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let consents = sp
        .list_consents(w::ListConsentsRequest {
            case_id: case_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents;
    sp.withdraw_consent(w::WithdrawConsentRequest {
        case_id: case_id.clone(),
        consent_id: consents[0].consent_id.clone(),
        ..Default::default()
    })
    .await?;
    let erased = eventually("the attestation erased at RO", || {
        let mut ja = ja.clone();
        let id = id.clone();
        async move {
            let v = ja
                .get_victim_status(w::GetVictimStatusRequest {
                    status_request_id: id,
                })
                .await?
                .into_inner();
            Ok(v.attestation_erased.then_some(v))
        }
    })
    .await?;
    assert!(erased.attestation.is_none(), "{erased:?}");
    assert_eq!(erased.state, w::VictimStatusState::Attested as i32);
    eventually("AT to learn it", || {
        let mut fp = fp.clone();
        let id = id.clone();
        async move {
            let v = fp
                .get_victim_status(w::GetVictimStatusRequest {
                    status_request_id: id,
                })
                .await?
                .into_inner();
            Ok(v.erasure_confirmed.then_some(()))
        }
    })
    .await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_attestation_needs_the_victims_consent_and_an_identification_decision(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, referral_id) =
        referred_case(&fed, None, &[w::Purpose::ReferralAssistance]).await?;
    let mut ja = fed.remedies("RO", Role::JudicialAuthority).await?;
    let id = ja
        .request_victim_status(w::RequestVictimStatusRequest {
            case_id: referral_id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .status_request_id;
    let mut fp = fed.remedies("AT", Role::FocalPoint).await?;
    let err = eventually("the request at AT", || {
        let mut fp = fp.clone();
        let id = id.clone();
        async move {
            match fp
                .attest_victim_status(attest(&id, w::AttestationDecision::Attest))
                .await
            {
                Err(e) if e.code() == Code::NotFound => Ok(None),
                Err(e) => Ok(Some(e)),
                Ok(_) => anyhow::bail!("attested without consent"),
            }
        }
    })
    .await?;
    refused(err, Code::FailedPrecondition, "consent");
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::LegalRemedies],
        &["RO"],
        &[],
    ))
    .await?;
    let err = fp
        .attest_victim_status(attest(&id, w::AttestationDecision::Attest))
        .await
        .expect_err("no identification decision");
    refused(err, Code::FailedPrecondition, "state");
    fp.attest_victim_status(attest(&id, w::AttestationDecision::Decline))
        .await?;
    let declined = status_in(&ja, &id, w::VictimStatusState::Declined).await?;
    assert!(declined.attestation.is_none(), "a refusal carries nothing");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_answer_whose_attestation_does_not_verify_is_rejected_by_the_requester(
) -> anyhow::Result<()> {
    // AT keeps a replay window of 2 days: an attestation older than that, though within
    // the default 7, is refused as the envelope carrying it would be.
    let fed = TestFederation::builder()
        .nodes(&["AT", "RO"])
        .config(|id, cfg| {
            if id.as_str() == "AT" {
                cfg.policy.replay_window_days = 2;
            }
        })
        .start()
        .await?;
    let (at, ro): (NodeId, NodeId) = ("AT".parse()?, "RO".parse()?);
    // RO refers a case to AT; AT's judicial authority asks RO about it.
    let mut ro_sp = fed.referrals("RO", Role::ServiceProvider).await?;
    let case_id = ro_sp
        .create_case(requests::case("Mira", 45))
        .await?
        .into_inner()
        .case_id;
    let referral_id = trm_tests::refer_case(&ro_sp, &case_id, "AT").await?;
    let at_fp = fed.referrals("AT", Role::FocalPoint).await?;
    referral_with_status(&at_fp, &referral_id, w::ReferralStatus::Delivered).await?;
    let mut ja = fed.remedies("AT", Role::JudicialAuthority).await?;
    let asked = ja
        .request_victim_status(w::RequestVictimStatusRequest {
            case_id: referral_id,
            ..Default::default()
        })
        .await?
        .into_inner();
    let ro_key = SigningIdentity::load(&fed.dir().join("RO/keys/signing.pem"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let made = |case_ref: &str, stage: w::IdentificationStage, issued: i64| {
        w::VictimStatusAttestation {
            case_ref: case_ref.into(),
            stage: stage as i32,
            decided_month: "2026-01".into(),
            issuer: "RO".into(),
            issued_at: Some(prost_types::Timestamp {
                seconds: issued,
                nanos: 0,
            }),
        }
        .encode_to_vec()
    };
    let attestation = |case_ref: &str| made(case_ref, w::IdentificationStage::Conclusive, now);
    let good = attestation(&asked.case_ref);
    let mut bad_signature = ro_key.sign(trm_core::remedies::ATTESTATION_TAG, &good);
    bad_signature[0] ^= 1;
    let other_ref = attestation("another-reference");
    // Dated a month back (into an older key's time, were one retired), or with no stage.
    let backdated = made(
        &asked.case_ref,
        w::IdentificationStage::Conclusive,
        now - 30 * 86_400,
    );
    let no_stage = made(&asked.case_ref, w::IdentificationStage::Unspecified, now);
    let past_window = made(
        &asked.case_ref,
        w::IdentificationStage::Conclusive,
        now - 3 * 86_400,
    );
    let signed = |b: &Vec<u8>| ro_key.sign(trm_core::remedies::ATTESTATION_TAG, b);
    let cases = [
        ("attestation.signature", good.clone(), bad_signature),
        (
            "attestation.case_ref",
            other_ref.clone(),
            signed(&other_ref),
        ),
        (
            "attestation.issued_at",
            backdated.clone(),
            signed(&backdated),
        ),
        ("attestation.stage", no_stage.clone(), signed(&no_stage)),
        (
            "attestation.issued_at",
            past_window.clone(),
            signed(&past_window),
        ),
    ];
    let mut client = crate::transport::as_ro(&fed).await?;
    for (field, bytes, signature) in cases {
        let answer = Payload::VictimStatusAnswer(w::VictimStatusAnswer {
            status_request_id: asked.status_request_id.clone(),
            state: w::VictimStatusState::Attested as i32,
            attestation: Some(w::SignedAttestation {
                attestation: bytes,
                key_id: ro_key.key_id().to_owned(),
                signature,
            }),
        });
        let receipt = client
            .deliver(envelope::seal(&ro_key, ro, at, &asked.case_ref, answer))
            .await?
            .into_inner();
        let (outcome, reason) = outcome_of(&receipt)?;
        assert_eq!(
            outcome,
            ReceiptOutcome::Rejected as i32,
            "{field}: {reason}"
        );
        assert!(reason.contains(field), "{field}: {reason}");
    }
    let still = ja
        .get_victim_status(w::GetVictimStatusRequest {
            status_request_id: asked.status_request_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(still.state, w::VictimStatusState::Requested as i32);
    assert!(still.attestation.is_none(), "nothing unverified is kept");
    fed.stop().await?;
    Ok(())
}

/// A claim notice the forum never received (its node answered with an error status, which
/// nobody signs) is not the forum's decision: the claim stays filed, says why it waits, and
/// once an operator sends it again, the forum's steps reach it.
#[tokio::test]
async fn a_claim_that_could_not_be_delivered_stays_filed_and_takes_the_forums_steps_once_sent(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let at = fed.remedies("AT", Role::ServiceProvider).await?;
    let mut ro = fed.remedies("RO", Role::FocalPoint).await?;
    let (case_id, _) = case_for_claims(&mut sp, "Ioana", &[]).await?;
    let mut ro_admin = fed.admin("RO", Role::Operator).await?;
    crate::directory::remove_peer(&mut ro_admin, "AT").await?;
    let claim = at
        .clone()
        .file_claim(file(&case_id, "RO"))
        .await?
        .into_inner();
    let dead = eventually("the claim notice's dead letter", || async {
        let dead = crate::directory::outbox(&fed, "AT", true).await?;
        Ok(dead.into_iter().find(|e| e.kind == "claim_notice"))
    })
    .await?;
    let waiting = claim_where(&at, &claim.claim_id, "the claim says why", |c| {
        c.status_reason.contains("RO")
    })
    .await?;
    assert_eq!(
        waiting.status,
        w::ClaimStatus::Filed as i32,
        "only the forum decides a claim: {waiting:?}"
    );

    crate::directory::trust_again(&fed, &mut ro_admin, "AT").await?;
    fed.admin("AT", Role::Operator)
        .await?
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead.message_id.clone(),
            ..Default::default()
        })
        .await?;
    claim_in(&ro, &claim.claim_id, w::ClaimStatus::Filed).await?;
    ro.update_claim(update(&claim.claim_id, w::ClaimStatus::UnderReview, ""))
        .await?;
    claim_in(&at, &claim.claim_id, w::ClaimStatus::UnderReview).await?;
    fed.stop().await?;
    Ok(())
}

/// An attestation not yet delivered when the case is erased is never sent: its envelope
/// cannot be opened any more, as a referral's is not, and an operator cannot retry it.
#[tokio::test]
async fn an_attestation_not_yet_delivered_when_the_case_is_erased_is_never_sent(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let decided = time::OffsetDateTime::now_utc().date() - time::Duration::days(40);
    let day = trm_core::model::format_date(decided);
    let purposes = [w::Purpose::ReferralAssistance, w::Purpose::LegalRemedies];
    let (case_id, referral_id) = referred_case(&fed, Some(&day), &purposes).await?;
    let mut ja = fed.remedies("RO", Role::JudicialAuthority).await?;
    let id = ja
        .request_victim_status(w::RequestVictimStatusRequest {
            case_id: referral_id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .status_request_id;
    let fp = fed.remedies("AT", Role::FocalPoint).await?;
    eventually("the request at AT", || {
        let (mut fp, id) = (fp.clone(), id.clone());
        async move {
            let r = fp
                .get_victim_status(w::GetVictimStatusRequest {
                    status_request_id: id,
                })
                .await;
            Ok(r.ok().map(|_| ()))
        }
    })
    .await?;
    // RO stops taking AT's envelopes: the answer becomes a dead letter at AT.
    crate::directory::remove_peer(&mut fed.admin("RO", Role::Operator).await?, "AT").await?;
    fp.clone()
        .attest_victim_status(attest(&id, w::AttestationDecision::Attest))
        .await?;
    let dead = eventually("the answer's dead letter", || async {
        let dead = crate::directory::outbox(&fed, "AT", true).await?;
        Ok(dead.into_iter().next())
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
            message_id: dead.message_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("an erased case's attestation is never sent");
    refused(err, Code::FailedPrecondition, "consent");
    fed.stop().await?;
    Ok(())
}
