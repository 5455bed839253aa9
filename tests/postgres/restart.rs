//! A PostgreSQL server of the test's own (initdb in a temporary folder, its own port),
//! crashed (`pg_ctl stop -m immediate`: no checkpoint, recovery from the WAL at start) and
//! started again under a stream of writes: requests fail UNAVAILABLE while it is down, the
//! node takes writes again once it is back, and every acknowledged write is there. The
//! server is configured with `synchronous_commit = off`, as a careless one might be: the
//! node turns it on for its own connections (without that, acknowledged writes are lost in
//! the crash: this test fails).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tonic::Code;
use trm_core::ids::Role;
use trm_tests::{eventually, requests, TestFederation};

use crate::server::{free_port, Server, Setup};

/// A server configured with `synchronous_commit = off`, as a careless one might be.
fn careless_server(port: u16) -> anyhow::Result<Server> {
    Server::start_new(
        port,
        Setup {
            settings: &["fsync=on", "synchronous_commit=off"],
            ..Setup::default()
        },
    )
}

// Multi-threaded: the server's commands run in place on a worker (block_in_place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_crashed_and_restarted_under_load_loses_nothing_acknowledged(
) -> anyhow::Result<()> {
    let port = free_port()?;
    let server = tokio::task::spawn_blocking(move || careless_server(port)).await??;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    let fed = TestFederation::builder()
        .nodes(&["AT"])
        .config(move |_, c| {
            c.storage.engine = "postgres".into();
            c.storage.url = Some(url.clone());
            c.storage.schema = Some("trm_at".into());
            // The writers' pace, not the node's rate limit, is under test.
            c.limits.client_requests_per_second = 100_000;
            c.limits.client_burst = 100_000;
        })
        .start()
        .await?;
    let sp = fed.referrals("AT", Role::ServiceProvider).await?;

    // Four writers at once, until told to stop; each keeps what it was told.
    #[derive(Default)]
    struct Outcomes {
        acknowledged: Vec<String>,
        refused: usize,
    }
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (mut sp, outcomes, stop) = (sp.clone(), outcomes.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r = sp
                    .create_case(requests::case(&format!("Load {w}-{i}"), 3))
                    .await;
                let refused = {
                    let mut o = outcomes.lock().unwrap_or_else(PoisonError::into_inner);
                    match r {
                        Ok(r) => {
                            o.acknowledged.push(r.into_inner().case_id);
                            false
                        }
                        Err(e) => {
                            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                            assert_eq!(e.message(), "storage unavailable", "no detail leaks");
                            o.refused += 1;
                            true
                        }
                    }
                };
                if refused {
                    // A client backs off before it tries again.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let acked = || {
        outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acknowledged
            .len()
    };
    eventually("writes under way", || async {
        Ok((acked() >= 40).then_some(()))
    })
    .await?;
    tokio::task::block_in_place(|| server.crash())?;
    let before = acked();
    tokio::time::sleep(Duration::from_secs(2)).await; // down: the writers keep trying
    tokio::task::block_in_place(|| server.start())?;
    eventually("writes taken again after the restart", || async {
        Ok((acked() >= before + 40).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await?;
    }
    let (acknowledged, refused) = {
        let o = outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        (o.acknowledged.clone(), o.refused)
    };
    assert!(
        refused > 0,
        "requests made while the server was down were refused"
    );
    let mut sp = sp;
    for id in &acknowledged {
        let c = sp
            .get_case(trm_proto::v1::GetCaseRequest {
                case_id: id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(
            &c.case_id, id,
            "acknowledged before, during or after the crash"
        );
    }
    println!(
        "restart under load: {} acknowledged, all present; {refused} refused UNAVAILABLE while down",
        acknowledged.len()
    );
    fed.stop().await?;
    drop(server);
    Ok(())
}

/// Every file below `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    Ok(hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_of_postgresql_holds_a_victims_data_in_clear() -> anyhow::Result<()> {
    let port = free_port()?;
    let server = tokio::task::spawn_blocking(move || careless_server(port)).await??;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let u = url.clone();
    let fed = TestFederation::builder()
        .nodes(&["AT", "RO"])
        .config(move |id, c| {
            c.storage.engine = "postgres".into();
            c.storage.url = Some(u.clone());
            c.storage.schema = Some(format!("trm_{}", id.as_str().to_ascii_lowercase()));
        })
        .start()
        .await?;
    // A referral AT -> RO: the case at AT, the disclosed copy at RO, the envelope queued.
    let id = trm_tests::refer(&fed, "AT", "RO").await?;
    let fp = fed.referrals("RO", Role::FocalPoint).await?;
    eventually("the referral at RO", || {
        let (mut fp, id) = (fp.clone(), id.clone());
        async move {
            Ok(fp
                .get_referral(trm_proto::v1::GetReferralRequest { referral_id: id })
                .await
                .ok())
        }
    })
    .await?;
    drop(fp);
    fed.stop().await?;
    // Everything in the data files and the WAL, nothing left in shared buffers.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // A control: a value written in clear is found by the same search.
        postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(
            "CREATE TABLE control (v text); INSERT INTO control VALUES ('Control-Value-7f3a'); CHECKPOINT",
        )?;
        Ok(())
    })
    .await??;
    let data = Path::new(&server.data).to_path_buf();
    assert!(
        !files_holding(&data, b"Control-Value-7f3a")?.is_empty(),
        "the search finds clear values"
    );
    // The identity and contact values of trm_tests::requests::case.
    for needle in [
        "Testperson",
        "P-1234567",
        "Strada Test 1",
        "+40 700 000 000",
    ] {
        let hits = files_holding(&data, needle.as_bytes())?;
        assert!(hits.is_empty(), "{needle:?} in clear in {hits:?}");
    }
    drop(server);
    Ok(())
}
