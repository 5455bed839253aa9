//! A local client's request bodies: every request of the local services (`ReferralService`,
//! `ReturnPlanningService`, `WitnessHearingService`, `RemediesService`, `AdminService`), decoded as tonic
//! decodes them, then converted into domain types as the node's handlers do, with the same
//! functions: the commands of `trm_proto::command` (`TryFrom` of each request, the very
//! conversion the handler runs), the whole-message conversions of `trm-proto` (`new_case`,
//! `consent_input`), its field parsers for the admin requests, and the admin port's own parsers
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
use trm_core::exchange::StepRequest;
use trm_core::hearing::{HearingRecord as Hearing, HearingStatus};
use trm_core::ids::{
    AlertId, CaseId, ClaimId, HearingId, MessageId, ReferralId, ReturnId,
};
use trm_core::model::parse_date;
use trm_core::referral::{ReferralRecord as Referral, ReferralStatus};
use trm_core::remedies::{
    ClaimRecord as Claim, ClaimStatus, StatusRequestId, VictimStatusRecord as VictimStatus, VictimStatusState,
};
use trm_core::returns::{ReturnDecision, ReturnRecord as Return, ReturnStatus, RiskAssessment};
use trm_core::safety::{SafetyAlertRecord, SafetyAlertStatus};
use trm_core::stats::Period;
use trm_fuzz_common::{self as fx, Local as L};
use trm_node::admin;
use trm_proto::command::{
    EraseCase, FileClaim, Get, List, ListConsents, ListTasks, Paged, ProposeReturn,
    RaiseSafetyAlert, RecordIdentification, RecordResidenceStatus, RequestHearing,
    RequestVictimStatus, ResolveDuplicate, SubmitReferral, UpdateCase, WatchEvents,
    WithdrawConsent,
};
use trm_proto::{convert as c, v1 as w};

/// Decodes `data` as `M` and, if it decodes, runs `f` on it.
fn on<M: Message + Default>(data: &[u8], f: impl FnOnce(M)) {
    if let Ok(m) = M::decode(data) {
        f(m);
    }
}

/// Decodes `data` as `M` and, if it decodes, parses it into the command `T` the handler
/// parses it into.
fn parse<M, T>(data: &[u8])
where
    M: Message + Default,
    T: for<'a> TryFrom<&'a M>,
{
    if let Ok(m) = M::decode(data) {
        let _ = T::try_from(&m);
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
        L::GetCase => parse::<w::GetCaseRequest, Get<CaseId>>(data),
        L::ListCases => parse::<w::ListCasesRequest, Paged<CaseId>>(data),
        L::RecordConsent => on(data, |r: w::RecordConsentRequest| {
            let _ = c::consent_input(&r, today);
        }),
        L::WithdrawConsent => parse::<w::WithdrawConsentRequest, WithdrawConsent>(data),
        L::SubmitReferral => parse::<w::SubmitReferralRequest, SubmitReferral>(data),
        L::GetReferral => parse::<w::GetReferralRequest, Get<ReferralId>>(data),
        L::ListReferrals => {
            parse::<w::ListReferralsRequest, List<ReferralId, ReferralStatus>>(data)
        }
        L::RespondToReferral => parse::<w::RespondToReferralRequest, StepRequest<Referral>>(data),
        L::AssignCase => parse::<w::AssignCaseRequest, StepRequest<Referral>>(data),
        L::CloseReferral => parse::<w::CloseReferralRequest, StepRequest<Referral>>(data),
        L::EraseCase => parse::<w::EraseCaseRequest, EraseCase>(data),
        L::WithdrawReferral => parse::<w::WithdrawReferralRequest, StepRequest<Referral>>(data),
        L::ListConsents => parse::<w::ListConsentsRequest, ListConsents>(data),
        L::RecordIdentification => {
            parse::<w::RecordIdentificationRequest, RecordIdentification>(data)
        }
        L::RecordResidenceStatus => {
            parse::<w::RecordResidenceStatusRequest, RecordResidenceStatus>(data)
        }
        L::UpdateCase => parse::<w::UpdateCaseRequest, UpdateCase>(data),
        L::ListTasks => parse::<w::ListTasksRequest, ListTasks>(data),
        L::ResolvePossibleDuplicate => {
            parse::<w::ResolvePossibleDuplicateRequest, ResolveDuplicate>(data)
        }

        // SafetyService
        L::RaiseSafetyAlert => parse::<w::RaiseSafetyAlertRequest, RaiseSafetyAlert>(data),
        L::GetSafetyAlert => parse::<w::GetSafetyAlertRequest, Get<AlertId>>(data),
        L::ListSafetyAlerts => {
            parse::<w::ListSafetyAlertsRequest, List<AlertId, SafetyAlertStatus>>(data)
        }
        L::AcknowledgeSafetyAlert => {
            parse::<w::AcknowledgeSafetyAlertRequest, StepRequest<SafetyAlertRecord>>(data)
        }
        // RemediesService
        L::FileClaim => parse::<w::FileClaimRequest, FileClaim>(data),
        L::UpdateClaim => parse::<w::UpdateClaimRequest, StepRequest<Claim>>(data),
        L::GetClaim => parse::<w::GetClaimRequest, Get<ClaimId>>(data),
        L::ListClaims => parse::<w::ListClaimsRequest, List<ClaimId, ClaimStatus>>(data),
        L::RequestVictimStatus => parse::<w::RequestVictimStatusRequest, RequestVictimStatus>(data),
        L::AttestVictimStatus => {
            parse::<w::AttestVictimStatusRequest, StepRequest<VictimStatus>>(data)
        }
        L::GetVictimStatus => parse::<w::GetVictimStatusRequest, Get<StatusRequestId>>(data),
        L::WatchEvents => parse::<w::WatchEventsRequest, WatchEvents>(data),
        L::ListVictimStatusRequests => parse::<
            w::ListVictimStatusRequestsRequest,
            List<StatusRequestId, VictimStatusState>,
        >(data),

        // ReturnPlanningService
        L::RecordRiskAssessment => parse::<w::RecordRiskAssessmentRequest, RiskAssessment>(data),
        L::RecordReturnDecision => parse::<w::RecordReturnDecisionRequest, ReturnDecision>(data),
        L::ProposeReturn => parse::<w::ProposeReturnRequest, ProposeReturn>(data),
        L::GetReturnPlan => parse::<w::GetReturnPlanRequest, Get<ReturnId>>(data),
        L::ListReturnPlans => {
            parse::<w::ListReturnPlansRequest, List<ReturnId, ReturnStatus>>(data)
        }
        L::RespondToReturn => parse::<w::RespondToReturnRequest, StepRequest<Return>>(data),
        L::ScheduleReturn => parse::<w::ScheduleReturnRequest, StepRequest<Return>>(data),
        L::ConfirmArrival => parse::<w::ConfirmArrivalRequest, StepRequest<Return>>(data),
        L::RecordFollowUp => parse::<w::RecordFollowUpRequest, StepRequest<Return>>(data),
        L::HaltReturn => parse::<w::HaltReturnRequest, StepRequest<Return>>(data),
        L::RecordTravel => parse::<w::RecordTravelRequest, StepRequest<Return>>(data),
        L::ResolveConcern => parse::<w::ResolveConcernRequest, StepRequest<Return>>(data),
        L::CloseReturn => parse::<w::CloseReturnRequest, StepRequest<Return>>(data),

        // WitnessHearingService
        L::RequestHearing => parse::<w::RequestHearingRequest, RequestHearing>(data),
        L::GetHearing => parse::<w::GetHearingRequest, Get<HearingId>>(data),
        L::ListHearings => parse::<w::ListHearingsRequest, List<HearingId, HearingStatus>>(data),
        L::RespondToHearing => parse::<w::RespondToHearingRequest, StepRequest<Hearing>>(data),
        L::RecordHearingOutcome => {
            parse::<w::RecordHearingOutcomeRequest, StepRequest<Hearing>>(data)
        }
        L::CancelHearing => parse::<w::CancelHearingRequest, StepRequest<Hearing>>(data),

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
