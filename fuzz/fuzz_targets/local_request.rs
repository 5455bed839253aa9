//! A local client's request bodies: every request of the local services (`ReferralService`,
//! `ReturnPlanningService`, `WitnessHearingService`, `SafetyService`, `RemediesService`,
//! `WorkService`, `AdminService`), decoded as tonic decodes them, then converted into domain
//! types as the node's handlers do, with the same functions. The first byte chooses the
//! request ([`fx::Local`], one per RPC, in selector order).
//!
//! Most requests are parsed into the command of `trm_proto::command` their handler parses
//! them into (`TryFrom`, the very conversion the handler runs): the table of
//! `trm_fuzz_common` names the message and the command, and `Local::parse_command` runs it,
//! so a new request takes one line there. The others are parsed below as their handlers
//! do: the whole-message conversions of `trm-proto` (`new_case`, `consent_input`), its field
//! parsers for the admin requests, and the admin port's own parsers
//! ([`trm_node::admin::peer_from_wire`], `serial`, `audit_page`).
//!
//! Requests with no fields to parse (decoding only): `Status`, `VerifyAudit` and
//! `ListSigningKeys` (empty messages). What handlers check beyond parsing (authorisation,
//! the peer directory, the store) is not here; nor are `request_id`s, which come from the
//! metadata, not the body.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_core::ids::MessageId;
use trm_core::model::parse_date;
use trm_core::stats::Period;
use trm_fuzz_common::{self as fx, Local as L};
use trm_node::admin;
use trm_proto::{convert as c, v1 as w};

/// Decodes `data` as `M` and, if it decodes, runs `f` on it.
fn on<M: Message + Default>(data: &[u8], f: impl FnOnce(M)) {
    if let Ok(m) = M::decode(data) {
        f(m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let which = L::of(which);
    // Most requests: the command their handler parses them into (the table in
    // trm_fuzz_common).
    if which.parse_command(data) {
        return;
    }
    let today = fx::now().date();
    match which {
        // ReferralService
        L::CreateCase => on(data, |r: w::CreateCaseRequest| {
            let _ = c::new_case(&r, today);
        }),
        L::RecordConsent => on(data, |r: w::RecordConsentRequest| {
            let _ = c::consent_input(&r, today);
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
        // Every other request is in the table and parsed above: one that is in neither
        // place is found by the first run on the corpus.
        other => unreachable!("{other:?} is parsed neither by the table nor here"),
    }
});
