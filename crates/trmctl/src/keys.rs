//! `trmctl keys init`: a node's own secrets, created once. An existing key is never
//! overwritten (a new master key would make every sealed record unreadable).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use trm_crypto::{aead::SecretKey, files, signing::SigningIdentity};
use trm_node::NodeConfig;

/// What `init` did with each key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysReport {
    /// Key id of the node's signing key.
    pub key_id: String,
    /// Where the signing public key (SPKI PEM) is, for the peers' directories.
    pub public_key: PathBuf,
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Creates the signing key and the master key named in `config` if they do not exist.
pub fn init(config: &Path) -> Result<KeysReport> {
    let cfg = NodeConfig::load_unvalidated(config)?;
    let mut created = Vec::new();
    let mut kept = Vec::new();
    let signing = if cfg.signing.key.is_file() {
        kept.push(cfg.signing.key.clone());
        SigningIdentity::load(&cfg.signing.key)?
    } else {
        ensure_parent(&cfg.signing.key)?;
        let id = SigningIdentity::generate();
        id.save(&cfg.signing.key)?;
        created.push(cfg.signing.key.clone());
        id
    };
    let public_key = cfg.signing.key.with_extension("pub.pem");
    files::write_public(
        &public_key,
        trm_crypto::signing::public_to_pem(&signing.public())?.as_bytes(),
    )?;
    if cfg.node.master_key.is_file() {
        SecretKey::load(&cfg.node.master_key)?;
        kept.push(cfg.node.master_key.clone());
    } else {
        ensure_parent(&cfg.node.master_key)?;
        SecretKey::generate().save(&cfg.node.master_key)?;
        created.push(cfg.node.master_key.clone());
    }
    Ok(KeysReport {
        key_id: signing.key_id().to_owned(),
        public_key,
        created,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_keys_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            "[node]\nid = \"AT\"\ndata_dir = \"data\"\n[tls]\nfederation_cert = \"a\"\nfederation_key = \"a\"\nfederation_ca = \"a\"\nservices_cert = \"a\"\nservices_key = \"a\"\nclient_ca = \"a\"\n[signing]\nkey = \"keys/signing.pem\"\n",
        )
        .unwrap();
        let first = init(&config).unwrap();
        assert_eq!(first.created.len(), 2);
        let master = std::fs::read(dir.path().join("keys/master.key")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["keys/master.key", "keys/signing.pem"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let second = init(&config).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(second.key_id, first.key_id);
        assert_eq!(
            std::fs::read(dir.path().join("keys/master.key")).unwrap(),
            master
        );
        assert!(std::fs::read_to_string(&second.public_key)
            .unwrap()
            .contains("PUBLIC KEY"));
    }
}
