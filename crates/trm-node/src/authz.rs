//! Who is calling: the principal in the client certificate (`trm://client/<role>/<org>`),
//! and what each role may do (DESIGN.md, "Identities and trust").

use tonic::Request;
use trm_core::ids::{OrgId, Principal, Role};

use crate::error::ApiError;

/// Returns the principal of a local request; UNAUTHENTICATED without a usable client
/// certificate (the TLS handshake already checked its chain to the client CA).
pub fn principal<T>(request: &Request<T>) -> Result<Principal, ApiError> {
    request
        .peer_certs()
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| trm_crypto::pki::principal_of(c.as_ref()))
        })
        .ok_or(ApiError::Unauthenticated(
            "client certificate carries no trm://client/<role>/<org> identity",
        ))
}

/// Returns the key of the client certificate of a request (its serial number), which
/// idempotent requests are remembered under.
pub fn client_key<T>(request: &Request<T>) -> String {
    request
        .peer_certs()
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| trm_crypto::pki::serial_hex(c.as_ref()))
        })
        .unwrap_or_default()
}

/// Refuses unless the principal has one of `roles`.
pub fn require(p: &Principal, roles: &[Role], action: &str) -> Result<(), ApiError> {
    if roles.contains(&p.role) {
        Ok(())
    } else {
        Err(ApiError::Denied(format!(
            "role {} may not {action}",
            p.role
        )))
    }
}

/// Roles that may read victim records (their own organisation's, or all for focal points).
pub const CASE_ROLES: &[Role] = &[Role::ServiceProvider, Role::FocalPoint];

/// Refuses a service provider access to a record of another organisation. Focal points see
/// the whole node.
pub fn require_org(p: &Principal, owner: Option<&OrgId>) -> Result<(), ApiError> {
    match p.role {
        Role::FocalPoint => Ok(()),
        Role::ServiceProvider if owner == Some(&p.org) => Ok(()),
        _ => Err(ApiError::Denied(format!(
            "organisation {} may not access this record",
            p.org
        ))),
    }
}

/// Returns the audit actor name of a principal.
pub fn actor(p: &Principal) -> String {
    format!("client:{}/{}", p.role, p.org)
}
