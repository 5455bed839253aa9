//! `WorkService`: the queue of what waits for an answer on this node, due first. Tasks are
//! opened and closed by the flows in the transactions that make something due and answer
//! it ([`trm_store::Tx::open_task`], [`trm_store::Tx::close_task`]); each caller sees what
//! its role may answer. A task holds ids and times only: listing them reads no victim
//! record and needs no audit entry.

use time::OffsetDateTime;
use tonic::Request;
use tracing::instrument;
use trm_core::{access::Action, tasks::Task, FieldError};
use trm_proto::{
    command::{task_kind_to_wire, ListTasks, WatchEvents},
    convert,
    v1::{self as w, work_service_server::WorkService},
};

use crate::{authz, ctx::Ctx, error::ApiResult};

/// The work service of one node.
#[derive(Debug, Clone)]
pub struct Work {
    ctx: Ctx,
}

impl Work {
    /// Returns the service.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

crate::grpc_service!(Work => WorkService {
    list_tasks(w::ListTasksRequest) -> w::ListTasksResponse;
} streams {
    watch_events(w::WatchEventsRequest) -> WatchEventsStream = crate::watch::EventStream;
});

/// Returns the wire form of a task, overdue or not at `now`.
fn task_to_wire(t: &Task, now: OffsetDateTime) -> w::Task {
    w::Task {
        task_id: t.task_id.to_string(),
        kind: task_kind_to_wire(t.kind) as i32,
        record_id: t.record_id.to_string(),
        due_at: Some(convert::ts(t.due_at)),
        created_at: Some(convert::ts(t.created_at)),
        overdue: t.overdue(now),
    }
}

impl Work {
    /// `WatchEvents`: what changed on the node, as the caller may see it, from after the
    /// event it names; the watch is audited once, when it opens.
    #[instrument(skip_all)]
    async fn watch_events(
        &self,
        request: Request<w::WatchEventsRequest>,
    ) -> ApiResult<crate::watch::EventStream> {
        let (p, WatchEvents { after }) = authz::reader(&request, Action::ListTasks)?;
        let caller = crate::watch::Caller::of(&request, p.clone());
        let slot = self.ctx.watchers.admit(&caller)?;
        crate::watch::check_after(&self.ctx.store, after)?;
        self.ctx
            .audit_read(&p, "events.watch", "-".into(), format!("after={after}"))
            .await?;
        Ok(crate::watch::start(self.ctx.clone(), caller, slot, after))
    }

    #[instrument(skip_all)]
    async fn list_tasks(
        &self,
        request: Request<w::ListTasksRequest>,
    ) -> ApiResult<w::ListTasksResponse> {
        let (
            p,
            ListTasks {
                kinds,
                overdue_only,
                page,
            },
        ) = authz::reader(&request, Action::ListTasks)?;
        let after = page
            .after
            .as_deref()
            .map(|t| {
                hex::decode(t)
                    .ok()
                    .filter(|k| trm_store::repo::tasks::is_task_key(k))
                    .ok_or_else(|| FieldError::new("page_token", "is not a token this node gave"))
            })
            .transpose()?;
        let now = OffsetDateTime::now_utc();
        let read = self
            .ctx
            .store
            .tasks(after.as_deref(), page.size + 1, now, |t| {
                t.seen_by(&p)
                    && (kinds.is_empty() || kinds.contains(&t.kind))
                    && (!overdue_only || t.overdue(now))
            })?;
        let (found, next_page_token) = page.cut(read, |(key, _)| hex::encode(key));
        Ok(w::ListTasksResponse {
            tasks: found.iter().map(|(_, t)| task_to_wire(t, now)).collect(),
            next_page_token,
        })
    }
}
