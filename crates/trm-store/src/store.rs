//! The store handle: opens the engine and the key hierarchy, runs the writer thread, and
//! serves reads of committed state. Cheap to clone.

use std::{
    any::Any,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{sync_channel, SyncSender},
        Arc, Mutex, PoisonError, RwLock,
    },
    thread::JoinHandle,
};

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use trm_core::ids::NodeId;
use trm_crypto::aead::SecretKey;

use crate::{
    engine::{
        postgres::{PostgresEngine, PostgresOptions},
        sled::{SledEngine, SledOptions},
        Engine,
    },
    keys::KeyRing,
    repo::layout,
    subject::Subject,
    tx::{decode, Note, Tx},
    writer::{self, Health, Job, JobFail, Shared},
    Result, StoreError, TxFail,
};

/// Requests that may wait for the writer at once (callers wait beyond that).
const QUEUE: usize = 8192;

/// How to open a node's store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The node whose store it is (the flows' directions are seen from it).
    pub node: NodeId,
    /// The database folder.
    pub data_dir: PathBuf,
    /// The key file (KEKs), outside `data_dir`.
    pub key_store: PathBuf,
    pub master: SecretKey,
    pub engine: EngineOptions,
}

/// Which engine holds the store, and its settings.
#[derive(Debug, Clone)]
pub enum EngineOptions {
    /// Embedded, in `data_dir` (the default).
    Sled(SledOptions),
    /// A PostgreSQL database shared by the node's replicas (`data_dir` is not used).
    Postgres(PostgresOptions),
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self::Sled(SledOptions::default())
    }
}

/// A committed request's value and what the node must do now that it is durable.
#[derive(Debug)]
pub struct Committed<R> {
    pub value: R,
    pub notes: Vec<Note>,
}

/// One node's store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    shared: Arc<Shared>,
    jobs: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// A copy of the signed audit head outside the database (beside the key file).
    anchor: PathBuf,
    key_store: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// Marks that this database's keys live in a key file: opening it later without that file
/// is refused instead of silently starting an empty one.
const KEY_FILE_IN_USE: &str = "key_file_in_use";

/// Adopts the rows the node trusts without a seal the first time this version opens the
/// store beside a journal: rows of earlier versions get the node's authentication tag, the
/// revocations and directory are written to the journal as its baseline. Once the journal
/// holds its baseline nothing is adopted again (a row without a tag is refused): deleting
/// a mark in the database cannot make the node adopt a forged row.
fn authenticate_rows(engine: &dyn Engine, keys: &KeyRing, key_store: &Path) -> Result<()> {
    use crate::journal::{self, Entry};
    use crate::repo::directory::{DirectoryChanges, LearnedKeys, OwnKey, Revoked, TRUSTED_ROWS};
    let trust = journal::read_trust(key_store)?;
    if trust.iter().any(|r| r.entry == Entry::Baseline) {
        return Ok(());
    }
    let mut attempts = 0;
    loop {
        let mut tx = engine.begin()?;
        let mut rows = Vec::new();
        for name in TRUSTED_ROWS {
            rows.push(layout::meta(name));
        }
        let (start, end) = crate::engine::scan_bounds(&layout::meta("lease/"), None);
        rows.extend(
            tx.range(&start, &end, usize::MAX)?
                .into_iter()
                .map(|(k, _)| k),
        );
        let mut baseline = vec![Entry::Baseline];
        for key in rows {
            let Some(row) = tx.get(&key)? else { continue };
            let plain = match crate::tx::verify_row(keys, "row", &key, &row) {
                Ok(plain) => plain.to_vec(),
                Err(_) => row.clone(),
            };
            if key == layout::meta("revoked_clients") {
                let all: Vec<Revoked> = decode("revoked clients", &plain)?;
                baseline.extend(all.into_iter().map(|revoked| Entry::Revoked { revoked }));
            }
            if key == layout::meta("directory_changes") {
                let changes: DirectoryChanges = decode("directory changes", &plain)?;
                baseline.push(Entry::Directory { changes });
            }
            if key == layout::meta("learned_keys") {
                let keys: LearnedKeys = decode("learned keys", &plain)?;
                baseline.push(Entry::LearnedKeys { keys });
            }
            if key == layout::meta("own_keys") {
                let keys: Vec<OwnKey> = decode("own keys", &plain)?;
                baseline.push(Entry::OwnKeys { keys });
            }
            tx.put(&key, &crate::tx::authenticate(keys, &key, plain))?;
        }
        journal::append(&journal::path(key_store), &baseline)?;
        match tx.commit() {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict) if attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

impl Store {
    /// Opens (or creates) the store on the engine `options` names.
    pub fn open(options: StoreOptions) -> Result<Self> {
        let engine: Arc<dyn Engine> = match &options.engine {
            EngineOptions::Sled(sled) => {
                Arc::new(SledEngine::open(&options.data_dir, sled.clone())?)
            }
            EngineOptions::Postgres(pg) => Arc::new(PostgresEngine::open(pg)?),
        };
        Self::with_engine(options.node, engine, &options.key_store, options.master)
    }

    /// Opens the store on `engine`, its KEKs in `key_store`.
    pub fn with_engine(
        node: NodeId,
        engine: Arc<dyn Engine>,
        key_store: &Path,
        master: SecretKey,
    ) -> Result<Self> {
        let in_use = engine.get(&layout::meta(KEY_FILE_IN_USE))?.is_some();
        let keys = Arc::new(KeyRing::open(key_store, master, !in_use)?);
        if engine.shared_by_replicas() {
            keys.set_shared();
        }
        if !in_use {
            // Before the writer runs: it is the only other writer of this process. Replicas
            // of the node starting at once write the same mark: one of them may lose a
            // serialization race, and tries again.
            let mark = layout::meta(KEY_FILE_IN_USE);
            let mut attempts = 0;
            loop {
                let mut tx = engine.begin()?;
                let written = match tx.get(&mark)? {
                    Some(_) => break,
                    None => tx.put(&mark, b"1").and_then(|()| tx.commit()),
                };
                match written {
                    Ok(()) => break,
                    Err(StoreError::Conflict) if attempts < 16 => attempts += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        authenticate_rows(&*engine, &keys, key_store)?;
        keys.mark_erased(crate::journal::read_erased(key_store)?);
        let shared = Arc::new(Shared {
            node,
            engine,
            keys,
            health: Arc::new(Health::default()),
            outbox_durable: Arc::new(AtomicU64::new(0)),
            signer: RwLock::new(None),
            tampered: AtomicBool::new(false),
            counts: Default::default(),
            journal: crate::journal::path(key_store),
            sync_latency: Default::default(),
            commits_begun: AtomicU64::new(0),
            commits_returned: AtomicU64::new(0),
            events_durable: AtomicU64::new(0),
            event_changes: tokio::sync::watch::channel(0).0,
        });
        let (tx, rx) = sync_channel(QUEUE);
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name(format!("trm-store-writer-{node}"))
            .spawn(move || writer::run(s, rx))?;
        let store = Self {
            inner: Arc::new(Inner {
                node,
                shared,
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                anchor: key_store.with_extension("audit-anchor"),
                key_store: key_store.to_path_buf(),
            }),
        };
        store.count_outbox()?;
        // Every queued envelope and every event present at start is durable.
        let shared = &store.inner.shared;
        shared
            .outbox_durable
            .store(store.counter(crate::repo::outbox::SEQ)?, Ordering::SeqCst);
        shared
            .events_durable
            .store(store.counter(crate::repo::events::SEQ)?, Ordering::SeqCst);
        Ok(store)
    }

    /// Whether other processes (replicas of this node) write the same database: then
    /// in-memory state read from it at start (directory, revocations) must be read again
    /// from time to time, and only the holder of a lease may do one-at-a-time work.
    pub fn shared_by_replicas(&self) -> bool {
        self.engine().shared_by_replicas()
    }

    /// Takes or renews lease `name` for `holder` (see [`crate::repo::lease`]); returns
    /// until when `holder` may act on it, or `None` when another replica holds it.
    pub async fn hold_lease(
        &self,
        name: &'static str,
        holder: String,
        length: time::Duration,
    ) -> Result<Option<time::OffsetDateTime>> {
        let now = time::OffsetDateTime::now_utc();
        let me = holder.clone();
        let lease = self
            .commit::<_, (), _>(move |tx| Ok(tx.take_lease(name, &me, now, length)?))
            .await
            .map_err(TxFail::into_store)?
            .value;
        Ok((lease.holder == holder).then(|| lease.usable_until(length)))
    }

    /// Gives lease `name` up if `holder` holds it.
    pub async fn release_lease(&self, name: &'static str, holder: String) -> Result<()> {
        self.commit::<(), (), _>(move |tx| Ok(tx.release_lease(name, &holder)?))
            .await
            .map_err(TxFail::into_store)?;
        Ok(())
    }

    /// Returns the node whose store this is.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    pub(crate) fn engine(&self) -> &dyn Engine {
        &*self.inner.shared.engine
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn anchor_path(&self) -> &Path {
        &self.inner.anchor
    }

    /// How long the durable points take.
    pub fn sync_latency(&self) -> &crate::histogram::Histogram {
        &self.inner.shared.sync_latency
    }

    pub(crate) fn key_store_path(&self) -> &Path {
        &self.inner.key_store
    }

    fn send(&self, run: writer::JobFn) -> Result<oneshot::Receiver<writer::JobOutput>> {
        let (reply, rx) = oneshot::channel();
        let jobs = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Stopped)?;
        jobs.send(Job { run, reply })
            .map_err(|_| StoreError::Stopped)?;
        Ok(rx)
    }

    fn job<R, E, F>(f: F) -> writer::JobFn
    where
        F: Fn(&mut Tx<'_>) -> std::result::Result<R, TxFail<E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        Box::new(move |tx| match f(tx) {
            Ok(r) => Ok(Box::new(r) as Box<dyn Any + Send>),
            Err(TxFail::Abort(e)) => Err(JobFail::Abort(Box::new(e))),
            Err(TxFail::Store(e)) => Err(JobFail::Store(e)),
        })
    }

    fn unpack<R: 'static, E: 'static>(
        out: writer::JobOutput,
    ) -> std::result::Result<Committed<R>, TxFail<E>> {
        match out {
            Ok((value, notes)) => match value.downcast::<R>() {
                Ok(value) => Ok(Committed {
                    value: *value,
                    notes,
                }),
                Err(_) => Err(TxFail::Store(StoreError::Corrupt("job result type"))),
            },
            Err(JobFail::Abort(e)) => match e.downcast::<E>() {
                Ok(e) => Err(TxFail::Abort(*e)),
                Err(_) => Err(TxFail::Store(StoreError::Corrupt("job refusal type"))),
            },
            Err(JobFail::Store(e)) => Err(TxFail::Store(e)),
        }
    }

    /// Runs `f` in the writer's next group and returns once its writes are durable (or it
    /// refused, or the group failed). `f` must not have effects outside the transaction; an
    /// `Abort` keeps nothing it wrote.
    pub async fn commit<R, E, F>(&self, f: F) -> std::result::Result<Committed<R>, TxFail<E>>
    where
        F: Fn(&mut Tx<'_>) -> std::result::Result<R, TxFail<E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.queue(f)?.await
    }

    /// Queues `f` now, behind every commit queued before it, and returns the wait for its
    /// outcome (as [`Store::commit`]). For callers that must keep an order among their
    /// commits without waiting for each in turn: the writer applies jobs in queue order.
    pub fn queue<R, E, F>(
        &self,
        f: F,
    ) -> Result<impl std::future::Future<Output = std::result::Result<Committed<R>, TxFail<E>>>>
    where
        F: Fn(&mut Tx<'_>) -> std::result::Result<R, TxFail<E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let rx = self.send(Self::job(f))?;
        Ok(async move {
            let out = rx.await.map_err(|_| StoreError::Stopped)?;
            Self::unpack(out)
        })
    }

    /// Same as [`Store::commit`], for callers outside an async runtime (it blocks; never call
    /// it from async code).
    pub fn commit_blocking<R, E, F>(&self, f: F) -> std::result::Result<R, TxFail<E>>
    where
        F: Fn(&mut Tx<'_>) -> std::result::Result<R, TxFail<E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let rx = self.send(Self::job(f))?;
        let out = rx.blocking_recv().map_err(|_| StoreError::Stopped)?;
        Self::unpack(out).map(|c| c.value)
    }

    /// Waits until everything committed before the call is durable (it already is when its
    /// commit returned; this orders the caller after every commit in flight).
    pub async fn durable(&self) -> Result<()> {
        match self.commit::<(), (), _>(|_| Ok(())).await {
            Ok(_) => Ok(()),
            Err(TxFail::Store(e)) => Err(e),
            Err(TxFail::Abort(())) => Ok(()),
        }
    }

    /// Returns why the store stopped taking writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.health.failure()
    }

    /// Returns why the store cannot take a write now: a failed durable point (latched, see
    /// [`Store::failure`]) or a disk that refuses writes at the moment (full, read-only;
    /// this passes when the disk takes writes again). For readiness probes: a cheap check,
    /// no write.
    pub fn write_fault(&self) -> Option<String> {
        self.failure()
            .or_else(|| self.engine().write_refusal().map(|r| r.to_string()))
    }

    /// Returns a receiver that sees a failed durable point when it happens.
    pub fn watch_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.shared.health.watch()
    }

    /// Returns whether the engine answers a read (for readiness probes).
    pub fn is_readable(&self) -> bool {
        self.engine().get(&layout::meta(KEY_FILE_IN_USE)).is_ok()
    }

    /// Returns the files of the engine changed since they were last made durable.
    pub fn unsynced_files(&self) -> Result<Vec<PathBuf>> {
        self.engine().unsynced_files()
    }

    /// Returns the key hierarchy (for the KEK rotation and status).
    pub fn keys(&self) -> &KeyRing {
        &self.inner.shared.keys
    }

    /// Signs the audit head with `signer`'s key at every durable point from now on, unless
    /// the chain no longer holds what the node anchored outside the database.
    pub async fn sign_audit_head_with(
        &self,
        signer: Arc<trm_crypto::signing::Signer>,
    ) -> Result<()> {
        if !self.anchor_consistent()? {
            self.inner.shared.tampered.store(true, Ordering::SeqCst);
            tracing::error!(
                "the audit chain does not hold the head this node anchored: not signing over it"
            );
        }
        *self
            .inner
            .shared
            .signer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(signer);
        // Sign the head as it stands now (a no-op entry is not needed: force a signing).
        let store = self.clone();
        store
            .commit::<(), (), _>(|tx| {
                tx.fx.audited = true;
                Ok(())
            })
            .await
            .map_err(TxFail::into_store)?;
        self.anchor_audit_head()
    }

    /// Stops the writer (after every request already queued) and flushes the engine. After
    /// a failed durable point the flush may fail again (sled keeps its first I/O error until
    /// it is opened again): nothing is lost by it, since every write after the failure was
    /// refused and everything acknowledged before it was durable, so that is logged, not
    /// returned.
    pub fn close(&self) -> Result<()> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = w.join();
        }
        match self.engine().close() {
            Ok(()) => {}
            Err(e) if self.failure().is_some() => tracing::warn!(
                error = %e,
                "the store's last flush failed as its durable point did; everything acknowledged was durable before"
            ),
            Err(e) => return Err(e),
        }
        self.anchor_audit_head()
    }

    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self.engine().get(key)? {
            Some(b) => decode(what, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Returns the committed value of counter `name` (0 before its first use).
    pub(crate) fn counter(&self, name: &str) -> Result<u64> {
        Ok(self
            .engine()
            .get(&layout::meta(name))?
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Reads a committed row the node trusts without a seal (see [`crate::tx`]).
    pub(crate) fn get_trusted<T: DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        crate::tx::trusted_with(&self.inner.shared.keys, |k| self.engine().get(k), what, key)
    }

    /// Returns up to `limit` committed entries whose keys start with `prefix`, after
    /// `after` if given.
    pub(crate) fn scan_raw(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = crate::engine::scan_bounds(prefix, after);
        self.engine().range(&start, &end, limit)
    }

    /// Opens bytes sealed under `subject`; `None` when the key that sealed them is gone.
    pub fn open_sealed(
        &self,
        subject: &Subject,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let keys = &self.inner.shared.keys;
        crate::tx::open_with(keys, |k| self.engine().get(k), subject, aad, sealed)
    }

    pub(crate) fn get_sealed<T: DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
        subject: &Subject,
    ) -> Result<Option<T>> {
        let keys = &self.inner.shared.keys;
        // The value and the subject's first-generation key (the one it is sealed under
        // unless the subject was shredded since) in one read; any read after that (a later
        // generation's key, the value read again) goes to the engine.
        let first = layout::data_key(subject, 0);
        let mut read = self.engine().get_many(&[key, &first])?.into_iter();
        let (mut value, mut first_key) = (Some(read.next().flatten()), read.next().flatten());
        let get = |k: &[u8]| {
            if k == key {
                if let Some(v) = value.take() {
                    return Ok(v);
                }
            } else if k == first.as_slice() {
                if let Some(v) = first_key.take() {
                    return Ok(Some(v));
                }
            }
            self.engine().get(k)
        };
        crate::tx::sealed_with(keys, get, what, key, subject)
    }

    /// Re-wraps every data key still under the retiring KEK; returns how many it found.
    async fn rewrap_pass(&self) -> Result<usize> {
        let keys = &self.inner.shared.keys;
        let mut after: Option<Vec<u8>> = None;
        let mut found = 0;
        loop {
            let page = self.scan_raw(layout::DATA_KEYS, after.as_deref(), 512)?;
            let Some((last, _)) = page.last() else {
                return Ok(found);
            };
            after = Some(last.clone());
            let stale: Vec<Vec<u8>> = page
                .into_iter()
                .filter(|(_, v)| keys.is_retiring(v))
                .map(|(k, _)| k)
                .collect();
            if stale.is_empty() {
                continue;
            }
            found += stale.len();
            self.commit::<(), (), _>(move |tx| {
                for slot in &stale {
                    // Re-read: the key may have been shredded meanwhile.
                    if let Some(stored) = tx.get_raw(slot)? {
                        if let Some(rewrapped) = tx.keys.rewrap(slot, &stored)? {
                            tx.put_raw(slot, &rewrapped)?;
                        }
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| match e {
                TxFail::Store(e) => e,
                TxFail::Abort(()) => StoreError::Stopped,
            })?;
        }
    }

    /// Rotates the KEK when the current one is older than `max_age_secs` (or a rotation is
    /// unfinished): live data keys are re-wrapped under a new KEK, a page at a time through
    /// the writer, then the old KEK is destroyed. Returns whether a KEK was retired.
    pub async fn rotate_kek_if_due(&self, max_age_secs: i64) -> Result<bool> {
        let keys = &self.inner.shared.keys;
        if keys.is_shared() {
            keys.reload()?;
        }
        let (_, created, retiring) = keys.epochs();
        if retiring.is_none() {
            if (time::OffsetDateTime::now_utc() - created).whole_seconds() < max_age_secs {
                return Ok(false);
            }
            keys.begin_rotation()?;
        }
        // Replicas sharing the database learn of the new KEK from it before the passes.
        let epoch = keys.epochs().0;
        self.commit::<(), (), _>(move |tx| {
            tx.put_raw(&layout::meta(crate::keys::KEK_EPOCH), &epoch.to_be_bytes())?;
            Ok(())
        })
        .await
        .map_err(TxFail::into_store)?;
        // Whatever was in flight when the new KEK became current is committed before the
        // pass starts; keys created from now on are wrapped under the new KEK. Passes repeat
        // until one finds no key under the old KEK; then one transaction reads every data
        // key and writes the epoch again: a key another replica wraps under the old KEK
        // concurrently conflicts with it (it read the epoch this writes), so it is retried
        // under the new KEK instead of slipping under one about to be destroyed. Only then
        // is the old KEK destroyed.
        loop {
            self.durable().await?;
            if self.rewrap_pass().await? > 0 {
                continue;
            }
            let none_left = self
                .commit::<bool, (), _>(move |tx| {
                    let keys = tx.keys;
                    let mut after: Option<Vec<u8>> = None;
                    loop {
                        let page = tx.scan_raw(layout::DATA_KEYS, after.as_deref(), 4096)?;
                        let Some((last, _)) = page.last() else { break };
                        after = Some(last.clone());
                        if page.iter().any(|(_, v)| keys.is_retiring(v)) {
                            return Ok(false);
                        }
                    }
                    tx.put_raw(&layout::meta(crate::keys::KEK_EPOCH), &epoch.to_be_bytes())?;
                    Ok(true)
                })
                .await
                .map_err(TxFail::into_store)?
                .value;
            if none_left {
                break;
            }
        }
        keys.finish_rotation()?;
        tracing::info!(
            epoch = keys.epochs().0,
            "key-encryption key rotated; the old one is destroyed"
        );
        Ok(true)
    }

    /// Destroys the keys of backups past their retention (those backups then open for no
    /// one) and prunes erasures no restorable backup predates. Returns how many backup
    /// keys it destroyed.
    pub fn expire_backups(&self, retention: time::Duration) -> Result<usize> {
        self.expire_backups_at(retention, time::OffsetDateTime::now_utc())
    }

    /// [`Store::expire_backups`] as of `now`.
    pub(crate) fn expire_backups_at(
        &self,
        retention: time::Duration,
        now: time::OffsetDateTime,
    ) -> Result<usize> {
        let destroyed = self.keys().destroy_expired_backup_keys(now)?;
        if destroyed > 0 {
            tracing::info!(destroyed, "keys of expired backups destroyed");
        }
        // An erasure is kept while any backup made before it can be restored: the oldest
        // backup whose key is still kept, whatever the retention is set to now (it may have
        // been longer when that backup was made), and never less than the retention. A
        // day's margin: clocks of replicas may differ a little.
        let oldest = self
            .keys()
            .oldest_backup()?
            .unwrap_or(now)
            .min(now - retention);
        crate::journal::prune_erasures(self.key_store_path(), oldest - time::Duration::days(1))?;
        Ok(destroyed)
    }
}
