//! Witness hearings between a requesting country (AT) and the witness's country (RO).

use prost::Message;
use prost_types::Timestamp;
use tonic::{transport::Channel, Code};
use trm_core::ids::Role;
use trm_crypto::{files, signing::SigningIdentity};
use trm_federation::envelope;
use trm_proto::v1::{
    self as w, envelope_body::Payload, federation_service_client::FederationServiceClient,
    referral_service_client::ReferralServiceClient,
    witness_hearing_service_client::WitnessHearingServiceClient, EnvelopeBody, ReceiptBody,
    ReceiptOutcome,
};
use trm_tests::{eventually, requests, TestFederation};

type Hearings = WitnessHearingServiceClient<Channel>;

/// A case in AT referred to RO and accepted there, assigned to RO's `sp1`. Returns the case
/// id and the referral id.
async fn referred_case(fed: &TestFederation, child: bool) -> anyhow::Result<(String, String)> {
    let info = child.then_some(w::ChildInfo {
        is_child: true,
        guardian_assigned: true,
        best_interests_determined: true,
    });
    referred_with(fed, info).await
}

/// [`referred_case`] with the child information given.
async fn referred_with(
    fed: &TestFederation,
    child: Option<w::ChildInfo>,
) -> anyhow::Result<(String, String)> {
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut req = requests::case("Witness", 40);
    req.child = child;
    let case_id = sp.create_case(req).await?.into_inner().case_id;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::ReferralAssistance, w::Purpose::ReturnPlanning],
        &["RO"],
        &[],
    ))
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
    let mut ro = fed.referrals("RO", Role::FocalPoint).await?;
    trm_tests::referral_arrived(&ro, &referral_id).await?;
    ro.respond_to_referral(w::RespondToReferralRequest {
        referral_id: referral_id.clone(),
        decision: w::ReferralDecision::Accept as i32,
        reason: String::new(),
        ..Default::default()
    })
    .await?;
    ro.assign_case(w::AssignCaseRequest {
        referral_id: referral_id.clone(),
        organisation: "sp1".into(),
        ..Default::default()
    })
    .await?;
    Ok((case_id, referral_id))
}

/// AT's provider proposes the return of case `case_id` to RO (a low risk found, the
/// victim's decision recorded); returns its client and the plan.
async fn proposed_return(
    fed: &TestFederation,
    case_id: &str,
) -> anyhow::Result<(crate::returns::Returns, w::ReturnPlan)> {
    let mut at = crate::returns::returns(fed, "AT", Role::ServiceProvider).await?;
    at.record_risk_assessment(crate::returns::risk(
        case_id,
        w::RiskLevel::Low,
        false,
        false,
        false,
    ))
    .await?;
    at.record_return_decision(crate::returns::decision(case_id, true))
        .await?;
    let plan = at
        .propose_return(crate::returns::propose(case_id))
        .await?
        .into_inner();
    Ok((at, plan))
}

fn at(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn hearing_request(case_id: &str, measures: &[w::ProtectiveMeasure]) -> w::RequestHearingRequest {
    w::RequestHearingRequest {
        case_id: case_id.into(),
        witness_country: "RO".into(),
        proceeding_reference: "AT-LG-2026-0042".into(),
        measures: measures.iter().map(|m| *m as i32).collect(),
        language: "ro".into(),
        legal_basis: "MLA request 2026/17 (UNTOC art. 18)".into(),
        proposed_times: vec![at(1_900_000_000), at(1_900_086_400)],
        ..Default::default()
    }
}

async fn wait_hearing(
    c: &Hearings,
    id: &str,
    status: w::HearingStatus,
) -> anyhow::Result<w::Hearing> {
    eventually(&format!("hearing {status:?}"), || {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            let h = c.get_hearing(w::GetHearingRequest { hearing_id: id }).await;
            Ok(h.ok()
                .map(|h| h.into_inner())
                .filter(|h| h.status == status as i32))
        }
    })
    .await
}

#[tokio::test]
async fn a_hearing_runs_from_request_to_held_naming_the_witness_only_by_reference(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, referral_id) = referred_case(&fed, false).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let mut ro = fed.hearings("RO", Role::FocalPoint).await?;
    let measures = [
        w::ProtectiveMeasure::VoiceDistortion,
        w::ProtectiveMeasure::PsychologistPresent,
    ];
    let id = ja
        .request_hearing(hearing_request(&case_id, &measures))
        .await?
        .into_inner()
        .hearing_id;

    let got = wait_hearing(&ro, &id, w::HearingStatus::Requested).await?;
    let ro_referral = fed
        .referrals("RO", Role::FocalPoint)
        .await?
        .get_referral(w::GetReferralRequest { referral_id })
        .await?
        .into_inner();
    assert_eq!(
        got.case_ref,
        ro_referral.disclosed.unwrap_or_default().case_ref,
        "resolved by the pairwise reference"
    );
    assert_eq!(
        (
            got.requesting_country.as_str(),
            got.witness_country.as_str()
        ),
        ("AT", "RO")
    );
    assert_eq!(got.legal_basis, "MLA request 2026/17 (UNTOC art. 18)");
    assert_eq!(
        got.measures,
        measures.iter().map(|m| *m as i32).collect::<Vec<_>>()
    );
    assert_eq!(got.proposed_times.len(), 2);

    ro.respond_to_hearing(w::RespondToHearingRequest {
        hearing_id: id.clone(),
        decision: w::HearingDecision::Accept as i32,
        ..Default::default()
    })
    .await?;
    wait_hearing(&ja, &id, w::HearingStatus::Accepted).await?;
    ro.respond_to_hearing(w::RespondToHearingRequest {
        hearing_id: id.clone(),
        decision: w::HearingDecision::Schedule as i32,
        reason: String::new(),
        scheduled_at: Some(at(1_900_086_400)),
        ..Default::default()
    })
    .await?;
    let seen = wait_hearing(&ja, &id, w::HearingStatus::Scheduled).await?;
    assert_eq!(seen.scheduled_at, Some(at(1_900_086_400)));
    // Only the witness's country answers the request.
    let err = ja
        .respond_to_hearing(w::RespondToHearingRequest {
            hearing_id: id.clone(),
            decision: w::HearingDecision::Accept as i32,
            ..Default::default()
        })
        .await
        .expect_err("requesting side");
    assert_eq!(err.code(), Code::PermissionDenied);
    ja.record_hearing_outcome(w::RecordHearingOutcomeRequest {
        hearing_id: id.clone(),
        minutes_reference: "MIN-2026-0042-1".into(),
        ..Default::default()
    })
    .await?;
    let held = wait_hearing(&ro, &id, w::HearingStatus::Held).await?;
    assert_eq!(held.minutes_reference, "MIN-2026-0042-1");
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn only_judicial_authorities_request_and_providers_see_only_that_a_hearing_is_pending(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, _) = referred_case(&fed, false).await?;
    for role in [Role::ServiceProvider, Role::FocalPoint, Role::Operator] {
        let mut c = fed.hearings("AT", role).await?;
        let err = c
            .request_hearing(hearing_request(&case_id, &[]))
            .await
            .expect_err("not a judicial authority");
        assert_eq!(err.code(), Code::PermissionDenied, "{role}");
    }
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let id = ja
        .request_hearing(hearing_request(&case_id, &[]))
        .await?
        .into_inner()
        .hearing_id;
    let ro_fp = fed.hearings("RO", Role::FocalPoint).await?;
    wait_hearing(&ro_fp, &id, w::HearingStatus::Requested).await?;

    // RO's provider looking after the witness sees the hearing is pending, nothing else.
    let mut ro_sp = fed.hearings("RO", Role::ServiceProvider).await?;
    let list = ro_sp
        .list_hearings(w::ListHearingsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.hearings.len(), 1);
    let h = &list.hearings[0];
    assert!(h.details_withheld);
    assert_eq!(h.status, w::HearingStatus::Requested as i32);
    assert!(
        h.case_ref.is_empty()
            && h.proceeding_reference.is_empty()
            && h.legal_basis.is_empty()
            && h.measures.is_empty()
    );
    // Nor does the console's page of the hearing show when each step happened.
    let page = trm_tests::console_send(
        &fed,
        "RO",
        Some(Role::ServiceProvider),
        &crate::console::get(&format!("/record?kind=hearings&id={id}")),
    )
    .await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<tbody></tbody>"), "{}", page.body);
    let err = ro_sp
        .respond_to_hearing(w::RespondToHearingRequest {
            hearing_id: id.clone(),
            decision: w::HearingDecision::Accept as i32,
            ..Default::default()
        })
        .await
        .expect_err("provider answering");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut ro_ops = fed.hearings("RO", Role::Operator).await?;
    assert_eq!(
        ro_ops
            .get_hearing(w::GetHearingRequest {
                hearing_id: id.clone(),
            })
            .await
            .expect_err("operator")
            .code(),
        Code::PermissionDenied
    );
    // A judicial authority of the witness's country may answer.
    let mut ro_ja = fed.hearings("RO", Role::JudicialAuthority).await?;
    ro_ja
        .respond_to_hearing(w::RespondToHearingRequest {
            hearing_id: id.clone(),
            decision: w::HearingDecision::Accept as i32,
            ..Default::default()
        })
        .await?;
    wait_hearing(&ja, &id, w::HearingStatus::Accepted).await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_declined_hearing_leaves_referral_and_return_plan_unchanged_on_both_nodes(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, referral_id) = referred_case(&fed, false).await?;
    let mut at_rp = fed.returns("AT", Role::FocalPoint).await?;
    at_rp
        .record_risk_assessment(w::RecordRiskAssessmentRequest {
            case_id: case_id.clone(),
            level: w::RiskLevel::Low as i32,
            ..Default::default()
        })
        .await?;
    at_rp
        .record_return_decision(w::RecordReturnDecisionRequest {
            case_id: case_id.clone(),
            voluntary: true,
            informed: true,
            reflection_period_waived: false,
            ..Default::default()
        })
        .await?;
    let return_id = at_rp
        .propose_return(w::ProposeReturnRequest {
            case_id: case_id.clone(),
            destination: "RO".into(),
            hearing_pending: true,
            compensation_pending: false,
            ..Default::default()
        })
        .await?
        .into_inner()
        .return_id;
    let ro_rp = fed.returns("RO", Role::FocalPoint).await?;
    eventually("the return request at RO", || {
        let mut c = ro_rp.clone();
        let id = return_id.clone();
        async move {
            Ok(c.get_return_plan(w::GetReturnPlanRequest { return_id: id })
                .await
                .ok())
        }
    })
    .await?;
    let at_ref = fed.referrals("AT", Role::FocalPoint).await?;
    let mut ro_ref = fed.referrals("RO", Role::FocalPoint).await?;
    let in_assistance = |mut c: ReferralServiceClient<Channel>, id: String| async move {
        let r = c
            .get_referral(w::GetReferralRequest { referral_id: id })
            .await?
            .into_inner();
        Ok::<_, anyhow::Error>((r.status == w::ReferralStatus::InAssistance as i32).then_some(r))
    };
    eventually("AT to see the assignment", || {
        in_assistance(at_ref.clone(), referral_id.clone())
    })
    .await?;

    let snapshot = |mut a: ReferralServiceClient<Channel>,
                    mut b: ReferralServiceClient<Channel>| {
        let (referral_id, return_id) = (referral_id.clone(), return_id.clone());
        let (mut ra, mut rb) = (at_rp.clone(), ro_rp.clone());
        async move {
            Ok::<_, anyhow::Error>((
                a.get_referral(w::GetReferralRequest {
                    referral_id: referral_id.clone(),
                })
                .await?
                .into_inner(),
                b.get_referral(w::GetReferralRequest { referral_id })
                    .await?
                    .into_inner(),
                // The plan's hearing_pending showed the hearing while it was open (its
                // updated_at says when it last did): all else stays as it was.
                w::ReturnPlan {
                    updated_at: None,
                    ..ra.get_return_plan(w::GetReturnPlanRequest {
                        return_id: return_id.clone(),
                    })
                    .await?
                    .into_inner()
                },
                w::ReturnPlan {
                    updated_at: None,
                    ..rb.get_return_plan(w::GetReturnPlanRequest { return_id })
                        .await?
                        .into_inner()
                },
            ))
        }
    };
    let before = snapshot(at_ref.clone(), ro_ref.clone()).await?;

    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let id = ja
        .request_hearing(hearing_request(&case_id, &[]))
        .await?
        .into_inner()
        .hearing_id;
    let mut ro = fed.hearings("RO", Role::FocalPoint).await?;
    wait_hearing(&ro, &id, w::HearingStatus::Requested).await?;
    let pending = |on: bool| move |p: &w::ReturnPlan| p.hearing_pending == on;
    crate::returns::plan_where(&ro_rp, &return_id, "RO told of the hearing", pending(true)).await?;
    let err = ro
        .respond_to_hearing(w::RespondToHearingRequest {
            hearing_id: id.clone(),
            decision: w::HearingDecision::Decline as i32,
            ..Default::default()
        })
        .await
        .expect_err("a decline needs its reason");
    assert!(err.message().starts_with("reason"));
    ro.respond_to_hearing(w::RespondToHearingRequest {
        hearing_id: id.clone(),
        decision: w::HearingDecision::Decline as i32,
        reason: "the witness declined".into(),
        ..Default::default()
    })
    .await?;
    let declined = wait_hearing(&ja, &id, w::HearingStatus::Declined).await?;
    crate::returns::plan_where(&ro_rp, &return_id, "RO told it ended", pending(false)).await?;
    assert_eq!(declined.status_reason, "the witness declined");

    let after = snapshot(at_ref.clone(), ro_ref.clone()).await?;
    assert_eq!(
        before, after,
        "declining a hearing changes no referral or return plan"
    );
    // And assistance goes on: the referral can still be closed normally.
    ro_ref
        .close_referral(w::CloseReferralRequest {
            referral_id: referral_id.clone(),
            reason: "assistance completed".into(),
            ..Default::default()
        })
        .await?;
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_child_witness_is_heard_with_a_child_friendly_room_and_a_support_person(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, _) = referred_case(&fed, true).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let ro = fed.hearings("RO", Role::FocalPoint).await?;
    let required = [
        w::ProtectiveMeasure::ChildFriendlyRoom as i32,
        w::ProtectiveMeasure::SupportPerson as i32,
    ];
    // Whatever the request names, the hearing of a child carries both: a request refused
    // for lacking them would tell the caller, before any hearing exists, that the witness
    // is a child.
    for measures in [
        vec![],
        vec![w::ProtectiveMeasure::ChildFriendlyRoom],
        vec![
            w::ProtectiveMeasure::SupportPerson,
            w::ProtectiveMeasure::Interpreter,
        ],
    ] {
        let h = ja
            .request_hearing(hearing_request(&case_id, &measures))
            .await?
            .into_inner();
        for m in measures.iter().map(|m| *m as i32).chain(required) {
            assert!(h.measures.contains(&m), "{m} in {:?}", h.measures);
        }
        let at_ro = wait_hearing(&ro, &h.hearing_id, w::HearingStatus::Requested).await?;
        assert_eq!(at_ro.measures, h.measures, "RO hears the child with them");
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_hearing_for_a_case_not_exchanged_is_refused_on_both_sides_and_audited(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let (case_id, _) = referred_case(&fed, false).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let mut req = hearing_request(&case_id, &[]);
    req.witness_country = "NG".into();
    let never_exchanged = ja
        .request_hearing(req)
        .await
        .expect_err("never exchanged with NG");
    let mut req = hearing_request(&uuid::Uuid::now_v7().to_string(), &[]);
    req.witness_country = "RO".into();
    let unknown = ja.request_hearing(req).await.expect_err("unknown case");
    // A judicial authority reads no case: whether one exists, and with whom it was
    // exchanged, is not for it to learn from a refusal.
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        (never_exchanged.code(), never_exchanged.message()),
        (unknown.code(), unknown.message()),
        "a case never exchanged with the witness's country is answered as an unknown one"
    );

    // RO receives a signed request from AT under a reference it never shared. First let RO
    // finish its own deliveries (their receipts add audit entries of their own).
    let mut admin = fed.admin("RO", Role::Operator).await?;
    eventually("RO's outbox to drain", || {
        let mut a = admin.clone();
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
    let before = admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner()
        .entries_checked;
    let at_key = SigningIdentity::load(&fed.dir().join("AT/keys/signing.pem"))?;
    let tls = fed.dir().join("AT/tls");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://{}",
        fed.node("RO")?.addrs.federation
    ))?
    .tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(files::read(
                &fed.dir().join("AT/peers/RO-ca.pem"),
            )?))
            .identity(tonic::transport::Identity::from_pem(
                files::read(&tls.join("federation.pem"))?,
                files::read(&tls.join("federation.key"))?,
            ))
            .domain_name("localhost"),
    )?
    .connect()
    .await?;
    let env = envelope::seal(
        &at_key,
        "AT".parse()?,
        "RO".parse()?,
        "0123456789abcdef0123456789abcdef",
        Payload::HearingRequest(w::HearingRequest {
            hearing_id: uuid::Uuid::now_v7().to_string(),
            proceeding_reference: "X".into(),
            legal_basis: "MLA".into(),
            language: "ro".into(),
            ..Default::default()
        }),
    );
    let receipt = FederationServiceClient::new(channel)
        .deliver(env)
        .await?
        .into_inner();
    let body = ReceiptBody::decode(receipt.body.as_slice())?;
    assert_eq!(body.outcome, ReceiptOutcome::Rejected as i32);
    assert!(
        body.reason.starts_with("unknown case reference"),
        "{}",
        body.reason
    );
    let after = admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner()
        .entries_checked;
    assert_eq!(after, before + 1, "the refusal is audited");
    let list = fed
        .hearings("RO", Role::FocalPoint)
        .await?
        .list_hearings(w::ListHearingsRequest {
            direction: w::Direction::Incoming as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(list.hearings.is_empty());
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_hearing_request_on_the_wire_carries_no_identity() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, _) = referred_case(&fed, false).await?;
    // Hold the envelope in AT's outbox: RO is down.
    fed.stop_node("RO").await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let id = ja
        .request_hearing(hearing_request(
            &case_id,
            &[w::ProtectiveMeasure::Anonymity],
        ))
        .await?
        .into_inner()
        .hearing_id;
    fed.stop_node("AT").await?;

    let store = trm_tests::open_store(&fed, "AT")?;
    let items = store.outbox_items(None, usize::MAX)?;
    let item = items
        .iter()
        .find(|i| i.kind == trm_core::messages::EnvelopeKind::HearingRequest)
        .expect("queued hearing request");
    let env = trm_proto::v1::SignedEnvelope::decode(
        store.open_envelope(item)?.expect("not erased").as_slice(),
    )?;
    let bytes = env.encode_to_vec();
    let person = requests::case("Witness", 40).person.unwrap_or_default();
    for needle in [
        person.given_name,
        person.family_name,
        person.date_of_birth,
        person.document_number,
        person.address,
        person.phone,
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} on the wire"
        );
    }
    let body = EnvelopeBody::decode(env.body.as_slice())?;
    assert_eq!(body.case_ref.len(), 32);
    let Some(Payload::HearingRequest(h)) = body.payload else {
        panic!("not a hearing request")
    };
    assert_eq!(h.hearing_id, id);
    assert_eq!(h.legal_basis, "MLA request 2026/17 (UNTOC art. 18)");
    store.close()?;
    drop(store);

    // Back up: the queued request is delivered after the restart.
    fed.start_node("RO").await?;
    fed.start_node("AT").await?;
    let ro = fed.hearings("RO", Role::FocalPoint).await?;
    wait_hearing(&ro, &id, w::HearingStatus::Requested).await?;
    fed.stop().await?;
    Ok(())
}

/// A child witness is heard only with a guardian and a best-interests determination,
/// checked by the witness's country on the child's record it holds (the referral's copy).
#[tokio::test]
async fn a_child_witness_without_a_guardian_or_a_determination_is_not_heard() -> anyhow::Result<()>
{
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let mut ro = fed.hearings("RO", Role::FocalPoint).await?;
    for (guardian, determined, word) in [(false, true, "guardian"), (true, false, "best_interests")]
    {
        let (case_id, _) = referred_with(
            &fed,
            Some(w::ChildInfo {
                is_child: true,
                guardian_assigned: guardian,
                best_interests_determined: determined,
            }),
        )
        .await?;
        let h = ja
            .request_hearing(hearing_request(&case_id, &[]))
            .await?
            .into_inner();
        wait_hearing(&ro, &h.hearing_id, w::HearingStatus::Requested).await?;
        for decision in [w::HearingDecision::Accept, w::HearingDecision::Schedule] {
            let refused = ro
                .respond_to_hearing(w::RespondToHearingRequest {
                    hearing_id: h.hearing_id.clone(),
                    decision: decision as i32,
                    scheduled_at: Some(at(1_900_000_000)),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
            assert!(refused.message().contains(word), "{}", refused.message());
        }
    }
    // With both, the child is heard.
    let (case_id, _) = referred_case(&fed, true).await?;
    let h = ja
        .request_hearing(hearing_request(&case_id, &[]))
        .await?
        .into_inner();
    wait_hearing(&ro, &h.hearing_id, w::HearingStatus::Requested).await?;
    ro.respond_to_hearing(w::RespondToHearingRequest {
        hearing_id: h.hearing_id.clone(),
        decision: w::HearingDecision::Accept as i32,
        ..Default::default()
    })
    .await?;
    fed.stop().await?;
    Ok(())
}

/// `hearing_pending` says whether a hearing of the case is open on the node: what the
/// client types in is ignored.
#[tokio::test]
async fn a_return_proposed_while_a_hearing_of_the_witness_is_open_says_so() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, _) = referred_case(&fed, false).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let h = ja
        .request_hearing(hearing_request(&case_id, &[]))
        .await?
        .into_inner();
    let mut at = crate::returns::returns(&fed, "AT", Role::ServiceProvider).await?;
    at.record_risk_assessment(crate::returns::risk(
        &case_id,
        w::RiskLevel::Low,
        false,
        false,
        false,
    ))
    .await?;
    at.record_return_decision(crate::returns::decision(&case_id, true))
        .await?;
    let mut request = crate::returns::propose(&case_id);
    request.hearing_pending = false;
    let plan = at.propose_return(request).await?.into_inner();
    assert!(plan.hearing_pending, "hearing {} is open", h.hearing_id);
    let ro = crate::returns::returns(&fed, "RO", Role::FocalPoint).await?;
    let there =
        crate::returns::wait_status(&ro, &plan.return_id, w::ReturnStatus::Requested).await?;
    assert!(there.hearing_pending, "the flag travels with the request");
    let mut work = fed.work("AT", Role::JudicialAuthority).await?;
    let told = work
        .list_tasks(w::ListTasksRequest {
            kinds: vec![w::TaskKind::ReturnOfWitnessProposed as i32],
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks;
    assert_eq!(
        told.iter()
            .map(|t| t.record_id.as_str())
            .collect::<Vec<_>>(),
        [plan.return_id.as_str()],
        "the prosecutor is told of the return of its witness"
    );
    // The hearing ends: the flag follows on both nodes.
    ja.cancel_hearing(w::CancelHearingRequest {
        hearing_id: h.hearing_id.clone(),
        reason: "no longer needed".into(),
        ..Default::default()
    })
    .await?;
    for (node, client) in [("AT", &at), ("RO", &ro)] {
        crate::returns::plan_where(client, &plan.return_id, node, |p| !p.hearing_pending).await?;
    }
    fed.stop().await?;
    Ok(())
}

/// A child's hearing refused for want of a guardian is accepted once the guardian and the
/// determination are recorded at the case's node and have reached the copy the witness's
/// node holds (UpdateCase).
#[tokio::test]
async fn a_child_is_heard_once_the_guardian_and_the_determination_reach_the_copy(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let mut ro = fed.hearings("RO", Role::FocalPoint).await?;
    let (case_id, _) = referred_with(
        &fed,
        Some(w::ChildInfo {
            is_child: true,
            guardian_assigned: false,
            best_interests_determined: false,
        }),
    )
    .await?;
    let h = ja
        .request_hearing(hearing_request(&case_id, &[]))
        .await?
        .into_inner();
    wait_hearing(&ro, &h.hearing_id, w::HearingStatus::Requested).await?;
    let accept = w::RespondToHearingRequest {
        hearing_id: h.hearing_id.clone(),
        decision: w::HearingDecision::Accept as i32,
        ..Default::default()
    };
    let refused = ro.respond_to_hearing(accept.clone()).await.unwrap_err();
    assert!(
        refused.message().contains("guardian"),
        "{}",
        refused.message()
    );

    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.update_case(w::UpdateCaseRequest {
        case_id: case_id.clone(),
        child: Some(w::ChildInfo {
            is_child: true,
            guardian_assigned: true,
            best_interests_determined: true,
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["child".into()],
        }),
        ..Default::default()
    })
    .await?;
    eventually("the hearing accepted once the copy is current", || {
        let (mut ro, accept) = (ro.clone(), accept.clone());
        async move { Ok(ro.respond_to_hearing(accept).await.ok()) }
    })
    .await?;
    wait_hearing(&ja, &h.hearing_id, w::HearingStatus::Accepted).await?;
    fed.stop().await?;
    Ok(())
}

/// A child's case in AT referred to RO under a consent that leaves out the CHILD category:
/// RO's copy does not say the person is a child. Returns the case id and the referral id.
async fn referred_without_the_child_category(
    fed: &TestFederation,
    child: w::ChildInfo,
) -> anyhow::Result<(String, String)> {
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut req = requests::case("Witness", 15);
    req.child = Some(child);
    let case_id = sp.create_case(req).await?.into_inner().case_id;
    sp.record_consent(requests::consent(
        &case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[w::DataCategory::Demographics, w::DataCategory::Needs],
    ))
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
    trm_tests::referral_arrived(&ro, &referral_id).await?;
    Ok((case_id, referral_id))
}

/// RO's copy of a child's case does not say the person is a child (the consent left the
/// category out), so RO's request names no child measures. AT, which holds the case, adds
/// them: refusing the request would tell RO's prosecutor that the witness is a child.
#[tokio::test]
async fn a_request_without_child_measures_is_completed_by_the_childs_country_never_refused(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let child = w::ChildInfo {
        is_child: true,
        guardian_assigned: true,
        best_interests_determined: true,
    };
    let (_, referral_id) = referred_without_the_child_category(&fed, child).await?;
    let mut ja = fed.hearings("RO", Role::JudicialAuthority).await?;
    let mut request = hearing_request(&referral_id, &[w::ProtectiveMeasure::Interpreter]);
    request.witness_country = "AT".into();
    let asked = ja.request_hearing(request).await?.into_inner();
    assert_eq!(
        asked.measures,
        [w::ProtectiveMeasure::Interpreter as i32],
        "RO's copy does not say child"
    );
    let at = fed.hearings("AT", Role::FocalPoint).await?;
    let held = wait_hearing(&at, &asked.hearing_id, w::HearingStatus::Requested).await?;
    for m in [
        w::ProtectiveMeasure::Interpreter,
        w::ProtectiveMeasure::ChildFriendlyRoom,
        w::ProtectiveMeasure::SupportPerson,
    ] {
        assert!(
            held.measures.contains(&(m as i32)),
            "{m:?} in {:?}",
            held.measures
        );
    }
    // At RO the request stands as it was made, and nothing there says child.
    let seen = ja
        .get_hearing(w::GetHearingRequest {
            hearing_id: asked.hearing_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(seen.status, w::HearingStatus::Requested as i32);
    assert!(
        !seen.status_reason.to_lowercase().contains("child"),
        "{seen:?}"
    );
    fed.stop().await?;
    Ok(())
}

/// The guardian and the best-interests determination are checked by the node that holds
/// the child's case. Where the witness's country cannot check them (its copy does not carry
/// the child category), the requesting node, which holds the case, checks them when the
/// hearing is requested, and keeps and sends nothing.
#[tokio::test]
async fn a_child_heard_where_the_copy_says_nothing_of_it_is_checked_by_the_node_holding_the_case(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    for (guardian, determined, word) in [(false, true, "guardian"), (true, false, "best_interests")]
    {
        let child = w::ChildInfo {
            is_child: true,
            guardian_assigned: guardian,
            best_interests_determined: determined,
        };
        let (case_id, _) = referred_without_the_child_category(&fed, child).await?;
        let refused = ja
            .request_hearing(hearing_request(&case_id, &[]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains(word), "{}", refused.message());
    }
    let listed = ja
        .list_hearings(w::ListHearingsRequest {
            direction: w::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .hearings;
    assert!(listed.is_empty(), "no hearing was kept: {listed:?}");
    // With both, the request goes.
    let child = w::ChildInfo {
        is_child: true,
        guardian_assigned: true,
        best_interests_determined: true,
    };
    let (case_id, _) = referred_without_the_child_category(&fed, child).await?;
    ja.request_hearing(hearing_request(&case_id, &[])).await?;
    fed.stop().await?;
    Ok(())
}

/// The prosecutor told that its witness's return was proposed has nothing left to weigh
/// once the plan ends because the victim withdrew consent: the task closes.
#[tokio::test]
async fn the_task_about_a_witness_return_closes_when_the_plan_ends_by_erasure() -> anyhow::Result<()>
{
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, _) = referred_case(&fed, false).await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    ja.request_hearing(hearing_request(&case_id, &[])).await?;
    let (at, plan) = proposed_return(&fed, &case_id).await?;
    let work = fed.work("AT", Role::JudicialAuthority).await?;
    let told = || {
        let request = w::ListTasksRequest {
            kinds: vec![w::TaskKind::ReturnOfWitnessProposed as i32],
            ..Default::default()
        };
        let mut work = work.clone();
        async move { anyhow::Ok(work.list_tasks(request).await?.into_inner().tasks.len()) }
    };
    assert_eq!(told().await?, 1);
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    trm_tests::withdraw_all_consents(&sp, &case_id).await?;
    crate::returns::wait_status(&at, &plan.return_id, w::ReturnStatus::Halted).await?;
    assert_eq!(told().await?, 0, "the task closed with the plan");
    fed.stop().await?;
    Ok(())
}

/// A copy erased at the victim's request says nothing more of the person, child or not:
/// the witness's country cannot check a child's guardian on it, so it does not accept or
/// schedule the hearing on it, where before it would have taken the silence for an adult.
#[tokio::test]
async fn a_hearing_is_not_accepted_on_a_copy_erased_since_it_was_requested() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, referral_id) = referred_with(
        &fed,
        Some(w::ChildInfo {
            is_child: true,
            guardian_assigned: false,
            best_interests_determined: false,
        }),
    )
    .await?;
    let mut ja = fed.hearings("AT", Role::JudicialAuthority).await?;
    let h = ja
        .request_hearing(hearing_request(&case_id, &[]))
        .await?
        .into_inner();
    let mut ro = fed.hearings("RO", Role::FocalPoint).await?;
    wait_hearing(&ro, &h.hearing_id, w::HearingStatus::Requested).await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    trm_tests::withdraw_all_consents(&sp, &case_id).await?;
    let ro_referrals = fed.referrals("RO", Role::FocalPoint).await?;
    eventually("RO's copy erased", || {
        let (mut r, id) = (ro_referrals.clone(), referral_id.clone());
        async move {
            let copy = r
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            let erased = copy.disclosed.is_some_and(|d| d.child.is_none());
            Ok(erased.then_some(()))
        }
    })
    .await?;
    for decision in [w::HearingDecision::Accept, w::HearingDecision::Schedule] {
        let refused = ro
            .respond_to_hearing(w::RespondToHearingRequest {
                hearing_id: h.hearing_id.clone(),
                decision: decision as i32,
                scheduled_at: Some(at(1_900_000_000)),
                ..Default::default()
            })
            .await
            .expect_err("nothing left to check the child's guardian on");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
    }
    fed.stop().await?;
    Ok(())
}

/// The prosecutor told of a witness's return is the one who asked to hear the witness: a
/// hearing RO requested of a person AT holds tells RO's judicial authority when AT proposes
/// the return, not AT's, who asked for nothing.
#[tokio::test]
async fn the_prosecutor_who_asked_for_the_hearing_is_told_of_the_return() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let (case_id, referral_id) = referred_case(&fed, false).await?;
    let mut ro_ja = fed.hearings("RO", Role::JudicialAuthority).await?;
    let mut request = hearing_request(&referral_id, &[]);
    request.witness_country = "AT".into();
    let h = ro_ja.request_hearing(request).await?.into_inner();
    wait_hearing(
        &fed.hearings("AT", Role::FocalPoint).await?,
        &h.hearing_id,
        w::HearingStatus::Requested,
    )
    .await?;
    let (_, plan) = proposed_return(&fed, &case_id).await?;
    let told = |node: &'static str| {
        let fed = &fed;
        async move {
            let mut work = fed.work(node, Role::JudicialAuthority).await?;
            anyhow::Ok(
                work.list_tasks(w::ListTasksRequest {
                    kinds: vec![w::TaskKind::ReturnOfWitnessProposed as i32],
                    ..Default::default()
                })
                .await?
                .into_inner()
                .tasks
                .into_iter()
                .map(|t| t.record_id)
                .collect::<Vec<_>>(),
            )
        }
    };
    eventually("RO's prosecutor told", || async {
        let ids = told("RO").await?;
        Ok((ids == [plan.return_id.clone()]).then_some(()))
    })
    .await?;
    assert!(told("AT").await?.is_empty(), "AT's asked for no hearing");
    fed.stop().await?;
    Ok(())
}
