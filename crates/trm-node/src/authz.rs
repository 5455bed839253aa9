//! Who is calling: the principal in the client certificate (`trm://client/<role>/<org>`),
//! and what each role may do (DESIGN.md, "Identities and trust").

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tonic::Request;
use trm_core::{access::Action, ids::Principal, FieldError};

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

/// Returns the principal of a local request; UNAUTHENTICATED without a usable client
/// certificate (the TLS handshake already checked its chain to the client CA).
pub fn principal<T>(request: &Request<T>) -> Result<Principal, ApiError> {
    peer_certs(request)
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| trm_crypto::pki::principal_of(c.as_ref()))
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
                .and_then(|c| trm_crypto::pki::caller_id(c.as_ref()))
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
