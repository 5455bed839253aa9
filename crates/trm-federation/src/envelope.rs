//! Sealing envelopes and receipts: encode the body once, sign exactly those bytes; and
//! opening the receipts a peer answers with: verify the signature over the exact bytes
//! before decoding them.

use prost::Message;
use time::OffsetDateTime;
use trm_core::{
    ids::{MessageId, NodeId},
    policy::POLICY_VERSION,
};
use trm_crypto::signing::{SigningIdentity, ENVELOPE_TAG, RECEIPT_TAG};
use trm_proto::{
    convert::ts,
    v1::{
        envelope_body::Payload, BatchReceiptBody, EnvelopeBody, ReceiptBody, ReceiptOutcome,
        SignedEnvelope, SignedReceipt,
    },
};

use crate::Peer;

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

/// Opens the receipt `peer` answered a `Deliver` with: signed by one of its keys over the
/// exact bytes, then decoded, for `message_id`, bound to the exact `envelope_body` sent,
/// from `peer`, with a known outcome. Returns the outcome and the peer's reason, or why the
/// receipt is not proof of delivery.
pub fn open_receipt(
    peer: &Peer,
    message_id: MessageId,
    envelope_body: &[u8],
    receipt: &SignedReceipt,
) -> Result<(ReceiptOutcome, String), String> {
    let key = peer
        .key(&receipt.key_id)
        .ok_or("receipt signed by an unknown key")?;
    trm_crypto::signing::verify(&key.public, RECEIPT_TAG, &receipt.body, &receipt.signature)
        .map_err(|_| "receipt signature does not verify")?;
    let body =
        ReceiptBody::decode(receipt.body.as_slice()).map_err(|_| "receipt does not decode")?;
    if body.message_id != message_id.to_string()
        || body.body_sha256 != trm_crypto::sha256(envelope_body)
        || body.receiver != peer.id.as_str()
    {
        return Err("receipt is not for the envelope sent".into());
    }
    let outcome = ReceiptOutcome::try_from(body.outcome).map_err(|_| "receipt outcome unknown")?;
    if outcome == ReceiptOutcome::Unspecified {
        return Err("receipt outcome unspecified".into());
    }
    Ok((outcome, body.reason))
}

/// Opens the receipt `peer` answered a `DeliverBatch` with: signed by one of its keys over
/// the exact bytes, then decoded, from `peer`, one entry per envelope `sent` (message id and
/// exact body, in order) naming its message id and the hash of its body, each with a known
/// outcome. Returns the outcomes and reasons in the order sent.
pub fn open_batch_receipt(
    peer: &Peer,
    sent: &[(MessageId, &[u8])],
    receipt: &SignedReceipt,
) -> Result<Vec<(ReceiptOutcome, String)>, String> {
    let key = peer
        .key(&receipt.key_id)
        .ok_or("receipt signed by an unknown key")?;
    trm_crypto::signing::verify(&key.public, RECEIPT_TAG, &receipt.body, &receipt.signature)
        .map_err(|_| "receipt signature does not verify")?;
    let body = BatchReceiptBody::decode(receipt.body.as_slice())
        .map_err(|_| "batch receipt does not decode")?;
    if body.receiver != peer.id.as_str() || body.entries.len() != sent.len() {
        return Err("batch receipt is not for the batch sent".into());
    }
    sent.iter()
        .zip(&body.entries)
        .map(|((message_id, envelope_body), e)| {
            if e.message_id != message_id.to_string()
                || e.body_sha256 != trm_crypto::sha256(envelope_body)
            {
                return Err("batch receipt entry is not for the envelope sent".to_owned());
            }
            match ReceiptOutcome::try_from(e.outcome) {
                Ok(ReceiptOutcome::Unspecified) | Err(_) => {
                    Err("batch receipt outcome unknown".to_owned())
                }
                Ok(o) => Ok((o, e.reason.clone())),
            }
        })
        .collect()
}
