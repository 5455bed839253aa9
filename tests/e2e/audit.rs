//! The audit log on disk: a modified, reordered or removed entry is detected by
//! `AdminService.VerifyAudit` after a restart.

use trm_core::ids::Role;
use trm_proto::v1 as w;
use trm_store::audit::AuditEntry;
use trm_tests::{RawDb, TestFederation};

/// The raw audit entries of a database, in stored order.
type Entries = [(Vec<u8>, Vec<u8>)];

async fn verify(fed: &TestFederation) -> anyhow::Result<w::VerifyAuditResponse> {
    let mut admin = fed.admin("AT", Role::Operator).await?;
    Ok(admin
        .verify_audit(w::VerifyAuditRequest {})
        .await?
        .into_inner())
}

#[tokio::test]
async fn tampering_with_the_audit_log_on_disk_is_detected() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT", "RO"]).await?;
    // What the node audited of its own start (node.toml's peers taken in).
    let before = verify(&fed).await?.entries_checked;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    for name in ["A", "B", "C"] {
        sp.create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: name.into(),
                gender: w::Gender::Other as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    }
    let clean = verify(&fed).await?;
    assert!(clean.ok);
    assert_eq!(clean.entries_checked, before + 3);

    let at = fed.dir().join("AT");
    // Opens the stopped node's database as an intruder with disk access would.
    let tamper = |f: &mut dyn FnMut(&RawDb, &Entries)| -> anyhow::Result<()> {
        let db = RawDb::open(&at.join("data"))?;
        let entries = db.audit_raw()?;
        f(&db, &entries);
        db.close()?;
        Ok(())
    };
    type Tamper = Box<dyn Fn(&RawDb, &Entries)>;
    let cases: Vec<(&str, Tamper, u64)> = vec![
        (
            "modified",
            Box::new(|t, e| {
                let mut entry: AuditEntry = t.decode(&e[1].1).unwrap();
                entry.record.actor = "client:focal_point/someone-else".into();
                t.put_audit(&e[1].0, &entry).unwrap();
            }),
            2,
        ),
        (
            "reordered",
            Box::new(|t, e| {
                t.put_raw(&e[0].0, &e[1].1).unwrap();
                t.put_raw(&e[1].0, &e[0].1).unwrap();
            }),
            1,
        ),
        (
            "removed",
            Box::new(|t, e| {
                t.remove(&e[2].0).unwrap();
            }),
            3,
        ),
    ];
    for (what, f, first_bad) in cases {
        fed.stop_node("AT").await?;
        let mut saved = Vec::new();
        tamper(&mut |t, e| {
            saved = e.to_vec();
            f(t, e);
        })?;
        fed.start_node("AT").await?;
        let report = verify(&fed).await?;
        assert!(!report.ok, "{what} entry not detected");
        assert_eq!(report.first_bad_entry, first_bad, "{what}");

        // Put the original entries back: the chain verifies again.
        fed.stop_node("AT").await?;
        tamper(&mut |t, _| {
            for (k, v) in &saved {
                t.put_raw(k, v).unwrap();
            }
        })?;
        fed.start_node("AT").await?;
        assert!(verify(&fed).await?.ok, "after restoring the {what} entry");
    }
    fed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_chain_recomputed_by_someone_without_the_signing_key_is_detected() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    for name in ["A", "B", "C"] {
        sp.create_case(w::CreateCaseRequest {
            person: Some(w::Person {
                given_name: name.into(),
                gender: w::Gender::Other as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    }
    let clean = verify(&fed).await?;
    assert!(clean.ok);
    assert_eq!(clean.signed_through, clean.entries_checked);
    fed.stop_node("AT").await?;
    let at = fed.dir().join("AT");
    {
        // An intruder rewrites entry 2 and recomputes every hash after it, and the head.
        let db = RawDb::open(&at.join("data"))?;
        let mut entries = db.audit()?;
        entries[1].1.record.actor = "client:focal_point/someone-else".into();
        let mut prev = entries[0].1.hash.clone();
        for (k, e) in entries.iter_mut().skip(1) {
            *e = AuditEntry::chain(e.seq, e.at, e.record.clone(), prev.clone());
            prev = e.hash.clone();
            db.put_audit(k, e)?;
        }
        db.set_head(&trm_store::audit::AuditHead {
            seq: entries.len() as u64,
            hash: prev,
        })?;
        db.close()?;
    }
    fed.start_node("AT").await?;
    let report = verify(&fed).await?;
    assert!(
        !report.ok,
        "a recomputed chain does not match the signed head"
    );
    assert_eq!(report.first_bad_entry, clean.entries_checked);
    // Deleting the signed head as well does not help: its anchor lives outside the database.
    fed.stop_node("AT").await?;
    {
        let db = RawDb::open(&at.join("data"))?;
        db.remove(b"m/audit_head_signed")?;
        db.close()?;
    }
    fed.start_node("AT").await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.list_cases(w::ListCasesRequest::default()).await?;
    let report = verify(&fed).await?;
    assert!(!report.ok, "the node signs nothing over a rewritten chain");
    fed.stop().await?;
    Ok(())
}

/// `trmctl audit export` checks each entry against its own hash, not only that the hashes
/// link up: an entry edited in place on disk is not exported as if it were the node's.
#[tokio::test]
async fn an_entry_edited_in_place_is_refused_by_the_audit_export() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&["AT"]).await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.create_case(w::CreateCaseRequest {
        person: Some(w::Person {
            given_name: "A".into(),
            gender: w::Gender::Other as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mut clean = Vec::new();
    let mut admin = fed.admin("AT", Role::Operator).await?;
    trmctl::admin::export_audit(&mut admin, &mut clean).await?;
    fed.stop_node("AT").await?;
    {
        let db = RawDb::open(&fed.dir().join("AT/data"))?;
        let entries = db.audit()?;
        let (k, e) = entries.last().ok_or_else(|| anyhow::anyhow!("no entry"))?;
        let mut edited = e.clone();
        edited.record.actor = "client:focal_point/someone-else".into();
        db.put_audit(k, &edited)?;
        db.close()?;
    }
    fed.start_node("AT").await?;
    let mut admin = fed.admin("AT", Role::Operator).await?;
    let mut out = Vec::new();
    let err = trmctl::admin::export_audit(&mut admin, &mut out)
        .await
        .expect_err("an edited entry");
    assert!(err.to_string().contains("its contents"), "{err}");
    fed.stop().await?;
    Ok(())
}
