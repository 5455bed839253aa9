//! Return planning across two nodes: AT (where the victim is) and RO (country of return).

use tonic::{transport::Channel, Code};
use trm_core::ids::Role;
use trm_proto::v1::{
    self as w, referral_service_client::ReferralServiceClient,
    return_planning_service_client::ReturnPlanningServiceClient,
};
use trm_tests::{eventually, requests, TestFederation};

pub(crate) type Returns = ReturnPlanningServiceClient<Channel>;

pub(crate) async fn returns(
    fed: &TestFederation,
    node: &str,
    role: Role,
) -> anyhow::Result<Returns> {
    fed.returns(node, role).await
}

pub(crate) fn risk(
    case_id: &str,
    level: w::RiskLevel,
    nr: bool,
    rt: bool,
    fam: bool,
) -> w::RecordRiskAssessmentRequest {
    w::RecordRiskAssessmentRequest {
        case_id: case_id.into(),
        level: level as i32,
        non_refoulement_concern: nr,
        retrafficking_risk: rt,
        family_at_risk: fam,
        factors: vec!["family contacted".into()],
        ..Default::default()
    }
}

pub(crate) fn decision(case_id: &str, waived: bool) -> w::RecordReturnDecisionRequest {
    w::RecordReturnDecisionRequest {
        case_id: case_id.into(),
        voluntary: true,
        informed: true,
        reflection_period_waived: waived,
        ..Default::default()
    }
}

pub(crate) fn propose(case_id: &str) -> w::ProposeReturnRequest {
    w::ProposeReturnRequest {
        case_id: case_id.into(),
        destination: "RO".into(),
        hearing_pending: true,
        compensation_pending: true,
        ..Default::default()
    }
}

async fn refused_by(rp: &mut Returns, case_id: &str) -> String {
    match rp.propose_return(propose(case_id)).await {
        Ok(_) => "accepted".into(),
        Err(s) => {
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            s.message().split(':').next().unwrap_or_default().to_owned()
        }
    }
}

/// Waits until the other node's copy of `id` has `status`.
pub(crate) async fn wait_status(
    rp: &Returns,
    id: &str,
    status: w::ReturnStatus,
) -> anyhow::Result<w::ReturnPlan> {
    plan_where(rp, id, &format!("return plan {status:?}"), |r| {
        r.status == status as i32
    })
    .await
}

/// Waits until `rp`'s node holds return plan `id` for which `done` holds; returns it.
pub(crate) async fn plan_where(
    rp: &Returns,
    id: &str,
    what: &str,
    done: impl Fn(&w::ReturnPlan) -> bool,
) -> anyhow::Result<w::ReturnPlan> {
    eventually(what, || {
        let mut rp = rp.clone();
        let id = id.to_owned();
        let done = &done;
        async move {
            let r = rp
                .get_return_plan(w::GetReturnPlanRequest { return_id: id })
                .await;
            Ok(r.ok().map(|r| r.into_inner()).filter(|r| done(r)))
        }
    })
    .await
}

async fn sp_case(sp: &mut ReferralServiceClient<Channel>, days_ago: i64) -> anyhow::Result<String> {
    Ok(sp
        .create_case(requests::case("Elena", days_ago))
        .await?
        .into_inner()
        .case_id)
}

#[tokio::test]
async fn every_guard_is_refused_by_name_until_the_return_may_be_requested() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut rp = returns(&fed, "AT", Role::ServiceProvider).await?;
    let case_id = sp_case(&mut sp, 3).await?;

    assert_eq!(refused_by(&mut rp, &case_id).await, "risk");
    for (r, guard) in [
        (
            risk(&case_id, w::RiskLevel::Low, true, false, false),
            "non_refoulement",
        ),
        (
            risk(&case_id, w::RiskLevel::Low, false, true, false),
            "risk",
        ),
        (
            risk(&case_id, w::RiskLevel::Low, false, false, true),
            "risk",
        ),
        (
            risk(&case_id, w::RiskLevel::High, false, false, false),
            "risk",
        ),
    ] {
        rp.record_risk_assessment(r).await?;
        assert_eq!(refused_by(&mut rp, &case_id).await, guard);
    }
    // A newer assessment clears it.
    rp.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, false, false, false))
        .await?;
    assert_eq!(refused_by(&mut rp, &case_id).await, "decision");
    rp.record_return_decision(w::RecordReturnDecisionRequest {
        case_id: case_id.clone(),
        voluntary: false,
        informed: true,
        reflection_period_waived: true,
        ..Default::default()
    })
    .await?;
    assert_eq!(refused_by(&mut rp, &case_id).await, "decision");
    rp.record_return_decision(decision(&case_id, false)).await?;
    // Identified 3 days ago: the 30-day reflection period runs.
    assert_eq!(refused_by(&mut rp, &case_id).await, "reflection_period");
    rp.record_return_decision(decision(&case_id, true)).await?;
    assert_eq!(refused_by(&mut rp, &case_id).await, "consent");
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::ReturnPlanning],
        &["RO"],
        &[],
    ))
    .await?;

    // Nothing was created or sent by the refusals.
    let out = rp
        .list_return_plans(w::ListReturnPlansRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(out.return_plans.is_empty());
    let mut admin = fed.admin("AT", Role::Operator).await?;
    assert_eq!(
        admin
            .status(w::StatusRequest {})
            .await?
            .into_inner()
            .outbox_depth,
        0
    );

    let plan = rp.propose_return(propose(&case_id)).await?.into_inner();
    assert_eq!(plan.status, w::ReturnStatus::Requested as i32);

    // A child: best-interests determination and guardian first (reflection period over).
    let mut child = requests::case("Ana", 60);
    child.child = Some(w::ChildInfo {
        is_child: true,
        guardian_assigned: false,
        best_interests_determined: false,
    });
    let child_id = sp.create_case(child).await?.into_inner().case_id;
    rp.record_risk_assessment(risk(&child_id, w::RiskLevel::Low, false, false, false))
        .await?;
    rp.record_return_decision(decision(&child_id, false))
        .await?;
    assert_eq!(refused_by(&mut rp, &child_id).await, "best_interests");
    let mut child = requests::case("Ana", 60);
    child.child = Some(w::ChildInfo {
        is_child: true,
        guardian_assigned: false,
        best_interests_determined: true,
    });
    let child_id = sp.create_case(child).await?.into_inner().case_id;
    rp.record_risk_assessment(risk(&child_id, w::RiskLevel::Low, false, false, false))
        .await?;
    rp.record_return_decision(decision(&child_id, false))
        .await?;
    assert_eq!(refused_by(&mut rp, &child_id).await, "guardian");
    fed.stop().await?;
    Ok(())
}

/// A case in AT whose return to RO passes every guard, with the given consent categories.
pub(crate) async fn ready_case(
    sp: &mut ReferralServiceClient<Channel>,
    rp: &mut Returns,
    categories: &[w::DataCategory],
) -> anyhow::Result<String> {
    let case_id = sp_case(sp, 45).await?;
    make_ready(sp, rp, &case_id, categories).await?;
    Ok(case_id)
}

/// Records what a return of `case_id` to RO asks for: a low-risk assessment, the victim's
/// decision, and consent to return planning with the given categories.
pub(crate) async fn make_ready(
    sp: &mut ReferralServiceClient<Channel>,
    rp: &mut Returns,
    case_id: &str,
    categories: &[w::DataCategory],
) -> anyhow::Result<()> {
    rp.record_risk_assessment(risk(case_id, w::RiskLevel::Low, false, false, false))
        .await?;
    rp.record_return_decision(decision(case_id, false)).await?;
    sp.record_consent(requests::consent(
        case_id,
        &[w::Purpose::ReturnPlanning],
        &["RO"],
        categories,
    ))
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_return_runs_its_whole_path_across_two_nodes_through_a_concern() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = returns(&fed, "AT", Role::ServiceProvider).await?;
    let mut ro = returns(&fed, "RO", Role::FocalPoint).await?;
    let case_id = ready_case(&mut sp, &mut at, &[]).await?;
    let id = at
        .propose_return(propose(&case_id))
        .await?
        .into_inner()
        .return_id;

    let arrived = wait_status(&ro, &id, w::ReturnStatus::Requested).await?;
    assert!(
        !arrived.hearing_pending && !arrived.compensation_pending,
        "coordination flags are derived (no hearing, no claim open), never typed in"
    );
    let respond = |response: w::ReturnResponse, details: &str| w::RespondToReturnRequest {
        return_id: id.clone(),
        response: response as i32,
        details: details.into(),
        ..Default::default()
    };

    ro.respond_to_return(respond(
        w::ReturnResponse::RaiseConcern,
        "shelter in Iasi is full",
    ))
    .await?;
    let at_view = wait_status(&at, &id, w::ReturnStatus::ConcernRaised).await?;
    assert_eq!(at_view.status_reason, "shelter in Iasi is full");
    let err = at
        .schedule_return(w::ScheduleReturnRequest {
            return_id: id.clone(),
            travel_at: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
            details: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("a concern halts the plan");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("concern_raised"),
        "{}",
        err.message()
    );

    ro.resolve_concern(w::ResolveConcernRequest {
        return_id: id.clone(),
        details: "place found in Bacau".into(),
        ..Default::default()
    })
    .await?;
    wait_status(&at, &id, w::ReturnStatus::Requested).await?;
    ro.respond_to_return(respond(
        w::ReturnResponse::ConfirmReception,
        "NGO Reintegra meets her at OTP arrivals",
    ))
    .await?;
    let at_view = wait_status(&at, &id, w::ReturnStatus::ReceptionConfirmed).await?;
    assert_eq!(
        at_view.reception_details,
        "NGO Reintegra meets her at OTP arrivals"
    );

    let travel_at = prost_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 0,
    };
    at.schedule_return(w::ScheduleReturnRequest {
        return_id: id.clone(),
        travel_at: Some(travel_at),
        details: "flight OS 791".into(),
        ..Default::default()
    })
    .await?;
    let ro_view = wait_status(&ro, &id, w::ReturnStatus::Scheduled).await?;
    assert_eq!(ro_view.travel_at, Some(travel_at));
    assert_eq!(ro_view.travel_details, "flight OS 791");
    at.record_travel(w::RecordTravelRequest {
        return_id: id.clone(),
        ..Default::default()
    })
    .await?;
    wait_status(&ro, &id, w::ReturnStatus::Travelled).await?;
    // Only the country of return confirms arrival.
    let err = at
        .confirm_arrival(w::ConfirmArrivalRequest {
            return_id: id.clone(),
            details: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("wrong side");
    assert_eq!(err.code(), Code::PermissionDenied);
    ro.confirm_arrival(w::ConfirmArrivalRequest {
        return_id: id.clone(),
        details: "met at the airport".into(),
        ..Default::default()
    })
    .await?;
    wait_status(&at, &id, w::ReturnStatus::Arrived).await?;
    for notes in ["week 1: settled", "month 1: vocational training"] {
        ro.record_follow_up(w::RecordFollowUpRequest {
            return_id: id.clone(),
            notes: notes.into(),
            ..Default::default()
        })
        .await?;
    }
    let at_view = eventually("both follow-ups", || {
        let mut at = at.clone();
        let id = id.clone();
        async move {
            let r = at
                .get_return_plan(w::GetReturnPlanRequest { return_id: id })
                .await?
                .into_inner();
            Ok((r.follow_ups.len() == 2).then_some(r))
        }
    })
    .await?;
    assert_eq!(at_view.follow_ups[1].notes, "month 1: vocational training");
    at.close_return(w::CloseReturnRequest {
        return_id: id.clone(),
        reason: "reintegration completed".into(),
        ..Default::default()
    })
    .await?;
    let ro_view = wait_status(&ro, &id, w::ReturnStatus::Closed).await?;
    assert_eq!(ro_view.status_reason, "reintegration completed");
    assert_eq!(
        (ro_view.hearing_pending, ro_view.compensation_pending),
        (arrived.hearing_pending, arrived.compensation_pending),
        "closing a return changes no coordination flag"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_halted_plan_sends_nothing_further() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = returns(&fed, "AT", Role::ServiceProvider).await?;
    let mut ro = returns(&fed, "RO", Role::FocalPoint).await?;
    let case_id = ready_case(&mut sp, &mut at, &[]).await?;
    let id = at
        .propose_return(propose(&case_id))
        .await?
        .into_inner()
        .return_id;
    wait_status(&ro, &id, w::ReturnStatus::Requested).await?;
    ro.halt_return(w::HaltReturnRequest {
        return_id: id.clone(),
        reason: "threats against the family".into(),
        ..Default::default()
    })
    .await?;
    let at_view = wait_status(&at, &id, w::ReturnStatus::Halted).await?;
    assert_eq!(at_view.status_reason, "threats against the family");

    let mut admin_at = fed.admin("AT", Role::Operator).await?;
    let mut admin_ro = fed.admin("RO", Role::Operator).await?;
    let depth = |s: w::StatusResponse| s.outbox_depth;
    eventually("RO's outbox to drain", || {
        let mut a = admin_ro.clone();
        async move {
            Ok((a
                .status(w::StatusRequest {})
                .await?
                .into_inner()
                .outbox_depth
                == 0)
                .then_some(()))
        }
    })
    .await?;
    let err = at
        .schedule_return(w::ScheduleReturnRequest {
            return_id: id.clone(),
            travel_at: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
            details: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("halted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = ro
        .respond_to_return(w::RespondToReturnRequest {
            return_id: id.clone(),
            response: w::ReturnResponse::ConfirmReception as i32,
            details: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("halted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        depth(admin_at.status(w::StatusRequest {}).await?.into_inner()),
        0
    );
    assert_eq!(
        depth(admin_ro.status(w::StatusRequest {}).await?.into_inner()),
        0
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn identity_crosses_only_under_return_consent_and_contact_only_if_listed(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = returns(&fed, "AT", Role::ServiceProvider).await?;
    let ro = returns(&fed, "RO", Role::FocalPoint).await?;

    // A referral consent does not allow a return request.
    let case_id = sp_case(&mut sp, 45).await?;
    at.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, false, false, false))
        .await?;
    at.record_return_decision(decision(&case_id, false)).await?;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;
    assert_eq!(refused_by(&mut at, &case_id).await, "consent");

    let cases = [
        (
            vec![w::DataCategory::Demographics, w::DataCategory::Needs],
            false,
            false,
        ),
        (vec![], true, false),
        (
            vec![w::DataCategory::Identity, w::DataCategory::Contact],
            true,
            true,
        ),
    ];
    let mut sent = Vec::new();
    for (categories, identity, contact) in cases {
        let case_id = ready_case(&mut sp, &mut at, &categories).await?;
        let id = at
            .propose_return(propose(&case_id))
            .await?
            .into_inner()
            .return_id;
        let got = wait_status(&ro, &id, w::ReturnStatus::Requested).await?;
        let person = got
            .disclosed
            .unwrap_or_default()
            .identity
            .unwrap_or_default();
        assert_eq!(!person.family_name.is_empty(), identity, "{categories:?}");
        assert_eq!(
            !person.document_number.is_empty(),
            identity,
            "{categories:?}"
        );
        assert_eq!(!person.address.is_empty(), contact, "{categories:?}");
        assert_eq!(!person.phone.is_empty(), contact, "{categories:?}");
        sent.push((case_id, id));
    }

    // Withdrawing the return consent erases RO's copy of the plan too.
    let (case_id, id) = &sent[2];
    let erased = sp
        .erase_case(w::EraseCaseRequest {
            case_id: case_id.clone(),
            reason: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(erased.erasure_requests, 1);
    let copy = wait_status(&ro, id, w::ReturnStatus::Halted).await?;
    assert_eq!(copy.disclosed.unwrap_or_default().identity, None);
    eventually("the erasure confirmation", || {
        let mut at = at.clone();
        let id = id.clone();
        async move {
            let r = at
                .get_return_plan(w::GetReturnPlanRequest { return_id: id })
                .await?
                .into_inner();
            Ok(r.erasure_confirmed.then_some(()))
        }
    })
    .await?;
    fed.stop().await?;
    Ok(())
}
