//! The PostgreSQL engine: the key space is one table (`kv`, keys and values as `bytea`,
//! compared byte by byte as sled compares them) in a schema of the node's own, and the
//! durable point is the commit (with `synchronous_commit` on, PostgreSQL's default, a
//! commit returns once its WAL is on stable storage). PostgreSQL holds what the store
//! writes: sealed records, wrapped data keys; never a clear value.
//!
//! The client is `postgres`, the blocking face of `tokio-postgres` (sfackler's
//! rust-postgres, the maintained PostgreSQL client of the Rust ecosystem): the store writes
//! from one thread of its own, one transaction at a time, so a blocking client fits it
//! without a second async runtime. The engine keeps one connection for transactions and a
//! few for reads; a caller borrows one and runs its statement on its own thread, with no
//! hand-over to another thread and back (measured: that hand-over, not the database, was
//! most of a read's time). A caller on a worker of a multi-threaded runtime (the node's
//! handlers) waits inside `block_in_place`, so the worker's other tasks move to another
//! thread meanwhile; on a current-thread runtime the statement runs on a thread of its own
//! ([`off_runtime`]).
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
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
};

use postgres::{error::SqlState, Client};

use super::{Engine, EngineTx, Entry, LayeredTx, Layers, Writes};
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

/// A place for one connection of the engine: `None` until it is opened, and again once it
/// was found closed (the database restarted since it was last used).
type Slot = Option<Session>;

/// Returns the session of `slot`, connecting first when it has none or it was closed.
fn ready<'s>(
    slot: &'s mut Slot,
    connector: &tls::Connector,
    schema: &str,
) -> Result<&'s mut Session> {
    if slot.as_ref().is_none_or(|s| s.client.is_closed()) {
        *slot = None;
        *slot = Some(Session {
            client: connect(connector, schema)?,
            statements: Default::default(),
        });
    }
    slot.as_mut()
        .ok_or_else(|| StoreError::Engine("postgres: not connected".into()))
}

/// Runs `work` (statements of a blocking client) where it may block: in place on a thread
/// outside any runtime; inside `block_in_place` on a worker of a multi-threaded runtime
/// (the node's: the worker hands its other tasks to the rest while it waits); on a thread
/// of its own on a current-thread runtime, whose thread must not block on a client's own
/// runtime.
fn off_runtime<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match tokio::runtime::Handle::try_current() {
        Err(_) => work(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        Ok(_) => thread::scope(|scope| match scope.spawn(work).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// Closes `sessions` on a thread of their own: closing a blocking client runs its own
/// runtime, which must not happen on a thread of the caller's (an engine dropped by an
/// async task).
fn retire(sessions: Vec<Session>) {
    if sessions.is_empty() {
        return;
    }
    let spawned = thread::Builder::new()
        .name("trm-pg-close".into())
        .spawn(move || drop(sessions));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "postgres connections left to the server to close");
    }
}

/// The connections for reads outside transactions: each lent to one caller at a time.
struct Readers {
    idle: Mutex<Vec<Slot>>,
    returned: Condvar,
}

impl Readers {
    /// Waits for a free connection (blocking: call it off the runtime).
    fn lend(&self) -> Lent<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(slot) = idle.pop() {
                return Lent {
                    readers: self,
                    slot: Some(slot),
                };
            }
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A reader connection lent out; it goes back when this is dropped, whatever happened.
struct Lent<'a> {
    readers: &'a Readers,
    slot: Option<Slot>,
}

impl Lent<'_> {
    fn slot(&mut self) -> &mut Slot {
        self.slot.get_or_insert(None)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let slot = self.slot.take().unwrap_or(None);
        self.readers
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
        self.readers.returned.notify_one();
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
    connector: Arc<tls::Connector>,
    schema: String,
    writer: Mutex<Slot>,
    readers: Readers,
    /// Held while the engine is open: no restore replaces the store under it.
    _lock: Option<NodeLock>,
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
        let engine = Self {
            _lock: NodeLock::shared(options, &connector)?,
            connector,
            schema: options.schema.clone(),
            writer: Mutex::new(None),
            readers: Readers {
                idle: Mutex::new((0..options.readers.max(1)).map(|_| None).collect()),
                returned: Condvar::new(),
            },
        };
        // Fail now, with the reason, rather than at the first request.
        engine.get(b"\0")?;
        Ok(engine)
    }

    /// Runs read `f` on a reader connection; once more on a fresh connection when the
    /// first was found closed (the database restarted since it was last used). Reads
    /// change nothing, so running one again is safe.
    fn read<R: Send>(&self, f: impl Fn(&mut Session) -> Result<R> + Send + Sync) -> Result<R> {
        off_runtime(|| {
            let mut lent = self.readers.lend();
            let mut attempt = || ready(lent.slot(), &self.connector, &self.schema).and_then(&f);
            match attempt() {
                Err(StoreError::Engine(_)) => attempt(),
                other => other,
            }
        })
    }
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        let mut sessions: Vec<Session> = self
            .readers
            .idle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .flatten()
            .collect();
        sessions.extend(
            self.writer
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        retire(sessions);
    }
}

fn get_on(c: &mut Session, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let st = c.prepared("SELECT v FROM kv WHERE k = $1")?;
    Ok(c.client
        .query_opt(&st, &[&key])
        .map_err(pg_error)?
        .map(|row| row.get(0)))
}

/// The values of `keys`, in their order, in one statement.
fn get_many_on(c: &mut Session, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
    let st = c.prepared("SELECT k, v FROM kv WHERE k = ANY($1)")?;
    let rows: std::collections::HashMap<Vec<u8>, Vec<u8>> = c
        .client
        .query(&st, &[&keys])
        .map_err(pg_error)?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(keys.iter().map(|k| rows.get(*k).cloned()).collect())
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
        self.read(|c| get_on(c, key))
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|c| get_many_on(c, keys))
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        self.read(|c| range_on(c, start, end, limit))
    }

    fn begin(&self) -> Result<Box<dyn EngineTx + '_>> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut *writer;
        off_runtime(|| {
            ready(slot, &self.connector, &self.schema)?
                .client
                .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .map_err(pg_error)
        })?;
        Ok(Box::new(PostgresTx {
            writer,
            layers: Layers::default(),
            open: true,
            failed: false,
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

/// A SERIALIZABLE transaction on the writer connection (held for the transaction's life);
/// its writes wait in layers until the commit writes them all.
struct PostgresTx<'a> {
    writer: MutexGuard<'a, Slot>,
    layers: Layers,
    open: bool,
    /// A statement failed: the server aborted the transaction.
    failed: bool,
}

impl PostgresTx<'_> {
    /// Runs `f` on the transaction's connection, off the runtime.
    fn run<R: Send>(&mut self, f: impl FnOnce(&mut Session) -> Result<R> + Send) -> Result<R> {
        let slot = &mut *self.writer;
        let result = off_runtime(move || match slot.as_mut() {
            Some(session) => f(session),
            None => Err(StoreError::Engine("postgres: not connected".into())),
        });
        self.failed |= result.is_err();
        result
    }
}

impl LayeredTx for PostgresTx<'_> {
    fn layers(&mut self) -> &mut Layers {
        &mut self.layers
    }

    fn usable(&self) -> Result<()> {
        match self.failed {
            true => Err(StoreError::Engine(
                "postgres: a statement of this transaction failed".into(),
            )),
            false => Ok(()),
        }
    }

    fn committed_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.run(|c| get_on(c, key))
    }

    fn committed_get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.run(|c| get_many_on(c, keys))
    }

    fn committed_range(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        self.run(|c| range_on(c, start, end, limit))
    }

    fn apply(mut self: Box<Self>, writes: Writes) -> Result<()> {
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
        self.run(move |c| {
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
            let _ = self.run(|c| c.client.batch_execute("ROLLBACK").map_err(pg_error));
        }
    }
}

/// The lock a running process of a node holds on its schema (shared: every replica holds
/// one), and a restore takes exclusively: a restore never replaces the store under a
/// running replica. A PostgreSQL advisory lock on a connection of its own (on a thread of
/// its own, like the engine's connections), released when it is dropped or the process
/// dies; a running process takes it again after the database restarted.
pub struct NodeLock {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The schema this process holds exclusively (a restore), if it does.
    exclusive: Option<String>,
}

/// The schemas this process holds exclusively: the restore's own engine opens them without
/// waiting for a shared lock it would never get.
static EXCLUSIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl std::fmt::Debug for NodeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLock").finish_non_exhaustive()
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        if let Some(schema) = self.exclusive.take() {
            EXCLUSIVE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|s| *s != schema);
        }
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The advisory lock key of a schema: 64 bits of the SHA-256 of its name.
fn node_lock_key(schema: &str) -> i64 {
    let d = trm_crypto::sha256(format!("trm/node-lock/{schema}").as_bytes());
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl NodeLock {
    /// Takes the shared lock of a running process (waits while a restore holds it); none
    /// when this process holds the schema exclusively (the engine of a restore).
    pub fn shared(
        options: &PostgresOptions,
        connector: &Arc<tls::Connector>,
    ) -> Result<Option<Self>> {
        if EXCLUSIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&options.schema)
        {
            return Ok(None);
        }
        let taken = Self::start(
            options,
            connector.clone(),
            "SELECT true FROM (SELECT pg_advisory_lock_shared($1)) AS locked",
            true,
        )?;
        taken
            .map(Some)
            .ok_or_else(|| StoreError::Engine("postgres: the node lock was not taken".into()))
    }

    /// Takes the exclusive lock of a restore; `None` when a process of the node holds it.
    pub fn try_exclusive(options: &PostgresOptions) -> Result<Option<Self>> {
        let connector = Arc::new(connector(options)?);
        let lock = Self::start(options, connector, "SELECT pg_try_advisory_lock($1)", false)?;
        Ok(lock.map(|mut l| {
            EXCLUSIVE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(options.schema.clone());
            l.exclusive = Some(options.schema.clone());
            l
        }))
    }

    /// Runs the lock's connection on a thread: `lock` answers whether it was taken; with
    /// `again`, the lock is taken again whenever the connection was lost.
    fn start(
        options: &PostgresOptions,
        connector: Arc<tls::Connector>,
        lock: &'static str,
        again: bool,
    ) -> Result<Option<Self>> {
        let key = node_lock_key(&options.schema);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (first, taken) = std::sync::mpsc::sync_channel::<Result<bool>>(1);
        let thread = std::thread::Builder::new()
            .name("trm-pg-node-lock".into())
            .spawn(move || {
                let mut first = Some(first);
                loop {
                    let took = open_client(&connector).and_then(|mut c| {
                        let row = c.query_one(lock, &[&key]).map_err(pg_error)?;
                        Ok((c, row.get::<_, bool>(0)))
                    });
                    let client = match took {
                        Ok((c, taken)) => {
                            if let Some(f) = first.take() {
                                let _ = f.send(Ok(taken));
                            }
                            if !taken {
                                return;
                            }
                            Some(c)
                        }
                        Err(e) => {
                            if let Some(f) = first.take() {
                                let _ = f.send(Err(e));
                                return;
                            }
                            None
                        }
                    };
                    // Hold it until dropped; see every few seconds that it is still held.
                    let mut client = client;
                    loop {
                        match stopped.recv_timeout(std::time::Duration::from_secs(2)) {
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let alive = client.as_mut().is_some_and(|c| c.simple_query("").is_ok());
                        if !alive {
                            if !again {
                                return;
                            }
                            tracing::warn!(
                                "the node lock's database connection was lost: taking it again"
                            );
                            break;
                        }
                    }
                }
            })?;
        let lock = Self {
            stop: Some(stop),
            thread: Some(thread),
            exclusive: None,
        };
        match off_runtime(move || taken.recv()) {
            Ok(Ok(true)) => Ok(Some(lock)),
            Ok(Ok(false)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Engine(
                "postgres: the node lock's thread stopped".into(),
            )),
        }
    }
}
