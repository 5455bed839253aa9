//! The outbox (envelopes queued per peer, in order, sealed under their record's key), dead
//! letters, the peers' receipts kept as proof, and the inbox (the receipt given for each
//! inbound message id, so that a duplicate gets it back).
//!
//! Delivery reads only what is durable: the writer publishes the highest outbox sequence of
//! each durable group, and [`Store::outbox_head`] stops there.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::{
    ids::{MessageId, NodeId},
    messages::{EnvelopeKind, Topic},
};

use crate::{
    repo::layout,
    subject::Subject,
    tx::{decode, Note},
    Result, Store, Tx,
};

/// The meta counter of the last queued envelope's number.
pub(crate) const SEQ: &str = "outbox_seq";

/// Hex for bytes in JSON records.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// A queued outbound envelope. The envelope itself is sealed; the rest is metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Position in the peer's queue.
    pub seq: u64,
    pub message_id: MessageId,
    pub peer: NodeId,
    /// The record the envelope is about: its key seals the envelope.
    pub topic: Topic,
    pub kind: EnvelopeKind,
    /// The sealed, encoded `SignedEnvelope`.
    #[serde(with = "hex_bytes")]
    pub sealed: Vec<u8>,
    pub attempts: u32,
    pub created_at: OffsetDateTime,
    pub last_error: String,
}

/// The receipt given for an inbound message, kept so a duplicate gets it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The encoded `ReceiptBody` (signed again, to the same bytes, for a duplicate).
    #[serde(with = "hex_bytes")]
    pub receipt_body: Vec<u8>,
    pub received_at: OffsetDateTime,
}

/// Returns the data-key subject that seals envelopes about `topic`.
pub fn subject_of(topic: &Topic) -> Subject {
    match (topic.record(), topic) {
        (Some((kind, id)), _) => Subject::of_record(kind, id.as_bytes()),
        (None, Topic::Erasure(id)) => Subject::named("erasure", id.as_bytes()),
        // The node's own signing keys.
        (None, _) => Subject::named("node", b"keys"),
    }
}

/// How long a count of the queues serves on a shared database (see
/// [`Store::outbox_depth`]).
pub const COUNTS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

fn aad(message_id: MessageId) -> Vec<u8> {
    let mut a = b"outbox\0".to_vec();
    a.extend_from_slice(message_id.as_bytes());
    a
}

/// A peer's signed receipt, kept as the proof that the messages it lists were delivered.
/// Made once per receipt (its digest is its key), however many messages it proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    digest: [u8; 32],
    bytes: Vec<u8>,
}

impl Proof {
    /// The receipt's exact bytes, as the peer signed and sent them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: trm_crypto::sha256(&bytes),
            bytes,
        }
    }
}

impl Tx<'_> {
    fn count_queued(&mut self, peer: NodeId, delta: i64) {
        *self.fx.queued.entry(peer).or_default() += delta;
    }

    /// Seals an encoded envelope under its topic's key and queues it for `peer`, after
    /// everything queued before. Returns its position.
    pub fn queue_envelope(
        &mut self,
        peer: NodeId,
        message_id: MessageId,
        topic: Topic,
        kind: EnvelopeKind,
        envelope: &[u8],
    ) -> Result<u64> {
        let sealed = self.seal(&subject_of(&topic), &aad(message_id), envelope)?;
        let seq = self.next_counter(SEQ)?;
        let item = OutboxItem {
            seq,
            message_id,
            peer,
            topic,
            kind,
            sealed,
            attempts: 0,
            created_at: OffsetDateTime::now_utc(),
            last_error: String::new(),
        };
        self.put_json(&layout::outbox(peer, seq), &item)?;
        self.count_queued(peer, 1);
        self.fx.outbox_seq = self.fx.outbox_seq.max(Some(seq));
        self.note(Note::Wake(peer));
        Ok(seq)
    }

    /// Returns the queued item at `seq` of `peer`, if still queued.
    pub fn queued(&mut self, peer: NodeId, seq: u64) -> Result<Option<OutboxItem>> {
        self.get_json("outbox item", &layout::outbox(peer, seq))
    }

    /// Removes a queued item that was delivered (its `receipt` kept as proof) or whose
    /// subject was erased (no receipt).
    pub fn finish_queued(&mut self, item: &OutboxItem, receipt: Option<&Proof>) -> Result<()> {
        if !self.exists(&layout::outbox(item.peer, item.seq))? {
            return Ok(());
        }
        self.delete(&layout::outbox(item.peer, item.seq))?;
        self.count_queued(item.peer, -1);
        if let Some(p) = receipt {
            // Every item of a batch writes the same key: the transaction keeps one copy.
            self.put_raw(&layout::receipt(&p.digest), &p.bytes)?;
            self.put_raw(&layout::receipt_of(&item.message_id.uuid()), &p.digest)?;
        }
        Ok(())
    }

    /// Moves a queued item the peer will never accept to the dead letters.
    pub fn dead_letter(
        &mut self,
        item: &OutboxItem,
        why: &str,
        receipt: Option<&Proof>,
    ) -> Result<()> {
        self.finish_queued(item, receipt)?;
        let mut dead = item.clone();
        dead.last_error = why.to_owned();
        dead.attempts = dead.attempts.saturating_add(1);
        self.put_json(&layout::dead_letter(item.peer, item.seq), &dead)?;
        self.fx.dead_letters += 1;
        // Someone must look at it: the focal point, who asks the operator to send it again.
        let task = trm_core::tasks::Task::due_in(
            trm_core::tasks::TaskKind::DeliveryFailed,
            item.message_id.uuid(),
            trm_core::tasks::due::DELIVERY_FAILED,
            OffsetDateTime::now_utc(),
        );
        self.open_task(&task)
    }

    /// Records a failed attempt on a queued item (if still queued).
    pub fn note_attempt(&mut self, peer: NodeId, seq: u64, why: &str) -> Result<()> {
        if let Some(mut item) = self.queued(peer, seq)? {
            item.attempts = item.attempts.saturating_add(1);
            item.last_error = why.to_owned();
            self.put_json(&layout::outbox(peer, seq), &item)?;
        }
        Ok(())
    }

    /// Returns the dead letter of `message_id` (dead letters are few: a scan, no index).
    pub fn dead_letter_of(&mut self, message_id: MessageId) -> Result<Option<OutboxItem>> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_raw(layout::DEAD_LETTERS, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else {
                return Ok(None);
            };
            after = Some(last.clone());
            for (_, v) in page {
                let item: OutboxItem = decode("dead letter", &v)?;
                if item.message_id == message_id {
                    return Ok(Some(item));
                }
            }
        }
    }

    /// Opens a queued or dead envelope; `None` when its topic's key was shredded.
    pub fn open_envelope(&mut self, item: &OutboxItem) -> Result<Option<Vec<u8>>> {
        self.open(
            &subject_of(&item.topic),
            &aad(item.message_id),
            &item.sealed,
        )
    }

    /// Queues a dead letter again, in its old place, with a freshly sealed `envelope`.
    pub fn requeue(&mut self, dead: &OutboxItem, envelope: &[u8]) -> Result<()> {
        let sealed = self.seal(&subject_of(&dead.topic), &aad(dead.message_id), envelope)?;
        let item = OutboxItem {
            sealed,
            attempts: 0,
            created_at: OffsetDateTime::now_utc(),
            last_error: String::new(),
            ..dead.clone()
        };
        self.delete(&layout::dead_letter(dead.peer, dead.seq))?;
        self.close_task(
            trm_core::tasks::TaskKind::DeliveryFailed,
            dead.message_id.uuid(),
        )?;
        self.put_json(&layout::outbox(dead.peer, dead.seq), &item)?;
        self.fx.dead_letters -= 1;
        self.count_queued(dead.peer, 1);
        self.note(Note::Wake(dead.peer));
        Ok(())
    }

    /// Returns the receipt given for `sender`'s inbound message `message_id`.
    pub fn inbox(&mut self, sender: NodeId, message_id: MessageId) -> Result<Option<InboxEntry>> {
        let key = layout::inbox(sender, &message_id.uuid());
        // The key an older version kept it under is read next when this one holds nothing
        // (a new message): both in one round trip.
        self.prefetch(&[key.clone(), layout::legacy_inbox(&message_id.uuid())])?;
        self.get_json("inbox entry", &key)
    }

    /// Returns the receipt an older version kept for inbound `message_id`, whoever sent it
    /// (that version kept no sender: see [`Tx::audited_actor_near`] to find it).
    pub fn legacy_inbox(&mut self, message_id: MessageId) -> Result<Option<InboxEntry>> {
        self.get_json("inbox entry", &layout::legacy_inbox(&message_id.uuid()))
    }

    /// Keeps the body of the receipt given for `sender`'s inbound message `message_id`.
    pub fn put_inbox(
        &mut self,
        sender: NodeId,
        message_id: MessageId,
        receipt_body: &[u8],
    ) -> Result<()> {
        self.put_json(
            &layout::inbox(sender, &message_id.uuid()),
            &InboxEntry {
                receipt_body: receipt_body.to_vec(),
                received_at: OffsetDateTime::now_utc(),
            },
        )
    }

    /// Forgets up to `limit` inbound message ids made before `before` (their UUIDv7 time),
    /// of the current layout and of the one older versions kept. Returns how many.
    pub fn forget_inbox_before(&mut self, before: OffsetDateTime, limit: usize) -> Result<usize> {
        let cutoff = uuid_floor(before);
        let mut n = 0;
        for prefix in [layout::INBOX, layout::LEGACY_INBOX] {
            for (k, _) in self.scan_raw(prefix, None, limit - n)? {
                let Some(id) = k
                    .get(prefix.len()..prefix.len() + 16)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                else {
                    continue;
                };
                if id >= cutoff {
                    break;
                }
                self.delete(&k)?;
                n += 1;
            }
            if n == limit {
                break;
            }
        }
        Ok(n)
    }
}

/// Returns the smallest UUIDv7 of the millisecond `t`.
fn uuid_floor(t: OffsetDateTime) -> [u8; 16] {
    let ms = (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b
}

impl Store {
    /// Returns up to `limit` durable items at the head of `peer`'s queue, in order.
    pub fn outbox_head(&self, peer: NodeId, limit: usize) -> Result<Vec<OutboxItem>> {
        self.outbox_after(peer, None, limit)
    }

    /// Returns up to `limit` durable items of `peer`'s queue after position `after` (from the
    /// head when `None`), in order: what a sender with batches in flight sends next.
    pub fn outbox_after(
        &self,
        peer: NodeId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>> {
        // On an engine whose commits are durable once visible, every item read is durable
        // (and may have been queued by another replica of the node).
        let durable = if self.engine().committed_is_durable() {
            u64::MAX
        } else {
            self.shared().outbox_durable.load(Ordering::SeqCst)
        };
        let after = after.map(|seq| layout::outbox(peer, seq));
        let mut out = Vec::new();
        for (_, v) in self.scan_raw(&layout::outbox_of(peer), after.as_deref(), limit)? {
            let item: OutboxItem = decode("outbox item", &v)?;
            if item.seq > durable {
                break;
            }
            out.push(item);
        }
        Ok(out)
    }

    /// Returns up to `limit` queued items of every peer after `after` (peer, sequence).
    pub fn outbox_items(
        &self,
        after: Option<(NodeId, u64)>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>> {
        let after = after.map(|(p, s)| layout::outbox(p, s));
        self.scan_raw(layout::OUTBOX, after.as_deref(), limit)?
            .into_iter()
            .map(|(_, v)| decode("outbox item", &v))
            .collect()
    }

    /// Returns up to `limit` dead letters after `after` (peer, sequence).
    pub fn dead_letters(
        &self,
        after: Option<(NodeId, u64)>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>> {
        let after = after.map(|(p, s)| layout::dead_letter(p, s));
        self.scan_raw(layout::DEAD_LETTERS, after.as_deref(), limit)?
            .into_iter()
            .map(|(_, v)| decode("dead letter", &v))
            .collect()
    }

    /// Opens a queued envelope: the exact signed bytes that will be sent; `None` when its
    /// topic's key was shredded (the queued copy was erased with the record).
    pub fn open_envelope(&self, item: &OutboxItem) -> Result<Option<Vec<u8>>> {
        self.open_sealed(
            &subject_of(&item.topic),
            &aad(item.message_id),
            &item.sealed,
        )
    }

    /// Opens queued or dead envelopes, as [`Store::open_envelope`] does each, reading all
    /// their data keys in one round trip.
    pub fn open_envelopes(&self, items: &[OutboxItem]) -> Result<Vec<Option<Vec<u8>>>> {
        let slots = items
            .iter()
            .map(|i| {
                let (gen, _) = crate::tx::split_generation(&i.sealed)?;
                Ok(layout::data_key(&subject_of(&i.topic), gen))
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = slots.iter().map(Vec::as_slice).collect();
        let stored = self.engine().get_many(&refs)?;
        let keys = &self.shared().keys;
        items
            .iter()
            .zip(stored)
            .map(|(item, stored)| {
                crate::tx::open_with(
                    keys,
                    |_| Ok(stored),
                    &subject_of(&item.topic),
                    &aad(item.message_id),
                    &item.sealed,
                )
            })
            .collect()
    }

    /// Returns how many envelopes are queued for `peer`: kept in memory, no scan. Replicas
    /// of the node change the queues too, so on a shared database the count is taken again
    /// when asked and it is older than [`COUNTS_FRESH`] (a metrics scrape, `Status`), and
    /// never while nobody asks.
    pub fn outbox_depth(&self, peer: NodeId) -> Result<u64> {
        self.fresh_counts()?;
        Ok(self.shared().counts.queued(peer))
    }

    /// Returns how many dead letters there are (as [`Store::outbox_depth`]).
    pub fn dead_letter_count(&self) -> Result<u64> {
        self.fresh_counts()?;
        Ok(self.shared().counts.dead_letters())
    }

    /// Counts the queues again when replicas share them and the last count is stale.
    fn fresh_counts(&self) -> Result<()> {
        if !self.engine().shared_by_replicas() {
            return Ok(());
        }
        let counts = &self.shared().counts;
        let mut at = counts
            .counted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if at.is_some_and(|t| t.elapsed() < COUNTS_FRESH) {
            return Ok(());
        }
        self.count_outbox()?;
        *at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Counts what is queued and dead-lettered, from the keys alone (each names its peer):
    /// when the store opens, and on a shared database when asked (see above).
    pub(crate) fn count_outbox(&self) -> Result<()> {
        let mut queued: std::collections::HashMap<NodeId, u64> = Default::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_raw(layout::OUTBOX, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, _) in page {
                let peer = k
                    .get(layout::OUTBOX.len()..k.len().saturating_sub(8))
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| p.parse::<NodeId>().ok())
                    .ok_or(crate::StoreError::Corrupt("outbox key"))?;
                *queued.entry(peer).or_default() += 1;
            }
        }
        let mut dead = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_raw(layout::DEAD_LETTERS, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            dead += page.len() as u64;
        }
        self.shared().counts.replace(queued, dead);
        Ok(())
    }

    /// Returns the receipt a peer gave for outbound `message_id`.
    pub fn receipt(&self, message_id: MessageId) -> Result<Option<Vec<u8>>> {
        let id = message_id.uuid();
        let Some(digest) = self.engine().get(&layout::receipt_of(&id))? else {
            return self.engine().get(&layout::legacy_receipt(&id));
        };
        let digest: [u8; 32] = digest
            .as_slice()
            .try_into()
            .map_err(|_| crate::StoreError::Corrupt("receipt reference"))?;
        let receipt = self.engine().get(&layout::receipt(&digest))?;
        match receipt {
            Some(r) if trm_crypto::sha256(&r) != digest => {
                Err(crate::StoreError::Corrupt("receipt under another digest"))
            }
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuid_floor_orders_before_every_id_of_later_milliseconds() {
        let t = OffsetDateTime::now_utc();
        let later = uuid::Uuid::now_v7();
        assert!(uuid_floor(t) <= *later.as_bytes());
        assert!(uuid_floor(t + time::Duration::seconds(5)) > *later.as_bytes());
    }
}
