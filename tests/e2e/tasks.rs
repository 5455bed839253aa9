//! The work queue (`WorkService.ListTasks`) over real nodes: a task per incoming request,
//! due by its kind, closed by the answer; a permit nearing expiry, the return of a witness
//! proposed and a possible second case of one person each wait for the role that answers
//! them, and nobody else sees them.

use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{eventually, requests, TestFederation};

/// The tasks `role` of `node` sees, of `kind`.
async fn tasks(
    fed: &TestFederation,
    node: &str,
    role: Role,
    kind: w::TaskKind,
) -> anyhow::Result<Vec<w::Task>> {
    Ok(fed
        .work(node, role)
        .await?
        .list_tasks(w::ListTasksRequest {
            kinds: vec![kind as i32],
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks)
}

#[tokio::test]
async fn an_incoming_referral_waits_in_the_focal_points_queue_until_answered() -> anyhow::Result<()>
{
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let referral_id = trm_tests::refer(&fed, "AT", "RO").await?;
    let kind = w::TaskKind::AnswerReferral;
    let task = eventually("the referral's task at RO", || {
        let (fed, id) = (&fed, referral_id.clone());
        async move {
            let t = tasks(fed, "RO", Role::FocalPoint, kind).await?;
            Ok(t.into_iter().find(|t| t.record_id == id))
        }
    })
    .await?;
    let (due, created) = (
        task.due_at.unwrap_or_default().seconds,
        task.created_at.unwrap_or_default().seconds,
    );
    assert_eq!(
        due - created,
        48 * 3600,
        "a routine referral is due in 48 hours"
    );
    assert!(!task.overdue);
    for role in [Role::ServiceProvider, Role::JudicialAuthority] {
        assert!(
            tasks(&fed, "RO", role, kind).await?.is_empty(),
            "{role:?} does not answer referrals"
        );
    }
    assert!(
        tasks(&fed, "AT", Role::FocalPoint, kind).await?.is_empty(),
        "the sender owes nothing"
    );

    let mut ro = fed.referrals("RO", Role::FocalPoint).await?;
    ro.respond_to_referral(w::RespondToReferralRequest {
        referral_id: referral_id.clone(),
        decision: w::ReferralDecision::Accept as i32,
        ..Default::default()
    })
    .await?;
    assert!(
        tasks(&fed, "RO", Role::FocalPoint, kind).await?.is_empty(),
        "answered: closed"
    );

    // Lists narrow to statuses and to what changed since an instant.
    let listed = |status: Vec<w::ReferralStatus>, since: Option<prost_types::Timestamp>| {
        let mut ro = ro.clone();
        async move {
            let r = ro
                .list_referrals(w::ListReferralsRequest {
                    direction: w::Direction::Incoming as i32,
                    status: status.into_iter().map(|s| s as i32).collect(),
                    updated_since: since,
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::Ok(r.referrals.len())
        }
    };
    assert_eq!(listed(vec![w::ReferralStatus::Accepted], None).await?, 1);
    assert_eq!(listed(vec![w::ReferralStatus::Declined], None).await?, 0);
    let later = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
        nanos: 0,
    };
    assert_eq!(
        listed(vec![], Some(later)).await?,
        0,
        "nothing changed since"
    );
    let bad = ro
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            status: vec![0],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("status"), "{}", bad.message());
    for token in ["00", "zz", "74712f"] {
        let refused = fed
            .work("RO", Role::FocalPoint)
            .await?
            .list_tasks(w::ListTasksRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{token}");
        assert!(refused.message().contains("page_token"), "{token}");
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_permit_shows_as_expiring_within_the_notice_and_a_second_case_waits_for_review(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    let today = time::OffsetDateTime::now_utc().date();
    let soon = sp
        .create_case(requests::case("Soon", 5))
        .await?
        .into_inner();
    let later = sp
        .create_case(requests::case("Later", 5))
        .await?
        .into_inner();
    for (case, days) in [(&soon, 10), (&later, 60)] {
        fp.record_residence_status(w::RecordResidenceStatusRequest {
            case_id: case.case_id.clone(),
            status: w::ResidenceStatus::TemporaryPermit as i32,
            valid_until: trm_core::model::format_date(today + time::Duration::days(days)),
            ..Default::default()
        })
        .await?;
    }
    let kind = w::TaskKind::ResidenceExpiring;
    let listed = tasks(&fed, "AT", Role::FocalPoint, kind).await?;
    let shown: Vec<&str> = listed.iter().map(|t| t.record_id.as_str()).collect();
    assert_eq!(shown, [soon.case_id.as_str()], "within 30 days only");
    let mine = tasks(&fed, "AT", Role::ServiceProvider, kind).await?;
    assert_eq!(mine.len(), 1, "the provider sees its own case's permit");
    assert!(
        tasks(&fed, "AT", Role::JudicialAuthority, kind)
            .await?
            .is_empty(),
        "a prosecutor has no part in residence"
    );

    // The same person again: the focal point reviews the pair; the provider is told nothing.
    let again = sp
        .create_case(requests::case("Soon", 2))
        .await?
        .into_inner();
    let review = tasks(&fed, "AT", Role::FocalPoint, w::TaskKind::PossibleDuplicate).await?;
    assert_eq!(
        review
            .iter()
            .map(|t| t.record_id.as_str())
            .collect::<Vec<_>>(),
        [again.case_id.as_str()]
    );
    assert!(tasks(
        &fed,
        "AT",
        Role::ServiceProvider,
        w::TaskKind::PossibleDuplicate
    )
    .await?
    .is_empty());

    // Settled: the task closes, and a second settling finds nothing.
    let resolve = w::ResolvePossibleDuplicateRequest {
        case_id: again.case_id.clone(),
        same_person: true,
        ..Default::default()
    };
    let settled = fp
        .resolve_possible_duplicate(resolve.clone())
        .await?
        .into_inner();
    assert_eq!(settled.pairs, 1);
    assert!(
        tasks(&fed, "AT", Role::FocalPoint, w::TaskKind::PossibleDuplicate)
            .await?
            .is_empty()
    );
    let twice = fp.resolve_possible_duplicate(resolve).await.unwrap_err();
    assert_eq!(twice.code(), tonic::Code::NotFound);
    fed.stop().await?;
    Ok(())
}
