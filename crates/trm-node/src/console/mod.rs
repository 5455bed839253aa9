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

/// The labels of the browser's language and its certificate chain, for a handler; a
/// browser without a usable certificate gets the page that says how to get one.
macro_rules! browser {
    ($ctx:expr, $peer:expr, $headers:expr) => {{
        let l = $crate::console::pages::labels(&$headers);
        match $crate::console::pages::caller(&$ctx, &$peer) {
            Some(certs) => (l, certs),
            None => return $crate::console::pages::no_certificate(l),
        }
    }};
}

mod cases;
mod pages;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{connect_info::Connected, Request},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    serve::IncomingStream,
    Router,
};
use rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::ctx::Ctx;

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

/// The console's listener: connections accepted by the node's own machinery
/// ([`crate::listen::incoming`]: the connection cap, handshake deadlines, places per
/// certificate, and per address), with the certificate each browser presented.
pub struct TlsListener {
    incoming: crate::listen::Incoming,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves the connections of `incoming`, accepted on `local`.
    pub fn new(incoming: crate::listen::Incoming, local: SocketAddr) -> Self {
        Self { incoming, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<crate::listen::Conn>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(tls)) => {
                    let remote = tonic::transport::server::Connected::connect_info(tls.get_ref().0)
                        .remote_addr()
                        .unwrap_or(self.local);
                    let certs = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|d| d.clone().into_owned()).collect()));
                    return (tls, Peer { remote, certs });
                }
                Some(Err(e)) => debug!(error = %e, "console connection failed"),
                // The accepting task ends only when the node stops: wait for shutdown.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            remote: self.local,
            certs: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Returns the console's routes over `ctx`.
pub fn router(ctx: Ctx) -> Router {
    pages::routes(ctx)
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
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
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Refuses a state change another site started: a POST must come from this console's own
/// pages (Fetch metadata `same-origin`; a browser without Fetch metadata must send an
/// `Origin` naming this host).
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() != Method::POST || same_origin(&request) {
        return next.run(request).await;
    }
    let l = pages::labels(request.headers());
    let body = maud::html! { p role="alert" { (l.cross_site) } };
    (StatusCode::FORBIDDEN, pages::page(l, l.refused, body)).into_response()
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
