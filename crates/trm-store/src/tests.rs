//! Tests of the store on a real sled database in a temporary folder.

use std::path::{Path, PathBuf};

use time::{macros::date, OffsetDateTime};
use trm_core::{
    ids::{CaseId, NodeId, OrgId},
    model::{CaseRecord, ChildInfo, Exploitation, Gender, Needs, Person},
};
use trm_crypto::aead::SecretKey;

use crate::{
    audit::{AuditEntry, AuditRecord},
    engine::sled::SledOptions,
    Store, StoreError, StoreOptions, Subject, TxFail,
};

/// The options of a store in `dir` on the engine under test (see [`crate::testing`]).
fn options(dir: &Path, master: &SecretKey) -> StoreOptions {
    StoreOptions {
        engine: crate::testing::engine_for(dir).unwrap(),
        ..sled_options(dir, master)
    }
}

/// The options of a store in `dir` on sled, for what only sled has (its files).
fn sled_options(dir: &Path, master: &SecretKey) -> StoreOptions {
    StoreOptions {
        node: "AT".parse::<NodeId>().unwrap(),
        data_dir: dir.join("db"),
        key_store: dir.join("keys/kek.store"),
        master: master.clone(),
        engine: Default::default(),
    }
}

fn open(dir: &Path, master: &SecretKey) -> Store {
    Store::open(options(dir, master)).unwrap()
}

fn open_sled(dir: &Path, master: &SecretKey) -> Store {
    Store::open(sled_options(dir, master)).unwrap()
}

fn case(name: &str) -> CaseRecord {
    CaseRecord {
        case_id: CaseId::new(),
        person: Person {
            given_name: name.into(),
            family_name: "Testperson".into(),
            date_of_birth: Some(date!(1990 - 01 - 01)),
            gender: Gender::Female,
            citizenship: vec![],
            languages: vec![],
            document_number: String::new(),
            address: String::new(),
            phone: String::new(),
        },
        needs: Needs::default(),
        exploitation: Exploitation::default(),
        child: ChildInfo::default(),
        identified_on: date!(2026 - 01 - 01),
        organisation: "sp1".parse::<OrgId>().unwrap(),
        created_at: OffsetDateTime::now_utc(),
        identifications: vec![],
        residence: None,
    }
}

/// Restores `backup`, waiting (with a deadline) for sled's last background write of the
/// store this process just closed to let go of its files: a restore is refused while
/// anything holds the store.
fn restore_once_free(opts: StoreOptions, backup: &Path) -> crate::backup::Restored {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match crate::backup::restore(opts.clone(), backup, true, "test") {
            Ok(r) => return r,
            Err(e)
                if e.to_string().contains("is running") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("restore: {e}"),
        }
    }
}

fn put(store: &Store, c: &CaseRecord) {
    let c = c.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.put_case(&c)?;
            tx.audit(AuditRecord::new(
                "test",
                "case.create",
                c.case_id.to_string(),
                "ok",
            ))?;
            Ok(())
        })
        .unwrap();
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A record written again under a new data key (as an erased copy keeps its tombstone) is
/// never read as missing by a reader outside the writer, who reads the value and its key
/// apart: a client asking while the erasure commits was told "not found".
#[test]
fn a_record_sealed_again_under_a_new_key_never_reads_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let id = trm_core::ids::CaseId::new();
    let key = crate::repo::layout::case(id);
    store
        .commit_blocking::<(), (), _>(move |tx| {
            Ok(tx.put_sealed(&crate::repo::layout::case(id), &Subject::case(id), &0u32)?)
        })
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 1..=200u32 {
                store
                    .commit_blocking::<(), (), _>(move |tx| {
                        let (key, subject) = (crate::repo::layout::case(id), Subject::case(id));
                        tx.shred(&subject)?;
                        Ok(tx.put_sealed(&key, &subject, &i)?)
                    })
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reads = 0u64;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let read: Option<u32> = store.get_sealed("n", &key, &Subject::case(id)).unwrap();
            assert!(read.is_some(), "read as missing after {reads} reads");
            reads += 1;
        }
        reads
    });
    assert!(reads > 0);
    let last: Option<u32> = store.get_sealed("n", &key, &Subject::case(id)).unwrap();
    assert_eq!(last, Some(200));
}

/// A case sealed before it had identification and residence (its stored JSON lacks them)
/// still opens, with none of either.
#[test]
fn a_case_stored_before_identification_and_residence_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let c = case("Old");
    let mut old = serde_json::to_value(&c).unwrap();
    let fields = old.as_object_mut().unwrap();
    assert!(fields.remove("identifications").is_some());
    assert!(fields.remove("residence").is_some());
    let id = c.case_id;
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.put_sealed(&crate::repo::layout::case(id), &Subject::case(id), &old)?;
            Ok(())
        })
        .unwrap();
    let opened = store.case(id).unwrap().unwrap();
    assert!(opened.identifications.is_empty() && opened.residence.is_none());
    assert_eq!(opened.reflection_starts_on(), c.identified_on);
}

#[test]
fn sealed_records_are_never_on_disk_in_clear_and_a_shredded_case_is_gone_from_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open_sled(dir.path(), &master);
    let c = case("Zorica Unique-Name");
    put(&store, &c);
    assert_eq!(
        store.case(c.case_id).unwrap().unwrap().person.given_name,
        "Zorica Unique-Name"
    );
    store.close().unwrap();
    drop(store);
    assert!(files_containing(dir.path(), b"Zorica Unique-Name").is_empty());
    // A copy of the whole node (database and key file), taken before the erasure.
    let backup = dir.path().join("backup");
    copy_dir(&dir.path().join("db"), &backup.join("db"));
    copy_dir(&dir.path().join("keys"), &backup.join("keys"));

    let store = open_sled(dir.path(), &master);
    let erased = c.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.erase_case(&erased)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store.case(c.case_id).unwrap(),
        None,
        "the live copy is gone at once"
    );
    // Within the rotation bound the KEK the copy holds the key under is destroyed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(store.rotate_kek_if_due(0)).unwrap());
    store.close().unwrap();
    drop(store);
    // The old copy of the database, with the master key and the live key file: nothing.
    let old = Store::open(StoreOptions {
        data_dir: backup.join("db"),
        ..sled_options(dir.path(), &master)
    })
    .unwrap();
    assert!(matches!(
        old.case(c.case_id),
        Err(StoreError::Corrupt(_)) | Ok(None)
    ));
}

#[test]
fn a_database_without_its_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    {
        let store = open(dir.path(), &master);
        put(&store, &case("n"));
        store.close().unwrap();
    }
    std::fs::remove_file(dir.path().join("keys/kek.store")).unwrap();
    let err = Store::open(options(dir.path(), &master)).unwrap_err();
    assert!(matches!(err, StoreError::KeyStoreMissing(_)), "{err}");
}

#[test]
fn a_refused_request_writes_nothing_and_fails_no_other_request_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cases: Vec<CaseRecord> = (0..64).map(|i| case(&format!("c{i}"))).collect();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, c) in cases.iter().cloned().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .commit::<(), &'static str, _>(move |tx| {
                        tx.put_case(&c)?;
                        tx.audit(AuditRecord::new("test", "put", c.case_id.to_string(), "ok"))?;
                        if i % 2 == 1 {
                            return Err(TxFail::Abort("refused"));
                        }
                        Ok(())
                    })
                    .await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (i, (r, c)) in results.iter().zip(&cases).enumerate() {
        let stored = store.case(c.case_id).unwrap();
        if i % 2 == 1 {
            assert!(matches!(r, Err(TxFail::Abort("refused"))));
            assert_eq!(stored, None, "a refused request leaves nothing");
        } else {
            assert!(r.is_ok());
            assert!(stored.is_some());
        }
    }
    let report = store.verify_audit().unwrap();
    assert_eq!((report.ok, report.entries_checked), (true, 32));
}

#[test]
fn a_failed_durable_point_latches_and_refuses_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fail.clone();
    let store = Store::open(StoreOptions {
        engine: crate::EngineOptions::Sled(SledOptions {
            sync_hook: Some(std::sync::Arc::new(move || {
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    Err(std::io::Error::other("injected"))
                } else {
                    Ok(())
                }
            })),
            ..Default::default()
        }),
        ..sled_options(dir.path(), &SecretKey::generate())
    })
    .unwrap();
    put(&store, &case("before"));
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = case("during");
    let r = store.commit_blocking::<(), (), _>(move |tx| {
        tx.put_case(&c)?;
        Ok(())
    });
    assert!(matches!(r, Err(TxFail::Store(StoreError::Unavailable(_)))));
    assert!(store.failure().is_some());
    // The disk is fine again, but what the failed group wrote may already have been seen:
    // the store stays stopped.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let c = case("after");
    let r = store.commit_blocking::<(), (), _>(move |tx| {
        tx.put_case(&c)?;
        Ok(())
    });
    assert!(matches!(r, Err(TxFail::Store(StoreError::Unavailable(_)))));
}

/// sled shows a group's batch before its sync returns: an audit anchor written in that
/// moment (housekeeping anchors every few seconds) would name a head that a power cut then
/// takes away, and the node would report its own chain as tampered with.
#[test]
fn the_audit_anchor_never_holds_a_head_whose_commit_has_not_returned() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    };
    let dir = tempfile::tempdir().unwrap();
    let cell: Arc<OnceLock<Store>> = Arc::default();
    let power_cut = Arc::new(AtomicBool::new(false));
    let (c, cut) = (cell.clone(), power_cut.clone());
    let store = Store::open(StoreOptions {
        engine: crate::EngineOptions::Sled(SledOptions {
            sync_hook: Some(Arc::new(move || {
                if !cut.load(Ordering::SeqCst) {
                    return Ok(());
                }
                // The group is written, not yet synced: housekeeping anchors now.
                if let Some(store) = c.get() {
                    store.anchor_audit_head().unwrap();
                }
                Err(std::io::Error::other("injected: the power is off"))
            })),
            ..Default::default()
        }),
        ..sled_options(dir.path(), &SecretKey::generate())
    })
    .unwrap();
    assert!(cell.set(store.clone()).is_ok());
    let signer = trm_crypto::signing::Signer::new(trm_crypto::signing::SigningIdentity::generate());
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(store.sign_audit_head_with(Arc::new(signer)))
        .unwrap();
    put(&store, &case("durable"));
    store.anchor_audit_head().unwrap();
    let durable = std::fs::read(store.anchor_path()).unwrap();

    power_cut.store(true, Ordering::SeqCst);
    let c = case("lost");
    let r = store.commit_blocking::<(), (), _>(move |tx| {
        tx.put_case(&c)?;
        tx.audit(AuditRecord::new(
            "client:test/sp1",
            "case.create",
            "lost",
            "ok",
        ))?;
        Ok(())
    });
    assert!(r.is_err(), "the sync failed");
    assert_eq!(
        std::fs::read(store.anchor_path()).unwrap(),
        durable,
        "the anchor holds only a head the disk holds"
    );
}

#[test]
fn every_file_written_is_synced_before_the_commit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sled(dir.path(), &SecretKey::generate());
    for i in 0..200 {
        let mut c = case(&"x".repeat(2000 + i));
        c.person.address = "y".repeat(9000);
        put(&store, &c);
        assert_eq!(store.unsynced_files().unwrap(), Vec::<PathBuf>::new());
    }
}

#[test]
fn audit_chain_detects_modification_reordering_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open_sled(dir.path(), &master);
    for i in 0..4 {
        put(&store, &case(&format!("k{i}")));
    }
    let report = store.verify_audit().unwrap();
    assert_eq!((report.ok, report.entries_checked), (true, 4));
    store.close().unwrap();
    drop(store);
    let db = dir.path().join("db");
    // Tamper with the raw database as an intruder with disk access would.
    type Entries = [(Vec<u8>, Vec<u8>)];
    type Tamper = Box<dyn Fn(&sled::Db, &Entries)>;
    let tamper = |f: &dyn Fn(&sled::Db, &Entries)| {
        let raw = crate::engine::sled::open_raw(&db);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = raw
            .scan_prefix(b"a/")
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        f(&raw, &entries);
        raw.flush().unwrap();
    };
    let stored = |v: &[u8]| -> AuditEntry { serde_json::from_slice(&v[1..]).unwrap() };
    let encode = |e: &AuditEntry| -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend(serde_json::to_vec(e).unwrap());
        v
    };
    let cases: Vec<(&str, Tamper, u64)> = vec![
        (
            "modified",
            Box::new(move |t, e| {
                let mut entry = stored(&e[1].1);
                entry.record.outcome = "refused".into();
                t.insert(&e[1].0, encode(&entry)).unwrap();
            }),
            2,
        ),
        (
            "reordered",
            Box::new(|t, e| {
                t.insert(&e[1].0, e[2].1.clone()).unwrap();
                t.insert(&e[2].0, e[1].1.clone()).unwrap();
            }),
            2,
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
        let saved = std::cell::RefCell::new(Vec::new());
        tamper(&|t, e| {
            saved.borrow_mut().extend_from_slice(e);
            f(t, e);
        });
        let saved = saved.into_inner();
        let store = open_sled(dir.path(), &master);
        let r = store.verify_audit().unwrap();
        assert!(!r.ok, "{what}");
        assert_eq!(r.first_bad_entry, first_bad, "{what}");
        store.close().unwrap();
        drop(store);
        tamper(&|t, _| {
            for (k, v) in &saved {
                t.insert(k, v.clone()).unwrap();
            }
        });
        let store = open_sled(dir.path(), &master);
        assert!(
            store.verify_audit().unwrap().ok,
            "after restoring the {what} entry"
        );
        store.close().unwrap();
    }
}

#[test]
fn records_survive_reopening_and_keys_are_not_loaded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let cases: Vec<CaseRecord> = (0..50).map(|i| case(&format!("r{i}"))).collect();
    {
        let store = open(dir.path(), &master);
        for c in &cases {
            put(&store, c);
        }
        store.close().unwrap();
    }
    let store = open(dir.path(), &master);
    for c in &cases {
        assert_eq!(store.case(c.case_id).unwrap().as_ref(), Some(c));
    }
    let subject = Subject::case(cases[0].case_id);
    assert!(!subject.as_bytes().is_empty());
    assert!(store.verify_audit().unwrap().ok);
}

#[test]
fn queue_depths_follow_only_committed_work_and_are_recounted_on_reopening() {
    use trm_core::{
        ids::{MessageId, ReferralId},
        messages::{EnvelopeKind, Topic},
    };
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let (de, it): (NodeId, NodeId) = ("DE".parse().unwrap(), "IT".parse().unwrap());
    let store = open(dir.path(), &master);
    let topic = Topic::Referral(ReferralId::new());
    for i in 0..6 {
        let r = store.commit_blocking::<(), &'static str, _>(move |tx| {
            let peer = if i < 4 { de } else { it };
            tx.queue_envelope(
                peer,
                MessageId::new(),
                topic,
                EnvelopeKind::ReferralOffer,
                b"env",
            )?;
            if i == 3 {
                return Err(TxFail::Abort("refused"));
            }
            Ok(())
        });
        assert_eq!(r.is_ok(), i != 3);
    }
    assert_eq!(
        (
            store.outbox_depth(de).unwrap(),
            store.outbox_depth(it).unwrap()
        ),
        (3, 2)
    );
    let first = store.outbox_head(de, 1).unwrap().remove(0);
    store
        .commit_blocking::<(), (), _>(move |tx| {
            Ok(tx.dead_letter(&first, "refused by peer", None)?)
        })
        .unwrap();
    assert_eq!(store.outbox_depth(de).unwrap(), 2);
    assert_eq!(store.dead_letter_count().unwrap(), 1);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), &master);
    assert_eq!(
        (
            store.outbox_depth(de).unwrap(),
            store.outbox_depth(it).unwrap()
        ),
        (2, 2)
    );
    assert_eq!(store.dead_letter_count().unwrap(), 1);
}

/// A batch receipt proves every message it lists: it is stored once, not once per message
/// (a batch of 64 stored 64 copies of a receipt listing 64), and each message still finds it.
#[test]
fn a_batch_receipt_is_stored_once_and_proves_each_message_it_lists() {
    use trm_core::{
        ids::{MessageId, ReferralId},
        messages::{EnvelopeKind, Topic},
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let de: NodeId = "DE".parse().unwrap();
    let ids: Vec<MessageId> = (0..5).map(|_| MessageId::new()).collect();
    let queued = ids.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            for id in &queued {
                let topic = Topic::Referral(ReferralId::new());
                tx.queue_envelope(de, *id, topic, EnvelopeKind::ReferralOffer, b"env")?;
            }
            Ok(())
        })
        .unwrap();
    let items = store.outbox_head(de, 10).unwrap();
    assert_eq!(items.len(), 5);
    // Stands for the signed receipt of one batch: what the peer signed, listing all five.
    let receipt: Vec<u8> = (0..2000u32).flat_map(|i| i.to_be_bytes()).collect();
    let proof = crate::Proof::new(receipt.clone());
    let (first, rest) = items.split_first().unwrap();
    let (first, rest) = (first.clone(), rest.to_vec());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.dead_letter(&first, "refused by peer", Some(&proof))?;
            for item in &rest {
                tx.finish_queued(item, Some(&proof))?;
            }
            Ok(())
        })
        .unwrap();
    for id in &ids {
        assert_eq!(
            store.receipt(*id).unwrap().as_deref(),
            Some(receipt.as_slice()),
            "each message finds the receipt that proves it"
        );
    }
    assert_eq!(store.receipt(MessageId::new()).unwrap(), None);
    // A receipt kept the way it was before, under the message, still reads.
    let old = MessageId::new();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            Ok(tx.put_raw(
                &crate::repo::layout::legacy_receipt(&old.uuid()),
                b"older receipt",
            )?)
        })
        .unwrap();
    assert_eq!(
        store.receipt(old).unwrap().as_deref(),
        Some(&b"older receipt"[..])
    );
    // A receipt that is not the one its digest names is refused, not given as proof.
    let (forged, digest) = (MessageId::new(), trm_crypto::sha256(b"what was signed"));
    store
        .commit_blocking::<(), (), _>(move |tx| {
            let layout = (
                crate::repo::layout::receipt_of(&forged.uuid()),
                crate::repo::layout::receipt(&digest),
            );
            tx.put_raw(&layout.0, &digest)?;
            Ok(tx.put_raw(&layout.1, b"something else")?)
        })
        .unwrap();
    assert!(matches!(
        store.receipt(forged),
        Err(crate::StoreError::Corrupt(_))
    ));
    let stored: usize = ["p/", "pr/", "pb/"]
        .iter()
        .flat_map(|p| store.scan_raw(p.as_bytes(), None, 100).unwrap())
        .map(|(_, v)| v.len())
        .sum();
    assert!(
        stored < receipt.len() + 6 * 64 + b"older receipt".len() + b"something else".len(),
        "the receipt is stored once ({stored} bytes for a receipt of {})",
        receipt.len()
    );
}

#[test]
fn statistics_count_a_person_once_and_follow_a_referral_to_its_state() {
    use trm_core::{
        ids::ReferralId,
        referral::{Direction, ReferralRecord, ReferralStatus},
        stats::{Cell, Month, Period},
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let c = case("Counted");
    put(&store, &c);
    put(&store, &c); // written again: still one person
    let ro: NodeId = "RO".parse().unwrap();
    let mut r = ReferralRecord::received(
        ReferralId::new(),
        ro,
        "AT".parse().unwrap(),
        Default::default(),
        vec![],
        OffsetDateTime::now_utc(),
    );
    for status in [ReferralStatus::Delivered, ReferralStatus::Accepted] {
        r.status = status;
        let r = r.clone();
        store
            .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_referral(&r)?))
            .unwrap();
    }
    let month = |d: time::Date| Period {
        start: d.replace_day(1).unwrap(),
        end: Month::of(d).next_first_day(),
    };
    let counts = store.stat_counts(month(c.identified_on)).unwrap();
    assert_eq!(counts.get(&Cell::Child(Some(false))), Some(&1));
    let now = store
        .stat_counts(month(OffsetDateTime::now_utc().date()))
        .unwrap();
    let referral = |status| Cell::Referral {
        direction: Direction::Incoming,
        status,
    };
    assert_eq!(now.get(&referral(ReferralStatus::Accepted)), Some(&1));
    assert_eq!(now.get(&referral(ReferralStatus::Delivered)), None, "moved");
}

/// A shared record's timeline holds each status it reached once, in order, and goes
/// with the record: once its key is shredded, nothing of it opens.
#[test]
fn a_timeline_keeps_each_status_once_and_is_erased_with_its_record() {
    use trm_core::{
        exchange::RecordKind,
        ids::ReferralId,
        referral::{ReferralRecord, ReferralStatus},
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let id = ReferralId::new();
    let mut r = ReferralRecord::received(
        id,
        "RO".parse().unwrap(),
        "AT".parse().unwrap(),
        Default::default(),
        vec![],
        OffsetDateTime::now_utc(),
    );
    for status in [
        ReferralStatus::Delivered,
        ReferralStatus::Delivered,
        ReferralStatus::Accepted,
    ] {
        r.status = status;
        let r = r.clone();
        store
            .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_referral(&r)?))
            .unwrap();
    }
    let steps = store.timeline(RecordKind::Referral, id.uuid()).unwrap();
    let statuses: Vec<&str> = steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(statuses, ["delivered", "accepted"]);
    assert!(steps[0].at <= steps[1].at);
    store
        .commit_blocking::<(), (), _>(move |tx| {
            Ok(tx.shred(&Subject::of_record(
                RecordKind::Referral,
                id.uuid().as_bytes(),
            ))?)
        })
        .unwrap();
    assert!(store
        .timeline(RecordKind::Referral, id.uuid())
        .unwrap()
        .is_empty());
}

/// Drafts are their owner's alone, at most MAX_DRAFTS of them, and housekeeping destroys
/// those past keeping for good.
#[test]
fn drafts_are_owned_bounded_and_destroyed_once_past_keeping() {
    use crate::repo::drafts::{Draft, Saved, MAX_DRAFTS};
    use trm_core::ids::{Principal, Role};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let owner = Principal {
        role: Role::ServiceProvider,
        org: "ngo1".parse().unwrap(),
    };
    let other = Principal {
        role: Role::ServiceProvider,
        org: "ngo2".parse().unwrap(),
    };
    let draft = |days_ago: i64| Draft {
        draft_id: uuid::Uuid::new_v4(),
        fields: vec![("family_name".into(), "Draftname".into())],
        saved_at: OffsetDateTime::now_utc() - time::Duration::days(days_ago),
    };
    let save = |p: &Principal, d: &Draft, new: bool| {
        let (p, d) = (p.clone(), d.clone());
        store
            .commit_blocking::<Saved, (), _>(move |tx| Ok(tx.put_draft(&p, &d, new)?))
            .unwrap()
    };
    let old = draft(31);
    assert_eq!(save(&owner, &old, true), Saved::Saved);
    let fresh = draft(0);
    assert_eq!(save(&owner, &fresh, true), Saved::Saved);
    // Another owner can neither see nor overwrite them.
    assert_eq!(save(&other, &fresh, false), Saved::NotFound);
    assert!(store.draft(&other, fresh.draft_id).unwrap().is_none());
    assert!(store.drafts(&other).unwrap().is_empty());
    // Past keeping: not shown, then destroyed by housekeeping.
    let shown: Vec<_> = store.drafts(&owner).unwrap();
    assert_eq!(shown, std::slice::from_ref(&fresh));
    assert_eq!(rt().block_on(store.expire_drafts()).unwrap(), 1);
    assert_eq!(rt().block_on(store.expire_drafts()).unwrap(), 0);
    assert_eq!(store.drafts(&owner).unwrap(), std::slice::from_ref(&fresh));
    // At most MAX_DRAFTS each.
    for _ in 1..MAX_DRAFTS {
        assert_eq!(save(&owner, &draft(0), true), Saved::Saved);
    }
    assert_eq!(save(&owner, &draft(0), true), Saved::Full);
    assert_eq!(
        save(&owner, &fresh, false),
        Saved::Saved,
        "its own, saved again"
    );
}

/// A restore numbers the node's next events past every number it may have given since
/// the backup (a watching client may hold them), and remembers the numbers skipped.
#[test]
fn after_a_restore_no_event_takes_a_number_a_client_may_have_seen() {
    use crate::repo::events::RESTORE_GAP;
    use trm_core::{
        ids::ReferralId,
        referral::{ReferralRecord, ReferralStatus},
    };
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let referral = |store: &Store| {
        let mut r = ReferralRecord::received(
            ReferralId::new(),
            "RO".parse().unwrap(),
            "AT".parse().unwrap(),
            Default::default(),
            vec![],
            OffsetDateTime::now_utc(),
        );
        r.status = ReferralStatus::Delivered;
        store
            .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_referral(&r)?))
            .unwrap();
    };
    referral(&store);
    let (_, at_backup) = store.event_bounds().unwrap();
    let backup = dir.path().join("backups/one");
    rt().block_on(store.backup(&backup, time::Duration::days(35)))
        .unwrap();
    // Seen by a watching client, then undone by the restore.
    referral(&store);
    let (_, seen) = store.event_bounds().unwrap();
    assert!(seen > at_backup);
    store.close().unwrap();
    drop(store);

    restore_once_free(options(dir.path(), &master), &backup);
    let store = open(dir.path(), &master);
    assert_eq!(
        store.event_gaps().unwrap(),
        [(at_backup, at_backup + RESTORE_GAP)]
    );
    referral(&store);
    let fresh = store.events_after(at_backup, 10).unwrap();
    assert!(
        fresh.iter().all(|e| e.seq > at_backup + RESTORE_GAP),
        "{fresh:?}"
    );
    assert!(!fresh.is_empty());
}

/// An alert counts once where it is held, by kind, in the month it was raised or arrived,
/// however often it changes.
#[test]
fn statistics_count_a_safety_alert_once_by_kind() {
    use trm_core::{
        ids::{AlertId, CaseId},
        safety::{AlertTerms, SafetyAlertKind, SafetyAlertRecord, SafetyAlertStatus},
        stats::{Cell, Month, Period},
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let terms = AlertTerms {
        country: "RO".parse().unwrap(),
        kind: SafetyAlertKind::Extradition,
        effective_on: time::macros::date!(2026 - 01 - 01),
    };
    let now = OffsetDateTime::now_utc();
    let mut a = SafetyAlertRecord::raised(
        AlertId::new(),
        "AT".parse().unwrap(),
        terms,
        (CaseId::new(), "sp1".parse().unwrap()),
        vec![],
        now,
    );
    for status in [SafetyAlertStatus::Raised, SafetyAlertStatus::Delivered] {
        a.status = status;
        let a = a.clone();
        store
            .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_record(&a)?))
            .unwrap();
    }
    let period = Period {
        start: now.date().replace_day(1).unwrap(),
        end: Month::of(now.date()).next_first_day(),
    };
    let counts = store.stat_counts(period).unwrap();
    assert_eq!(
        counts.get(&Cell::SafetyAlert(SafetyAlertKind::Extradition)),
        Some(&1)
    );
    assert_eq!(
        counts.get(&Cell::SafetyAlert(SafetyAlertKind::Release)),
        None
    );
}

#[test]
fn a_person_identified_in_a_published_month_counts_in_the_month_entered() {
    use crate::repo::stats::PublishedReport;
    use trm_core::stats::{Cell, Month, Period};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let published = Month::of(date!(2026 - 03 - 10));
    let kept = PublishedReport {
        report: vec![1, 2, 3],
        key_id: "k".into(),
        signature: vec![4],
    };
    let k = kept.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_published_report(published, &k)?))
        .unwrap();
    assert_eq!(store.published_report(published).unwrap(), Some(kept));
    let mut late = case("Late");
    late.identified_on = date!(2026 - 03 - 20);
    let mut timely = case("Timely");
    timely.identified_on = date!(2026 - 04 - 02);
    put(&store, &late);
    put(&store, &timely);
    let month = |m: Month| Period {
        start: time::Date::from_calendar_date(m.year, m.month.try_into().unwrap(), 1).unwrap(),
        end: m.next_first_day(),
    };
    let persons = |m: Month| {
        store
            .stat_counts(month(m))
            .unwrap()
            .get(&Cell::Child(Some(false)))
            .copied()
    };
    assert_eq!(
        persons(published),
        None,
        "the published month keeps its counts"
    );
    assert_eq!(
        persons(published.next()),
        Some(1),
        "an open month counts its own"
    );
    assert_eq!(
        persons(Month::at(OffsetDateTime::now_utc())),
        Some(1),
        "the late person counts in the month entered"
    );
}

/// A change of a case moves where its person counts while that month is unpublished; a
/// published month never changes.
#[test]
fn a_changed_case_moves_its_count_only_within_an_unpublished_month() {
    use crate::repo::stats::PublishedReport;
    use trm_core::stats::{Cell, Month, Period};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let period = |m: Month| Period {
        start: time::Date::from_calendar_date(m.year, m.month.try_into().unwrap(), 1).unwrap(),
        end: m.next_first_day(),
    };
    let children = |m: Month, child: bool| {
        store
            .stat_counts(period(m))
            .unwrap()
            .get(&Cell::Child(Some(child)))
            .copied()
    };
    let change = |before: &CaseRecord| {
        let (before, mut after) = (before.clone(), before.clone());
        after.child.is_child = true;
        store
            .commit_blocking::<(), (), _>(move |tx| Ok(tx.update_case(&before, &after)?))
            .unwrap();
    };
    let open_month = Month::of(date!(2026 - 01 - 01));
    let c = case("Open");
    put(&store, &c);
    change(&c);
    assert_eq!(children(open_month, true), Some(1), "moved");
    assert_eq!(children(open_month, false), None);

    let mut d = case("Published");
    d.identified_on = date!(2026 - 02 - 10);
    put(&store, &d);
    let published = Month::of(d.identified_on);
    let kept = PublishedReport {
        report: vec![1],
        key_id: "k".into(),
        signature: vec![2],
    };
    store
        .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_published_report(published, &kept)?))
        .unwrap();
    change(&d);
    assert_eq!(
        children(published, false),
        Some(1),
        "the published month keeps it"
    );
    assert_eq!(children(published, true), None);
}

/// A second case of one person, once a focal point says it is the same person, counts
/// once in the statistics.
#[test]
fn a_confirmed_duplicate_counts_as_one_person() {
    use trm_core::stats::{Cell, Month, Period};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let month = Month::of(date!(2026 - 01 - 01));
    let persons = || {
        store
            .stat_counts(Period {
                start: date!(2026 - 01 - 01),
                end: month.next_first_day(),
            })
            .unwrap()
            .get(&Cell::Child(Some(false)))
            .copied()
    };
    let first = case("Same");
    let second = case("Same");
    put(&store, &first);
    put(&store, &second);
    assert_eq!(persons(), Some(2));
    let index = |c: &CaseRecord| {
        let c = c.clone();
        store
            .commit_blocking::<Vec<CaseId>, (), _>(move |tx| Ok(tx.index_person(&c)?))
            .unwrap()
    };
    assert!(index(&first).is_empty());
    assert_eq!(index(&second), [first.case_id]);
    let resolve = |c: &CaseRecord, same: bool| {
        let c = c.clone();
        store
            .commit_blocking::<u32, (), _>(move |tx| Ok(tx.resolve_duplicates(&c, same)?))
            .unwrap()
    };
    assert_eq!(
        resolve(&first, true),
        0,
        "the pair names the newer case first"
    );
    assert_eq!(resolve(&second, true), 1);
    assert_eq!(persons(), Some(1), "one person");
    assert!(store.possible_duplicates().unwrap().is_empty());
}

/// Two cases of one person confirmed as the same person count as one across the months,
/// even when the case named in the confirmation counts in a month already published: the
/// other case of the pair, in a month still open, is the one taken out.
#[test]
fn a_confirmed_duplicate_counts_once_when_the_named_cases_month_is_published() {
    use crate::repo::stats::PublishedReport;
    use trm_core::stats::{Cell, Month, Period};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let january = Month::of(date!(2026 - 01 - 01));
    let persons = || {
        store
            .stat_counts(Period {
                start: date!(2026 - 01 - 01),
                end: date!(2026 - 03 - 01),
            })
            .unwrap()
            .get(&Cell::Child(Some(false)))
            .copied()
    };
    let older = case("Same");
    let mut newer = case("Same");
    newer.identified_on = date!(2026 - 02 - 10);
    put(&store, &older);
    put(&store, &newer);
    assert_eq!(persons(), Some(2));
    // The older case indexed again (a corrected name): the pair now names it first.
    let (o, n) = (older.clone(), newer.clone());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.index_person(&o)?;
            tx.index_person(&n)?;
            tx.unindex_person(&o)?;
            assert_eq!(tx.index_person(&o)?, [n.case_id]);
            tx.put_published_report(
                january,
                &PublishedReport {
                    report: vec![1],
                    key_id: "k".into(),
                    signature: vec![2],
                },
            )?;
            Ok(())
        })
        .unwrap();
    let o = older.clone();
    let pairs = store
        .commit_blocking::<u32, (), _>(move |tx| Ok(tx.resolve_duplicates(&o, true)?))
        .unwrap();
    assert_eq!(pairs, 1);
    assert_eq!(persons(), Some(1), "one person over the two months");
}

#[test]
fn a_data_key_read_in_a_refused_request_is_never_used_for_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let c = case("Retried");
    let first = c.clone();
    let refused = store.commit_blocking::<(), &'static str, _>(move |tx| {
        tx.put_case(&first)?;
        // Opening it caches the key this refused request made.
        assert!(tx.case(first.case_id)?.is_some());
        Err(TxFail::Abort("refused"))
    });
    assert!(matches!(refused, Err(TxFail::Abort("refused"))));
    put(&store, &c); // a new key for the same record, this time committed
    assert_eq!(store.case(c.case_id).unwrap(), Some(c));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn erase(store: &Store, c: &CaseRecord) {
    let c = c.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| Ok(tx.erase_case(&c)?))
        .unwrap();
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_backup_holds_no_key_outlives_kek_rotations_and_opens_for_no_one_once_expired() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let (kept, erased) = (case("Kept"), case("Erased later"));
    put(&store, &kept);
    put(&store, &erased);
    let backup = dir.path().join("backups/one");
    let expired = dir.path().join("backups/expired");
    let rt = rt();
    let m = rt
        .block_on(store.backup(&backup, time::Duration::days(35)))
        .unwrap();
    rt.block_on(store.backup(&expired, time::Duration::seconds(-1)))
        .unwrap();
    // The backup is the store and its manifest: no key file, nothing that opens a record.
    let mut names: Vec<String> = std::fs::read_dir(&backup)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "store.kv"]);
    #[cfg(unix)]
    {
        assert_eq!(mode(&backup), 0o700);
        assert_eq!(mode(&backup.join("store.kv")), 0o600);
        assert_eq!(mode(&backup.join("manifest.json")), 0o600);
    }
    assert!(m.expires_at.is_some_and(|e| e > OffsetDateTime::now_utc()));
    // Two KEK rotations: the KEK of the backup's time is long destroyed.
    assert!(rt.block_on(store.rotate_kek_if_due(0)).unwrap());
    assert!(rt.block_on(store.rotate_kek_if_due(0)).unwrap());
    erase(&store, &erased);
    assert_eq!(store.expire_backups(time::Duration::days(35)).unwrap(), 1);
    store.close().unwrap();
    drop(store);

    // A fresh host with the master key but without the key file: refused, naming it.
    let fresh = tempfile::tempdir().unwrap();
    let err = crate::backup::restore(options(fresh.path(), &master), &backup, true, "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kek.store") && err.contains("key file"),
        "{err}"
    );
    assert!(!fresh.path().join("db").exists(), "nothing restored");

    // With the node's key file: restorable after the rotations, erasures re-applied.
    let r = restore_once_free(options(dir.path(), &master), &backup);
    assert!(r.reapplied.erasures >= 1);
    let store = open(dir.path(), &master);
    assert_eq!(store.case(kept.case_id).unwrap(), Some(kept.clone()));
    assert_eq!(store.case(erased.case_id).unwrap(), None);
    store.close().unwrap();
    drop(store);

    // Expired: its key was destroyed, it opens for no one.
    let err = crate::backup::restore(options(dir.path(), &master), &expired, true, "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("expired"), "{err}");
    let store = open(dir.path(), &master);
    assert_eq!(
        store.case(kept.case_id).unwrap(),
        Some(kept),
        "a refused restore changes nothing"
    );
}

/// The erasures a backup predates are kept while that backup can be restored, whatever
/// the retention is set to later: lowering it must not bring an erased case back.
#[test]
fn an_erasure_is_kept_while_a_backup_it_postdates_can_be_restored() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let erased = case("Erased after the backup");
    put(&store, &erased);
    let backup = dir.path().join("backups/one");
    let rt = rt();
    rt.block_on(store.backup(&backup, time::Duration::days(35)))
        .unwrap();
    erase(&store, &erased);
    // Ten days later, with the retention set to 7 days since.
    let later = OffsetDateTime::now_utc() + time::Duration::days(10);
    store
        .expire_backups_at(time::Duration::days(7), later)
        .unwrap();
    store.close().unwrap();
    drop(store);

    restore_once_free(options(dir.path(), &master), &backup);
    let store = open(dir.path(), &master);
    assert_eq!(store.case(erased.case_id).unwrap(), None, "still erased");
}

/// Whoever can write where backups are kept can change a backup's files and digest them
/// again, but cannot write the manifest's MAC, which only the node's key file opens: such a
/// backup is refused and changes nothing.
#[test]
fn a_backup_altered_and_digested_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let kept = case("Kept");
    put(&store, &kept);
    let backup = dir.path().join("backups/one");
    rt().block_on(store.backup(&backup, time::Duration::days(35)))
        .unwrap();
    store.close().unwrap();
    drop(store);

    let file = backup.join("store.kv");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    manifest["files"][0]["sha256"] = hex::encode(trm_crypto::sha256(&bytes)).into();
    std::fs::write(
        backup.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    crate::backup::check(&backup).expect("the digests match again");

    let err = crate::backup::restore(options(dir.path(), &master), &backup, true, "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("altered"), "{err}");
    let store = open(dir.path(), &master);
    assert_eq!(
        store.case(kept.case_id).unwrap(),
        Some(kept),
        "nothing changed"
    );
}

/// The writer may run a backup's job again (a PostgreSQL conflict re-runs the group): the
/// second run writes the backup whole again instead of failing on the first run's file.
#[test]
fn a_backup_job_run_again_writes_the_backup_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    put(&store, &case("Backed up"));
    let target = dir.path().join("backups/one");
    crate::journal::create_private_dir(&target).unwrap();
    let key = store
        .keys()
        .new_backup_key(OffsetDateTime::now_utc() + time::Duration::days(1))
        .unwrap();
    let t = target.clone();
    let counts = store
        .commit_blocking::<_, (), _>(move |tx| {
            let first = crate::backup::dump(tx, &t, &key)?;
            let again = crate::backup::dump(tx, &t, &key)?;
            Ok((first, again))
        })
        .unwrap();
    assert_eq!(counts.0, counts.1);
}

/// A job whose attempt fails on the store fails whole: what it wrote before the attempt is
/// not committed with the others of its group (the attempt's savepoint is undone, so the
/// writer's rollback of the job undoes the job's own).
#[test]
fn a_job_failing_inside_an_attempt_commits_nothing_of_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let (first, second) = (case("Written before the attempt"), case("Inside it"));
    let (c1, c2) = (first.clone(), second.clone());
    let failed = store.commit_blocking::<(), (), _>(move |tx| {
        tx.put_case(&c1)?;
        tx.attempt::<(), ()>(|tx| {
            tx.put_case(&c2)?;
            Err(TxFail::Store(StoreError::Corrupt(
                "a fault inside the attempt",
            )))
        })?
        .map_err(TxFail::Abort)?;
        Ok(())
    });
    assert!(failed.is_err());
    assert_eq!(
        store.case(first.case_id).unwrap(),
        None,
        "nothing of the job"
    );
    assert_eq!(store.case(second.case_id).unwrap(), None);
    // The next transaction commits as usual.
    put(&store, &first);
    assert_eq!(store.case(first.case_id).unwrap(), Some(first));
}

#[test]
fn a_restore_reapplies_revocations_peer_removals_ended_keys_and_audits_itself() {
    use crate::repo::directory::{DirectoryChanges, Revoked, StoredKey, StoredPeer};
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let ro: NodeId = "RO".parse().unwrap();
    let key = StoredKey {
        public_pem: "pem".into(),
        valid_from: None,
        valid_until: None,
    };
    let peer = StoredPeer {
        id: ro,
        endpoint: "https://ro.example:7401".into(),
        tls_ca_pem: "ca".into(),
        tls_pin: None,
        keys: vec![key.clone()],
    };
    let (p, k) = (peer.clone(), key.clone());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.put_directory_changes(&DirectoryChanges {
                upserted: vec![p.clone()],
                ..Default::default()
            })?;
            let mut learned = crate::repo::directory::LearnedKeys::default();
            learned.peers.insert(ro, vec![k.clone()]);
            tx.put_learned_keys(&learned)?;
            Ok(())
        })
        .unwrap();
    let backup = dir.path().join("backup");
    rt().block_on(store.backup(&backup, time::Duration::days(35)))
        .unwrap();
    // After the backup: a revocation, the peer removed, its key's window ended.
    let ended = OffsetDateTime::now_utc();
    let revoked = Revoked {
        issuer: "0123456789abcdef".into(),
        serial_hex: "1f".into(),
        revoked_at: ended,
    };
    let (r, k) = (revoked.clone(), key.clone());
    let month = trm_core::stats::Month {
        year: 2026,
        month: 2,
    };
    let report = crate::repo::stats::PublishedReport {
        report: vec![7, 7],
        key_id: "k".into(),
        signature: vec![1],
    };
    let published = report.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.put_published_report(month, &published)?;
            tx.put_revoked_clients(std::slice::from_ref(&r))?;
            tx.put_directory_changes(&DirectoryChanges {
                removed: vec![ro],
                ..Default::default()
            })?;
            let mut learned = tx.learned_keys()?;
            learned.peers.insert(
                ro,
                vec![StoredKey {
                    valid_until: Some(ended),
                    ..k.clone()
                }],
            );
            tx.put_learned_keys(&learned)?;
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
    drop(store);
    let r =
        crate::backup::restore(options(dir.path(), &master), &backup, true, "os:tester").unwrap();
    assert!(r.reapplied.revocations >= 1 && r.reapplied.directory_changes >= 2);
    let store = open(dir.path(), &master);
    assert!(store
        .revoked_clients()
        .unwrap()
        .iter()
        .any(|x| x.same_certificate(&revoked)));
    let d = store.directory_changes().unwrap();
    assert_eq!(d.removed, vec![ro], "the removed peer stays removed");
    assert!(d.upserted.is_empty());
    let learned = store.learned_keys().unwrap();
    assert_eq!(learned.peers[&ro][0].valid_until, Some(ended));
    assert_eq!(
        store.published_report(month).unwrap(),
        Some(report),
        "a month published after the backup stays as published"
    );
    // The restore is in the restored chain: who, which backup, what was re-applied.
    let page = store.audit_entries(0, 10_000).unwrap();
    let last = &page.last().unwrap().record;
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.subject.as_str()
        ),
        ("os:tester", "store.restore", r.manifest.backup_key.as_str())
    );
    assert!(last.detail.contains("revocations=1"), "{}", last.detail);
    assert!(store.verify_audit().unwrap().ok);
}

#[test]
fn trusted_rows_written_by_another_are_refused_and_old_ones_written_back_lose() {
    use crate::repo::directory::{DirectoryChanges, Revoked};
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let ro: NodeId = "RO".parse().unwrap();
    let revoked = Revoked {
        issuer: String::new(),
        serial_hex: "2a".into(),
        revoked_at: OffsetDateTime::now_utc(),
    };
    let r = revoked.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.put_revoked_clients(std::slice::from_ref(&r))?;
            tx.put_directory_changes(&DirectoryChanges::default())?;
            Ok(())
        })
        .unwrap();
    let raw = |k: &str| store.engine().get(&crate::repo::layout::meta(k)).unwrap();
    let write_raw = |k: &str, v: Option<&[u8]>| {
        let mut tx = store.engine().begin().unwrap();
        match v {
            Some(v) => tx.put(&crate::repo::layout::meta(k), v).unwrap(),
            None => tx.delete(&crate::repo::layout::meta(k)).unwrap(),
        }
        tx.commit().unwrap();
    };
    let old_directory = raw("directory_changes").unwrap();
    // Someone with write access to the database deletes the revocation: it holds.
    write_raw("revoked_clients", None);
    assert!(store
        .revoked_clients()
        .unwrap()
        .iter()
        .any(|x| x.same_certificate(&revoked)));
    // ... writes a peer of their own: refused, naming the row.
    let forged = serde_json::to_vec(&DirectoryChanges {
        removed: vec![],
        upserted: vec![],
        version: 99,
    })
    .unwrap();
    write_raw("directory_changes", Some(&forged));
    let err = store.directory_changes().unwrap_err();
    assert!(
        matches!(err, StoreError::Forged("directory changes")),
        "{err}"
    );
    // ... writes back an old row of the node's own, from before a peer was removed: the
    // journal's newer directory wins.
    write_raw("directory_changes", Some(&old_directory));
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.put_directory_changes(&DirectoryChanges {
                removed: vec![ro],
                ..Default::default()
            })?;
            Ok(())
        })
        .unwrap();
    write_raw("directory_changes", Some(&old_directory));
    assert_eq!(store.directory_changes().unwrap().removed, vec![ro]);
    // The journal beside the key file is owner-only.
    #[cfg(unix)]
    {
        let journal = crate::journal::path(&dir.path().join("keys/kek.store"));
        assert_eq!(mode(&journal.join("trust")), 0o700);
        for f in std::fs::read_dir(journal.join("trust")).unwrap() {
            assert_eq!(mode(&f.unwrap().path()), 0o600);
        }
    }
}

#[test]
fn erasing_a_case_erases_its_consents_references_and_indexes() {
    use trm_core::{consent::Consent, ids::ConsentId, ids::ReferralId, ids::Shared};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let c = case("Erased with everything");
    put(&store, &c);
    let ro: NodeId = "RO".parse().unwrap();
    let id = c.case_id;
    let consent_id = ConsentId::new();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            let consent = Consent {
                consent_id,
                case_id: id,
                purposes: vec![trm_core::model::Purpose::ReferralAssistance],
                recipients: vec![ro],
                expires_on: None,
                informed: true,
                information_language: "ro".into(),
                categories: vec![],
                recorded_at: OffsetDateTime::now_utc(),
                withdrawn_at: None,
            };
            tx.put_consents(id, &[consent])?;
            tx.record_disclosure(consent_id, Shared::Referral(ReferralId::new()))?;
            tx.case_ref_or_new(id, ro)?;
            Ok(())
        })
        .unwrap();
    let case_ref = store.case_ref(id, ro).unwrap().expect("a reference");
    erase(&store, &c);
    assert!(store.consents(id).unwrap().is_empty(), "consents");
    assert_eq!(store.case_ref(id, ro).unwrap(), None, "the reference");
    let left = |prefix: &[u8]| store.scan_raw(prefix, None, 100).unwrap();
    assert!(
        left(b"cd/").is_empty(),
        "what was disclosed under each consent"
    );
    assert!(left(b"xr/").is_empty(), "the reference back to the case");
    assert!(left(b"co/").is_empty(), "the organisation's index");
    let _ = case_ref;
}

/// A case erased after a backup was made stays erased when that backup is restored: not
/// only its record (its key is destroyed again) but what was kept of it in clear, so the
/// same person arriving again is not linked to it and its references name nothing.
#[test]
fn a_restore_erases_again_what_was_kept_in_clear_of_a_case_erased_since() {
    use trm_core::{consent::Consent, ids::ConsentId, ids::ReferralId, ids::Shared};
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let (c, kept) = (case("Erased after the backup"), case("Kept"));
    put(&store, &c);
    put(&store, &kept);
    let ro: NodeId = "RO".parse().unwrap();
    let id = c.case_id;
    let indexed = c.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            let consent = Consent {
                consent_id: ConsentId::new(),
                case_id: id,
                purposes: vec![trm_core::model::Purpose::ReferralAssistance],
                recipients: vec![ro],
                expires_on: None,
                informed: true,
                information_language: "ro".into(),
                categories: vec![],
                recorded_at: OffsetDateTime::now_utc(),
                withdrawn_at: None,
            };
            tx.record_disclosure(consent.consent_id, Shared::Referral(ReferralId::new()))?;
            tx.put_consents(id, &[consent])?;
            tx.case_ref_or_new(id, ro)?;
            tx.index_person(&indexed)?;
            Ok(())
        })
        .unwrap();
    let backup = dir.path().join("backups/one");
    rt().block_on(store.backup(&backup, time::Duration::days(35)))
        .unwrap();
    store
        .commit_blocking::<(), (), _>({
            let c = c.clone();
            move |tx| {
                tx.unindex_person(&c)?;
                Ok(tx.erase_case(&c)?)
            }
        })
        .unwrap();
    store.close().unwrap();
    drop(store);

    restore_once_free(options(dir.path(), &master), &backup);
    let store = open(dir.path(), &master);
    assert_eq!(store.case(id).unwrap(), None);
    assert!(store.consents(id).unwrap().is_empty(), "consents");
    assert_eq!(store.case_ref(id, ro).unwrap(), None, "the reference");
    let left = |prefix: &[u8]| store.scan_raw(prefix, None, 100).unwrap();
    assert!(left(b"cd/").is_empty(), "what was disclosed");
    assert!(left(b"xr/").is_empty(), "the reference back to the case");
    assert_eq!(
        left(b"co/").len(),
        1,
        "only the kept case in its organisation's index"
    );
    assert!(left(b"bi/").is_empty(), "the blind index of persons");
    let again = CaseRecord {
        case_id: trm_core::ids::CaseId::new(),
        ..c.clone()
    };
    let linked = store
        .commit_blocking::<_, (), _>(move |tx| Ok(tx.index_person(&again)?))
        .unwrap();
    assert!(
        linked.is_empty(),
        "the same person is not linked to the erased case"
    );
    assert_eq!(store.case(kept.case_id).unwrap(), Some(kept));
}

#[test]
fn idempotency_records_older_than_a_day_are_forgotten_however_many_newer_ones_sort_first() {
    use crate::repo::{layout, requests::RequestRecord};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let now = OffsetDateTime::now_utc();
    let record = |at| RequestRecord {
        digest: vec![7; 32],
        result: "id".into(),
        at,
    };
    let day_ago = now - time::Duration::hours(24);
    let old_at = now - time::Duration::hours(25);
    // Records an older version wrote (no index by age), recent and old.
    let legacy_recent: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let legacy_old: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let (r, o) = (legacy_recent.clone(), legacy_old.clone());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            for (id, at) in r
                .iter()
                .map(|i| (i, now))
                .chain(o.iter().map(|i| (i, old_at)))
            {
                tx.put_json(&layout::request("mmmm", id), &record(at))?;
            }
            Ok(())
        })
        .unwrap();
    // More recent requests than one pass looks at, of a client whose records sort first;
    // then old ones of another client.
    let recent: Vec<uuid::Uuid> = (0..4200).map(|_| uuid::Uuid::new_v4()).collect();
    let old: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::new_v4()).collect();
    let (r, o) = (recent.clone(), old.clone());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            for id in &r {
                tx.put_request("aaaa", *id, &record(now))?;
            }
            for id in &o {
                tx.put_request("zzzz", *id, &record(old_at))?;
            }
            Ok(())
        })
        .unwrap();
    // Passes of bounded work until none is left.
    let (mut forgotten, mut passes) = (0, 0);
    loop {
        let pass = store
            .commit_blocking::<_, (), _>(move |tx| Ok(tx.forget_requests_before(day_ago, 1000)?))
            .unwrap();
        forgotten += pass.forgotten;
        passes += 1;
        assert!(passes < 20, "the passes come to an end");
        if !pass.more {
            break;
        }
    }
    assert_eq!(forgotten, old.len() + legacy_old.len());
    let check = move |tx: &mut crate::Tx<'_>| -> Result<(), TxFail<()>> {
        for (client, ids, kept) in [
            ("zzzz", &old, false),
            ("aaaa", &recent, true),
            ("mmmm", &legacy_old, false),
            ("mmmm", &legacy_recent, true),
        ] {
            for id in ids {
                assert_eq!(tx.request(client, *id)?.is_some(), kept, "{client}");
            }
        }
        Ok(())
    };
    store.commit_blocking::<(), (), _>(check).unwrap();
    // A day later the rest goes too, the records an older version wrote included, from the
    // index alone.
    let later = now + time::Duration::hours(25);
    let pass = store
        .commit_blocking::<_, (), _>(move |tx| Ok(tx.forget_requests_before(later, 10_000)?))
        .unwrap();
    assert_eq!(pass.forgotten, 4200 + 3);
    assert!(!pass.more);
}

#[test]
fn inbound_message_ids_past_their_time_are_forgotten_in_either_layout() {
    use crate::repo::{layout, outbox::InboxEntry};
    use trm_core::ids::MessageId;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let now = OffsetDateTime::now_utc();
    let made = |t: OffsetDateTime| {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, t.unix_timestamp() as u64, 0);
        MessageId::from_uuid(uuid::Uuid::new_v7(ts))
    };
    let (old, recent) = (made(now - time::Duration::days(20)), made(now));
    let ro: NodeId = "RO".parse().unwrap();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            for id in [old, recent] {
                tx.put_inbox(ro, id, b"receipt")?;
                // As a version that kept no sender did.
                tx.put_json(
                    &layout::legacy_inbox(&id.uuid()),
                    &InboxEntry {
                        receipt_body: b"receipt".to_vec(),
                        received_at: now,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    let before = now - time::Duration::days(14);
    let n = store
        .commit_blocking::<_, (), _>(move |tx| Ok(tx.forget_inbox_before(before, 512)?))
        .unwrap();
    assert_eq!(n, 2);
    store
        .commit_blocking::<(), (), _>(move |tx| {
            assert!(tx.inbox(ro, old)?.is_none() && tx.legacy_inbox(old)?.is_none());
            assert!(tx.inbox(ro, recent)?.is_some() && tx.legacy_inbox(recent)?.is_some());
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_part_replaced_by_messages_takes_only_a_newer_one_whatever_order_they_arrive_in() {
    use crate::repo::flows::Replaced;
    use trm_core::{ids::ReturnId, returns::ReturnRecord};
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let store = open(dir.path(), &master);
    let plan = ReturnId::new();
    // Three messages, made in this order (UUIDv7 ids sort as they were made).
    let (first, second, third) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let take = |part: Replaced, message: uuid::Uuid| {
        store
            .commit_blocking::<bool, (), _>(move |tx| {
                Ok(tx.newer_update::<ReturnRecord>(plan, part, message)?)
            })
            .unwrap()
    };
    assert!(take(Replaced::ReturnFlags, second), "the first to arrive");
    assert!(
        !take(Replaced::ReturnFlags, first),
        "made before, arrived after"
    );
    assert!(!take(Replaced::ReturnFlags, second), "the same again");
    // Each part keeps its own order.
    assert!(take(Replaced::DisclosedCase, first));
    assert!(take(Replaced::ReturnFlags, third));
    assert!(!take(Replaced::ReturnFlags, second));
    // And after a restart.
    drop(store);
    let store = open(dir.path(), &master);
    let late = store
        .commit_blocking::<bool, (), _>(move |tx| {
            Ok(tx.newer_update::<ReturnRecord>(plan, Replaced::ReturnFlags, second)?)
        })
        .unwrap();
    assert!(!late, "the order survives a restart");
}

#[test]
fn queued_envelopes_open_together_and_one_whose_record_was_erased_opens_as_none() {
    use trm_core::{
        exchange::RecordKind,
        ids::{MessageId, RecordId, ReferralId},
        messages::{EnvelopeKind, Topic},
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &SecretKey::generate());
    let de: NodeId = "DE".parse().unwrap();
    let (kept, erased) = (ReferralId::new(), ReferralId::new());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            for (id, body) in [(kept, b"kept".as_slice()), (erased, b"erased".as_slice())] {
                let topic = Topic::Referral(id);
                tx.queue_envelope(
                    de,
                    MessageId::new(),
                    topic,
                    EnvelopeKind::ReferralOffer,
                    body,
                )?;
            }
            Ok(())
        })
        .unwrap();
    store
        .commit_blocking::<(), (), _>(move |tx| {
            let uuid = erased.to_uuid();
            tx.shred(&Subject::of_record(RecordKind::Referral, uuid.as_bytes()))?;
            Ok(())
        })
        .unwrap();
    let items = store.outbox_head(de, 10).unwrap();
    let opened = store.open_envelopes(&items).unwrap();
    assert_eq!(opened, [Some(b"kept".to_vec()), None]);
    // The same as opening each alone.
    let alone: Vec<_> = items
        .iter()
        .map(|i| store.open_envelope(i).unwrap())
        .collect();
    assert_eq!(opened, alone);
}
