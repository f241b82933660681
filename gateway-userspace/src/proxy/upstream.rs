//! Upstream phase: backend pools (the fleet behind a route). Owns endpoint selection (round
//! robin, least outstanding, power of two choices), active health checks, passive ejection on
//! connect errors and 5xx, and the connections to backends (HTTP/1.1 or h2, plain or TLS with
//! CA verification). It does not decide whether a request may pass; earlier phases did.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{info, warn};

use super::respond::{Body, BoxError};
use crate::config::{
    Balance, Endpoint, HealthCheck, PassiveEjection, PoolConfig, UpstreamProtocol,
};

/// Milliseconds since the process started: a compact monotonic clock for atomics.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One backend endpoint and what is known about it.
#[derive(Debug)]
pub struct EndpointState {
    pub endpoint: Endpoint,
    outstanding: AtomicUsize,
    /// Result of active health checks (true until a check says otherwise).
    healthy: AtomicBool,
    /// Passive ejection: no traffic until this time (ms, see `now_ms`).
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
}

impl EndpointState {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            outstanding: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
        }
    }

    /// Receives traffic: healthy by active checks and not passively ejected.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight on an endpoint until dropped (with the response body).
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    fn new(ep: Arc<EndpointState>) -> Self {
        ep.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an exchange with an endpoint went, for passive ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connecting failed (refused, unreachable, timed out, TLS failed).
    ConnectError,
    /// The endpoint answered 5xx.
    ServerError,
}

/// A pool's shared state: endpoints and their health. Routes using the pool share it.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub endpoints: Vec<Arc<EndpointState>>,
    balance: Balance,
    passive: PassiveEjection,
    health: Option<HealthCheck>,
    next: AtomicUsize,
    /// Connection settings for health checks.
    connector: Connector,
    protocol: UpstreamProtocol,
    idle_timeout: Duration,
    /// The gateway's credentials for these backends (`[pools.auth]`).
    auth: Option<super::backend_auth::BackendAuth>,
}

impl Pool {
    pub fn new(cfg: &PoolConfig) -> Self {
        let check_timeout = cfg
            .health
            .as_ref()
            .map_or(Duration::from_secs(2), |h| h.timeout);
        Self {
            name: cfg.name.clone(),
            endpoints: cfg
                .endpoints
                .iter()
                .cloned()
                .map(|e| Arc::new(EndpointState::new(e)))
                .collect(),
            balance: cfg.balance,
            passive: cfg.passive,
            health: cfg.health.clone(),
            next: AtomicUsize::new(0),
            connector: Connector::new(cfg, check_timeout),
            protocol: cfg.protocol,
            idle_timeout: cfg.idle_timeout,
            auth: cfg
                .auth
                .as_ref()
                .map(|a| super::backend_auth::BackendAuth::start(a, &cfg.name)),
        }
    }

    /// How requests to this pool authenticate the gateway, if they do.
    pub fn auth(&self) -> Option<&super::backend_auth::BackendAuth> {
        self.auth.as_ref()
    }

    /// Whether the pool speaks HTTP/2 to its backends.
    pub fn is_h2(&self) -> bool {
        self.protocol == UpstreamProtocol::H2
    }

    /// `https` when the pool speaks TLS to its backends.
    pub fn scheme(&self) -> &'static str {
        if self.connector.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A client for this pool with the given connect timeout (one per route, so each route's
    /// connect timeout applies; endpoint state stays shared).
    pub fn client(&self, connect_timeout: Duration) -> Client<Connector, Body> {
        let mut connector = self.connector.clone();
        connector.connect_timeout = connect_timeout;
        build_client(connector, self.protocol, self.idle_timeout)
    }

    /// Picks an endpoint among the available ones, or `None` when none is.
    pub fn pick(&self, exclude: Option<&Arc<EndpointState>>) -> Option<Arc<EndpointState>> {
        let candidates: Vec<&Arc<EndpointState>> = self
            .endpoints
            .iter()
            .filter(|e| e.available() && !exclude.is_some_and(|x| Arc::ptr_eq(x, e)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.balance {
            Balance::RoundRobin => candidates[n % candidates.len()],
            Balance::LeastOutstanding => {
                // Ties go round robin, so equal endpoints share the load.
                let start = n % candidates.len();
                (0..candidates.len())
                    .map(|i| candidates[(start + i) % candidates.len()])
                    .min_by_key(|e| e.outstanding())
                    .unwrap_or(candidates[0])
            }
            Balance::PowerOfTwo => {
                let a = candidates[random_below(candidates.len())];
                let b = candidates[random_below(candidates.len())];
                if b.outstanding() < a.outstanding() {
                    b
                } else {
                    a
                }
            }
        };
        Some(chosen.clone())
    }

    /// Marks a request in flight on `ep`.
    pub fn begin(&self, ep: &Arc<EndpointState>) -> InFlight {
        InFlight::new(ep.clone())
    }

    /// Records an exchange's outcome for passive ejection.
    pub fn report(&self, ep: &EndpointState, outcome: Outcome) {
        if outcome == Outcome::Success {
            ep.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let threshold = self.passive.consecutive_failures;
        let failures = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && failures >= threshold {
            ep.consecutive_failures.store(0, Ordering::Relaxed);
            ep.ejected_until.store(
                now_ms() + self.passive.ejection_time.as_millis() as u64,
                Ordering::Relaxed,
            );
            warn!(pool = %self.name, endpoint = %ep.endpoint.authority, ?outcome, failures, "endpoint ejected");
        }
    }

    /// Runs active health checks until `stop` turns true. One task per pool.
    pub fn spawn_health_checks(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(check) = self.health.clone() else {
            return;
        };
        let pool = self.clone();
        tokio::spawn(async move {
            let client = build_client(pool.connector.clone(), pool.protocol, pool.idle_timeout);
            let mut tick = tokio::time::interval(check.interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                for ep in &pool.endpoints {
                    let ok = probe(&client, pool.scheme(), ep, &check).await;
                    pool.record_check(ep, ok, &check);
                }
            }
        });
    }

    fn record_check(&self, ep: &EndpointState, ok: bool, check: &HealthCheck) {
        if ok {
            ep.check_failures.store(0, Ordering::Relaxed);
            let n = ep.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= check.healthy_threshold && !ep.healthy.swap(true, Ordering::Relaxed) {
                info!(pool = %self.name, endpoint = %ep.endpoint.authority, "endpoint healthy again");
            }
        } else {
            ep.check_successes.store(0, Ordering::Relaxed);
            let n = ep.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= check.unhealthy_threshold && ep.healthy.swap(false, Ordering::Relaxed) {
                warn!(pool = %self.name, endpoint = %ep.endpoint.authority, "endpoint unhealthy");
            }
        }
    }
}

async fn probe(
    client: &Client<Connector, Body>,
    scheme: &str,
    ep: &EndpointState,
    check: &HealthCheck,
) -> bool {
    let uri = format!("{scheme}://{}{}", ep.endpoint.addr, check.path);
    let Ok(req) = Request::get(uri)
        .header(http::header::HOST, ep.endpoint.authority.as_str())
        .header(http::header::USER_AGENT, "portcullis-health-check")
        .body(super::respond::empty())
    else {
        return false;
    };
    match tokio::time::timeout(check.timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp.status().is_success() || resp.status().is_redirection(),
        _ => false,
    }
}

fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

fn build_client(
    connector: Connector,
    protocol: UpstreamProtocol,
    idle: Duration,
) -> Client<Connector, Body> {
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle);
    if protocol == UpstreamProtocol::H2 {
        b.http2_only(true);
    }
    b.build(connector)
}

// ---------------------------------------------------------------------------------------------
// Connector: TCP with a connect timeout, then TLS with verification when the pool asks for it.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Connector {
    connect_timeout: Duration,
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    fn new(cfg: &PoolConfig, connect_timeout: Duration) -> Self {
        let tls = cfg.tls.as_ref().map(|t| {
            let alpn: &[&[u8]] = match cfg.protocol {
                UpstreamProtocol::H2 => &[b"h2"],
                UpstreamProtocol::Http1 => &[b"http/1.1"],
            };
            let config = super::tls::upstream_client_config(Some(t), alpn);
            let name = t
                .server_name
                .as_ref()
                .and_then(|n| ServerName::try_from(n.clone()).ok());
            (TlsConnector::from(config), name)
        });
        Self {
            connect_timeout,
            tls,
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("upstream URI without host")?
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if this.tls.is_some() { 443 } else { 80 });
            // Endpoints are resolved when the config is loaded; the URI carries the address.
            let addr: SocketAddr = (host.parse::<std::net::IpAddr>()?, port).into();
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            tcp.set_nodelay(true)?;
            match this.tls {
                None => Ok(Conn::Plain(TokioIo::new(tcp))),
                Some((connector, name)) => {
                    let name = match name {
                        Some(n) => n,
                        None => ServerName::from(addr.ip()),
                    };
                    let tls =
                        tokio::time::timeout(this.connect_timeout, connector.connect(name, tcp))
                            .await
                            .map_err(|_| {
                                io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                            })??;
                    Ok(Conn::Tls(Box::new(TokioIo::new(tls))))
                }
            }
        })
    }
}

/// A connection to a backend.
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(_) => Connected::new(),
            Self::Tls(s) => {
                let h2 = s.inner().get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Sends `req` with `client`; `Err` carries whether connecting failed.
pub async fn send(
    client: &Client<Connector, Body>,
    req: Request<Body>,
) -> Result<http::Response<Incoming>, SendError> {
    client.request(req).await.map_err(|e| {
        if e.is_connect() {
            SendError::Connect(e.to_string())
        } else {
            SendError::Other(e.into())
        }
    })
}

/// Why a request to a backend failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: safe to retry an idempotent request elsewhere.
    Connect(String),
    /// The request may have reached the backend.
    Other(BoxError),
}
