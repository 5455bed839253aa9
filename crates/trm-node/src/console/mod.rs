//! The browser console (`[listen] console`): server-rendered HTML over HTTPS for the people
//! who answer requests and have no system of their own. A browser presents a client
//! certificate of the node's client CA, as a gRPC client does; every page and form calls
//! the same services in process, with that certificate
//! ([`ClientCertificates`](crate::authz::ClientCertificates)), so authorization, audit and
//! idempotency are the services' own: there is no second path to the store.
//!
//! Made for a hostile browser world: no script and no inline style (a
//! Content-Security-Policy that forbids them), `Cache-Control: no-store` on every answer,
//! every state change a POST checked against cross-site requests (Fetch metadata, else
//! `Origin`), ids only in URLs. A browser without a certificate gets a page that says how
//! to get one.

mod cases;
mod pages;

use std::{net::SocketAddr, sync::Arc};

use std::time::Duration;

use axum::{
    extract::Request,
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tracing::debug;

use crate::{ctx::Ctx, gate::Gate};

/// What every answer of the console carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Who is on the other end of a console connection: the address and the client
/// certificate chain the browser presented, if any.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Serves `router` on the connections of `incoming` (accepted by the node's own machinery,
/// [`crate::listen::incoming`]: the connection cap, handshake deadlines, places per
/// certificate and per address), each request carrying the [`Peer`] of its connection,
/// until `stopped`; then lets the requests under way finish. A browser has
/// `header_deadline` to send a request's headers, as it had to finish its handshake: a
/// connection that dawdles is closed, so that no one holds the console's places by
/// sending slowly.
pub async fn serve(
    (mut incoming, local): (crate::listen::Incoming, SocketAddr),
    router: Router,
    header_deadline: Duration,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), std::convert::Infallible> {
    use tokio_stream::StreamExt;
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = stopped.clone();
    loop {
        let tls = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(tls)) => tls,
                Some(Err(e)) => {
                    debug!(error = %e, "console connection failed");
                    continue;
                }
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let remote = tonic::transport::server::Connected::connect_info(tls.get_ref().0)
            .remote_addr()
            .unwrap_or(local);
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| Arc::new(c.iter().map(|d| d.clone().into_owned()).collect()));
        let peer = Peer { remote, certs };
        let app = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceExt::map_request(app, |r: http::Request<hyper::body::Incoming>| {
                r.map(axum::body::Body::new)
            }),
        );
        let mut stop = stopped.clone();
        connections.spawn(async move {
            // HTTP/1.1 only, as the handshake's ALPN says: an HTTP/2 preface (or nothing at
            // all) meets the same header deadline instead of a protocol sniff without one.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_deadline);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        debug!(error = %e, "console connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                debug!(error = %e, "console connection ended");
            }
        });
        // Forget the connections that ended.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Returns the console's routes over `ctx`, each request of a browser with a certificate
/// counted by `gate` (the services port's: one rate per certificate across both).
pub fn router(ctx: Ctx, gate: Arc<Gate>) -> Router {
    // The layer added last runs first: what another site started is refused before the
    // certificate's rate is spent on it.
    pages::routes(ctx.clone())
        .layer(axum::middleware::from_fn_with_state((ctx, gate), admit))
        .layer(axum::middleware::from_fn(same_origin_only))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
}

/// Lets in a browser with a usable certificate within its rate, before any page reads the
/// request, and leaves what it found for the page's handler ([`pages::Browser`]): one
/// without gets the page that says how to get one (the stylesheet aside), one
/// over its certificate's rate `429 Too Many Requests` (a page that says to wait, and
/// `Retry-After`).
async fn admit(
    axum::extract::State((ctx, gate)): axum::extract::State<(Ctx, Arc<Gate>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let admitted = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .and_then(|c| pages::admitted(&ctx, &c.0));
    let l = pages::labels(request.headers());
    let Some(admitted) = admitted else {
        if request.uri().path() == "/style.css" {
            return next.run(request).await;
        }
        return pages::no_certificate(l);
    };
    let rate = admitted.leaf().map(|leaf| gate.check_leaf(leaf.as_ref()));
    request.extensions_mut().insert(admitted);
    match rate {
        Some(Err(refused)) if refused.code() == tonic::Code::ResourceExhausted => {
            let body = maud::html! { p role="alert" { (l.too_many) } };
            let mut page = (
                StatusCode::TOO_MANY_REQUESTS,
                pages::page(l, l.refused, body),
            )
                .into_response();
            page.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            page
        }
        _ => next.run(request).await,
    }
}

/// Sets the headers every answer carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Refuses what another site started: a POST must come from this console's own pages
/// (Fetch metadata `same-origin`; a browser without Fetch metadata must send an `Origin`
/// naming this host); any other request another site started (a link, an image, a frame)
/// may only open the front page, so that no site can make a person's browser read a case
/// (and audit the read in their name) or spend their request rate.
async fn same_origin_only(request: Request, next: Next) -> Response {
    let allowed = match *request.method() {
        Method::POST => same_origin(&request),
        _ => started_here(&request),
    };
    if allowed {
        return next.run(request).await;
    }
    let l = pages::labels(request.headers());
    let body = maud::html! { p role="alert" { (l.cross_site) } };
    (StatusCode::FORBIDDEN, pages::page(l, l.refused, body)).into_response()
}

/// Whether a request other than a POST was started by this console's pages or by the
/// person (typed, bookmarked: Fetch metadata `none`), or is another site's link to the
/// front page. A browser without Fetch metadata is taken at its word.
fn started_here(request: &Request) -> bool {
    let headers = request.headers();
    let Some(site) = headers.get("sec-fetch-site") else {
        return true;
    };
    if site == "same-origin" || site == "none" {
        return true;
    }
    let navigates = headers
        .get("sec-fetch-mode")
        .is_some_and(|m| m == "navigate");
    navigates && request.uri().path() == "/"
}

fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
    else {
        return false;
    };
    match (origin.to_str(), host.to_str()) {
        (Ok(origin), Ok(host)) => origin == format!("https://{host}"),
        _ => false,
    }
}
