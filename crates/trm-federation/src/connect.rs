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
