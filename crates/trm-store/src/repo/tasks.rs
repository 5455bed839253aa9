//! The work queue: tasks in due order (`tq/`, by due time then id) and, per kind and
//! record, the open task (`tk/`), so that the transaction that answers a record closes its
//! task. Ids, kinds, organisations and times only: nothing here is personal data.

use time::OffsetDateTime;
use trm_core::{
    events::{EventKind, EventRecord},
    tasks::{Task, TaskKind},
};

use crate::{repo::layout, store::Store, tx::Tx, Result};

/// Reads a task counter (none: 0); a value of another size is corrupt, never 0.
fn count_of(value: Option<Vec<u8>>) -> Result<u64> {
    match value {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| crate::StoreError::Corrupt("task count")),
    }
}

/// Returns whether `key` is the key of a task in the queue (a page token names one).
pub fn is_task_key(key: &[u8]) -> bool {
    let prefix = layout::tasks();
    key.len() == prefix.len() + 8 + 16 && key.starts_with(&prefix)
}

/// The key of `task` in due order.
fn queue_key(task: &Task) -> Vec<u8> {
    // Seconds since the epoch with the sign bit flipped: byte order is time order.
    let due = (task.due_at.unix_timestamp() as u64) ^ (1 << 63);
    layout::task(&due.to_be_bytes(), task.task_id.as_bytes())
}

impl Tx<'_> {
    /// Opens `task`, unless a task of its kind is open on its record already.
    pub fn open_task(&mut self, task: &Task) -> Result<()> {
        let index = layout::task_of(task.kind.tag(), task.record_id.as_bytes());
        if self.exists(&index)? {
            return Ok(());
        }
        let key = queue_key(task);
        self.put_json(&key, task)?;
        self.count_task(task.kind, 1)?;
        self.put_raw(&index, &key)?;
        self.task_event(EventKind::TaskOpened, task)
    }

    /// Announces that `task` opened or closed.
    fn task_event(&mut self, kind: EventKind, task: &Task) -> Result<()> {
        self.record_event(
            kind,
            EventRecord::Task(task.kind),
            task.record_id,
            "",
            task.organisation.as_ref(),
        )?;
        Ok(())
    }

    /// Moves the count of open tasks of `kind` by `delta`.
    fn count_task(&mut self, kind: TaskKind, delta: i64) -> Result<()> {
        let key = layout::task_count(kind.tag());
        let now = count_of(self.get_raw(&key)?)?;
        self.put_raw(&key, &now.saturating_add_signed(delta).to_be_bytes())
    }

    /// Closes the task of `kind` on `record_id`; returns whether one was open.
    pub fn close_task(&mut self, kind: TaskKind, record_id: uuid::Uuid) -> Result<bool> {
        let index = layout::task_of(kind.tag(), record_id.as_bytes());
        let Some(key) = self.get_raw(&index)? else {
            return Ok(false);
        };
        let task: Option<Task> = self.get_json("task", &key)?;
        if let Some(task) = &task {
            self.task_event(EventKind::TaskClosed, task)?;
        }
        self.delete(&key)?;
        self.delete(&index)?;
        self.count_task(kind, -1)?;
        Ok(true)
    }

    /// Closes every task on `record_id`, whatever its kind (the record was erased).
    pub fn close_tasks_of(&mut self, record_id: uuid::Uuid) -> Result<()> {
        for kind in TaskKind::ALL {
            self.close_task(kind, record_id)?;
        }
        Ok(())
    }
}

impl Store {
    /// Returns how many tasks of `kind` are open (a counter: no scan).
    pub fn open_tasks(&self, kind: TaskKind) -> Result<u64> {
        count_of(self.engine().get(&layout::task_count(kind.tag()))?)
    }

    /// Returns, by kind, how many tasks are past due at `now`: the head of the queue,
    /// read up to the first task not yet due.
    pub fn overdue_tasks(&self, now: OffsetDateTime) -> Result<Vec<(TaskKind, u64)>> {
        let prefix = layout::tasks();
        let mut counts = std::collections::BTreeMap::new();
        let mut from: Option<Vec<u8>> = None;
        'scan: loop {
            let page = self.scan_raw(&prefix, from.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (_, v) in page {
                let task: Task = crate::tx::decode("task", &v)?;
                if !task.overdue(now) {
                    break 'scan;
                }
                *counts.entry(task.kind).or_insert(0u64) += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }

    /// Returns, in due order after the task key `after`, up to `limit` tasks in the queue
    /// at `now` that `keep` keeps, each with its key (a page token).
    pub fn tasks(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        now: OffsetDateTime,
        keep: impl Fn(&Task) -> bool,
    ) -> Result<Vec<(Vec<u8>, Task)>> {
        let prefix = layout::tasks();
        let mut from = after.map(<[u8]>::to_vec);
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.scan_raw(&prefix, from.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (k, v) in page {
                if out.len() >= limit {
                    break;
                }
                let task: Task = crate::tx::decode("task", &v)?;
                if task.shows(now) && keep(&task) {
                    out.push((k, task));
                }
            }
        }
        Ok(out)
    }
}
