//! The event stream (`WorkService.WatchEvents`) over real nodes: a watch opened before a
//! referral sees it arrive and its task open; a client that reconnects after the last event
//! it received misses nothing and gets nothing twice; a service provider sees nothing of
//! another organisation's records.

use tonic::{transport::Channel, Code, Streaming};
use trm_core::ids::Role;
use trm_proto::v1::{self as w, work_service_client::WorkServiceClient};
use trm_tests::{refer, referral_arrived, requests, TestFederation};

/// Opens a watch after event `after` (empty: from the oldest kept).
async fn watch(
    client: &mut WorkServiceClient<Channel>,
    after: &str,
) -> anyhow::Result<Streaming<w::Event>> {
    Ok(client
        .watch_events(w::WatchEventsRequest {
            after: after.into(),
        })
        .await?
        .into_inner())
}

/// Reads events from `stream` until one matches `last`; returns them all (no deadline of
/// its own: the test's runtime ends a test that hangs).
async fn until(
    stream: &mut Streaming<w::Event>,
    last: impl Fn(&w::Event) -> bool,
) -> anyhow::Result<Vec<w::Event>> {
    let mut seen = Vec::new();
    let deadline = std::time::Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout(deadline, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no event within 30 s; had {seen:?}"))??;
        let Some(e) = next else {
            anyhow::bail!("the stream ended; had {seen:?}");
        };
        let done = last(&e);
        seen.push(e);
        if done {
            return Ok(seen);
        }
    }
}

fn is(e: &w::Event, kind: w::EventKind, record_id: &str) -> bool {
    e.kind == kind as i32 && e.record_id == record_id
}

#[tokio::test]
async fn a_watch_sees_a_referral_arrive_resumes_without_loss_and_hides_other_organisations(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut fp = fed.work("RO", Role::FocalPoint).await?;
    let mut stream = watch(&mut fp, "").await?;
    let mut other_org = fed.work_of_org("RO", "sp2").await?;
    let mut sp2_stream = watch(&mut other_org, "").await?;

    let id = refer(&fed, "AT", "RO").await?;
    let seen = until(&mut stream, |e| is(e, w::EventKind::TaskOpened, &id)).await?;
    let arrived = seen
        .iter()
        .find(|e| is(e, w::EventKind::Arrived, &id))
        .ok_or_else(|| anyhow::anyhow!("no arrival in {seen:?}"))?;
    assert_eq!(arrived.record_type, "referral");
    let task = seen.last().cloned().unwrap_or_default();
    assert_eq!(task.record_type, "task");
    assert_eq!(task.task_kind, w::TaskKind::AnswerReferral as i32);
    let last_seen = task.event_id.clone();
    drop(stream);

    // While nobody watches, the focal point accepts and assigns the referral.
    let mut ro = fed.referrals("RO", Role::FocalPoint).await?;
    referral_arrived(&ro, &id).await?;
    ro.respond_to_referral(w::RespondToReferralRequest {
        referral_id: id.clone(),
        decision: w::ReferralDecision::Accept as i32,
        ..Default::default()
    })
    .await?;
    ro.assign_case(w::AssignCaseRequest {
        referral_id: id.clone(),
        organisation: "sp1".into(),
        ..Default::default()
    })
    .await?;

    // Reconnected after the last event received: what happened since, once each, in order.
    let mut resumed = watch(&mut fp, &last_seen).await?;
    let since = until(&mut resumed, |e| {
        is(e, w::EventKind::StatusChanged, &id) && e.status == "in_assistance"
    })
    .await?;
    let ids: Vec<u64> = since
        .iter()
        .map(|e| e.event_id.parse().unwrap_or(0))
        .collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "in order: {ids:?}");
    assert!(
        ids[0] > last_seen.parse::<u64>()?,
        "nothing twice: {since:?}"
    );
    let statuses: Vec<&str> = since
        .iter()
        .filter(|e| e.record_id == id && e.record_type == "referral")
        .map(|e| e.status.as_str())
        .collect();
    assert_eq!(statuses, ["accepted", "in_assistance"], "nothing lost");
    assert!(since.iter().any(|e| is(e, w::EventKind::TaskClosed, &id)));

    // Another organisation's provider sees its own referral, and nothing of sp1's.
    let mut sp2 = fed.referrals_of_org("RO", "sp2").await?;
    let case = sp2
        .create_case(requests::case("Other", 5))
        .await?
        .into_inner();
    let own = trm_tests::refer_case(&sp2, &case.case_id, "AT").await?;
    let sp2_seen = until(&mut sp2_stream, |e| e.record_id == own).await?;
    assert!(
        sp2_seen.iter().all(|e| e.record_id == own),
        "only its own: {sp2_seen:?}"
    );

    // A bad resume point is refused, naming the field; an operator may not watch.
    let bad = fp
        .watch_events(w::WatchEventsRequest {
            after: "yesterday".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("after"), "{}", bad.message());
    fed.stop().await?;
    Ok(())
}

/// A certificate holds at most four streams; a resume point the node never gave is refused;
/// a stream whose certificate is revoked ends, refused.
#[tokio::test]
async fn streams_are_bounded_per_certificate_and_end_when_it_is_revoked() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut ja = fed.work("AT", Role::JudicialAuthority).await?;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(watch(&mut ja, "").await?);
    }
    let fifth = ja
        .watch_events(w::WatchEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(fifth.code(), Code::ResourceExhausted, "{fifth:?}");
    // Closing one frees its place (once the node has seen the client go).
    drop(open.pop());
    let again = trm_tests::eventually("a place for a stream", || {
        let mut ja = ja.clone();
        async move {
            Ok(ja
                .watch_events(w::WatchEventsRequest::default())
                .await
                .ok()
                .map(|s| s.into_inner()))
        }
    })
    .await?;
    open.push(again);

    let ahead = fed
        .work("AT", Role::FocalPoint)
        .await?
        .watch_events(w::WatchEventsRequest {
            after: "999999".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), Code::FailedPrecondition);
    assert!(ahead.message().contains("after"), "{}", ahead.message());

    let serial =
        trmctl::admin::serial_of_pem(&fed.dir().join("AT/clients/judicial_authority.pem"))?;
    fed.admin("AT", Role::Operator)
        .await?
        .revoke_client_certificate(w::RevokeClientCertificateRequest {
            serial_hex: serial,
            ..Default::default()
        })
        .await?;
    let mut stream = open.remove(0);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
        .await?
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{}", ended.message());
    fed.stop().await?;
    Ok(())
}
