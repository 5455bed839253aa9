//! The durable point: the data-key store and sled, synced side by side. sled 0.34's `flush()` ends in `sync_file_range`, which survives a
//! process crash but not a power cut (the disk's write cache is not flushed). After the flush
//! the database file is `fdatasync`ed. Concurrent writers share one flush: each takes a
//! ticket after its commit; whoever holds the lock flushes for every ticket issued before it
//! started (group commit), so durability costs little under load.

use std::{
    fs::File,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use crate::{keystore::KeyStore, Result, StoreError};

pub(crate) struct GroupCommit {
    db: sled::Db,
    file: File,
    keys: Arc<KeyStore>,
    /// Tickets handed out to committed writers.
    issued: AtomicU64,
    /// Highest ticket known durable; the lock serialises flushes.
    durable: Mutex<u64>,
}

impl GroupCommit {
    pub(crate) fn new(db: sled::Db, dir: &Path, keys: Arc<KeyStore>) -> Result<Arc<Self>> {
        let file = File::open(dir.join("db"))?;
        // The directory entry of a new database must survive a power cut as well.
        File::open(dir)?.sync_all()?;
        Ok(Arc::new(Self {
            db,
            file,
            keys,
            issued: AtomicU64::new(0),
            durable: Mutex::new(0),
        }))
    }

    /// Blocks until every write committed before the call is on stable storage.
    pub(crate) fn sync(&self) -> Result<()> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut durable = self.durable.lock().map_err(|_| StoreError::Durability)?;
        if *durable >= ticket {
            return Ok(());
        }
        let upto = self.issued.load(Ordering::SeqCst);
        // The key store and sled are synced side by side: an acknowledgement waits for both,
        // so a crash in between loses only writes that nobody was told about.
        std::thread::scope(|scope| {
            let keys = scope.spawn(|| self.keys.sync());
            let data = self
                .db
                .flush()
                .map_err(StoreError::from)
                .and_then(|_| Ok(self.file.sync_data()?));
            let keys = keys.join().map_err(|_| StoreError::Durability)?;
            data.and(keys)
        })?;
        *durable = upto;
        Ok(())
    }
}
