//! The data-key store: every subject's data key, wrapped by the master key, in a file of its
//! own kept outside the database folder. Slots have a fixed size and are overwritten in
//! place, so shredding a key does not leave it behind the way sled's log-structured files
//! would; and a copy of the database folder (a backup) holds ciphertext only, so a record
//! erased after the copy was taken cannot be brought back from it.
//!
//! A slot is 128 bytes: 32 bytes of slot id (SHA-256 of subject and key generation), the
//! wrapped key (72 bytes), zero padding. An all-zero slot is free.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
    sync::Mutex,
};

use crate::{Result, StoreError};

const SLOT: usize = 128;
const ID: usize = 32;
/// Nonce, 32-byte key, tag.
pub const WRAPPED: usize = 24 + 32 + 16;

/// Returns the slot id of `subject`'s key of generation `generation`.
pub fn slot_id(subject: &[u8], generation: u32) -> [u8; 32] {
    let mut input = subject.to_vec();
    input.extend_from_slice(&generation.to_be_bytes());
    trm_crypto::sha256(&input)
}

struct Inner {
    file: File,
    /// Slot id -> (offset, wrapped key): reads never touch the disk.
    index: HashMap<[u8; 32], (u64, Vec<u8>)>,
    free: Vec<u64>,
    len: u64,
    /// Keys written since the last sync.
    dirty: bool,
}

/// The key store file.
pub struct KeyStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Durability
}

impl KeyStore {
    /// Opens (or creates, mode 0600) the key store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
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
        let mut index = HashMap::new();
        let mut free = Vec::new();
        let full = bytes.len() - bytes.len() % SLOT;
        for (i, slot) in bytes[..full].chunks_exact(SLOT).enumerate() {
            let offset = (i * SLOT) as u64;
            let mut id = [0u8; ID];
            id.copy_from_slice(&slot[..ID]);
            if id == [0u8; ID] {
                free.push(offset);
            } else {
                index.insert(id, (offset, slot[ID..ID + WRAPPED].to_vec()));
            }
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                file,
                index,
                free,
                len: full as u64,
                dirty: false,
            }),
        })
    }

    /// Returns the wrapped key in slot `id`.
    pub fn get(&self, id: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let inner = self.inner.lock().map_err(poisoned)?;
        Ok(inner.index.get(id).map(|(_, wrapped)| wrapped.clone()))
    }

    /// Writes a wrapped key into slot `id` unless it already holds one (idempotent). The
    /// write is made durable by the next [`KeyStore::sync`].
    pub fn put(&self, id: &[u8; 32], wrapped: &[u8]) -> Result<()> {
        if wrapped.len() != WRAPPED {
            return Err(StoreError::Encode);
        }
        let mut inner = self.inner.lock().map_err(poisoned)?;
        if inner.index.contains_key(id) {
            return Ok(());
        }
        let offset = match inner.free.pop() {
            Some(o) => o,
            None => {
                let o = inner.len;
                inner.len += SLOT as u64;
                o
            }
        };
        let mut slot = [0u8; SLOT];
        slot[..ID].copy_from_slice(id);
        slot[ID..ID + WRAPPED].copy_from_slice(wrapped);
        inner.file.seek(SeekFrom::Start(offset))?;
        inner.file.write_all(&slot)?;
        inner.index.insert(*id, (offset, wrapped.to_vec()));
        inner.dirty = true;
        Ok(())
    }

    /// Overwrites slot `id` with zeros and syncs the file: the key is gone.
    pub fn erase(&self, id: &[u8; 32]) -> Result<()> {
        let mut inner = self.inner.lock().map_err(poisoned)?;
        let Some((offset, _)) = inner.index.remove(id) else {
            return Ok(());
        };
        inner.file.seek(SeekFrom::Start(offset))?;
        inner.file.write_all(&[0u8; SLOT])?;
        inner.file.sync_data()?;
        inner.free.push(offset);
        Ok(())
    }

    /// Makes every write so far durable (nothing to do when no key was written).
    pub fn sync(&self) -> Result<()> {
        let mut inner = self.inner.lock().map_err(poisoned)?;
        if inner.dirty {
            inner.file.sync_data()?;
            inner.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopening_and_erased_slots_are_zeroed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.store");
        let (a, b) = (slot_id(b"case-a", 0), slot_id(b"case-b", 0));
        let wa = [7u8; WRAPPED];
        let wb = [9u8; WRAPPED];
        {
            let ks = KeyStore::open(&path).unwrap();
            ks.put(&a, &wa).unwrap();
            ks.put(&b, &wb).unwrap();
            ks.put(&a, &[1u8; WRAPPED]).unwrap(); // idempotent: the first write stays
            ks.sync().unwrap();
        }
        let ks = KeyStore::open(&path).unwrap();
        assert_eq!(ks.get(&a).unwrap(), Some(wa.to_vec()));
        ks.erase(&a).unwrap();
        assert_eq!(ks.get(&a).unwrap(), None);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(WRAPPED).any(|w| w == wa),
            "erased key still on disk"
        );
        assert!(bytes.windows(WRAPPED).any(|w| w == wb));
        let c = slot_id(b"case-c", 0);
        ks.put(&c, &[3u8; WRAPPED]).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * SLOT as u64,
            "free slot reused"
        );
        assert_ne!(slot_id(b"case-a", 0), slot_id(b"case-a", 1));
    }
}
