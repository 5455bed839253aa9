//! `WorkService`: the queue of what waits for an answer on this node, due first. Tasks are
//! opened and closed by the flows in the transactions that make something due and answer
//! it ([`trm_store::Tx::open_task`], [`trm_store::Tx::close_task`]); each caller sees what
//! its role may answer. A task holds ids and times only: listing them reads no victim
//! record and needs no audit entry.

use time::OffsetDateTime;
use tonic::Request;
use tracing::instrument;
use trm_core::{
    access::{self, Action},
    events::{Event, EventKind, EventRecord},
    ids::Principal,
    tasks::Task,
    FieldError,
};
use trm_proto::{
    command::{task_kind_to_wire, ListTasks, WatchEvents},
    convert,
    v1::{self as w, work_service_server::WorkService},
};

use crate::{
    authz,
    ctx::Ctx,
    error::{ApiError, ApiResult},
};

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
    watch_events(w::WatchEventsRequest) -> WatchEventsStream = EventStream;
});

/// The stream of events one watcher receives.
pub type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<w::Event, tonic::Status>> + Send>>;

/// How many events a watcher reads at a time.
const EVENT_PAGE: usize = 100;

/// How long a watcher waits for a change before it looks again (another replica's events,
/// a revocation of its certificate).
const EVENT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns the wire form of an event.
fn event_to_wire(e: &Event) -> w::Event {
    let kind = match e.kind {
        EventKind::Arrived => w::EventKind::Arrived,
        EventKind::StatusChanged => w::EventKind::StatusChanged,
        EventKind::Erased => w::EventKind::Erased,
        EventKind::TaskOpened => w::EventKind::TaskOpened,
        EventKind::TaskClosed => w::EventKind::TaskClosed,
    };
    w::Event {
        event_id: e.seq.to_string(),
        kind: kind as i32,
        record_type: e.record.type_name().to_owned(),
        record_id: e.record_id.to_string(),
        status: e.status.clone(),
        occurred_at: Some(convert::ts(e.occurred_at)),
        task_kind: match e.record {
            EventRecord::Task(k) => task_kind_to_wire(k) as i32,
            EventRecord::Shared(_) => 0,
        },
    }
}

/// Sends `p` the events after `after` it may see, then each new one once durable, until the
/// client goes away or its certificate is revoked.
async fn watch(ctx: Ctx, p: Principal, leaf: Option<Vec<u8>>, mut after: u64, out: Sender) {
    let mut changes = ctx.store.event_changes();
    let mut stopped = ctx.stopped.clone();
    loop {
        if leaf.as_deref().is_some_and(|l| ctx.revocations.revokes(l)) {
            let revoked =
                tonic::Status::unauthenticated("client certificate revoked by the node's operator");
            let _ = out.send(Err(revoked)).await;
            return;
        }
        let page = match ctx.store.events_after(after, EVENT_PAGE) {
            Ok(page) => page,
            Err(e) => {
                let _ = out.send(Err(ApiError::from(e).into())).await;
                return;
            }
        };
        let full = page.len() == EVENT_PAGE;
        for e in page {
            after = e.seq;
            if e.seen_by(&p) && out.send(Ok(event_to_wire(&e))).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = out.closed() => return,
            _ = stopped.wait_for(|stop| *stop) => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(EVENT_POLL) => {}
        }
    }
    // The node is stopping: the client reconnects to it, or another replica, and resumes.
    let _ = out
        .send(Err(tonic::Status::unavailable("the node is stopping")))
        .await;
}

type Sender = tokio::sync::mpsc::Sender<Result<w::Event, tonic::Status>>;

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
    ) -> ApiResult<EventStream> {
        let p = authz::principal(&request)?;
        access::require(&p, Action::ListTasks)?;
        let WatchEvents { after } = request.get_ref().try_into()?;
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        self.ctx
            .audit_read(&p, "events.watch", "-".into(), format!("after={after}"))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_PAGE);
        tokio::spawn(watch(self.ctx.clone(), p, leaf, after, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    #[instrument(skip_all)]
    async fn list_tasks(
        &self,
        request: Request<w::ListTasksRequest>,
    ) -> ApiResult<w::ListTasksResponse> {
        let p = authz::principal(&request)?;
        access::require(&p, Action::ListTasks)?;
        let ListTasks {
            kinds,
            overdue_only,
            page,
        } = request.get_ref().try_into()?;
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
