//! The local admin endpoint (loopback by default): `/live`, `/ready`, `/metrics`,
//! `POST /reload`, `GET|POST|DELETE /bans`, `GET /limits`. It is an operator's tool, not part
//! of the public API surface, which is why it refuses non-loopback addresses unless the config
//! says otherwise.
//!
//! `POST /bans` takes `{"prefix": "198.51.100.0/24", "ttl_secs": 600, "reason": "manual"}`
//! (only `prefix` required; no `ttl_secs`: until removed) and bans in the kernel map when the
//! kernel layer is on, else in userspace, and publishes the ban to the cluster when `[cluster]`
//! is configured. `DELETE /bans?prefix=<prefix>` (or `?addr=`) lifts it everywhere.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::abuse::{BanError, PrefixBan, PrefixBanSource};
use crate::daemon::SharedCluster;
use crate::kernel::{BanReason, Bans, KernelError, PinLayout};
use crate::metrics::Metrics;
use crate::proxy::respond::{Body, full};
use crate::rules::Prefix;

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
    /// The abuse-ban engine, which holds operators' bans too: `GET /bans` lists its userspace
    /// bans, `POST /bans` bans through it, `DELETE /bans` lifts through it.
    pub abuse: Option<Arc<crate::abuse::Abuse>>,
    /// The cluster store while `[cluster]` is configured: operators' bans and unbans are
    /// published through it so every gateway applies them.
    pub cluster: SharedCluster,
}

/// The largest `POST /bans` body read; a ban request is a few dozen bytes.
const MAX_BAN_BODY: usize = 4096;
/// The longest time to live a ban request may ask for: ten years, "until removed" in practice
/// (the cluster store needs an expiry; see [`CLUSTER_UNTIL_REMOVED`]).
const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;
/// What a ban without a time to live is published with: the cluster store keeps every ban
/// with an expiry, so "until removed" becomes ten years there.
const CLUSTER_UNTIL_REMOVED: Duration = Duration::from_secs(MAX_TTL_SECS);

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
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = match (&method, path.as_str()) {
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
        (&Method::POST, "/bans") => match read_body(req).await {
            Ok(body) => add_ban(&state, &body).await,
            Err(resp) => resp,
        },
        (&Method::DELETE, "/bans") => unban(&state, req.uri().query()).await,
        (&Method::GET, "/limits") => limits(&state, req.uri().query()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(resp)
}

/// The request body, at most [`MAX_BAN_BODY`] bytes; otherwise the answer to send.
async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, Response<Body>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            format!("the body is larger than {MAX_BAN_BODY} bytes\n"),
        )
    };
    // An announced length over the limit is refused before any of it is read.
    if hyper::body::Body::size_hint(req.body()).lower() > MAX_BAN_BODY as u64 {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BAN_BODY);
    match tokio::time::timeout(Duration::from_secs(10), limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "the body could not be read\n",
        )),
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "text/plain",
            "the body did not arrive in time\n",
        )),
    }
}

/// `POST /bans`, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    prefix: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

fn bad_request(message: impl std::fmt::Display) -> Response<Body> {
    text(
        StatusCode::BAD_REQUEST,
        "text/plain",
        format!("{message}\n"),
    )
}

/// `POST /bans`: an operator's ban of an address or network, here and, with `[cluster]`, on
/// every gateway. Refused (409) for an allow-listed or trusted address or a network that
/// touches one, as the abuse detector refuses them.
async fn add_ban(state: &AdminState, body: &[u8]) -> Response<Body> {
    let request: BanRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format_args!(
                "expected {{\"prefix\": \"<address or CIDR>\", \"ttl_secs\": <seconds, optional>, \"reason\": \"<reason, optional>\"}}: {e}"
            ));
        }
    };
    let prefix = match request.prefix.parse::<Prefix>() {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let ttl = match request.ttl_secs {
        None => None,
        Some(0) => return bad_request("`ttl_secs` must be more than zero"),
        Some(s) if s > MAX_TTL_SECS => {
            return bad_request(format_args!(
                "`ttl_secs` must be at most {MAX_TTL_SECS} (ten years); leave it out for a ban until removed"
            ));
        }
        Some(s) => Some(Duration::from_secs(s)),
    };
    let reason = match request.reason.as_deref() {
        None => BanReason::Manual,
        Some(name) => match BanReason::from_name(name) {
            Some(r) => r,
            None => {
                let names: Vec<&str> = BanReason::ALL.iter().map(|r| r.name()).collect();
                return bad_request(format_args!(
                    "unknown reason `{name}`; expected one of: {}",
                    names.join(", ")
                ));
            }
        },
    };
    let Some(abuse) = &state.abuse else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "this gateway holds no ban engine\n",
        );
    };
    let ban = PrefixBan {
        prefix,
        reason,
        ttl,
        kernel_bannable: true,
    };
    let enforcement = match abuse.ban_prefix(&ban, PrefixBanSource::Manual) {
        Ok(e) => e,
        Err(e @ BanError::Protected { .. }) => {
            return text(StatusCode::CONFLICT, "text/plain", format!("{e}\n"));
        }
        Err(e @ (BanError::Everything(_) | BanError::ZeroTtl)) => return bad_request(e),
        Err(BanError::Kernel(e @ KernelError::Ban(_))) => {
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                "text/plain",
                format!("{e}\n"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            );
        }
    };
    let cluster_store = state.cluster.read().ok().and_then(|c| c.clone());
    let cluster = match cluster_store {
        None => "off".to_owned(),
        Some(store) => {
            let shared = crate::cluster::NewBan {
                prefix,
                reason,
                ttl: ttl.unwrap_or(CLUSTER_UNTIL_REMOVED),
                evidence: "manual ban through the admin endpoint".into(),
            };
            match store.publish_ban(&shared).await {
                Ok(_) => "published".to_owned(),
                Err(e) => {
                    store.metrics().fallback(e.feature.name(), e.mode.name());
                    warn!(%prefix, error = %e, "manual ban not shared with the cluster; enforced here only");
                    format!("not shared: {e}")
                }
            }
        }
    };
    text(
        StatusCode::OK,
        "application/json",
        serde_json::json!({
            "result": "banned",
            "prefix": prefix.to_string(),
            "reason": reason.name(),
            "ttl_secs": ttl.map(|t| t.as_secs()),
            "enforced": match enforcement {
                crate::abuse::Enforcement::Userspace => "userspace",
                crate::abuse::Enforcement::Kernel => "kernel",
                crate::abuse::Enforcement::Both => "kernel+userspace",
            },
            "cluster": cluster,
        })
        .to_string(),
    )
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

/// `DELETE /bans?prefix=<prefix>` (or `?addr=<address>`): lifts the ban of exactly that
/// prefix from the kernel map, the userspace set and, with `[cluster]`, every gateway.
async fn unban(state: &AdminState, query: Option<&str>) -> Response<Body> {
    let value = query.and_then(|q| {
        q.split('&').find_map(|kv| {
            kv.strip_prefix("prefix=")
                .or_else(|| kv.strip_prefix("addr="))
        })
    });
    let decoded = value.and_then(crate::identity::encoding::form_decode);
    let Some(prefix) = decoded.as_deref().and_then(|v| v.parse::<Prefix>().ok()) else {
        return bad_request("expected ?prefix=<IP address or CIDR prefix>");
    };
    let lifted = match &state.abuse {
        Some(abuse) => match abuse.lift(prefix) {
            Ok(l) => l,
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                );
            }
        },
        None => Default::default(),
    };
    let cluster_store = state.cluster.read().ok().and_then(|c| c.clone());
    let (cluster, in_cluster) = match cluster_store {
        None => ("off".to_owned(), false),
        Some(store) => match store.unban(&prefix).await {
            Ok(true) => ("removed".to_owned(), true),
            Ok(false) => ("none".to_owned(), false),
            Err(e) => {
                store.metrics().fallback(e.feature.name(), e.mode.name());
                warn!(%prefix, error = %e, "unban not shared with the cluster; lifted here only");
                (format!("not shared: {e}"), false)
            }
        },
    };
    let status = if lifted.kernel || lifted.userspace || in_cluster {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    text(
        status,
        "application/json",
        serde_json::json!({
            "result": if status == StatusCode::OK { "unbanned" } else { "not banned" },
            "prefix": prefix.to_string(),
            "kernel": lifted.kernel,
            "userspace": lifted.userspace,
            "cluster": cluster,
        })
        .to_string(),
    )
}
