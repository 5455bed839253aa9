//! A local client's request bodies (services and admin ports), decoded as tonic decodes
//! them, then converted into domain types as the node's handlers do: the whole-message
//! conversions of `trm-proto` (`new_case`, `consent_input`, `page`, `direction`, ...) and
//! the admin port's peer ([`trm_node::admin::peer_from_wire`]); for the requests whose
//! handler parses field by field, the same `trm-proto` field parsers on the same fields.
//! The first byte chooses the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_core::hearing::ProtectiveMeasure;
use trm_core::ids::{CaseId, HearingId, ReferralId, ReturnId};
use trm_core::model::NeedKind;
use trm_fuzz_common as fx;
use trm_proto::{convert as c, v1 as w};

fn decode<M: Message + Default>(data: &[u8]) -> Option<M> {
    M::decode(data).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let today = fx::now().date();
    match which % 14 {
        0 => {
            if let Some(r) = decode::<w::CreateCaseRequest>(data) {
                let _ = c::new_case(&r, today);
            }
        }
        1 => {
            if let Some(r) = decode::<w::RecordConsentRequest>(data) {
                let _ = c::consent_input(&r, today);
            }
        }
        2 => {
            if let Some(r) = decode::<w::SubmitReferralRequest>(data) {
                let _ = CaseId::parse("case_id", &r.case_id);
                let _ = c::country("destination", &r.destination);
                let _ = c::enums::<NeedKind>("requested_services", &r.requested_services);
                let _ = c::text("reason", &r.reason);
            }
        }
        3 => {
            if let Some(r) = decode::<w::ListReferralsRequest>(data) {
                let _ = c::direction("direction", r.direction);
                let _ = c::page(r.page_size, &r.page_token);
                if !r.page_token.is_empty() {
                    let _ = ReferralId::parse("page_token", &r.page_token);
                }
            }
        }
        4 => {
            if let Some(r) = decode::<w::ListCasesRequest>(data) {
                let _ = c::page(r.page_size, &r.page_token);
                let _ = CaseId::parse("page_token", &r.page_token);
            }
        }
        5 => {
            if let Some(r) = decode::<w::RespondToReferralRequest>(data) {
                let _ = ReferralId::parse("referral_id", &r.referral_id);
                let _ = w::ReferralDecision::try_from(r.decision);
                let _ = c::text("reason", &r.reason);
            }
        }
        6 => {
            if let Some(r) = decode::<w::RecordRiskAssessmentRequest>(data) {
                let _ = CaseId::parse("case_id", &r.case_id);
                let _ = c::risk_level("level", r.level);
                let _ = c::shorts("factors", &r.factors);
            }
        }
        7 => {
            if let Some(r) = decode::<w::ProposeReturnRequest>(data) {
                let _ = CaseId::parse("case_id", &r.case_id);
                let _ = c::country("destination", &r.destination);
            }
        }
        8 => {
            if let Some(r) = decode::<w::RespondToReturnRequest>(data) {
                let _ = ReturnId::parse("return_id", &r.return_id);
                let _ = w::ReturnResponse::try_from(r.response);
                let _ = c::text("details", &r.details);
            }
        }
        9 => {
            if let Some(r) = decode::<w::ScheduleReturnRequest>(data) {
                let _ = ReturnId::parse("return_id", &r.return_id);
                let _ = c::from_ts("travel_at", r.travel_at.as_ref());
                let _ = c::text("details", &r.details);
            }
        }
        10 => {
            if let Some(r) = decode::<w::RequestHearingRequest>(data) {
                let _ = trm_core::ids::parse_id("case_id", &r.case_id);
                let _ = c::country("witness_country", &r.witness_country);
                let _ = c::short("proceeding_reference", &r.proceeding_reference, true);
                let _ = c::short("legal_basis", &r.legal_basis, true);
                let _ = c::enums::<ProtectiveMeasure>("measures", &r.measures);
                let _ = c::language("language", &r.language);
                let _ = c::timestamps("proposed_times", &r.proposed_times);
            }
        }
        11 => {
            if let Some(r) = decode::<w::RespondToHearingRequest>(data) {
                let _ = HearingId::parse("hearing_id", &r.hearing_id);
                let _ = c::text("reason", &r.reason);
                let _ = w::HearingDecision::try_from(r.decision);
                let _ = c::from_ts("scheduled_at", r.scheduled_at.as_ref());
            }
        }
        12 => {
            if let Some(r) = decode::<w::UpsertPeerRequest>(data) {
                if let Some(peer) = &r.peer {
                    let _ = trm_node::admin::peer_from_wire(peer, fx::node(fx::RECEIVER), |_| {
                        fx::sender_peer().keys.clone()
                    });
                }
            }
        }
        _ => {
            if let Some(r) = decode::<w::ListHearingsRequest>(data) {
                let _ = c::direction("direction", r.direction);
                let _ = c::page(r.page_size, &r.page_token);
                if !r.page_token.is_empty() {
                    let _ = HearingId::parse("page_token", &r.page_token);
                }
            }
        }
    }
});
