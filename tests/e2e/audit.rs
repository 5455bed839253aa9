//! The audit log on disk: a modified, reordered or removed entry is detected by
//! `AdminService.VerifyAudit` after a restart.

use trm_core::ids::Role;
use trm_crypto::aead::SecretKey;
use trm_proto::v1 as w;
use trm_store::{audit::AuditEntry, Store, TreeName};
use trm_tests::TestFederation;

/// The raw audit entries of a database, in stored order.
type Entries = [(sled::IVec, sled::IVec)];

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
    assert_eq!(clean.entries_checked, 3);

    let at = fed.dir().join("AT");
    // Opens the stopped node's database as an intruder with disk access would.
    let tamper = |f: &mut dyn FnMut(&sled::Tree, &Entries)| -> anyhow::Result<()> {
        let store = Store::open(
            &at.join("data"),
            &at.join("keys/data-keys.store"),
            SecretKey::load(&at.join("keys/master.key"))?,
        )?;
        let tree = store.raw_tree(TreeName::Audit);
        let entries: Vec<_> = tree.iter().collect::<Result<_, _>>()?;
        f(tree, &entries);
        store.close()?;
        Ok(())
    };
    type Tamper = Box<dyn Fn(&sled::Tree, &Entries)>;
    let cases: Vec<(&str, Tamper, u64)> = vec![
        (
            "modified",
            Box::new(|t, e| {
                let mut entry: AuditEntry = serde_json::from_slice(&e[1].1).unwrap();
                entry.record.actor = "client:focal_point/someone-else".into();
                t.insert(&e[1].0, serde_json::to_vec(&entry).unwrap())
                    .unwrap();
            }),
            2,
        ),
        (
            "reordered",
            Box::new(|t, e| {
                t.insert(&e[0].0, e[1].1.clone()).unwrap();
                t.insert(&e[1].0, e[0].1.clone()).unwrap();
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
            t.clear().unwrap();
            for (k, v) in &saved {
                t.insert(k, v.clone()).unwrap();
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
        let store = Store::open(
            &at.join("data"),
            &at.join("keys/data-keys.store"),
            SecretKey::load(&at.join("keys/master.key"))?,
        )?;
        let tree = store.raw_tree(TreeName::Audit);
        let mut entries: Vec<AuditEntry> = tree
            .iter()
            .map(|r| Ok(serde_json::from_slice(&r?.1)?))
            .collect::<anyhow::Result<_>>()?;
        entries[1].record.actor = "client:focal_point/someone-else".into();
        let mut prev = entries[0].hash.clone();
        for e in entries.iter_mut().skip(1) {
            *e = AuditEntry::chain(e.seq, e.at.clone(), e.record.clone(), prev.clone());
            prev = e.hash.clone();
            tree.insert(e.seq.to_be_bytes(), serde_json::to_vec(&e)?)?;
        }
        let head = trm_store::audit::AuditHead {
            seq: entries.len() as u64,
            hash: prev,
        };
        store
            .raw_tree(TreeName::Meta)
            .insert(b"audit_head", serde_json::to_vec(&head)?)?;
        store.close()?;
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
        let store = Store::open(
            &at.join("data"),
            &at.join("keys/data-keys.store"),
            SecretKey::load(&at.join("keys/master.key"))?,
        )?;
        store
            .raw_tree(TreeName::Meta)
            .remove(b"audit_head_signed")?;
        store.close()?;
    }
    fed.start_node("AT").await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    sp.list_cases(w::ListCasesRequest::default()).await?;
    let report = verify(&fed).await?;
    assert!(!report.ok, "the node signs nothing over a rewritten chain");
    fed.stop().await?;
    Ok(())
}
