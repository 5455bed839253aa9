//! `trmctl client issue` and `client list`: local client certificates signed by a node's
//! client CA, and the register of every certificate issued, kept beside the CA's key
//! (`<client_ca_key>` with the extension `issued.jsonl`: one JSON object a line; serials,
//! roles, organisations and dates only) so that an operator can see what is out there.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::ids::{OrgId, Role};
use trm_crypto::{files, pki::Authority};
use trm_node::NodeConfig;

/// One certificate of the register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Lower-case hex, no separators or leading zeros (as `client revoke --serial` takes it).
    pub serial_hex: String,
    pub role: String,
    pub org: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// What `issue` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueReport {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub issued: Issued,
}

/// Returns the register beside a client CA's private key.
pub fn register_path(client_ca_key: &Path) -> PathBuf {
    client_ca_key.with_extension("issued.jsonl")
}

/// Returns the register entry of a certificate (PEM) issued for `role` and `org`.
pub fn entry_of(cert_pem: &str, role: Role, org: &OrgId) -> Result<Issued> {
    let der = trm_crypto::pki::first_der(cert_pem)?;
    Ok(Issued {
        serial_hex: trm_crypto::pki::serial_hex(&der)
            .context("the issued certificate has no readable serial")?,
        role: role.to_string(),
        org: org.to_string(),
        issued_at: OffsetDateTime::now_utc(),
        not_after: trm_crypto::pki::not_after(&der)
            .context("the issued certificate has no readable validity")?,
    })
}

/// Appends `entry` to the register at `path` (created if missing).
pub fn record(path: &Path, entry: &Issued) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "opening the register of issued certificates {}",
                path.display()
            )
        })?;
    let mut line = serde_json::to_string(entry)?;
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing to {}", path.display()))
}

/// Reads the register at `path` (empty when it does not exist yet).
pub fn read_register(path: &Path) -> Result<Vec<Issued>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{} line {} is not a register entry", path.display(), i + 1)
            })
        })
        .collect()
}

/// Returns the register of the node configured in `config`; refused where the client CA's
/// key is not (certificates are issued, and registered, where it is).
pub fn register_of(config: &Path) -> Result<PathBuf> {
    let cfg = NodeConfig::load(config)?;
    match cfg.tls.client_ca_key.as_ref() {
        Some(key) => Ok(register_path(key)),
        None => bail!(
            "tls.client_ca_key is not set in {}: certificates are issued, and registered, on \
             the host that holds the client CA's key; run this command there",
            config.display()
        ),
    }
}

/// Issues a client certificate for `role` and `org`, valid for `days` days, from the client
/// CA of the node configured in `config`; writes `PREFIX.pem` and `PREFIX.key` (mode 0600)
/// and records it in the register.
pub fn issue(config: &Path, role: Role, org: &OrgId, out: &Path, days: u32) -> Result<IssueReport> {
    if days == 0 || days > 3650 {
        bail!("--days must be between 1 and 3650");
    }
    let cfg = NodeConfig::load(config)?;
    let Some(ca_key) = cfg.tls.client_ca_key.as_ref() else {
        bail!(
            "tls.client_ca_key is not set in {}: this host cannot issue client certificates",
            config.display()
        );
    };
    let ca = Authority::load(
        &files::read_text(&cfg.tls.client_ca)?,
        &files::read_text(ca_key)?,
    )
    .context("loading the client CA")?;
    let issued = ca.issue_client_for(role, org, days)?;
    let cert = with_ext(out, "pem");
    let key = with_ext(out, "key");
    files::write_public(&cert, issued.cert_pem.as_bytes())?;
    files::write_secret(&key, issued.key_pem.as_bytes())?;
    let entry = entry_of(&issued.cert_pem, role, org)?;
    record(&register_path(ca_key), &entry)?;
    Ok(IssueReport {
        cert,
        key,
        issued: entry,
    })
}

/// A browser's copy of an issued certificate: `PREFIX.p12` and the passphrase it is
/// encrypted under (to hand to the person apart from the file).
#[derive(Debug, Clone)]
pub struct BrowserBundle {
    pub p12: PathBuf,
    pub passphrase: String,
}

/// Writes the certificate and key of an issue (`report`), with the client CA, as `PREFIX.p12`
/// (mode 0600), encrypted under a passphrase generated here (128 random bits), returned and
/// never written.
pub fn write_p12(config: &Path, report: &IssueReport, out: &Path) -> Result<BrowserBundle> {
    let cfg = NodeConfig::load(config)?;
    let passphrase = uuid::Uuid::new_v4().simple().to_string();
    let alias = format!("TRM {} {}", report.issued.role, report.issued.org);
    let bytes = p12_bytes(
        (&files::read(&report.cert)?, &files::read(&report.key)?),
        &files::read(&cfg.tls.client_ca)?,
        &alias,
        &passphrase,
    )?;
    let p12 = with_ext(out, "p12");
    files::write_secret(&p12, &bytes)?;
    Ok(BrowserBundle { p12, passphrase })
}

/// Returns a PKCS#12 file a browser imports: the certificate and its key (`PEM`s), with
/// the CA, encrypted with PBES2 (PBKDF2-HMAC-SHA-256, AES-256-CBC) under `passphrase`, with
/// an HMAC-SHA-256 MAC (what browsers and `openssl pkcs12` read).
pub fn p12_bytes(
    (cert_pem, key_pem): (&[u8], &[u8]),
    ca_pem: &[u8],
    alias: &str,
    passphrase: &str,
) -> Result<Vec<u8>> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let mut certs = Vec::new();
    for pem in [cert_pem, ca_pem] {
        for der in CertificateDer::pem_slice_iter(pem) {
            certs.push(p12_keystore::Certificate::from_der(der?.as_ref())?);
        }
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem)? {
        PrivateKeyDer::Pkcs8(k) => p12_keystore::PrivateKey::from_der(k.secret_pkcs8_der())?,
        _ => bail!("the client key is not a PKCS#8 key"),
    };
    let local_id = uuid::Uuid::new_v4().into_bytes().to_vec();
    let chain = p12_keystore::PrivateKeyChain::new(local_id, key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(alias, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    Ok(store
        .writer(passphrase)
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
        .write()?)
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser's bundle opens with its passphrase, in this crate's reader and in openssl,
    /// and holds exactly the issued certificate, its key and the CA; a wrong passphrase
    /// opens nothing.
    #[test]
    fn a_p12_holds_the_certificate_its_key_and_the_ca_under_its_passphrase() {
        let ca = Authority::generate("test client CA").unwrap();
        let org: OrgId = "ngo-lefo".parse().unwrap();
        let c = ca.issue_client(Role::FocalPoint, &org).unwrap();
        let bytes = p12_bytes(
            (c.cert_pem.as_bytes(), c.key_pem.as_bytes()),
            ca.cert_pem().as_bytes(),
            "TRM focal_point ngo-lefo",
            "correct horse",
        )
        .unwrap();
        let policy = p12_keystore::Pkcs12ImportPolicy::Strict;
        assert!(p12_keystore::KeyStore::from_pkcs12(&bytes, "wrong", policy).is_err());
        let store = p12_keystore::KeyStore::from_pkcs12(&bytes, "correct horse", policy).unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, "TRM focal_point ngo-lefo");
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        let leaf = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        assert_eq!(chain.certs()[0].as_der(), leaf.as_ref());
        assert_eq!(chain.certs().len(), 2, "the certificate and its CA");
        // openssl (what an operator or a browser's import would rely on) reads it too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp.p12");
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-in"])
            .arg(&path)
            .args(["-passin", "pass:correct horse", "-clcerts", "-nokeys"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        let got = CertificateDer::from_pem_slice(printed.as_bytes()).unwrap();
        assert_eq!(got.as_ref(), leaf.as_ref());
    }

    #[test]
    fn the_register_keeps_every_issued_certificate_in_order_and_an_absent_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = register_path(&dir.path().join("client-ca.key"));
        assert_eq!(path, dir.path().join("client-ca.issued.jsonl"));
        assert!(read_register(&path).unwrap().is_empty());
        let ca = Authority::generate("test client CA").unwrap();
        let org: OrgId = "ngo-lefo".parse().unwrap();
        for role in [Role::ServiceProvider, Role::Operator] {
            let c = ca.issue_client(role, &org).unwrap();
            record(&path, &entry_of(&c.cert_pem, role, &org).unwrap()).unwrap();
        }
        let all = read_register(&path).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].role, "service_provider");
        assert_eq!(all[1].role, "operator");
        assert_ne!(all[0].serial_hex, all[1].serial_hex);
        assert!(!all[0].serial_hex.starts_with('0'));
        std::fs::write(&path, "not json\n").unwrap();
        let err = read_register(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
