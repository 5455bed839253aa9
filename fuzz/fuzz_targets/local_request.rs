//! A local client's request bodies: every request of the local services (`ReferralService`,
//! `ReturnPlanningService`, `WitnessHearingService`, `AdminService`), decoded as tonic
//! decodes them, then converted into domain types as the node's handlers do, with the same
//! functions on the same fields: the whole-message conversions of `trm-proto` (`new_case`,
//! `consent_input`), its field parsers (`text`, `short`, `country`, `page`, `direction`,
//! `from_ts`, ...), the id parsers of `trm-core`, and the admin port's own parsers
//! ([`trm_node::admin::peer_from_wire`], `serial`, `audit_page`). The first byte chooses the
//! request ([`fx::Local`], one per RPC, in the order below).
//!
//! Requests with no fields to parse (decoding only): `Status`, `VerifyAudit` and
//! `ListSigningKeys` (empty messages). What handlers check beyond parsing (authorisation, the peer directory, the
//! store) is not here; nor are `request_id`s, which come from the metadata, not the body.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_core::hearing::ProtectiveMeasure;
use trm_core::ids::{
    parse_id, CaseId, ConsentId, HearingId, MessageId, OrgId, ReferralId, ReturnId,
};
use trm_core::model::{parse_date, NeedKind};
use trm_core::stats::Period;
use trm_core::FieldError;
use trm_fuzz_common::{self as fx, Local as L};
use trm_node::admin;
use trm_proto::{convert as c, v1 as w};

/// Decodes `data` as `M` and, if it decodes, runs `f` on it.
fn on<M: Message + Default>(data: &[u8], f: impl FnOnce(M)) {
    if let Ok(m) = M::decode(data) {
        f(m);
    }
}

/// `convert::page`, then the parse of its token as the last id already listed, as the
/// paged listings of records do.
fn page_after<T>(size: i32, token: &str, id: fn(&str, &str) -> Result<T, FieldError>) {
    if let Ok(page) = c::page(size, token) {
        if let Some(t) = page.after.as_deref() {
            let _ = id("page_token", t);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let today = fx::now().date();
    match L::of(which) {
        // ReferralService
        L::CreateCase => on(data, |r: w::CreateCaseRequest| {
            let _ = c::new_case(&r, today);
        }),
        L::GetCase => on(data, |r: w::GetCaseRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
        }),
        L::ListCases => on(data, |r: w::ListCasesRequest| {
            page_after(r.page_size, &r.page_token, CaseId::parse);
        }),
        L::RecordConsent => on(data, |r: w::RecordConsentRequest| {
            let _ = c::consent_input(&r, today);
        }),
        L::WithdrawConsent => on(data, |r: w::WithdrawConsentRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
            let _ = ConsentId::parse("consent_id", &r.consent_id);
        }),
        L::SubmitReferral => on(data, |r: w::SubmitReferralRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
            let _ = c::country("destination", &r.destination);
            let _ = c::enums::<NeedKind>("requested_services", &r.requested_services);
            let _ = c::text("reason", &r.reason);
        }),
        L::GetReferral => on(data, |r: w::GetReferralRequest| {
            let _ = ReferralId::parse("referral_id", &r.referral_id);
        }),
        L::ListReferrals => on(data, |r: w::ListReferralsRequest| {
            let _ = c::direction("direction", r.direction);
            page_after(r.page_size, &r.page_token, ReferralId::parse);
        }),
        L::RespondToReferral => on(data, |r: w::RespondToReferralRequest| {
            let _ = ReferralId::parse("referral_id", &r.referral_id);
            let _ = w::ReferralDecision::try_from(r.decision);
            let _ = c::text("reason", &r.reason);
        }),
        L::AssignCase => on(data, |r: w::AssignCaseRequest| {
            let _ = ReferralId::parse("referral_id", &r.referral_id);
            let _ = OrgId::parse("organisation", &r.organisation);
        }),
        L::CloseReferral => on(data, |r: w::CloseReferralRequest| {
            let _ = ReferralId::parse("referral_id", &r.referral_id);
            let _ = c::text("reason", &r.reason);
        }),
        L::EraseCase => on(data, |r: w::EraseCaseRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
            let _ = c::short("reason", &r.reason, false);
        }),
        L::WithdrawReferral => on(data, |r: w::WithdrawReferralRequest| {
            let _ = ReferralId::parse("referral_id", &r.referral_id);
            let _ = c::text("reason", &r.reason);
        }),

        // ReturnPlanningService
        L::RecordRiskAssessment => on(data, |r: w::RecordRiskAssessmentRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
            let _ = c::risk_level("level", r.level);
            let _ = c::shorts("factors", &r.factors);
        }),
        L::RecordReturnDecision => on(data, |r: w::RecordReturnDecisionRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
        }),
        L::ProposeReturn => on(data, |r: w::ProposeReturnRequest| {
            let _ = CaseId::parse("case_id", &r.case_id);
            let _ = c::country("destination", &r.destination);
        }),
        L::GetReturnPlan => on(data, |r: w::GetReturnPlanRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
        }),
        L::ListReturnPlans => on(data, |r: w::ListReturnPlansRequest| {
            let _ = c::direction("direction", r.direction);
            page_after(r.page_size, &r.page_token, ReturnId::parse);
        }),
        L::RespondToReturn => on(data, |r: w::RespondToReturnRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = w::ReturnResponse::try_from(r.response);
            let _ = c::text("details", &r.details);
        }),
        L::ScheduleReturn => on(data, |r: w::ScheduleReturnRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = c::from_ts("travel_at", r.travel_at.as_ref());
            let _ = c::text("details", &r.details);
        }),
        L::ConfirmArrival => on(data, |r: w::ConfirmArrivalRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = c::text("details", &r.details);
        }),
        L::RecordFollowUp => on(data, |r: w::RecordFollowUpRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = c::text("notes", &r.notes);
        }),
        L::HaltReturn => on(data, |r: w::HaltReturnRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = c::text("reason", &r.reason);
        }),
        L::RecordTravel => on(data, |r: w::RecordTravelRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
        }),
        L::ResolveConcern => on(data, |r: w::ResolveConcernRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = c::text("details", &r.details);
        }),
        L::CloseReturn => on(data, |r: w::CloseReturnRequest| {
            let _ = ReturnId::parse("return_id", &r.return_id);
            let _ = c::text("reason", &r.reason);
        }),

        // WitnessHearingService
        L::RequestHearing => on(data, |r: w::RequestHearingRequest| {
            let _ = parse_id("case_id", &r.case_id);
            let _ = c::country("witness_country", &r.witness_country);
            let _ = c::short("proceeding_reference", &r.proceeding_reference, true);
            let _ = c::short("legal_basis", &r.legal_basis, true);
            let _ = c::enums::<ProtectiveMeasure>("measures", &r.measures);
            let _ = c::language("language", &r.language);
            let _ = c::timestamps("proposed_times", &r.proposed_times);
        }),
        L::GetHearing => on(data, |r: w::GetHearingRequest| {
            let _ = HearingId::parse("hearing_id", &r.hearing_id);
        }),
        L::ListHearings => on(data, |r: w::ListHearingsRequest| {
            let _ = c::direction("direction", r.direction);
            page_after(r.page_size, &r.page_token, HearingId::parse);
        }),
        L::RespondToHearing => on(data, |r: w::RespondToHearingRequest| {
            let _ = HearingId::parse("hearing_id", &r.hearing_id);
            let _ = c::text("reason", &r.reason);
            // The time is read only for a schedule.
            if w::HearingDecision::try_from(r.decision) == Ok(w::HearingDecision::Schedule) {
                let _ = c::from_ts("scheduled_at", r.scheduled_at.as_ref());
            }
        }),
        L::RecordHearingOutcome => on(data, |r: w::RecordHearingOutcomeRequest| {
            let _ = HearingId::parse("hearing_id", &r.hearing_id);
            let _ = c::short("minutes_reference", &r.minutes_reference, true);
        }),
        L::CancelHearing => on(data, |r: w::CancelHearingRequest| {
            let _ = HearingId::parse("hearing_id", &r.hearing_id);
            let _ = c::text("reason", &r.reason);
        }),

        // AdminService
        L::Status => on(data, |_: w::StatusRequest| {}),
        L::ListPeers => on(data, |r: w::ListPeersRequest| {
            let _ = c::page(r.page_size, &r.page_token);
        }),
        L::UpsertPeer => on(data, |r: w::UpsertPeerRequest| {
            if let Some(peer) = &r.peer {
                let _ = admin::peer_from_wire(peer, fx::node(fx::RECEIVER), |_| {
                    fx::sender_peer().keys.clone()
                });
            }
        }),
        L::RemovePeer => on(data, |r: w::RemovePeerRequest| {
            let _ = c::country("node_id", &r.node_id);
        }),
        L::ListOutbox => on(data, |r: w::ListOutboxRequest| {
            let _ = c::page(r.page_size, &r.page_token);
            if !r.peer.is_empty() {
                let _ = c::country("peer", &r.peer);
            }
        }),
        L::RetryDelivery => on(data, |r: w::RetryDeliveryRequest| {
            let _ = MessageId::parse("message_id", &r.message_id);
        }),
        L::VerifyAudit => on(data, |_: w::VerifyAuditRequest| {}),
        L::RotateSigningKey => on(data, |r: w::RotateSigningKeyRequest| {
            // A bound, not a parse: what the handler checks of the body.
            let _ = r.overlap_days <= admin::MAX_OVERLAP_DAYS;
        }),
        L::ExportStatistics => on(data, |r: w::ExportStatisticsRequest| {
            let start = parse_date("period_start", &r.period_start);
            let end = parse_date("period_end", &r.period_end);
            if let (Ok(start), Ok(end)) = (start, end) {
                let _ = Period::closed(start, end, today);
            }
        }),
        L::Backup => on(data, |r: w::BackupRequest| {
            let _ = Path::new(&r.path).is_absolute();
        }),
        L::RevokeClientCertificate => on(data, |r: w::RevokeClientCertificateRequest| {
            let _ = admin::serial(&r.serial_hex);
        }),
        L::ListRevokedClientCertificates => {
            on(data, |r: w::ListRevokedClientCertificatesRequest| {
                let _ = c::page(r.page_size, &r.page_token);
            })
        }
        L::ExportAudit => on(data, |r: w::ExportAuditRequest| {
            let _ = admin::audit_page(r.page_size, &r.page_token);
        }),
        L::ListSigningKeys => on(data, |_: w::ListSigningKeysRequest| {}),
    }
});
