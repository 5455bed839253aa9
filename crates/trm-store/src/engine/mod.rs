//! The storage engine interface: one ordered key space of bytes, read outside any
//! transaction (committed state) and written only in transactions. An engine is told
//! nothing about records; the repositories above it own every key layout. The interface is
//! what both engines can keep: sled (embedded, one writer per process) and PostgreSQL (a
//! table of keys and values, transactions with savepoints, the commit as the durable point).

pub mod postgres;
pub mod sled;

/// Why a disk does not take writes at the moment ([`Engine::write_refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefusal {
    /// Less free space than the reserve.
    Full {
        free_bytes: u64,
        reserve_bytes: u64,
    },
    ReadOnly,
    /// The folder's file system could not be asked.
    Unexamined(String),
}

impl WriteRefusal {
    /// Returns whether `other` has the same cause (whatever its figures).
    pub fn same_cause(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl std::fmt::Display for WriteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteRefusal::Full {
                free_bytes,
                reserve_bytes,
            } => write!(
                f,
                "the data folder is full: {} KiB free, {} KiB kept in reserve",
                free_bytes >> 10,
                reserve_bytes >> 10
            ),
            WriteRefusal::ReadOnly => f.write_str("the data folder is read-only"),
            WriteRefusal::Unexamined(e) => write!(f, "the data folder cannot be examined: {e}"),
        }
    }
}

use std::collections::{BTreeMap, HashMap};

use crate::Result;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An engine: the node's one ordered key space.
pub trait Engine: Send + Sync + 'static {
    /// Returns the committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Returns the committed values of `keys`, in their order: in one round trip on an
    /// engine where each read is one (PostgreSQL, where they are also read at one instant).
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Returns up to `limit` committed entries with keys in `start..end`, in key order.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>>;

    /// Starts a write transaction. The store runs one at a time (its single writer).
    fn begin(&self) -> Result<Box<dyn EngineTx + '_>>;

    /// Returns the files under the engine's folder that changed since they were last made
    /// durable (empty for an engine without local files); for tests of the durable point.
    fn unsynced_files(&self) -> Result<Vec<std::path::PathBuf>> {
        Ok(Vec::new())
    }

    /// Returns why the engine cannot take a write now (its folder full or read-only), or
    /// `None`. The writer asks before each group, so that a full or read-only disk refuses
    /// writes before the engine fails on it: such a refusal changes nothing, latches
    /// nothing, and ends as soon as the disk takes writes again. `None` for an engine
    /// without local files (a database server answers for itself).
    fn write_refusal(&self) -> Option<WriteRefusal> {
        None
    }

    /// Flushes whatever the engine buffers; called on shutdown.
    fn close(&self) -> Result<()>;

    /// Whether a failed commit must stop every later write: true where what a failed
    /// durable point wrote may already be visible (a file system), false where the commit
    /// is atomic (a database server).
    fn latches_on_failed_commit(&self) -> bool {
        true
    }

    /// Whether what is committed is durable as soon as it is visible (a database server), so
    /// readers need not wait for the writer to publish its durable point.
    fn committed_is_durable(&self) -> bool {
        false
    }

    /// Whether other processes may write the same key space (replicas of one node).
    fn shared_by_replicas(&self) -> bool {
        false
    }
}

/// A write transaction: reads see its own writes; savepoints let one request of a group
/// fail without failing the others; `commit` returns only once everything it wrote is on
/// stable storage (the durable point).
pub trait EngineTx {
    /// Returns the value of `key` as this transaction sees it.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Returns the values of `keys` as this transaction sees them, in the same order: one
    /// round trip to a database server for all of them.
    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Returns up to `limit` entries with keys in `start..end` as this transaction sees
    /// them, in key order.
    fn range(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>>;

    /// Writes `value` under `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key`.
    fn delete(&mut self, key: &[u8]) -> Result<()>;

    /// Marks a point to roll back to.
    fn savepoint(&mut self) -> Result<()>;

    /// Forgets every write since the last savepoint (and the savepoint).
    fn rollback_to_savepoint(&mut self) -> Result<()>;

    /// Keeps the writes since the last savepoint (and forgets the savepoint).
    fn release_savepoint(&mut self) -> Result<()>;

    /// Applies every write atomically and makes it durable.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A transaction's writes as it commits them, the newest of each key (`None`: deleted).
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A transaction that keeps its writes in [`Layers`] and applies them in one batch at
/// commit (the sled and PostgreSQL engines). Its [`EngineTx`] is written once, below: reads
/// lay its own writes over the committed state, savepoints are layers.
pub(crate) trait LayeredTx {
    /// The transaction's own writes.
    fn layers(&mut self) -> &mut Layers;

    /// Returns the committed value of `key`.
    fn committed_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Returns the committed values of `keys`, in the same order (one read each unless the
    /// engine can do better).
    fn committed_get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.committed_get(k)).collect()
    }

    /// Returns up to `limit` committed entries with keys in `start..end`, in key order.
    fn committed_range(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>>;

    /// Refuses every further operation once the transaction can only be rolled back (a
    /// statement of it failed on the server): what it read before must not let a later
    /// request of the group go on as if it could commit.
    fn usable(&self) -> Result<()> {
        Ok(())
    }

    /// Refuses a key the engine keeps for itself; every key is allowed unless the engine
    /// says otherwise.
    fn check_key(&self, _key: &[u8]) -> Result<()> {
        Ok(())
    }

    /// Applies `writes` atomically and makes them durable.
    fn apply(self: Box<Self>, writes: Writes) -> Result<()>;
}

impl<T: LayeredTx> EngineTx for T {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.usable()?;
        if let Some(v) = self.layers().known(key) {
            return Ok(v);
        }
        let v = self.committed_get(key)?;
        self.layers().remember(key, &v);
        Ok(v)
    }

    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.usable()?;
        let mut found: Vec<Option<Option<Vec<u8>>>> =
            keys.iter().map(|k| self.layers().known(k)).collect();
        let missing: Vec<&[u8]> = keys
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            let committed = self.committed_get_many(&missing)?;
            for (key, value) in missing.iter().zip(&committed) {
                self.layers().remember(key, value);
            }
            let mut committed = committed.into_iter();
            for slot in found.iter_mut().filter(|f| f.is_none()) {
                *slot = Some(committed.next().flatten());
            }
        }
        Ok(found.into_iter().map(Option::flatten).collect())
    }

    fn range(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>> {
        self.usable()?;
        let deleted = self.layers().deleted_in(start, end);
        let committed = self.committed_range(start, end, limit.saturating_add(deleted))?;
        Ok(self.layers().merge(committed, start, end, limit))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.usable()?;
        self.check_key(key)?;
        self.layers().put(key, value);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.usable()?;
        self.layers().delete(key);
        Ok(())
    }

    fn savepoint(&mut self) -> Result<()> {
        self.layers().savepoint();
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.layers().rollback_to_savepoint();
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.layers().release_savepoint();
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let writes = std::mem::take(self.layers()).into_writes();
        self.apply(writes)
    }
}

/// Returns the smallest key greater than every key starting with `prefix` (the end of a
/// prefix range); `None` when there is none (a prefix of only 0xff bytes).
/// Returns the range of a scan of the keys starting with `prefix`, after key `after` (from
/// the first such key when `None`).
pub fn scan_bounds(prefix: &[u8], after: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let start = match after {
        Some(a) => {
            let mut s = a.to_vec();
            s.push(0);
            s
        }
        None => prefix.to_vec(),
    };
    (start, prefix_end(prefix))
}

pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// A transaction's own writes, one layer per open savepoint (`None`: deleted), shared by
/// the engines that apply a transaction's writes at commit; and the committed values it
/// has read. Those cannot change under it (one writer; on PostgreSQL, the SERIALIZABLE
/// transaction's one snapshot), so each is read from the engine once.
#[derive(Debug, Default)]
pub(crate) struct Layers {
    layers: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    read: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Layers {
    /// Returns this transaction's write of `key`, if it made one (`Some(None)`: deleted).
    pub fn lookup(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.layers.iter().rev().find_map(|l| l.get(key))
    }

    /// Returns the value of `key` as the transaction sees it, if it wrote it or already read
    /// its committed value.
    fn known(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.lookup(key).or_else(|| self.read.get(key)).cloned()
    }

    /// Keeps the committed value of `key` as read.
    fn remember(&mut self, key: &[u8], value: &Option<Vec<u8>>) {
        self.read.insert(key.to_vec(), value.clone());
    }

    fn top(&mut self) -> &mut BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        if self.layers.is_empty() {
            self.layers.push(BTreeMap::new());
        }
        let last = self.layers.len() - 1;
        &mut self.layers[last]
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.top().insert(key.to_vec(), Some(value.to_vec()));
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.top().insert(key.to_vec(), None);
    }

    pub fn savepoint(&mut self) {
        self.layers.push(BTreeMap::new());
    }

    pub fn rollback_to_savepoint(&mut self) {
        if self.layers.len() > 1 {
            self.layers.pop();
        } else if let Some(l) = self.layers.first_mut() {
            l.clear();
        }
    }

    pub fn release_savepoint(&mut self) {
        if self.layers.len() > 1 {
            if let Some(top) = self.layers.pop() {
                self.top().extend(top);
            }
        }
    }

    /// Returns how many of this transaction's writes in `start..end` are deletions (a
    /// committed range must be read that much longer to fill `limit`).
    pub fn deleted_in(&self, start: &[u8], end: &[u8]) -> usize {
        self.mine(start, end)
            .values()
            .filter(|v| v.is_none())
            .count()
    }

    fn mine(&self, start: &[u8], end: &[u8]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut mine = BTreeMap::new();
        for layer in &self.layers {
            for (k, v) in layer.range(start.to_vec()..end.to_vec()) {
                mine.insert(k.clone(), v.clone());
            }
        }
        mine
    }

    /// Returns `committed` (a committed range) as this transaction sees it.
    pub fn merge(
        &self,
        committed: Vec<Entry>,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Vec<Entry> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (k, v) in self.mine(start, end) {
            match v {
                Some(v) => {
                    merged.insert(k, v);
                }
                None => {
                    merged.remove(&k);
                }
            }
        }
        merged.into_iter().take(limit).collect()
    }

    /// Returns every write, the newest of each key.
    pub fn into_writes(self) -> Writes {
        let mut writes = BTreeMap::new();
        for layer in self.layers {
            writes.extend(layer);
        }
        writes
    }
}
