//! The sled engine (0.34): the default, embedded, for one machine.
//!
//! One sled tree holds the whole key space, so that a transaction is one `apply_batch`
//! (atomic across every repository) with no sled transaction and its process-wide lock.
//! Only the store's writer thread writes, so nothing conflicts.
//!
//! The durable point is real: after `apply_batch`, sled's `flush` (which ends in
//! `sync_file_range`, enough for a process crash but not a power cut), then `fdatasync` of
//! the database file, then every other file under the folder that changed since it was last
//! synced, and the folder itself when an entry appeared. sled writes a value whose node
//! would exceed a quarter of a segment to a file of its own under `blobs/` and never syncs
//! it; values here are split into chunks small enough that no node reaches that size, and
//! any blob that appears anyway is synced with the rest.
//!
//! A full or read-only disk: sled 0.34 keeps the first I/O error of a write (its
//! `global_error`) and fails every later write and flush until the database is opened
//! again, and an error from its `flush` cannot be told apart from a failed writeback (the
//! page cache may then hold what the disk does not). So the engine does not let sled meet a
//! full disk: before each group the writer asks [`Engine::write_refusal`], which refuses
//! while the folder is read-only or has less free space than a reserve, and the node takes
//! writes again as soon as space returns, without a restart. A write that fails inside sled
//! anyway (the disk filled by someone else within one group, an I/O error) latches the
//! store until the node is restarted.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use super::{Engine, EngineTx, Entry, LayeredTx, Layers, Writes};
use crate::{Result, StoreError};

/// The largest value piece stored inline. A sled leaf holds up to 17 entries and sled
/// writes a node larger than a quarter of a segment (128 KiB of the default 512 KiB) as a
/// blob: 17 pieces of 4 KiB stay well below.
const PIECE: usize = 4000;
/// Value tags.
const INLINE: u8 = 0;
const CHUNKED: u8 = 1;
/// The reserved first byte of the keys of the chunks of large values.
const CHUNK_SPACE: u8 = 0xff;

/// A hook run before each sync of the durable point: a test makes it fail to see what the
/// node does when the disk does (`fail-points` feature).
pub type SyncHook = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// Settings of the sled engine.
#[derive(Clone, Default)]
pub struct SledOptions {
    /// Bytes of sled's page cache (default 16 MiB: the node reads little twice).
    pub cache_bytes: Option<u64>,
    /// Called before each sync; an error fails the durable point.
    pub sync_hook: Option<SyncHook>,
    /// Free bytes the data folder's file system must keep before a write is tried
    /// (`None`: the smaller of 64 MiB and a sixteenth of the file system; `Some(0)`: no
    /// reserve, sled meets a full disk itself and the store latches).
    pub min_free_bytes: Option<u64>,
}

impl std::fmt::Debug for SledOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledOptions")
            .field("cache_bytes", &self.cache_bytes)
            .field("sync_hook", &self.sync_hook.is_some())
            .field("min_free_bytes", &self.min_free_bytes)
            .finish()
    }
}

/// What a file looked like when it was last synced.
type FileState = (u64, Option<SystemTime>);

/// The sled engine of one node.
pub struct SledEngine {
    db: sled::Db,
    dir: PathBuf,
    file: File,
    hook: Option<SyncHook>,
    min_free_bytes: Option<u64>,
    /// The files under `dir` as last synced.
    synced: Mutex<HashMap<PathBuf, FileState>>,
    /// The names in the folder and in `blobs/` at the last sync: sled changes no file but
    /// `db` without adding or removing a name (snapshots are renamed into place, blobs are
    /// created new), so when the names are the same only `db` needs syncing.
    names: Mutex<Vec<std::ffi::OsString>>,
}

impl std::fmt::Debug for SledEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEngine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn chunk_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 3);
    k.push(CHUNK_SPACE);
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn chunk_key(key: &[u8], i: u32) -> Vec<u8> {
    let mut k = chunk_prefix(key);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Returns the number of chunks a stored head says its value has, when chunked.
fn chunks_of(head: &[u8]) -> Option<u32> {
    match head.split_first() {
        Some((&CHUNKED, rest)) => {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            Some(len.div_ceil(PIECE) as u32)
        }
        _ => None,
    }
}

fn file_state(path: &Path) -> Option<FileState> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

/// Returns every file below `dir` (sled keeps `conf`, `db`, `snap.*` and `blobs/*`).
fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            out.extend(files_below(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

impl SledEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes.unwrap_or(16 << 20))
            // The node decides when to flush: at its durable points.
            .flush_every_ms(None);
        // sled releases its file lock when its last background write has finished: a store
        // reopened right after it was closed (a restart in the same process) waits for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let file = File::open(dir.join("db"))?;
        let engine = Self {
            db,
            dir: dir.to_path_buf(),
            file,
            hook: options.sync_hook,
            min_free_bytes: options.min_free_bytes,
            synced: Mutex::default(),
            names: Mutex::default(),
        };
        // Whatever sled wrote while opening (its config, a new database) is made durable,
        // directory entries included.
        engine.sync_all()?;
        Ok(engine)
    }

    fn sync_all(&self) -> Result<()> {
        self.db.flush()?;
        if let Some(hook) = &self.hook {
            hook().map_err(|e| StoreError::Sync(e.to_string()))?;
        }
        self.file
            .sync_data()
            .map_err(|e| StoreError::Sync(e.to_string()))?;
        self.sync_changed_files()
    }

    /// Syncs every file under the folder that changed since its last sync, and the folders
    /// whose entries changed.
    fn sync_changed_files(&self) -> Result<()> {
        let names = self.names_now()?;
        let db_path = self.dir.join("db");
        {
            let mut last = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            if *last == names {
                // Only `db` changed, and it was just synced.
                if let Some(state) = file_state(&db_path) {
                    self.synced
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(db_path, state);
                }
                return Ok(());
            }
            *last = names;
        }
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        let mut new_entry_in: Vec<PathBuf> = Vec::new();
        let files = files_below(&self.dir)?;
        for path in &files {
            let Some(state) = file_state(path) else {
                continue;
            };
            if synced.get(path) == Some(&state) {
                continue;
            }
            if *path != db_path {
                File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| StoreError::Sync(format!("{}: {e}", path.display())))?;
            }
            if !synced.contains_key(path) {
                if let Some(parent) = path.parent() {
                    if !new_entry_in.iter().any(|p| p == parent) {
                        new_entry_in.push(parent.to_path_buf());
                    }
                }
            }
            synced.insert(path.clone(), state);
        }
        let gone = synced.len() > files.len();
        if gone {
            synced.retain(|p, _| files.contains(p));
            new_entry_in.push(self.dir.clone());
        }
        for dir in new_entry_in {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::Sync(format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Returns the names in the folder and in `blobs/`, sorted.
    fn names_now(&self) -> Result<Vec<std::ffi::OsString>> {
        let mut names = Vec::new();
        for dir in [self.dir.clone(), self.dir.join("blobs")] {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for e in entries {
                        names.push(e?.file_name());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            names.push(std::ffi::OsString::from("/"));
        }
        names.sort();
        Ok(names)
    }

    /// Reads a stored value, joining its chunks.
    fn read(&self, key: &[u8], head: &[u8]) -> Result<Vec<u8>> {
        match head.split_first() {
            Some((&INLINE, rest)) => Ok(rest.to_vec()),
            Some((&CHUNKED, rest)) => {
                let len = rest
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or(StoreError::Corrupt("chunked value header"))?
                    as usize;
                let mut out = Vec::with_capacity(len);
                for item in self.db.scan_prefix(chunk_prefix(key)) {
                    out.extend_from_slice(&item?.1);
                }
                if out.len() != len {
                    return Err(StoreError::Corrupt("chunked value length"));
                }
                Ok(out)
            }
            _ => Err(StoreError::Corrupt("value tag")),
        }
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.db.get(key)? {
            Some(head) => self.read(key, &head).map(Some),
            None => Ok(None),
        }
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in self.db.range(start.to_vec()..end.to_vec()).take(limit) {
            let (k, head) = item?;
            let value = self.read(&k, &head)?;
            out.push((k.to_vec(), value));
        }
        Ok(out)
    }

    fn begin(&self) -> Result<Box<dyn EngineTx + '_>> {
        Ok(Box::new(SledTx {
            engine: self,
            layers: Layers::default(),
        }))
    }

    fn unsynced_files(&self) -> Result<Vec<PathBuf>> {
        let synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(files_below(&self.dir)?
            .into_iter()
            .filter(|p| file_state(p).is_some_and(|s| synced.get(p) != Some(&s)))
            .collect())
    }

    fn close(&self) -> Result<()> {
        self.sync_all()
    }

    #[cfg(unix)]
    fn write_refusal(&self) -> Option<super::WriteRefusal> {
        use super::WriteRefusal;
        use rustix::fs::StatVfsMountFlags;
        let fs = match rustix::fs::statvfs(&self.dir) {
            Ok(fs) => fs,
            Err(e) => return Some(WriteRefusal::Unexamined(e.to_string())),
        };
        if fs.f_flag.contains(StatVfsMountFlags::RDONLY) {
            return Some(WriteRefusal::ReadOnly);
        }
        let free_bytes = fs.f_bavail.saturating_mul(fs.f_frsize);
        let reserve_bytes = self
            .min_free_bytes
            .unwrap_or_else(|| (fs.f_blocks.saturating_mul(fs.f_frsize) / 16).min(DEFAULT_RESERVE));
        (reserve_bytes > 0 && free_bytes < reserve_bytes).then_some(WriteRefusal::Full {
            free_bytes,
            reserve_bytes,
        })
    }
}

/// The most free space kept in reserve by default: many times what a group of ordinary
/// requests writes (a group of very large requests could still need more: then sled meets
/// the full disk and the store latches).
const DEFAULT_RESERVE: u64 = 64 << 20;

/// A transaction of the sled engine: writes are kept in layers (one per savepoint) and
/// applied in one batch at commit.
struct SledTx<'a> {
    engine: &'a SledEngine,
    layers: Layers,
}

impl LayeredTx for SledTx<'_> {
    fn layers(&mut self) -> &mut Layers {
        &mut self.layers
    }

    fn committed_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(key)
    }

    fn committed_range(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        self.engine.range(start, end, limit)
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.first() == Some(&CHUNK_SPACE) {
            return Err(StoreError::Corrupt("key in the reserved space"));
        }
        Ok(())
    }

    fn apply(self: Box<Self>, writes: Writes) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let engine = self.engine;
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            // The chunks of what the key held before go with it.
            if let Some(n) = engine.db.get(&key)?.as_deref().and_then(chunks_of) {
                for i in 0..n {
                    batch.remove(chunk_key(&key, i));
                }
            }
            match value {
                None => batch.remove(key),
                Some(v) if v.len() < PIECE => {
                    let mut head = Vec::with_capacity(v.len() + 1);
                    head.push(INLINE);
                    head.extend_from_slice(&v);
                    batch.insert(key, head);
                }
                Some(v) => {
                    let mut head = vec![CHUNKED];
                    head.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    for (i, piece) in v.chunks(PIECE).enumerate() {
                        batch.insert(chunk_key(&key, i as u32), piece);
                    }
                    batch.insert(key, head);
                }
            }
        }
        engine.db.apply_batch(batch)?;
        engine.sync_all()
    }
}

/// Opens the raw sled database of a closed store (tests of what an intruder can do).
#[cfg(test)]
pub(crate) fn open_raw(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SledEngine {
        SledEngine::open(dir, SledOptions::default()).unwrap()
    }

    #[test]
    fn savepoints_keep_or_forget_their_writes_and_reads_see_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path());
        let mut tx = e.begin().unwrap();
        tx.put(b"a", b"1").unwrap();
        tx.savepoint().unwrap();
        tx.put(b"b", b"2").unwrap();
        tx.rollback_to_savepoint().unwrap();
        tx.savepoint().unwrap();
        tx.put(b"c", b"3").unwrap();
        tx.delete(b"a").unwrap();
        tx.release_savepoint().unwrap();
        assert_eq!(tx.get(b"a").unwrap(), None);
        assert_eq!(tx.range(b"a", b"z", 10).unwrap().len(), 1);
        tx.commit().unwrap();
        assert_eq!(e.get(b"b").unwrap(), None);
        assert_eq!(e.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(e.get(b"a").unwrap(), None);
    }

    #[test]
    fn get_many_reads_what_the_transaction_sees_in_order() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::check_get_many(&open(dir.path())).unwrap();
    }

    #[test]
    fn large_values_are_chunked_never_written_as_unsynced_blobs_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        {
            let e = open(dir.path());
            for i in 0..20u8 {
                let mut tx = e.begin().unwrap();
                tx.put(&[b'v', i], &big).unwrap();
                tx.commit().unwrap();
                assert!(
                    e.unsynced_files().unwrap().is_empty(),
                    "every file written is synced at the durable point"
                );
            }
            let mut tx = e.begin().unwrap();
            tx.put(b"v\x00", b"small now").unwrap();
            tx.commit().unwrap();
        }
        let blobs = dir.path().join("blobs");
        let blob_count = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
        assert_eq!(blob_count, 0, "no value went to sled's unsynced blobs");
        let e = open(dir.path());
        assert_eq!(e.get(b"v\x01").unwrap().as_deref(), Some(&big[..]));
        assert_eq!(e.get(b"v\x00").unwrap().as_deref(), Some(&b"small now"[..]));
        // The old chunks of the overwritten value are gone.
        let chunks = e.db.scan_prefix(chunk_prefix(b"v\x00")).count();
        assert_eq!(chunks, 0);
    }

    #[test]
    fn a_failing_sync_fails_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fail.clone();
        let e = SledEngine::open(
            dir.path(),
            SledOptions {
                sync_hook: Some(Arc::new(move || {
                    if f.load(std::sync::atomic::Ordering::SeqCst) {
                        Err(std::io::Error::other("injected"))
                    } else {
                        Ok(())
                    }
                })),
                ..Default::default()
            },
        )
        .unwrap();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut tx = e.begin().unwrap();
        tx.put(b"k", b"v").unwrap();
        assert!(matches!(tx.commit(), Err(StoreError::Sync(_))));
    }
}
