//! Envelopes that AT really signed, built from fuzzed fields (header and a payload from
//! fuzzed bytes), optionally tampered with after signing, then opened by the receive
//! pipeline ([`trm_federation::inbound::open`]). Every check past the signature, and the
//! payload's conversion into domain types, is reached; and two properties are asserted: a
//! body changed after signing never opens, and an untampered one never fails its signature.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use trm_crypto::signing::ENVELOPE_TAG;
use trm_federation::{inbound::open, Refusal};
use trm_fuzz_common as fx;
use trm_proto::v1::{EnvelopeBody, SignedEnvelope};

#[derive(Debug, Arbitrary)]
enum Text {
    Valid,
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    message_id: Text,
    sender: Text,
    recipient: Text,
    /// Seconds from the fixed present, and nanoseconds.
    created_at: Option<(i64, i32)>,
    policy_version: Text,
    case_ref: String,
    /// Taken as an encoded `EnvelopeBody`, whose payload is kept.
    payload: Vec<u8>,
    /// After signing: (position, xor) on the body.
    flip: Option<(usize, u8)>,
    key_id: Option<String>,
    truncate_signature: bool,
}

fuzz_target!(|input: Input| {
    let pick = |t: &Text, valid: &str| match t {
        Text::Valid => valid.to_owned(),
        Text::Other(s) => s.clone(),
    };
    let now = fx::now();
    let payload = EnvelopeBody::decode(input.payload.as_slice())
        .ok()
        .and_then(|b| b.payload);
    let body = EnvelopeBody {
        message_id: pick(&input.message_id, &fx::id7()),
        sender: pick(&input.sender, fx::SENDER),
        recipient: pick(&input.recipient, fx::RECEIVER),
        created_at: input.created_at.map(|(s, n)| prost_types::Timestamp {
            seconds: fx::NOW_UNIX.saturating_add(s),
            nanos: n,
        }),
        policy_version: pick(&input.policy_version, trm_core::policy::POLICY_VERSION),
        case_ref: input.case_ref,
        payload,
    }
    .encode_to_vec();
    let key = fx::sender_key();
    let mut env = SignedEnvelope {
        signature: key.sign(ENVELOPE_TAG, &body),
        key_id: key.key_id().to_owned(),
        body,
    };
    let mut tampered = false;
    if let Some((at, xor)) = input.flip {
        if !env.body.is_empty() && xor != 0 {
            let at = at % env.body.len();
            env.body[at] ^= xor;
            tampered = true;
        }
    }
    let renamed = input.key_id.is_some_and(|k| {
        let changed = k != env.key_id;
        env.key_id = k;
        changed
    });
    if input.truncate_signature {
        env.signature.pop();
        tampered = true;
    }
    let result = open(fx::receiver_config(), fx::sender_peer(), &env, now);
    if renamed {
        return;
    }
    match &result {
        Ok(_) => assert!(!tampered, "a tampered envelope opened"),
        Err((_, refusal, _)) => {
            let signature_failed = matches!(refusal, Refusal::BadSignature);
            let oversize = matches!(refusal, Refusal::Oversize);
            assert!(
                tampered == signature_failed || oversize,
                "signature check disagrees with tampering ({refusal:?})"
            );
        }
    }
});
