//! A case changes over its life (`UpdateCase`, AIP-134): only the groups the mask names
//! change, and what changed reaches every copy sent under a still active consent, as far
//! as that copy's purpose and consent allow.

use prost_types::FieldMask;
use tonic::{transport::Channel, Code};
use trm_core::ids::Role;
use trm_proto::v1::{self as w, referral_service_client::ReferralServiceClient};
use trm_tests::{eventually, requests, TestFederation};

fn update(case_id: &str, paths: &[&str]) -> w::UpdateCaseRequest {
    w::UpdateCaseRequest {
        case_id: case_id.into(),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).into()).collect(),
        }),
        ..Default::default()
    }
}

/// The referral's copy at RO once `pred` holds of it.
async fn copy_at_ro(
    ro: &ReferralServiceClient<Channel>,
    id: &str,
    what: &str,
    pred: fn(&w::DisclosedCase) -> bool,
) -> anyhow::Result<w::DisclosedCase> {
    eventually(what, || {
        let mut ro = ro.clone();
        let id = id.to_owned();
        async move {
            let r = ro
                .get_referral(w::GetReferralRequest { referral_id: id })
                .await?
                .into_inner();
            Ok(r.disclosed.filter(pred))
        }
    })
    .await
}

/// A case of AT's provider, referred to RO and arrived there.
struct Referred {
    sp: ReferralServiceClient<Channel>,
    case_id: String,
    referral_id: String,
    /// RO's focal point.
    ro: ReferralServiceClient<Channel>,
}

async fn referred(fed: &TestFederation) -> anyhow::Result<Referred> {
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .create_case(requests::case("Ana", 10))
        .await?
        .into_inner()
        .case_id;
    let referral_id = trm_tests::refer_case(&sp, &case_id, "RO").await?;
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    trm_tests::referral_arrived(&ro, &referral_id).await?;
    Ok(Referred {
        sp,
        case_id,
        referral_id,
        ro,
    })
}

#[tokio::test]
async fn an_update_changes_the_groups_named_and_reaches_the_copy_as_far_as_it_may(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let Referred {
        mut sp,
        case_id,
        referral_id,
        ro,
    } = referred(&fed).await?;

    // Needs and the child's protection change; the person, sent but not named, does not.
    let mut req = update(&case_id, &["needs", "child"]);
    req.needs = Some(w::Needs {
        kinds: vec![w::NeedKind::Shelter as i32, w::NeedKind::Medical as i32],
        urgency: w::Urgency::Urgent as i32,
        notes: "needs a doctor".into(),
    });
    req.child = Some(w::ChildInfo {
        is_child: true,
        guardian_assigned: true,
        best_interests_determined: false,
    });
    req.person = Some(w::Person {
        given_name: "NotNamedInTheMask".into(),
        ..Default::default()
    });
    let case = sp.update_case(req).await?.into_inner();
    assert_eq!(case.person.clone().unwrap_or_default().given_name, "Ana");
    assert_eq!(case.needs.clone().unwrap_or_default().kinds.len(), 2);
    assert!(case.child.unwrap_or_default().guardian_assigned);

    let copy = copy_at_ro(&ro, &referral_id, "the copy's new needs", |d| {
        d.needs.as_ref().is_some_and(|n| n.kinds.len() == 2)
    })
    .await?;
    let needs = copy.needs.clone().unwrap_or_default();
    assert!(needs.notes.is_empty(), "free-text notes never leave");
    assert!(copy
        .child
        .is_some_and(|c| c.is_child && c.guardian_assigned));
    assert!(
        copy.identity.is_none(),
        "a referral's copy holds no identity, before or after"
    );

    // The person changes here; nothing of it may cross for a referral (the needs changed
    // with it show when the update has arrived).
    let mut req = update(&case_id, &["person", "needs"]);
    req.needs = Some(w::Needs {
        kinds: vec![w::NeedKind::Shelter as i32],
        urgency: w::Urgency::Routine as i32,
        notes: String::new(),
    });
    req.person = Some(w::Person {
        given_name: "Anca".into(),
        family_name: "Testperson".into(),
        date_of_birth: "1995-05-05".into(),
        gender: w::Gender::Female as i32,
        citizenship: vec!["RO".into()],
        ..Default::default()
    });
    let case = sp.update_case(req).await?.into_inner();
    assert_eq!(case.person.unwrap_or_default().given_name, "Anca");
    let copy = copy_at_ro(&ro, &referral_id, "the second update at RO", |d| {
        d.needs.as_ref().is_some_and(|n| n.kinds.len() == 1)
    })
    .await?;
    assert!(copy.identity.is_none(), "still no identity");

    // Bad masks change nothing and name the field.
    for (paths, why) in [
        (&[][..], "an empty mask"),
        (&["person.secret"][..], "an unknown path"),
        (&["needs", "case_id"][..], "a path that is not a group"),
    ] {
        let err = sp.update_case(update(&case_id, paths)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}");
        assert!(
            err.message().contains("update_mask"),
            "{why}: {}",
            err.message()
        );
    }
    let after = sp
        .get_case(w::GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(after.needs.unwrap_or_default().kinds.len(), 1);

    // Another organisation's provider may not change the case.
    let mut sp2 = fed.referrals_of_org("AT", "sp2").await?;
    let mut theirs = update(&case_id, &["child"]);
    theirs.child = Some(w::ChildInfo::default());
    let err = sp2.update_case(theirs).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    fed.stop().await?;
    Ok(())
}

/// One person, one case: a second case of the same person (names in another order and
/// case, the same date of birth) is found through a keyed blind index, never by opening a
/// case, and is still created; another person is not paired; erasing the case removes the
/// pair. (Who sees the review, and that the provider does not: `tasks.rs`.)
#[tokio::test]
async fn a_second_case_of_the_same_person_is_found_and_forgotten_with_its_erasure(
) -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp1 = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut sp2 = fed.referrals_of_org("AT", "sp2").await?;
    let first = sp1
        .create_case(requests::case("Ana Maria", 10))
        .await?
        .into_inner();
    let mut same = requests::case("ana", 3);
    if let Some(p) = same.person.as_mut() {
        p.family_name = "MARIA Testperson".into();
        p.phone = String::new();
    }
    let second = sp2.create_case(same).await?.into_inner();
    let mut other = requests::case("Ana Maria", 10);
    if let Some(p) = other.person.as_mut() {
        p.date_of_birth = "1996-06-06".into();
    }
    sp2.create_case(other).await?;
    assert_eq!(second.organisation, "sp2", "created as any case is");

    fed.stop_node("AT").await?;
    let store = trm_tests::open_store(&fed, "AT")?;
    let pairs: Vec<(String, String)> = store
        .possible_duplicates()?
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    store.close()?;
    drop(store);
    assert_eq!(pairs, [(second.case_id.clone(), first.case_id.clone())]);
    fed.start_node("AT").await?;

    // The same client, reconnected.
    sp2.erase_case(w::EraseCaseRequest {
        case_id: second.case_id.clone(),
        reason: "duplicate".into(),
        ..Default::default()
    })
    .await?;
    fed.stop_node("AT").await?;
    let store = trm_tests::open_store(&fed, "AT")?;
    assert!(
        store.possible_duplicates()?.is_empty(),
        "erased with the case"
    );
    store.close()?;
    fed.stop().await?;
    Ok(())
}

/// A copy that an update made rely on a consent given later is erased when that consent is
/// withdrawn: the update records the copy under every consent it used.
#[tokio::test]
async fn a_copy_that_came_to_rely_on_a_later_consent_goes_with_it() -> anyhow::Result<()> {
    use crate::returns::{propose, ready_case, returns, wait_status};
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut at = returns(&fed, "AT", Role::ServiceProvider).await?;
    let ro = returns(&fed, "RO", Role::FocalPoint).await?;
    let case_id = ready_case(
        &mut sp,
        &mut at,
        &[w::DataCategory::Demographics, w::DataCategory::Needs],
    )
    .await?;
    let id = at
        .propose_return(propose(&case_id))
        .await?
        .into_inner()
        .return_id;
    let first = wait_status(&ro, &id, w::ReturnStatus::Requested).await?;
    assert!(first.disclosed.unwrap_or_default().identity.is_none());

    // A later consent lets identity and contact cross for the return; an update sends them.
    let later = sp
        .record_consent(requests::consent(
            &case_id,
            &[w::Purpose::ReturnPlanning],
            &["RO"],
            &[w::DataCategory::Identity, w::DataCategory::Contact],
        ))
        .await?
        .into_inner();
    let mut req = update(&case_id, &["person"]);
    req.person = requests::case("Elena", 45).person;
    sp.update_case(req).await?;
    let has_identity = |plan: &w::ReturnPlan| {
        plan.disclosed
            .as_ref()
            .and_then(|d| d.identity.as_ref())
            .is_some_and(|p| !p.phone.is_empty())
    };
    eventually("the copy holds what the later consent allows", || {
        let (mut ro, id) = (ro.clone(), id.clone());
        async move {
            let p = ro
                .get_return_plan(w::GetReturnPlanRequest { return_id: id })
                .await?
                .into_inner();
            Ok(has_identity(&p).then_some(()))
        }
    })
    .await?;

    sp.withdraw_consent(w::WithdrawConsentRequest {
        case_id: case_id.clone(),
        consent_id: later.consent_id.clone(),
        ..Default::default()
    })
    .await?;
    eventually("the copy erased with the consent it relied on", || {
        let (mut ro, id) = (ro.clone(), id.clone());
        async move {
            let p = ro
                .get_return_plan(w::GetReturnPlanRequest { return_id: id })
                .await?
                .into_inner();
            Ok((!has_identity(&p)).then_some(()))
        }
    })
    .await?;
    fed.stop().await?;
    Ok(())
}

/// An update the origin sends again after a newer one arrived (an operator retrying a dead
/// letter) never undoes the newer one: the copy keeps what the origin decided last, by the
/// order the origin made its messages in (their UUIDv7 ids), not the order they arrive in.
#[tokio::test]
async fn an_older_update_sent_again_never_undoes_a_newer_one() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let Referred {
        mut sp,
        case_id,
        referral_id,
        ro,
    } = referred(&fed).await?;
    let needs = |kinds: &[w::NeedKind]| {
        let mut req = update(&case_id, &["needs"]);
        req.needs = Some(w::Needs {
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            urgency: w::Urgency::Urgent as i32,
            notes: String::new(),
        });
        req
    };

    // RO stops taking AT's envelopes: the first update becomes a dead letter at AT.
    let mut ro_admin = fed.admin("RO", Role::Operator).await?;
    crate::directory::remove_peer(&mut ro_admin, "AT").await?;
    let older = [
        w::NeedKind::Shelter,
        w::NeedKind::Medical,
        w::NeedKind::Legal,
    ];
    sp.update_case(needs(&older)).await?;
    let dead = eventually("the first update's dead letter", || async {
        let dead = crate::directory::outbox(&fed, "AT", true).await?;
        Ok(dead.into_iter().find(|e| e.kind == "referral_update"))
    })
    .await?;

    // RO trusts AT again, and a newer update arrives.
    crate::directory::trust_again(&fed, &mut ro_admin, "AT").await?;
    sp.update_case(needs(&[w::NeedKind::Shelter])).await?;
    copy_at_ro(&ro, &referral_id, "the newer update at RO", |d| {
        d.needs.as_ref().is_some_and(|n| n.kinds.len() == 1)
    })
    .await?;

    // AT's operator sends the older one again: RO acknowledges it and keeps the newer.
    fed.admin("AT", Role::Operator)
        .await?
        .retry_delivery(w::RetryDeliveryRequest {
            message_id: dead.message_id.clone(),
            ..Default::default()
        })
        .await?;
    eventually("the older update acknowledged", || async {
        let left = crate::directory::outbox(&fed, "AT", false).await?;
        Ok(left.is_empty().then_some(()))
    })
    .await?;
    let copy = ro
        .clone()
        .get_referral(w::GetReferralRequest {
            referral_id: referral_id.clone(),
        })
        .await?
        .into_inner()
        .disclosed
        .unwrap_or_default();
    assert_eq!(
        copy.needs.unwrap_or_default().kinds,
        [w::NeedKind::Shelter as i32],
        "the copy shows the newer update"
    );
    fed.stop().await?;
    Ok(())
}
