//! How the engine reaches its PostgreSQL server: the connection string, libpq's `sslmode`,
//! the CA of the server's certificate, and the rule that a server off this machine is
//! reached only once its certificate is verified. TLS is rustls with the ring provider,
//! under tokio-postgres through `tokio-postgres-rustls` (its TLS stream, with channel
//! binding for SCRAM).
//!
//! Each mode means what it means to libpq:
//! - `disable`: no TLS;
//! - `prefer`: TLS when the server offers it, clear text otherwise;
//! - `require`: TLS; the certificate is not verified, unless a CA file is given: then it
//!   must chain to it, as with `verify-ca` (libpq's rule when a root certificate exists);
//! - `verify-ca`: TLS; the certificate chains to the CA file, whatever host it names;
//! - `verify-full`: TLS; the certificate chains to the CA file and names the host of the
//!   connection string.
//!
//! Without `sslmode`, a loopback host (or a Unix socket) gets `prefer`, libpq's default, and
//! any other host `verify-full`. A host that is not loopback is refused with any mode but
//! `verify-ca` or `verify-full`: whoever sits on the network path could otherwise pose as
//! the server and read everything the node stores and asks. A Unix socket carries no TLS
//! (the server does not offer it there), so `sslmode` does not apply to one, as with libpq.
//! The CA is the PEM file the caller names (`[storage] ca_file`); libpq's `sslrootcert` in
//! the string is refused, so that there is one place to look.

use std::{fmt, net::IpAddr, path::Path, sync::Arc, time::Duration};

use postgres::{
    config::{Host, SslMode as WireMode},
    Client, Config, NoTls,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`: whether TLS is used and what of the server is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// Returns the mode as the connection string spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Returns whether the server's certificate is verified whatever else is given.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection setting that cannot work, and which of the two it is (the caller names its
/// own key for it). The message never holds the connection string (it may carry a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// The connection string (the node's `[storage] url` or `url_file`).
    #[error("{0}")]
    Url(String),
    /// The CA file (the node's `[storage] ca_file`).
    #[error("{0}")]
    CaFile(String),
}

/// How to open connections to one server: the parsed connection string, the mode in
/// force, and the TLS set-up (`None`: clear text).
#[derive(Clone)]
pub struct Connector {
    config: Config,
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the string: it may carry a password.
        f.debug_struct("Connector")
            .field("mode", &self.mode)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The application name the engine's sessions show in `pg_stat_activity` unless the
/// connection string names one.
pub const APPLICATION_NAME: &str = "trm";

const DOES_NOT_PARSE: &str = "does not parse as a PostgreSQL URL (postgres://user@host:port/database?sslmode=verify-full) or key=value string";

impl Connector {
    /// Checks `url` (a `postgres://` URL or libpq `key=value` pairs) and the CA file, and
    /// prepares TLS: the rules of the module's documentation.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, SettingError> {
        let (rest, given) = take_sslmode(url)?;
        let mut config: Config = rest
            .parse()
            .map_err(|_| SettingError::Url(DOES_NOT_PARSE.into()))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(SettingError::Url(
                "names no host (e.g. postgres://trm@db.example:5432/trm)".into(),
            ));
        }
        let mode = mode_in_force(&config, given.as_deref(), ca_file)?;
        let roots = ca_file.map(load_roots).transpose()?;
        let wire = set_wire(&mut config, mode);
        let tls = match wire {
            WireMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(mode, roots)?)),
        };
        Ok(Self { config, mode, tls })
    }

    /// Returns the mode in force (the string's, or the default for its host).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens a connection (blocking: not on an async runtime's thread).
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

/// Returns the `sslmode` in force: the one `given` in the string, or the default for its
/// host (`verify-full` off this machine, `prefer` on it). Refused when it cannot work: a
/// mode that does not verify a host off this machine, a verifying mode without a CA file,
/// a CA file with no TLS.
fn mode_in_force(
    config: &Config,
    given: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<SslMode, SettingError> {
    let given = given
        .map(|m| {
            SslMode::parse(m).ok_or_else(|| {
                SettingError::Url(format!(
                    "sslmode={m}: must be disable, prefer, require, verify-ca or verify-full"
                ))
            })
        })
        .transpose()?;
    let remote = remote_host(config);
    let mode = given.unwrap_or(if remote.is_some() {
        SslMode::VerifyFull
    } else {
        SslMode::Prefer
    });
    if let Some(host) = &remote {
        if !mode.verifies() {
            return Err(SettingError::Url(format!(
                "sslmode={mode} does not verify the server, and the host {host} is not \
                 loopback: use sslmode=verify-full (or verify-ca) with the server's CA in ca_file"
            )));
        }
    }
    if mode.verifies() && ca_file.is_none() {
        let why = match (given, &remote) {
            (None, Some(host)) => format!(
                "the host {host} is not loopback, so its certificate is verified (sslmode \
                 verify-full unless the url says verify-ca)"
            ),
            _ => format!("sslmode={mode} verifies the server's certificate"),
        };
        return Err(SettingError::CaFile(format!(
            "missing: {why}; give the PEM file of the CA that signed it"
        )));
    }
    if mode == SslMode::Disable && ca_file.is_some() {
        return Err(SettingError::CaFile(
            "given, but sslmode=disable uses no TLS: remove one of them".into(),
        ));
    }
    Ok(mode)
}

/// Sets what tokio-postgres does on the wire for `mode` (the engine's verifier does the
/// rest), the bounds on a network that stops answering and the application name; returns
/// the wire mode.
fn set_wire(config: &mut Config, mode: SslMode) -> WireMode {
    let wire = if unix_sockets_only(config) {
        WireMode::Disable
    } else {
        match mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    };
    config.ssl_mode(wire);
    // Bounds on a network that stops answering (a database host gone without closing
    // its connections must fail requests, not hang them): the string's own
    // `connect_timeout` or 5 s, and 10 s for unacknowledged data and idle keepalives.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config
        .tcp_user_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    wire
}

/// Says why a connection failed when the server's certificate was refused (which file or
/// name to check); `None` for any other failure.
pub fn certificate_problem(e: &postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let refused = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| c.downcast_ref::<rustls::Error>());
        if let Some(refused @ rustls::Error::InvalidCertificate(problem)) = refused {
            let hint = match problem {
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "it does not name the host of the url (sslmode=verify-full): connect by a \
                     name the certificate holds"
                }
                rustls::CertificateError::UnknownIssuer
                | rustls::CertificateError::BadSignature => {
                    "it is not signed by the CA of ca_file: give the CA that signed the \
                     server's certificate"
                }
                _ => "check the server's certificate and the CA in ca_file",
            };
            return Some(format!(
                "the PostgreSQL server's certificate is refused ({refused}): {hint}"
            ));
        }
        cause = c.source();
    }
    None
}

/// Returns the first host of `config` that is not on this machine (a host name other than
/// `localhost`, an address outside loopback), or `None` when every one is.
fn remote_host(config: &Config) -> Option<String> {
    let hosts = config.get_hosts().iter().filter_map(|h| match h {
        Host::Tcp(name) if !loopback_name(name) => Some(name.clone()),
        _ => None,
    });
    let addrs = config
        .get_hostaddrs()
        .iter()
        .filter(|a| !a.is_loopback())
        .map(|a| a.to_string());
    hosts.chain(addrs).next()
}

fn loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn unix_sockets_only(config: &Config) -> bool {
    config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
}

/// Takes `sslmode` out of a connection string (tokio-postgres knows `disable`, `prefer`
/// and `require` only; the engine applies the mode itself): the rest, and the mode's value
/// (the last one given, as libpq takes it). Refused: a string that does not parse, and the
/// TLS files of libpq (the CA comes from the CA file; client certificates are not used).
fn take_sslmode(s: &str) -> Result<(String, Option<String>), SettingError> {
    let (rest, params) = match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| s.starts_with(**p))
    {
        Some(prefix) => url_params(s, prefix.len()),
        None => pairs(s),
    }
    .ok_or_else(|| SettingError::Url(DOES_NOT_PARSE.into()))?;
    if let Some((key, _)) = params
        .iter()
        .find(|(k, _)| matches!(k.as_str(), "sslrootcert" | "sslcert" | "sslkey" | "sslcrl"))
    {
        return Err(SettingError::Url(format!(
            "{key} is not read: give the server's CA in ca_file (client certificates are not used)"
        )));
    }
    let mode = params
        .iter()
        .rev()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.clone());
    Ok((rest, mode))
}

/// The string without its `sslmode`, and every parameter of a URL's query (decoded).
/// The credentials end at the first `@` and the query starts at the first `?` after them,
/// as tokio-postgres reads a URL.
fn url_params(s: &str, start: usize) -> Option<(String, Vec<(String, String)>)> {
    let after_credentials = s[start..].find('@').map_or(start, |i| start + i + 1);
    let Some(q) = s[after_credentials..]
        .find('?')
        .map(|i| after_credentials + i)
    else {
        return Some((s.to_owned(), Vec::new()));
    };
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    };
    let mut params = Vec::new();
    let mut kept = Vec::new();
    for pair in s[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        let (k, v) = (decode(k)?, decode(v)?);
        if k != "sslmode" {
            kept.push(pair);
        }
        params.push((k, v));
    }
    let mut rest = s[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Some((rest, params))
}

/// The string without its `sslmode`, and every parameter of libpq `key=value` pairs (a
/// value quoted in `'` or not, `\` escaping the next character), as tokio-postgres reads
/// them.
fn pairs(s: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut it = s.char_indices().peekable();
    let mut rest = String::new();
    let mut params = Vec::new();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return None;
        }
        skip_ws(&mut it);
        it.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        let end = it.peek().map_or(s.len(), |&(i, _)| i);
        if key != "sslmode" {
            rest.push_str(&s[start..end]);
            rest.push(' ');
        }
        params.push((key, value));
    }
    Some((rest, params))
}

/// Reads the CA certificates of `path` (PEM; other sections, such as a key, are passed
/// over): at least one, each one a certificate.
fn load_roots(path: &Path) -> Result<RootCertStore, SettingError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| SettingError::CaFile(format!("{shown} cannot be read: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| SettingError::CaFile(format!("{shown} is not PEM text: {e}")))?;
        roots.add(cert).map_err(|e| {
            SettingError::CaFile(format!(
                "{shown} holds a certificate that does not parse: {e}"
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(SettingError::CaFile(format!(
            "{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(roots)
}

/// The TLS client of `mode`: `verify-full` checks chain and name; `verify-ca`, and
/// `require` or `prefer` with a CA, the chain only; `require` or `prefer` without a CA
/// nothing of the certificate (the handshake's signatures still).
fn client_config(
    mode: SslMode,
    roots: Option<RootCertStore>,
) -> Result<ClientConfig, SettingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError::CaFile(format!("TLS cannot be set up: {e}")))?;
    let config = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
        (_, roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOrNothing {
                roots: roots.map(Arc::new),
                algorithms,
            })),
    };
    Ok(config.with_no_client_auth())
}

/// Every mode but `verify-full`. With `roots` (`verify-ca`, and `require` or `prefer` with
/// a CA): the certificate chains to one of them, whatever name it holds. Without (`require`
/// and `prefer` without a CA, loopback only): encryption, no verification of the
/// certificate, as libpq does. The handshake's signatures are checked either way.
#[derive(Debug)]
struct ChainOrNothing {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOrNothing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_problem(url: &str, ca: Option<&Path>) -> String {
        match Connector::new(url, ca) {
            Err(SettingError::Url(p)) => p,
            other => panic!("{url}: {other:?}"),
        }
    }

    fn ca_problem(url: &str, ca: Option<&Path>) -> String {
        match Connector::new(url, ca) {
            Err(SettingError::CaFile(p)) => p,
            other => panic!("{url}: {other:?}"),
        }
    }

    /// A CA certificate in a PEM file of a temporary folder.
    fn ca_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = trm_crypto::pki::Authority::generate("test postgresql ca").unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).unwrap();
        (dir, path)
    }

    #[test]
    fn sslmode_is_taken_out_of_urls_and_key_value_strings() {
        let cases = [
            (
                "postgres://trm:p%40ss@db.example:5432/trm?sslmode=verify-full&connect_timeout=2",
                "postgres://trm:p%40ss@db.example:5432/trm?connect_timeout=2",
                Some("verify-full"),
            ),
            (
                "postgresql://trm@db/trm?sslmode=verify%2Dca",
                "postgresql://trm@db/trm",
                Some("verify-ca"),
            ),
            // A '?' in the password is not the start of the parameters.
            (
                "postgres://trm:a?b@db/trm?sslmode=require",
                "postgres://trm:a?b@db/trm",
                Some("require"),
            ),
            ("postgres://trm@db/trm", "postgres://trm@db/trm", None),
            (
                "host=db.example user=trm sslmode = 'verify-full' dbname=trm",
                "host=db.example user=trm dbname=trm ",
                Some("verify-full"),
            ),
            (
                "host=db password='it\\'s x' sslmode=disable sslmode=verify-ca",
                "",
                Some("verify-ca"),
            ),
        ];
        for (url, rest, mode) in cases {
            match take_sslmode(url) {
                Ok((r, m)) => {
                    if !rest.is_empty() {
                        assert_eq!(r, rest, "{url}");
                    }
                    assert_eq!(m.as_deref(), mode, "{url}");
                    let config: Config = r.parse().unwrap_or_else(|e| panic!("{r}: {e}"));
                    if url.contains("password") {
                        assert_eq!(config.get_password(), Some(&b"it's x"[..]));
                    }
                }
                Err(e) => panic!("{url}: {e}"),
            }
        }
    }

    #[test]
    fn loopback_hosts_and_sockets_default_to_prefer_as_libpq_does() {
        for url in [
            "postgres://root@127.0.0.1:5432/test",
            "postgres://root@localhost/test",
            "postgres://root@[::1]:5432/test",
            "host=/var/run/postgresql user=trm dbname=trm",
            "postgres://trm@%2Fvar%2Frun%2Fpostgresql/trm",
            // As deploy/compose-replicas.yaml reaches its primary.
            "postgres://trm:trm-sandbox@/trm?host=/pg-socket",
        ] {
            let c = Connector::new(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(c.mode(), SslMode::Prefer, "{url}");
        }
        // On a Unix socket there is no TLS to ask for.
        let c = Connector::new("host=/run/postgresql user=trm", None).unwrap();
        assert!(c.tls.is_none());
        let c = Connector::new("postgres://root@127.0.0.1/test", None).unwrap();
        assert!(c.tls.is_some(), "prefer: TLS when the server offers it");
        let c = Connector::new("postgres://root@127.0.0.1/test?sslmode=disable", None).unwrap();
        assert!(c.tls.is_none());
    }

    #[test]
    fn a_host_off_this_machine_is_refused_unless_its_certificate_is_verified() {
        for mode in ["disable", "prefer", "require"] {
            let url = format!("postgres://trm:s3cret@db.example/trm?sslmode={mode}");
            let p = url_problem(&url, None);
            assert!(
                p.contains(&format!("sslmode={mode} does not verify")),
                "{p}"
            );
            assert!(p.contains("db.example") && p.contains("verify-full"), "{p}");
            assert!(!p.contains("s3cret"), "no password in {p}");
        }
        // An address of the host's own network is not loopback either; hostaddr counts.
        url_problem("postgres://trm@10.1.2.3/trm?sslmode=require", None);
        url_problem(
            "host=localhost hostaddr=192.0.2.7 user=trm sslmode=require",
            None,
        );
        // Verified: a CA is needed.
        let p = ca_problem("postgres://trm@db.example/trm", None);
        assert!(p.contains("db.example is not loopback"), "{p}");
        let p = ca_problem("postgres://trm@db.example/trm?sslmode=verify-ca", None);
        assert!(p.contains("sslmode=verify-ca"), "{p}");
        let (_dir, ca) = ca_file();
        for (url, mode) in [
            ("postgres://trm@db.example/trm", SslMode::VerifyFull),
            (
                "postgres://trm@db.example/trm?sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            (
                "postgres://trm@db.example/trm?sslmode=verify-ca",
                SslMode::VerifyCa,
            ),
            (
                "host=db.example user=trm sslmode=verify-full",
                SslMode::VerifyFull,
            ),
        ] {
            let c = Connector::new(url, Some(&ca)).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(c.mode(), mode, "{url}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_problem() {
        let p = url_problem("postgres://trm@localhost/trm?sslmode=allow", None);
        assert!(p.contains("sslmode=allow"), "{p}");
        let p = url_problem(
            "postgres://trm@db.example/trm?sslrootcert=/etc/ca.pem&sslmode=verify-full",
            None,
        );
        assert!(p.contains("sslrootcert") && p.contains("ca_file"), "{p}");
        let p = url_problem("postgres://trm:s3cret@db.example:port/trm", None);
        assert!(p.contains("does not parse") && !p.contains("s3cret"), "{p}");
        let p = url_problem("user=trm password='s3cret", None);
        assert!(p.contains("does not parse") && !p.contains("s3cret"), "{p}");
        url_problem("user=trm dbname=trm", None); // no host
        let (dir, ca) = ca_file();
        let p = ca_problem("postgres://trm@localhost/trm?sslmode=disable", Some(&ca));
        assert!(p.contains("sslmode=disable"), "{p}");
        let missing = dir.path().join("missing.pem");
        let p = ca_problem("postgres://trm@db.example/trm", Some(&missing));
        assert!(p.contains("cannot be read"), "{p}");
        let key_only = dir.path().join("key.pem");
        let key = trm_crypto::pki::Authority::generate("a key")
            .unwrap()
            .key_pem();
        std::fs::write(&key_only, key).unwrap();
        let p = ca_problem("postgres://trm@db.example/trm", Some(&key_only));
        assert!(p.contains("no PEM certificate"), "{p}");
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let p = ca_problem("postgres://trm@db.example/trm", Some(&bad));
        assert!(p.contains("does not parse"), "{p}");
    }
}
