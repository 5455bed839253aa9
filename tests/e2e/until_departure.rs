//! The return guards hold until the day of departure, not only when a return is requested:
//! a risk found later halts the plan on both nodes, a decision made before the latest risk
//! assessment does not let the person leave, a decision taken back halts the plan, and a
//! protection status halts it and refuses a new one.

use tonic::Code;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::TestFederation;

use crate::returns::{decision, propose, ready_case, returns, risk, wait_status, Returns};

/// A plan AT requested for a ready case, with reception confirmed by RO. Returns the case
/// id, the plan id and both nodes' clients.
async fn confirmed_plan(
    fed: &TestFederation,
) -> anyhow::Result<(String, String, Returns, Returns)> {
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = returns(fed, "AT", Role::ServiceProvider).await?;
    let mut ro = returns(fed, "RO", Role::FocalPoint).await?;
    let case_id = ready_case(&mut sp, &mut at, &[]).await?;
    let id = at
        .propose_return(propose(&case_id))
        .await?
        .into_inner()
        .return_id;
    wait_status(&ro, &id, w::ReturnStatus::Requested).await?;
    ro.respond_to_return(w::RespondToReturnRequest {
        return_id: id.clone(),
        response: w::ReturnResponse::ConfirmReception as i32,
        details: "met at the airport by the shelter".into(),
        ..Default::default()
    })
    .await?;
    wait_status(&at, &id, w::ReturnStatus::ReceptionConfirmed).await?;
    Ok((case_id, id, at, ro))
}

fn schedule(id: &str) -> w::ScheduleReturnRequest {
    w::ScheduleReturnRequest {
        return_id: id.into(),
        travel_at: Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 0,
        }),
        details: "flight".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_risk_found_after_the_request_halts_the_plan_on_both_nodes() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, id, mut at, ro) = confirmed_plan(&fed).await?;

    at.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, true, false, false))
        .await?;
    let here = wait_status(&at, &id, w::ReturnStatus::Halted).await?;
    assert_eq!(
        here.status_reason, "non_refoulement",
        "the guard's word is the reason, and nothing of why"
    );
    let there = wait_status(&ro, &id, w::ReturnStatus::Halted).await?;
    assert_eq!(there.status_reason, "non_refoulement");
    let refused = at.schedule_return(schedule(&id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_decision_older_than_the_latest_risk_assessment_does_not_let_the_person_leave(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, id, mut at, ro) = confirmed_plan(&fed).await?;

    // A routine reassessment finds nothing: the plan stays, but the victim decides again.
    at.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, false, false, false))
        .await?;
    let refused = at.schedule_return(schedule(&id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("decision"),
        "{}",
        refused.message()
    );
    let plan = at
        .get_return_plan(w::GetReturnPlanRequest {
            return_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(plan.status, w::ReturnStatus::ReceptionConfirmed as i32);

    at.record_return_decision(decision(&case_id, false)).await?;
    at.schedule_return(schedule(&id)).await?;
    wait_status(&ro, &id, w::ReturnStatus::Scheduled).await?;

    // Taken back before departure: the plan halts on both nodes and cannot travel.
    let mut no = decision(&case_id, false);
    no.voluntary = false;
    at.record_return_decision(no).await?;
    let here = wait_status(&at, &id, w::ReturnStatus::Halted).await?;
    assert_eq!(here.status_reason, "decision");
    wait_status(&ro, &id, w::ReturnStatus::Halted).await?;
    let travel = at
        .record_travel(w::RecordTravelRequest {
            return_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(travel.code(), Code::FailedPrecondition);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_protection_status_halts_the_return_and_refuses_a_new_one() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, id, mut at, ro) = confirmed_plan(&fed).await?;

    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    fp.record_residence_status(w::RecordResidenceStatusRequest {
        case_id: case_id.clone(),
        status: w::ResidenceStatus::AsylumPending as i32,
        ..Default::default()
    })
    .await?;
    let here = wait_status(&at, &id, w::ReturnStatus::Halted).await?;
    let there = wait_status(&ro, &id, w::ReturnStatus::Halted).await?;
    assert_eq!(
        (here.status_reason.as_str(), there.status_reason.as_str()),
        ("non_refoulement", "non_refoulement"),
        "the country of return learns of no asylum claim"
    );
    let refused = at.propose_return(propose(&case_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("non_refoulement"),
        "{}",
        refused.message()
    );
    fed.stop().await?;
    Ok(())
}

/// However long a case runs, a new risk assessment or a decision taken back is always
/// recorded and acted on: the case keeps the latest ones (the guards read the latest), never
/// refusing the new one because it holds many.
#[tokio::test]
async fn a_case_with_many_assessments_and_decisions_still_takes_the_one_that_stops_a_return(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, id, mut at, ro) = confirmed_plan(&fed).await?;
    let most = trm_core::limits::MAX_ITEMS;
    for _ in 1..most {
        at.record_return_decision(decision(&case_id, false)).await?;
    }
    let mut taken_back = decision(&case_id, false);
    taken_back.voluntary = false;
    at.record_return_decision(taken_back).await?;
    wait_status(&at, &id, w::ReturnStatus::Halted).await?;
    wait_status(&ro, &id, w::ReturnStatus::Halted).await?;

    for _ in 1..most {
        at.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, false, false, false))
            .await?;
    }
    at.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, true, false, false))
        .await?;
    at.record_return_decision(decision(&case_id, false)).await?;
    let refused = at.propose_return(propose(&case_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().starts_with("non_refoulement"),
        "the latest assessment decides: {}",
        refused.message()
    );
    fed.stop().await?;
    Ok(())
}

/// A plan scheduled on a consent given after it was requested (the first one having
/// lapsed) relies on that consent from then on: withdrawing it halts the plan and erases
/// the copy, as withdrawing the first one would have.
#[tokio::test]
async fn a_plan_that_came_to_rely_on_a_later_consent_stops_when_it_is_withdrawn(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, id, _, ro) = confirmed_plan(&fed).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let later = sp
        .record_consent(trm_tests::requests::consent(
            &case_id,
            &[w::Purpose::ReturnPlanning],
            &["RO"],
            &[],
        ))
        .await?
        .into_inner()
        .consent_id;
    // The consent the plan was requested under lapses.
    fed.stop_node("AT").await?;
    let store = trm_tests::open_store(&fed, "AT")?;
    let case = trm_core::ids::CaseId::from_uuid(uuid::Uuid::parse_str(&case_id)?);
    let yesterday = time::OffsetDateTime::now_utc().date() - time::Duration::days(1);
    let keep = later.clone();
    tokio::task::spawn_blocking(move || {
        store
            .commit_blocking::<(), (), _>(move |tx| {
                let mut consents = tx.consents(case)?;
                for c in consents
                    .iter_mut()
                    .filter(|c| c.consent_id.to_string() != keep)
                {
                    c.expires_on = Some(yesterday);
                }
                tx.put_consents(case, &consents)?;
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{:?}", e.into_store()))?;
        store.close()?;
        anyhow::Ok(())
    })
    .await??;
    fed.start_node("AT").await?;

    let mut at = returns(&fed, "AT", Role::ServiceProvider).await?;
    at.schedule_return(schedule(&id)).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.withdraw_consent(w::WithdrawConsentRequest {
        case_id: case_id.clone(),
        consent_id: later.clone(),
        ..Default::default()
    })
    .await?;
    wait_status(&at, &id, w::ReturnStatus::Halted).await?;
    wait_status(&ro, &id, w::ReturnStatus::Halted).await?;
    fed.stop().await?;
    Ok(())
}

/// The person's departure and a concern raised by the country of return cross in transit:
/// both nodes end with the plan travelled (the person left), and the concern reaches the
/// requesting node with the plan, rather than each node refusing the other's step for good.
#[tokio::test]
async fn a_departure_and_a_concern_that_cross_leave_both_nodes_agreeing() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (_, id, mut at, _) = confirmed_plan(&fed).await?;
    at.schedule_return(schedule(&id)).await?;
    let ro = returns(&fed, "RO", Role::FocalPoint).await?;
    wait_status(&ro, &id, w::ReturnStatus::Scheduled).await?;
    // AT records the departure while RO is away; RO raises a concern while AT is away.
    fed.stop_node("RO").await?;
    at.record_travel(w::RecordTravelRequest {
        return_id: id.clone(),
        ..Default::default()
    })
    .await?;
    fed.stop_node("AT").await?;
    fed.start_node("RO").await?;
    let mut ro = returns(&fed, "RO", Role::FocalPoint).await?;
    ro.respond_to_return(w::RespondToReturnRequest {
        return_id: id.clone(),
        response: w::ReturnResponse::RaiseConcern as i32,
        details: "no shelter place after all".into(),
        ..Default::default()
    })
    .await?;
    fed.start_node("AT").await?;
    let at = returns(&fed, "AT", Role::ServiceProvider).await?;
    let here = crate::returns::plan_where(&at, &id, "AT", |p| {
        p.status_reason.contains("no shelter place")
    })
    .await?;
    assert_eq!(here.status, w::ReturnStatus::Travelled as i32, "{here:?}");
    let there = wait_status(&ro, &id, w::ReturnStatus::Travelled).await?;
    assert!(
        there.status_reason.contains("no shelter place"),
        "{there:?}"
    );
    fed.stop().await?;
    Ok(())
}
