//! The `metrics` port: plain HTTP `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//! Only counts, never personal data or ids.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use tracing::error;
use trm_core::ids::NodeId;
use trm_federation::Counters;
use trm_store::{Store, StoreError};

use crate::{ctx::Ctx, gate::GateCounters};

/// Returns the router of the metrics port.
/// Besides the plain-HTTP pages, the port answers gRPC health checks in clear text
/// (HTTP/2 without TLS), for probes that cannot present a client certificate (Kubernetes'
/// gRPC probes): the same health the services and admin ports report.
pub fn router<H>(ctx: Ctx, gates: GateCounters, requests: Arc<Requests>, health: H) -> Router
where
    H: tower::Service<
            axum::extract::Request,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route_service("/grpc.health.v1.Health/Check", health.clone())
        .route_service("/grpc.health.v1.Health/Watch", health)
        .with_state((ctx, gates, requests))
}

/// Alive unless the store stopped taking writes after a failed durable point (only a
/// restart, after the disk is looked at, brings it back: a failing liveness probe is what
/// makes an orchestrator restart the node). A disk that is full or read-only for now fails
/// readiness only: a restart would free no space, and the node takes writes again by itself
/// when the disk does.
async fn live(
    State((ctx, _, _)): State<(Ctx, GateCounters, Arc<Requests>)>,
) -> (StatusCode, String) {
    match ctx.store.failure() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {why}\n"),
        ),
    }
}

/// Ready when the database answers and takes writes (no failed durable point, the data
/// folder neither full nor read-only). Verifying the audit chain is
/// `VerifyAudit`'s job: it reads every entry, too much for a probe that runs every few
/// seconds.
async fn ready(
    State((ctx, _, _)): State<(Ctx, GateCounters, Arc<Requests>)>,
) -> (StatusCode, String) {
    if let Some(why) = ctx.store.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {why}\n"),
        );
    }
    if let Some(why) = ctx.store.write_fault() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage refuses writes: {why}\n"),
        );
    }
    if ctx.store.is_readable() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable\n".into(),
        )
    }
}

/// Requests answered, by gRPC method and status code.
#[derive(Debug, Default)]
pub struct Requests {
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Requests {
    fn bump(&self, method: String, code: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((method, code))
            .or_default() += 1;
    }

    fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// The name of a gRPC status code, from the `grpc-status` header ("OK" when the answer
/// carries it in its trailers).
fn code_name(header: Option<&http::HeaderValue>) -> &'static str {
    let n = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    match tonic::Code::from_i32(n) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Returns the name of the contract's method at `path` (`trm.v1.ReferralService/GetCase`),
/// or of the health and reflection services'; `None` for any other path.
fn contract_method(path: &str) -> Option<&'static str> {
    static METHODS: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        let mut names: Vec<String> = [
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .map(String::from)
        .to_vec();
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(
            trm_proto::v1::FILE_DESCRIPTOR_SET,
        )
        .unwrap_or_default();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    names.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        names.into_iter().collect()
    });
    methods.get(path.strip_prefix('/')?).map(String::as_str)
}

/// A layer that counts every request of a gRPC server by method and status code.
#[derive(Debug, Clone)]
pub struct CountRequests(pub Arc<Requests>);

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            requests: self.0.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    requests: Arc<Requests>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Only the contract's methods are labels (a bounded set of known names), whatever
        // a client sends: a made-up path is `other`.
        let method = contract_method(request.uri().path())
            .unwrap_or("other")
            .to_owned();
        let requests = self.requests.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let r = answer.await;
            let code = match &r {
                Ok(response) => code_name(response.headers().get("grpc-status")),
                Err(_) => "UNKNOWN",
            };
            requests.bump(method, code);
            r
        })
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// Writes one sample of a family (`labels` without braces, empty for none).
fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        out.push_str(&format!("{name} {value}\n"));
    } else {
        out.push_str(&format!("{name}{{{labels}}} {value}\n"));
    }
}

/// Writes a family of one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    sample(out, name, "", value);
}

/// Writes a family with one sample per label set.
fn labelled<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    family(out, name, kind, help);
    for (labels, value) in samples {
        sample(out, name, &labels, value);
    }
}

/// A store read of the metrics page that failed: the page is not served rather than show
/// the figure as zero (a storage fault must not read as an empty queue).
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {what}: {source}")]
pub struct ReadError {
    /// Which figure was being read (never a value).
    pub what: &'static str,
    #[source]
    source: StoreError,
}

/// Names the figure of a failed store read.
fn reading(what: &'static str) -> impl FnOnce(StoreError) -> ReadError {
    move |source| ReadError { what, source }
}

/// Renders the metrics page. Every figure is kept in memory or read in O(peers), except the
/// overdue tasks, read from the head of the queue up to the first not yet due: a scrape
/// never scans the store. A store read that fails fails the page.
pub fn render(ctx: &Ctx, gates: &GateCounters, requests: &Requests) -> Result<String, ReadError> {
    let mut out = String::new();
    let peers = ctx.directory.ids();
    outbox_gauges(&mut out, &ctx.store, &peers)?;
    store_gauges(&mut out, &ctx.store)?;
    task_gauges(&mut out, &ctx.store)?;
    node_gauges(&mut out, ctx, peers.len());
    delivery_counters(&mut out, &ctx.counters, gates);
    labelled_counters(&mut out, &ctx.counters, requests);
    latency_histograms(&mut out, ctx);
    key_dates(&mut out, ctx);
    Ok(out)
}

/// The outbound queues, per peer: how many envelopes wait, and how long the oldest has.
fn outbox_gauges(out: &mut String, s: &Store, peers: &[NodeId]) -> Result<(), ReadError> {
    let mut depths = Vec::with_capacity(peers.len());
    for p in peers {
        let depth = s.outbox_depth(*p).map_err(reading("outbox depth"))?;
        depths.push((format!("peer=\"{p}\""), depth));
    }
    labelled(
        out,
        "trm_outbox_depth",
        "gauge",
        "Envelopes waiting for delivery, by peer.",
        depths,
    );
    let now = time::OffsetDateTime::now_utc();
    let mut ages = Vec::with_capacity(peers.len());
    for p in peers {
        let head = s.outbox_head(*p, 1).map_err(reading("outbox head"))?;
        let age = head
            .first()
            .map(|i| (now - i.created_at).as_seconds_f64())
            .unwrap_or(0.0)
            .max(0.0);
        ages.push((format!("peer=\"{p}\""), age));
    }
    labelled(
        out,
        "trm_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest envelope waiting for a peer (0 when none waits).",
        ages,
    );
    Ok(())
}

/// The work queue, per kind: tasks open, and past due.
fn task_gauges(out: &mut String, s: &Store) -> Result<(), ReadError> {
    use trm_core::tasks::TaskKind;
    let mut open = Vec::new();
    for kind in TaskKind::ALL {
        let n = s.open_tasks(kind).map_err(reading("open tasks"))?;
        open.push((format!("kind=\"{}\"", kind.as_str()), n));
    }
    labelled(
        out,
        "trm_tasks_open",
        "gauge",
        "Tasks waiting for an answer on this node.",
        open,
    );
    let overdue = s
        .overdue_tasks(time::OffsetDateTime::now_utc())
        .map_err(reading("overdue tasks"))?;
    labelled(
        out,
        "trm_tasks_overdue",
        "gauge",
        "Tasks past their due time.",
        TaskKind::ALL.iter().map(|k| {
            let n = overdue.iter().find(|(o, _)| o == k).map_or(0, |(_, n)| *n);
            (format!("kind=\"{}\"", k.as_str()), n)
        }),
    );
    Ok(())
}

/// What the store counts: dead letters and the length of the audit chain.
fn store_gauges(out: &mut String, s: &Store) -> Result<(), ReadError> {
    let dead_letters = s
        .dead_letter_count()
        .map_err(reading("dead letter count"))?;
    single(
        out,
        "trm_dead_letters",
        "gauge",
        "Envelopes refused for good by a peer.",
        dead_letters,
    );
    let audit_entries = s.audit_len().map_err(reading("audit chain length"))?;
    single(
        out,
        "trm_audit_entries",
        "gauge",
        "Entries in the audit chain.",
        audit_entries,
    );
    Ok(())
}

/// The node's state: its peers, whether it delivers, whether its store takes writes.
fn node_gauges(out: &mut String, ctx: &Ctx, peers: usize) {
    let s = &ctx.store;
    single(out, "trm_peers", "gauge", "Peers in the directory.", peers);
    single(
        out,
        "trm_delivery_active",
        "gauge",
        "1 when this process runs the delivery workers (it holds the delivery lease among the node's replicas).",
        u8::from(ctx.delivery.is_active()),
    );
    single(
        out,
        "trm_storage_failed",
        "gauge",
        "1 once a durable point failed (the node takes no writes until restarted).",
        u8::from(s.failure().is_some()),
    );
    single(
        out,
        "trm_storage_refusing_writes",
        "gauge",
        "1 while the store cannot take a write (failed durable point, data folder full or read-only).",
        u8::from(s.write_fault().is_some()),
    );
}

/// The running totals of the federation traffic and of the requests the gates refused.
fn delivery_counters(out: &mut String, c: &Counters, gates: &GateCounters) {
    for (name, help, value) in [
        (
            "trm_envelopes_accepted_total",
            "Inbound envelopes accepted.",
            Counters::get(&c.accepted),
        ),
        (
            "trm_envelopes_rejected_total",
            "Inbound envelopes answered REJECTED.",
            Counters::get(&c.rejected),
        ),
        (
            "trm_envelopes_duplicate_total",
            "Inbound duplicates answered with the original receipt.",
            Counters::get(&c.duplicates),
        ),
        (
            "trm_batches_received_total",
            "Inbound DeliverBatch calls answered.",
            Counters::get(&c.batches),
        ),
        (
            "trm_deliveries_total",
            "Outbound envelopes with a verified receipt.",
            Counters::get(&c.delivered),
        ),
        (
            "trm_delivery_failures_total",
            "Failed outbound attempts (retried).",
            Counters::get(&c.attempts_failed),
        ),
        (
            "trm_dead_lettered_total",
            "Outbound envelopes moved to the dead letters.",
            Counters::get(&c.dead_lettered),
        ),
        (
            "trm_requests_rate_limited_total",
            "Requests refused for going over their caller's rate (RESOURCE_EXHAUSTED).",
            gates.rate_limited.load(Ordering::Relaxed),
        ),
        (
            "trm_requests_revoked_total",
            "Requests refused because their client certificate is revoked.",
            gates.revoked.load(Ordering::Relaxed),
        ),
    ] {
        single(out, name, "counter", help, value);
    }
}

/// The totals kept by label: inbound refusals by reason, gRPC requests by method and code.
fn labelled_counters(out: &mut String, c: &Counters, requests: &Requests) {
    labelled(
        out,
        "trm_envelopes_refused_total",
        "counter",
        "Inbound envelopes refused before any effect, by reason.",
        c.refusals()
            .into_iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), n)),
    );
    labelled(
        out,
        "trm_grpc_requests_total",
        "counter",
        "gRPC requests answered, by method and status code.",
        requests
            .snapshot()
            .into_iter()
            .map(|((method, code), n)| (format!("method=\"{method}\",code=\"{code}\""), n)),
    );
}

/// How long deliveries and durable points take.
fn latency_histograms(out: &mut String, ctx: &Ctx) {
    family(
        out,
        "trm_delivery_latency_seconds",
        "histogram",
        "From an envelope's queueing to the peer's verified receipt.",
    );
    ctx.counters
        .delivery_latency
        .render(out, "trm_delivery_latency_seconds", "");
    family(
        out,
        "trm_storage_sync_seconds",
        "histogram",
        "How long each durable point (commit and sync of every file written) takes.",
    );
    ctx.store
        .sync_latency()
        .render(out, "trm_storage_sync_seconds", "");
}

/// When the node's certificates expire and when its key-encryption key was made.
fn key_dates(out: &mut String, ctx: &Ctx) {
    labelled(
        out,
        "trm_certificate_expiry_timestamp_seconds",
        "gauge",
        "When each of the node's certificates expires (Unix time).",
        ctx.expiries.iter().filter_map(|(name, at)| {
            at.map(|at| {
                (
                    format!("certificate=\"{}\"", name.replace(' ', "_")),
                    at.unix_timestamp(),
                )
            })
        }),
    );
    single(
        out,
        "trm_key_encryption_key_created_timestamp_seconds",
        "gauge",
        "When the current key-encryption key was made (it rotates on schedule).",
        ctx.store.keys().epochs().1.unix_timestamp(),
    );
}

/// Serves the metrics page; a store read that fails is logged (naming the read) and
/// answered 500, so that a scraper sees a fault rather than figures read as zero.
async fn metrics(
    State((ctx, gates, requests)): State<(Ctx, GateCounters, Arc<Requests>)>,
) -> (StatusCode, String) {
    match render(&ctx, &gates, &requests) {
        Ok(page) => (StatusCode::OK, page),
        Err(e) => {
            error!(read = e.what, error = %e, "cannot read the store for the metrics page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the {}\n", e.what),
            )
        }
    }
}
