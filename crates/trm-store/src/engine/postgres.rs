//! The PostgreSQL engine: the key space is one table (`kv`, keys and values as `bytea`,
//! compared byte by byte as sled compares them) in a schema of the node's own, and the
//! durable point is the commit (with `synchronous_commit` on, PostgreSQL's default, a
//! commit returns once its WAL is on stable storage). PostgreSQL holds what the store
//! writes: sealed records, wrapped data keys; never a clear value.
//!
//! The client is `postgres`, the blocking face of `tokio-postgres` (sfackler's
//! rust-postgres, the maintained PostgreSQL client of the Rust ecosystem): the store writes
//! from one thread of its own, one transaction at a time, so a blocking client fits it
//! without a second async runtime. Each connection lives on a thread of its own and is
//! handed work over a channel, so the store's readers (on the node's async runtime) never
//! run a blocking client inside it.
//!
//! Transactions are SERIALIZABLE: replicas of one country may write at once, and a conflict
//! ([`StoreError::Conflict`]) makes the writer run the whole group again. A transaction's
//! writes are kept in layers (one per savepoint, as with sled) and written at commit.
//!
//! The schema is versioned: migrations run at start-up under an advisory lock, and a schema
//! newer than the binary is refused.
//!
//! Connections use TLS as libpq does ([`tls`]: `sslmode` in the URL, the server's CA in
//! [`PostgresOptions::ca_file`]); a server off this machine is reached only once its
//! certificate is verified.

pub mod tls;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    thread,
};

use postgres::{error::SqlState, Client};

use super::{Engine, EngineTx, Entry, Layers};
use crate::{Result, StoreError};

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &["CREATE TABLE kv (k bytea PRIMARY KEY, v bytea NOT NULL)"];

/// Where the engine connects and which schema it uses.
#[derive(Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL or key-value string, e.g.
    /// `postgres://trm@db.example/trm?sslmode=verify-full`; its `sslmode` as libpq reads
    /// it ([`tls`]).
    pub url: String,
    /// The PEM file of the CA that signed the server's certificate (needed by
    /// `verify-ca` and `verify-full`, and so by any host that is not loopback).
    pub ca_file: Option<PathBuf>,
    /// The node's schema (created when missing), e.g. `trm_at`.
    pub schema: String,
    /// Connections for reads outside transactions.
    pub readers: usize,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("PostgresOptions")
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .field("readers", &self.readers)
            .finish_non_exhaustive()
    }
}

fn pg_error(e: postgres::Error) -> StoreError {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Conflict
        }
        _ => StoreError::Engine(format!("postgres: {e}")),
    }
}

type Job = Box<dyn FnOnce(&mut Option<Session>) + Send>;

/// A connection and the statements prepared on it (prepared once: a query by text would
/// cost a second round trip each time, to prepare it).
struct Session {
    client: Client,
    statements: std::collections::HashMap<&'static str, postgres::Statement>,
}

impl Session {
    fn prepared(&mut self, sql: &'static str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(pg_error)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// One connection on a thread of its own, reconnecting when it was lost.
struct Conn {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Conn {
    fn start(name: String, connector: Arc<tls::Connector>, schema: String) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new().name(name).spawn(move || {
            let mut session: Option<Session> = None;
            while let Ok(job) = rx.recv() {
                if session.as_ref().is_none_or(|s| s.client.is_closed()) {
                    session = connect(&connector, &schema).ok().map(|client| Session {
                        client,
                        statements: Default::default(),
                    });
                }
                job(&mut session);
            }
        })?;
        Ok(Self {
            jobs: Mutex::new(tx),
        })
    }

    /// Runs `f` on the connection's thread and returns what it gives.
    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |client| {
            let r = match client.as_mut() {
                Some(c) => f(c),
                None => Err(StoreError::Engine("postgres: not connected".into())),
            };
            let _ = reply.send(r);
        });
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .map_err(|_| StoreError::Stopped)?;
        wait_outside_runtime(|| answer.recv().map_err(|_| StoreError::Stopped))?
    }
}

/// Runs `wait` (a wait for the database) so that it does not hold up the async tasks of a
/// caller on a multi-threaded runtime (the node's): the worker hands its other tasks to
/// the rest while it waits. The store's reads are plain calls from the node's handlers;
/// with sled they take microseconds, here a network round trip.
fn wait_outside_runtime<R>(wait: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// Checks the options' URL and CA file and prepares TLS ([`tls::Connector::new`]).
fn connector(options: &PostgresOptions) -> Result<tls::Connector> {
    tls::Connector::new(&options.url, options.ca_file.as_deref()).map_err(|e| {
        StoreError::Engine(match e {
            tls::SettingError::Url(problem) => format!("postgres url: {problem}"),
            tls::SettingError::CaFile(problem) => format!("postgres ca_file: {problem}"),
        })
    })
}

/// Opens a connection; a refusal says why (a server certificate refused: which setting to
/// check; the server's own refusal, such as no `pg_hba.conf` entry or a wrong password:
/// its message, which carries names at most).
fn open_client(connector: &tls::Connector) -> Result<Client> {
    connector.connect().map_err(|e| {
        if let Some(problem) = tls::certificate_problem(&e) {
            return StoreError::Engine(format!("postgres: {problem}"));
        }
        match e.as_db_error() {
            Some(db) => StoreError::Engine(format!(
                "postgres: the server refused the connection: {}",
                db.message()
            )),
            None => pg_error(e),
        }
    })
}

fn connect(connector: &tls::Connector, schema: &str) -> Result<Client> {
    let mut client = open_client(connector)?;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .map_err(pg_error)?;
    // An acknowledgement waits for the commit's WAL on disk: a server (or role) configured
    // with synchronous_commit = off would lose acknowledged writes in a crash. Stricter
    // settings (remote_write, remote_apply: the standby too) are kept.
    let mode: String = client
        .query_one("SHOW synchronous_commit", &[])
        .map_err(pg_error)?
        .get(0);
    if mode == "off" {
        tracing::warn!(
            "PostgreSQL has synchronous_commit = off; the node sets it on for its connections"
        );
        client
            .batch_execute("SET synchronous_commit TO on")
            .map_err(pg_error)?;
    }
    Ok(client)
}

/// Whether `s` may name a node's schema (it is written into SQL as is).
pub fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Creates the schema if needed and brings it to [`SCHEMA_VERSION`]; refuses a newer one.
fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    let mut tx = client.transaction().map_err(pg_error)?;
    // One node migrating at a time, whatever replicas start together.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
        .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .map_err(pg_error)?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .map_err(pg_error)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Engine(format!(
            "the database schema {schema} is at version {current}, newer than this binary \
             ({SCHEMA_VERSION}): run a newer trm-node"
        )));
    }
    tx.batch_execute(&format!("SET LOCAL search_path TO {schema}"))
        .map_err(pg_error)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version > current {
            tx.batch_execute(sql).map_err(pg_error)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&version],
            )
            .map_err(pg_error)?;
        }
    }
    tx.commit().map_err(pg_error)
}

/// Runs `f` with a connection of its own, on a thread of its own (a blocking client must
/// not run on the caller's async runtime).
fn with_client<R: Send + 'static>(
    connector: &Arc<tls::Connector>,
    f: impl FnOnce(&mut Client) -> Result<R> + Send + 'static,
) -> Result<R> {
    let connector = connector.clone();
    thread::spawn(move || f(&mut open_client(&connector)?))
        .join()
        .map_err(|_| StoreError::Engine("postgres: a connection thread failed".into()))?
}

/// Whether the node's schema holds any record.
pub fn holds_data(options: &PostgresOptions) -> Result<bool> {
    let schema = options.schema.clone();
    with_client(&Arc::new(connector(options)?), move |c| {
        let table: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[&format!("{schema}.kv")])
            .map_err(pg_error)?
            .get(0);
        if table.is_none() {
            return Ok(false);
        }
        Ok(
            c.query_opt(&format!("SELECT 1 FROM {schema}.kv LIMIT 1"), &[])
                .map_err(pg_error)?
                .is_some(),
        )
    })
}

/// Drops the node's schema and everything in it (a restore or `sandbox init --force`
/// replacing a node's data); the next open creates it again.
pub fn drop_schema(options: &PostgresOptions) -> Result<()> {
    if !valid_schema(&options.schema) {
        return Err(StoreError::Engine(
            "postgres schema: lower-case letters, digits and _".into(),
        ));
    }
    let schema = options.schema.clone();
    with_client(&Arc::new(connector(options)?), move |c| {
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .map_err(pg_error)
    })
}

/// The engine: a connection for transactions and a few for reads.
pub struct PostgresEngine {
    writer: Conn,
    readers: Vec<Conn>,
    next: AtomicUsize,
}

impl PostgresEngine {
    /// Connects, creates or migrates the node's schema, and starts the connections.
    pub fn open(options: &PostgresOptions) -> Result<Self> {
        if !valid_schema(&options.schema) {
            return Err(StoreError::Engine(
                "postgres schema: lower-case letters, digits and _".into(),
            ));
        }
        let connector = Arc::new(connector(options)?);
        let schema = options.schema.clone();
        with_client(&connector, move |c| migrate(c, &schema))?;
        let conn = |name: String| Conn::start(name, connector.clone(), options.schema.clone());
        let writer = conn("trm-pg-writer".into())?;
        let readers = (0..options.readers.max(1))
            .map(|i| conn(format!("trm-pg-reader-{i}")))
            .collect::<Result<Vec<_>>>()?;
        let engine = Self {
            writer,
            readers,
            next: AtomicUsize::new(0),
        };
        // Fail now, with the reason, rather than at the first request.
        engine.get(b"\0")?;
        Ok(engine)
    }

    /// Runs read `f` on a reader connection; once more on a fresh connection when the
    /// first was found closed (the database restarted since it was last used). Reads
    /// change nothing, so running one again is safe.
    fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Session) -> Result<R> + Send + Sync + 'static,
    ) -> Result<R> {
        let f = std::sync::Arc::new(f);
        let conn = self.reader();
        let once = f.clone();
        match conn.run(move |c| once(c)) {
            Err(StoreError::Engine(_)) => conn.run(move |c| f(c)),
            other => other,
        }
    }

    fn reader(&self) -> &Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        &self.readers[i]
    }
}

fn get_on(c: &mut Session, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let st = c.prepared("SELECT v FROM kv WHERE k = $1")?;
    Ok(c.client
        .query_opt(&st, &[&key])
        .map_err(pg_error)?
        .map(|row| row.get(0)))
}

fn range_on(c: &mut Session, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let st = c.prepared("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3")?;
    Ok(c.client
        .query(&st, &[&start, &end, &limit])
        .map_err(pg_error)?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

impl Engine for PostgresEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.read(move |c| get_on(c, &key))
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        let (start, end) = (start.to_vec(), end.to_vec());
        self.read(move |c| range_on(c, &start, &end, limit))
    }

    fn begin(&self) -> Result<Box<dyn EngineTx + '_>> {
        self.writer.run(|c| {
            c.client
                .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .map_err(pg_error)
        })?;
        Ok(Box::new(PostgresTx {
            engine: self,
            layers: Layers::default(),
            open: true,
        }))
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }

    fn latches_on_failed_commit(&self) -> bool {
        false
    }

    fn committed_is_durable(&self) -> bool {
        true
    }

    fn shared_by_replicas(&self) -> bool {
        true
    }
}

/// A SERIALIZABLE transaction on the writer connection; its writes wait in layers until
/// the commit writes them all.
struct PostgresTx<'a> {
    engine: &'a PostgresEngine,
    layers: Layers,
    open: bool,
}

impl EngineTx for PostgresTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.layers.lookup(key) {
            Some(v) => Ok(v.clone()),
            None => {
                let key = key.to_vec();
                self.engine.writer.run(move |c| get_on(c, &key))
            }
        }
    }

    fn range(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        let deleted = self.layers.deleted_in(start, end);
        let (s, e) = (start.to_vec(), end.to_vec());
        let committed = self
            .engine
            .writer
            .run(move |c| range_on(c, &s, &e, limit.saturating_add(deleted)))?;
        Ok(self.layers.merge(committed, start, end, limit))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.layers.put(key, value);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.layers.delete(key);
        Ok(())
    }

    fn savepoint(&mut self) -> Result<()> {
        self.layers.savepoint();
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.layers.rollback_to_savepoint();
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.layers.release_savepoint();
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let writes = std::mem::take(&mut self.layers).into_writes();
        self.open = false;
        let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in writes {
            match v {
                Some(v) => {
                    keys.push(k);
                    values.push(v);
                }
                None => gone.push(k),
            }
        }
        self.engine.writer.run(move |c| {
            let r = (|| {
                if !gone.is_empty() {
                    let st = c.prepared("DELETE FROM kv WHERE k = ANY($1)")?;
                    c.client.execute(&st, &[&gone]).map_err(pg_error)?;
                }
                if !keys.is_empty() {
                    let st = c.prepared(
                        "INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])
                         ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    )?;
                    c.client.execute(&st, &[&keys, &values]).map_err(pg_error)?;
                }
                c.client.batch_execute("COMMIT").map_err(pg_error)
            })();
            if r.is_err() {
                let _ = c.client.batch_execute("ROLLBACK");
            }
            r
        })
    }
}

impl Drop for PostgresTx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self
                .engine
                .writer
                .run(|c| c.client.batch_execute("ROLLBACK").map_err(pg_error));
        }
    }
}
