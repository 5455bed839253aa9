//! Drafts of a case form that a person saved before the case exists (the console's "save
//! draft"): the form's fields, sealed under the draft's own data key like every record
//! holding personal data, keyed by the role and organisation that saved it (the key's
//! subject names the owner too, so no one else can shred it). Discarding a draft deletes
//! it and shreds its key, so no copy of the store (a backup included) can open it again.
//! Drafts are kept [`DRAFT_DAYS`] days, at most [`MAX_DRAFTS`] per owner; housekeeping
//! destroys those past keeping ([`Store::expire_drafts`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use trm_core::ids::Principal;

use crate::{
    audit::AuditRecord, repo::layout, store::Store, subject::Subject, tx::decode, tx::Tx, Result,
};

/// How long a draft is kept after it was last saved.
pub const DRAFT_DAYS: i64 = 30;

/// How many drafts one role of one organisation may keep.
pub const MAX_DRAFTS: usize = 20;

/// A saved form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub draft_id: uuid::Uuid,
    /// The form's fields in order (repeated names for ticked boxes).
    pub fields: Vec<(String, String)>,
    pub saved_at: OffsetDateTime,
}

impl Draft {
    /// Whether the draft is past keeping at `now`.
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        now - self.saved_at > time::Duration::days(DRAFT_DAYS)
    }
}

/// The data key's subject of the draft stored under `key` (its owner and id).
fn subject(key: &[u8]) -> Subject {
    Subject::named("draft", key)
}

/// What saving a draft came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Saved,
    /// The owner keeps [`MAX_DRAFTS`] already.
    Full,
    /// `draft_id` names no draft of this owner.
    NotFound,
}

impl Tx<'_> {
    /// Saves `draft` for `owner`: a new one (`new`) within the owner's [`MAX_DRAFTS`], or
    /// one of the owner's own saved again.
    pub fn put_draft(&mut self, owner: &Principal, draft: &Draft, new: bool) -> Result<Saved> {
        let key = layout::draft(owner, draft.draft_id.as_bytes());
        let exists = self.get_raw(&key)?.is_some();
        if !new && !exists {
            return Ok(Saved::NotFound);
        }
        if new
            && !exists
            && self
                .scan_raw(&layout::drafts(owner), None, MAX_DRAFTS)?
                .len()
                >= MAX_DRAFTS
        {
            return Ok(Saved::Full);
        }
        self.put_sealed(&key, &subject(&key), draft)?;
        Ok(Saved::Saved)
    }

    /// Deletes `owner`'s draft `id` and shreds its key; returns whether there was one.
    pub fn discard_draft(&mut self, owner: &Principal, id: uuid::Uuid) -> Result<bool> {
        let key = layout::draft(owner, id.as_bytes());
        if self.get_raw(&key)?.is_none() {
            return Ok(false);
        }
        self.delete(&key)?;
        self.shred(&subject(&key))?;
        Ok(true)
    }
}

impl Store {
    /// `owner`'s draft `id`, unless it is past keeping.
    pub fn draft(&self, owner: &Principal, id: uuid::Uuid) -> Result<Option<Draft>> {
        let key = layout::draft(owner, id.as_bytes());
        let found: Option<Draft> = self.get_sealed("draft", &key, &subject(&key))?;
        Ok(found.filter(|d| !d.expired(OffsetDateTime::now_utc())))
    }

    /// `owner`'s drafts not past keeping, oldest first.
    pub fn drafts(&self, owner: &Principal) -> Result<Vec<Draft>> {
        let now = OffsetDateTime::now_utc();
        let mut kept = Vec::new();
        for (key, _) in self.scan_raw(&layout::drafts(owner), None, MAX_DRAFTS)? {
            match self.get_sealed::<Draft>("draft", &key, &subject(&key))? {
                Some(d) if !d.expired(now) => kept.push(d),
                // Past keeping, or its key shredded: nothing to show.
                _ => {}
            }
        }
        kept.sort_by_key(|d| d.saved_at);
        Ok(kept)
    }

    /// Destroys every draft past keeping (and any whose key is gone), each audited by the
    /// node; returns how many.
    pub async fn expire_drafts(&self) -> Result<usize> {
        let now = OffsetDateTime::now_utc();
        let mut stale = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_raw(&layout::all_drafts(), after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, sealed) in page {
                let gone = match self.open_sealed(&subject(&key), &key, &sealed)? {
                    Some(plain) => decode::<Draft>("draft", &plain)?.expired(now),
                    None => true,
                };
                if gone {
                    stale.push(key);
                }
            }
        }
        let n = stale.len();
        if n == 0 {
            return Ok(0);
        }
        self.commit::<(), (), _>(move |tx| {
            for key in &stale {
                tx.delete(key)?;
                tx.shred(&subject(key))?;
            }
            let record = AuditRecord::new("node", "draft.expire", "-", "ok")
                .detail(format!("drafts={}", stale.len()));
            tx.audit(record)?;
            Ok(())
        })
        .await
        .map_err(crate::TxFail::into_store)?;
        Ok(n)
    }
}
