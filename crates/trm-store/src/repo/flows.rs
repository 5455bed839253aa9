//! The shared records (referrals, return plans, hearings, and any kind added to
//! [`RecordKind`](trm_core::exchange::RecordKind)), kept one way ([`StoredRecord`]): each sealed
//! under a key of its own (a subject of its kind), with an index by direction holding the
//! organisation that may read it (a listing filters before it opens anything), counted in the
//! statistics by its state; and the index of a case's open referral to each destination.

use trm_core::{
    hearing::{HearingRecord, Witness},
    ids::{CaseId, HearingId, NodeId, OrgId, ReferralId, ReturnId, WitnessRecord},
    referral::{Direction, ReferralRecord},
    returns::ReturnRecord,
    safety::SafetyAlertRecord,
};

use serde::{de::DeserializeOwned, Serialize};
use time::OffsetDateTime;
use trm_core::{
    exchange::{RecordKind, SharedRecord},
    ids::RecordId,
    stats::{Cell, Month},
};

use crate::{
    repo::{layout, INCOMING, OUTGOING},
    subject::Subject,
    Result, Store, Tx,
};

fn dir_tag(d: Direction) -> u8 {
    match d {
        Direction::Incoming => INCOMING,
        Direction::Outgoing => OUTGOING,
    }
}

fn org_bytes(org: Option<&OrgId>) -> Vec<u8> {
    org.map(|o| o.as_str().as_bytes().to_vec())
        .unwrap_or_default()
}

fn org_of(b: &[u8]) -> Option<OrgId> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn id_after(key: &[u8], prefix_len: usize) -> Option<[u8; 16]> {
    key.get(prefix_len..)?.try_into().ok()
}

/// A part of a shared record that a message from its other node replaces whole (the last
/// one the sender made wins), rather than moving it a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The case a copy holds (`CopyUpdate`).
    DisclosedCase = 0,
    /// A return plan's coordination flags (`ReturnFlags`). The numbers are in stored keys:
    /// they never change.
    ReturnFlags = 1,
}

/// How the store keeps one kind of shared record.
pub trait StoredRecord: SharedRecord + Serialize + DeserializeOwned {
    /// Whether the record counts in a statistics table at all.
    const COUNTED: bool = true;
    /// The statistics cell the record counts in now, seen from this node (`dir`).
    fn cell(&self, dir: Direction) -> Cell;
    /// When the record was created: it counts in that month.
    fn created(&self) -> OffsetDateTime;
    /// Keeps indexes of its own besides the generic ones.
    fn index(&self, _tx: &mut Tx<'_>, _dir: Direction) -> Result<()> {
        Ok(())
    }
}

impl StoredRecord for ReferralRecord {
    fn cell(&self, direction: Direction) -> Cell {
        Cell::Referral {
            direction,
            status: self.status,
        }
    }
    fn created(&self) -> OffsetDateTime {
        self.created_at
    }
    /// The open referral of a case to a destination (one at a time).
    fn index(&self, tx: &mut Tx<'_>, dir: Direction) -> Result<()> {
        if let (Direction::Outgoing, Some(case)) = (dir, self.case_id) {
            let open = layout::open_referral(case, self.destination);
            if self.status.is_final() {
                if tx.get_raw(&open)?.as_deref() == Some(self.referral_id.as_bytes()) {
                    tx.delete(&open)?;
                }
            } else {
                tx.put_raw(&open, self.referral_id.as_bytes())?;
            }
        }
        Ok(())
    }
}

impl StoredRecord for ReturnRecord {
    fn cell(&self, _dir: Direction) -> Cell {
        Cell::Return(self.status)
    }
    fn created(&self) -> OffsetDateTime {
        self.created_at
    }
}

/// An alert counts once on each node that holds it, by kind, and is found by its case
/// (at the origin) or by the copy it is about (at a recipient), never by reading them all.
impl StoredRecord for SafetyAlertRecord {
    fn cell(&self, _dir: Direction) -> Cell {
        Cell::SafetyAlert(self.terms.kind)
    }
    fn created(&self) -> OffsetDateTime {
        self.created_at
    }
    fn index(&self, tx: &mut Tx<'_>, _dir: Direction) -> Result<()> {
        let id = uuid_bytes(self.alert_id);
        let key = match self.case_id {
            Some(case) => layout::alerts_of_case(case, Some(&id)),
            None => layout::alerts_of_copy(self.origin, &self.case_ref, Some(&id)),
        };
        tx.put_raw(&key, &[])
    }
}

impl StoredRecord for HearingRecord {
    fn cell(&self, _dir: Direction) -> Cell {
        Cell::Hearing(self.status)
    }
    fn created(&self) -> OffsetDateTime {
        self.created_at
    }
}

impl StoredRecord for trm_core::remedies::ClaimRecord {
    fn cell(&self, _dir: Direction) -> Cell {
        Cell::Claim(self.status)
    }
    fn created(&self) -> OffsetDateTime {
        self.created_at
    }
}

/// A victim-status request counts in no table: it is a question about a person already
/// counted, and holds no status of the person's own.
impl StoredRecord for trm_core::remedies::VictimStatusRecord {
    const COUNTED: bool = false;
    /// Never counted (`COUNTED` is false); a cell is named only to satisfy the trait.
    fn cell(&self, _dir: Direction) -> Cell {
        Cell::Child(None)
    }
    fn created(&self) -> OffsetDateTime {
        self.created_at
    }
    /// At the issuer, found by the case it is about (an erasure of the case or a withdrawn
    /// consent reaches its attestations without reading every request).
    fn index(&self, tx: &mut Tx<'_>, _dir: Direction) -> Result<()> {
        if let (true, WitnessRecord::Case(case)) = (self.issuing_country == tx.node(), self.subject)
        {
            let id = uuid_bytes(self.status_request_id);
            tx.put_raw(&layout::status_requests_of_case(case, Some(&id)), &[])?;
        }
        Ok(())
    }
}

fn uuid_bytes<I: RecordId>(id: I) -> [u8; 16] {
    *id.to_uuid().as_bytes()
}

/// What keeping a shared record of `kind` reads: its data key's generation and first key,
/// the state its last event named, and where it is counted.
pub(crate) fn keeping_reads(kind: RecordKind, id: &[u8; 16]) -> Vec<Vec<u8>> {
    let subject = Subject::of_record(kind, id);
    vec![
        layout::generation(&subject),
        layout::data_key(&subject, 0),
        layout::event_state(kind.tag(), id),
        layout::counted(kind.tag(), id),
    ]
}

fn subject<R: StoredRecord>(id: R::Id) -> Subject {
    Subject::of_record(R::KIND, &uuid_bytes(id))
}

impl Tx<'_> {
    /// [`Tx::record`] though its key is listed as erased: for a restore only.
    pub(crate) fn record_before_erasure<R: StoredRecord>(
        &mut self,
        id: R::Id,
    ) -> Result<Option<R>> {
        let key = layout::record(R::KIND, &uuid_bytes(id));
        self.get_sealed_before_erasure(R::KIND.name(), &key, &subject::<R>(id))
    }

    /// Returns the shared record `id` of kind `R`.
    pub fn record<R: StoredRecord>(&mut self, id: R::Id) -> Result<Option<R>> {
        let key = layout::record(R::KIND, &uuid_bytes(id));
        self.get_sealed(R::KIND.name(), &key, &subject::<R>(id))
    }

    /// Writes a shared record (new or changed), keeps its indexes and moves its count.
    pub fn put_record<R: StoredRecord>(&mut self, r: &R) -> Result<()> {
        let id = uuid_bytes(r.id());
        let subject = subject::<R>(r.id());
        let dir = r.direction(self.node);
        // Where the record counts now, for a kind that counts.
        let counted = R::COUNTED.then(|| (Month::at(r.created()), r.cell(dir)));
        // What the writes below read, and the counter the record counts in now, in one
        // round trip.
        let mut reads = keeping_reads(R::KIND, &id);
        if let Some((month, cell)) = &counted {
            reads.push(super::stats::stat_key(*month, cell)?);
        }
        self.prefetch(&reads)?;
        self.put_sealed(&layout::record(R::KIND, &id), &subject, r)?;
        self.put_raw(
            &layout::record_index(R::KIND, dir_tag(dir), &id),
            &org_bytes(r.owner()),
        )?;
        self.record_written(
            trm_core::events::EventRecord::Shared(R::KIND),
            (R::KIND.tag(), &id),
            r.status_name(),
            dir == Direction::Incoming,
            r.owner(),
        )?;
        if let Some((month, cell)) = counted {
            self.recount(R::KIND.tag(), &id, month, cell)?;
        }
        r.index(self, dir)
    }

    /// Returns whether `message` may replace `part` of record `id`: it was made after the
    /// last message applied to that part, which it then becomes. Message ids are UUIDv7,
    /// so they sort in the order their sender made them; an older message that arrives
    /// late (sent again from the dead letters after a newer one) replaces nothing.
    pub fn newer_update<R: StoredRecord>(
        &mut self,
        id: R::Id,
        part: Replaced,
        message: uuid::Uuid,
    ) -> Result<bool> {
        let key = layout::last_update(R::KIND.tag(), &uuid_bytes(id), part as u8);
        if let Some(last) = self.get_raw(&key)? {
            if message.as_bytes().as_slice() <= last.as_slice() {
                return Ok(false);
            }
        }
        self.put_raw(&key, message.as_bytes())?;
        Ok(true)
    }

    /// Returns every shared record of kind `R` this node holds, both directions, that `keep`
    /// keeps (records it cannot open, erased, are skipped): for a rule that must see all of
    /// a kind that stays small (the open hearings of a case).
    pub fn records_where<R: StoredRecord>(&mut self, keep: impl Fn(&R) -> bool) -> Result<Vec<R>> {
        let mut out = Vec::new();
        for dir in [Direction::Incoming, Direction::Outgoing] {
            let prefix = layout::record_indexes(R::KIND, dir_tag(dir));
            let mut from: Option<Vec<u8>> = None;
            loop {
                let page = self.scan_raw(&prefix, from.as_deref(), 256)?;
                let Some((last, _)) = page.last() else { break };
                from = Some(last.clone());
                for (k, _) in page {
                    let Some(id) = id_after(&k, prefix.len()) else {
                        continue;
                    };
                    let id = R::Id::of_uuid(uuid::Uuid::from_bytes(id));
                    if let Some(r) = self.record::<R>(id)? {
                        if keep(&r) {
                            out.push(r);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Returns the safety alerts raised here about case `case`.
    pub fn alerts_of_case(&mut self, case: CaseId) -> Result<Vec<SafetyAlertRecord>> {
        self.records_indexed(&layout::alerts_of_case(case, None))
    }

    /// Returns the victim-status requests peers made about case `case` of this node.
    pub fn status_requests_of_case(
        &mut self,
        case: CaseId,
    ) -> Result<Vec<trm_core::remedies::VictimStatusRecord>> {
        self.records_indexed(&layout::status_requests_of_case(case, None))
    }

    /// Returns the safety alerts `origin` sent about the case it knows this node by
    /// `case_ref`.
    pub fn alerts_of_copy(
        &mut self,
        origin: NodeId,
        case_ref: &str,
    ) -> Result<Vec<SafetyAlertRecord>> {
        self.records_indexed(&layout::alerts_of_copy(origin, case_ref, None))
    }

    /// Returns the records of kind `R` whose ids end the keys under `prefix` (an index of
    /// the record's own, written by [`StoredRecord::index`]).
    fn records_indexed<R: StoredRecord>(&mut self, prefix: &[u8]) -> Result<Vec<R>> {
        let mut out = Vec::new();
        let mut from: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_raw(prefix, from.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (k, _) in page {
                let Some(id) = id_after(&k, prefix.len()) else {
                    continue;
                };
                if let Some(r) = self.record::<R>(R::Id::of_uuid(uuid::Uuid::from_bytes(id)))? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Looks up a local record by id: a case, or a referral or return plan (whose reference
    /// counts only if it is shared with `peer`).
    pub fn witness(&mut self, id: uuid::Uuid, peer: NodeId) -> Result<Option<Witness>> {
        for record in [
            WitnessRecord::Case(CaseId::from_uuid(id)),
            WitnessRecord::Referral(ReferralId::from_uuid(id)),
            WitnessRecord::Return(ReturnId::from_uuid(id)),
        ] {
            if let Some(w) = self.witness_of(record, peer)? {
                return Ok(Some(w));
            }
        }
        Ok(None)
    }

    /// Returns what the known local `record` tells about the witness, towards `peer`.
    pub fn witness_of(&mut self, record: WitnessRecord, peer: NodeId) -> Result<Option<Witness>> {
        Ok(match record {
            WitnessRecord::Case(id) => match self.case(id)? {
                Some(c) => Some(Witness {
                    record,
                    case_ref: self.case_ref(id, peer)?,
                    is_child: c.child.is_child,
                    organisation: Some(c.organisation),
                }),
                None => None,
            },
            WitnessRecord::Referral(id) => self.referral(id)?.map(|r| Witness {
                record,
                case_ref: (r.origin == peer || r.destination == peer)
                    .then(|| r.disclosed.case_ref.clone()),
                is_child: r.disclosed.child.is_some_and(|c| c.is_child),
                organisation: r.organisation,
            }),
            WitnessRecord::Return(id) => self.return_plan(id)?.map(|r| Witness {
                record,
                case_ref: (r.origin == peer || r.destination == peer)
                    .then(|| r.disclosed.case_ref.clone()),
                is_child: r.disclosed.child.is_some_and(|c| c.is_child),
                organisation: r.organisation,
            }),
        })
    }

    /// Returns the referral `id`.
    pub fn referral(&mut self, id: ReferralId) -> Result<Option<ReferralRecord>> {
        self.record(id)
    }

    /// Writes a referral (new or changed) and keeps its indexes.
    pub fn put_referral(&mut self, r: &ReferralRecord) -> Result<()> {
        self.put_record(r)
    }

    /// Returns the open referral of `case` to `destination`, if one is open.
    pub fn open_referral(
        &mut self,
        case: CaseId,
        destination: NodeId,
    ) -> Result<Option<ReferralId>> {
        Ok(self
            .get_raw(&layout::open_referral(case, destination))?
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .map(ReferralId::from_bytes))
    }

    /// Returns the return plan `id`.
    pub fn return_plan(&mut self, id: ReturnId) -> Result<Option<ReturnRecord>> {
        self.record(id)
    }

    /// Writes a return plan (new or changed) and keeps its index.
    pub fn put_return_plan(&mut self, r: &ReturnRecord) -> Result<()> {
        self.put_record(r)
    }

    /// Returns the hearing `id`.
    pub fn hearing(&mut self, id: HearingId) -> Result<Option<HearingRecord>> {
        self.record(id)
    }

    /// Writes a hearing (new or changed) and keeps its index (incoming: this node is the
    /// witness's country).
    pub fn put_hearing(&mut self, h: &HearingRecord) -> Result<()> {
        self.put_record(h)
    }
}

impl Store {
    /// Returns the shared record `id` of kind `R`.
    pub fn record<R: StoredRecord>(&self, id: R::Id) -> Result<Option<R>> {
        let key = layout::record(R::KIND, &uuid_bytes(id));
        self.get_sealed(R::KIND.name(), &key, &subject::<R>(id))
    }

    /// Returns up to `limit` shared records of kind `R` and one direction after `after`, in
    /// id order: of those whose organisation `visible` lets through (checked before
    /// anything is opened), those `keep` keeps. Also returns where the scan stopped (the
    /// id to page on from), which may be past the last record returned: records it could
    /// not open (erased) or did not keep never shorten a page that has more after it.
    pub fn records<R: StoredRecord>(
        &self,
        direction: Direction,
        after: Option<R::Id>,
        limit: usize,
        visible: impl Fn(Option<&OrgId>) -> bool,
        keep: impl Fn(&R) -> Result<bool>,
    ) -> Result<(Vec<R>, Option<R::Id>)> {
        let tag = dir_tag(direction);
        let prefix = layout::record_indexes(R::KIND, tag);
        let mut from = after.map(|a| layout::record_index(R::KIND, tag, &uuid_bytes(a)));
        let mut out = Vec::new();
        let mut last_seen = None;
        'pages: while out.len() < limit {
            let page = self.scan_raw(&prefix, from.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (k, org) in page {
                if out.len() >= limit {
                    break 'pages;
                }
                let Some(id) = id_after(&k, prefix.len()) else {
                    continue;
                };
                let id = R::Id::of_uuid(uuid::Uuid::from_bytes(id));
                last_seen = Some(id);
                if !visible(org_of(&org).as_ref()) {
                    continue;
                }
                if let Some(r) = self.record::<R>(id)? {
                    if keep(&r)? {
                        out.push(r);
                    }
                }
            }
        }
        Ok((out, last_seen))
    }

    /// Returns the referral `id`.
    pub fn referral(&self, id: ReferralId) -> Result<Option<ReferralRecord>> {
        self.record(id)
    }

    /// Returns the return plan `id`.
    pub fn return_plan(&self, id: ReturnId) -> Result<Option<ReturnRecord>> {
        self.record(id)
    }

    /// Returns the hearing `id`.
    pub fn hearing(&self, id: HearingId) -> Result<Option<HearingRecord>> {
        self.record(id)
    }
}
