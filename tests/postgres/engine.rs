//! The engine itself: schema versions, two writers on one schema, the database going away
//! under a running node.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use trm_core::ids::Role;
use trm_crypto::aead::SecretKey;
use trm_store::{audit::AuditRecord, engine::postgres::PostgresOptions, EngineOptions, Store};
use trm_tests::{eventually, requests, TestFederation};

fn options(dir: &Path, master: &SecretKey, schema: &str) -> trm_store::StoreOptions {
    trm_store::StoreOptions {
        node: trm_core::ids::NodeId::parse("node", "AT")
            .unwrap_or_else(|_| unreachable!("a node id")),
        data_dir: dir.join("db"),
        key_store: dir.join("keys/kek.store"),
        master: master.clone(),
        engine: EngineOptions::Postgres(PostgresOptions {
            url: crate::url(),
            ca_file: None,
            schema: schema.to_owned(),
            readers: 2,
        }),
    }
}

/// Runs `statement` on a connection of its own (off any async runtime).
fn sql(statement: String) -> anyhow::Result<()> {
    std::thread::spawn(move || -> anyhow::Result<()> {
        postgres::Client::connect(&crate::url(), postgres::NoTls)?.batch_execute(&statement)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_and_an_older_one_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let schema = crate::fresh_schema();
    Store::open(options(dir.path(), &master, &schema))
        .unwrap()
        .close()
        .unwrap();
    // Opening again finds the schema at its version and changes nothing.
    Store::open(options(dir.path(), &master, &schema))
        .unwrap()
        .close()
        .unwrap();
    sql(format!(
        "INSERT INTO {schema}.schema_version (version) VALUES (99)"
    ))
    .unwrap();
    let err = Store::open(options(dir.path(), &master, &schema)).unwrap_err();
    assert!(err.to_string().contains("newer than this binary"), "{err}");
    sql(format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}

#[test]
fn two_replicas_appending_at_once_keep_one_unbroken_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let schema = crate::fresh_schema();
    let a = Store::open(options(dir.path(), &master, &schema)).unwrap();
    let b = Store::open(options(dir.path(), &master, &schema)).unwrap();
    let per_replica = 150;
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(r, store)| {
            std::thread::spawn(move || {
                for i in 0..per_replica {
                    store
                        .commit_blocking::<(), (), _>(move |tx| {
                            tx.audit(AuditRecord::new(
                                format!("replica:{r}"),
                                "test.append",
                                format!("{i}"),
                                "OK",
                            ))?;
                            Ok(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for store in [&a, &b] {
        let report = store.verify_audit().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries_checked, 2 * per_replica);
    }
    a.close().unwrap();
    b.close().unwrap();
    sql(format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}

/// A TCP proxy to PostgreSQL that can be cut: while down it drops every connection it
/// carries and refuses new ones, as a database server that went away does.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    /// Starts the proxy on a runtime of its own, as a server outside the node's process
    /// would be: the node's blocking reads must not starve it.
    fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let d = down.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if d.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let mut cuts = cuts.clone();
                    cuts.mark_unchanged(); // only a cut from now on closes this connection
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            })
        });
        Ok(Self { addr, down, cut })
    }

    /// Starts a proxy to the suite's database; returns it with the URL that goes through it.
    fn to_postgres() -> anyhow::Result<(Self, String)> {
        let parsed: postgres::Config = crate::url().parse()?;
        let port = parsed.get_ports().first().copied().unwrap_or(5432);
        let proxy = Self::start(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let user = parsed.get_user().unwrap_or("postgres");
        let dbname = parsed.get_dbname().unwrap_or("postgres");
        let url = format!(
            "postgres://{user}@127.0.0.1:{}/{dbname}?connect_timeout=2",
            proxy.addr.port()
        );
        Ok((proxy, url))
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

#[tokio::test]
async fn while_the_database_is_away_requests_fail_unavailable_and_nothing_acknowledged_is_lost(
) -> anyhow::Result<()> {
    let (proxy, via_proxy) = Proxy::to_postgres()?;
    let schema = crate::fresh_schema();
    let s = schema.clone();
    let mut fed = TestFederation::builder()
        .nodes(&["AT"])
        .config(move |_, c| {
            c.storage.engine = "postgres".into();
            c.storage.url = Some(via_proxy.clone());
            c.storage.schema = Some(s.clone());
        })
        .start()
        .await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(
            sp.create_case(requests::case(&format!("Before {i}"), 3))
                .await?
                .into_inner()
                .case_id,
        );
    }

    proxy.set_down(true);
    let err = sp
        .create_case(requests::case("While away", 3))
        .await
        .expect_err("the database is away");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "storage unavailable", "no detail leaks");
    let err = sp
        .get_case(trm_proto::v1::GetCaseRequest {
            case_id: kept[0].clone(),
        })
        .await
        .expect_err("reads need the database too");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Back: the node takes writes again without a restart and has lost nothing.
    proxy.set_down(false);
    let after = eventually("writes to be taken again", || {
        let mut sp = sp.clone();
        async move {
            Ok(sp
                .create_case(requests::case("After", 3))
                .await
                .ok()
                .map(|r| r.into_inner().case_id))
        }
    })
    .await?;
    kept.push(after);
    for id in &kept {
        let c = sp
            .get_case(trm_proto::v1::GetCaseRequest {
                case_id: id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(&c.case_id, id);
    }
    fed.stop_node("AT").await?;
    fed.stop().await?;
    sql(format!("DROP SCHEMA {schema} CASCADE"))?;
    Ok(())
}

fn case(name: &str) -> trm_core::model::CaseRecord {
    use trm_core::model::{CaseRecord, ChildInfo, Exploitation, Gender, Needs, Person};
    CaseRecord {
        case_id: trm_core::ids::CaseId::new(),
        person: Person {
            given_name: name.into(),
            family_name: "Testperson".into(),
            date_of_birth: None,
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
        identified_on: time::OffsetDateTime::now_utc().date(),
        organisation: trm_core::ids::OrgId::parse("organisation", "sp1")
            .unwrap_or_else(|_| unreachable!("a fixed organisation id")),
        created_at: time::OffsetDateTime::now_utc(),
        identifications: vec![],
        residence: None,
    }
}

/// Every row of `schema`'s table, as a base backup or the WAL keeps them.
fn rows(schema: &str) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let sql = format!("SELECT k, v FROM {schema}.kv");
    std::thread::spawn(move || -> anyhow::Result<_> {
        let mut c = postgres::Client::connect(&crate::url(), postgres::NoTls)?;
        Ok(c.query(&sql, &[])?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
}

/// Replaces every row of `schema`'s table with `rows`.
fn put_rows(schema: &str, rows: Vec<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<()> {
    let schema = schema.to_owned();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let mut c = postgres::Client::connect(&crate::url(), postgres::NoTls)?;
        c.batch_execute(&format!("DELETE FROM {schema}.kv"))?;
        for (k, v) in rows {
            c.execute(
                &format!("INSERT INTO {schema}.kv (k, v) VALUES ($1, $2)"),
                &[&k, &v],
            )?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
}

#[test]
fn an_old_copy_of_the_database_stops_opening_an_erased_case_once_the_kek_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let master = SecretKey::generate();
    let (live, copy) = (crate::fresh_schema(), crate::fresh_schema());
    let store = Store::open(options(dir.path(), &master, &live)).unwrap();
    let c = case("Erased Later");
    let kept = c.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| Ok(tx.put_case(&kept)?))
        .unwrap();
    // A copy taken before the erasure (a base backup, a standby, old WAL): it holds the
    // case, and with the node's key file it opens it.
    let before = rows(&live).unwrap();
    Store::open(options(dir.path(), &master, &copy))
        .unwrap()
        .close()
        .unwrap();
    put_rows(&copy, before.clone()).unwrap();
    let old = Store::open(options(dir.path(), &master, &copy)).unwrap();
    assert_eq!(
        old.case(c.case_id).unwrap(),
        Some(c.clone()),
        "the copy is real"
    );
    old.close().unwrap();
    drop(old);

    let erased = c.clone();
    store
        .commit_blocking::<(), (), _>(move |tx| Ok(tx.erase_case(&erased)?))
        .unwrap();
    assert_eq!(
        store.case(c.case_id).unwrap(),
        None,
        "the live copy is gone at once"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(store.rotate_kek_if_due(0)).unwrap());
    store.close().unwrap();
    drop(store);

    // The same copy, with the master key and the key file as they are now: nothing.
    put_rows(&copy, before).unwrap();
    let old = Store::open(options(dir.path(), &master, &copy)).unwrap();
    assert!(matches!(
        old.case(c.case_id),
        Err(trm_store::StoreError::Corrupt(_)) | Ok(None)
    ));
    old.close().unwrap();
    sql(format!(
        "DROP SCHEMA {live} CASCADE; DROP SCHEMA {copy} CASCADE"
    ))
    .unwrap();
}

#[test]
fn replicas_opening_a_new_schema_at_once_all_start() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::generate();
        let schema = crate::fresh_schema();
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let opened: Vec<_> = (0..3)
            .map(|_| {
                let (opts, barrier) = (options(dir.path(), &master, &schema), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(opts)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for store in opened {
            let store = store.unwrap(); // none lost a race at start
            store.close().unwrap();
        }
        sql(format!("DROP SCHEMA {schema} CASCADE")).unwrap();
    }
}

/// Several keys read in one statement come back as the transaction sees each of them, in
/// the order asked (what sealing, opening and the check of a peer's new id rely on).
#[test]
fn get_many_reads_what_the_transaction_sees_in_order() -> anyhow::Result<()> {
    let options = PostgresOptions {
        url: crate::url(),
        ca_file: None,
        schema: format!("trm_test_{}", uuid::Uuid::new_v4().simple()),
        readers: 1,
    };
    let engine = trm_store::engine::postgres::PostgresEngine::open(&options)?;
    let checked = trm_store::testing::check_get_many(&engine);
    drop(engine);
    trm_store::engine::postgres::drop_schema(&options)?;
    Ok(checked?)
}

/// Once a statement of a transaction has failed (here: the connection cut under it), the
/// transaction refuses everything after, even a key it read before and still holds: a
/// later request of the writer's group must fail too, not go on as if it could commit.
#[test]
fn after_a_failed_statement_a_transaction_refuses_even_what_it_read_before() -> anyhow::Result<()> {
    let (proxy, url) = Proxy::to_postgres()?;
    let direct = PostgresOptions {
        url: crate::url(),
        ca_file: None,
        schema: crate::fresh_schema(),
        readers: 1,
    };
    let via_proxy = PostgresOptions {
        url,
        ..direct.clone()
    };
    let engine = trm_store::engine::postgres::PostgresEngine::open(&via_proxy)?;
    let mut tx = trm_store::engine::Engine::begin(&engine)?;
    assert_eq!(
        tx.get(b"gm/a")?,
        None,
        "read once, known to the transaction"
    );
    proxy.set_down(true);
    assert!(tx.get(b"gm/b").is_err(), "the server is away");
    let again = tx.get(b"gm/a");
    assert!(again.is_err(), "a key read before: {again:?}");
    assert!(tx.get_many(&[b"gm/a"]).is_err());
    assert!(tx.put(b"gm/c", b"1").is_err());
    drop(tx);
    drop(engine);
    proxy.set_down(false);
    trm_store::engine::postgres::drop_schema(&direct)?;
    Ok(())
}
