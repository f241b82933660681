//! Real HTTP backends for proxy tests: hyper servers on 127.0.0.1 port 0, speaking HTTP/1.1
//! or h2 (prior knowledge), that echo what they received as JSON, answer a chosen status or
//! after a delay, and can be made unhealthy. Each counts the requests it served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running backend; stops when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    _stop: watch::Sender<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Http1,
    H2,
}

impl Backend {
    /// Starts a backend on 127.0.0.1:0 in the current Tokio runtime.
    pub async fn start(name: &str, proto: Proto) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name, proto).await
    }

    pub async fn start_on(bind: SocketAddr, name: &str, proto: Proto) -> Self {
        Self::start_with(bind, name, proto, None).await
    }

    /// A backend that speaks TLS with `tls`, serving `proto` inside it.
    pub async fn start_tls(name: &str, proto: Proto, tls: Arc<rustls::ServerConfig>) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        Self::start_with("127.0.0.1:0".parse().unwrap(), name, proto, Some(acceptor)).await
    }

    async fn start_with(
        bind: SocketAddr,
        name: &str,
        proto: Proto,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let tcp = TcpListener::bind(bind).await.expect("bind backend");
        let addr = tcp.local_addr().expect("backend address");
        let requests = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (stop, mut stop_rx) = watch::channel(false);
        let (n, r, h) = (name.to_string(), requests.clone(), healthy.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = tcp.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let (n, r, h, tls) = (n.clone(), r.clone(), h.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(n.clone(), r.clone(), h.clone(), req));
                    match tls {
                        None => serve_io(TokioIo::new(stream), svc, proto).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_io(TokioIo::new(s), svc, proto).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            name: name.to_string(),
            addr,
            requests,
            healthy,
            _stop: stop,
        }
    }

    /// Makes `/health` answer 503 (false) or 200 (true).
    pub fn set_healthy(&self, yes: bool) {
        self.healthy.store(yes, Ordering::Relaxed);
    }

    pub fn served(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn serve_io<I, S>(io: I, svc: S, proto: Proto)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = match proto {
        Proto::Http1 => hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
            .map_err(|e| e.to_string()),
        Proto::H2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
            .map_err(|e| e.to_string()),
    };
}

/// Paths: `/health`, `/status/<code>`, `/delay/<ms>`, `/crash` (a 500 with a stack trace and
/// leaky headers), `/leaky` (a 200 with those headers), `/ws` (a WebSocket-style upgrade that
/// echoes bytes), anything else echoes the request as JSON.
async fn answer(
    name: String,
    requests: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let ok = healthy.load(Ordering::Relaxed);
        return Ok(reply(
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "health".into(),
        ));
    }
    requests.fetch_add(1, Ordering::Relaxed);
    if path.ends_with("/ws") && req.headers().get(http::header::UPGRADE).is_some() {
        // Switch protocols and echo every byte back: enough to see a tunnel work end to end.
        let upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(io) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(resp);
    }
    // A crashing backend: a 500 with a stack trace and headers naming its software, which
    // the gateway must not pass on. `/leaky` is the same headers on a 200.
    if path.ends_with("/crash") || path.ends_with("/leaky") {
        let crash = path.ends_with("/crash");
        let mut resp = reply(
            if crash {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            },
            if crash {
                "Traceback (most recent call last):\n  File \"/srv/orders/app.py\", line 42, in \
                 handler\npsycopg2.OperationalError: could not connect to db-7.internal:5432\n"
                    .to_string()
            } else {
                format!("{{\"backend\":\"{name}\"}}")
            },
        );
        for (k, v) in [
            ("server", "Apache/2.4.1 (Unix)"),
            ("x-powered-by", "PHP/5.6.40"),
            ("x-internal-host", "db-7.internal"),
        ] {
            resp.headers_mut()
                .insert(k, http::HeaderValue::from_static(v));
        }
        return Ok(resp);
    }
    // `/status/` and `/delay/` work under any route prefix (`/v1/delay/100`).
    if let Some(code) = path
        .rsplit_once("/status/")
        .and_then(|(_, c)| c.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        return Ok(reply(
            status,
            format!("{{\"backend\":\"{name}\",\"status\":{code}}}"),
        ));
    }
    if let Some(ms) = path
        .rsplit_once("/delay/")
        .and_then(|(_, c)| c.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    // A body that fails to arrive whole (the gateway aborted it) is refused, as any real
    // server framework would.
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            format!("{{\"backend\":\"{name}\",\"error\":\"incomplete body\"}}"),
        ));
    };
    let echo = serde_json::json!({
        "backend": name,
        "method": method,
        "version": version,
        "uri": uri,
        "headers": headers,
        "body_len": body.len(),
    });
    Ok(reply(StatusCode::OK, echo.to_string()))
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
