//! Consent withdrawal, erasure at every recipient, and no personal data in logs or files.

use tonic::Code;
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{captured_logs, eventually, files_containing, TestFederation};

const NAME: &str = "Vasilica Withdrawtest";
const BIRTH: &str = "1997-03-14";
const DOCUMENT: &str = "DOC-77-WITHDRAW";
const ADDRESS: &str = "Erasure Lane 5";

#[tokio::test]
async fn consent_withdrawal_erases_every_recipient_copy_and_each_confirms() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let (given, family) = NAME.split_once(' ').unwrap_or((NAME, ""));
    let case = sp
        .create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: given.into(),
                family_name: family.into(),
                date_of_birth: BIRTH.into(),
                gender: w::Gender::Female as i32,
                document_number: DOCUMENT.into(),
                address: ADDRESS.into(),
                ..Default::default()
            }),
            needs: Some(w::Needs {
                kinds: vec![w::NeedKind::Shelter as i32],
                urgency: w::Urgency::Urgent as i32,
                notes: String::new(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let consent = sp
        .record_consent(w::RecordConsentRequest {
            case_id: case.case_id.clone(),
            purposes: vec![w::Purpose::ReferralAssistance as i32],
            recipients: vec!["RO".into(), "NG".into()],
            informed: true,
            information_language: "ro".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut sent = Vec::new();
    for to in ["RO", "NG"] {
        let r = sp
            .submit_referral(w::SubmitReferralRequest {
                case_id: case.case_id.clone(),
                destination: to.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        sent.push((to, r.referral_id));
    }
    // Both arrive; RO accepts.
    for (to, id) in &sent {
        let mut fp = fed.referrals(to, Role::FocalPoint).await?;
        trm_tests::referral_arrived(&fp, id).await?;
        if *to == "RO" {
            fp.respond_to_referral(w::RespondToReferralRequest {
                referral_id: id.clone(),
                decision: w::ReferralDecision::Accept as i32,
                reason: String::new(),
                ..Default::default()
            })
            .await?;
        }
    }

    let withdrawn = sp
        .withdraw_consent(w::WithdrawConsentRequest {
            case_id: case.case_id.clone(),
            consent_id: consent.consent_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(withdrawn.withdrawn_at.is_some());

    // Every recipient confirms; the origin shows it.
    for (to, id) in &sent {
        let at_origin = eventually("the erasure confirmation", || {
            let mut sp = sp.clone();
            let id = id.clone();
            async move {
                let r = sp
                    .get_referral(w::GetReferralRequest { referral_id: id })
                    .await?
                    .into_inner();
                Ok(r.erasure_confirmed.then_some(r))
            }
        })
        .await?;
        assert!(at_origin.erasure_requested, "{to}");
        assert_eq!(
            at_origin.status,
            w::ReferralStatus::Withdrawn as i32,
            "{to}"
        );
        let mut fp = fed.referrals(to, Role::FocalPoint).await?;
        let copy = fp
            .get_referral(w::GetReferralRequest {
                referral_id: id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(copy.status, w::ReferralStatus::Withdrawn as i32, "{to}");
        let d = copy.disclosed.unwrap_or_default();
        assert_eq!(
            w::DisclosedCase {
                case_ref: d.case_ref.clone(),
                ..Default::default()
            },
            d,
            "{to} keeps only a tombstone with ids"
        );
        assert!(copy.requested_services.is_empty());
    }

    // No further disclosure under the withdrawn consent; withdrawing twice is refused.
    let err = sp
        .submit_referral(w::SubmitReferralRequest {
            case_id: case.case_id.clone(),
            destination: "RO".into(),
            ..Default::default()
        })
        .await
        .expect_err("consent withdrawn");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("consent"));
    let err = sp
        .withdraw_consent(w::WithdrawConsentRequest {
            case_id: case.case_id.clone(),
            consent_id: consent.consent_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("already withdrawn");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let admin = fed.admin("AT", Role::Operator).await?;
    let status = eventually("the origin's outbox to drain", || {
        let mut admin = admin.clone();
        async move {
            let s = admin.status(w::StatusRequest {}).await?.into_inner();
            Ok((s.outbox_depth == 0).then_some(s))
        }
    })
    .await?;
    assert_eq!(status.dead_letters, 0);

    // Neither the files nor the logs of any node hold the victim's data in clear.
    let dir = fed.stop().await?;
    let logs = captured_logs();
    assert!(logs.contains("referral submitted"), "logs were captured");
    for needle in [given, family, BIRTH, DOCUMENT, ADDRESS] {
        assert!(!logs.contains(needle), "{needle} in the logs");
        let hits = files_containing(dir.path(), needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
    }
    Ok(())
}

#[tokio::test]
async fn either_side_can_withdraw_an_open_referral() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case = sp
        .create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: "W".into(),
                gender: w::Gender::Male as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    sp.record_consent(w::RecordConsentRequest {
        case_id: case.case_id.clone(),
        purposes: vec![w::Purpose::ReferralAssistance as i32],
        recipients: vec!["RO".into()],
        informed: true,
        information_language: "en".into(),
        ..Default::default()
    })
    .await?;
    let ro = fed.referrals("RO", Role::FocalPoint).await?;
    for withdrawer in ["RO", "AT"] {
        let r = sp
            .submit_referral(w::SubmitReferralRequest {
                case_id: case.case_id.clone(),
                destination: "RO".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let id = r.referral_id.clone();
        eventually("arrival", || {
            let mut ro = ro.clone();
            let id = id.clone();
            async move {
                Ok(ro
                    .get_referral(w::GetReferralRequest { referral_id: id })
                    .await
                    .ok())
            }
        })
        .await?;
        let (mut mine, mut other) = if withdrawer == "RO" {
            (ro.clone(), sp.clone())
        } else {
            (sp.clone(), ro.clone())
        };
        mine.withdraw_referral(w::WithdrawReferralRequest {
            referral_id: id.clone(),
            reason: "no longer needed".into(),
            ..Default::default()
        })
        .await?;
        let seen =
            trm_tests::referral_with_status(&other, &id, w::ReferralStatus::Withdrawn).await?;
        assert_eq!(seen.status_reason, "no longer needed");
        let err = other
            .withdraw_referral(w::WithdrawReferralRequest {
                referral_id: id,
                reason: String::new(),
                ..Default::default()
            })
            .await
            .expect_err("already withdrawn");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("withdrawn"), "{}", err.message());
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn erasing_a_case_destroys_it_here_and_every_copy_elsewhere() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case = sp
        .create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: "Erase".into(),
                gender: w::Gender::Female as i32,
                ..Default::default()
            }),
            needs: Some(w::Needs {
                kinds: vec![w::NeedKind::Medical as i32],
                urgency: w::Urgency::Routine as i32,
                notes: String::new(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Two consents, one per destination.
    for to in ["RO", "NG"] {
        sp.record_consent(w::RecordConsentRequest {
            case_id: case.case_id.clone(),
            purposes: vec![w::Purpose::ReferralAssistance as i32],
            recipients: vec![to.into()],
            informed: true,
            information_language: "en".into(),
            ..Default::default()
        })
        .await?;
    }
    let mut refs = Vec::new();
    for to in ["RO", "NG"] {
        let r = sp
            .submit_referral(w::SubmitReferralRequest {
                case_id: case.case_id.clone(),
                destination: to.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        refs.push((to, r.referral_id, r.disclosed.unwrap_or_default().case_ref));
    }
    // Pairwise pseudonyms: the two recipients cannot link the case by reference.
    assert_ne!(refs[0].2, refs[1].2);

    let erased = sp
        .erase_case(w::EraseCaseRequest {
            case_id: case.case_id.clone(),
            reason: "victim's request".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(erased.erasure_requests, 2);
    let err = sp
        .get_case(w::GetCaseRequest {
            case_id: case.case_id.clone(),
        })
        .await
        .expect_err("erased");
    assert_eq!(err.code(), Code::NotFound);
    for (to, id, _) in &refs {
        let r = eventually("every recipient's confirmation", || {
            let mut sp = sp.clone();
            let id = id.clone();
            async move {
                let r = sp
                    .get_referral(w::GetReferralRequest { referral_id: id })
                    .await?
                    .into_inner();
                Ok(r.erasure_confirmed.then_some(r))
            }
        })
        .await?;
        assert_eq!(r.status, w::ReferralStatus::Withdrawn as i32, "{to}");
        let mut fp = fed.referrals(to, Role::FocalPoint).await?;
        let copy = fp
            .get_referral(w::GetReferralRequest {
                referral_id: id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(
            copy.disclosed.and_then(|d| d.needs),
            None,
            "{to} erased its copy"
        );
    }
    fed.stop().await?;
    Ok(())
}

/// A case erased after a consent was withdrawn is erased here too: the record of what was
/// sent under that consent, kept while the case was, goes with the case.
#[tokio::test]
async fn erasing_a_case_after_a_withdrawal_erases_what_this_node_kept_of_the_copy(
) -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let case_id = sp
        .clone()
        .create_case(trm_tests::requests::case("Withdrawn then erased", 30))
        .await?
        .into_inner()
        .case_id;
    let referral_id = trm_tests::refer_case(&sp, &case_id, "RO").await?;
    trm_tests::withdraw_all_consents(&sp, &case_id).await?;
    let mut sp = sp.clone();
    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    let kept = fp
        .get_referral(w::GetReferralRequest {
            referral_id: referral_id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        kept.disclosed.is_some_and(|d| d.age_band != 0),
        "what was sent is kept while the case is"
    );
    sp.erase_case(w::EraseCaseRequest {
        case_id: case_id.clone(),
        reason: "victim's request".into(),
        ..Default::default()
    })
    .await?;
    let after = fp
        .get_referral(w::GetReferralRequest { referral_id })
        .await?
        .into_inner();
    let d = after.disclosed.unwrap_or_default();
    assert!(
        d.age_band == 0 && d.gender == 0 && d.needs.is_none() && d.identity.is_none(),
        "only the pairwise reference is left: {d:?}"
    );
    fed.stop().await?;
    Ok(())
}

/// The sandbox's whole story (referral, return plan, witness hearing between AT and RO),
/// then everything a node leaves behind: its files (databases, key files, journals), a
/// backup of each node, its audit export, its metrics page and every log line.
#[tokio::test]
async fn the_whole_sandbox_story_leaves_no_victims_data_in_logs_metrics_exports_backups_or_files(
) -> anyhow::Result<()> {
    use trmctl::sandbox;
    trm_tests::capture_logs();
    let dir = tempfile::tempdir()?;
    let specs = vec![
        trm_tests::free_node_spec("AT")?,
        trm_tests::free_node_spec("RO")?,
    ];
    sandbox::init(dir.path(), &specs, false)?;
    let mut nodes = Vec::new();
    for spec in &specs {
        let cfg = trm_node::NodeConfig::load(&sandbox::config_path(dir.path(), spec.id))?;
        let listeners = trm_node::Listeners::bind(&cfg.listen).await?;
        nodes.push(trm_node::NodeHandle::spawn(cfg, listeners)?);
    }
    let mut story = Vec::new();
    trmctl::scenario::run(dir.path(), specs[0].id, specs[1].id, &mut story).await?;
    let story = String::from_utf8_lossy(&story);
    assert!(
        story.contains("Exemplu"),
        "the story shows the user what each node holds"
    );

    let mut outputs = String::new();
    for (spec, node) in specs.iter().zip(&nodes) {
        let ch = trmctl::scenario::client(dir.path(), spec.id, Role::Operator, true).await?;
        let mut admin = trm_proto::v1::admin_service_client::AdminServiceClient::new(ch);
        let audit = admin
            .export_audit(w::ExportAuditRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(!audit.entries.is_empty());
        outputs.push_str(&format!("{audit:?}"));
        admin
            .backup(w::BackupRequest {
                path: dir
                    .path()
                    .join(format!("backups/{}", spec.id))
                    .display()
                    .to_string(),
            })
            .await?;
        outputs.push_str(&trm_tests::metrics(node.addrs.metrics).await?);
    }
    for node in nodes {
        node.stop().await?;
    }
    let logs = captured_logs();
    assert!(logs.contains("referral submitted"), "logs were captured");
    // Every identity and contact value of the sandbox's victim (trmctl's scenario).
    for needle in [
        "Maria",
        "Exemplu",
        "2001-04-02",
        "SANDBOX-0001",
        "Shelter 1, Sandbox Street",
        "+00 000 0000",
    ] {
        assert!(!logs.contains(needle), "{needle} in the logs");
        assert!(
            !outputs.contains(needle),
            "{needle} in an export or metrics"
        );
        let hits = files_containing(dir.path(), needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
    }
    Ok(())
}
