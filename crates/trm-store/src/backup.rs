//! Backups of a running store, and restores into a stopped one that never undo what
//! happened since (DESIGN "Storage engines, erasure and backups").
//!
//! A backup is a folder: `store.kv` (every record as the store holds it: sealed records stay
//! sealed) and `manifest.json` (the node, the time, the backup's key id and expiry, each
//! file's size and SHA-256). It holds no key that opens a record: its data keys are wrapped
//! under a key of this backup alone, which the node's key file keeps until the backup
//! expires (`[storage] backup_retention_days`) and then destroys. Never a KEK, never the
//! master key. A backup alone, or with the master key, opens nothing; restored without the
//! node's key file it is refused, naming the file; once expired it opens for no one, while
//! the live KEK goes on rotating daily. It is taken as one job of the writer, so no write
//! lands half in it. Files are owner-only.
//!
//! A restore replaces the store of a stopped node (refused while any process of the node
//! holds it, whatever the flags), re-wraps the backup's data keys under the live KEK, then
//! re-applies the journal beside the key file (see [`crate::journal`]): erasures,
//! revocations, peer directory changes, ended key windows and published statistics. It
//! writes an audit entry naming who restored which backup and what was re-applied, in the
//! restored chain.

use std::{
    io::{BufWriter, Read, Write},
    path::Path,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::ids::Shared;

use crate::{
    audit::AuditRecord,
    engine::postgres,
    journal::{self, merge, Journal, JournalCounts},
    keys::{decode_wrapped, encode_wrapped, BackupKey, KeyRing},
    repo::{
        directory::{DirectoryChanges, LearnedKeys, OwnKey, Revoked},
        layout,
    },
    tx::{decode, verify_row},
    EngineOptions, Result, Store, StoreError, StoreOptions, TxFail,
};

/// The format name in a backup's manifest.
pub const FORMAT: &str = "trm-backup/2";
/// The format of earlier versions, which carried a copy of the key file.
const FORMAT_V1: &str = "trm-backup/1";
const STORE_FILE: &str = "store.kv";
const MANIFEST: &str = "manifest.json";
/// The epoch that marks a data key wrapped under the backup's own key.
const BACKUP_EPOCH: u64 = u64::MAX;

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub node: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The id of the backup's key in the node's key file.
    #[serde(default)]
    pub backup_key: String,
    /// When the backup's key is destroyed: it opens for no one after.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    pub records: u64,
    pub files: Vec<FileDigest>,
    /// The MAC of the manifest (without this field) under the backup's own key, hex: only
    /// the node that took the backup can write it, so a restore refuses a backup whose
    /// files were altered and digested again. Empty in backups of earlier versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl Manifest {
    /// Total bytes of the backup's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// The bytes its MAC is over: the manifest without it.
    fn unsealed(&self) -> Result<Vec<u8>> {
        let bare = Manifest {
            mac: String::new(),
            ..self.clone()
        };
        serde_json::to_vec(&bare).map_err(|_| StoreError::Encode)
    }
}

fn digest(dir: &Path, name: &str) -> Result<FileDigest> {
    let mut f = std::fs::File::open(dir.join(name))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(FileDigest {
        name: name.to_owned(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(trm_crypto::sha256(&bytes)),
    })
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(bytes)
}

fn read_frame(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut b)?;
    Ok(Some(b))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Whether `key` is a lease row (not kept in a backup: a restored node takes its own).
fn is_lease(key: &[u8]) -> bool {
    key.starts_with(&layout::meta("lease/"))
}

/// Writes every record into `target`, each data key re-wrapped under the backup's key;
/// runs as one writer job, so nothing else is written while it runs.
pub(crate) fn dump(tx: &mut crate::Tx<'_>, target: &Path, key: &BackupKey) -> Result<u64> {
    // The folder was empty when the backup began: a file here is this job's own, from a run
    // the writer started again (a PostgreSQL conflict), and is written anew.
    let path = target.join(STORE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let file = journal::create_private_file(&path)?;
    let mut out = BufWriter::new(file);
    let mut records = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = tx.scan_raw(b"", after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in page {
            if is_lease(&k) {
                continue;
            }
            let v = if k.starts_with(layout::DATA_KEYS) {
                let dk = tx.keys.unwrap(&k, &v)?;
                encode_wrapped(BACKUP_EPOCH, &key.wrap(&k, &dk)?)
            } else {
                v
            };
            write_frame(&mut out, &k)?;
            write_frame(&mut out, &v)?;
            records += 1;
        }
    }
    let f = out
        .into_inner()
        .map_err(|e| StoreError::Io(e.into_error()))?;
    f.sync_all()?;
    Ok(records)
}

impl Store {
    /// Writes a consistent backup of the running store into `dir` (created owner-only; it
    /// must not exist or be empty), restorable with the node's key file for `retention`.
    /// Returns its manifest.
    pub async fn backup(&self, dir: &Path, retention: time::Duration) -> Result<Manifest> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is not empty", dir.display()),
            )));
        }
        journal::create_private_dir(dir)?;
        // Kept in the key file (durably) before any data key is wrapped under it.
        let key = self
            .keys()
            .new_backup_key(OffsetDateTime::now_utc() + retention)?;
        let (target, k) = (dir.to_path_buf(), key.clone());
        let records = self
            .commit::<u64, (), _>(move |tx| Ok(dump(tx, &target, &k)?))
            .await
            .map_err(TxFail::into_store)?
            .value;
        let mut manifest = Manifest {
            format: FORMAT.to_owned(),
            node: self.node().to_string(),
            created_at: key.created_at,
            backup_key: key.id.clone(),
            expires_at: Some(key.expires_at),
            records,
            files: vec![digest(dir, STORE_FILE)?],
            mac: String::new(),
        };
        manifest.mac = hex::encode(key.mac(&manifest.unsealed()?));
        let text = serde_json::to_vec_pretty(&manifest).map_err(|_| StoreError::Encode)?;
        let mut f = journal::create_private_file(&dir.join(MANIFEST))?;
        f.write_all(&text)?;
        f.sync_all()?;
        sync_dir(dir)?;
        Ok(manifest)
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub manifest: Manifest,
    /// What the journal re-applied.
    pub reapplied: JournalCounts,
}

/// Why a restore refused, in words an operator can act on.
fn refused(why: String) -> StoreError {
    StoreError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why))
}

/// Reads and checks a backup's manifest and every file's digest.
pub fn check(from: &Path) -> Result<Manifest> {
    let text = std::fs::read(from.join(MANIFEST))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|_| StoreError::Decode("backup manifest"))?;
    if manifest.format == FORMAT_V1 {
        return Err(refused(format!(
            "{} was taken by an earlier version, which copied the key file into the backup: \
             it is not restored (delete it, and take a new backup)",
            from.display()
        )));
    }
    if manifest.format != FORMAT {
        return Err(StoreError::Corrupt("backup format"));
    }
    for f in &manifest.files {
        if digest(from, &f.name)? != *f {
            return Err(StoreError::Corrupt(
                "a backup file does not match its manifest digest",
            ));
        }
    }
    Ok(manifest)
}

/// Holds the store of a stopped node while it is restored: refused when a process of the
/// node holds it (sled's own lock on its files; on PostgreSQL, the lock every replica
/// holds in the database).
enum Held {
    Sled { _db: Option<std::fs::File> },
    Postgres { _lock: postgres::NodeLock },
}

fn hold_stopped(options: &StoreOptions) -> Result<Held> {
    let running = || {
        refused(format!(
            "node {} is running (it holds its store): stop every process of the node first; \
             a restore never replaces the store under a running node",
            options.node
        ))
    };
    match &options.engine {
        EngineOptions::Sled(_) => {
            let db = options.data_dir.join("db");
            let file = match std::fs::File::open(&db) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Held::Sled { _db: None })
                }
                Err(e) => return Err(e.into()),
            };
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Ok(Held::Sled { _db: Some(file) }),
                Err(rustix::io::Errno::WOULDBLOCK) => Err(running()),
                Err(e) => Err(std::io::Error::from(e).into()),
            }
        }
        EngineOptions::Postgres(pg) => match postgres::NodeLock::try_exclusive(pg)? {
            Some(lock) => Ok(Held::Postgres { _lock: lock }),
            None => Err(running()),
        },
    }
}

/// Restores the backup in `from` into the stopped node of `options` (see the module's
/// documentation); `who` names the person restoring, for the audit. The store is replaced
/// only with `force` when the node holds data.
pub fn restore(options: StoreOptions, from: &Path, force: bool, who: &str) -> Result<Restored> {
    let manifest = check(from)?;
    if manifest.node != options.node.to_string() {
        return Err(refused(format!(
            "the backup is of node {}, not {}",
            manifest.node, options.node
        )));
    }
    let held = hold_stopped(&options)?;
    let backup_key = unlock_backup(&options, &manifest)?;
    let tag = hex::decode(&manifest.mac).unwrap_or_default();
    if backup_key.verify_mac(&manifest.unsealed()?, &tag) == Some(false) {
        return Err(refused(format!(
            "the manifest of {} is not the one this node wrote (its MAC does not verify): the \
             backup was altered, and it is not restored",
            from.display()
        )));
    }
    let holds_data = may_replace(&options, force)?;
    let journal = Journal::read(&options.key_store)?;
    if holds_data {
        match &options.engine {
            EngineOptions::Sled(_) => std::fs::remove_dir_all(&options.data_dir)?,
            EngineOptions::Postgres(pg) => postgres::drop_schema(pg)?,
        }
    }
    // The sled lock was on the files just removed; the new store takes its own.
    let held = match held {
        Held::Sled { .. } => None,
        other => Some(other),
    };
    let anchor = options.key_store.with_extension("audit-anchor");
    if anchor.exists() {
        // Rewritten from the restored chain when the store closes.
        std::fs::remove_file(&anchor)?;
    }
    let store = Store::open(options)?;
    import(&store, from, &backup_key)?;
    let reapplied = reapply(&store, &journal)?;
    audit_restore(&store, &manifest, &reapplied, who)?;
    store.close()?;
    drop(held);
    Ok(Restored {
        manifest,
        reapplied,
    })
}

/// Returns the backup's own key from the node's key file: refused, naming the file, when
/// the key file is missing, is not the node's that took the backup, or the backup expired
/// (its key destroyed).
fn unlock_backup(options: &StoreOptions, manifest: &Manifest) -> Result<BackupKey> {
    if !options.key_store.is_file() {
        return Err(refused(format!(
            "a restore needs the node's key file {} (and its journal {} beside it): the backup \
             holds no key. Copy them back from where they are kept apart from backups",
            options.key_store.display(),
            journal::path(&options.key_store).display()
        )));
    }
    let ring = KeyRing::open(&options.key_store, options.master.clone(), false)?;
    let Some(backup_key) = ring.backup_key(&manifest.backup_key)? else {
        let when = manifest
            .expires_at
            .filter(|e| *e <= OffsetDateTime::now_utc())
            .map(|e| format!("it expired on {e} and its key was destroyed: it opens for no one"))
            .unwrap_or_else(|| {
                format!(
                    "the key file {} holds no key of it: it is not the key file of the node \
                     that took it",
                    options.key_store.display()
                )
            });
        return Err(refused(format!(
            "the backup {} taken {}: {when}",
            manifest.backup_key, manifest.created_at
        )));
    };
    Ok(backup_key)
}

/// Returns whether the node already holds a store (its data folder, or its PostgreSQL
/// schema); refused when it does and `force` was not given.
fn may_replace(options: &StoreOptions, force: bool) -> Result<bool> {
    let (holds_data, place) = match &options.engine {
        EngineOptions::Sled(_) => (
            options.data_dir.exists() && std::fs::read_dir(&options.data_dir)?.next().is_some(),
            options.data_dir.display().to_string(),
        ),
        EngineOptions::Postgres(pg) => (
            postgres::holds_data(pg)?,
            format!("the PostgreSQL schema {}", pg.schema),
        ),
    };
    if holds_data && !force {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{place} holds a store: pass --force to replace it"),
        )));
    }
    Ok(holds_data)
}

/// Writes the audit entry of a restore, in the restored chain: who restored which backup
/// and what the journal re-applied.
fn audit_restore(
    store: &Store,
    manifest: &Manifest,
    reapplied: &JournalCounts,
    who: &str,
) -> Result<()> {
    let detail = format!(
        "backup={} taken_at={} records={} erasures={} revocations={} directory_changes={} \
         key_changes={} published_months={}",
        manifest.backup_key,
        manifest
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        manifest.records,
        reapplied.erasures,
        reapplied.revocations,
        reapplied.directory_changes,
        reapplied.key_changes,
        reapplied.published_months,
    );
    let (who, id) = (who.to_owned(), manifest.backup_key.clone());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            tx.audit(AuditRecord::new(&who, "store.restore", &id, "ok").detail(detail.clone()))?;
            // Clients watching events may have seen numbers past the backup's.
            tx.skip_event_numbers_after_restore()?;
            Ok(())
        })
        .map_err(TxFail::into_store)
}

/// Writes the backup's records into the (empty) store, each data key re-wrapped from the
/// backup's key under the live KEK, each trusted row checked to be the node's own.
fn import(store: &Store, from: &Path, backup_key: &BackupKey) -> Result<()> {
    let mut input = std::io::BufReader::new(std::fs::File::open(from.join(STORE_FILE))?);
    loop {
        let mut batch = Vec::new();
        while batch.len() < 1000 {
            let Some(k) = read_frame(&mut input)? else {
                break;
            };
            let v = read_frame(&mut input)?.ok_or(StoreError::Corrupt("backup record"))?;
            if k.starts_with(layout::DATA_KEYS) {
                let (epoch, wrapped) =
                    decode_wrapped(&v).ok_or(StoreError::Corrupt("a backup's data key"))?;
                if epoch != BACKUP_EPOCH {
                    return Err(StoreError::Corrupt("a backup's data key"));
                }
                let dk = backup_key.unwrap(&k, wrapped)?;
                batch.push((k, Wrapped::Data(dk)));
            } else if k == layout::meta(crate::keys::KEK_EPOCH) || is_lease(&k) {
                continue;
            } else {
                batch.push((k, Wrapped::Plain(v)));
            }
        }
        if batch.is_empty() {
            break;
        }
        let batch = Arc::new(batch);
        store
            .commit_blocking::<(), (), _>(move |tx| {
                for (k, v) in batch.iter() {
                    match v {
                        Wrapped::Data(dk) => {
                            let stored = tx.keys.wrap_current(k, dk)?;
                            tx.put_raw(k, &stored)?;
                        }
                        Wrapped::Plain(v) => tx.put_raw(k, v)?,
                    }
                }
                Ok(())
            })
            .map_err(TxFail::into_store)?;
    }
    Ok(())
}

enum Wrapped {
    Data(trm_crypto::aead::SecretKey),
    Plain(Vec<u8>),
}

/// Reads the trusted row `name` of the restored store (checked to be the node's own) and
/// decodes it as `what`; the default when there is none.
fn trusted_row<T: serde::de::DeserializeOwned + Default>(
    tx: &mut crate::Tx<'_>,
    name: &str,
    what: &'static str,
) -> Result<T> {
    let key = layout::meta(name);
    match tx.get_raw(&key)? {
        Some(v) => decode(what, verify_row(tx.keys, "row", &key, &v)?),
        None => Ok(T::default()),
    }
}

/// Writes what a restore keeps of a copy whose erasure was asked for after the backup.
type Ended = Box<dyn FnOnce(&mut crate::Tx<'_>) -> Result<()> + Send>;

/// The record `shared` of this node as the backup holds it, if this node sent the copy and
/// had not yet asked for its erasure then: ended as the erasure request ends it (an open
/// record halted, this node's record of what it sent keeping only the pairwise reference),
/// to be kept, under a new key, once the backup's keys are destroyed, with a row that has
/// the node send the request again when it starts (the request queued after the backup is
/// not in it, and the other node would keep the victim's data).
fn erasure_asked_since(tx: &mut crate::Tx<'_>, shared: Shared) -> Result<Option<Ended>> {
    use trm_core::exchange::{ErasableRecord, SharedRecord};
    let me = tx.node();
    trm_core::on_shared!(shared, R, id => {
        let Some(mut r) = tx.record_before_erasure::<R>(id)? else {
            return Ok(None);
        };
        if r.origin() != me || r.erasure().requested() {
            return Ok(None);
        }
        r.request_erasure(ERASED_SINCE, true, OffsetDateTime::now_utc());
        let keep: Ended = Box::new(move |tx| {
            tx.put_record(&r)?;
            tx.put_raw(&layout::pending_erasure(shared), b"")
        });
        Ok(Some(keep))
    })
}

/// Why a copy's erasure is asked for again after a restore (the words a request carries).
const ERASED_SINCE: &str = "consent withdrawn";

/// Re-applies the journal to a restored store: nothing erased, revoked, removed or ended
/// since the backup comes back.
fn reapply(store: &Store, j: &Journal) -> Result<JournalCounts> {
    let counts = j.counts();
    let journal = Arc::new(j.clone());
    store
        .commit_blocking::<(), (), _>(move |tx| {
            // Copies whose erasure was asked for since the backup: read while the backup's
            // keys still open them, ended as the request ended them, asked for again.
            let mut ended = Vec::new();
            for slot in &journal.erased {
                let shared = crate::tx::slot_subject(slot).and_then(|(s, _)| s.shared());
                if let Some(shared) = shared {
                    ended.extend(erasure_asked_since(tx, shared)?);
                }
            }
            let mut cases = Vec::new();
            for slot in &journal.erased {
                cases.extend(tx.destroy_data_key(slot)?.case_id());
            }
            // A case erased since the backup goes with the rows kept of it in clear.
            tx.erase_restored_cases(&cases)?;
            for keep in ended {
                keep(tx)?;
            }
            let trust = &journal.trust;
            let revoked: Vec<Revoked> = trusted_row(tx, "revoked_clients", "revoked clients")?;
            tx.put_trusted(
                &layout::meta("revoked_clients"),
                &merge::revoked(revoked, trust),
            )?;
            let changes: DirectoryChanges =
                trusted_row(tx, "directory_changes", "directory changes")?;
            tx.put_trusted(
                &layout::meta("directory_changes"),
                &merge::directory(changes, trust),
            )?;
            let learned: LearnedKeys = trusted_row(tx, "learned_keys", "learned keys")?;
            tx.put_trusted(
                &layout::meta("learned_keys"),
                &merge::learned(learned, trust),
            )?;
            let own: Vec<OwnKey> = trusted_row(tx, "own_keys", "own keys")?;
            tx.put_trusted(&layout::meta("own_keys"), &merge::own(own, trust))?;
            for (month, report) in &journal.published {
                if tx.published_report(*month)?.is_none() {
                    tx.put_json(&layout::published(&month.key()), report)?;
                }
            }
            let epoch = tx.keys.epochs().0;
            tx.put_raw(&layout::meta(crate::keys::KEK_EPOCH), &epoch.to_be_bytes())?;
            Ok(())
        })
        .map_err(TxFail::into_store)?;
    Ok(counts)
}
