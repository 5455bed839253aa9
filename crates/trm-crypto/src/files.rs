//! Writing key material and certificates to disk.

use std::{fs, io::Write, path::Path};

use crate::{CryptoError, Result};

fn key_file_error(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::KeyFile {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a secret (private key, master key) readable by the owner only (mode 0600), and
/// syncs it to disk. The file is created with that mode, never widened afterwards.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| key_file_error(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| key_file_error(path, e))?;
    }
    file.write_all(bytes).map_err(|e| key_file_error(path, e))?;
    file.sync_all().map_err(|e| key_file_error(path, e))
}

/// Writes a public file (certificate, public key).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| key_file_error(path, e))
}

/// Reads a file holding key material or a certificate.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| key_file_error(path, e))
}

/// Reads a text file (PEM).
pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| key_file_error(path, e))
}
