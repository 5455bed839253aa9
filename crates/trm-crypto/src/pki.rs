//! Certificates of the federation. Every TLS key is ECDSA P-256 (standard gRPC clients in
//! other languages cannot handshake with Ed25519 TLS keys). Identities travel as SAN URIs:
//! `trm://node/<ID>` for nodes, `trm://client/<role>/<org>` for local clients.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use trm_core::ids::{self, NodeId, OrgId, Principal, Role};

use crate::{CryptoError, Result};

/// Validity of a certificate authority.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of a node's or a server's certificate.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// Default validity of a local client certificate (the CA/Browser Forum's 397 days).
pub const CLIENT_VALIDITY_DAYS: u32 = 397;

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").finish_non_exhaustive()
    }
}

/// A certificate authority that issues the federation's certificates.
pub struct Authority {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// The parameters of a certificate this authority issues: the request's name, a random
/// serial and a validity of `validity` from now (back-dated an hour for clock skew).
fn base_params(common_name: &str, validity: Duration) -> Result<CertificateParams> {
    let mut params = request_params(common_name)?;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn add_hosts(params: &mut CertificateParams, hosts: &[String]) -> Result<()> {
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.as_str().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    Ok(())
}

/// Makes `params` a node's federation certificate: `trm://node/<ID>` and `hosts`, server
/// and client authentication. What a node's certificate is, issued here or requested.
fn node_profile(params: &mut CertificateParams, node: NodeId, hosts: &[String]) -> Result<()> {
    params
        .subject_alt_names
        .push(SanType::URI(ids::node_uri(node).as_str().try_into()?));
    add_hosts(params, hosts)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(())
}

/// Makes `params` the server certificate of a node's local ports, valid for `hosts`.
fn server_profile(params: &mut CertificateParams, hosts: &[String]) -> Result<()> {
    add_hosts(params, hosts)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(())
}

impl Authority {
    /// Generates a new self-signed authority named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = base_params(common_name, CA_VALIDITY)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads an authority from its certificate and private key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem)?;
        // Parse once now, so a mismatched or broken certificate fails here.
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// Returns the authority's certificate (PEM): the trust anchor to distribute.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Returns the authority's private key (PEM), to be written with mode 0600.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issue(&self, params: CertificateParams) -> Result<CertifiedKey> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a node's federation certificate: server and client authentication, the node id
    /// as `trm://node/<ID>`, valid for `hosts` (DNS names or IP addresses).
    pub fn issue_node(&self, node: NodeId, hosts: &[String]) -> Result<CertifiedKey> {
        let mut params = base_params(&format!("trm node {node}"), LEAF_VALIDITY)?;
        node_profile(&mut params, node, hosts)?;
        self.issue(params)
    }

    /// Issues a server certificate for a node's local ports (services, admin).
    pub fn issue_server(&self, common_name: &str, hosts: &[String]) -> Result<CertifiedKey> {
        let mut params = base_params(common_name, LEAF_VALIDITY)?;
        server_profile(&mut params, hosts)?;
        self.issue(params)
    }

    /// Issues a local client certificate carrying `trm://client/<role>/<org>`, valid for
    /// [`CLIENT_VALIDITY_DAYS`].
    pub fn issue_client(&self, role: Role, org: &OrgId) -> Result<CertifiedKey> {
        self.issue_client_for(role, org, CLIENT_VALIDITY_DAYS)
    }

    /// Issues a local client certificate valid for `days` days.
    pub fn issue_client_for(&self, role: Role, org: &OrgId, days: u32) -> Result<CertifiedKey> {
        let now = OffsetDateTime::now_utc();
        self.issue_client_raw(
            &format!("{role} {org}"),
            &[ids::client_uri(role, org)],
            now - Duration::hours(1),
            now + Duration::days(i64::from(days)),
        )
    }

    /// Issues a client-authentication certificate with exactly the given URIs and validity:
    /// what operators of other tools, and tests of the refusals, need.
    pub fn issue_client_raw(
        &self,
        common_name: &str,
        uris: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertifiedKey> {
        let mut params = base_params(common_name, LEAF_VALIDITY)?;
        params.not_before = not_before;
        params.not_after = not_after;
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

/// A private key and a certificate signing request for it (PEM), for a certificate an
/// outside authority issues.
#[derive(Debug, Clone)]
pub struct Request {
    pub csr_pem: String,
    pub key_pem: String,
}

/// The parameters of a request: a name, no serial and no validity (the issuer sets both).
fn request_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "TRM federation");
    Ok(params)
}

fn request(params: CertificateParams) -> Result<Request> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = params.serialize_request(&key)?;
    Ok(Request {
        csr_pem: csr.pem()?,
        key_pem: key.serialize_pem(),
    })
}

/// Returns a request for a node's federation certificate: `trm://node/<ID>` and `hosts`,
/// server and client authentication (what [`Authority::issue_node`] issues).
pub fn request_node(node: NodeId, hosts: &[String]) -> Result<Request> {
    let mut params = request_params(&format!("trm node {node}"))?;
    node_profile(&mut params, node, hosts)?;
    request(params)
}

/// Returns a request for the server certificate of a node's local ports.
pub fn request_server(common_name: &str, hosts: &[String]) -> Result<Request> {
    let mut params = request_params(common_name)?;
    server_profile(&mut params, hosts)?;
    request(params)
}

/// What the node reads from an end-entity certificate to know its caller, in one parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Who issued it (see [`issuer_id`]).
    pub issuer: String,
    /// Its serial number (see [`serial_hex`]).
    pub serial: String,
    /// Its SAN URIs.
    pub uris: Vec<String>,
}

impl Leaf {
    /// Reads a DER certificate.
    pub fn parse(cert_der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|_| CryptoError::Certificate("cannot parse certificate".into()))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    uris.push((*uri).to_owned());
                }
            }
        }
        let serial = hex::encode(cert.raw_serial());
        let serial = match serial.trim_start_matches('0') {
            "" => "0".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        Ok(Self {
            issuer: name_id(cert.issuer().as_raw()),
            serial,
            uris,
        })
    }

    /// The node a federation certificate names: its one and only URI must be
    /// `trm://node/<ID>` (a certificate with several URIs names no one).
    pub fn node(&self) -> Option<NodeId> {
        match self.uris.as_slice() {
            [one] => ids::parse_node_uri(one),
            _ => None,
        }
    }

    /// The principal a local client certificate carries: its one and only URI must be
    /// `trm://client/<role>/<org>`.
    pub fn principal(&self) -> Option<Principal> {
        match self.uris.as_slice() {
            [one] => ids::parse_client_uri(one),
            _ => None,
        }
    }

    /// The identity its caller is known by (idempotent requests, request rates, connection
    /// counts): its issuer and serial, `<issuer_id>:<serial_hex>`. Two certificate
    /// authorities may give the same serial; never one issuer twice.
    pub fn caller_id(&self) -> String {
        format!("{}:{}", self.issuer, self.serial)
    }
}

/// The id of a certificate's name (DER): the first 16 lower-case hex characters of its
/// SHA-256.
fn name_id(name_der: &[u8]) -> String {
    hex::encode(&crate::sha256(name_der)[..8])
}

/// Returns the node id a federation certificate carries: its one and only URI must be
/// `trm://node/<ID>` (a certificate with several URIs names no one).
pub fn node_of(cert_der: &[u8]) -> Option<NodeId> {
    Leaf::parse(cert_der).ok()?.node()
}

/// Returns the principal a local client certificate carries: its one and only URI must be
/// `trm://client/<role>/<org>`.
pub fn principal_of(cert_der: &[u8]) -> Option<Principal> {
    Leaf::parse(cert_der).ok()?.principal()
}

/// Returns a certificate's serial number in lower-case hex, without separators or leading
/// zeros (the form `RevokeClientCertificate` takes).
pub fn serial_hex(cert_der: &[u8]) -> Option<String> {
    Some(Leaf::parse(cert_der).ok()?.serial)
}

/// Returns who issued a certificate, as callers are told apart together with the serial:
/// the first 16 lower-case hex characters of the SHA-256 of the issuer's name (DER).
pub fn issuer_id(cert_der: &[u8]) -> Option<String> {
    Some(Leaf::parse(cert_der).ok()?.issuer)
}

/// Returns the issuer id (see [`issuer_id`]) of the certificates a CA certificate issues:
/// the id of its subject.
pub fn subject_id(ca_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(ca_der).ok()?;
    Some(name_id(cert.subject().as_raw()))
}

/// Returns a certificate's end of validity.
pub fn not_after(cert_der: &[u8]) -> Option<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// Returns the DER of the first certificate in a PEM text.
pub fn first_der(pem_text: &str) -> Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| CryptoError::Certificate("not a PEM certificate".into()))?;
    Ok(pem.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_trm_identity() {
        let ca = Authority::generate("test ca").unwrap();
        let node = ca
            .issue_node(
                "AT".parse().unwrap(),
                &["localhost".into(), "127.0.0.1".into()],
            )
            .unwrap();
        let der = first_der(&node.cert_pem).unwrap();
        assert_eq!(node_of(&der), Some("AT".parse().unwrap()));
        assert_eq!(principal_of(&der), None);

        let org: OrgId = "sp1".parse().unwrap();
        let client = ca.issue_client(Role::ServiceProvider, &org).unwrap();
        let der = first_der(&client.cert_pem).unwrap();
        assert_eq!(
            principal_of(&der),
            Some(Principal {
                role: Role::ServiceProvider,
                org
            })
        );
        assert!(node.key_pem.contains("PRIVATE KEY"));

        let again = Authority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(again.issue_server("s", &["localhost".into()]).is_ok());
    }

    /// A client is told apart by its issuer and serial: two CAs' certificates never share
    /// a caller id, and the id names the serial the operator revokes.
    #[test]
    fn a_caller_is_its_issuer_and_serial() {
        let org: OrgId = "sp1".parse().unwrap();
        let (a, b) = (
            Authority::generate("ca a").unwrap(),
            Authority::generate("ca b").unwrap(),
        );
        let der_a = first_der(&a.issue_client(Role::FocalPoint, &org).unwrap().cert_pem).unwrap();
        let der_b = first_der(&b.issue_client(Role::FocalPoint, &org).unwrap().cert_pem).unwrap();
        let (leaf_a, leaf_b) = (Leaf::parse(&der_a).unwrap(), Leaf::parse(&der_b).unwrap());
        assert_eq!(leaf_a.principal(), leaf_b.principal());
        assert_ne!(leaf_a.caller_id(), leaf_b.caller_id());
        assert_eq!(
            Some(leaf_a.issuer.clone()),
            subject_id(&first_der(a.cert_pem()).unwrap())
        );
        assert_eq!(
            Some(leaf_a.caller_id()),
            issuer_id(&der_a)
                .zip(serial_hex(&der_a))
                .map(|(i, s)| format!("{i}:{s}"))
        );
        assert!(!leaf_a.serial.starts_with('0') && !leaf_a.serial.is_empty());
        assert_eq!(leaf_a.node(), None);
        assert!(Leaf::parse(b"not a certificate").is_err());
    }
}
