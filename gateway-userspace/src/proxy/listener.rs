//! Connection phase: accepts on one bound socket, enforces the connection limit, checks the
//! peer with the userspace backstop before anything is read, reads a PROXY header from
//! trusted load balancers only (and checks the address it announces), completes the TLS
//! handshake within its timeout, then hands the connection to hyper (HTTP/1.1 or h2 by
//! ALPN). A slow client can hold a socket no longer than the handshake and header timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::backstop::Check;
use super::service::{self, ConnInfo, ProxyState};
use crate::config::{ListenerConfig, ListenerKind};
use crate::metrics::{DecisionLabels, ListenerLabels, Metrics};

/// Serves `tcp` as listener `name` until `stop` turns true, then drains open connections for
/// at most the configured drain time.
pub async fn serve(
    name: String,
    tcp: TcpListener,
    max_connections: usize,
    state: Arc<ArcSwap<ProxyState>>,
    acceptors: Arc<ArcSwap<Vec<(String, TlsAcceptor)>>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let refused = |rule: &str| {
            metrics
                .connections_refused
                .get_or_create(&DecisionLabels {
                    phase: "connection".into(),
                    rule: rule.into(),
                    action: "close".into(),
                })
                .inc();
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refused("max_connections");
            continue;
        };
        let current = state.load_full();
        let Some(cfg) = current.listener(&name).cloned() else {
            // The listener left the config; the accept loop is about to stop.
            continue;
        };
        // Backstop on the peer before reading a single byte.
        if let Some(rule) = backstop_refuses(&current, peer.ip(), &metrics) {
            refused(&rule);
            continue;
        }
        let acceptor = acceptors
            .load()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.clone());
        let metrics = metrics.clone();
        let connection = accept_connection(
            stream,
            peer,
            cfg,
            current,
            state.clone(),
            acceptor,
            metrics.clone(),
            stop.clone(),
        );
        let name = name.clone();
        tokio::spawn(async move {
            let gauge = metrics
                .connections
                .get_or_create(&ListenerLabels {
                    listener: name.clone(),
                })
                .clone();
            gauge.inc();
            connection.await;
            gauge.dec();
            drop(permit);
        });
    }
    // Stop accepting, then wait until every connection has returned its permit (each one
    // finishes its in-flight requests and closes), for at most the drain time.
    drop(tcp);
    let drain = state.load().drain_timeout;
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, limit.acquire_many(all))
        .await
        .is_err()
    {
        warn!(listener = %name, "drain timed out; closing the remaining connections");
    }
}

/// Serves an HTTP connection until it ends; when `stop` turns true, asks it to finish the
/// requests in flight and close (HTTP/1.1: no more keep-alive; h2: GOAWAY).
async fn serve_http<I, S>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    svc: S,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<super::respond::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// The rule that refuses `addr` at the connection phase, if any; report-only matches are
/// counted and pass.
fn backstop_refuses(
    state: &ProxyState,
    addr: std::net::IpAddr,
    metrics: &Metrics,
) -> Option<String> {
    match state.backstop.check(addr.to_canonical()) {
        Check::Refuse(rule) => Some(rule),
        Check::Report(rule) => {
            metrics.decision("connection", &rule, "report");
            None
        }
        Check::Pass => None,
    }
}

/// Drives one connection to its end: PROXY header, TLS, HTTP. The connection phase uses the
/// generation current at accept; each request takes the generation current when it arrives,
/// so a reload applies to long-lived keep-alive and h2 connections too.
#[allow(clippy::too_many_arguments)]
async fn accept_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: ListenerConfig,
    state: Arc<ProxyState>,
    generations: Arc<ArcSwap<ProxyState>>,
    acceptor: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let counters = metrics.clone();
    let refuse = move |rule: &str| {
        counters
            .connections_refused
            .get_or_create(&DecisionLabels {
                phase: "connection".into(),
                rule: rule.into(),
                action: "close".into(),
            })
            .inc();
    };
    let mut proxy_source = None;
    if cfg.proxy_protocol {
        // Only a trusted load balancer may tell us who the client is.
        if !state
            .trusted
            .load_balancers
            .iter()
            .any(|p| p.contains(peer.ip()))
        {
            refuse("proxy_protocol_untrusted_peer");
            return;
        }
        match tokio::time::timeout(
            cfg.handshake_timeout,
            super::proxy_protocol::read_header(&mut stream),
        )
        .await
        {
            Ok(Ok(h)) => proxy_source = h.source,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "bad PROXY header");
                refuse("proxy_protocol_invalid");
                return;
            }
            Err(_) => {
                refuse("proxy_protocol_timeout");
                return;
            }
        }
        if let Some(rule) =
            proxy_source.and_then(|src| backstop_refuses(&state, src.ip(), &metrics))
        {
            refuse(&rule);
            return;
        }
    }
    let tls = matches!(cfg.kind, ListenerKind::Https(_));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(cfg.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    let service_for = move |conn: Arc<ConnInfo>| {
        service_fn(move |req| {
            service::handle(generations.load_full(), conn.clone(), metrics.clone(), req)
        })
    };
    let conn_info = |client_cert| {
        Arc::new(ConnInfo {
            listener: cfg.name.clone(),
            peer,
            proxy_source,
            tls,
            client_cert,
        })
    };
    if tls {
        let Some(acceptor) = acceptor else {
            refuse("tls_not_configured");
            return;
        };
        let tls_stream =
            match tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    refuse("tls_handshake_failed");
                    return;
                }
                Err(_) => {
                    refuse("tls_handshake_timeout");
                    return;
                }
            };
        // The verifier has accepted the chain; its facts are read once for every request on
        // the connection. A certificate it accepted but we cannot read must not pass as "no
        // certificate" on an optional listener, so the connection is closed.
        let client_cert = match tls_stream.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => match crate::identity::mtls::cert_facts(leaf) {
                Ok(facts) => Some(Arc::new(facts)),
                Err(e) => {
                    debug!(%peer, error = %e, "unreadable client certificate");
                    refuse("client_cert_unreadable");
                    return;
                }
            },
            _ => None,
        };
        let svc = service_for(conn_info(client_cert));
        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
        // The protocol ALPN chose is the only one served on this connection.
        let builder = if h2 {
            builder.http2_only()
        } else {
            builder.http1_only()
        };
        serve_http(builder, TokioIo::new(tls_stream), svc, stop).await;
    } else {
        let svc = service_for(conn_info(None));
        serve_http(builder, TokioIo::new(stream), svc, stop).await;
    }
}
