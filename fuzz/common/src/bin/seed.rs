//! Writes the fuzzing fixtures and seeds.
//!
//! `seed fixtures`: a fresh signing key and CA for the fixture peer AT, a node certificate
//! AT's CA issued, and one from another CA (in `fuzz/fixtures/`; made for fuzzing only).
//! `seed corpus`: valid inputs of every target into `fuzz/corpus/<target>/` (envelopes
//! signed with the fixture key, payloads of every kind, local requests, configurations,
//! PEM texts), from which `cargo fuzz cmin` keeps what adds coverage.
#![forbid(unsafe_code)]

use std::path::Path;

use prost::Message;
use trm_crypto::{
    pki::Authority,
    signing::{SigningIdentity, RECEIPT_TAG},
};
use trm_fuzz_common::{self as fx, Local as L};
use trm_proto::v1 as w;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("fixtures") => fixtures(),
        Some("corpus") => corpus(),
        _ => Err("usage: seed fixtures|corpus".into()),
    }
}

fn fixtures() -> Result<()> {
    let dir = fx::fixtures_dir();
    std::fs::create_dir_all(&dir)?;
    SigningIdentity::generate().save(&dir.join("peer-signing.pem"))?;
    let ca = Authority::generate("fuzzing fixture CA of AT")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let node = ca.issue_node(fx::node(fx::SENDER), &["localhost".into()])?;
    std::fs::write(
        dir.join("node.pem"),
        format!("{}{}", node.cert_pem, ca.cert_pem()),
    )?;
    let other = Authority::generate("fuzzing fixture CA of nobody")?;
    let stranger = other.issue_node(fx::node(fx::SENDER), &["localhost".into()])?;
    std::fs::write(dir.join("stranger.pem"), stranger.cert_pem)?;
    let client = ca.issue_client(
        trm_core::ids::Role::FocalPoint,
        &"fp".parse().map_err(|_| "org id")?,
    )?;
    std::fs::write(dir.join("client.pem"), client.cert_pem)?;
    Ok(())
}

fn write(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn corpus() -> Result<()> {
    let payloads = fx::payloads();
    let mut envelopes = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let env = fx::sealed(p.clone());
        // A seed must pass every check, or fuzzing starts from a refusal.
        let opened = trm_federation::inbound::open(
            fx::receiver_config(),
            fx::sender_peer(),
            &env,
            fx::now(),
        )
        .map_err(|(_, r, d)| format!("seed {i} refused: {r:?} {d}"))?;
        if let Err(r) = opened.inbound() {
            return Err(format!("seed {i} rejected: {r}").into());
        }
        write(
            "envelope_open",
            &format!("deliver-{i}"),
            &env.encode_to_vec(),
        )?;
        write("peer_payload", &format!("body-{i}"), &env.body)?;
        envelopes.push(env);
    }
    let batch = w::DeliverBatchRequest {
        envelopes: envelopes.clone(),
        session: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        sequence: 3,
    };
    write("envelope_open", "batch", &batch.encode_to_vec())?;

    // The structured target takes libFuzzer's bytes through `arbitrary`: its seeds are the
    // encoded bodies, which `arbitrary` reads from the front (short runs start it well).
    for (i, env) in envelopes.iter().enumerate() {
        write("envelope_sealed", &format!("body-{i}"), &env.body)?;
    }

    // Receipts: as received (mode 0) and as bodies that the target signs (mode 1).
    let key = fx::sender_key();
    let sent = fx::receipt_fixture();
    for (i, outcome) in [
        w::ReceiptOutcome::Accepted,
        w::ReceiptOutcome::Duplicate,
        w::ReceiptOutcome::Rejected,
    ]
    .into_iter()
    .enumerate()
    {
        let body = w::ReceiptBody {
            message_id: sent[0].0.to_string(),
            body_sha256: trm_crypto::sha256(&sent[0].1).to_vec(),
            receiver: fx::SENDER.into(),
            received_at: Some(trm_proto::convert::ts(fx::now())),
            outcome: outcome as i32,
            reason: if outcome == w::ReceiptOutcome::Rejected {
                "policy violation: disclosed.needs.notes".into()
            } else {
                String::new()
            },
        }
        .encode_to_vec();
        let signed = w::SignedReceipt {
            signature: key.sign(RECEIPT_TAG, &body),
            key_id: key.key_id().to_owned(),
            body: body.clone(),
        };
        write(
            "receipt_open",
            &format!("signed-{i}"),
            &[&[0], &signed.encode_to_vec()[..]].concat(),
        )?;
        write(
            "receipt_open",
            &format!("body-{i}"),
            &[&[1], &body[..]].concat(),
        )?;
    }
    let batch = w::BatchReceiptBody {
        receiver: fx::SENDER.into(),
        received_at: Some(trm_proto::convert::ts(fx::now())),
        entries: sent
            .iter()
            .map(|(id, body)| w::BatchReceiptEntry {
                message_id: id.to_string(),
                body_sha256: trm_crypto::sha256(body).to_vec(),
                outcome: w::ReceiptOutcome::Accepted as i32,
                reason: String::new(),
                duplicate: false,
            })
            .collect(),
    }
    .encode_to_vec();
    let signed = w::SignedReceipt {
        signature: key.sign(RECEIPT_TAG, &batch),
        key_id: key.key_id().to_owned(),
        body: batch.clone(),
    };
    write(
        "receipt_open",
        "batch-signed",
        &[&[0], &signed.encode_to_vec()[..]].concat(),
    )?;
    write("receipt_open", "batch-body", &[&[1], &batch[..]].concat())?;

    local_requests()?;

    // Configurations: the sandbox's and the examples of node-config/.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../node-config");
    for entry in std::fs::read_dir(configs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            write("config", &name.unwrap_or_default(), &std::fs::read(&path)?)?;
        }
    }

    write(
        "config",
        "postgres.toml",
        br#"[node]
id = "RO"
data_dir = "data"
key_store = "../keys/data-keys.store"
[storage]
engine = "postgres"
url = "postgres://trm@127.0.0.1:5432/trm"
schema = "trm_ro"
[log]
format = "json"
level = "info,trm_federation=debug"
[[peers]]
id = "AT"
endpoint = "127.0.0.1:7401"
tls_ca = "peers/AT-ca.pem"
signing_keys = ["peers/AT-signing.pub.pem"]
tls_pin_sha256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#,
    )?;

    // PEM texts: the fixture CA, a node chain, a stranger's and a client's certificate, a
    // signing public key; and the raw DER of the node certificate.
    for name in ["ca.pem", "node.pem", "stranger.pem", "client.pem"] {
        write("peer_pem", name, fx::fixture(name).as_bytes())?;
    }
    let public = trm_crypto::signing::public_to_pem(&key.public())?;
    write("peer_pem", "signing-public.pem", public.as_bytes())?;
    let der = trm_crypto::pki::first_der(&fx::fixture("node.pem"))?;
    write("peer_pem", "node.der", &der)?;
    Ok(())
}

fn local_requests() -> Result<()> {
    let case_id = uuid::Uuid::now_v7().to_string();
    let person = w::Person {
        given_name: "Ada".into(),
        family_name: "Example".into(),
        date_of_birth: "2001-04-05".into(),
        gender: w::Gender::Female as i32,
        citizenship: vec!["NG".into()],
        languages: vec!["en".into()],
        document_number: "X0000000".into(),
        address: "1 Example Street".into(),
        phone: "+430000000".into(),
    };
    let requests: Vec<(u8, Vec<u8>)> = vec![
        (
            L::CreateCase.byte(),
            w::CreateCaseRequest {
                person: Some(person.clone()),
                needs: Some(w::Needs {
                    kinds: vec![w::NeedKind::Shelter as i32],
                    urgency: w::Urgency::Emergency as i32,
                    notes: "met at the shelter".into(),
                }),
                exploitation: Some(w::Exploitation {
                    types: vec![w::ExploitationType::ForcedLabour as i32],
                    countries: vec!["AT".into()],
                }),
                child: None,
                identified_on: "2025-12-01".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RecordConsent.byte(),
            w::RecordConsentRequest {
                case_id: case_id.clone(),
                purposes: vec![w::Purpose::ReferralAssistance as i32],
                recipients: vec!["RO".into()],
                expires_on: "2026-12-31".into(),
                informed: true,
                information_language: "en".into(),
                categories: vec![w::DataCategory::Needs as i32],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::SubmitReferral.byte(),
            w::SubmitReferralRequest {
                case_id: case_id.clone(),
                destination: "RO".into(),
                requested_services: vec![w::NeedKind::Legal as i32],
                reason: "family in RO".into(),
                request_id: uuid::Uuid::new_v4().to_string(),
            }
            .encode_to_vec(),
        ),
        (
            L::ListReferrals.byte(),
            w::ListReferralsRequest {
                direction: w::Direction::Incoming as i32,
                page_size: 50,
                page_token: case_id.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::RecordRiskAssessment.byte(),
            w::RecordRiskAssessmentRequest {
                case_id: case_id.clone(),
                level: w::RiskLevel::High as i32,
                non_refoulement_concern: true,
                factors: vec!["trafficker at home".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::ScheduleReturn.byte(),
            w::ScheduleReturnRequest {
                return_id: case_id.clone(),
                travel_at: Some(trm_proto::convert::ts(fx::now())),
                details: "escorted".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RequestHearing.byte(),
            w::RequestHearingRequest {
                case_id: case_id.clone(),
                witness_country: "RO".into(),
                proceeding_reference: "2025/CR/118".into(),
                measures: vec![w::ProtectiveMeasure::Anonymity as i32],
                language: "ro".into(),
                legal_basis: "EU 2014/41".into(),
                proposed_times: vec![trm_proto::convert::ts(fx::now())],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::RespondToHearing.byte(),
            w::RespondToHearingRequest {
                hearing_id: case_id.clone(),
                decision: w::HearingDecision::Schedule as i32,
                reason: String::new(),
                scheduled_at: Some(trm_proto::convert::ts(fx::now())),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::UpsertPeer.byte(),
            w::UpsertPeerRequest {
                peer: Some(w::Peer {
                    node_id: "AT".into(),
                    endpoint: "at.example:7443".into(),
                    tls_ca_pem: fx::fixture("ca.pem"),
                    signing_keys_pem: vec![trm_crypto::signing::public_to_pem(
                        &fx::sender_key().public(),
                    )?],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::UpsertPeer.byte(),
            w::UpsertPeerRequest {
                peer: Some(w::Peer {
                    node_id: "AT".into(),
                    endpoint: "at.example:7443".into(),
                    tls_ca_pem: fx::fixture("ca.pem"),
                    signing_keys: vec![w::SigningKey {
                        key_id: fx::sender_key().key_id().into(),
                        public_key: fx::sender_key().public().as_bytes().to_vec(),
                        valid_from: Some(trm_proto::convert::ts(fx::now())),
                        valid_until: None,
                    }],
                    tls_pin_sha256: "ab".repeat(32),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    let id = || uuid::Uuid::now_v7().to_string();
    let page = |page_size| (page_size, id());
    let more: Vec<(L, Vec<u8>)> = vec![
        // ReferralService
        (
            L::GetCase,
            w::GetCaseRequest { case_id: id() }.encode_to_vec(),
        ),
        (L::ListCases, {
            let (page_size, page_token) = page(20);
            w::ListCasesRequest {
                page_size,
                page_token,
            }
            .encode_to_vec()
        }),
        (
            L::WithdrawConsent,
            w::WithdrawConsentRequest {
                case_id: id(),
                consent_id: id(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::GetReferral,
            w::GetReferralRequest { referral_id: id() }.encode_to_vec(),
        ),
        (
            L::RespondToReferral,
            w::RespondToReferralRequest {
                referral_id: id(),
                decision: w::ReferralDecision::Accept as i32,
                reason: "we can take this case".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::AssignCase,
            w::AssignCaseRequest {
                referral_id: id(),
                organisation: "shelter-ro".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::CloseReferral,
            w::CloseReferralRequest {
                referral_id: id(),
                reason: "services delivered".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::EraseCase,
            w::EraseCaseRequest {
                case_id: id(),
                reason: "retention period over".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::WithdrawReferral,
            w::WithdrawReferralRequest {
                referral_id: id(),
                reason: "sent by mistake".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        // ReturnPlanningService
        (
            L::RecordReturnDecision,
            w::RecordReturnDecisionRequest {
                case_id: id(),
                voluntary: true,
                informed: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::ProposeReturn,
            w::ProposeReturnRequest {
                case_id: id(),
                destination: "RO".into(),
                hearing_pending: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::GetReturnPlan,
            w::GetReturnPlanRequest { return_id: id() }.encode_to_vec(),
        ),
        (L::ListReturnPlans, {
            let (page_size, page_token) = page(10);
            w::ListReturnPlansRequest {
                direction: w::Direction::Outgoing as i32,
                page_size,
                page_token,
                ..Default::default()
            }
            .encode_to_vec()
        }),
        (
            L::RespondToReturn,
            w::RespondToReturnRequest {
                return_id: id(),
                response: w::ReturnResponse::ConfirmReception as i32,
                details: "reception at the shelter".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::ConfirmArrival,
            w::ConfirmArrivalRequest {
                return_id: id(),
                details: "arrived".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RecordFollowUp,
            w::RecordFollowUpRequest {
                return_id: id(),
                notes: "visited after a month".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::HaltReturn,
            w::HaltReturnRequest {
                return_id: id(),
                reason: "new risk".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RecordTravel,
            w::RecordTravelRequest {
                return_id: id(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::ResolveConcern,
            w::ResolveConcernRequest {
                return_id: id(),
                details: "escort arranged".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::CloseReturn,
            w::CloseReturnRequest {
                return_id: id(),
                reason: "follow-up complete".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        // WitnessHearingService
        (
            L::GetHearing,
            w::GetHearingRequest { hearing_id: id() }.encode_to_vec(),
        ),
        (L::ListHearings, {
            let (page_size, page_token) = page(5);
            w::ListHearingsRequest {
                direction: w::Direction::Incoming as i32,
                page_size,
                page_token,
                ..Default::default()
            }
            .encode_to_vec()
        }),
        (
            L::RecordHearingOutcome,
            w::RecordHearingOutcomeRequest {
                hearing_id: id(),
                minutes_reference: "2026/M/7".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::CancelHearing,
            w::CancelHearingRequest {
                hearing_id: id(),
                reason: "witness unwell".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        // AdminService
        (L::Status, Vec::new()),
        (L::VerifyAudit, Vec::new()),
        (
            L::ListPeers,
            w::ListPeersRequest {
                page_size: 10,
                page_token: "AT".into(),
            }
            .encode_to_vec(),
        ),
        (
            L::RemovePeer,
            w::RemovePeerRequest {
                node_id: "AT".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::ListOutbox,
            w::ListOutboxRequest {
                peer: "AT".into(),
                dead_letters_only: true,
                page_size: 10,
                page_token: id(),
            }
            .encode_to_vec(),
        ),
        (
            L::RetryDelivery,
            w::RetryDeliveryRequest {
                message_id: id(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RotateSigningKey,
            w::RotateSigningKeyRequest {
                overlap_days: 30,
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::ExportStatistics,
            w::ExportStatisticsRequest {
                period_start: "2025-01-01".into(),
                period_end: "2025-07-01".into(),
            }
            .encode_to_vec(),
        ),
        (
            L::Backup,
            w::BackupRequest {
                path: "/var/backups/trm/2026-01-01".into(),
            }
            .encode_to_vec(),
        ),
        (
            L::RevokeClientCertificate,
            w::RevokeClientCertificateRequest {
                serial_hex: "1f3a9c".into(),
                request_id: String::new(),
                issuer: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::ListRevokedClientCertificates,
            w::ListRevokedClientCertificatesRequest {
                page_size: 10,
                page_token: "1f3a9c".into(),
            }
            .encode_to_vec(),
        ),
        (
            L::ExportAudit,
            w::ExportAuditRequest {
                page_size: 100,
                page_token: "41".into(),
            }
            .encode_to_vec(),
        ),
        (
            L::ListSigningKeys,
            w::ListSigningKeysRequest {}.encode_to_vec(),
        ),
        // ReferralService, cases over time
        (L::ListConsents, {
            let (page_size, page_token) = page(10);
            w::ListConsentsRequest {
                case_id: id(),
                page_size,
                page_token,
            }
            .encode_to_vec()
        }),
        (
            L::RecordIdentification,
            w::RecordIdentificationRequest {
                case_id: id(),
                stage: w::IdentificationStage::ReasonableGrounds as i32,
                decided_on: "2025-12-03".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RecordResidenceStatus,
            w::RecordResidenceStatusRequest {
                case_id: id(),
                status: w::ResidenceStatus::TemporaryPermit as i32,
                valid_until: "2026-12-31".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::UpdateCase,
            w::UpdateCaseRequest {
                case_id: id(),
                child: Some(w::ChildInfo {
                    is_child: true,
                    guardian_assigned: true,
                    best_interests_determined: false,
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["child".into()],
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::ListTasks,
            w::ListTasksRequest {
                kinds: vec![w::TaskKind::AnswerReferral as i32],
                overdue_only: true,
                page_size: 10,
                page_token: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::ResolvePossibleDuplicate,
            w::ResolvePossibleDuplicateRequest {
                case_id: id(),
                same_person: true,
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::RaiseSafetyAlert,
            w::RaiseSafetyAlertRequest {
                case_id: id(),
                country: "RO".into(),
                kind: w::SafetyAlertKind::Extradition as i32,
                effective_on: "2026-03-01".into(),
                request_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            L::GetSafetyAlert,
            w::GetSafetyAlertRequest { alert_id: id() }.encode_to_vec(),
        ),
        (
            L::ListSafetyAlerts,
            w::ListSafetyAlertsRequest {
                direction: w::Direction::Incoming as i32,
                status: vec![w::SafetyAlertStatus::Delivered as i32],
                page_size: 20,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::AcknowledgeSafetyAlert,
            w::AcknowledgeSafetyAlertRequest {
                alert_id: id(),
                request_id: id(),
            }
            .encode_to_vec(),
        ),
        // RemediesService
        (
            L::FileClaim,
            w::FileClaimRequest {
                case_id: id(),
                kind: w::ClaimKind::StateFund as i32,
                forum_country: "RO".into(),
                request_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            L::UpdateClaim,
            w::UpdateClaimRequest {
                claim_id: id(),
                status: w::ClaimStatus::Awarded as i32,
                reason: "order 17/26".into(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::GetClaim,
            w::GetClaimRequest { claim_id: id() }.encode_to_vec(),
        ),
        (
            L::ListClaims,
            w::ListClaimsRequest {
                direction: w::Direction::Incoming as i32,
                page_size: 20,
                status: vec![w::ClaimStatus::Filed as i32],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::RequestVictimStatus,
            w::RequestVictimStatusRequest {
                case_id: id(),
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::AttestVictimStatus,
            w::AttestVictimStatusRequest {
                request_id_of_peer: id(),
                decision: w::AttestationDecision::Attest as i32,
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            L::GetVictimStatus,
            w::GetVictimStatusRequest {
                status_request_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            L::ListVictimStatusRequests,
            w::ListVictimStatusRequestsRequest {
                direction: w::Direction::Outgoing as i32,
                page_size: 5,
                status: vec![w::VictimStatusState::Attested as i32],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            L::WatchEvents,
            w::WatchEventsRequest {
                after: "1024".into(),
            }
            .encode_to_vec(),
        ),
    ];
    let mut requests: Vec<(u8, Vec<u8>)> = requests
        .into_iter()
        .chain(more.into_iter().map(|(l, body)| (l.byte(), body)))
        .collect();
    // A request added to the table without a seed here gets one of its defaults.
    for l in L::ALL {
        if !requests.iter().any(|(b, _)| *b == l.byte()) {
            requests.extend(l.default_body().map(|body| (l.byte(), body)));
        }
    }
    for (i, (which, body)) in requests.into_iter().enumerate() {
        write(
            "local_request",
            &format!("request-{i}"),
            &[&[which], &body[..]].concat(),
        )?;
    }
    Ok(())
}
