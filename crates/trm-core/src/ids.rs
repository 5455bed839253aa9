//! Identifiers: node ids (ISO 3166-1 alpha-2), organisations, roles and record ids.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// Writes what an id kept as text has besides its parser (`FromStr`, failing with `$err`):
/// the conversions serde goes through (`try_from = "String", into = "String"`) and
/// `Display`, all from the one parser and the one `as_str`.
macro_rules! text_id {
    ($id:ident, $err:ty) => {
        impl TryFrom<String> for $id {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$id> for String {
            fn from(id: $id) -> Self {
                id.as_str().to_owned()
            }
        }

        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A node id: the ISO 3166-1 alpha-2 code, upper case, of the country that runs the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId([u8; 2]);

impl NodeId {
    /// Parses a country code; `field` names the input for the error.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        s.parse()
            .map_err(|_| FieldError::new(field, "must be an ISO 3166-1 alpha-2 code in upper case"))
    }

    /// Returns the code as text.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(NodeId([*a, *b])),
            _ => Err(InvalidNodeId),
        }
    }
}

text_id!(NodeId, InvalidNodeId);

/// The text is not an upper-case ISO 3166-1 alpha-2 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an ISO 3166-1 alpha-2 code in upper case")]
pub struct InvalidNodeId;

/// An organisation id (a service provider, a ministry): 1 to 64 of `a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl OrgId {
    /// Parses an organisation id; `field` names the input for the error.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        s.parse().map_err(|_| {
            FieldError::new(field, "must be 1 to 64 characters of a-z, 0-9, '-' or '_'")
        })
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OrgId {
    type Err = InvalidOrgId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(OrgId(s.to_owned()))
        } else {
            Err(InvalidOrgId)
        }
    }
}

text_id!(OrgId, InvalidOrgId);

/// The text is not a valid organisation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid organisation id")]
pub struct InvalidOrgId;

/// The role a local client certificate carries (`trm://client/<role>/<org>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// NGOs, shelters, social services: their own organisation's cases.
    ServiceProvider,
    /// The national focal point: everything national.
    FocalPoint,
    /// Prosecutors and MLA central authorities: hearings, never victim records.
    JudicialAuthority,
    /// Keeps the node running: admin RPCs only, never victim records.
    Operator,
    /// Immigration authorities: record residence status and read return plans (what
    /// crossed for travel documents), never needs, exploitation or notes.
    ImmigrationAuthority,
}

impl Role {
    /// Every role, in the order of the contract.
    pub const ALL: [Role; 5] = [
        Role::ServiceProvider,
        Role::FocalPoint,
        Role::JudicialAuthority,
        Role::Operator,
        Role::ImmigrationAuthority,
    ];

    /// Returns the role's name as written in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ServiceProvider => "service_provider",
            Role::FocalPoint => "focal_point",
            Role::JudicialAuthority => "judicial_authority",
            Role::Operator => "operator",
            Role::ImmigrationAuthority => "immigration_authority",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(UnknownRole)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text names no role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role (service_provider, focal_point, judicial_authority, operator, immigration_authority)"
)]
pub struct UnknownRole;

/// The principal behind a local request, read from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    pub org: OrgId,
}

/// Returns the SAN URI a node's TLS certificate carries.
pub fn node_uri(node: NodeId) -> String {
    format!("trm://node/{node}")
}

/// Returns the SAN URI a local client certificate carries.
pub fn client_uri(role: Role, org: &OrgId) -> String {
    format!("trm://client/{role}/{org}")
}

/// Parses a node SAN URI (`trm://node/AT`).
pub fn parse_node_uri(uri: &str) -> Option<NodeId> {
    uri.strip_prefix("trm://node/")?.parse().ok()
}

/// Parses a client SAN URI (`trm://client/<role>/<org>`).
pub fn parse_client_uri(uri: &str) -> Option<Principal> {
    let rest = uri.strip_prefix("trm://client/")?;
    let (role, org) = rest.split_once('/')?;
    Some(Principal {
        role: role.parse().ok()?,
        org: org.parse().ok()?,
    })
}

/// Parses a record id (a UUID in canonical text); `field` names the input for the error.
pub fn parse_id(field: &str, s: &str) -> Result<uuid::Uuid, FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    uuid::Uuid::try_parse(s).map_err(|_| FieldError::new(field, "must be a UUID"))
}

/// What every record id is: a UUID with a type of its own.
pub trait RecordId: Copy + Eq + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// Returns the id a UUID is.
    fn of_uuid(u: uuid::Uuid) -> Self;
    /// Returns the UUID.
    fn to_uuid(self) -> uuid::Uuid;
    /// Parses the canonical text; `field` names the input for the error.
    fn parse_field(field: &str, s: &str) -> Result<Self, FieldError> {
        parse_id(field, s).map(Self::of_uuid)
    }
}

/// Declares an id: a UUID (v7 when new) with its parse, display and [`RecordId`]. The ids
/// below are the older records'; a new shared record declares its own beside it, in its own
/// module (`crate::ids::record_id!(FooId);`), so that adding one leaves this file alone.
macro_rules! record_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// Returns a new id (UUIDv7: ordered by creation time).
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// Returns the id a UUID is.
            pub fn from_uuid(u: uuid::Uuid) -> Self {
                Self(u)
            }

            /// Returns the UUID.
            pub fn uuid(self) -> uuid::Uuid {
                self.0
            }

            /// Returns the 16 bytes of the UUID.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Returns the id of 16 bytes.
            pub fn from_bytes(b: [u8; 16]) -> Self {
                Self(uuid::Uuid::from_bytes(b))
            }

            /// Parses the canonical text; `field` names the input for the error.
            pub fn parse(field: &str, s: &str) -> Result<Self, $crate::error::FieldError> {
                $crate::ids::parse_id(field, s).map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $crate::ids::RecordId for $name {
            fn of_uuid(u: uuid::Uuid) -> Self {
                Self(u)
            }
            fn to_uuid(self) -> uuid::Uuid {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
pub(crate) use record_id;

record_id!(
    /// A victim's case, held by the node that collected it.
    CaseId
);
record_id!(
    /// A referral; the same on both nodes.
    ReferralId
);
record_id!(
    /// A return plan; the same on both nodes.
    ReturnId
);
record_id!(
    /// A witness hearing; the same on both nodes.
    HearingId
);
record_id!(
    /// A safety alert; the same on every node it reached.
    AlertId
);
record_id!(
    /// One recorded consent.
    ConsentId
);
record_id!(
    /// One risk assessment.
    AssessmentId
);
record_id!(
    /// One envelope between nodes (UUIDv7).
    MessageId
);
record_id!(
    /// One task of the work queue.
    TaskId
);
record_id!(
    /// A compensation claim; the same on both nodes.
    ClaimId
);

/// A record another node holds a copy of: what a consent's withdrawal erases there, and
/// what a hearing's witness reference resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Shared {
    Referral(ReferralId),
    Return(ReturnId),
    Claim(ClaimId),
}

impl Shared {
    /// Returns the record's kind and id.
    pub fn record(self) -> (crate::exchange::RecordKind, uuid::Uuid) {
        use crate::exchange::RecordKind as K;
        match self {
            Shared::Referral(id) => (K::Referral, id.0),
            Shared::Return(id) => (K::Return, id.0),
            Shared::Claim(id) => (K::Claim, id.0),
        }
    }

    /// Returns every record `u` could name, one per kind that is ever shared (an id a peer
    /// sends without saying its kind).
    pub fn every(u: uuid::Uuid) -> impl Iterator<Item = Shared> {
        crate::exchange::RecordKind::ALL
            .into_iter()
            .filter_map(move |kind| Shared::of(kind, u))
    }

    /// Returns the record of `kind` with id `u`, if a copy of that kind is ever shared.
    pub fn of(kind: crate::exchange::RecordKind, u: uuid::Uuid) -> Option<Self> {
        use crate::exchange::RecordKind as K;
        Some(match kind {
            K::Referral => Shared::Referral(ReferralId(u)),
            K::Return => Shared::Return(ReturnId(u)),
            K::Claim => Shared::Claim(ClaimId(u)),
            K::Hearing | K::SafetyAlert | K::VictimStatus => return None,
        })
    }
}

/// Runs `$body` with `$R` the record type of the copy that `$shared` (a [`Shared`]) names
/// and `$id` its id: one body, generic over
/// [`ErasableRecord`](crate::exchange::ErasableRecord), for every kind of record a copy of
/// which another node holds. This is the one place that lists those kinds by type.
///
/// ```text
/// trm_core::on_shared!(shared, R, id => erase::<R>(tx, id))
/// ```
#[macro_export]
macro_rules! on_shared {
    ($shared:expr, $R:ident, $id:ident => $body:expr) => {
        match $shared {
            $crate::ids::Shared::Referral($id) => {
                type $R = $crate::referral::ReferralRecord;
                $body
            }
            $crate::ids::Shared::Return($id) => {
                type $R = $crate::returns::ReturnRecord;
                $body
            }
            $crate::ids::Shared::Claim($id) => {
                type $R = $crate::remedies::ClaimRecord;
                $body
            }
        }
    };
}

/// The local record a witness is known by: a case of this node, or a referral or return
/// plan received from the requesting country.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WitnessRecord {
    Case(CaseId),
    Referral(ReferralId),
    Return(ReturnId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_two_upper_case_letters() {
        assert_eq!(
            "AT".parse::<NodeId>().map(|n| n.to_string()),
            Ok("AT".into())
        );
        for bad in ["at", "AUT", "A", "", "A1", "ÄT"] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn client_uris_round_trip_and_reject_unknown_roles() {
        let org: OrgId = "sp1".parse().unwrap();
        let uri = client_uri(Role::ServiceProvider, &org);
        assert_eq!(uri, "trm://client/service_provider/sp1");
        assert_eq!(
            parse_client_uri(&uri),
            Some(Principal {
                role: Role::ServiceProvider,
                org
            })
        );
        assert_eq!(parse_client_uri("trm://client/admin/x"), None);
        assert_eq!(
            parse_client_uri("trm://client/immigration_authority/bfa").map(|p| p.role),
            Some(Role::ImmigrationAuthority)
        );
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(parse_client_uri("trm://node/AT"), None);
        assert_eq!(parse_node_uri("trm://node/AT"), Some("AT".parse().unwrap()));
    }
    /// Serde writes ids through `String::from`, so this is their text on disk and wire.
    #[test]
    fn ids_are_written_as_their_text() {
        let at: NodeId = "AT".parse().unwrap();
        assert_eq!(String::from(at), "AT");
        let org: OrgId = "sp-1_a".parse().unwrap();
        assert_eq!(org.as_str(), "sp-1_a");
        assert_eq!(String::from(org), "sp-1_a");
        assert_eq!(node_uri(at), "trm://node/AT");
    }

    #[test]
    fn organisation_ids_are_1_to_64_of_lower_case_letters_digits_dash_underscore() {
        let longest = "a".repeat(64);
        for good in ["a", "0", "-", "_", "sp1", "red-cross_at", longest.as_str()] {
            assert_eq!(
                good.parse::<OrgId>().map(|o| o.to_string()),
                Ok(good.into())
            );
        }
        let too_long = "a".repeat(65);
        for bad in ["", too_long.as_str(), "Sp1", "sp 1", "sp.1", "sp/1", "ä"] {
            assert_eq!(bad.parse::<OrgId>(), Err(InvalidOrgId), "{bad:?}");
        }
        let err = OrgId::parse("organisation", "Sp1").unwrap_err();
        assert_eq!(err.field, "organisation");
        let err = NodeId::parse("witness_country", "at").unwrap_err();
        assert_eq!(err.field, "witness_country");
    }

    #[test]
    fn a_record_id_must_be_a_uuid_naming_the_field() {
        let text = "0190b1e2-7c3a-7def-8123-456789abcdef";
        let id = CaseId::parse("case_id", text).unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(
            parse_id("case_id", text).map(|u| u.to_string()),
            Ok(text.into())
        );
        for (bad, problem) in [("", "is required"), ("case-1", "must be a UUID")] {
            assert_eq!(
                parse_id("referral.case_id", bad),
                Err(FieldError::new("referral.case_id", problem))
            );
        }
    }
}
