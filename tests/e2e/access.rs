//! Roles and organisations on the local services.

use tonic::Code;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::TestFederation;

fn case() -> w::CreateCaseRequest {
    w::CreateCaseRequest {
        person: Some(w::Person {
            given_name: "Ana".into(),
            gender: w::Gender::Female as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn roles_that_may_not_act_are_refused_with_permission_denied() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let created = sp.create_case(case()).await?.into_inner();

    for role in [Role::JudicialAuthority, Role::Operator] {
        let mut c = fed.referrals("AT", role).await?;
        let err = c
            .create_case(case())
            .await
            .expect_err("may not create cases");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
        let err = c
            .get_case(w::GetCaseRequest {
                case_id: created.case_id.clone(),
            })
            .await
            .expect_err("may not read victim records");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
        assert_eq!(
            c.list_cases(w::ListCasesRequest::default())
                .await
                .expect_err("list")
                .code(),
            Code::PermissionDenied
        );
    }
    // Only a focal point answers a referral; only an operator uses the admin port.
    let err = sp
        .respond_to_referral(w::RespondToReferralRequest {
            referral_id: uuid::Uuid::now_v7().to_string(),
            decision: w::ReferralDecision::Accept as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("service provider answering");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut admin_as_fp = fed.admin("AT", Role::FocalPoint).await?;
    assert_eq!(
        admin_as_fp
            .status(w::StatusRequest {})
            .await
            .expect_err("admin")
            .code(),
        Code::PermissionDenied
    );
    let mut admin = fed.admin("AT", Role::Operator).await?;
    assert_eq!(
        admin
            .status(w::StatusRequest {})
            .await?
            .into_inner()
            .node_id,
        "AT"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn service_providers_see_only_their_own_organisation_and_issued_certificates_work(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp1 = fed.referrals("AT", Role::ServiceProvider).await?;
    let mine = sp1.create_case(case()).await?.into_inner();
    assert_eq!(mine.organisation, "sp1");

    // A second organisation, with a certificate from `trmctl client issue`.
    let mut sp2 = fed.referrals_of_org("AT", "sp2").await?;
    let theirs = sp2.create_case(case()).await?.into_inner();
    assert_eq!(theirs.organisation, "sp2");

    let err = sp2
        .get_case(w::GetCaseRequest {
            case_id: mine.case_id.clone(),
        })
        .await
        .expect_err("other org");
    assert_eq!(err.code(), Code::PermissionDenied);
    let listed = sp2
        .list_cases(w::ListCasesRequest::default())
        .await?
        .into_inner()
        .cases;
    assert_eq!(
        listed
            .iter()
            .map(|c| c.case_id.as_str())
            .collect::<Vec<_>>(),
        vec![theirs.case_id.as_str()]
    );
    let err = sp2
        .record_consent(w::RecordConsentRequest {
            case_id: mine.case_id.clone(),
            purposes: vec![w::Purpose::ReferralAssistance as i32],
            recipients: vec!["RO".into()],
            informed: true,
            information_language: "en".into(),
            ..Default::default()
        })
        .await
        .expect_err("consent on another org's case");
    assert_eq!(err.code(), Code::PermissionDenied);

    // The focal point sees the whole node.
    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    assert_eq!(
        fp.list_cases(w::ListCasesRequest::default())
            .await?
            .into_inner()
            .cases
            .len(),
        2
    );
    fed.stop().await?;
    Ok(())
}

/// A provider submitting a referral of another organisation's case learns nothing of it:
/// not that it exists, nor that it was referred, nor the referral's id.
#[tokio::test]
async fn a_referral_of_another_organisations_case_is_refused_before_anything_about_it_is_said(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let sp1 = fed.referrals("AT", Role::ServiceProvider).await?;
    let mine = sp1.clone().create_case(case()).await?.into_inner().case_id;
    let referral_id = trm_tests::refer_case(&sp1, &mine, "RO").await?;
    let mut sp2 = fed.referrals_of_org("AT", "sp2").await?;
    let err = sp2
        .submit_referral(w::SubmitReferralRequest {
            case_id: mine.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await
        .expect_err("another organisation's case");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(!err.message().contains(&referral_id), "{}", err.message());
    fed.stop().await?;
    Ok(())
}
