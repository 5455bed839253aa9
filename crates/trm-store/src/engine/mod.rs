//! The storage engine interface: one ordered key space of bytes, read outside any
//! transaction (committed state) and written only in transactions. An engine is told
//! nothing about records; the repositories above it own every key layout. The interface is
//! what both engines can keep: sled (embedded, one writer per process) and PostgreSQL (a
//! table of keys and values, transactions with savepoints, the commit as the durable point).

pub mod sled;

use crate::Result;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An engine: the node's one ordered key space.
pub trait Engine: Send + Sync + 'static {
    /// Returns the committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Returns up to `limit` committed entries with keys in `start..end`, in key order.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>>;

    /// Starts a write transaction. The store runs one at a time (its single writer).
    fn begin(&self) -> Result<Box<dyn EngineTx + '_>>;

    /// Returns the files under the engine's folder that changed since they were last made
    /// durable (empty for an engine without local files); for tests of the durable point.
    fn unsynced_files(&self) -> Result<Vec<std::path::PathBuf>> {
        Ok(Vec::new())
    }

    /// Flushes whatever the engine buffers; called on shutdown.
    fn close(&self) -> Result<()>;
}

/// A write transaction: reads see its own writes; savepoints let one request of a group
/// fail without failing the others; `commit` returns only once everything it wrote is on
/// stable storage (the durable point).
pub trait EngineTx {
    /// Returns the value of `key` as this transaction sees it.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

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
