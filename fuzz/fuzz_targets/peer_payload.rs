//! A peer's envelope body past the signature: decoded as the receive pipeline decodes it,
//! then its payload converted into the domain message ([`trm_proto::peer::parse`]: every
//! id, enum, text, timestamp and the disclosed case with its minimal-disclosure checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_proto::{peer::parse, v1::EnvelopeBody};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = EnvelopeBody::decode(data) else {
        return;
    };
    let _ = trm_proto::convert::from_ts("created_at", body.created_at.as_ref());
    if let Some(payload) = &body.payload {
        let _ = trm_federation::payload_kind(payload);
        let _ = parse(payload).map_err(|e| e.to_string());
    }
});
