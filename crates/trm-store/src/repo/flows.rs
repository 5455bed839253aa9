//! The flows' records: referrals, return plans and hearings, each sealed under its own key,
//! with an index by direction (holding the organisation that may read the record, so that a
//! listing filters before it opens anything), and the index of a case's open referral to
//! each destination.

use trm_core::{
    hearing::{HearingRecord, Witness},
    ids::{CaseId, HearingId, NodeId, OrgId, ReferralId, ReturnId, WitnessRecord},
    referral::{Direction, ReferralRecord},
    returns::ReturnRecord,
};

use trm_core::stats::{Cell, Month};

use crate::{
    repo::{layout, stats, INCOMING, OUTGOING},
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

impl Tx<'_> {
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
        self.get_sealed("referral", &layout::referral(id), &Subject::referral(id))
    }

    /// Writes a referral (new or changed) and keeps its indexes.
    pub fn put_referral(&mut self, r: &ReferralRecord) -> Result<()> {
        let id = r.referral_id;
        self.put_sealed(&layout::referral(id), &Subject::referral(id), r)?;
        let dir = r.direction(self.node);
        self.put_raw(
            &layout::referral_index(dir_tag(dir), id),
            &org_bytes(r.organisation.as_ref()),
        )?;
        self.recount(
            stats::REFERRAL,
            id.as_bytes(),
            Month::at(r.created_at),
            Cell::Referral {
                direction: dir,
                status: r.status,
            },
        )?;
        if let (Direction::Outgoing, Some(case)) = (dir, r.case_id) {
            let open = layout::open_referral(case, r.destination);
            if r.status.is_final() {
                if self.get_raw(&open)?.as_deref() == Some(id.as_bytes()) {
                    self.delete(&open)?;
                }
            } else {
                self.put_raw(&open, id.as_bytes())?;
            }
        }
        Ok(())
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
        self.get_sealed(
            "return plan",
            &layout::return_plan(id),
            &Subject::return_plan(id),
        )
    }

    /// Writes a return plan (new or changed) and keeps its index.
    pub fn put_return_plan(&mut self, r: &ReturnRecord) -> Result<()> {
        let id = r.return_id;
        self.put_sealed(&layout::return_plan(id), &Subject::return_plan(id), r)?;
        let dir = if r.origin == self.node {
            Direction::Outgoing
        } else {
            Direction::Incoming
        };
        self.put_raw(
            &layout::return_index(dir_tag(dir), id),
            &org_bytes(r.organisation.as_ref()),
        )?;
        self.recount(
            stats::RETURN,
            id.as_bytes(),
            Month::at(r.created_at),
            Cell::Return(r.status),
        )
    }

    /// Returns the hearing `id`.
    pub fn hearing(&mut self, id: HearingId) -> Result<Option<HearingRecord>> {
        self.get_sealed("hearing", &layout::hearing(id), &Subject::hearing(id))
    }

    /// Writes a hearing (new or changed) and keeps its index (incoming: this node is the
    /// witness's country).
    pub fn put_hearing(&mut self, h: &HearingRecord) -> Result<()> {
        let id = h.hearing_id;
        self.put_sealed(&layout::hearing(id), &Subject::hearing(id), h)?;
        let dir = if h.witness_country == self.node {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        self.put_raw(&layout::hearing_index(dir_tag(dir), id), b"")?;
        self.recount(
            stats::HEARING,
            id.as_bytes(),
            Month::at(h.created_at),
            Cell::Hearing(h.status),
        )
    }
}

impl Store {
    /// Returns the referral `id`.
    pub fn referral(&self, id: ReferralId) -> Result<Option<ReferralRecord>> {
        self.get_sealed("referral", &layout::referral(id), &Subject::referral(id))
    }

    /// Returns up to `limit` referrals of one direction after `after`, in id order, of
    /// those whose organisation `visible` lets through (checked before anything is opened).
    pub fn referrals(
        &self,
        direction: Direction,
        after: Option<ReferralId>,
        limit: usize,
        visible: impl Fn(Option<&OrgId>) -> bool,
    ) -> Result<Vec<ReferralRecord>> {
        let tag = dir_tag(direction);
        let from = after.map(|a| layout::referral_index(tag, a));
        self.indexed(&layout::referral_indexes(tag), from, limit, visible, |id| {
            self.referral(ReferralId::from_bytes(id))
        })
    }

    /// Returns the return plan `id`.
    pub fn return_plan(&self, id: ReturnId) -> Result<Option<ReturnRecord>> {
        self.get_sealed(
            "return plan",
            &layout::return_plan(id),
            &Subject::return_plan(id),
        )
    }

    /// Returns up to `limit` return plans of one direction (outgoing: this node requested)
    /// after `after`, of those whose organisation `visible` lets through.
    pub fn return_plans(
        &self,
        direction: Direction,
        after: Option<ReturnId>,
        limit: usize,
        visible: impl Fn(Option<&OrgId>) -> bool,
    ) -> Result<Vec<ReturnRecord>> {
        let tag = dir_tag(direction);
        let from = after.map(|a| layout::return_index(tag, a));
        self.indexed(&layout::return_indexes(tag), from, limit, visible, |id| {
            self.return_plan(ReturnId::from_bytes(id))
        })
    }

    /// Reads up to `limit` records through an index of (direction, id) -> organisation,
    /// after index key `from`, skipping (before opening anything) those `visible` refuses.
    fn indexed<R>(
        &self,
        prefix: &[u8],
        mut from: Option<Vec<u8>>,
        limit: usize,
        visible: impl Fn(Option<&OrgId>) -> bool,
        load: impl Fn([u8; 16]) -> Result<Option<R>>,
    ) -> Result<Vec<R>> {
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.scan_raw(prefix, from.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (k, org) in page {
                if out.len() >= limit {
                    break;
                }
                if !visible(org_of(&org).as_ref()) {
                    continue;
                }
                let Some(id) = id_after(&k, prefix.len()) else {
                    continue;
                };
                if let Some(r) = load(id)? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Returns the hearing `id`.
    pub fn hearing(&self, id: HearingId) -> Result<Option<HearingRecord>> {
        self.get_sealed("hearing", &layout::hearing(id), &Subject::hearing(id))
    }

    /// Returns up to `limit` hearings of one direction after `after` that `keep` keeps.
    pub fn hearings(
        &self,
        direction: Direction,
        after: Option<HearingId>,
        limit: usize,
        keep: impl Fn(&HearingRecord) -> bool,
    ) -> Result<Vec<HearingRecord>> {
        let tag = dir_tag(direction);
        let prefix = layout::hearing_indexes(tag);
        let mut from = after.map(|a| layout::hearing_index(tag, a));
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.scan_raw(&prefix, from.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (k, _) in page {
                if out.len() >= limit {
                    break;
                }
                let Some(id) = id_after(&k, prefix.len()) else {
                    continue;
                };
                if let Some(h) = self.hearing(HearingId::from_bytes(id))? {
                    if keep(&h) {
                        out.push(h);
                    }
                }
            }
        }
        Ok(out)
    }
}
