//! The typed repositories: cases (with consents, risk assessments, return decisions and
//! pairwise references), flows (referrals, return plans, hearings), outbox and inbox, the
//! audit chain, the directory and the node's own key material, idempotent requests and
//! statistics counters. Each is a set of methods on [`crate::Tx`] (writes, and reads that
//! see the transaction) and on [`crate::Store`] (reads of committed state). [`layout`] is
//! the one place that knows how records are keyed.

pub mod audit;
pub mod cases;
pub mod directory;
pub mod drafts;
pub mod events;
pub mod flows;
pub mod lease;
pub mod outbox;
pub mod requests;
pub mod stats;
pub mod tasks;

/// The key layout: one ordered key space, each record kind under a prefix of its own.
pub(crate) mod layout {
    use trm_core::exchange::RecordKind;
    use trm_core::ids::{CaseId, ConsentId, NodeId, OrgId, Shared};

    use crate::subject::Subject;

    fn key(prefix: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = prefix.as_bytes().to_vec();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }

    /// The blind index of persons: a keyed digest of who the person is, then a case.
    pub fn person_index(digest: &[u8; 32], case: CaseId) -> Vec<u8> {
        key("bi/", &[digest, b"/", case.as_bytes()])
    }

    /// The cases of one digest of the blind index.
    pub fn person_index_of(digest: &[u8; 32]) -> Vec<u8> {
        key("bi/", &[digest, b"/"])
    }

    /// A possible second case of the same person: the newer case, then the older.
    pub fn possible_duplicate(newer: CaseId, older: CaseId) -> Vec<u8> {
        key("du/", &[newer.as_bytes(), older.as_bytes()])
    }

    /// Every possible duplicate.
    pub fn possible_duplicates() -> Vec<u8> {
        key("du/", &[])
    }

    /// A task in the queue, by due time then id.
    pub fn task(due: &[u8; 8], task: &[u8; 16]) -> Vec<u8> {
        key("tq/", &[due, task])
    }

    /// The queue.
    pub fn tasks() -> Vec<u8> {
        key("tq/", &[])
    }

    /// How many tasks of one kind are open.
    pub fn task_count(kind: u8) -> Vec<u8> {
        key("tc/", &[&[kind]])
    }

    /// The open task of one kind on one record (its value: the task's key).
    pub fn task_of(kind: u8, record: &[u8; 16]) -> Vec<u8> {
        key("tk/", &[&[kind], record])
    }

    /// An event of the event log, by number.
    pub fn event(seq: u64) -> Vec<u8> {
        key("ev/", &[&seq.to_be_bytes()])
    }

    /// The event log.
    pub fn events() -> Vec<u8> {
        key("ev/", &[])
    }

    /// One step of a shared record's timeline (its status from the event numbered `seq`
    /// on); all of them with `seq` none.
    pub fn timeline(kind: u8, record: &[u8; 16], seq: Option<u64>) -> Vec<u8> {
        match seq {
            Some(seq) => key("th/", &[&[kind], record, &seq.to_be_bytes()]),
            None => key("th/", &[&[kind], record]),
        }
    }

    /// The id of the last message applied that replaces part `part` of one shared record.
    pub fn last_update(kind: u8, record: &[u8; 16], part: u8) -> Vec<u8> {
        key("up/", &[&[kind], record, &[part]])
    }

    /// The status the last event of one shared record named.
    pub fn event_state(kind: u8, record: &[u8; 16]) -> Vec<u8> {
        key("es/", &[&[kind], record])
    }

    /// Small node state, by name.
    pub fn meta(name: &str) -> Vec<u8> {
        key("m/", &[name.as_bytes()])
    }

    /// A subject's data key of one generation.
    pub fn data_key(subject: &Subject, gen: u32) -> Vec<u8> {
        let s = subject.as_bytes();
        key(
            "k/",
            &[&(s.len() as u16).to_be_bytes(), s, &gen.to_be_bytes()],
        )
    }

    /// Every data key.
    pub const DATA_KEYS: &[u8] = b"k/";

    /// A subject's current key generation.
    pub fn generation(subject: &Subject) -> Vec<u8> {
        key("g/", &[subject.as_bytes()])
    }

    pub fn case(id: CaseId) -> Vec<u8> {
        key("c/", &[id.as_bytes()])
    }

    pub const CASES: &[u8] = b"c/";

    /// A draft saved by one role of one organisation.
    pub fn draft(owner: &trm_core::ids::Principal, id: &[u8; 16]) -> Vec<u8> {
        let mut k = drafts(owner);
        k.extend_from_slice(id);
        k
    }

    /// Every saved draft.
    pub fn all_drafts() -> Vec<u8> {
        key("dr/", &[])
    }

    /// The drafts of one role of one organisation.
    pub fn drafts(owner: &trm_core::ids::Principal) -> Vec<u8> {
        let (role, org) = (
            owner.role.as_str().as_bytes(),
            owner.org.as_str().as_bytes(),
        );
        key("dr/", &[role, b"/", org, b"/"])
    }

    /// Index of the cases of one organisation.
    pub fn case_of_org(org: &OrgId, id: CaseId) -> Vec<u8> {
        key("co/", &[org.as_str().as_bytes(), b"/", id.as_bytes()])
    }

    pub fn cases_of_org(org: &OrgId) -> Vec<u8> {
        key("co/", &[org.as_str().as_bytes(), b"/"])
    }

    pub fn consents(case: CaseId) -> Vec<u8> {
        key("cn/", &[case.as_bytes()])
    }

    /// A shared record in keys: its kind's tag, then its id.
    fn shared_bytes(s: Shared) -> [u8; 17] {
        let (kind, id) = s.record();
        let mut b = [0u8; 17];
        b[0] = kind.tag();
        b[1..].copy_from_slice(id.as_bytes());
        b
    }

    pub fn shared_from(b: &[u8]) -> Option<Shared> {
        let (tag, id) = b.split_first()?;
        let id: [u8; 16] = id.try_into().ok()?;
        let kind = RecordKind::ALL.into_iter().find(|k| k.tag() == *tag)?;
        Shared::of(kind, uuid::Uuid::from_bytes(id))
    }

    /// A record disclosed under a consent.
    pub fn disclosure(consent: ConsentId, s: Shared) -> Vec<u8> {
        key("cd/", &[consent.as_bytes(), &shared_bytes(s)])
    }

    /// A copy whose erasure a restore found asked for after the backup: the request is
    /// sent again when the node starts (ids only).
    pub fn pending_erasure(s: Shared) -> Vec<u8> {
        key("pe/", &[&shared_bytes(s)])
    }

    pub const PENDING_ERASURES: &[u8] = b"pe/";

    pub fn disclosures(consent: ConsentId) -> Vec<u8> {
        key("cd/", &[consent.as_bytes()])
    }

    pub fn risk(case: CaseId) -> Vec<u8> {
        key("ra/", &[case.as_bytes()])
    }

    pub fn decisions(case: CaseId) -> Vec<u8> {
        key("rd/", &[case.as_bytes()])
    }

    /// The pairwise reference of a case towards a peer (origin side).
    pub fn ref_of(case: CaseId, peer: NodeId) -> Vec<u8> {
        key("xo/", &[case.as_bytes(), peer.as_str().as_bytes()])
    }

    /// Every pairwise reference of a case (origin side), by peer.
    pub fn refs_of(case: CaseId) -> Vec<u8> {
        key("xo/", &[case.as_bytes()])
    }

    /// A reference this node gave a peer, back to the case.
    pub fn ref_given(peer: NodeId, case_ref: &str) -> Vec<u8> {
        key("xr/", &[peer.as_str().as_bytes(), case_ref.as_bytes()])
    }

    /// A reference received from a peer, to the record it first came with.
    pub fn ref_received(peer: NodeId, case_ref: &str) -> Vec<u8> {
        key("xi/", &[peer.as_str().as_bytes(), case_ref.as_bytes()])
    }

    /// A shared record of `kind`: the kind's tag, then `/` and the id (`r/`, `t/`, `h/`).
    pub fn record(kind: trm_core::exchange::RecordKind, id: &[u8; 16]) -> Vec<u8> {
        [&[kind.tag(), b'/'][..], id].concat()
    }

    /// Index of the shared records of `kind` by direction (`ri/`, `ti/`, `hi/`).
    pub fn record_index(kind: trm_core::exchange::RecordKind, dir: u8, id: &[u8; 16]) -> Vec<u8> {
        [&[kind.tag(), b'i', b'/', dir][..], id].concat()
    }

    pub fn record_indexes(kind: trm_core::exchange::RecordKind, dir: u8) -> Vec<u8> {
        vec![kind.tag(), b'i', b'/', dir]
    }

    /// The victim-status requests a peer made about a case of this node (the prefix,
    /// without `request`).
    pub fn status_requests_of_case(case: CaseId, request: Option<&[u8; 16]>) -> Vec<u8> {
        key(
            "vc/",
            &[case.as_bytes(), request.map_or(&[][..], |r| &r[..])],
        )
    }

    /// The safety alerts raised here about a case (the prefix, without `alert`).
    pub fn alerts_of_case(case: CaseId, alert: Option<&[u8; 16]>) -> Vec<u8> {
        key("wc/", &[case.as_bytes(), alert.map_or(&[][..], |a| &a[..])])
    }

    /// The safety alerts a peer sent about the case it knows this node by `case_ref` (the
    /// prefix, without `alert`).
    pub fn alerts_of_copy(origin: NodeId, case_ref: &str, alert: Option<&[u8; 16]>) -> Vec<u8> {
        key(
            "wr/",
            &[
                origin.as_str().as_bytes(),
                b"/",
                case_ref.as_bytes(),
                b"/",
                alert.map_or(&[][..], |a| &a[..]),
            ],
        )
    }

    /// The open referral of a case to a destination.
    pub fn open_referral(case: CaseId, destination: NodeId) -> Vec<u8> {
        key("ro/", &[case.as_bytes(), destination.as_str().as_bytes()])
    }

    /// The open referrals of a case, by destination.
    pub fn open_referrals_of(case: CaseId) -> Vec<u8> {
        key("ro/", &[case.as_bytes()])
    }

    /// A queued envelope: per peer, in the order queued.
    pub fn outbox(peer: NodeId, seq: u64) -> Vec<u8> {
        key("o/", &[peer.as_str().as_bytes(), &seq.to_be_bytes()])
    }

    pub fn outbox_of(peer: NodeId) -> Vec<u8> {
        key("o/", &[peer.as_str().as_bytes()])
    }

    pub const OUTBOX: &[u8] = b"o/";

    pub fn dead_letter(peer: NodeId, seq: u64) -> Vec<u8> {
        key("dl/", &[peer.as_str().as_bytes(), &seq.to_be_bytes()])
    }

    pub const DEAD_LETTERS: &[u8] = b"dl/";

    /// The receipt given for an inbound message: a message id is unique per sender. The id
    /// (a UUIDv7) comes first, so that entries are kept in the order their ids were made.
    pub fn inbox(sender: NodeId, message_id: &uuid::Uuid) -> Vec<u8> {
        key("ib/", &[message_id.as_bytes(), sender.as_str().as_bytes()])
    }

    pub const INBOX: &[u8] = b"ib/";

    /// The receipt given for an inbound message as versions before the sender was part of
    /// the key kept it (read, and pruned, until the last such entry is older than twice the
    /// replay window).
    pub fn legacy_inbox(message_id: &uuid::Uuid) -> Vec<u8> {
        key("i/", &[message_id.as_bytes()])
    }

    pub const LEGACY_INBOX: &[u8] = b"i/";

    /// Which receipt proves an outbound message delivered: the receipt's SHA-256.
    pub fn receipt_of(message_id: &uuid::Uuid) -> Vec<u8> {
        key("pr/", &[message_id.as_bytes()])
    }

    /// A peer's signed receipt, once, under its SHA-256: a batch receipt proves every
    /// message it lists.
    pub fn receipt(digest: &[u8; 32]) -> Vec<u8> {
        key("pb/", &[digest])
    }

    /// Before receipts were kept once: the receipt itself under each message it proves
    /// (read, never written).
    pub fn legacy_receipt(message_id: &uuid::Uuid) -> Vec<u8> {
        key("p/", &[message_id.as_bytes()])
    }

    pub fn audit(seq: u64) -> Vec<u8> {
        key("a/", &[&seq.to_be_bytes()])
    }

    pub const AUDIT: &[u8] = b"a/";

    /// An idempotent request of one client.
    pub fn request(client: &str, request_id: &uuid::Uuid) -> Vec<u8> {
        key(
            "q/",
            &[
                &(client.len() as u16).to_be_bytes(),
                client.as_bytes(),
                request_id.as_bytes(),
            ],
        )
    }

    pub const REQUESTS: &[u8] = b"q/";

    /// The age index of idempotent requests: when one was made (milliseconds since the
    /// epoch, big-endian), then the rest of its key, so that the oldest come first.
    pub fn request_by_age(at_ms: u64, request_key: &[u8]) -> Vec<u8> {
        let rest = request_key.get(REQUESTS.len()..).unwrap_or_default();
        key("qa/", &[&at_ms.to_be_bytes(), rest])
    }

    pub const REQUESTS_BY_AGE: &[u8] = b"qa/";

    /// A statistics counter: month (`YYYYMM`), then the cell.
    pub fn stat(month: &str, cell: &[u8]) -> Vec<u8> {
        key("st/", &[month.as_bytes(), b"/", cell])
    }

    /// The counters of one month.
    pub fn stats_of(month: &str) -> Vec<u8> {
        key("st/", &[month.as_bytes(), b"/"])
    }

    /// A month's published statistics report (`YYYYMM`), kept to be answered again.
    pub fn published(month: &str) -> Vec<u8> {
        key("sp/", &[month.as_bytes()])
    }

    /// Where a referral, return plan or hearing is counted now (`kind`, record id).
    pub fn counted(kind: u8, id: &[u8; 16]) -> Vec<u8> {
        key("sx/", &[&[kind], id])
    }

    #[cfg(test)]
    mod tests {
        use trm_core::ids::{ClaimId, HearingId, ReferralId, ReturnId, Shared};

        use super::{shared_bytes, shared_from};

        /// Disclosures already stored name their record by these bytes: the kind's tag (as
        /// every other key of the kind), then its id.
        #[test]
        fn a_disclosed_record_keeps_the_key_bytes_it_was_stored_under() {
            let id = [5u8; 16];
            for (shared, tag) in [
                (Shared::Referral(ReferralId::from_bytes(id)), b'r'),
                (Shared::Return(ReturnId::from_bytes(id)), b't'),
                (Shared::Claim(ClaimId::from_bytes(id)), b'l'),
            ] {
                let bytes = shared_bytes(shared);
                assert_eq!((bytes[0], &bytes[1..]), (tag, id.as_slice()), "{shared:?}");
                assert_eq!(shared_from(&bytes), Some(shared));
            }
            let hearing = [&[b'h'][..], HearingId::from_bytes(id).as_bytes()].concat();
            assert_eq!(shared_from(&hearing), None, "a hearing is never disclosed");
            assert_eq!(shared_from(&[b'r'; 5]), None, "too short");
        }
    }
}

/// Direction tags of the flow indexes.
pub(crate) const INCOMING: u8 = b'i';
pub(crate) const OUTGOING: u8 = b'o';

/// A page of committed records (AIP-158): the records and the token of the next page.
pub type PageOf<T> = (Vec<T>, String);
