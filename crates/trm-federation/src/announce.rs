//! A peer's announcement of a new signing key, taken by the directory before any flow sees
//! the envelope: accepted only when signed by the peer's newest known key, valid from no
//! earlier than the envelope's `created_at` and the signer's own start; the signer (and any
//! older key still open) then ends where the new key starts, and no newer key is ever
//! ended. A retired key verifies old messages; it never introduces keys. What is learned is
//! kept apart from the operator's directory ([`LearnedKeys`]) and applied to the in-memory
//! directory only after the commit ([`Note::PeerKeys`]).

use time::OffsetDateTime;
use trm_core::messages::PeerMessage;
use trm_crypto::signing::{key_id as key_id_of, public_from_bytes};
use trm_store::{Note, Tx, TxFail};

use crate::{
    directory::{key_from_stored, merge_keys, stored_from_key, LearnedKeys},
    Inbound, Peer, PeerDirectory, PeerKey, Rejection,
};

type Outcome = Result<(), TxFail<Rejection>>;

fn abort(r: Rejection) -> TxFail<Rejection> {
    TxFail::Abort(r)
}

fn policy(why: &str) -> TxFail<Rejection> {
    abort(Rejection::PolicyViolation(why.into()))
}

fn malformed(why: &str) -> TxFail<Rejection> {
    abort(Rejection::Malformed(why.into()))
}

/// Takes the key `inbound` announces into what its sender is known by (see the module).
/// Any other message is not the directory's: refused as malformed.
pub fn learn_key(directory: &PeerDirectory, tx: &mut Tx<'_>, inbound: &Inbound) -> Outcome {
    let PeerMessage::KeyAnnouncement {
        key_id,
        public_key,
        valid_from,
    } = &inbound.message
    else {
        return Err(malformed("not a key announcement"));
    };
    let public = public_from_bytes(public_key).map_err(|_| malformed("key.public_key"))?;
    if key_id_of(&public) != *key_id {
        return Err(malformed("key.key_id does not match key.public_key"));
    }
    let new = PeerKey {
        key_id: key_id.clone(),
        public,
        valid_from: Some(valid_from.unwrap_or(inbound.created_at)),
        valid_until: None,
    };
    let base = directory.base_keys(inbound.sender).ok_or_else(|| {
        abort(Rejection::UnknownCaseReference(
            "sender not in the directory".into(),
        ))
    })?;
    let mut learned = tx.learned_keys()?;
    let mut known = known_keys(&learned, inbound)?;
    let peer = Peer {
        id: inbound.sender,
        endpoint: String::new(),
        tls_ca_pem: String::new(),
        tls_pin: None,
        keys: merge_keys(&base, &known),
    };
    if peer.key(key_id).is_some() {
        // Known already: the peer's operator added it by hand before the announcement came
        // (as a node told of an unknown key says to). The announcement still ends the key
        // that signed it, where the new one starts: the usual reason to rotate is a stolen
        // key. Only that key: which of several keys added by hand is older is not known.
        if inbound.key_id != *key_id {
            end_signer(&peer, inbound, &new, &mut known)?;
            return keep_learned(tx, &mut learned, inbound, &known);
        }
        return Ok(());
    }
    let signer_from = check_signer(&peer, inbound, &new)?;
    end_older_keys(&peer, signer_from, &new, &mut known);
    known.push(new);
    keep_learned(tx, &mut learned, inbound, &known)
}

/// Keeps `known` as the keys learned from the sender, and has the directory read them.
fn keep_learned(
    tx: &mut Tx<'_>,
    learned: &mut LearnedKeys,
    inbound: &Inbound,
    known: &[PeerKey],
) -> Result<(), TxFail<Rejection>> {
    let stored = known
        .iter()
        .map(stored_from_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed("key"))?;
    learned.peers.insert(inbound.sender, stored);
    tx.put_learned_keys(learned)?;
    tx.changed_shared_state()?;
    tx.note(Note::PeerKeys(inbound.sender));
    Ok(())
}

/// Ends the announcement's signer where the announced key (known already) starts, no
/// earlier than the announcement and the signer's own start.
fn end_signer(
    peer: &Peer,
    inbound: &Inbound,
    new: &PeerKey,
    known: &mut Vec<PeerKey>,
) -> Result<(), TxFail<Rejection>> {
    let signer = peer
        .key(&inbound.key_id)
        .ok_or_else(|| policy("the announcement's signer is unknown"))?;
    let until = new.valid_from.unwrap_or(inbound.created_at);
    if until < inbound.created_at || signer.valid_from.is_some_and(|from| until < from) {
        return Err(policy(
            "key.valid_from is before the announcement or its signer",
        ));
    }
    if signer.valid_until.is_some_and(|end| end <= until) {
        return Ok(());
    }
    let mut ended = signer.clone();
    ended.valid_until = Some(until);
    match known.iter_mut().find(|x| x.key_id == ended.key_id) {
        Some(x) => *x = ended,
        None => known.push(ended),
    }
    Ok(())
}

/// The keys the sender announced before. One that does not read is a damaged store: never
/// dropped (the list is written back), an error.
fn known_keys(learned: &LearnedKeys, inbound: &Inbound) -> Result<Vec<PeerKey>, TxFail<Rejection>> {
    let Some(keys) = learned.peers.get(&inbound.sender) else {
        return Ok(Vec::new());
    };
    keys.iter()
        .map(key_from_stored)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            TxFail::Store(trm_store::StoreError::Corrupt(
                "a learned key of the sender",
            ))
        })
}

/// Checks that the announcement is signed by the sender's newest key and that the new key
/// starts no earlier than the envelope and the signer; returns the signer's start.
fn check_signer(
    peer: &Peer,
    inbound: &Inbound,
    new: &PeerKey,
) -> Result<Option<OffsetDateTime>, TxFail<Rejection>> {
    let signer = peer
        .key(&inbound.key_id)
        .ok_or_else(|| policy("the announcement's signer is unknown"))?;
    if peer.newest_key().map(|n| n.key_id.as_str()) != Some(inbound.key_id.as_str()) {
        return Err(policy(
            "a key announcement must be signed by the sender's newest key",
        ));
    }
    let valid_from = new.valid_from.unwrap_or(inbound.created_at);
    if valid_from < inbound.created_at {
        return Err(policy(
            "key.valid_from is before the announcement's created_at",
        ));
    }
    if signer.valid_from.is_some_and(|from| valid_from < from) {
        return Err(policy(
            "key.valid_from is before the signer's own valid_from",
        ));
    }
    Ok(signer.valid_from)
}

/// Ends, where `new` starts, the signer and every older key still open. The signer is the
/// newest key, so no newer key is ever ended.
fn end_older_keys(
    peer: &Peer,
    signer_from: Option<OffsetDateTime>,
    new: &PeerKey,
    known: &mut Vec<PeerKey>,
) {
    for old in peer
        .keys
        .iter()
        .filter(|o| o.valid_until.is_none() && o.valid_from <= signer_from)
    {
        let mut ended = old.clone();
        ended.valid_until = new.valid_from;
        match known.iter_mut().find(|x| x.key_id == ended.key_id) {
            Some(x) => *x = ended,
            None => known.push(ended),
        }
    }
}
