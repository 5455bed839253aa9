//! The receipts a hostile peer answers deliveries with, opened as the outbox opens them
//! ([`trm_federation::envelope::open_receipt`], [`open_batch_receipt`]). The first byte
//! chooses: even, the rest is the wire `SignedReceipt` as received (kept seeds are valid
//! receipts signed by the fixture peer AT); odd, the rest is a receipt body (single or
//! batch) that AT really signs, so that the decoding and the checks after the signature
//! are reached as well.
//!
//! [`open_batch_receipt`]: trm_federation::envelope::open_batch_receipt
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_core::ids::MessageId;
use trm_crypto::signing::RECEIPT_TAG;
use trm_federation::envelope::{open_batch_receipt, open_receipt};
use trm_fuzz_common as fx;
use trm_proto::v1::SignedReceipt;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let receipt = if mode % 2 == 0 {
        match SignedReceipt::decode(rest) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        let key = fx::sender_key();
        SignedReceipt {
            signature: key.sign(RECEIPT_TAG, rest),
            key_id: key.key_id().to_owned(),
            body: rest.to_vec(),
        }
    };
    let peer = fx::sender_peer();
    let sent = fx::receipt_fixture();
    let one = &sent[0];
    let _ = open_receipt(peer, one.0, &one.1, &receipt);
    let batch: Vec<(MessageId, &[u8])> = sent.iter().map(|(m, b)| (*m, b.as_slice())).collect();
    let _ = open_batch_receipt(peer, &batch, &receipt);
});
