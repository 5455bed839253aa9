//! TLS to PostgreSQL, against servers of the test's own with `ssl = on` and a certificate
//! issued by a CA the test made (valid for the name `localhost` only). Each `sslmode`
//! connects or is refused as with libpq, against a server that takes TLS only (`hostssl`
//! its only TCP entry of `pg_hba.conf`); a node's sessions on a server that would take
//! clear text too are encrypted (`pg_stat_ssl`, asked over the server's Unix socket).

use std::path::{Path, PathBuf};

use trm_core::ids::{NodeId, Role};
use trm_crypto::{aead::SecretKey, pki::Authority};
use trm_store::{engine::postgres::PostgresOptions, EngineOptions, Store, StoreOptions};
use trm_tests::{requests, TestFederation};

use crate::server::{free_port, Server, Setup};

/// Only TLS over TCP; the Unix socket (the test's own look at the server) as initdb has it.
const TLS_ONLY: &str = "local all all trust\n\
                        hostssl all all 127.0.0.1/32 trust\n\
                        hostssl all all ::1/128 trust\n";

/// TLS or clear text over TCP, as the client chooses.
const EITHER: &str = "local all all trust\n\
                      host all all 127.0.0.1/32 trust\n\
                      host all all ::1/128 trust\n";

struct TlsServer {
    server: Server,
    /// The CA that issued the server's certificate.
    ca: PathBuf,
    /// A CA that did not.
    other_ca: PathBuf,
    _files: tempfile::TempDir,
}

fn tls_server(hba: &'static str) -> anyhow::Result<TlsServer> {
    let files = tempfile::tempdir()?;
    let ca = Authority::generate("test postgresql ca")?;
    let other = Authority::generate("another ca")?;
    let cert = ca.issue_server("postgresql", &["localhost".into()])?;
    let (ca_file, other_ca) = (files.path().join("ca.pem"), files.path().join("other.pem"));
    std::fs::write(&ca_file, ca.cert_pem())?;
    std::fs::write(&other_ca, other.cert_pem())?;
    let server = Server::start_new(
        free_port()?,
        Setup {
            tls: Some(&cert),
            hba: Some(hba),
            ..Setup::default()
        },
    )?;
    Ok(TlsServer {
        server,
        ca: ca_file,
        other_ca,
        _files: files,
    })
}

impl TlsServer {
    fn url(&self, host: &str, sslmode: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={sslmode}&connect_timeout=5",
            self.server.port
        )
    }

    /// How many sessions of application `name` the server has, and how many of them are
    /// encrypted (the engine's sessions are named `trm`).
    fn sessions(&self, name: &'static str) -> anyhow::Result<(i64, i64)> {
        self.server.local_sql(move |c| {
            let row = c.query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl)
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = $1",
                &[&name],
            )?;
            Ok((row.get(0), row.get(1)))
        })
    }
}

fn store_options(dir: &Path, url: String, ca_file: Option<&Path>) -> StoreOptions {
    StoreOptions {
        node: NodeId::parse("node", "AT").unwrap_or_else(|_| unreachable!("a node id")),
        data_dir: dir.join("db"),
        key_store: dir.join("keys/kek.store"),
        master: SecretKey::generate(),
        engine: EngineOptions::Postgres(PostgresOptions {
            url,
            ca_file: ca_file.map(Path::to_path_buf),
            schema: crate::fresh_schema(),
            readers: 1,
        }),
    }
}

#[test]
fn each_sslmode_connects_or_is_refused_as_with_libpq_and_an_unverified_server_is_refused() {
    let s = tls_server(TLS_ONLY).unwrap();
    let (ca, other) = (Some(s.ca.as_path()), Some(s.other_ca.as_path()));
    // (host, sslmode, CA file, what the server or the engine says when refused)
    let cases: [(&str, &str, Option<&Path>, Option<&str>); 9] = [
        // Chain and name verified.
        ("localhost", "verify-full", ca, None),
        // The chain only: the certificate does not name 127.0.0.1.
        ("127.0.0.1", "verify-ca", ca, None),
        (
            "127.0.0.1",
            "verify-full",
            ca,
            Some("does not name the host"),
        ),
        // Another CA: refused, naming the file to check.
        (
            "localhost",
            "verify-full",
            other,
            Some("not signed by the CA of ca_file"),
        ),
        (
            "localhost",
            "verify-ca",
            other,
            Some("not signed by the CA of ca_file"),
        ),
        // require: encrypted, not verified; with a CA, verified as verify-ca (libpq).
        ("127.0.0.1", "require", None, None),
        (
            "127.0.0.1",
            "require",
            other,
            Some("not signed by the CA of ca_file"),
        ),
        // prefer: TLS, since the server offers it (it takes nothing else).
        ("localhost", "prefer", None, None),
        // disable: clear text, which the server refuses.
        ("localhost", "disable", None, Some("no encryption")),
    ];
    for (host, mode, ca_file, refusal) in cases {
        let dir = tempfile::tempdir().unwrap();
        let options = store_options(dir.path(), s.url(host, mode), ca_file);
        let what = format!("{host} sslmode={mode} ca={ca_file:?}");
        match (Store::open(options), refusal) {
            (Ok(store), None) => store.close().unwrap(),
            (Err(e), Some(said)) => {
                let e = e.to_string();
                assert!(e.contains(said), "{what}: {e}");
            }
            (Ok(_), Some(said)) => panic!("{what}: opened; expected a refusal ({said})"),
            (Err(e), None) => panic!("{what}: {e}"),
        }
    }
}

// Multi-threaded: the store's reads wait in place on a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_trmctl_reach_postgresql_over_verified_tls_and_every_session_is_encrypted(
) -> anyhow::Result<()> {
    let s = tokio::task::spawn_blocking(|| tls_server(EITHER)).await??;
    // A control: a session in clear text shows as such.
    let clear = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable&application_name=control",
        s.server.port
    );
    let control =
        tokio::task::spawn_blocking(move || postgres::Client::connect(&clear, postgres::NoTls))
            .await??;
    assert_eq!(
        tokio::task::block_in_place(|| s.sessions("control"))?,
        (1, 0)
    );
    tokio::task::spawn_blocking(move || drop(control)).await?;

    let (url, ca) = (s.url("localhost", "verify-full"), s.ca.clone());
    let mut fed = TestFederation::builder()
        .nodes(&["AT"])
        .config(move |_, c| {
            c.storage.engine = "postgres".into();
            c.storage.url = Some(url.clone());
            c.storage.ca_file = Some(ca.clone());
            c.storage.schema = Some("trm_tls_at".into());
        })
        .start()
        .await?;
    let mut sp = fed.referrals("AT", Role::ServiceProvider).await?;
    let id = sp
        .create_case(requests::case("Over TLS", 3))
        .await?
        .into_inner()
        .case_id;
    let got = sp
        .get_case(trm_proto::v1::GetCaseRequest {
            case_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got.case_id, id);
    let (sessions, encrypted) = tokio::task::block_in_place(|| s.sessions("trm"))?;
    assert!(sessions >= 2, "the node's writer and readers: {sessions}");
    assert_eq!(
        encrypted, sessions,
        "every session of the node is encrypted"
    );
    drop(sp);
    fed.stop_node("AT").await?;
    fed.stop().await?;

    // trmctl lays a sandbox on the same server: the CA copied to each node, whose
    // configuration then validates and whose store opens over verified TLS.
    let dir = tempfile::tempdir()?;
    let storage = trmctl::sandbox::Storage::Postgres {
        url: s.url("localhost", "verify-full"),
        ca_file: Some(s.ca.clone()),
    };
    let at: NodeId = "AT".parse()?;
    let spec = trmctl::sandbox::NodeSpec::from_base(at, 0, free_port()?)?;
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        trmctl::sandbox::init_in(&d, &[spec], true, false, &storage)
    })
    .await??;
    let cfg = trm_node::NodeConfig::load(&trmctl::sandbox::config_path(dir.path(), at))?;
    assert_eq!(
        cfg.storage.ca_file.as_deref(),
        Some(
            trmctl::sandbox::node_dir(dir.path(), at)
                .join("keys/postgres-ca.pem")
                .as_path()
        )
    );
    let options = StoreOptions {
        node: at,
        data_dir: cfg.node.data_dir.clone(),
        key_store: cfg.node.key_store.clone(),
        master: SecretKey::load(&cfg.node.master_key)?,
        engine: trm_node::config::engine_options(&cfg)?,
    };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        Store::open(options)?.close()?;
        Ok(())
    })
    .await??;
    Ok(())
}
