//! A hostile peer's bytes on the federation port: a `Deliver` body (`SignedEnvelope`) or a
//! `DeliverBatch` body, decoded as tonic decodes them, then opened by the receive pipeline's
//! checks ([`trm_federation::inbound::open`]) from the fixture peer AT to RO. Kept seeds are
//! valid envelopes signed by AT's fixture key, so mutations of their unsigned parts (key id,
//! signature) and of the body are both explored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_federation::inbound::open;
use trm_fuzz_common as fx;
use trm_proto::v1::{DeliverBatchRequest, SignedEnvelope};

fuzz_target!(|data: &[u8]| {
    let (peer, cfg, now) = (fx::sender_peer(), fx::receiver_config(), fx::now());
    if let Ok(env) = SignedEnvelope::decode(data) {
        let _ = open(cfg, peer, &env, now);
    }
    if let Ok(batch) = DeliverBatchRequest::decode(data) {
        for env in batch.envelopes.iter().take(64) {
            let _ = open(cfg, peer, env, now);
        }
    }
});
