//! The key hierarchy of sealed records: master key -> key-encryption key (KEK) -> data keys.
//!
//! - The master key (a file, never in the database or a backup) wraps the KEKs.
//! - The key file (`[node] key_store`, outside the data folder) holds the current KEK and,
//!   while it is being retired, the one before; and one backup key per backup still kept
//!   (see [`crate::backup`]: a backup's data keys are wrapped under its own backup key,
//!   never under a KEK, and the backup key is destroyed when the backup expires).
//! - Each subject's data key lives in the database, wrapped under a KEK, written in the
//!   same transaction as the first record sealed under it: no extra file to sync, nothing
//!   loaded at start-up (keys are read on demand and cached).
//! - Shredding a subject deletes its data key in the erasure's own transaction: the live
//!   copy is gone once the erasure is durable. Older copies (sled's log segments, a copy of
//!   the folder) hold the key wrapped under the KEK of their time; the KEK rotates on a
//!   schedule (default daily): live keys are re-wrapped under a new KEK and the old one is
//!   destroyed, after which those copies open nothing.
//!
//! The key file is replaced whole, never rewritten in place: a new file is written and
//! synced beside it and renamed over it, so replicas of the node sharing it (also on a
//! network file system) never read half a change. Changes are made under a lock on
//! `<key_store>.lock` and on the file as it is now (another replica may have changed it).
//! The replaced file's bytes are then overwritten with zeros, so a destroyed key does not
//! linger in a file still open somewhere. Key files of earlier versions (two fixed slots)
//! are read and replaced by the current form at their first change.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, RwLock},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_crypto::aead::SecretKey;

use crate::{Result, StoreError};

/// The first bytes of a key file of earlier versions.
const MAGIC_V1: &[u8; 8] = b"TRMKEK01";
const HEADER_V1: usize = 16;
const SLOT_V1: usize = 128;
/// Nonce, 32-byte key, tag.
pub const WRAPPED: usize = 24 + 32 + 16;
/// The format name of the key file.
const FORMAT: &str = "trm-keys/2";

/// One key-encryption key.
#[derive(Clone)]
pub struct Kek {
    pub epoch: u64,
    /// Kept in the key file as whole seconds since the Unix epoch.
    pub created_at: OffsetDateTime,
    key: SecretKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("epoch", &self.epoch)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The key of one backup: opens that backup's data keys until it expires.
#[derive(Clone)]
pub struct BackupKey {
    pub id: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    key: SecretKey,
    /// The backup's manifest carries a MAC under this key, which a restore requires (keys
    /// of earlier versions: none). Bound to the key in the key file (its wrapping's AAD).
    seals_manifest: bool,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupKey")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl BackupKey {
    /// Wraps a data key of `slot` for the backup.
    pub(crate) fn wrap(&self, slot: &[u8], dk: &SecretKey) -> Result<Vec<u8>> {
        Ok(self.key.wrap(slot, dk)?)
    }

    /// Unwraps a data key of `slot` from the backup.
    pub(crate) fn unwrap(&self, slot: &[u8], wrapped: &[u8]) -> Result<SecretKey> {
        Ok(self.key.unwrap_key(slot, wrapped)?)
    }

    /// The MAC of a manifest's bytes under the backup's key.
    pub(crate) fn mac(&self, manifest: &[u8]) -> [u8; 32] {
        self.key.mac(&manifest_mac_input(manifest))
    }

    /// Whether `tag` is the MAC of a manifest's bytes; `None` for a key of an earlier
    /// version, whose backups carry none.
    pub(crate) fn verify_mac(&self, manifest: &[u8], tag: &[u8]) -> Option<bool> {
        self.seals_manifest
            .then(|| self.key.verify_mac(&manifest_mac_input(manifest), tag))
    }
}

/// What a manifest's MAC is computed over: its bytes, after a tag of their own.
fn manifest_mac_input(manifest: &[u8]) -> Vec<u8> {
    [b"trm/backup-manifest/v1".as_slice(), manifest].concat()
}

fn kek_aad(epoch: u64) -> Vec<u8> {
    let mut a = b"trm/kek/".to_vec();
    a.extend_from_slice(&epoch.to_be_bytes());
    a
}

fn backup_aad(id: &str, seals_manifest: bool) -> Vec<u8> {
    let mut a = if seals_manifest {
        b"trm/backup-key/v2/".to_vec()
    } else {
        b"trm/backup-key/".to_vec()
    };
    a.extend_from_slice(id.as_bytes());
    a
}

/// A key as the file holds it: wrapped by the master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKek {
    epoch: u64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    wrapped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBackupKey {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    wrapped: String,
    #[serde(default)]
    seals_manifest: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    format: String,
    keks: Vec<StoredKek>,
    #[serde(default)]
    backup_keys: Vec<StoredBackupKey>,
}

/// Holds `<key_store>.lock` (a POSIX lock, which network file systems honour) while a
/// process changes the key file; and, since POSIX locks are a process's, a lock of this
/// process too (two stores of one process never change a key file at once).
struct FileLock(File, #[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// Changes of key files by this process, one at a time.
static IN_PROCESS: Mutex<()> = Mutex::new(());

impl FileLock {
    fn take(key_store: &Path) -> Result<Self> {
        let here = IN_PROCESS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let f = o.open(key_store.with_extension("lock"))?;
        rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)?;
        Ok(Self(f, here))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = rustix::fs::fcntl_lock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// The key file: the current KEK and the one being retired, and the backups' keys, all
/// wrapped by the master key.
struct KekFile {
    path: PathBuf,
    master: SecretKey,
    keks: Vec<Kek>,
    backups: Vec<BackupKey>,
}

impl KekFile {
    fn empty(path: &Path, master: SecretKey) -> Self {
        Self {
            path: path.to_path_buf(),
            master,
            keks: Vec::new(),
            backups: Vec::new(),
        }
    }

    fn open_or_create(path: &Path, master: SecretKey, create: bool) -> Result<Self> {
        if path.is_file() {
            return Self::read(path, master);
        }
        if !create {
            return Err(StoreError::KeyStoreMissing(path.display().to_string()));
        }
        if let Some(dir) = path.parent() {
            crate::journal::create_private_dir(dir)?;
        }
        // Replicas of a node starting at once all try: the first under the lock writes it,
        // the others read it.
        let _lock = FileLock::take(path)?;
        if path.is_file() {
            return Self::read(path, master);
        }
        let mut kf = Self::empty(path, master);
        kf.keks.push(Self::generate(1));
        kf.write()?;
        Ok(kf)
    }

    /// Reads the key file (a replica may be replacing it: a file caught half-zeroed is
    /// read again).
    fn read(path: &Path, master: SecretKey) -> Result<Self> {
        let mut last = StoreError::Corrupt("key file");
        for _ in 0..5 {
            let mut bytes = Vec::new();
            match File::open(path) {
                Ok(mut f) => f.read_to_end(&mut bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::KeyStoreMissing(path.display().to_string()))
                }
                Err(e) => return Err(e.into()),
            };
            match Self::parse(path, master.clone(), &bytes) {
                Ok(kf) => return Ok(kf),
                // Caught while a replica replaced it (the old bytes being zeroed).
                Err(e @ StoreError::Corrupt(_)) => last = e,
                Err(e) => return Err(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(last)
    }

    fn parse(path: &Path, master: SecretKey, bytes: &[u8]) -> Result<Self> {
        let mut kf = Self::empty(path, master);
        if bytes.starts_with(MAGIC_V1) {
            kf.parse_v1(bytes)?;
        } else {
            let stored: Stored = serde_json::from_slice(bytes).map_err(|_| {
                StoreError::Corrupt(
                    "the key file is not a TRM key file (it may predate the key hierarchy)",
                )
            })?;
            if stored.format != FORMAT {
                return Err(StoreError::Corrupt("the key file's format is unknown"));
            }
            for k in stored.keks {
                let wrapped = hex::decode(&k.wrapped).map_err(|_| StoreError::Corrupt("a KEK"))?;
                let key = kf
                    .master
                    .unwrap_key(&kek_aad(k.epoch), &wrapped)
                    .map_err(|_| StoreError::Corrupt("a KEK does not open with this master key"))?;
                kf.keks.push(Kek {
                    epoch: k.epoch,
                    created_at: k.created_at,
                    key,
                });
            }
            for b in stored.backup_keys {
                let wrapped =
                    hex::decode(&b.wrapped).map_err(|_| StoreError::Corrupt("a backup key"))?;
                let key = kf
                    .master
                    .unwrap_key(&backup_aad(&b.id, b.seals_manifest), &wrapped)
                    .map_err(|_| {
                        StoreError::Corrupt("a backup key does not open with this master key")
                    })?;
                kf.backups.push(BackupKey {
                    id: b.id,
                    created_at: b.created_at,
                    expires_at: b.expires_at,
                    key,
                    seals_manifest: b.seals_manifest,
                });
            }
        }
        if kf.keks.is_empty() {
            return Err(StoreError::Corrupt("key file holds no KEK"));
        }
        Ok(kf)
    }

    /// Reads a key file of earlier versions: two fixed slots.
    fn parse_v1(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() < HEADER_V1 + 2 * SLOT_V1 {
            return Err(StoreError::Corrupt("key file"));
        }
        for i in 0..2 {
            let at = HEADER_V1 + i * SLOT_V1;
            let slot = &bytes[at..at + SLOT_V1];
            let epoch = u64::from_be_bytes(slot[..8].try_into().unwrap_or_default());
            if epoch == 0 {
                continue;
            }
            let created_at = OffsetDateTime::from_unix_timestamp(i64::from_be_bytes(
                slot[8..16].try_into().unwrap_or_default(),
            ))
            .map_err(|_| StoreError::Corrupt("a KEK's creation time"))?;
            let key = self
                .master
                .unwrap_key(&kek_aad(epoch), &slot[16..16 + WRAPPED])
                .map_err(|_| StoreError::Corrupt("a KEK does not open with this master key"))?;
            self.keks.push(Kek {
                epoch,
                created_at,
                key,
            });
        }
        Ok(())
    }

    fn generate(epoch: u64) -> Kek {
        Kek {
            epoch,
            created_at: OffsetDateTime::now_utc(),
            key: SecretKey::generate(),
        }
    }

    /// Replaces the file with what this holds: written and synced beside it, renamed over
    /// it, the folder synced; then the bytes of the replaced file are zeroed.
    fn write(&self) -> Result<()> {
        let mut stored = Stored {
            format: FORMAT.to_owned(),
            keks: Vec::new(),
            backup_keys: Vec::new(),
        };
        for k in &self.keks {
            stored.keks.push(StoredKek {
                epoch: k.epoch,
                created_at: k.created_at,
                wrapped: hex::encode(self.master.wrap(&kek_aad(k.epoch), &k.key)?),
            });
        }
        for b in &self.backups {
            stored.backup_keys.push(StoredBackupKey {
                id: b.id.clone(),
                created_at: b.created_at,
                expires_at: b.expires_at,
                wrapped: hex::encode(
                    self.master
                        .wrap(&backup_aad(&b.id, b.seals_manifest), &b.key)?,
                ),
                seals_manifest: b.seals_manifest,
            });
        }
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|_| StoreError::Encode)?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(StoreError::Corrupt("key file name"))?;
        let old = File::options().read(true).write(true).open(&self.path).ok();
        crate::journal::write_whole(dir, name, &bytes)?;
        if let Some(mut old) = old {
            // What the replaced file held (a destroyed KEK, an expired backup key): zeroed
            // where it lay, not left to whoever reads the disk.
            let len = old.metadata()?.len();
            old.write_all(&vec![0u8; len as usize])?;
            old.sync_all()?;
        }
        Ok(())
    }

    /// Reads the file again under the lock and applies `change` to what it holds now.
    fn change<R>(&mut self, change: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let _lock = FileLock::take(&self.path)?;
        let mut now = Self::read(&self.path, self.master.clone())?;
        let r = change(&mut now)?;
        now.write()?;
        *self = now;
        Ok(r)
    }

    fn current(&self) -> Option<&Kek> {
        self.keks.iter().max_by_key(|k| k.epoch)
    }

    fn retiring(&self) -> Option<&Kek> {
        let current = self.current()?.epoch;
        self.keks.iter().find(|k| k.epoch != current)
    }
}

/// A subject's wrapped data key as stored: the KEK epoch, then the wrapped key.
pub(crate) fn encode_wrapped(epoch: u64, wrapped: &[u8]) -> Vec<u8> {
    let mut v = epoch.to_be_bytes().to_vec();
    v.extend_from_slice(wrapped);
    v
}

pub(crate) fn decode_wrapped(v: &[u8]) -> Option<(u64, &[u8])> {
    let (e, w) = v.split_at_checked(8)?;
    Some((u64::from_be_bytes(e.try_into().ok()?), w))
}

/// The node's keys at run time: the KEKs and a bounded cache of unwrapped data keys.
pub struct KeyRing {
    keks: RwLock<KekFile>,
    /// By slot: the stored (wrapped) bytes the key was unwrapped from, and the key. A hit
    /// needs the same stored bytes, so a key made by a transaction that was then rolled
    /// back is never taken for the key later committed under the same slot.
    cache: Mutex<lru::LruCache<Vec<u8>, CachedKey>>,
    /// Other processes (replicas of the node) share the key file and may rotate it.
    shared: std::sync::atomic::AtomicBool,
    /// Authenticates the rows the node trusts without a seal (derived from the master).
    row_key: SecretKey,
    /// Keys the blind index of persons (derived from the master): equal names and dates of
    /// birth give equal entries, which say nothing of either without this key.
    blind_key: SecretKey,
    /// Data-key slots the journal lists as destroyed: never unwrapped again, even if a row
    /// of an older copy is written back into the database.
    erased: RwLock<std::collections::HashSet<Vec<u8>>>,
}

/// A cached data key: the stored bytes it was unwrapped from, and the key.
type CachedKey = (Vec<u8>, SecretKey);

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

/// The meta key holding the current KEK's epoch in the database (see [`KeyRing::reload`]).
pub const KEK_EPOCH: &str = "kek_epoch";

/// Data keys kept unwrapped in memory at most.
const CACHE: usize = 4096;

impl KeyRing {
    /// Opens the key file at `path` (created, with a first KEK, when `create`).
    pub fn open(path: &Path, master: SecretKey, create: bool) -> Result<Self> {
        let row_key = master.derive(b"trm/row-authentication/v1");
        let blind_key = master.derive(b"trm/person-blind-index/v1");
        Ok(Self {
            row_key,
            blind_key,
            erased: RwLock::default(),
            keks: RwLock::new(KekFile::open_or_create(path, master, create)?),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            shared: Default::default(),
        })
    }

    /// Remembers slots as destroyed (read from the journal, or shredded now).
    pub(crate) fn mark_erased(&self, slots: impl IntoIterator<Item = Vec<u8>>) {
        self.erased
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(slots);
    }

    /// Whether the journal lists `slot`'s key as destroyed.
    pub(crate) fn is_erased(&self, slot: &[u8]) -> bool {
        self.erased
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(slot)
    }

    /// Returns the key of the blind index of persons.
    pub(crate) fn blind_key(&self) -> &SecretKey {
        &self.blind_key
    }

    /// Returns the key that authenticates trusted rows.
    pub(crate) fn row_key(&self) -> &SecretKey {
        &self.row_key
    }

    /// Returns the key file's path.
    pub fn path(&self) -> PathBuf {
        self.keks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .path
            .clone()
    }

    /// Returns the epoch and creation time of the current KEK, and the epoch of the one
    /// being retired if any.
    pub fn epochs(&self) -> (u64, OffsetDateTime, Option<u64>) {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let (epoch, created) = keks
            .current()
            .map_or((0, OffsetDateTime::UNIX_EPOCH), |k| (k.epoch, k.created_at));
        (epoch, created, keks.retiring().map(|k| k.epoch))
    }

    /// Wraps a fresh data key for `slot` (subject and generation) under the current KEK;
    /// returns the key and its stored form.
    pub(crate) fn new_data_key(&self, slot: &[u8]) -> Result<(SecretKey, Vec<u8>)> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let kek = keks.current().ok_or(StoreError::Corrupt("no KEK"))?;
        let dk = SecretKey::generate();
        let wrapped = kek.key.wrap(slot, &dk)?;
        Ok((dk, encode_wrapped(kek.epoch, &wrapped)))
    }

    /// Returns the stored form of data key `dk` of `slot` wrapped under the current KEK.
    pub(crate) fn wrap_current(&self, slot: &[u8], dk: &SecretKey) -> Result<Vec<u8>> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let kek = keks.current().ok_or(StoreError::Corrupt("no KEK"))?;
        Ok(encode_wrapped(kek.epoch, &kek.key.wrap(slot, dk)?))
    }

    /// Unwraps the stored data key of `slot`.
    pub(crate) fn unwrap(&self, slot: &[u8], stored: &[u8]) -> Result<SecretKey> {
        if let Some((_, k)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(slot)
            .filter(|(from, _)| from.as_slice() == stored)
        {
            return Ok(k.clone());
        }
        let (epoch, wrapped) = decode_wrapped(stored).ok_or(StoreError::Corrupt("data key"))?;
        if self.epochs().0 < epoch {
            // Another replica of the node rotated the KEK in the shared key file.
            self.reload()?;
        }
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let kek = keks
            .keks
            .iter()
            .find(|k| k.epoch == epoch)
            .ok_or(StoreError::Corrupt("a data key's KEK is gone"))?;
        let dk = kek.key.unwrap_key(slot, wrapped)?;
        drop(keks);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(slot.to_vec(), (stored.to_vec(), dk.clone()));
        Ok(dk)
    }

    /// Marks the key file as shared with other processes of the node (replicas).
    pub(crate) fn set_shared(&self) {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether other processes may rotate the KEKs behind this ring's back.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the key file again (another replica of the node changed it).
    pub fn reload(&self) -> Result<()> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        let fresh = KekFile::open_or_create(&keks.path, keks.master.clone(), false)?;
        *keks = fresh;
        Ok(())
    }

    /// Returns the stored form of `slot`'s key re-wrapped under the current KEK, when it is
    /// wrapped under another.
    pub(crate) fn rewrap(&self, slot: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>> {
        let (epoch, _) = decode_wrapped(stored).ok_or(StoreError::Corrupt("data key"))?;
        let (current, _, _) = self.epochs();
        if epoch == current {
            return Ok(None);
        }
        let dk = self.unwrap(slot, stored)?;
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let kek = keks.current().ok_or(StoreError::Corrupt("no KEK"))?;
        Ok(Some(encode_wrapped(kek.epoch, &kek.key.wrap(slot, &dk)?)))
    }

    /// Returns whether a stored key is wrapped under the KEK being retired.
    pub(crate) fn is_retiring(&self, stored: &[u8]) -> bool {
        let retiring = self.epochs().2;
        decode_wrapped(stored).is_some_and(|(e, _)| Some(e) == retiring)
    }

    /// Forgets the cached key of `slot` (it was shredded).
    pub(crate) fn forget(&self, slot: &[u8]) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop(slot);
    }

    /// Starts a rotation: a new KEK becomes current (written and synced), the current one
    /// becomes the one being retired. Does nothing while a rotation is unfinished.
    pub fn begin_rotation(&self) -> Result<bool> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        keks.change(|kf| {
            if kf.retiring().is_some() {
                return Ok(false);
            }
            let current = kf.current().map(|k| k.epoch).unwrap_or_default();
            kf.keks.push(KekFile::generate(current + 1));
            Ok(true)
        })
    }

    /// Finishes a rotation once no data key is wrapped under the retiring KEK any more:
    /// it is destroyed (the file replaced without it, its old bytes zeroed).
    pub fn finish_rotation(&self) -> Result<()> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        keks.change(|kf| {
            if let Some(retiring) = kf.retiring().map(|k| k.epoch) {
                kf.keks.retain(|k| k.epoch != retiring);
            }
            Ok(())
        })
    }

    /// Makes the key of a new backup, kept in the key file (durably) until `expires_at`.
    pub fn new_backup_key(&self, expires_at: OffsetDateTime) -> Result<BackupKey> {
        let key = BackupKey {
            id: uuid::Uuid::new_v4().to_string(),
            created_at: OffsetDateTime::now_utc(),
            expires_at,
            key: SecretKey::generate(),
            seals_manifest: true,
        };
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        let k = key.clone();
        keks.change(move |kf| {
            kf.backups.push(k);
            Ok(())
        })?;
        Ok(key)
    }

    /// Returns the key of backup `id`, if the key file still holds it.
    pub fn backup_key(&self, id: &str) -> Result<Option<BackupKey>> {
        self.reload()?;
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        Ok(keks.backups.iter().find(|b| b.id == id).cloned())
    }

    /// Returns when the oldest backup that can still be restored (its key is in the key
    /// file) was made, if any.
    pub fn oldest_backup(&self) -> Result<Option<OffsetDateTime>> {
        self.reload()?;
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        Ok(keks.backups.iter().map(|b| b.created_at).min())
    }

    /// Destroys the keys of backups expired at `now`: those backups open for no one from
    /// then on. Returns how many it destroyed.
    pub fn destroy_expired_backup_keys(&self, now: OffsetDateTime) -> Result<usize> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        if !keks.backups.iter().any(|b| b.expires_at <= now) {
            return Ok(0);
        }
        keks.change(|kf| {
            let before = kf.backups.len();
            kf.backups.retain(|b| b.expires_at > now);
            Ok(before - kf.backups.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_creating_the_key_file_at_once_all_read_the_same_keks() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keys.store");
            let master = SecretKey::generate();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let rings: Vec<KeyRing> = (0..4)
                .map(|_| {
                    let (path, master, barrier) = (path.clone(), master.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        KeyRing::open(&path, master, true).unwrap()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let (dk, stored) = rings[0].new_data_key(b"case/1").unwrap();
            let sealed = dk.seal(b"a", b"x").unwrap();
            for ring in &rings[1..] {
                let k = ring.unwrap(b"case/1", &stored).unwrap();
                assert!(k.open(b"a", &sealed).is_ok(), "one KEK for every replica");
            }
            let leftovers = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().contains(".tmp-")
                })
                .count();
            assert_eq!(leftovers, 0, "no temporary file left behind");
        }
    }

    #[test]
    fn keks_survive_reopening_and_a_retired_kek_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.store");
        let master = SecretKey::generate();
        let ring = KeyRing::open(&path, master.clone(), true).unwrap();
        let (dk, stored) = ring.new_data_key(b"case/1").unwrap();
        let raw_before = std::fs::read(&path).unwrap();
        assert!(ring.begin_rotation().unwrap());
        let rewrapped = ring
            .rewrap(b"case/1", &stored)
            .unwrap()
            .expect("re-wrapped");
        ring.finish_rotation().unwrap();
        drop(ring);
        let ring = KeyRing::open(&path, master.clone(), false).unwrap();
        assert_eq!(ring.epochs().0, 2);
        let back = ring.unwrap(b"case/1", &rewrapped).unwrap();
        let sealed = back.seal(b"a", b"x").unwrap();
        assert!(dk.open(b"a", &sealed).is_ok(), "the same data key");
        // The old wrapping no longer opens: its KEK is gone from the file.
        let fresh = KeyRing::open(&path, master.clone(), false).unwrap();
        assert!(fresh.unwrap(b"case/1", &stored).is_err());
        // Nothing of the retired KEK is left in the file.
        let wrapped_of = |raw: &[u8]| -> Vec<String> {
            let stored: Stored = serde_json::from_slice(raw).unwrap();
            stored.keks.into_iter().map(|k| k.wrapped).collect()
        };
        let before = wrapped_of(&raw_before);
        let after = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(before.len(), 1);
        assert!(!after.contains(&before[0]), "the retired KEK is gone");
        assert!(matches!(
            KeyRing::open(&dir.path().join("missing"), master, false),
            Err(StoreError::KeyStoreMissing(_))
        ));
    }

    #[test]
    fn a_replaced_key_file_is_switched_whole_and_its_old_bytes_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.store");
        let master = SecretKey::generate();
        let ring = KeyRing::open(&path, master.clone(), true).unwrap();
        // A reader that opened the file before the change.
        let mut old = File::open(&path).unwrap();
        let len = old.metadata().unwrap().len();
        ring.begin_rotation().unwrap();
        let mut seen = Vec::new();
        old.read_to_end(&mut seen).unwrap();
        assert_eq!(seen.len() as u64, len);
        assert!(
            seen.iter().all(|b| *b == 0),
            "the replaced bytes are zeroed"
        );
        // Another process reads the new file whole.
        let other = KeyRing::open(&path, master, false).unwrap();
        assert_eq!(other.epochs().0, 2);
        assert_eq!(other.epochs().2, Some(1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "owner-only");
        }
    }

    #[test]
    fn a_key_file_of_two_fixed_slots_is_read_and_replaced_at_its_first_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.store");
        let master = SecretKey::generate();
        // The earlier form: magic, then two slots (epoch, created, wrapped KEK).
        let kek = SecretKey::generate();
        let mut bytes = vec![0u8; HEADER_V1 + 2 * SLOT_V1];
        bytes[..8].copy_from_slice(MAGIC_V1);
        let slot = &mut bytes[HEADER_V1..HEADER_V1 + SLOT_V1];
        slot[..8].copy_from_slice(&7u64.to_be_bytes());
        slot[8..16].copy_from_slice(&1_700_000_000i64.to_be_bytes());
        let wrapped = master.wrap(&kek_aad(7), &kek).unwrap();
        slot[16..16 + WRAPPED].copy_from_slice(&wrapped);
        std::fs::write(&path, &bytes).unwrap();
        let ring = KeyRing::open(&path, master.clone(), false).unwrap();
        assert_eq!(ring.epochs().0, 7);
        let dk = SecretKey::generate();
        let stored = encode_wrapped(7, &kek.wrap(b"case/1", &dk).unwrap());
        assert!(
            ring.unwrap(b"case/1", &stored).is_ok(),
            "its KEK opens old keys"
        );
        ring.begin_rotation().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(FORMAT), "{text}");
        let again = KeyRing::open(&path, master, false).unwrap();
        assert_eq!(again.epochs(), (8, again.epochs().1, Some(7)));
    }

    #[test]
    fn a_backup_key_opens_its_backup_until_it_expires_then_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.store");
        let master = SecretKey::generate();
        let ring = KeyRing::open(&path, master.clone(), true).unwrap();
        let now = OffsetDateTime::now_utc();
        let kept = ring.new_backup_key(now + time::Duration::days(35)).unwrap();
        let ending = ring
            .new_backup_key(now - time::Duration::seconds(1))
            .unwrap();
        let other = KeyRing::open(&path, master.clone(), false).unwrap();
        let dk = SecretKey::generate();
        let wrapped = kept.wrap(b"case/1", &dk).unwrap();
        let found = other.backup_key(&kept.id).unwrap().expect("kept");
        assert!(found.unwrap(b"case/1", &wrapped).is_ok());
        assert_eq!(ring.destroy_expired_backup_keys(now).unwrap(), 1);
        assert!(other.backup_key(&ending.id).unwrap().is_none(), "destroyed");
        assert!(other.backup_key(&kept.id).unwrap().is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&ending.id));
        // A KEK rotation keeps the backups' keys.
        ring.begin_rotation().unwrap();
        ring.finish_rotation().unwrap();
        assert!(other.backup_key(&kept.id).unwrap().is_some());
    }
}
