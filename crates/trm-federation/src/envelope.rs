//! Sealing envelopes and receipts: encode the body once, sign exactly those bytes.

use prost::Message;
use time::OffsetDateTime;
use trm_core::{ids::NodeId, policy::POLICY_VERSION};
use trm_crypto::signing::{SigningIdentity, ENVELOPE_TAG, RECEIPT_TAG};
use trm_proto::{
    convert::ts,
    v1::{
        envelope_body::Payload, EnvelopeBody, ReceiptBody, ReceiptOutcome, SignedEnvelope,
        SignedReceipt,
    },
};

/// Builds and signs an envelope with a fresh UUIDv7 message id.
pub fn seal(
    identity: &SigningIdentity,
    sender: NodeId,
    recipient: NodeId,
    case_ref: &str,
    payload: Payload,
) -> SignedEnvelope {
    seal_with_id(
        identity,
        sender,
        recipient,
        case_ref,
        payload,
        &uuid::Uuid::now_v7().to_string(),
        OffsetDateTime::now_utc(),
    )
}

/// Builds and signs an envelope with the given message id and creation time (a retry keeps
/// its message id).
pub fn seal_with_id(
    identity: &SigningIdentity,
    sender: NodeId,
    recipient: NodeId,
    case_ref: &str,
    payload: Payload,
    message_id: &str,
    created_at: OffsetDateTime,
) -> SignedEnvelope {
    let created_at = identity.clamp(created_at);
    let body = EnvelopeBody {
        message_id: message_id.to_owned(),
        sender: sender.to_string(),
        recipient: recipient.to_string(),
        created_at: Some(ts(created_at)),
        policy_version: POLICY_VERSION.to_owned(),
        case_ref: case_ref.to_owned(),
        payload: Some(payload),
    }
    .encode_to_vec();
    SignedEnvelope {
        signature: identity.sign(ENVELOPE_TAG, &body),
        key_id: identity.key_id().to_owned(),
        body,
    }
}

/// Builds the body of a receipt bound to the exact envelope body received.
pub fn receipt_body(
    receiver: NodeId,
    message_id: &str,
    envelope_body: &[u8],
    outcome: ReceiptOutcome,
    reason: &str,
) -> Vec<u8> {
    ReceiptBody {
        message_id: message_id.to_owned(),
        body_sha256: trm_crypto::sha256(envelope_body).to_vec(),
        receiver: receiver.to_string(),
        received_at: Some(ts(OffsetDateTime::now_utc())),
        outcome: outcome as i32,
        reason: reason.to_owned(),
    }
    .encode_to_vec()
}

/// Signs a receipt body (ed25519 is deterministic: the same key gives the same bytes).
pub fn sign_receipt(identity: &SigningIdentity, body: Vec<u8>) -> SignedReceipt {
    SignedReceipt {
        signature: identity.sign(RECEIPT_TAG, &body),
        key_id: identity.key_id().to_owned(),
        body,
    }
}
