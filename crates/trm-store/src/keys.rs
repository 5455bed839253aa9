//! The key hierarchy of sealed records: master key -> key-encryption key (KEK) -> data keys.
//!
//! - The master key (a file, never in the database or a backup) wraps the KEKs.
//! - The KEKs live in the key file (`[node] key_store`, outside the data folder): two
//!   fixed slots overwritten in place, the current KEK and, while it is being retired, the
//!   one before.
//! - Each subject's data key lives in the database, wrapped under a KEK, written in the
//!   same transaction as the first record sealed under it: no extra file to sync, nothing
//!   loaded at start-up (keys are read on demand and cached).
//! - Shredding a subject deletes its data key in the erasure's own transaction: the live
//!   copy is gone once the erasure is durable. Older copies (sled's log segments, a copy of
//!   the folder) hold the key wrapped under the KEK of their time; the KEK rotates on a
//!   schedule (default daily): live keys are re-wrapped under a new KEK and the old one is
//!   overwritten, after which those copies open nothing.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, RwLock},
};

use time::OffsetDateTime;
use trm_crypto::aead::SecretKey;

use crate::{Result, StoreError};

const MAGIC: &[u8; 8] = b"TRMKEK01";
const HEADER: usize = 16;
const SLOT: usize = 128;
/// Nonce, 32-byte key, tag.
pub const WRAPPED: usize = 24 + 32 + 16;

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

fn kek_aad(epoch: u64) -> Vec<u8> {
    let mut a = b"trm/kek/".to_vec();
    a.extend_from_slice(&epoch.to_be_bytes());
    a
}

/// The key file: the current KEK and the one being retired, wrapped by the master key.
struct KekFile {
    path: PathBuf,
    file: File,
    master: SecretKey,
    /// Slot index -> KEK (two slots).
    slots: [Option<Kek>; 2],
}

impl KekFile {
    /// Writes a new key file with a first KEK beside `path` and links it to `path` unless
    /// a file is there already (another process published its own first): never
    /// overwrites, so every process of the node ends up reading the same KEKs.
    fn publish_fresh(path: &Path, master: &SecretKey) -> Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(StoreError::Corrupt("key file name"))?;
        let tmp = path.with_file_name(format!(".{name}.new-{}", uuid::Uuid::new_v4().simple()));
        {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            let mut fresh = vec![0u8; HEADER + 2 * SLOT];
            fresh[..8].copy_from_slice(MAGIC);
            file.write_all(&fresh)?;
            file.sync_all()?;
            let mut kf = Self {
                path: tmp.clone(),
                file,
                master: master.clone(),
                slots: [None, None],
            };
            kf.write_slot(0, Some(&Self::generate(1)))?;
        }
        let linked = std::fs::hard_link(&tmp, path);
        std::fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn open_or_create(path: &Path, master: SecretKey, create: bool) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let exists = path.is_file();
        if !exists && !create {
            return Err(StoreError::KeyStoreMissing(path.display().to_string()));
        }
        if !exists {
            // Replicas of a node starting at once all try: one file wins, all read it.
            Self::publish_fresh(path, &master)?;
            return Self::open_or_create(path, master, false);
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut kf = Self {
            path: path.to_path_buf(),
            file,
            master,
            slots: [None, None],
        };
        if bytes.len() < HEADER + 2 * SLOT || &bytes[..8] != MAGIC {
            if exists && !bytes.is_empty() {
                return Err(StoreError::Corrupt(
                    "key file is not a TRM key file (it may predate the key hierarchy)",
                ));
            }
            let mut fresh = vec![0u8; HEADER + 2 * SLOT];
            fresh[..8].copy_from_slice(MAGIC);
            kf.file.seek(SeekFrom::Start(0))?;
            kf.file.write_all(&fresh)?;
            kf.file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            kf.write_slot(0, Some(&Self::generate(1)))?;
            return Ok(kf);
        }
        for i in 0..2 {
            let at = HEADER + i * SLOT;
            let slot = &bytes[at..at + SLOT];
            let epoch = u64::from_be_bytes(slot[..8].try_into().unwrap_or_default());
            if epoch == 0 {
                continue;
            }
            let created_at = OffsetDateTime::from_unix_timestamp(i64::from_be_bytes(
                slot[8..16].try_into().unwrap_or_default(),
            ))
            .map_err(|_| StoreError::Corrupt("a KEK's creation time"))?;
            let key = kf
                .master
                .unwrap_key(&kek_aad(epoch), &slot[16..16 + WRAPPED])
                .map_err(|_| StoreError::Corrupt("a KEK does not open with this master key"))?;
            kf.slots[i] = Some(Kek {
                epoch,
                created_at,
                key,
            });
        }
        if kf.slots.iter().all(Option::is_none) {
            return Err(StoreError::Corrupt("key file holds no KEK"));
        }
        Ok(kf)
    }

    fn generate(epoch: u64) -> Kek {
        Kek {
            epoch,
            created_at: OffsetDateTime::now_utc(),
            key: SecretKey::generate(),
        }
    }

    /// Writes (or, with `None`, overwrites with zeros) slot `i` and syncs the file.
    fn write_slot(&mut self, i: usize, kek: Option<&Kek>) -> Result<()> {
        let mut slot = [0u8; SLOT];
        if let Some(k) = kek {
            slot[..8].copy_from_slice(&k.epoch.to_be_bytes());
            slot[8..16].copy_from_slice(&k.created_at.unix_timestamp().to_be_bytes());
            let wrapped = self.master.wrap(&kek_aad(k.epoch), &k.key)?;
            slot[16..16 + WRAPPED].copy_from_slice(&wrapped);
        }
        self.file
            .seek(SeekFrom::Start((HEADER + i * SLOT) as u64))?;
        self.file.write_all(&slot)?;
        self.file.sync_data()?;
        self.slots[i] = kek.cloned();
        Ok(())
    }

    fn current(&self) -> Option<&Kek> {
        self.slots.iter().flatten().max_by_key(|k| k.epoch)
    }

    fn retiring(&self) -> Option<&Kek> {
        let current = self.current()?.epoch;
        self.slots.iter().flatten().find(|k| k.epoch != current)
    }
}

/// A subject's wrapped data key as stored: the KEK epoch, then the wrapped key.
pub(crate) fn encode_wrapped(epoch: u64, wrapped: &[u8]) -> Vec<u8> {
    let mut v = epoch.to_be_bytes().to_vec();
    v.extend_from_slice(wrapped);
    v
}

fn decode_wrapped(v: &[u8]) -> Option<(u64, &[u8])> {
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
        Ok(Self {
            keks: RwLock::new(KekFile::open_or_create(path, master, create)?),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            shared: Default::default(),
        })
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
            .slots
            .iter()
            .flatten()
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
        if keks.retiring().is_some() {
            return Ok(false);
        }
        let current = keks.current().map(|k| k.epoch).unwrap_or_default();
        let free = keks.slots.iter().position(Option::is_none).unwrap_or(1);
        let new = KekFile::generate(current + 1);
        keks.write_slot(free, Some(&new))?;
        Ok(true)
    }

    /// Finishes a rotation once no data key is wrapped under the retiring KEK any more:
    /// its slot is overwritten with zeros and synced.
    pub fn finish_rotation(&self) -> Result<()> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        let Some(retiring) = keks.retiring().map(|k| k.epoch) else {
            return Ok(());
        };
        let i = keks
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|k| k.epoch == retiring))
            .ok_or(StoreError::Corrupt("retiring KEK slot"))?;
        keks.write_slot(i, None)
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
            let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(leftovers, 1, "no temporary file left behind");
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
        let raw_after = std::fs::read(&path).unwrap();
        let old_slot = &raw_before[HEADER..HEADER + SLOT];
        assert!(!raw_after.windows(SLOT).any(|w| w == old_slot));
        assert!(matches!(
            KeyRing::open(&dir.path().join("missing"), master, false),
            Err(StoreError::KeyStoreMissing(_))
        ));
    }
}
