//! A case over time (DESIGN.md, "Cases over time"): its consents listed with the withdrawn
//! ones, identification decisions and the reflection period they start, residence status,
//! and the immigration authority that records it.

use time::{Duration, OffsetDateTime};
use tonic::{transport::Channel, Code};
use trm_core::{ids::Role, model::format_date};
use trm_proto::v1::{
    self as w, referral_service_client::ReferralServiceClient,
    witness_hearing_service_client::WitnessHearingServiceClient,
};
use trm_tests::{requests, TestFederation};

use crate::returns::{propose, ready_case, returns};

type Referrals = ReferralServiceClient<Channel>;

/// The day `n` days ago (negative: ahead), as the contract writes dates.
fn days_ago(n: i64) -> String {
    format_date(OffsetDateTime::now_utc().date() - Duration::days(n))
}

async fn get(c: &mut Referrals, case_id: &str) -> anyhow::Result<w::Case> {
    Ok(c.get_case(w::GetCaseRequest {
        case_id: case_id.into(),
    })
    .await?
    .into_inner())
}

fn list(case_id: &str, page_size: i32, page_token: &str) -> w::ListConsentsRequest {
    w::ListConsentsRequest {
        case_id: case_id.into(),
        page_size,
        page_token: page_token.into(),
    }
}

fn identification(
    case_id: &str,
    stage: w::IdentificationStage,
    on: &str,
) -> w::RecordIdentificationRequest {
    w::RecordIdentificationRequest {
        case_id: case_id.into(),
        stage: stage as i32,
        decided_on: on.into(),
        ..Default::default()
    }
}

fn residence(
    case_id: &str,
    status: w::ResidenceStatus,
    valid_until: &str,
) -> w::RecordResidenceStatusRequest {
    w::RecordResidenceStatusRequest {
        case_id: case_id.into(),
        status: status as i32,
        valid_until: valid_until.into(),
        ..Default::default()
    }
}

/// Asserts that a call was refused PERMISSION_DENIED.
fn denied<T>(answer: Result<T, tonic::Status>, what: &str) {
    match answer {
        Ok(_) => panic!("{what} answered to an immigration authority"),
        Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{what}"),
    }
}

#[tokio::test]
async fn a_case_lists_its_consents_withdrawn_ones_included_to_its_readers_only(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .create_case(requests::case("Irina", 3))
        .await?
        .into_inner()
        .case_id;
    let referral = sp
        .record_consent(requests::consent(
            &case_id,
            &[w::Purpose::ReferralAssistance],
            &["RO"],
            &[],
        ))
        .await?
        .into_inner();
    let ret = sp
        .record_consent(requests::consent(
            &case_id,
            &[w::Purpose::ReturnPlanning],
            &["RO"],
            &[],
        ))
        .await?
        .into_inner();
    sp.withdraw_consent(w::WithdrawConsentRequest {
        case_id: case_id.clone(),
        consent_id: referral.consent_id.clone(),
        ..Default::default()
    })
    .await?;

    let listed = sp.list_consents(list(&case_id, 0, "")).await?.into_inner();
    let ids: Vec<&str> = listed
        .consents
        .iter()
        .map(|c| c.consent_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [&referral.consent_id, &ret.consent_id],
        "in the order recorded"
    );
    assert!(
        listed.consents[0].withdrawn_at.is_some(),
        "withdrawn, still listed"
    );
    assert!(listed.consents[1].withdrawn_at.is_none());
    assert!(listed.next_page_token.is_empty());
    // The case carries the same consents, and so does its focal point's view.
    assert_eq!(get(&mut sp, &case_id).await?.consents, listed.consents);
    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    assert_eq!(get(&mut fp, &case_id).await?.consents, listed.consents);
    assert_eq!(
        fp.list_consents(list(&case_id, 0, "")).await?.into_inner(),
        listed
    );

    // A page at a time.
    let first = sp.list_consents(list(&case_id, 1, "")).await?.into_inner();
    assert_eq!(first.consents, listed.consents[..1]);
    assert_eq!(first.next_page_token, referral.consent_id);
    let second = sp
        .list_consents(list(&case_id, 1, &first.next_page_token))
        .await?
        .into_inner();
    assert_eq!(second.consents, listed.consents[1..]);
    assert!(second.next_page_token.is_empty());
    let err = sp
        .list_consents(list(&case_id, 1, &case_id))
        .await
        .expect_err("a token of no consent of this case");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{}", err.message());

    // Another organisation's provider, and roles that never read victim records.
    let mut sp2 = fed.referrals_of_org("AT", "sp2").await?;
    let err = sp2
        .list_consents(list(&case_id, 0, ""))
        .await
        .expect_err("another organisation's case");
    assert_eq!(err.code(), Code::PermissionDenied);
    for role in [
        Role::JudicialAuthority,
        Role::Operator,
        Role::ImmigrationAuthority,
    ] {
        let mut c = fed.referrals("AT", role).await?;
        let err = c
            .list_consents(list(&case_id, 0, ""))
            .await
            .expect_err("never reads victim records");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
    }
    let err = sp
        .list_consents(list(&uuid::Uuid::now_v7().to_string(), 0, ""))
        .await
        .expect_err("no such case");
    assert_eq!(err.code(), Code::NotFound);

    // Each read audited by ids: the case, and the consents it showed.
    let reads = fed.audited("AT", "consent.list").await?;
    assert_eq!(reads.len(), 4, "{reads:?}");
    assert!(reads.iter().all(|e| e.subject == case_id));
    assert_eq!(
        reads[0].detail,
        format!("{},{}", referral.consent_id, ret.consent_id)
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn identification_decisions_are_shown_and_reasonable_grounds_start_the_reflection_period(
) -> anyhow::Result<()> {
    use w::IdentificationStage as S;
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    let case = sp
        .create_case(requests::case("Daria", 20))
        .await?
        .into_inner();
    let case_id = case.case_id.clone();
    // The node's period is 30 days, from the day of identification.
    assert_eq!(case.reflection_period_ends_on, days_ago(20 - 30));
    assert_eq!(case.identification, None);

    let presumed = sp
        .record_identification(identification(&case_id, S::Presumed, &days_ago(18)))
        .await?
        .into_inner();
    assert_eq!(
        presumed.identification,
        Some(w::Identification {
            stage: S::Presumed as i32,
            decided_on: days_ago(18),
            organisation: "sp1".into(),
        })
    );
    assert_eq!(presumed.reflection_period_ends_on, days_ago(20 - 30));
    assert_eq!(
        presumed.person.map(|p| p.given_name).as_deref(),
        Some("Daria"),
        "its owner sees the whole case"
    );

    let grounds = fp
        .record_identification(identification(
            &case_id,
            S::ReasonableGrounds,
            &days_ago(10),
        ))
        .await?
        .into_inner();
    assert_eq!(
        grounds.identification.as_ref().map(|i| i.stage),
        Some(S::ReasonableGrounds as i32)
    );
    assert_eq!(
        grounds
            .identification
            .as_ref()
            .map(|i| i.organisation.as_str()),
        Some("nfp")
    );
    assert_eq!(
        grounds.reflection_period_ends_on,
        days_ago(10 - 30),
        "the period runs from the reasonable-grounds decision"
    );

    let conclusive = sp
        .record_identification(identification(&case_id, S::Conclusive, &days_ago(1)))
        .await?
        .into_inner();
    assert_eq!(
        conclusive.identification.as_ref().map(|i| i.stage),
        Some(S::Conclusive as i32)
    );
    assert_eq!(
        conclusive.reflection_period_ends_on,
        days_ago(10 - 30),
        "a later stage does not move the start"
    );
    assert_eq!(get(&mut fp, &case_id).await?, conclusive);

    // Refused, naming the field, and nothing changes.
    let refused = [
        (
            identification(&case_id, S::NotIdentified, &days_ago(-1)),
            "decided_on",
        ),
        (identification(&case_id, S::NotIdentified, ""), "decided_on"),
        (
            identification(&case_id, S::Unspecified, &days_ago(1)),
            "stage",
        ),
    ];
    for (request, field) in refused {
        let err = sp
            .record_identification(request)
            .await
            .expect_err("a bad identification");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    assert_eq!(get(&mut sp, &case_id).await?, conclusive);

    // Another organisation's provider, and roles that may not record it.
    let mut sp2 = fed.referrals_of_org("AT", "sp2").await?;
    let err = sp2
        .record_identification(identification(&case_id, S::Conclusive, &days_ago(1)))
        .await
        .expect_err("another organisation's case");
    assert_eq!(err.code(), Code::PermissionDenied);
    for role in [Role::ImmigrationAuthority, Role::JudicialAuthority] {
        let mut c = fed.referrals("AT", role).await?;
        let err = c
            .record_identification(identification(&case_id, S::Conclusive, &days_ago(1)))
            .await
            .expect_err("may not record identification");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
    }

    // Audited with field names and the case id only.
    let entries = fed.audited("AT", "case.identification").await?;
    assert_eq!(entries.len(), 3);
    for e in &entries {
        assert_eq!(e.subject, case_id);
        assert_eq!(e.detail, "fields=stage,decided_on");
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_immigration_authority_records_residence_and_reads_return_plans_but_never_a_case(
) -> anyhow::Result<()> {
    use w::ResidenceStatus as R;
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut rp = returns(&fed, "AT", Role::ServiceProvider).await?;
    let case_id = ready_case(&mut sp, &mut rp, &[]).await?;
    let plan = rp.propose_return(propose(&case_id)).await?.into_inner();

    let mut ia = fed.referrals("AT", Role::ImmigrationAuthority).await?;
    let until = days_ago(-200);
    let shown = ia
        .record_residence_status(residence(&case_id, R::TemporaryPermit, &until))
        .await?
        .into_inner();
    let recorded = shown.residence.clone().expect("residence recorded");
    assert_eq!(
        (recorded.status, recorded.valid_until.as_str()),
        (R::TemporaryPermit as i32, until.as_str())
    );
    assert!(recorded.recorded_at.is_some());
    // The authority gets the case's status back, never the victim's data.
    assert_eq!(shown.case_id, case_id);
    assert!(shown.person.is_none() && shown.needs.is_none() && shown.exploitation.is_none());
    assert!(shown.child.is_none() && shown.consents.is_empty());

    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    let seen = get(&mut fp, &case_id).await?;
    assert_eq!(seen.residence, Some(recorded.clone()), "valid_until kept");
    assert_eq!(get(&mut sp, &case_id).await?.residence, Some(recorded));
    let asylum = fp
        .record_residence_status(residence(&case_id, R::AsylumPending, ""))
        .await?
        .into_inner();
    let now = asylum.residence.expect("residence recorded");
    assert_eq!(
        (now.status, now.valid_until.as_str()),
        (R::AsylumPending as i32, "")
    );
    assert!(asylum.person.is_some(), "a focal point sees the whole case");

    // Refused, naming the field; and not the service provider's to record.
    for (request, field) in [
        (residence(&case_id, R::Unspecified, ""), "status"),
        (residence(&case_id, R::Refugee, "31.12.2030"), "valid_until"),
    ] {
        let err = ia
            .record_residence_status(request)
            .await
            .expect_err("bad residence");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = sp
        .record_residence_status(residence(&case_id, R::None, ""))
        .await
        .expect_err("a service provider");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ia
        .record_residence_status(residence(&uuid::Uuid::now_v7().to_string(), R::None, ""))
        .await
        .expect_err("no such case");
    assert_eq!(err.code(), Code::NotFound);

    // It reads every return plan of the node...
    let mut ia_returns = returns(&fed, "AT", Role::ImmigrationAuthority).await?;
    let read = ia_returns
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: plan.return_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (read.return_id.as_str(), read.destination.as_str()),
        (plan.return_id.as_str(), "RO")
    );
    let listed = ia_returns
        .list_return_plans(w::ListReturnPlansRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.return_plans.len(), 1);

    // ...but never a case, its consents, a referral or a hearing.
    denied(
        ia.get_case(w::GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await,
        "GetCase",
    );
    denied(
        ia.list_cases(w::ListCasesRequest::default()).await,
        "ListCases",
    );
    denied(
        ia.list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await,
        "ListReferrals",
    );
    let mut ia_hearings = WitnessHearingServiceClient::new(
        fed.channel("AT", Role::ImmigrationAuthority, false).await?,
    );
    denied(
        ia_hearings
            .list_hearings(w::ListHearingsRequest {
                direction: w::Direction::Outgoing as i32,
                ..Default::default()
            })
            .await,
        "ListHearings",
    );

    // Audited with field names and the case id only; asylum pending halted the open plan.
    let entries = fed.audited("AT", "case.residence").await?;
    let details: Vec<&str> = entries.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "fields=status,valid_until returns_halted=0",
            "fields=status returns_halted=1"
        ]
    );
    assert_eq!(
        entries[0].actor, "client:immigration_authority/immigration",
        "who recorded it"
    );
    fed.stop().await?;
    Ok(())
}

/// DESIGN.md's role table: an immigration authority reads what crossed for travel
/// documents, never the victim's needs or exploitation.
#[tokio::test]
async fn the_immigration_authority_sees_no_needs_or_exploitation_in_a_return_plan(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut rp = returns(&fed, "AT", Role::ServiceProvider).await?;
    let case_id = ready_case(&mut sp, &mut rp, &[]).await?;
    let plan = rp.propose_return(propose(&case_id)).await?.into_inner();
    let mine = plan.disclosed.clone().expect("disclosed");
    assert!(mine.needs.is_some(), "the plan carries needs");
    let mut ia = returns(&fed, "AT", Role::ImmigrationAuthority).await?;
    let read = ia
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: plan.return_id,
        })
        .await?
        .into_inner();
    let seen = read.disclosed.expect("disclosed");
    assert!(seen.needs.is_none() && seen.exploitation.is_none());
    assert_eq!(
        seen.identity, mine.identity,
        "what crossed for travel documents"
    );
    fed.stop().await?;
    Ok(())
}
