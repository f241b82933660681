//! The local admin endpoint (loopback by default): `/live`, `/ready`, `/metrics`,
//! `POST /reload`, `GET /bans`. It is an operator's tool, not part of the public API surface,
//! which is why it refuses non-loopback addresses unless the config says otherwise.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::kernel::{Bans, PinLayout};
use crate::metrics::Metrics;
use crate::proxy::respond::{Body, full};

/// What a reload request gets back: `Ok` with a summary, or the errors that refused it.
pub type ReloadReply = Result<String, String>;

/// Shared with the daemon.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set by the daemon once rules are loaded and listeners bound; cleared while stopping.
    pub ready: AtomicBool,
    /// Further readiness conditions (token providers with their keys loaded).
    pub probe: std::sync::RwLock<Option<Box<dyn Fn() -> bool + Send + Sync>>>,
    pub reload: mpsc::Sender<oneshot::Sender<ReloadReply>>,
    pub pins: Option<PinLayout>,
    /// The abuse-ban engine, whose userspace bans `GET /bans` lists and `DELETE /bans` lifts.
    pub abuse: Option<Arc<crate::abuse::Abuse>>,
}

/// Serves the admin endpoint until `stop` turns true.
pub async fn serve(tcp: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            a = tcp.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n"),
        (&Method::GET, "/ready") => {
            let probe_ok = state
                .probe
                .read()
                .ok()
                .is_none_or(|p| p.as_ref().is_none_or(|f| f()));
            if state.ready.load(Ordering::Relaxed) && probe_ok {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::POST, "/reload") => {
            let (tx, rx) = oneshot::channel();
            let reply = if state.reload.send(tx).await.is_ok() {
                rx.await
                    .unwrap_or_else(|_| Err("the daemon is stopping".into()))
            } else {
                Err("the daemon is stopping".into())
            };
            match reply {
                Ok(summary) => text(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({"result": "reloaded", "summary": summary}).to_string(),
                ),
                Err(errors) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "application/json",
                    serde_json::json!({"result": "refused", "errors": errors}).to_string(),
                ),
            }
        }
        (&Method::GET, "/bans") => bans(&state),
        (&Method::DELETE, "/bans") => unban(&state, req.uri().query()),
        (&Method::GET, "/limits") => limits(&state, req.uri().query()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(resp)
}

/// The kernel's live bans (`"enforced": "kernel"`) and the userspace ones (`"userspace"`), as
/// one JSON array.
fn bans(state: &AdminState) -> Response<Body> {
    let mut items = Vec::new();
    if let Some(pins) = &state.pins {
        match Bans::open(pins).and_then(|b| b.list()) {
            Ok(bans) => items.extend(bans.iter().map(|b| {
                let mut j = b.to_json();
                j["enforced"] = "kernel".into();
                j
            })),
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                );
            }
        }
    }
    if let Some(abuse) = &state.abuse {
        let now = std::time::Instant::now();
        items.extend(abuse.userspace_bans().iter().map(|b| b.to_json(now)));
    }
    text(
        StatusCode::OK,
        "application/json",
        serde_json::Value::Array(items).to_string(),
    )
}

/// `DELETE /bans?addr=<address>`: lifts a userspace ban (`portcullis ban rm` lifts kernel ones).
/// `GET /limits?key=<value>`: every rate limit and quota that applies to an API key id (or
/// another key part: a client prefix, a claim value), with what is left and when it resets.
fn limits(state: &AdminState, query: Option<&str>) -> Response<Body> {
    let key = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))
        .and_then(crate::identity::encoding::form_decode)
        .filter(|k| !k.is_empty() && k.len() <= 256);
    let Some(key) = key else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected ?key=<API key id or other key value>\n",
        );
    };
    text(
        StatusCode::OK,
        "application/json",
        state.metrics.limits.show(&key).to_string(),
    )
}

fn unban(state: &AdminState, query: Option<&str>) -> Response<Body> {
    let addr = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("addr=")))
        .and_then(|a| a.parse::<std::net::IpAddr>().ok());
    let Some(addr) = addr else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected ?addr=<IP address>\n",
        );
    };
    match &state.abuse {
        Some(abuse) if abuse.unban(addr) => text(StatusCode::OK, "text/plain", "unbanned\n"),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "no userspace ban\n"),
    }
}
