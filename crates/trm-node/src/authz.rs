//! Who is calling: the principal in the client certificate (`trm://client/<role>/<org>`),
//! and what each role may do (DESIGN.md, "Identities and trust").

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use rustls::pki_types::CertificateDer;
use tonic::Request;
use trm_core::{access::Action, ids::Principal, FieldError};
use trm_crypto::pki::Leaf;

use crate::{
    ctx::{Idempotent, Retryable},
    error::{ApiError, ApiResult},
};

/// The client certificate chain of a request the console makes in process on behalf of a
/// browser that presented it (checked by the console's TLS handshake against the same
/// client CA). Only code of this node can set a request extension: a remote caller cannot.
#[derive(Debug, Clone)]
pub struct ClientCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Returns the client certificate chain of a local request: the TLS connection's, or the
/// one the console passes on.
pub fn peer_certs<T>(request: &Request<T>) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    request.peer_certs().or_else(|| {
        request
            .extensions()
            .get::<ClientCertificates>()
            .map(|c| c.0.clone())
    })
}

/// How many certificates [`leaf`] keeps read: more than a node has clients connected.
const LEAVES_KEPT: usize = 1024;

/// The largest certificate [`leaf`] keeps (ours are under 1 KiB): the cache holds at most
/// `LEAVES_KEPT` times this.
const LEAF_KEPT_BYTES: usize = 4096;

/// The certificates read, by their DER.
type Leaves = Mutex<HashMap<Box<[u8]>, Arc<Leaf>>>;

/// Returns what a client certificate says of its caller, read once per certificate: every
/// request of a connection presents the same one, and the gate, the principal and the retry
/// key each ask (the parse was a measurable share of a request's CPU). `None`: it does not
/// parse.
pub fn leaf(der: &[u8]) -> Option<Arc<Leaf>> {
    static READ: OnceLock<Leaves> = OnceLock::new();
    let read = READ.get_or_init(Default::default);
    if let Some(l) = read.lock().unwrap_or_else(PoisonError::into_inner).get(der) {
        return Some(l.clone());
    }
    let l = Arc::new(Leaf::parse(der).ok()?);
    if der.len() > LEAF_KEPT_BYTES {
        return Some(l);
    }
    let mut kept = read.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.len() >= LEAVES_KEPT {
        kept.clear();
    }
    kept.insert(der.into(), l.clone());
    Some(l)
}

/// Returns the principal of a local request; UNAUTHENTICATED without a usable client
/// certificate (the TLS handshake already checked its chain to the client CA).
pub fn principal<T>(request: &Request<T>) -> Result<Principal, ApiError> {
    peer_certs(request)
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| leaf(c.as_ref()))
                .and_then(|l| l.principal())
        })
        .ok_or(ApiError::Unauthenticated(
            "client certificate carries no trm://client/<role>/<org> identity",
        ))
}

/// The caller of a mutating request: its principal, allowed `action` by the role table,
/// and the request's retry id. Checked before the request body is read.
pub fn caller<M: Retryable>(
    request: &Request<M>,
    action: Action,
) -> ApiResult<(Principal, Option<Idempotent>)> {
    let p = principal(request)?;
    trm_core::access::require(&p, action)?;
    Ok((p, Idempotent::of(request)?))
}

/// The caller of a read: its principal, allowed `action` by the role table before the
/// request is read (as every RPC does), and the request parsed (`Get`, `List` ...).
pub fn reader<M, Q>(request: &Request<M>, action: Action) -> ApiResult<(Principal, Q)>
where
    for<'a> Q: TryFrom<&'a M, Error = FieldError>,
{
    let p = principal(request)?;
    trm_core::access::require(&p, action)?;
    Ok((p, Q::try_from(request.get_ref())?))
}

/// Returns the key of the client certificate of a request (its issuer and serial number),
/// which idempotent requests are remembered under.
pub fn client_key<T>(request: &Request<T>) -> String {
    peer_certs(request)
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| leaf(c.as_ref()))
                .map(|l| l.caller_id())
        })
        .unwrap_or_default()
}

/// Returns the audit actor name of a principal.
pub fn actor(p: &Principal) -> String {
    format!("client:{}/{}", p.role, p.org)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trm_core::ids::Role;

    #[test]
    fn the_audit_names_the_caller_by_role_and_organisation() {
        let provider = Principal {
            role: Role::ServiceProvider,
            org: "sp1".parse().unwrap(),
        };
        assert_eq!(actor(&provider), "client:service_provider/sp1");
    }
}
