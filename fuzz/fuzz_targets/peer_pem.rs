//! Peer material: what an operator pastes or a peer presents. The input, as text, goes
//! through every parser of peer material: the trust anchor check of the directory
//! ([`PeerDirectory::check_anchor`]), a signing key's SPKI PEM as stored
//! ([`key_from_stored`]), the first certificate of a PEM text and its identity, serial and
//! validity ([`trm_crypto::pki`]); every certificate of the text, as a chain, and the raw
//! input as a DER leaf, go through the federation port's authentication
//! ([`PeerDirectory::authenticate`]) against a directory whose peer AT has the fixture CA.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use trm_crypto::pki;
use trm_federation::{directory::key_from_stored, PeerDirectory};
use trm_fuzz_common as fx;

fn directory() -> &'static Option<PeerDirectory> {
    static DIR: OnceLock<Option<PeerDirectory>> = OnceLock::new();
    DIR.get_or_init(|| PeerDirectory::new([fx::sender_peer().clone()]).ok())
}

fn certificate(der: &[u8]) {
    let _ = pki::node_of(der);
    let _ = pki::principal_of(der);
    let _ = pki::serial_hex(der);
    let _ = pki::not_after(der);
}

fuzz_target!(|data: &[u8]| {
    certificate(data);
    if let Some(dir) = directory() {
        let _ = dir.authenticate(&[CertificateDer::from(data)]);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = PeerDirectory::check_anchor(text);
    let _ = key_from_stored(&trm_store::repo::directory::StoredKey {
        public_pem: text.to_owned(),
        valid_from: None,
        valid_until: None,
    });
    if let Ok(der) = pki::first_der(text) {
        certificate(&der);
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(data)
        .take(8)
        .filter_map(Result::ok)
        .collect();
    if let (Some(dir), false) = (directory(), chain.is_empty()) {
        let _ = dir.authenticate(&chain);
    }
});
