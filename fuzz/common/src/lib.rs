//! What the fuzz targets and the seed generator share: the fixtures in `fuzz/fixtures/` (a
//! peer's signing key and certificates, made by `seed fixtures` for fuzzing only and never
//! used by a node) and builders of valid inputs, so that fuzzing starts from inputs that
//! pass every check and its mutations reach the deep paths.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use time::OffsetDateTime;
use trm_core::ids::NodeId;
use trm_crypto::signing::SigningIdentity;
use trm_federation::{InboundConfig, Peer, PeerKey};
use trm_proto::v1::{self as w, envelope_body::Payload};

/// The instant the targets open envelopes at, so that a kept seed stays inside the replay
/// window for ever (2026-01-01T00:00:00Z).
pub const NOW_UNIX: i64 = 1_767_225_600;

/// The sending peer of the fixtures.
pub const SENDER: &str = "AT";
/// The receiving node of the fixtures.
pub const RECEIVER: &str = "RO";

/// Returns [`NOW_UNIX`] as a time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW_UNIX).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Returns the folder of the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Returns the text of fixture `name`, or an empty text when it is missing (the targets
/// then fuzz with nothing to verify against, which the seed generator's first step fixes).
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join(name)).unwrap_or_default()
}

/// Returns the node id of one of the fixed codes above.
pub fn node(code: &str) -> NodeId {
    match code.parse() {
        Ok(n) => n,
        Err(_) => panic!("{code} is not a node id"),
    }
}

/// Returns the sending peer's signing key (the fixture `peer-signing.pem`).
pub fn sender_key() -> &'static SigningIdentity {
    static KEY: OnceLock<SigningIdentity> = OnceLock::new();
    KEY.get_or_init(|| {
        SigningIdentity::load(&fixtures_dir().join("peer-signing.pem"))
            .unwrap_or_else(|_| SigningIdentity::generate())
    })
}

/// Returns the directory entry of the sending peer as the receiver holds it.
pub fn sender_peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| Peer {
        id: node(SENDER),
        endpoint: "127.0.0.1:7443".into(),
        tls_ca_pem: fixture("ca.pem"),
        tls_pin: None,
        keys: vec![PeerKey::new(sender_key().public())],
    })
}

/// Returns the receiver's inbound settings (the defaults).
pub fn receiver_config() -> &'static InboundConfig {
    static CFG: OnceLock<InboundConfig> = OnceLock::new();
    CFG.get_or_init(|| InboundConfig::new(node(RECEIVER)))
}

/// A fresh UUIDv7 dated a minute before [`now`], the fixtures' clock: a message id dated
/// after it would be refused as from the future before anything else is checked.
pub fn id7() -> String {
    let at = u64::try_from(NOW_UNIX - 60).unwrap_or_default();
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, at, 0)).to_string()
}

fn disclosed(identity: bool) -> w::DisclosedCase {
    w::DisclosedCase {
        case_ref: "c-7f3a".into(),
        age_band: w::AgeBand::AgeBand1820 as i32,
        gender: w::Gender::Female as i32,
        citizenship: vec!["NG".into()],
        languages: vec!["en".into(), "yo".into()],
        needs: Some(w::Needs {
            kinds: vec![w::NeedKind::Shelter as i32, w::NeedKind::Medical as i32],
            urgency: w::Urgency::Urgent as i32,
            notes: String::new(),
        }),
        exploitation: Some(w::Exploitation {
            types: vec![w::ExploitationType::Sexual as i32],
            countries: vec!["AT".into(), "IT".into()],
        }),
        child: Some(w::ChildInfo {
            is_child: false,
            guardian_assigned: false,
            best_interests_determined: false,
        }),
        identity: identity.then(|| w::Person {
            given_name: "Ada".into(),
            family_name: "Example".into(),
            date_of_birth: "2005-02-03".into(),
            document_number: "X0000000".into(),
            ..Default::default()
        }),
    }
}

fn ts(t: OffsetDateTime) -> prost_types::Timestamp {
    trm_proto::convert::ts(t)
}

/// Returns one valid payload of every kind (and variants), as a peer sends them.
pub fn payloads() -> Vec<Payload> {
    let later = now() + time::Duration::days(10);
    let announced = SigningIdentity::generate();
    vec![
        Payload::ReferralOffer(w::ReferralOffer {
            referral_id: id7(),
            disclosed: Some(disclosed(false)),
            requested_services: vec![w::NeedKind::Shelter as i32, w::NeedKind::Legal as i32],
        }),
        Payload::ReferralOffer(w::ReferralOffer {
            referral_id: id7(),
            disclosed: Some(disclosed(true)),
            requested_services: vec![w::NeedKind::Psychological as i32],
        }),
        Payload::ReferralUpdate(w::ReferralUpdate {
            referral_id: id7(),
            status: w::ReferralStatus::Accepted as i32,
            reason: "capacity available".into(),
            disclosed: None,
        }),
        // A copy's new disclosed case (UpdateCase at the origin).
        Payload::ReferralUpdate(w::ReferralUpdate {
            referral_id: id7(),
            disclosed: Some(disclosed(false)),
            ..Default::default()
        }),
        Payload::ReturnRequest(w::ReturnRequest {
            return_id: id7(),
            disclosed: Some(disclosed(true)),
            hearing_pending: true,
            compensation_pending: false,
            risk_assessed_at: Some(ts(now())),
        }),
        Payload::ReturnUpdate(w::ReturnUpdate {
            return_id: id7(),
            status: w::ReturnStatus::Scheduled as i32,
            reason: String::new(),
            details: "escorted".into(),
            travel_at: Some(ts(later)),
            disclosed: None,
            flags: None,
        }),
        Payload::ReturnUpdate(w::ReturnUpdate {
            return_id: id7(),
            flags: Some(w::CoordinationFlags {
                hearing_pending: false,
                compensation_pending: true,
            }),
            ..Default::default()
        }),
        Payload::HearingRequest(w::HearingRequest {
            hearing_id: id7(),
            proceeding_reference: "2025/CR/118".into(),
            legal_basis: "EU 2014/41 art. 24".into(),
            measures: vec![
                w::ProtectiveMeasure::VoiceDistortion as i32,
                w::ProtectiveMeasure::Interpreter as i32,
            ],
            language: "en".into(),
            proposed_times: vec![ts(later), ts(later + time::Duration::hours(2))],
        }),
        Payload::HearingUpdate(w::HearingUpdate {
            hearing_id: id7(),
            status: w::HearingStatus::Scheduled as i32,
            reason: String::new(),
            scheduled_at: Some(ts(later)),
            minutes_reference: String::new(),
        }),
        Payload::ErasureRequest(w::ErasureRequest {
            subject_id: uuid::Uuid::new_v4().to_string(),
            reason: "consent withdrawn".into(),
        }),
        Payload::ErasureConfirmation(w::ErasureConfirmation {
            subject_id: uuid::Uuid::new_v4().to_string(),
            erased_at: Some(ts(now())),
        }),
        Payload::SafetyAlertNotice(w::SafetyAlertNotice {
            alert_id: id7(),
            country: "AT".into(),
            kind: w::SafetyAlertKind::Release as i32,
            effective_on: "2026-02-01".into(),
            raised_at: Some(ts(now())),
            disclosed: Some(w::DisclosedCase {
                case_ref: "c-7f3a".into(),
                child: Some(w::ChildInfo {
                    is_child: true,
                    guardian_assigned: true,
                    best_interests_determined: true,
                }),
                ..Default::default()
            }),
        }),
        Payload::SafetyAlertUpdate(w::SafetyAlertUpdate {
            alert_id: id7(),
            status: w::SafetyAlertStatus::Acknowledged as i32,
        }),
        Payload::KeyAnnouncement(w::KeyAnnouncement {
            key: Some(w::SigningKey {
                key_id: announced.key_id().to_owned(),
                public_key: announced.public().as_bytes().to_vec(),
                valid_from: Some(ts(now())),
                valid_until: None,
            }),
        }),
        Payload::ClaimNotice(w::ClaimNotice {
            claim_id: id7(),
            kind: w::ClaimKind::CriminalCompensation as i32,
            disclosed: Some(w::DisclosedCase {
                needs: None,
                exploitation: None,
                ..disclosed(true)
            }),
        }),
        Payload::ClaimUpdate(w::ClaimUpdate {
            claim_id: id7(),
            status: w::ClaimStatus::Awarded as i32,
            reason: "order 17/26".into(),
            disclosed: None,
        }),
        Payload::VictimStatusQuery(w::VictimStatusQuery {
            status_request_id: id7(),
        }),
        Payload::VictimStatusAnswer(w::VictimStatusAnswer {
            status_request_id: id7(),
            state: w::VictimStatusState::Attested as i32,
            attestation: Some(w::SignedAttestation {
                attestation: attestation(),
                key_id: sender_key().key_id().to_owned(),
                signature: sender_key().sign(trm_core::remedies::ATTESTATION_TAG, &attestation()),
            }),
        }),
    ]
}

/// Returns a serialized attestation of the sending peer about the fixtures' case.
fn attestation() -> Vec<u8> {
    use prost::Message;
    w::VictimStatusAttestation {
        case_ref: "c-7f3a".into(),
        stage: w::IdentificationStage::Conclusive as i32,
        decided_month: "2025-11".into(),
        issuer: SENDER.into(),
        issued_at: Some(ts(now())),
    }
    .encode_to_vec()
}

/// Returns `payload` sealed by the sending peer for the receiver, created a minute before
/// [`NOW_UNIX`]: an envelope that passes every check of the receive pipeline.
pub fn sealed(payload: Payload) -> w::SignedEnvelope {
    trm_federation::envelope::seal_with_id(
        sender_key(),
        node(SENDER),
        node(RECEIVER),
        "c-7f3a",
        payload,
        &id7(),
        now() - time::Duration::minutes(1),
    )
}

/// Returns the envelopes the receipt target's receipts answer: fixed message ids and
/// bodies, the first one also the one a single receipt is for.
pub fn receipt_fixture() -> &'static [(trm_core::ids::MessageId, Vec<u8>)] {
    static SENT: OnceLock<Vec<(trm_core::ids::MessageId, Vec<u8>)>> = OnceLock::new();
    SENT.get_or_init(|| {
        [
            "019b7a2e-0000-7000-8000-000000000001",
            "019b7a2e-0000-7000-8000-000000000002",
            "019b7a2e-0000-7000-8000-000000000003",
        ]
        .iter()
        .enumerate()
        .filter_map(|(i, id)| {
            let id = uuid::Uuid::try_parse(id).ok()?;
            Some((
                trm_core::ids::MessageId::from_uuid(id),
                format!("envelope body {i}").into_bytes(),
            ))
        })
        .collect()
    })
}

/// Declares [`Local`], one variant per request, in selector order. A request whose handler
/// only parses its body into a command names its message and that command
/// (`Name: Request => Command`), and [`Local::parse_command`] runs the same `TryFrom`; the
/// others the `local_request` target parses itself, as their handlers do.
macro_rules! local_requests {
    ($($(#[$doc:meta])* $name:ident $(: $req:ty => $cmd:ty)?),* $(,)?) => {
        /// The request a `local_request` input holds, chosen by its first byte (modulo the
        /// number of requests): one per RPC of the local services, grouped by service.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Local {
            $($(#[$doc])* $name),*
        }

        impl Local {
            /// Every request, in selector order.
            pub const ALL: &'static [Local] = &[$(Local::$name),*];

            /// The request a selector byte picks.
            pub fn of(byte: u8) -> Local {
                Self::ALL[usize::from(byte) % Self::ALL.len()]
            }

            /// The selector byte of this request.
            pub fn byte(self) -> u8 {
                self as u8
            }

            /// The request's message with every field at its default, encoded: the seed
            /// of a request that has no hand-made one (`None` for a request the table does
            /// not name a message of).
            pub fn default_body(self) -> Option<Vec<u8>> {
                match self {
                    $($(Local::$name => Some(prost::Message::encode_to_vec(&<$req>::default())),)?)*
                    _ => None,
                }
            }

            /// For a request parsed into a command: decodes `data` as its message and, if it
            /// decodes, parses it with the `TryFrom` its handler runs. Returns `false` for
            /// the others, which the caller parses.
            pub fn parse_command(self, data: &[u8]) -> bool {
                match self {
                    $($(Local::$name => {
                        parse::<$req, $cmd>(data);
                        true
                    })?)*
                    _ => false,
                }
            }
        }
    };
}

/// Decodes `data` as `M` and, if it decodes, parses it into the command `T` the handler
/// parses it into.
fn parse<M, T>(data: &[u8])
where
    M: prost::Message + Default,
    T: for<'a> TryFrom<&'a M>,
{
    if let Ok(m) = M::decode(data) {
        let _ = T::try_from(&m);
    }
}

/// The types the table below names.
mod commands {
    pub use trm_core::exchange::StepRequest;
    pub use trm_core::hearing::{HearingRecord as Hearing, HearingStatus};
    pub use trm_core::ids::{AlertId, CaseId, ClaimId, HearingId, ReferralId, ReturnId};
    pub use trm_core::referral::{ReferralRecord as Referral, ReferralStatus};
    pub use trm_core::remedies::{
        ClaimRecord as Claim, ClaimStatus, StatusRequestId, VictimStatusRecord as VictimStatus,
        VictimStatusState,
    };
    pub use trm_core::returns::{
        ReturnDecision, ReturnRecord as Return, ReturnStatus, RiskAssessment,
    };
    pub use trm_core::safety::{SafetyAlertRecord, SafetyAlertStatus};
    pub use trm_proto::command::{
        EraseCase, FileClaim, Get, List, ListConsents, ListTasks, Paged, ProposeReturn,
        RaiseSafetyAlert, RecordIdentification, RecordResidenceStatus, RequestHearing,
        RequestVictimStatus, ResolveDuplicate, SubmitReferral, UpdateCase, WatchEvents,
        WithdrawConsent,
    };
}
use commands::*;

local_requests! {
    // ReferralService
    CreateCase,
    GetCase: w::GetCaseRequest => Get<CaseId>,
    ListCases: w::ListCasesRequest => Paged<CaseId>,
    RecordConsent,
    WithdrawConsent: w::WithdrawConsentRequest => WithdrawConsent,
    SubmitReferral: w::SubmitReferralRequest => SubmitReferral,
    GetReferral: w::GetReferralRequest => Get<ReferralId>,
    ListReferrals: w::ListReferralsRequest => List<ReferralId, ReferralStatus>,
    RespondToReferral: w::RespondToReferralRequest => StepRequest<Referral>,
    AssignCase: w::AssignCaseRequest => StepRequest<Referral>,
    CloseReferral: w::CloseReferralRequest => StepRequest<Referral>,
    EraseCase: w::EraseCaseRequest => EraseCase,
    WithdrawReferral: w::WithdrawReferralRequest => StepRequest<Referral>,
    // ReturnPlanningService
    RecordRiskAssessment: w::RecordRiskAssessmentRequest => RiskAssessment,
    RecordReturnDecision: w::RecordReturnDecisionRequest => ReturnDecision,
    ProposeReturn: w::ProposeReturnRequest => ProposeReturn,
    GetReturnPlan: w::GetReturnPlanRequest => Get<ReturnId>,
    ListReturnPlans: w::ListReturnPlansRequest => List<ReturnId, ReturnStatus>,
    RespondToReturn: w::RespondToReturnRequest => StepRequest<Return>,
    ScheduleReturn: w::ScheduleReturnRequest => StepRequest<Return>,
    ConfirmArrival: w::ConfirmArrivalRequest => StepRequest<Return>,
    RecordFollowUp: w::RecordFollowUpRequest => StepRequest<Return>,
    HaltReturn: w::HaltReturnRequest => StepRequest<Return>,
    RecordTravel: w::RecordTravelRequest => StepRequest<Return>,
    ResolveConcern: w::ResolveConcernRequest => StepRequest<Return>,
    CloseReturn: w::CloseReturnRequest => StepRequest<Return>,
    // WitnessHearingService
    RequestHearing: w::RequestHearingRequest => RequestHearing,
    GetHearing: w::GetHearingRequest => Get<HearingId>,
    ListHearings: w::ListHearingsRequest => List<HearingId, HearingStatus>,
    RespondToHearing: w::RespondToHearingRequest => StepRequest<Hearing>,
    RecordHearingOutcome: w::RecordHearingOutcomeRequest => StepRequest<Hearing>,
    CancelHearing: w::CancelHearingRequest => StepRequest<Hearing>,
    // AdminService
    Status,
    ListPeers,
    UpsertPeer,
    RemovePeer,
    ListOutbox,
    RetryDelivery,
    VerifyAudit,
    RotateSigningKey,
    ExportStatistics,
    Backup,
    RevokeClientCertificate,
    ListRevokedClientCertificates,
    ExportAudit,
    ListSigningKeys,
    // ReferralService, cases over time (after the others: the selector bytes of the kept
    // seeds stay what they were)
    ListConsents: w::ListConsentsRequest => ListConsents,
    RecordIdentification: w::RecordIdentificationRequest => RecordIdentification,
    RecordResidenceStatus: w::RecordResidenceStatusRequest => RecordResidenceStatus,
    UpdateCase: w::UpdateCaseRequest => UpdateCase,
    // WorkService
    ListTasks: w::ListTasksRequest => ListTasks,
    // ReferralService, one person one case
    ResolvePossibleDuplicate: w::ResolvePossibleDuplicateRequest => ResolveDuplicate,
    // SafetyService
    RaiseSafetyAlert: w::RaiseSafetyAlertRequest => RaiseSafetyAlert,
    GetSafetyAlert: w::GetSafetyAlertRequest => Get<AlertId>,
    ListSafetyAlerts: w::ListSafetyAlertsRequest => List<AlertId, SafetyAlertStatus>,
    AcknowledgeSafetyAlert: w::AcknowledgeSafetyAlertRequest => StepRequest<SafetyAlertRecord>,
    // RemediesService
    FileClaim: w::FileClaimRequest => FileClaim,
    UpdateClaim: w::UpdateClaimRequest => StepRequest<Claim>,
    GetClaim: w::GetClaimRequest => Get<ClaimId>,
    ListClaims: w::ListClaimsRequest => List<ClaimId, ClaimStatus>,
    RequestVictimStatus: w::RequestVictimStatusRequest => RequestVictimStatus,
    AttestVictimStatus: w::AttestVictimStatusRequest => StepRequest<VictimStatus>,
    GetVictimStatus: w::GetVictimStatusRequest => Get<StatusRequestId>,
    ListVictimStatusRequests: w::ListVictimStatusRequestsRequest => List<StatusRequestId, VictimStatusState>,
    // WorkService, the event stream
    WatchEvents: w::WatchEventsRequest => WatchEvents,
}
