//! The referral flow across two nodes through the public API.

use tonic::Code;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{eventually, files_containing, TestFederation};

#[tokio::test]
async fn referral_from_at_is_accepted_by_ro_and_only_the_referral_fields_cross(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut log = Vec::new();
    let outcome = trmctl::scenario::run(fed.dir(), "AT".parse()?, "RO".parse()?, &mut log).await?;

    assert_eq!(outcome.without_consent, Code::FailedPrecondition);
    assert_eq!(
        outcome.at_origin.status,
        w::ReferralStatus::InAssistance as i32
    );
    assert_eq!(
        outcome.at_destination.status,
        w::ReferralStatus::InAssistance as i32
    );
    assert_eq!(
        outcome.at_origin.referral_id,
        outcome.at_destination.referral_id
    );
    assert_eq!(
        (
            outcome.at_origin.origin.as_str(),
            outcome.at_origin.destination.as_str()
        ),
        ("AT", "RO")
    );
    assert_eq!(outcome.at_destination.assigned_organisation, "sp1");

    // The destination holds exactly what the origin sent.
    assert_eq!(
        outcome.at_origin.disclosed,
        outcome.at_destination.disclosed
    );
    let d = outcome.at_destination.disclosed.clone().unwrap_or_default();
    assert_eq!(d.identity, None, "no identity in a referral");
    assert_eq!(
        d.age_band,
        w::AgeBand::AgeBand2426 as i32,
        "age band instead of birth date"
    );
    assert_eq!(d.gender, w::Gender::Female as i32);
    let needs = d.needs.unwrap_or_default();
    assert!(needs.notes.is_empty(), "free-text notes never leave");
    assert_eq!(
        needs.kinds,
        vec![
            w::NeedKind::Shelter as i32,
            w::NeedKind::Psychological as i32
        ]
    );
    assert_eq!(d.case_ref.len(), 32);
    assert!(
        outcome.at_destination.case_id.is_empty(),
        "the origin's case id stays at the origin"
    );

    // The return story: identity for travel documents crossed under the return consent,
    // contact did not; the plan reached follow-up on both sides.
    for plan in [&outcome.return_at_origin, &outcome.return_at_destination] {
        assert_eq!(plan.status, w::ReturnStatus::FollowUp as i32);
        assert!(
            !plan.compensation_pending,
            "no claim is open: a flag the client types in is ignored"
        );
    }
    let person = outcome
        .return_at_destination
        .disclosed
        .clone()
        .unwrap_or_default()
        .identity
        .unwrap_or_default();
    assert_eq!(person.family_name, "Exemplu");
    assert!(person.address.is_empty() && person.phone.is_empty());

    // The hearing was held; the witness's country got the reference, never identity.
    assert_eq!(
        outcome.hearing_at_witness.status,
        w::HearingStatus::Held as i32
    );
    assert_eq!(outcome.hearing_at_witness.case_ref, d.case_ref);

    // The release alert reached the destination under its own reference and was
    // acknowledged there; the origin knows.
    assert_eq!(outcome.alert_at_destination.case_ref, d.case_ref);
    for alert in [&outcome.alert_at_origin, &outcome.alert_at_destination] {
        assert_eq!(alert.status, w::SafetyAlertStatus::Acknowledged as i32);
        assert_eq!(alert.country, "RO");
    }

    // The claim reached the forum with her name (listed in the consent) and no more.
    let claim = &outcome.claim_at_forum;
    assert_eq!(claim.status, w::ClaimStatus::UnderReview as i32);
    let crossed = claim.disclosed.clone().unwrap_or_default();
    assert_eq!(crossed.identity.unwrap_or_default().family_name, "Exemplu");
    assert!(crossed.needs.is_none() && crossed.exploitation.is_none());

    // Nothing personal is in clear in either node's files.
    let dir = fed.stop().await?;
    for node in ["AT", "RO"] {
        let data = dir.path().join(node).join("data");
        for needle in [
            "Exemplu",
            "SANDBOX-0001",
            "2001-04-02",
            "Sandbox Street",
            "private notes",
        ] {
            let hits = files_containing(&data, needle.as_bytes());
            assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
        }
    }
    Ok(())
}

fn case_request() -> w::CreateCaseRequest {
    w::CreateCaseRequest {
        person: Some(w::Person {
            given_name: "Ioana".into(),
            family_name: "Testescu".into(),
            date_of_birth: "1999-09-09".into(),
            gender: w::Gender::Female as i32,
            ..Default::default()
        }),
        needs: Some(w::Needs {
            kinds: vec![w::NeedKind::Legal as i32],
            urgency: w::Urgency::Routine as i32,
            notes: String::new(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn referral_without_matching_consent_is_refused_and_nothing_is_sent() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case = sp.create_case(case_request()).await?.into_inner();
    // Consent covers NG for referral, and RO only for another purpose.
    for (purpose, to) in [
        (w::Purpose::ReferralAssistance, "NG"),
        (w::Purpose::ReturnPlanning, "RO"),
    ] {
        sp.record_consent(w::RecordConsentRequest {
            case_id: case.case_id.clone(),
            purposes: vec![purpose as i32],
            recipients: vec![to.into()],
            informed: true,
            information_language: "en".into(),
            ..Default::default()
        })
        .await?;
    }
    let err = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await
        .expect_err("no consent covers a referral to RO");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("consent"), "{}", err.message());

    let outgoing = sp
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(outgoing.referrals.is_empty());
    let mut admin = fed.admin("AT", Role::Operator).await?;
    assert_eq!(
        admin
            .status(w::StatusRequest {})
            .await?
            .into_inner()
            .outbox_depth,
        0
    );
    let mut ro = fed.referrals("RO", Role::FocalPoint).await?;
    let incoming = ro
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(incoming.referrals.is_empty());

    // The consent to NG does allow a referral there, and it arrives.
    let sent = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: "NG".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut ng = fed.referrals("NG", Role::FocalPoint).await?;
    eventually("the referral to reach NG", || {
        let mut ng = ng.clone();
        let id = sent.referral_id.clone();
        async move {
            let r = ng
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await;
            Ok(r.ok().map(|r| r.into_inner()))
        }
    })
    .await?;
    let delivered =
        trm_tests::referral_with_status(&sp, &sent.referral_id, w::ReferralStatus::Delivered)
            .await?;
    assert_eq!(delivered.destination, "NG");
    // RO never saw anything.
    let incoming = ro
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(incoming.referrals.is_empty());
    // And the answer from NG is a valid transition only once.
    ng.respond_to_referral(w::RespondToReferralRequest {
        referral_id: sent.referral_id.clone(),
        decision: w::ReferralDecision::Decline as i32,
        reason: "no capacity".into(),
        ..Default::default()
    })
    .await?;
    let again = ng
        .respond_to_referral(w::RespondToReferralRequest {
            referral_id: sent.referral_id.clone(),
            decision: w::ReferralDecision::Accept as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("a declined referral cannot be accepted");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("state") && again.message().contains("declined"),
        "{}",
        again.message()
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut bad = case_request();
    if let Some(p) = bad.person.as_mut() {
        p.gender = w::Gender::Unspecified as i32;
    }
    let err = sp.create_case(bad).await.expect_err("unspecified gender");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("person.gender"),
        "{}",
        err.message()
    );
    let mut bad = case_request();
    if let Some(p) = bad.person.as_mut() {
        p.date_of_birth = "09/09/1999".into();
    }
    let err = sp.create_case(bad).await.expect_err("bad date");
    assert!(
        err.message().starts_with("person.date_of_birth"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("09/09/1999"),
        "the value is not echoed"
    );
    assert!(sp
        .list_cases(w::ListCasesRequest::default())
        .await?
        .into_inner()
        .cases
        .is_empty());

    let case = sp.create_case(case_request()).await?.into_inner();
    let err = sp
        .record_consent(w::RecordConsentRequest {
            case_id: case.case_id.clone(),
            purposes: vec![w::Purpose::ReferralAssistance as i32],
            recipients: vec!["ro".into()],
            informed: true,
            information_language: "en".into(),
            ..Default::default()
        })
        .await
        .expect_err("lower-case country");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("recipients[0]"),
        "{}",
        err.message()
    );
    let err = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id,
            destination: "FR".into(),
            ..Default::default()
        })
        .await
        .expect_err("not a peer");
    assert!(
        err.message().starts_with("destination"),
        "{}",
        err.message()
    );
    fed.stop().await?;
    Ok(())
}
