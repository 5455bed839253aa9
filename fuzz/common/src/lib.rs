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

fn id7() -> String {
    uuid::Uuid::now_v7().to_string()
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

/// Declares [`Local`], one variant per request, in selector order.
macro_rules! local_requests {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
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
        }
    };
}

local_requests! {
    // ReferralService
    CreateCase,
    GetCase,
    ListCases,
    RecordConsent,
    WithdrawConsent,
    SubmitReferral,
    GetReferral,
    ListReferrals,
    RespondToReferral,
    AssignCase,
    CloseReferral,
    EraseCase,
    WithdrawReferral,
    // ReturnPlanningService
    RecordRiskAssessment,
    RecordReturnDecision,
    ProposeReturn,
    GetReturnPlan,
    ListReturnPlans,
    RespondToReturn,
    ScheduleReturn,
    ConfirmArrival,
    RecordFollowUp,
    HaltReturn,
    RecordTravel,
    ResolveConcern,
    CloseReturn,
    // WitnessHearingService
    RequestHearing,
    GetHearing,
    ListHearings,
    RespondToHearing,
    RecordHearingOutcome,
    CancelHearing,
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
    ListConsents,
    RecordIdentification,
    RecordResidenceStatus,
    UpdateCase,
    // WorkService
    ListTasks,
    // ReferralService, one person one case
    ResolvePossibleDuplicate,
    // SafetyService
    RaiseSafetyAlert,
    GetSafetyAlert,
    ListSafetyAlerts,
    AcknowledgeSafetyAlert,
    // RemediesService
    FileClaim,
    UpdateClaim,
    GetClaim,
    ListClaims,
    RequestVictimStatus,
    AttestVictimStatus,
    GetVictimStatus,
    ListVictimStatusRequests,
    // WorkService, the event stream
    WatchEvents,
}
