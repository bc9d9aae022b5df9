//! The agent's HTTP endpoint (hyper, HTTP/1.1 only):
//!
//! | path | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /healthz` | 200 while the engine loop ticks, else 503 with the reason |
//! | `GET /readyz` | 200 once the table is programmed from synced caches and syncs succeed, else 503 with the reason |
//! | `GET /loglevel` | the current log filter |
//! | `PUT /loglevel` | sets the log filter (body: e.g. `debug` or `info,nftpol::agent=trace`); only from loopback, since the port is usually open on the node's network |
//!
//! The port may be 0: the bound address is returned by [`HttpServer::local_addr`] (the agent
//! logs it and writes it to `<state-dir>/metrics-addr`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::metrics::Metrics;
use super::telemetry::LogControl;

#[derive(Debug, thiserror::Error)]
#[error("binding the metrics address {addr}: {source}")]
pub struct HttpError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub log: Option<LogControl>,
}

pub struct HttpServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr) -> Result<HttpServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| HttpError { addr, source })?;
        Ok(HttpServer { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel`.
    pub async fn serve(self, state: HttpState, cancel: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics accept failed");
                        continue;
                    }
                },
            };
            let state = state.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, peer, &state).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics connection failed");
                    },
                    _ = cancel.cancelled() => {}
                }
            });
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: &HttpState,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/healthz") => match state.health.live() {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        (&Method::GET, "/readyz") => match state.health.live().and(state.health.ready()) {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        (&Method::GET, "/loglevel") => match &state.log {
            Some(log) => text(StatusCode::OK, format!("{}\n", log.current())),
            None => text(StatusCode::NOT_FOUND, "log level not adjustable\n"),
        },
        (&Method::PUT | &Method::POST, "/loglevel") => {
            if !peer.ip().is_loopback() {
                return text(StatusCode::FORBIDDEN, "only from loopback\n");
            }
            let Some(log) = &state.log else {
                return text(StatusCode::NOT_FOUND, "log level not adjustable\n");
            };
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "body too large\n"),
            };
            let filter = String::from_utf8_lossy(&body).trim().to_string();
            match log.set(&filter) {
                Ok(()) => {
                    tracing::info!(filter, "log filter changed");
                    text(StatusCode::OK, format!("{filter}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
