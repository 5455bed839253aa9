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

use crate::{
    audit::{AuditEntry, AuditHead, SignedHead, HEAD_TAG},
    keystore::KeyStore,
    Result, StoreError,
};

/// Key of the chain's head in the meta tree.
pub(crate) const AUDIT_HEAD: &[u8] = b"audit_head";
/// Key of the signed head in the meta tree.
pub(crate) const AUDIT_HEAD_SIGNED: &[u8] = b"audit_head_signed";

pub(crate) struct GroupCommit {
    db: sled::Db,
    meta: sled::Tree,
    audit: sled::Tree,
    file: File,
    keys: Arc<KeyStore>,
    /// Signs the audit head at each durable point, once the node's key is known.
    signer: std::sync::RwLock<Option<Arc<trm_crypto::signing::Signer>>>,
    /// Set when the chain was found rewritten behind the node's back: nothing is signed
    /// over it again.
    tampered: std::sync::atomic::AtomicBool,
    /// Tickets handed out to committed writers.
    issued: AtomicU64,
    /// Highest ticket known durable; the lock serialises flushes.
    durable: Mutex<u64>,
}

impl GroupCommit {
    pub(crate) fn new(
        db: sled::Db,
        meta: sled::Tree,
        audit: sled::Tree,
        dir: &Path,
        keys: Arc<KeyStore>,
    ) -> Result<Arc<Self>> {
        let file = File::open(dir.join("db"))?;
        // The directory entry of a new database must survive a power cut as well.
        File::open(dir)?.sync_all()?;
        Ok(Arc::new(Self {
            db,
            meta,
            audit,
            file,
            keys,
            signer: std::sync::RwLock::new(None),
            tampered: std::sync::atomic::AtomicBool::new(false),
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
        // Every transaction that took a ticket up to `upto` has committed: the head read now
        // covers them, and is signed in the same durable point.
        self.sign_head()?;
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

    /// Sets the key that signs the audit head from now on.
    pub(crate) fn set_signer(&self, signer: Arc<trm_crypto::signing::Signer>) {
        if let Ok(mut s) = self.signer.write() {
            *s = Some(signer);
        }
    }

    /// Stops signing the audit head for good (the chain was rewritten).
    pub(crate) fn mark_tampered(&self) {
        self.tampered.store(true, Ordering::SeqCst);
        tracing::error!(
            "the audit chain does not hold the head this node anchored: not signing over it"
        );
    }

    /// Returns the signed head stored in the database.
    pub(crate) fn signed_head(&self) -> Result<Option<SignedHead>> {
        match self.meta.get(AUDIT_HEAD_SIGNED)? {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|_| StoreError::Encode)?,
            )),
            None => Ok(None),
        }
    }

    /// Returns whether the chain holds `hash` at `seq`.
    pub(crate) fn chain_holds(&self, seq: u64, hash: &str) -> Result<bool> {
        if seq == 0 {
            return Ok(true);
        }
        Ok(self
            .audit
            .get(seq.to_be_bytes())?
            .and_then(|e| serde_json::from_slice::<AuditEntry>(&e).ok())
            .is_some_and(|e| e.hash == hash))
    }

    /// Signs the current head unless it is signed already. A head is signed only when the
    /// chain still holds, at the last signed sequence, the hash that was signed: the node
    /// never vouches for a history someone rewrote behind its back (VerifyAudit then reports
    /// the rewrite for good).
    fn sign_head(&self) -> Result<()> {
        let Some(signer) = self.signer.read().ok().and_then(|s| s.clone()) else {
            return Ok(());
        };
        if self.tampered.load(Ordering::SeqCst) {
            return Ok(());
        }
        let head: AuditHead = match self.meta.get(AUDIT_HEAD)? {
            Some(b) => serde_json::from_slice(&b).map_err(|_| StoreError::Encode)?,
            None => AuditHead::default(),
        };
        let key = signer.current();
        if let Some(b) = self.meta.get(AUDIT_HEAD_SIGNED)? {
            let s = serde_json::from_slice::<SignedHead>(&b).map_err(|_| StoreError::Encode)?;
            if s.seq == head.seq && s.hash == head.hash && s.key_id == key.key_id() {
                return Ok(());
            }
            if !self.chain_holds(s.seq, &s.hash)? || head.seq < s.seq {
                self.mark_tampered();
                return Ok(());
            }
        }
        let signature = key.sign(HEAD_TAG, &SignedHead::body(head.seq, &head.hash));
        let signed = SignedHead {
            seq: head.seq,
            hash: head.hash,
            key_id: key.key_id().to_owned(),
            signature: hex::encode(signature),
        };
        self.meta.insert(
            AUDIT_HEAD_SIGNED,
            serde_json::to_vec(&signed).map_err(|_| StoreError::Encode)?,
        )?;
        Ok(())
    }
}
