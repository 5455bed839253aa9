//! Every RPC of every service, called by every role, by another node's client certificate,
//! by a federation certificate and with no certificate, against one table of who may call
//! what. The RPCs come from the contract itself (the descriptor set), so an RPC added
//! without a row here fails this test.
//!
//! Each call carries an empty request: authorisation comes before reading the request, so
//! a caller the table refuses gets PERMISSION_DENIED, and one it allows gets whatever the
//! handler answers an empty request (INVALID_ARGUMENT naming a field, NOT_FOUND, or OK).
//! Callers without a certificate the port trusts never reach a handler at all.

use std::{collections::BTreeSet, path::Path, time::Duration};

use prost::Message;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Status,
};
use trm_core::ids::Role;
use trm_crypto::files;
use trm_tests::TestFederation;

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    Roles(&'static [Role]),
    /// A peer node (federation certificate) on the federation port.
    Peer,
}

const SP: Role = Role::ServiceProvider;
const FP: Role = Role::FocalPoint;
const JA: Role = Role::JudicialAuthority;
const OP: Role = Role::Operator;
const IA: Role = Role::ImmigrationAuthority;
const CASE: Allowed = Allowed::Roles(&[SP, FP]);
const RETURN_PLANS: Allowed = Allowed::Roles(&[SP, FP, IA]);
const FOCAL: Allowed = Allowed::Roles(&[FP]);
const OPERATOR: Allowed = Allowed::Roles(&[OP]);
const JUDICIAL_AND_FOCAL: Allowed = Allowed::Roles(&[JA, FP]);

/// The table: every RPC of package trm.v1 and who may call it.
const TABLE: &[(&str, &str, Allowed)] = &[
    ("ReferralService", "CreateCase", CASE),
    ("ReferralService", "UpdateCase", CASE),
    ("ReferralService", "ResolvePossibleDuplicate", FOCAL),
    ("ReferralService", "GetCase", CASE),
    ("ReferralService", "ListCases", CASE),
    ("ReferralService", "RecordConsent", CASE),
    ("ReferralService", "WithdrawConsent", CASE),
    ("ReferralService", "SubmitReferral", CASE),
    ("ReferralService", "GetReferral", CASE),
    ("ReferralService", "ListReferrals", CASE),
    ("ReferralService", "RespondToReferral", FOCAL),
    ("ReferralService", "AssignCase", FOCAL),
    ("ReferralService", "CloseReferral", CASE),
    ("ReferralService", "EraseCase", CASE),
    ("ReferralService", "WithdrawReferral", CASE),
    ("ReferralService", "ListConsents", CASE),
    ("ReferralService", "RecordIdentification", CASE),
    (
        "ReferralService",
        "RecordResidenceStatus",
        Allowed::Roles(&[FP, IA]),
    ),
    ("ReturnPlanningService", "RecordRiskAssessment", CASE),
    ("ReturnPlanningService", "RecordReturnDecision", CASE),
    ("ReturnPlanningService", "ProposeReturn", CASE),
    ("ReturnPlanningService", "GetReturnPlan", RETURN_PLANS),
    ("ReturnPlanningService", "ListReturnPlans", RETURN_PLANS),
    ("ReturnPlanningService", "RespondToReturn", FOCAL),
    ("ReturnPlanningService", "ScheduleReturn", CASE),
    ("ReturnPlanningService", "ConfirmArrival", FOCAL),
    ("ReturnPlanningService", "RecordFollowUp", FOCAL),
    ("ReturnPlanningService", "HaltReturn", CASE),
    ("ReturnPlanningService", "RecordTravel", CASE),
    ("ReturnPlanningService", "ResolveConcern", FOCAL),
    ("ReturnPlanningService", "CloseReturn", CASE),
    (
        "WitnessHearingService",
        "RequestHearing",
        Allowed::Roles(&[JA]),
    ),
    (
        "WitnessHearingService",
        "GetHearing",
        Allowed::Roles(&[JA, FP, SP]),
    ),
    (
        "WitnessHearingService",
        "ListHearings",
        Allowed::Roles(&[JA, FP, SP]),
    ),
    (
        "WitnessHearingService",
        "RespondToHearing",
        Allowed::Roles(&[JA, FP]),
    ),
    (
        "WitnessHearingService",
        "RecordHearingOutcome",
        Allowed::Roles(&[JA, FP]),
    ),
    (
        "WitnessHearingService",
        "CancelHearing",
        Allowed::Roles(&[JA, FP]),
    ),
    ("RemediesService", "FileClaim", CASE),
    ("RemediesService", "UpdateClaim", CASE),
    ("RemediesService", "GetClaim", CASE),
    ("RemediesService", "ListClaims", CASE),
    (
        "RemediesService",
        "RequestVictimStatus",
        Allowed::Roles(&[JA]),
    ),
    ("RemediesService", "AttestVictimStatus", FOCAL),
    (
        "RemediesService",
        "GetVictimStatus",
        Allowed::Roles(&[JA, FP]),
    ),
    (
        "RemediesService",
        "ListVictimStatusRequests",
        Allowed::Roles(&[JA, FP]),
    ),
    (
        "WorkService",
        "WatchEvents",
        Allowed::Roles(&[SP, FP, JA, IA]),
    ),
    ("SafetyService", "RaiseSafetyAlert", JUDICIAL_AND_FOCAL),
    ("SafetyService", "GetSafetyAlert", JUDICIAL_AND_FOCAL),
    ("SafetyService", "ListSafetyAlerts", JUDICIAL_AND_FOCAL),
    (
        "SafetyService",
        "AcknowledgeSafetyAlert",
        JUDICIAL_AND_FOCAL,
    ),
    (
        "WorkService",
        "ListTasks",
        Allowed::Roles(&[SP, FP, JA, IA]),
    ),
    ("AdminService", "Status", OPERATOR),
    ("AdminService", "ListPeers", OPERATOR),
    ("AdminService", "UpsertPeer", OPERATOR),
    ("AdminService", "RemovePeer", OPERATOR),
    ("AdminService", "ListOutbox", OPERATOR),
    ("AdminService", "RetryDelivery", OPERATOR),
    ("AdminService", "VerifyAudit", OPERATOR),
    ("AdminService", "RotateSigningKey", OPERATOR),
    ("AdminService", "ExportStatistics", OPERATOR),
    ("AdminService", "Backup", OPERATOR),
    ("AdminService", "RevokeClientCertificate", OPERATOR),
    ("AdminService", "ListRevokedClientCertificates", OPERATOR),
    ("AdminService", "ExportAudit", OPERATOR),
    ("AdminService", "ListSigningKeys", OPERATOR),
    ("FederationService", "Deliver", Allowed::Peer),
    ("FederationService", "DeliverBatch", Allowed::Peer),
    ("FederationService", "GetNodeInfo", Allowed::Peer),
];

/// Sends and receives messages as raw bytes: one client for every RPC.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Calls `service`/`method` with an empty request; returns the code of the answer.
async fn call(channel: &Channel, service: &str, method: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let path = match format!("/trm.v1.{service}/{method}").parse() {
        Ok(p) => p,
        Err(_) => return Code::Internal,
    };
    // A stream that opens is allowed: its first answer (headers) is enough.
    let answer = match STREAMS.contains(&method) {
        true => grpc
            .server_streaming(tonic::Request::new(Vec::new()), path, Raw)
            .await
            .map(|_| ()),
        false => grpc
            .unary(tonic::Request::new(Vec::new()), path, Raw)
            .await
            .map(|_| ()),
    };
    match answer {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The server-streaming RPCs of the contract (checked against the descriptor set).
const STREAMS: &[&str] = &["WatchEvents"];

/// A lazily connecting channel to `addr` trusting `ca`, presenting `identity` if any.
fn channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files::read(ca)?))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(files::read(cert)?, files::read(key)?));
    }
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// The RPCs of the contract: (service, method) of every service of package trm.v1.
fn contract() -> anyhow::Result<BTreeSet<(String, String)>> {
    let set = prost_types::FileDescriptorSet::decode(trm_proto::v1::FILE_DESCRIPTOR_SET)?;
    Ok(set
        .file
        .iter()
        .filter(|f| f.package() == "trm.v1")
        .flat_map(|f| f.service.iter())
        .flat_map(|s| {
            s.method
                .iter()
                .map(|m| (s.name().to_owned(), m.name().to_owned()))
        })
        .collect())
}

/// Whether `code` says the call reached no handler (the connection was refused).
fn refused_before_any_handler(code: Code) -> bool {
    !matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::AlreadyExists
    )
}

#[tokio::test]
async fn every_caller_on_every_rpc_gets_the_code_of_the_table() -> anyhow::Result<()> {
    let listed: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|(s, m, _)| ((*s).to_owned(), (*m).to_owned()))
        .collect();
    let rpcs = contract()?;
    let set = prost_types::FileDescriptorSet::decode(trm_proto::v1::FILE_DESCRIPTOR_SET)?;
    let streaming: Vec<&str> = set
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter())
        .filter(|m| m.server_streaming())
        .map(|m| m.name())
        .collect();
    assert_eq!(
        streaming, STREAMS,
        "the streams the calls below open as streams"
    );
    let missing: Vec<_> = rpcs.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "RPCs without a row in the table: {missing:?}"
    );
    let stale: Vec<_> = listed.difference(&rpcs).collect();
    assert!(
        stale.is_empty(),
        "rows of RPCs the contract no longer has: {stale:?}"
    );

    let fed = TestFederation::start(&["AT", "RO"]).await?;
    let at = fed.node("AT")?.addrs;
    let (at_dir, ro_dir) = (fed.node_dir("AT"), fed.node_dir("RO"));
    let services_ca = at_dir.join("services-ca.pem");
    let federation_ca = at_dir.join("tls/federation-ca.pem");
    let port = |service: &str| match service {
        "AdminService" => at.admin,
        "FederationService" => at.federation,
        _ => at.services,
    };
    let ca = |service: &str| {
        if service == "FederationService" {
            federation_ca.clone()
        } else {
            services_ca.clone()
        }
    };
    let role_cert = |dir: &Path, role: Role| {
        (
            dir.join(format!("clients/{role}.pem")),
            dir.join(format!("clients/{role}.key")),
        )
    };
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (service, method, allowed) in TABLE {
        // AT's own role certificates.
        for role in Role::ALL {
            let (cert, key) = role_cert(&at_dir, role);
            let ch = channel(port(service), &ca(service), Some((&cert, &key)))?;
            let code = call(&ch, service, method).await;
            let ok = match allowed {
                Allowed::Roles(roles) if roles.contains(&role) => {
                    code != Code::PermissionDenied && !refused_before_any_handler(code)
                }
                Allowed::Roles(_) => code == Code::PermissionDenied,
                // A client certificate on the federation port: not a peer.
                Allowed::Peer => refused_before_any_handler(code) || code == Code::PermissionDenied,
            };
            if !ok {
                wrong.push(format!("{service}/{method} as {role}: {code:?}"));
            }
            checked += 1;
        }
        // Another node's client certificate, a federation certificate, no certificate.
        let (ro_sp, ro_sp_key) = role_cert(&ro_dir, SP);
        let ro_fed = (
            ro_dir.join("tls/federation.pem"),
            ro_dir.join("tls/federation.key"),
        );
        let at_fed = (
            at_dir.join("tls/federation.pem"),
            at_dir.join("tls/federation.key"),
        );
        let strangers: [(&str, Option<(&Path, &Path)>); 3] = [
            ("RO's service provider", Some((&ro_sp, &ro_sp_key))),
            (
                "a federation certificate",
                Some(if *allowed == Allowed::Peer {
                    (&at_fed.0, &at_fed.1) // AT's own: not a peer of itself
                } else {
                    (&ro_fed.0, &ro_fed.1)
                }),
            ),
            ("no certificate", None),
        ];
        for (who, identity) in strangers {
            let ch = channel(port(service), &ca(service), identity)?;
            let code = call(&ch, service, method).await;
            if !(refused_before_any_handler(code) || code == Code::PermissionDenied) {
                wrong.push(format!("{service}/{method} by {who}: {code:?}"));
            }
            checked += 1;
        }
        // The one caller the federation port is for: a peer. An empty envelope is unsigned:
        // UNAUTHENTICATED from the handler's envelope check is its answer.
        if *allowed == Allowed::Peer {
            let ch = channel(port(service), &ca(service), Some((&ro_fed.0, &ro_fed.1)))?;
            let code = call(&ch, service, method).await;
            let reached = code == Code::Unauthenticated || !refused_before_any_handler(code);
            if code == Code::PermissionDenied || !reached {
                wrong.push(format!("{service}/{method} by peer RO: {code:?}"));
            }
            checked += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} calls wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    fed.stop().await?;
    Ok(())
}
