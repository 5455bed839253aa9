//! Safety alerts across borders (paper §22), between real nodes: an alert raised for a case
//! reaches every node holding a copy of it, named there by its own pairwise reference, opens
//! a task to acknowledge it, and stops returns of the case to the alert's country on every
//! node that holds the case or a copy, until a risk assessment recorded after it.

use tonic::{transport::Channel, Code};
use trm_core::{
    ids::Role,
    safety::SafetyAlertKind,
    stats::{Cell, Month, Period},
};
use trm_proto::v1::{
    self as w, envelope_body::Payload, safety_service_client::SafetyServiceClient,
};
use trm_tests::{eventually, refer_case, referral_arrived, TestFederation};

use crate::returns::{decision, propose, ready_case, returns, risk, wait_status};

type Safety = SafetyServiceClient<Channel>;

fn alert(case_id: &str, country: &str) -> w::RaiseSafetyAlertRequest {
    w::RaiseSafetyAlertRequest {
        case_id: case_id.into(),
        country: country.into(),
        kind: w::SafetyAlertKind::Release as i32,
        effective_on: "2026-12-01".into(),
        ..Default::default()
    }
}

/// Waits until `node`'s copy of alert `id` is listed incoming; returns it.
async fn alert_arrived(s: &Safety, id: &str) -> anyhow::Result<w::SafetyAlert> {
    eventually("the safety alert", || {
        let mut s = s.clone();
        let id = id.to_owned();
        async move {
            Ok(
                s.get_safety_alert(w::GetSafetyAlertRequest { alert_id: id })
                    .await
                    .ok()
                    .map(|a| a.into_inner()),
            )
        }
    })
    .await
}

/// Waits until the origin's alert `id` stands at `status`.
async fn alert_status(s: &Safety, id: &str, status: w::SafetyAlertStatus) -> anyhow::Result<()> {
    eventually(&format!("alert {status:?}"), || {
        let mut s = s.clone();
        let id = id.to_owned();
        async move {
            let a = s
                .get_safety_alert(w::GetSafetyAlertRequest { alert_id: id })
                .await?
                .into_inner();
            Ok((a.status == status as i32).then_some(()))
        }
    })
    .await
}

/// Returns the ids of the open tasks of `kind` `role` sees on `node`.
async fn tasks(
    fed: &TestFederation,
    node: &str,
    role: Role,
    kind: w::TaskKind,
) -> anyhow::Result<Vec<String>> {
    let list = fed
        .work(node, role)
        .await?
        .list_tasks(w::ListTasksRequest {
            kinds: vec![kind as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(list.tasks.into_iter().map(|t| t.record_id).collect())
}

#[tokio::test]
async fn an_alert_reaches_every_copy_halts_returns_to_its_country_and_is_acknowledged(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = returns(&fed, "AT", Role::ServiceProvider).await?;
    let ro_returns = returns(&fed, "RO", Role::FocalPoint).await?;
    // AT's case: a return plan to RO, and a referral to NG.
    let case_id = ready_case(&mut sp, &mut at, &[]).await?;
    let plan = at.propose_return(propose(&case_id)).await?.into_inner();
    let copy = wait_status(&ro_returns, &plan.return_id, w::ReturnStatus::Requested).await?;
    let referral = refer_case(&sp, &case_id, "NG").await?;
    let ng_copy =
        referral_arrived(&fed.referrals("NG", Role::FocalPoint).await?, &referral).await?;

    // A provider raises no alert; a judicial authority does.
    let mut sp_safety = fed
        .client("AT", Role::ServiceProvider, SafetyServiceClient::new)
        .await?;
    let denied = sp_safety.raise_safety_alert(alert(&case_id, "RO")).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    let mut ja = fed
        .client("AT", Role::JudicialAuthority, SafetyServiceClient::new)
        .await?;
    let raised = ja
        .raise_safety_alert(alert(&case_id, "RO"))
        .await?
        .into_inner();
    assert!(
        raised.recipients.is_empty(),
        "a judicial authority does not see where the case was sent"
    );
    let at_fp = fed
        .client("AT", Role::FocalPoint, SafetyServiceClient::new)
        .await?
        .get_safety_alert(w::GetSafetyAlertRequest {
            alert_id: raised.alert_id.clone(),
        })
        .await?
        .into_inner();
    let mut nodes: Vec<&str> = at_fp
        .recipients
        .iter()
        .map(|r| r.node_id.as_str())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["NG", "RO"], "every node holding a copy");
    assert_eq!(raised.case_id, case_id);
    assert!(
        raised.case_ref.is_empty(),
        "the origin names the case by its id"
    );

    // The open plan to RO is halted on both nodes, naming the guard only.
    let here = wait_status(&at, &plan.return_id, w::ReturnStatus::Halted).await?;
    assert_eq!(here.status_reason, "safety_alert");
    let there = wait_status(&ro_returns, &plan.return_id, w::ReturnStatus::Halted).await?;
    assert_eq!(there.status_reason, "safety_alert");

    // Each recipient holds it under its own pairwise reference, with a task to acknowledge.
    let ro_ja = fed
        .client("RO", Role::JudicialAuthority, SafetyServiceClient::new)
        .await?;
    let at_ro = alert_arrived(&ro_ja, &raised.alert_id).await?;
    assert_eq!(at_ro.case_ref, copy.disclosed.unwrap_or_default().case_ref);
    assert_eq!(
        (at_ro.origin.as_str(), at_ro.country.as_str()),
        ("AT", "RO")
    );
    assert!(at_ro.case_id.is_empty() && at_ro.recipients.is_empty());
    let ng_fp = fed
        .client("NG", Role::FocalPoint, SafetyServiceClient::new)
        .await?;
    let at_ng = alert_arrived(&ng_fp, &raised.alert_id).await?;
    assert_eq!(
        at_ng.case_ref,
        ng_copy.disclosed.unwrap_or_default().case_ref
    );
    assert_ne!(
        at_ng.case_ref, at_ro.case_ref,
        "two peers cannot link the case"
    );
    for node in ["RO", "NG"] {
        let open = tasks(
            &fed,
            node,
            Role::FocalPoint,
            w::TaskKind::AcknowledgeSafetyAlert,
        )
        .await?;
        assert_eq!(open, std::slice::from_ref(&raised.alert_id), "{node}");
    }
    alert_status(&ja, &raised.alert_id, w::SafetyAlertStatus::Delivered).await?;

    // A return of the case to RO is refused while the alert stands.
    let refused = at.propose_return(propose(&case_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().starts_with("safety_alert"),
        "{}",
        refused.message()
    );

    // Only a recipient acknowledges; its task closes; the origin learns of it.
    let own = ja
        .acknowledge_safety_alert(w::AcknowledgeSafetyAlertRequest {
            alert_id: raised.alert_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(own.unwrap_err().code(), Code::PermissionDenied);
    for (node, mut s) in [("RO", ro_ja), ("NG", ng_fp)] {
        let acked = s
            .acknowledge_safety_alert(w::AcknowledgeSafetyAlertRequest {
                alert_id: raised.alert_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(acked.status, w::SafetyAlertStatus::Acknowledged as i32);
        let open = tasks(
            &fed,
            node,
            Role::FocalPoint,
            w::TaskKind::AcknowledgeSafetyAlert,
        )
        .await?;
        assert!(open.is_empty(), "{node}");
    }
    alert_status(&ja, &raised.alert_id, w::SafetyAlertStatus::Acknowledged).await?;

    // A risk assessment recorded after the alert (and a decision after it) lifts the block.
    at.record_risk_assessment(risk(&case_id, w::RiskLevel::Low, false, false, false))
        .await?;
    at.record_return_decision(decision(&case_id, false)).await?;
    let again = at.propose_return(propose(&case_id)).await?.into_inner();
    wait_status(&ro_returns, &again.return_id, w::ReturnStatus::Requested).await?;

    // The alert counts once, by its kind, in each node's statistics for its month.
    let raised_at = raised.created_at.unwrap_or_default();
    let day = time::OffsetDateTime::from_unix_timestamp(raised_at.seconds)?.date();
    let period = Period {
        start: day.replace_day(1)?,
        end: Month::of(day).next_first_day(),
    };
    for node in ["AT", "RO", "NG"] {
        fed.stop_node(node).await?;
        let store = trm_tests::open_store(&fed, node)?;
        let counts = store.stat_counts(period);
        store.close()?;
        let counts = counts?;
        assert_eq!(
            counts.get(&Cell::SafetyAlert(SafetyAlertKind::Release)),
            Some(&1),
            "{node}"
        );
        assert_eq!(
            counts
                .iter()
                .filter(|(c, _)| matches!(c, Cell::SafetyAlert(_)))
                .count(),
            1,
            "{node}: no other kind"
        );
    }
    fed.stop().await?;
    Ok(())
}

/// The node that holds the copy keeps the rule itself: a return request from the case's
/// node that ignores its own alert is refused there, until the request says the risk was
/// assessed after the alert.
#[tokio::test]
async fn a_return_to_the_alert_s_country_is_refused_on_the_node_that_holds_the_copy(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .clone()
        .create_case(trm_tests::requests::case("Alerted", 5))
        .await?
        .into_inner()
        .case_id;
    let referral = refer_case(&sp, &case_id, "RO").await?;
    let copy = referral_arrived(&fed.referrals("RO", Role::FocalPoint).await?, &referral).await?;
    let case_ref = copy.disclosed.unwrap_or_default().case_ref;
    let raised = fed
        .client("AT", Role::FocalPoint, SafetyServiceClient::new)
        .await?
        .raise_safety_alert(alert(&case_id, "RO"))
        .await?
        .into_inner();
    alert_arrived(
        &fed.client("RO", Role::FocalPoint, SafetyServiceClient::new)
            .await?,
        &raised.alert_id,
    )
    .await?;

    let request = |assessed: Option<prost_types::Timestamp>| {
        Payload::ReturnRequest(w::ReturnRequest {
            return_id: uuid::Uuid::now_v7().to_string(),
            disclosed: Some(w::DisclosedCase {
                case_ref: case_ref.clone(),
                ..Default::default()
            }),
            risk_assessed_at: assessed,
            ..Default::default()
        })
    };
    let receipt = fed
        .deliver_as(("AT", "RO"), &case_ref, request(None))
        .await?;
    assert_eq!(receipt.outcome, w::ReceiptOutcome::Rejected as i32);
    assert!(
        receipt.reason.contains("safety_alert"),
        "{}",
        receipt.reason
    );
    let raised_at = raised.raised_at.unwrap_or_default();
    let before = prost_types::Timestamp {
        seconds: raised_at.seconds - 60,
        nanos: 0,
    };
    let receipt = fed
        .deliver_as(("AT", "RO"), &case_ref, request(Some(before)))
        .await?;
    assert_eq!(
        receipt.outcome,
        w::ReceiptOutcome::Rejected as i32,
        "assessed before it"
    );
    let after = prost_types::Timestamp {
        seconds: raised_at.seconds + 1,
        nanos: 0,
    };
    let receipt = fed
        .deliver_as(("AT", "RO"), &case_ref, request(Some(after)))
        .await?;
    assert_eq!(
        receipt.outcome,
        w::ReceiptOutcome::Accepted as i32,
        "{}",
        receipt.reason
    );
    let listed = returns(&fed, "RO", Role::FocalPoint)
        .await?
        .list_return_plans(w::ListReturnPlansRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        listed.return_plans.len(),
        1,
        "only the request assessed after the alert"
    );
    fed.stop().await?;
    Ok(())
}

/// A notice carries the pairwise reference and at most the child flags: anything more, or a
/// reference this node never received a copy under, is refused with a signed reason.
#[tokio::test]
async fn a_notice_carrying_more_than_safety_allows_is_rejected() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let referral = trm_tests::refer(&fed, "AT", "RO").await?;
    let copy = referral_arrived(&fed.referrals("RO", Role::FocalPoint).await?, &referral).await?;
    let case_ref = copy.disclosed.unwrap_or_default().case_ref;
    let notice = |disclosed: w::DisclosedCase| {
        Payload::SafetyAlertNotice(w::SafetyAlertNotice {
            alert_id: uuid::Uuid::now_v7().to_string(),
            country: "RO".into(),
            kind: w::SafetyAlertKind::Extradition as i32,
            effective_on: "2026-12-01".into(),
            raised_at: Some(prost_types::Timestamp {
                seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                nanos: 0,
            }),
            disclosed: Some(disclosed),
        })
    };
    let leaky = w::DisclosedCase {
        case_ref: case_ref.clone(),
        gender: w::Gender::Female as i32,
        ..Default::default()
    };
    let receipt = fed
        .deliver_as(("AT", "RO"), &case_ref, notice(leaky))
        .await?;
    assert_eq!(receipt.outcome, w::ReceiptOutcome::Rejected as i32);
    assert!(
        receipt.reason.contains("disclosed.gender") && receipt.reason.contains("safety"),
        "{}",
        receipt.reason
    );
    let elsewhere = w::DisclosedCase {
        case_ref: "0123456789abcdef0123456789abcdef".into(),
        ..Default::default()
    };
    let receipt = fed
        .deliver_as(("AT", "RO"), &elsewhere.case_ref.clone(), notice(elsewhere))
        .await?;
    assert_eq!(receipt.outcome, w::ReceiptOutcome::Rejected as i32);
    assert!(
        receipt.reason.starts_with("unknown case reference"),
        "{}",
        receipt.reason
    );
    // RO only received AT's case: it holds no case of its own under the reference, so an
    // alert "about" it from RO is refused at AT.
    let backwards = w::DisclosedCase {
        case_ref: case_ref.clone(),
        ..Default::default()
    };
    let receipt = fed
        .deliver_as(("RO", "AT"), &case_ref, notice(backwards))
        .await?;
    assert_eq!(receipt.outcome, w::ReceiptOutcome::Rejected as i32);
    assert!(
        receipt.reason.starts_with("unknown case reference"),
        "{}",
        receipt.reason
    );
    let child_only = w::DisclosedCase {
        case_ref: case_ref.clone(),
        child: Some(w::ChildInfo {
            is_child: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let receipt = fed
        .deliver_as(("AT", "RO"), &case_ref, notice(child_only))
        .await?;
    assert_eq!(
        receipt.outcome,
        w::ReceiptOutcome::Accepted as i32,
        "{}",
        receipt.reason
    );
    let listed = fed
        .client("RO", Role::JudicialAuthority, SafetyServiceClient::new)
        .await?
        .list_safety_alerts(w::ListSafetyAlertsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        listed.safety_alerts.len(),
        1,
        "the refused notices left nothing"
    );
    assert!(listed.safety_alerts[0].child.is_some_and(|c| c.is_child));
    fed.stop().await?;
    Ok(())
}
