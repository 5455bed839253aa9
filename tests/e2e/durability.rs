//! The durable point: what a node acknowledged survives, and a failed sync stops the node
//! from taking writes, says why, and turns it NOT_SERVING.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_tests::{captured_logs, http_get, requests, TestFederation};

#[tokio::test]
async fn a_failed_sync_stops_writes_turns_the_node_not_serving_and_loses_nothing_acknowledged(
) -> anyhow::Result<()> {
    let disk_fails = Arc::new(AtomicBool::new(false));
    let fails = disk_fails.clone();
    let mut fed = TestFederation::builder()
        .nodes(&["AT"])
        .sync_hook("AT", move || {
            if fails.load(Ordering::SeqCst) {
                Err(std::io::Error::other("injected: the disk refused to sync"))
            } else {
                Ok(())
            }
        })
        .start()
        .await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let kept = sp
        .create_case(requests::case("Acknowledged", 3))
        .await?
        .into_inner();

    disk_fails.store(true, Ordering::SeqCst);
    let err = sp
        .create_case(requests::case("Never acknowledged", 3))
        .await
        .expect_err("the sync failed");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        err.message(),
        "storage unavailable",
        "no detail reaches the client"
    );

    // The disk answers again, but what the failed group wrote may already have been seen:
    // the node takes no more writes, and no read of a victim record goes unaudited.
    disk_fails.store(false, Ordering::SeqCst);
    let err = sp
        .create_case(requests::case("After", 3))
        .await
        .expect_err("latched");
    assert_eq!(err.code(), Code::Unavailable);
    let err = sp
        .get_case(w::GetCaseRequest {
            case_id: kept.case_id.clone(),
        })
        .await
        .expect_err("a read whose audit entry cannot be written is refused");
    assert_eq!(err.code(), Code::Unavailable);
    let metrics = fed.node("AT")?.addrs.metrics;
    let ready = http_get(metrics, "/readyz").await?;
    assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
    assert!(ready.contains("storage failed"), "{ready}");
    let channel = fed.channel("AT", Role::ServiceProvider, false).await?;
    trm_tests::referral_health_becomes(&channel, ServingStatus::NotServing).await?;
    // The same health in clear text on the metrics port, for probes without a certificate.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{metrics}"))?
        .connect()
        .await?;
    let s = HealthClient::new(plain)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "trm.v1.ReferralService".into(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(s, ServingStatus::NotServing as i32);
    assert!(
        captured_logs().contains("a durable point failed"),
        "the cause is logged"
    );

    // After a restart (the disk looked at) what was acknowledged is there.
    fed.stop_node("AT").await?;
    fed.start_node("AT").await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let back = sp
        .get_case(w::GetCaseRequest {
            case_id: kept.case_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(back.person, kept.person);
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_retried_request_returns_the_original_result_and_changes_nothing() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut create = requests::case("Retried", 3);
    create.request_id = request_id.clone();
    let first = sp.create_case(create.clone()).await?.into_inner();
    let again = sp.create_case(create.clone()).await?.into_inner();
    assert_eq!(first.case_id, again.case_id, "the original result");
    let listed = sp
        .list_cases(w::ListCasesRequest::default())
        .await?
        .into_inner()
        .cases;
    assert_eq!(listed.len(), 1, "no second case");
    // The same id with another request.
    let mut other = requests::case("Someone else", 3);
    other.request_id = request_id.clone();
    let err = sp
        .create_case(other)
        .await
        .expect_err("a different request");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("request_id"), "{}", err.message());
    // Another client certificate with the same id is another request.
    let mut fp = fed.referrals("AT", Role::FocalPoint).await?;
    let theirs = fp.create_case(create).await?.into_inner();
    assert_ne!(theirs.case_id, first.case_id);

    // A referral submitted twice with one id is one referral; a second open referral of the
    // case to the same destination is refused.
    sp.record_consent(requests::consent(
        &first.case_id,
        &[w::Purpose::ReferralAssistance],
        &["RO"],
        &[],
    ))
    .await?;
    let submit = w::SubmitReferralRequest {
        case_id: first.case_id.clone(),
        destination: "RO".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let r1 = sp.submit_referral(submit.clone()).await?.into_inner();
    let r2 = sp.submit_referral(submit.clone()).await?.into_inner();
    assert_eq!(r1.referral_id, r2.referral_id);
    let err = sp
        .submit_referral(w::SubmitReferralRequest {
            request_id: String::new(),
            ..submit
        })
        .await
        .expect_err("a second open referral of the case to RO");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let at_ro = trm_tests::eventually("the referral at RO", || async {
        let l = fed
            .referrals("RO", Role::FocalPoint)
            .await?
            .list_referrals(w::ListReferralsRequest {
                direction: w::Direction::Incoming as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .referrals;
        Ok((!l.is_empty()).then_some(l))
    })
    .await?;
    assert_eq!(
        at_ro.len(),
        1,
        "one referral of the victim at the destination"
    );
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn retried_operator_requests_act_once() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO", "NG"]).await?;
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let rotate = w::RotateSigningKeyRequest {
        overlap_days: 30,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let first = admin.rotate_signing_key(rotate.clone()).await?.into_inner();
    let again = admin.rotate_signing_key(rotate.clone()).await?.into_inner();
    assert_eq!(first.key_id, again.key_id, "the original result");
    let keys = crate::transport::as_ro(&fed)
        .await?
        .get_node_info(w::GetNodeInfoRequest::default())
        .await?
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2, "one rotation: the old key and one new key");
    let another = admin
        .rotate_signing_key(w::RotateSigningKeyRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            ..rotate
        })
        .await?
        .into_inner();
    assert_ne!(another.key_id, first.key_id, "a new id is a new rotation");

    let remove = w::RemovePeerRequest {
        node_id: "NG".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    admin.remove_peer(remove.clone()).await?;
    admin.remove_peer(remove.clone()).await?;
    let err = admin
        .remove_peer(w::RemovePeerRequest {
            request_id: String::new(),
            ..remove
        })
        .await
        .expect_err("without an id, a second removal finds no peer");
    assert_eq!(err.code(), Code::NotFound);
    fed.stop().await?;
    Ok(())
}

/// What a disk that loses power holds: the node's files as they were at its last
/// completed sync. The sync hook copies the node's folders just before each sync (sled has
/// written everything it will sync by then) and, once the power is "cut", fails every sync:
/// from that instant nothing more becomes durable, so nothing more may be acknowledged.
#[derive(Default)]
struct PowerCut {
    /// The node's folder, known once the federation has started.
    node_dir: std::sync::Mutex<Option<std::path::PathBuf>>,
    cut: AtomicBool,
    syncs: std::sync::atomic::AtomicU64,
}

/// The folders a node writes: its database and its keys (the data-key store and the audit
/// anchor beside it).
const WRITTEN: [&str; 2] = ["data", "keys"];

impl PowerCut {
    fn hook(&self) -> std::io::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: the power is off"));
        }
        let dir = self
            .node_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(dir) = dir {
            let disk = dir.with_extension("disk");
            let _ = std::fs::remove_dir_all(&disk);
            for d in WRITTEN {
                copy_dir(&dir.join(d), &disk.join(d))?;
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// After the node stopped: its folders become what the disk held.
    fn power_back(&self) -> anyhow::Result<()> {
        let dir = self
            .node_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no node folder"))?;
        let disk = dir.with_extension("disk");
        for d in WRITTEN {
            std::fs::remove_dir_all(dir.join(d))?;
            copy_dir(&disk.join(d), &dir.join(d))?;
        }
        self.cut.store(false, Ordering::SeqCst);
        Ok(())
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Power cuts of either node during a stream of referrals: each node's files go back to
/// what its disk held at its last completed sync (everything written since is lost, as on a
/// disk whose cache dies with the power). Every referral AT acknowledged arrives at RO
/// exactly once, every receipt AT holds is for a referral RO still has, and both audit
/// chains verify.
#[tokio::test]
async fn power_cuts_lose_nothing_acknowledged_and_nothing_a_receipt_was_given_for(
) -> anyhow::Result<()> {
    let cuts: std::collections::BTreeMap<&str, Arc<PowerCut>> = ["AT", "RO"]
        .into_iter()
        .map(|id| (id, Arc::new(PowerCut::default())))
        .collect();
    let mut builder = TestFederation::builder().nodes(&["AT", "RO"]);
    for (id, cut) in &cuts {
        let cut = cut.clone();
        builder = builder.sync_hook(id, move || cut.hook());
    }
    let mut fed = builder.start().await?;
    for (id, cut) in &cuts {
        *cut.node_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fed.node_dir(id));
    }
    let mut acknowledged = Vec::new();
    for (round, victim) in ["RO", "AT", "RO", "AT"].into_iter().enumerate() {
        for _ in 0..5 {
            acknowledged.push(trm_tests::refer(&fed, "AT", "RO").await?);
        }
        // The cut comes while deliveries and receipts may still be under way.
        let cut = &cuts[victim];
        cut.cut.store(true, Ordering::SeqCst);
        // A write after the cut is never acknowledged.
        let err = fed
            .referrals(victim, Role::ServiceProvider)
            .await?
            .create_case(requests::case("After the cut", 3))
            .await
            .expect_err("the power is off");
        assert_eq!(err.code(), Code::Unavailable, "round {round}: {err:?}");
        fed.stop_node(victim).await?;
        cut.power_back()?;
        fed.start_node(victim).await?;
    }
    let (at, ro) = (
        fed.referrals("AT", Role::FocalPoint).await?,
        fed.referrals("RO", Role::FocalPoint).await?,
    );
    for id in &acknowledged {
        trm_tests::referral_with_status(&at, id, w::ReferralStatus::Delivered).await?;
        ro.clone()
            .get_referral(w::GetReferralRequest {
                referral_id: id.clone(),
            })
            .await?;
    }
    let incoming = ro
        .clone()
        .list_referrals(w::ListReferralsRequest {
            direction: w::Direction::Incoming as i32,
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .referrals;
    assert_eq!(
        incoming.len(),
        acknowledged.len(),
        "each exactly once at RO"
    );
    for id in ["AT", "RO"] {
        let v = fed
            .admin(id, Role::Operator)
            .await?
            .verify_audit(w::VerifyAuditRequest {})
            .await?
            .into_inner();
        assert!(v.ok, "{id}'s audit chain: {v:?}");
    }
    println!(
        "power cuts: 4 (RO, AT, RO, AT); {} referrals acknowledged, all at RO once; syncs \
         copied: AT {}, RO {}",
        acknowledged.len(),
        cuts["AT"].syncs.load(Ordering::SeqCst),
        cuts["RO"].syncs.load(Ordering::SeqCst)
    );
    fed.stop().await?;
    Ok(())
}

/// A retry id belongs to one kind of request: the same id and the same fields sent to
/// another RPC are another request, refused, never answered with the first one's result.
#[tokio::test]
async fn a_request_id_used_again_for_another_rpc_is_refused_not_replayed() -> anyhow::Result<()> {
    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let referral_id = trm_tests::refer(&fed, "AT", "RO").await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let withdrawn = sp
        .withdraw_referral(w::WithdrawReferralRequest {
            referral_id: referral_id.clone(),
            reason: "the person moved on".into(),
            request_id: request_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(withdrawn.status, w::ReferralStatus::Withdrawn as i32);
    let err = sp
        .close_referral(w::CloseReferralRequest {
            referral_id,
            reason: "the person moved on".into(),
            request_id,
        })
        .await
        .expect_err("another RPC under the same id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("request_id"), "{}", err.message());
    fed.stop().await?;
    Ok(())
}
