//! Outbound connections to a peer's federation port. The TLS handshake checks the chain
//! against the peer's trust anchor; then the server's certificate must carry the peer's
//! own identity (`trm://node/<ID>`), so another node of the same federation CA cannot pose
//! as it (a DNS or routing mistake must not hand a victim's data to the wrong country).

use std::{io, sync::Arc, time::Duration};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use trm_core::ids::NodeId;

use crate::Peer;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Builds the TLS client configuration for `peer`: its trust anchor, our certificate.
fn client_config(peer: &Peer, cert_pem: &str, key_pem: &str) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(peer.tls_ca_pem.as_bytes()) {
        let cert = cert.map_err(|_| invalid("peer trust anchor is not PEM"))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("peer trust anchor: {e}")))?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("federation certificate is not PEM"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| invalid("federation key is not PEM"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(format!("federation certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Returns a lazily connecting channel to `peer` that presents our federation certificate
/// and accepts only a server proving `peer`'s identity.
pub fn channel(
    peer: &Peer,
    cert_pem: &str,
    key_pem: &str,
    timeout: Duration,
) -> io::Result<Channel> {
    let config = Arc::new(client_config(peer, cert_pem, key_pem)?);
    let endpoint = peer.endpoint.clone();
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .ok_or_else(|| invalid("peer endpoint must be host:port"))?;
    let server_name = ServerName::try_from(host)
        .map_err(|_| invalid("peer endpoint host is not a valid name"))?;
    let expected: NodeId = peer.id;
    let pinned = peer.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let config = config.clone();
        let endpoint = endpoint.clone();
        let server_name = server_name.clone();
        let pinned = pinned.clone();
        async move {
            let tcp = TcpStream::connect(&endpoint).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first());
            if !leaf.is_some_and(|c| pinned.pin_matches(c.as_ref())) {
                return Err(invalid(format!(
                    "server at {endpoint} does not present the certificate pinned for {expected}"
                )));
            }
            let presented = leaf.and_then(|c| trm_crypto::pki::node_of(c.as_ref()));
            if presented != Some(expected) {
                return Err(invalid(format!(
                    "server at {endpoint} does not prove the identity of node {expected}"
                )));
            }
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    let uri = format!("http://{}", peer.endpoint);
    Ok(Endpoint::from_shared(uri)
        .map_err(|_| invalid("peer endpoint is not a valid address"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(connector))
}

/// Returns, for people, why a call to `peer` at `endpoint` failed and what usually causes
/// it: the gRPC status of a peer that answered, or the transport error underneath tonic's
/// "transport error" (connection refused, timeout, a certificate refused on either side).
pub fn explain(status: &tonic::Status, peer: NodeId, endpoint: &str) -> String {
    // A status made on this side from a failed connection carries its cause; a peer's
    // answer carries none.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    if cause.is_none() && status.message() != "transport error" {
        return explain_refusal(status, peer);
    }
    let mut deepest = status.message().to_owned();
    while let Some(e) = cause {
        if let Some(why) = transport_cause(e, peer, endpoint) {
            return why;
        }
        deepest = e.to_string();
        cause = e.source();
    }
    // The HTTP/2 layer may keep the TLS failure only as text.
    if let Some(why) = tls_cause_in_text(&deepest, peer, endpoint) {
        return why;
    }
    format!("{deepest} (connecting to {endpoint})")
}

/// Explains a TLS failure known only by its text (rustls's own wording).
fn tls_cause_in_text(text: &str, peer: NodeId, endpoint: &str) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C};
    let alerts = [
        ("UnknownCA", A::UnknownCA),
        ("BadCertificate", A::BadCertificate),
        ("CertificateUnknown", A::CertificateUnknown),
        ("AccessDenied", A::AccessDenied),
        ("CertificateRevoked", A::CertificateRevoked),
        ("CertificateRequired", A::CertificateRequired),
        ("CertificateExpired", A::CertificateExpired),
        ("DecryptError", A::DecryptError),
    ];
    if text.contains("received fatal alert") {
        let alert = alerts.iter().find(|(name, _)| text.contains(name))?.1;
        return Some(tls_cause(
            &rustls::Error::AlertReceived(alert),
            peer,
            endpoint,
        ));
    }
    let certificate = [
        ("UnknownIssuer", C::UnknownIssuer),
        ("BadSignature", C::BadSignature),
        ("NotValidForName", C::NotValidForName),
        ("Expired", C::Expired),
    ];
    if text.contains("invalid peer certificate") {
        let error = certificate
            .into_iter()
            .find(|(name, _)| text.contains(name))?
            .1;
        return Some(tls_cause(
            &rustls::Error::InvalidCertificate(error),
            peer,
            endpoint,
        ));
    }
    None
}

/// Explains a gRPC refusal from a peer that answered.
fn explain_refusal(status: &tonic::Status, peer: NodeId) -> String {
    let message = status.message();
    let said = format!("{:?}: {message}", status.code());
    let label = message.split(':').next().unwrap_or_default();
    match label {
        "unknown_key" => format!(
            "{said}; {peer} does not hold our current signing key: its operator adds it with \
             `trmctl peer update --node-id <us> --signing-key <file>`, the file from our \
             `trmctl keys show`"
        ),
        "unknown_peer" => format!(
            "{said}; {peer} does not list this node as a peer: its operator adds us with \
             `trmctl peer add`"
        ),
        "removed_peer" => format!(
            "{said}; {peer}'s operator removed this node from its peers: it takes nothing from \
             us until it adds us again"
        ),
        "untrusted_certificate" => format!(
            "{said}; our federation certificate does not chain to the CA {peer} holds for us: \
             its operator sets our federation CA with `trmctl peer update --tls-ca`"
        ),
        _ => said,
    }
}

/// Explains one error of the chain under a failed connection, if it is one we know.
fn transport_cause(
    e: &(dyn std::error::Error + 'static),
    peer: NodeId,
    endpoint: &str,
) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls_cause(tls, peer, endpoint));
    }
    let io = e.downcast_ref::<io::Error>()?;
    if let Some(tls) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(tls_cause(tls, peer, endpoint));
    }
    Some(match io.kind() {
        io::ErrorKind::ConnectionRefused => format!(
            "nothing accepts connections at {endpoint}: {peer}'s node is down, or the endpoint \
             (host or port) is wrong"
        ),
        io::ErrorKind::TimedOut => format!(
            "no answer from {endpoint}: a firewall drops the traffic, or the endpoint is wrong"
        ),
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => format!(
            "{endpoint} closed the connection during the TLS handshake: most likely {peer} has \
             not added this node as a peer yet (or holds another CA for us), so it refuses our \
             federation certificate; or the endpoint is not {peer}'s federation port"
        ),
        io::ErrorKind::InvalidData if io.to_string().contains("does not") => {
            format!("{io}")
        }
        _ if io.to_string().contains("failed to lookup")
            || io.to_string().contains("Name or service not known") =>
        {
            format!("cannot resolve the host of {endpoint}: check the endpoint")
        }
        _ => return None,
    })
}

/// Explains a TLS failure with `peer`.
fn tls_cause(e: &rustls::Error, peer: NodeId, endpoint: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C};
    match e {
        rustls::Error::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::AccessDenied
            | A::CertificateRevoked
            | A::CertificateRequired
            | A::DecryptError,
        ) => format!(
            "{peer} refused our federation certificate in the TLS handshake ({e}): most likely \
             {peer} has not added this node as a peer yet (its operator runs `trmctl peer add` \
             with our federation CA and signing key), or it holds another CA for us"
        ),
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            format!("{peer} refused our federation certificate as expired: renew it")
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the certificate at {endpoint} does not chain to the CA we hold for {peer}: the CA \
             given with `trmctl peer add|update --tls-ca` is not {peer}'s federation CA, or the \
             endpoint is another server"
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "the certificate at {endpoint} is not valid for its host name: use an endpoint \
             whose host {peer}'s federation certificate names"
        ),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the certificate at {endpoint} has expired: {peer} must renew it")
        }
        other => format!("TLS handshake with {endpoint} failed: {other}"),
    }
}
