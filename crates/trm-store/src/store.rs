//! The sled database of one node and its transactions.

use std::{path::Path, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};
use sled::{
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
    Transactional, Tree,
};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use trm_crypto::aead::SecretKey;

use crate::{
    audit::{self, AuditEntry, AuditHead, AuditRecord, AuditReport},
    durability::GroupCommit,
    error::{Result, StoreError, TxError, TxFail},
    keystore::{slot_id, KeyStore},
};

/// The trees of the database. Records in `Cases`, `Referrals`, `Returns`, `Hearings` are
/// sealed; the others hold ids, states and sealed blobs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeName {
    /// Audit head and other small node state.
    Meta,
    /// The generation of each subject's data key (shredding starts a new one).
    KeyGenerations,
    /// Key-store slots to overwrite, written in the shredding transaction and cleared once
    /// the slot is zeroed (a crash in between is finished at the next start).
    PendingShreds,
    Cases,
    Consents,
    Referrals,
    Returns,
    Hearings,
    /// Risk assessments per case (sealed under the case's key).
    RiskAssessments,
    /// The victim's return decisions per case (sealed under the case's key).
    ReturnDecisions,
    /// Pairwise case references, both ways.
    CaseRefs,
    /// Queued outbound envelopes, by peer and sequence.
    Outbox,
    DeadLetters,
    /// Receipts given for inbound message ids (idempotency).
    Inbox,
    /// Signed receipts received from peers (proof of delivery).
    Receipts,
    Audit,
}

impl TreeName {
    const ALL: [TreeName; 16] = [
        TreeName::Meta,
        TreeName::KeyGenerations,
        TreeName::PendingShreds,
        TreeName::Cases,
        TreeName::Consents,
        TreeName::Referrals,
        TreeName::Returns,
        TreeName::Hearings,
        TreeName::RiskAssessments,
        TreeName::ReturnDecisions,
        TreeName::CaseRefs,
        TreeName::Outbox,
        TreeName::DeadLetters,
        TreeName::Inbox,
        TreeName::Receipts,
        TreeName::Audit,
    ];

    /// Returns the tree's name on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            TreeName::Meta => "meta",
            TreeName::KeyGenerations => "key_generations",
            TreeName::PendingShreds => "pending_shreds",
            TreeName::Cases => "cases",
            TreeName::Consents => "consents",
            TreeName::Referrals => "referrals",
            TreeName::Returns => "returns",
            TreeName::Hearings => "hearings",
            TreeName::RiskAssessments => "risk_assessments",
            TreeName::ReturnDecisions => "return_decisions",
            TreeName::CaseRefs => "case_refs",
            TreeName::Outbox => "outbox",
            TreeName::DeadLetters => "dead_letters",
            TreeName::Inbox => "inbox",
            TreeName::Receipts => "receipts",
            TreeName::Audit => "audit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Returns the kind of data-key subject the sealed records of this tree belong to: a
    /// case's risk assessments and return decisions share the case's key; a referral, a
    /// return plan and a hearing each have their own.
    fn subject_kind(self) -> &'static str {
        match self {
            TreeName::Cases | TreeName::RiskAssessments | TreeName::ReturnDecisions => "case",
            TreeName::Referrals => "referral",
            TreeName::Returns => "return",
            TreeName::Hearings => "hearing",
            other => other.as_str(),
        }
    }
}

/// Whose data key seals something: a kind of record and its key. Subjects are namespaced
/// per kind, so an id chosen by a peer for one kind of record can never name the key of a
/// record of another kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(Vec<u8>);

impl Subject {
    /// Returns the subject of the record `key` of `tree`.
    pub fn of(tree: TreeName, key: &[u8]) -> Self {
        Self::named(tree.subject_kind(), key)
    }

    /// Returns the subject `key` of kind `kind` (for what is not a record of a tree, such as
    /// the node's own key announcements).
    pub fn named(kind: &str, key: &[u8]) -> Self {
        let mut bytes = kind.as_bytes().to_vec();
        bytes.push(b'/');
        bytes.extend_from_slice(key);
        Self(bytes)
    }

    /// Returns the subject's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the subject of bytes written by [`Subject::as_bytes`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// Length of the key generation that prefixes sealed bytes.
const GEN_LEN: usize = 4;

/// Splits sealed bytes into the key generation that sealed them and the ciphertext.
fn split_generation(sealed: &[u8]) -> Option<(u32, &[u8])> {
    let (gen, rest) = sealed.split_at_checked(GEN_LEN)?;
    Some((u32::from_be_bytes(gen.try_into().ok()?), rest))
}

use crate::durability::{AUDIT_HEAD, AUDIT_HEAD_SIGNED};

/// One node's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// A copy of the signed audit head outside the database (beside the key store), so that
    /// deleting the signed head from the database does not let a rewritten chain be signed.
    anchor: std::path::PathBuf,
    trees: Vec<Tree>,
    master: SecretKey,
    keys: Arc<KeyStore>,
    commit: Arc<GroupCommit>,
}

/// Marks, in the meta tree, that this database's keys live in a key store: opening it
/// later without that file is refused instead of silently starting an empty one.
const KEY_STORE_IN_USE: &[u8] = b"key_store_in_use";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn aad(tree: TreeName, key: &[u8]) -> Vec<u8> {
    let mut a = tree.as_str().as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(key);
    a
}

fn decode<T: DeserializeOwned>(tree: TreeName, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Decode {
        tree: tree.as_str(),
        key: String::from_utf8_lossy(key).into_owned(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| StoreError::Encode)
}

impl Store {
    /// Opens (or creates) the database in `dir`, its data keys in `key_store` (a file kept
    /// outside `dir`), wrapped by the node's master key. Shreds left unfinished by a crash
    /// are finished now.
    pub fn open(dir: &Path, key_store: &Path, master: SecretKey) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new().path(dir).open()?;
        let trees = TreeName::ALL
            .iter()
            .map(|t| db.open_tree(t.as_str()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let meta = &trees[TreeName::Meta.index()];
        if !key_store.is_file() && meta.get(KEY_STORE_IN_USE)?.is_some() {
            return Err(StoreError::KeyStoreMissing(key_store.display().to_string()));
        }
        let keys = Arc::new(KeyStore::open(key_store)?);
        meta.insert(KEY_STORE_IN_USE, &b"1"[..])?;
        let pending = &trees[TreeName::PendingShreds.index()];
        for item in pending.iter() {
            let (id, _) = item?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_ref()) {
                keys.erase(&id)?;
            }
            pending.remove(id)?;
        }
        let commit = GroupCommit::new(
            db.clone(),
            trees[TreeName::Meta.index()].clone(),
            trees[TreeName::Audit.index()].clone(),
            dir,
            keys.clone(),
        )?;
        commit.sync()?;
        Ok(Self {
            inner: Arc::new(Inner {
                anchor: key_store.with_extension("audit-anchor"),
                db,
                trees,
                master,
                keys,
                commit,
            }),
        })
    }

    fn tree(&self, t: TreeName) -> &Tree {
        &self.inner.trees[t.index()]
    }

    /// Runs `f` as one atomic transaction over every tree. `f` may run more than once (sled
    /// retries on conflict), so it must not have effects outside the transaction. An `Abort`
    /// writes nothing and is returned as `Err(TxFail::Abort)`.
    pub fn transact<R, E, F>(&self, f: F) -> std::result::Result<R, TxFail<E>>
    where
        F: Fn(&Tx<'_>) -> std::result::Result<R, TxFail<E>>,
    {
        self.transact_noting(f).map(|(r, _)| r)
    }

    /// Same as [`Store::transact`], also returning what the committed attempt asked to be
    /// told after the commit ([`Tx::notify_after_commit`]), without duplicates.
    pub fn transact_noting<R, E, F>(&self, f: F) -> std::result::Result<(R, Vec<String>), TxFail<E>>
    where
        F: Fn(&Tx<'_>) -> std::result::Result<R, TxFail<E>>,
    {
        let trees: &[Tree] = &self.inner.trees;
        let shreds = std::cell::RefCell::new(Vec::new());
        let notes = std::cell::RefCell::new(Vec::new());
        let result = trees.transaction(|view: &Vec<TransactionalTree>| {
            shreds.borrow_mut().clear();
            notes.borrow_mut().clear();
            let tx = Tx {
                view,
                master: &self.inner.master,
                keys: &self.inner.keys,
                shreds: &shreds,
                notes: &notes,
            };
            match f(&tx) {
                Ok(r) => Ok(r),
                Err(TxFail::Tx(TxError::Conflict)) => Err(ConflictableTransactionError::Conflict),
                Err(TxFail::Tx(TxError::Store(StoreError::Sled(e)))) => {
                    Err(ConflictableTransactionError::Storage(e))
                }
                Err(other) => Err(ConflictableTransactionError::Abort(other)),
            }
        });
        match result {
            Ok(r) => {
                // Committed: now the shredded keys' slots are overwritten for good. The
                // transaction stands either way; a slot not erased now stays listed in
                // pending_shreds and is erased at the next start.
                for id in shreds.take() {
                    let erased = self.inner.keys.erase(&id).and_then(|()| {
                        Ok(self.tree(TreeName::PendingShreds).remove(id).map(|_| ())?)
                    });
                    if let Err(e) = erased {
                        tracing::error!(error = %e, "cannot erase a shredded key now; finished at the next start");
                    }
                }
                Ok((r, notes.take()))
            }
            Err(TransactionError::Abort(fail)) => Err(fail),
            Err(TransactionError::Storage(e)) => Err(TxFail::Tx(TxError::Store(e.into()))),
        }
    }

    /// Waits until every write committed so far is on stable storage. Acknowledge a client or
    /// a peer only after this returns.
    pub async fn durable(&self) -> Result<()> {
        let commit = self.inner.commit.clone();
        tokio::task::spawn_blocking(move || commit.sync())
            .await
            .map_err(|_| StoreError::Durability)?
    }

    /// Same as [`Store::durable`], for callers outside an async runtime.
    pub fn durable_blocking(&self) -> Result<()> {
        self.inner.commit.sync()
    }

    /// Reads a sealed record (its subject is its tree's kind and its key); `None` when
    /// absent or shredded.
    pub fn get_sealed<T: DeserializeOwned>(&self, tree: TreeName, key: &[u8]) -> Result<Option<T>> {
        let Some(sealed) = self.tree(tree).get(key)? else {
            return Ok(None);
        };
        match self.open_for(&Subject::of(tree, key), &aad(tree, key), &sealed)? {
            Some(plain) => decode(tree, key, &plain).map(Some),
            None => Ok(None),
        }
    }

    /// Reads every sealed record of a tree whose key starts with `prefix`.
    pub fn scan_sealed<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        prefix: &[u8],
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for item in self.tree(tree).scan_prefix(prefix) {
            let (key, _) = item?;
            if let Some(v) = self.get_sealed(tree, &key)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Reads a clear record (no personal data).
    pub fn get_json<T: DeserializeOwned>(&self, tree: TreeName, key: &[u8]) -> Result<Option<T>> {
        match self.tree(tree).get(key)? {
            Some(bytes) => decode(tree, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reads every clear record of a tree whose key starts with `prefix`, with its key.
    pub fn scan_json<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>> {
        self.scan_json_first(tree, prefix, usize::MAX)
    }

    /// Reads at most `limit` clear records whose key starts with `prefix`, in key order.
    pub fn scan_json_first<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        self.tree(tree)
            .scan_prefix(prefix)
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), decode(tree, &k, &v)?))
            })
            .collect()
    }

    /// Returns whether the database answers (a read of the meta tree), for readiness probes.
    pub fn is_readable(&self) -> bool {
        self.tree(TreeName::Meta).get(AUDIT_HEAD).is_ok()
    }

    /// Returns the number of records in a tree whose key starts with `prefix`.
    pub fn count(&self, tree: TreeName, prefix: &[u8]) -> usize {
        self.tree(tree).scan_prefix(prefix).count()
    }

    /// Opens bytes sealed with [`Tx::seal_for`] under the key generation that sealed them;
    /// `None` when that key was shredded (erased), whatever was sealed later.
    pub fn open_for(
        &self,
        subject: &Subject,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let Some((generation, ciphertext)) = split_generation(sealed) else {
            return Err(StoreError::Crypto(trm_crypto::CryptoError::Unseal));
        };
        let id = slot_id(subject.as_bytes(), generation);
        match self.inner.keys.get(&id)? {
            Some(wrapped) => {
                let dk = self.inner.master.unwrap_key(&id, &wrapped)?;
                Ok(Some(dk.open(aad, ciphertext)?))
            }
            None => Ok(None),
        }
    }

    /// Verifies the audit chain: any modified, reordered or removed entry is detected. The
    /// report carries the signed head and the hash the chain now holds at its sequence, for
    /// the caller to check the signature with the node's keys.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        let head: AuditHead = self
            .get_json(TreeName::Meta, AUDIT_HEAD)?
            .unwrap_or_default();
        let entries = self
            .tree(TreeName::Audit)
            .iter()
            .map(|item| item.ok().and_then(|(_, v)| serde_json::from_slice(&v).ok()));
        let mut report = audit::verify(entries, &head);
        report.signed = self.get_json(TreeName::Meta, AUDIT_HEAD_SIGNED)?;
        if let Some(anchor) = self.read_anchor()? {
            let holds = self.inner.commit.chain_holds(anchor.seq, &anchor.hash)?
                && report.signed.as_ref().is_some_and(|s| s.seq >= anchor.seq);
            if !holds && report.ok {
                report.ok = false;
                report.first_bad_entry = anchor.seq.max(1);
            }
        }
        if let Some(s) = &report.signed {
            report.hash_at_signed = self
                .get_json::<AuditEntry>(TreeName::Audit, &s.seq.to_be_bytes())?
                .map(|e| e.hash);
        }
        Ok(report)
    }

    /// Returns up to `limit` audit entries after sequence `after`, in order.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let start = (after + 1).to_be_bytes();
        self.tree(TreeName::Audit)
            .range(start..)
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                decode(TreeName::Audit, &k, &v)
            })
            .collect()
    }

    /// Signs the audit head with `signer`'s key at every durable point from now on (and
    /// now) — unless the chain no longer holds what the node anchored outside the database,
    /// in which case nothing is signed over it again and [`Store::verify_audit`] reports it.
    pub fn sign_audit_head_with(&self, signer: Arc<trm_crypto::signing::Signer>) -> Result<()> {
        if let Some(anchor) = self.read_anchor()? {
            let signed = self.inner.commit.signed_head()?;
            let consistent = signed.is_some_and(|s| s.seq >= anchor.seq)
                && self.inner.commit.chain_holds(anchor.seq, &anchor.hash)?;
            if !consistent {
                self.inner.commit.mark_tampered();
            }
        }
        self.inner.commit.set_signer(signer);
        self.inner.commit.sync()?;
        self.anchor_audit_head()
    }

    /// Copies the signed audit head to its anchor outside the database (written whole and
    /// synced). Run periodically and at shutdown; the anchor may lag the signed head.
    pub fn anchor_audit_head(&self) -> Result<()> {
        let Some(signed) = self.inner.commit.signed_head()? else {
            return Ok(());
        };
        if self.read_anchor()?.as_ref() == Some(&signed) {
            return Ok(());
        }
        let tmp = self.inner.anchor.with_extension("audit-anchor.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode(&signed)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.inner.anchor)?;
        if let Some(dir) = self.inner.anchor.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn read_anchor(&self) -> Result<Option<audit::SignedHead>> {
        match std::fs::read(&self.inner.anchor) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|_| {
                StoreError::Decode {
                    tree: "anchor",
                    key: "audit".into(),
                }
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends one audit entry in its own transaction and makes it durable.
    pub async fn audit(&self, record: AuditRecord) -> Result<()> {
        self.transact::<(), (), _>(|tx| tx.audit(record.clone()))
            .map_err(|e| match e {
                TxFail::Tx(TxError::Store(e)) => e,
                _ => StoreError::Durability,
            })?;
        self.durable().await
    }

    /// Raw access for tests and backups: the underlying tree.
    pub fn raw_tree(&self, tree: TreeName) -> &Tree {
        self.tree(tree)
    }

    /// Flushes and syncs, and anchors the signed audit head; call on shutdown.
    pub fn close(&self) -> Result<()> {
        self.inner.commit.sync()?;
        self.inner.db.flush()?;
        self.anchor_audit_head()
    }
}

/// A view of every tree inside one transaction.
pub struct Tx<'a> {
    view: &'a Vec<TransactionalTree>,
    master: &'a SecretKey,
    keys: &'a KeyStore,
    /// Key-store slots to overwrite once this transaction has committed.
    shreds: &'a std::cell::RefCell<Vec<[u8; 32]>>,
    /// What the caller wants to be told once this transaction has committed.
    notes: &'a std::cell::RefCell<Vec<String>>,
}

impl Tx<'_> {
    fn tree(&self, t: TreeName) -> &TransactionalTree {
        &self.view[t.index()]
    }

    fn generation(&self, subject: &[u8]) -> std::result::Result<u32, TxError> {
        Ok(self
            .get_json::<u32>(TreeName::KeyGenerations, subject)?
            .unwrap_or(0))
    }

    fn data_key(
        &self,
        subject: &[u8],
        generation: u32,
        create: bool,
    ) -> std::result::Result<Option<SecretKey>, TxError> {
        let id = slot_id(subject, generation);
        if let Some(wrapped) = self.keys.get(&id)? {
            return Ok(Some(
                self.master
                    .unwrap_key(&id, &wrapped)
                    .map_err(StoreError::from)?,
            ));
        }
        if !create {
            return Ok(None);
        }
        // Written before the commit (an aborted transaction leaves an unused slot), made
        // durable with the transaction by the next durable point.
        let dk = SecretKey::generate();
        let wrapped = self.master.wrap(&id, &dk).map_err(StoreError::from)?;
        self.keys.put(&id, &wrapped)?;
        Ok(Some(dk))
    }

    /// Writes a record sealed under its subject's key (its tree's kind and its key),
    /// creating the key on first use.
    pub fn put_sealed<T: Serialize>(
        &self,
        tree: TreeName,
        key: &[u8],
        value: &T,
    ) -> std::result::Result<(), TxError> {
        let sealed = self.seal_for(&Subject::of(tree, key), &aad(tree, key), &encode(value)?)?;
        self.tree(tree).insert(key, sealed)?;
        Ok(())
    }

    /// Reads a sealed record inside the transaction; `None` when absent or shredded.
    pub fn get_sealed<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        key: &[u8],
    ) -> std::result::Result<Option<T>, TxError> {
        let Some(sealed) = self.tree(tree).get(key)? else {
            return Ok(None);
        };
        let Some((generation, ciphertext)) = split_generation(&sealed) else {
            return Err(StoreError::Crypto(trm_crypto::CryptoError::Unseal).into());
        };
        let subject = Subject::of(tree, key);
        let Some(dk) = self.data_key(subject.as_bytes(), generation, false)? else {
            return Ok(None);
        };
        let plain = dk
            .open(&aad(tree, key), ciphertext)
            .map_err(StoreError::from)?;
        Ok(Some(decode(tree, key, &plain)?))
    }

    /// Returns whether `tree` holds a record under `key`.
    pub fn exists(&self, tree: TreeName, key: &[u8]) -> std::result::Result<bool, TxError> {
        Ok(self.tree(tree).get(key)?.is_some())
    }

    /// Seals bytes under `subject`'s current data key (created on first use); the sealed
    /// bytes name the key generation, so a later shred makes them unreadable for good.
    pub fn seal_for(
        &self,
        subject: &Subject,
        aad: &[u8],
        plain: &[u8],
    ) -> std::result::Result<Vec<u8>, TxError> {
        let generation = self.generation(subject.as_bytes())?;
        let dk = self
            .data_key(subject.as_bytes(), generation, true)?
            .ok_or(TxError::Conflict)?;
        let mut out = generation.to_be_bytes().to_vec();
        out.extend(dk.seal(aad, plain).map_err(StoreError::from)?);
        Ok(out)
    }

    /// Asks to be told `note` once this transaction has committed (for instance which peer
    /// now has an envelope queued). Returned by [`Store::transact_noting`].
    pub fn notify_after_commit(&self, note: &str) {
        let mut notes = self.notes.borrow_mut();
        if !notes.iter().any(|n| n == note) {
            notes.push(note.to_owned());
        }
    }

    /// Destroys `subject`'s data key: what was sealed under it can never be opened again,
    /// from this database or from any copy of it. A record written under `subject` later in
    /// the same transaction gets a new key.
    pub fn shred(&self, subject: &Subject) -> std::result::Result<(), TxError> {
        let subject = subject.as_bytes();
        let generation = self.generation(subject)?;
        let id = slot_id(subject, generation);
        self.put_json(TreeName::KeyGenerations, subject, &(generation + 1))?;
        self.tree(TreeName::PendingShreds)
            .insert(&id[..], &b""[..])?;
        self.shreds.borrow_mut().push(id);
        Ok(())
    }

    /// Writes a clear record (no personal data).
    pub fn put_json<T: Serialize>(
        &self,
        tree: TreeName,
        key: &[u8],
        value: &T,
    ) -> std::result::Result<(), TxError> {
        self.tree(tree).insert(key, encode(value)?)?;
        Ok(())
    }

    /// Reads a clear record.
    pub fn get_json<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        key: &[u8],
    ) -> std::result::Result<Option<T>, TxError> {
        match self.tree(tree).get(key)? {
            Some(bytes) => Ok(Some(decode(tree, key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes a record.
    pub fn remove(&self, tree: TreeName, key: &[u8]) -> std::result::Result<(), TxError> {
        self.tree(tree).remove(key)?;
        Ok(())
    }

    /// Returns a fresh, strictly increasing id (for queue ordering).
    pub fn next_id(&self) -> std::result::Result<u64, TxError> {
        Ok(self
            .tree(TreeName::Meta)
            .generate_id()
            .map_err(StoreError::from)?)
    }

    /// Appends an entry to the audit chain, in this transaction.
    pub fn audit<E>(&self, record: AuditRecord) -> std::result::Result<(), TxFail<E>> {
        let head: AuditHead = self
            .get_json(TreeName::Meta, AUDIT_HEAD)?
            .unwrap_or_default();
        let seq = head.seq + 1;
        let at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let entry = AuditEntry::chain(seq, at, record, head.hash);
        self.put_json(TreeName::Audit, &seq.to_be_bytes(), &entry)?;
        self.put_json(
            TreeName::Meta,
            AUDIT_HEAD,
            &AuditHead {
                seq,
                hash: entry.hash.clone(),
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            &dir.path().join("keys.store"),
            SecretKey::generate(),
        )
        .unwrap();
        (dir, store)
    }

    fn put(store: &Store, key: &[u8], name: &str) {
        store
            .transact::<(), (), _>(|tx| {
                tx.put_sealed(TreeName::Cases, key, &Rec { name: name.into() })?;
                tx.audit(AuditRecord::new("test", "put", "k", "ok"))
            })
            .unwrap();
        store.durable_blocking().unwrap();
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        walk(dir).into_iter().any(|p| {
            std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn sealed_records_are_never_on_disk_in_clear_and_shred_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keys, master) = (
            dir.path().join("db"),
            dir.path().join("keys.store"),
            SecretKey::generate(),
        );
        let store = Store::open(&db, &keys, master.clone()).unwrap();
        put(&store, b"case-1", "Zorica Unique-Name");
        assert_eq!(
            store.get_sealed::<Rec>(TreeName::Cases, b"case-1").unwrap(),
            Some(Rec {
                name: "Zorica Unique-Name".into()
            })
        );
        store.close().unwrap();
        assert!(!files_contain(dir.path(), b"Zorica Unique-Name"));
        // A backup of the database folder, taken before the erasure.
        let backup = dir.path().join("backup");
        copy_dir(&db, &backup);

        // Shred, and in the same transaction write a tombstone under the same subject.
        store
            .transact::<(), (), _>(|tx| {
                tx.shred(&Subject::of(TreeName::Cases, b"case-1"))?;
                tx.put_sealed(
                    TreeName::Cases,
                    b"case-1",
                    &Rec {
                        name: "tombstone".into(),
                    },
                )?;
                Ok(())
            })
            .unwrap();
        store.durable_blocking().unwrap();
        assert_eq!(
            store.get_sealed::<Rec>(TreeName::Cases, b"case-1").unwrap(),
            Some(Rec {
                name: "tombstone".into()
            }),
            "a record written after the shred gets a new key"
        );
        drop(store);

        // The backup, with the master key and the current key store, opens nothing.
        let restored = Store::open(&backup, &keys, master).unwrap();
        assert_eq!(
            restored
                .get_sealed::<Rec>(TreeName::Cases, b"case-1")
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_database_without_its_key_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::generate();
        {
            let store = Store::open(
                &dir.path().join("db"),
                &dir.path().join("keys.store"),
                master.clone(),
            )
            .unwrap();
            put(&store, b"c", "n");
        }
        std::fs::remove_file(dir.path().join("keys.store")).unwrap();
        let err = Store::open(
            &dir.path().join("db"),
            &dir.path().join("keys.store"),
            master,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::KeyStoreMissing(_)), "{err}");
    }

    #[test]
    fn an_aborted_transaction_writes_nothing() {
        let (_dir, store) = open();
        let r = store.transact::<(), &str, _>(|tx| {
            tx.put_sealed(TreeName::Cases, b"x", &Rec { name: "n".into() })?;
            tx.audit(AuditRecord::new("test", "put", "x", "ok"))?;
            Err(TxFail::Abort("refused"))
        });
        assert!(matches!(r, Err(TxFail::Abort("refused"))));
        assert_eq!(
            store.get_sealed::<Rec>(TreeName::Cases, b"x").unwrap(),
            None
        );
        assert_eq!(store.count(TreeName::Audit, b""), 0);
    }

    #[test]
    fn audit_chain_detects_modification_reordering_and_removal() {
        let (_dir, store) = open();
        for i in 0..4u8 {
            put(&store, &[b'k', i], "n");
        }
        let report = store.verify_audit().unwrap();
        assert_eq!((report.ok, report.entries_checked), (true, 4));

        let audit = store.raw_tree(TreeName::Audit);
        let original: Vec<_> = audit.iter().map(|r| r.unwrap()).collect();
        let restore = || {
            audit.clear().unwrap();
            for (k, v) in &original {
                audit.insert(k, v.clone()).unwrap();
            }
        };

        // Modified: change the outcome of entry 2.
        let mut e: AuditEntry = serde_json::from_slice(&original[1].1).unwrap();
        e.record.outcome = "refused".into();
        audit
            .insert(&original[1].0, serde_json::to_vec(&e).unwrap())
            .unwrap();
        let r = store.verify_audit().unwrap();
        assert_eq!((r.ok, r.first_bad_entry), (false, 2));
        restore();

        // Reordered: swap entries 2 and 3.
        audit.insert(&original[1].0, original[2].1.clone()).unwrap();
        audit.insert(&original[2].0, original[1].1.clone()).unwrap();
        assert!(!store.verify_audit().unwrap().ok);
        restore();

        // Removed: the middle, then the tail.
        audit.remove(&original[2].0).unwrap();
        assert_eq!(store.verify_audit().unwrap().first_bad_entry, 3);
        restore();
        audit.remove(&original[3].0).unwrap();
        assert!(!store.verify_audit().unwrap().ok);
        restore();
        assert!(store.verify_audit().unwrap().ok);
    }

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::generate();
        {
            let store = Store::open(
                &dir.path().join("db"),
                &dir.path().join("keys.store"),
                master.clone(),
            )
            .unwrap();
            put(&store, b"c", "name");
        }
        let store = Store::open(
            &dir.path().join("db"),
            &dir.path().join("keys.store"),
            master,
        )
        .unwrap();
        assert!(store
            .get_sealed::<Rec>(TreeName::Cases, b"c")
            .unwrap()
            .is_some());
        assert!(store.verify_audit().unwrap().ok);
    }
}
