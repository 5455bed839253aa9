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

/// Returns the key of the client certificate of a request (its issuer and serial number),
/// which idempotent requests are remembered under.
pub fn client_key<T>(request: &Request<T>) -> String {
    request
        .peer_certs()
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| trm_crypto::pki::caller_id(c.as_ref()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, org: &str) -> Principal {
        Principal {
            role,
            org: org.parse().unwrap(),
        }
    }

    #[test]
    fn only_the_listed_roles_pass_and_the_refusal_names_role_and_action() {
        let judge = p(Role::JudicialAuthority, "court1");
        assert!(require(&judge, &[Role::JudicialAuthority], "request hearings").is_ok());
        match require(&judge, CASE_ROLES, "read cases") {
            Err(ApiError::Denied(why)) => {
                assert_eq!(why, "role judicial_authority may not read cases")
            }
            other => panic!("{other:?}"),
        }
        assert!(require(&p(Role::Operator, "ops"), &[], "anything").is_err());
    }

    #[test]
    fn providers_reach_only_their_own_organisations_records_and_focal_points_all() {
        let sp1: OrgId = "sp1".parse().unwrap();
        let sp2: OrgId = "sp2".parse().unwrap();
        assert!(require_org(&p(Role::ServiceProvider, "sp1"), Some(&sp1)).is_ok());
        for owner in [Some(&sp2), None] {
            match require_org(&p(Role::ServiceProvider, "sp1"), owner) {
                Err(ApiError::Denied(why)) => {
                    assert_eq!(why, "organisation sp1 may not access this record")
                }
                other => panic!("{owner:?}: {other:?}"),
            }
        }
        for owner in [Some(&sp1), Some(&sp2), None] {
            assert!(require_org(&p(Role::FocalPoint, "fp"), owner).is_ok());
        }
        for role in [Role::JudicialAuthority, Role::Operator] {
            assert!(require_org(&p(role, "sp1"), Some(&sp1)).is_err(), "{role}");
        }
    }

    #[test]
    fn the_audit_names_the_caller_by_role_and_organisation() {
        assert_eq!(
            actor(&p(Role::ServiceProvider, "sp1")),
            "client:service_provider/sp1"
        );
    }
}
