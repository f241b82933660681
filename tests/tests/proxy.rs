//! The proxy with real backends on loopback (HTTP/1.1 and h2) and real TLS from a test PKI:
//! routing, load balancing, health-check ejection and recovery, passive ejection, timeouts,
//! retries, body limits, header hygiene, the client address behind trusted and untrusted
//! peers, PROXY protocol, the HTTPS redirect, HSTS, the userspace backstop, and reload under
//! load. No privileges needed: everything runs on 127.0.0.0/8.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::config::{
    Balance, ClientIpHeader, Endpoint, HealthCheck, HostMatch, Hsts, ListenerConfig, ListenerKind,
    PassiveEjection, PathMatch, PlainMode, PoolConfig, ProxyConfig, RouteConfig, RouteTimeouts,
    TlsConfig, TlsVersion, TrustedProxies, UpstreamProtocol,
};
use portcullis::metrics::Metrics;
use portcullis::proxy::Proxy;
use portcullis::proxy::backstop::Backstop;
use portcullis::rules::table::compile;
use portcullis::rules::{DenySet, Mode, RuleSet};
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::pki::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn endpoint(b: &Backend) -> Endpoint {
    Endpoint {
        authority: b.addr.to_string(),
        addr: b.addr,
    }
}

fn dead_endpoint() -> Endpoint {
    // Bind and drop: nothing listens there any more, so connecting is refused.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    Endpoint {
        authority: addr.to_string(),
        addr,
    }
}

fn pool(name: &str, endpoints: Vec<Endpoint>) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        endpoints,
        balance: Balance::RoundRobin,
        protocol: UpstreamProtocol::Http1,
        tls: None,
        health: None,
        passive: PassiveEjection {
            consecutive_failures: 0,
            ejection_time: Duration::from_secs(30),
        },
        idle_timeout: Duration::from_secs(30),
        auth: None,
    }
}

fn route(name: &str, path: &str, pool: usize) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        product: None,
        hosts: vec![],
        path: PathMatch::Prefix(path.into()),
        methods: vec![],
        pool,
        timeouts: RouteTimeouts {
            connect: Duration::from_millis(500),
            response_headers: Duration::from_secs(5),
            total: Duration::from_secs(10),
        },
        retries: 1,
        max_body_bytes: 1024,
        websocket: false,
        auth: Default::default(),
        cors: None,
        response: None,
        validation: None,
    }
}

fn plain_listener(name: &str) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        kind: ListenerKind::Http(PlainMode::Serve),
        proxy_protocol: false,
        max_connections: 1000,
        handshake_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
    }
}

fn config(
    listeners: Vec<ListenerConfig>,
    routes: Vec<RouteConfig>,
    pools: Vec<PoolConfig>,
) -> ProxyConfig {
    ProxyConfig {
        listeners,
        trusted: TrustedProxies::default(),
        routes,
        pools,
        token_providers: vec![],
        api_keys: None,
        drain_timeout: Duration::from_secs(2),
    }
}

fn no_rules() -> Backstop {
    Backstop::new(Arc::new(compile(&RuleSet::default()).unwrap()), None)
}

async fn start(cfg: &ProxyConfig) -> (Proxy, SocketAddr) {
    start_with(cfg, no_rules()).await
}

async fn start_with(cfg: &ProxyConfig, backstop: Backstop) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(cfg, backstop, Metrics::new(None))
        .await
        .expect("start the proxy");
    let addr = proxy.local_addrs()[0].1;
    (proxy, addr)
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = format!("http://{addr}{pq}").parse().unwrap();
    let resp = client()
        .request(Request::from_parts(parts, body))
        .await
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Request::get(path).body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn routes_by_path_method_and_host_with_problem_responses() {
    let a = Backend::start("a", Proto::Http1).await;
    let b = Backend::start("b", Proto::H2).await;
    let mut pools = vec![pool("a", vec![endpoint(&a)]), pool("b", vec![endpoint(&b)])];
    pools[1].protocol = UpstreamProtocol::H2;
    let mut write = route("write", "/orders", 1);
    write.methods = vec![Method::POST];
    let mut read = route("read", "/orders", 0);
    read.methods = vec![Method::GET];
    let mut hosted = route("hosted", "/", 1);
    hosted.hosts = vec![HostMatch::Exact("api.example.com".into())];
    let cfg = config(
        vec![plain_listener("web")],
        vec![hosted, write, read],
        pools,
    );
    let (_p, addr) = start(&cfg).await;

    assert_eq!(get(addr, "/orders/1").await.json()["backend"], "a");
    let r = send(
        addr,
        Request::post("/orders").body(Full::from("{}")).unwrap(),
    )
    .await;
    assert_eq!(r.json()["backend"], "b");
    assert_eq!(
        r.json()["version"],
        "HTTP/2.0",
        "an HTTP/1.1 client reaches an h2 backend"
    );
    let r = send(
        addr,
        Request::get("/x")
            .header("host", "API.example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["backend"], "b");

    let r = get(addr, "/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(
        r.json()["request_id"].as_str(),
        r.headers["x-request-id"].to_str().ok()
    );
    let r = send(
        addr,
        Request::delete("/orders").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST, GET");
}

#[tokio::test]
async fn round_robin_and_least_outstanding_spread_the_load() {
    let a = Backend::start("a", Proto::Http1).await;
    let b = Backend::start("b", Proto::Http1).await;
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&a), endpoint(&b)])],
    );
    let (_p, addr) = start(&cfg).await;
    for _ in 0..20 {
        assert_eq!(get(addr, "/").await.status, StatusCode::OK);
    }
    assert_eq!((a.served(), b.served()), (10, 10), "round robin alternates");

    // Least outstanding: while one endpoint holds slow requests, new ones go to the other.
    let slow = Backend::start("slow", Proto::Http1).await;
    let fast = Backend::start("fast", Proto::Http1).await;
    let mut p = pool("p", vec![endpoint(&slow), endpoint(&fast)]);
    p.balance = Balance::LeastOutstanding;
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![p],
    );
    let (_p2, addr) = start(&cfg).await;
    let held = tokio::spawn(async move { get(addr, "/delay/800").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = (slow.served(), fast.served());
    for _ in 0..6 {
        get(addr, "/").await;
    }
    let held_backend = held.await.unwrap().json()["backend"]
        .as_str()
        .unwrap()
        .to_string();
    let busy = if held_backend == "slow" { &slow } else { &fast };
    let idle = if held_backend == "slow" { &fast } else { &slow };
    let busy_before = if held_backend == "slow" {
        before.0
    } else {
        before.1
    };
    assert_eq!(
        busy.served(),
        busy_before,
        "no new request went to the busy endpoint"
    );
    assert!(idle.served() >= 6);
}

#[tokio::test]
async fn health_checks_eject_and_restore_an_endpoint() {
    let a = Backend::start("a", Proto::Http1).await;
    let b = Backend::start("b", Proto::Http1).await;
    let mut p = pool("p", vec![endpoint(&a), endpoint(&b)]);
    p.health = Some(HealthCheck {
        path: "/health".into(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
    });
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![p],
    );
    let (_p, addr) = start(&cfg).await;
    b.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = b.served();
    for _ in 0..10 {
        assert_eq!(get(addr, "/").await.json()["backend"], "a");
    }
    assert_eq!(b.served(), before, "an unhealthy endpoint gets no traffic");
    b.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        get(addr, "/").await;
    }
    assert!(b.served() >= before + 4, "traffic returns after recovery");
}

#[tokio::test]
async fn connect_failures_are_retried_for_idempotent_requests_and_eject_passively() {
    let live = Backend::start("live", Proto::Http1).await;
    let mut p = pool("p", vec![dead_endpoint(), endpoint(&live)]);
    p.passive = PassiveEjection {
        consecutive_failures: 2,
        ejection_time: Duration::from_secs(30),
    };
    let mut no_retry = route("post", "/", 0);
    no_retry.retries = 0;
    no_retry.methods = vec![Method::POST];
    let cfg = config(
        vec![plain_listener("web")],
        vec![no_retry, route("r", "/", 0)],
        vec![p],
    );
    let (_p, addr) = start(&cfg).await;
    // Round robin starts at the dead endpoint for one of the first two requests: every GET
    // still succeeds because a connect failure is retried on the other endpoint.
    for _ in 0..6 {
        assert_eq!(get(addr, "/").await.status, StatusCode::OK);
    }
    assert_eq!(live.served(), 6);
    // A POST is never retried; once the dead endpoint is ejected it is not even tried.
    for _ in 0..4 {
        let r = send(addr, Request::post("/").body(Full::from("x")).unwrap()).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the dead endpoint was ejected after 2 failures"
        );
    }
}

#[tokio::test]
async fn a_post_to_a_dead_endpoint_is_a_502_not_a_retry() {
    let mut r = route("r", "/", 0);
    r.retries = 3;
    let cfg = config(
        vec![plain_listener("web")],
        vec![r],
        vec![pool("p", vec![dead_endpoint()])],
    );
    let (_p, addr) = start(&cfg).await;
    let resp = send(addr, Request::post("/").body(Full::from("x")).unwrap()).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(resp.json()["code"], "bad_gateway");
}

#[tokio::test]
async fn timeouts_answer_504() {
    let slow = Backend::start("slow", Proto::Http1).await;
    let mut r = route("r", "/", 0);
    r.timeouts.response_headers = Duration::from_millis(200);
    let cfg = config(
        vec![plain_listener("web")],
        vec![r],
        vec![pool("p", vec![endpoint(&slow)])],
    );
    let (_p, addr) = start(&cfg).await;
    let started = Instant::now();
    let resp = get(addr, "/delay/3000").await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(get(addr, "/delay/10").await.status, StatusCode::OK);
}

#[tokio::test]
async fn body_limits_answer_413_before_and_while_streaming() {
    let b = Backend::start("b", Proto::Http1).await;
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let (_p, addr) = start(&cfg).await;
    let r = send(
        addr,
        Request::post("/")
            .body(Full::from(vec![b'x'; 2048]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        b.served(),
        0,
        "refused on Content-Length, before the backend"
    );
    // Chunked, no Content-Length: refused while streaming.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = "x".repeat(600);
    let req = format!(
        "POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(get(addr, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn header_hygiene_and_spoofed_forwarding_headers() {
    let b = Backend::start("b", Proto::Http1).await;
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let (_p, addr) = start(&cfg).await;
    let req = Request::get("/echo")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "spoofed-id")
        .header("x-kept", "yes")
        .body(Full::default())
        .unwrap();
    let r = send(addr, req).await;
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a spoofed chain from an untrusted client is replaced"
    );
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"".to_string() + &addr.ip().to_string() + "\""
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-hop").is_none() && h.get("connection").is_none_or(|v| v != "x-hop"));
    assert_eq!(h["x-kept"], "yes");
    let id = h["x-request-id"].as_str().unwrap();
    assert_ne!(id, "spoofed-id");
    assert_eq!(
        r.headers["x-request-id"], id,
        "the client sees the same request id"
    );
}

#[tokio::test]
async fn trusted_proxies_vouch_for_the_client_address() {
    let b = Backend::start("b", Proto::Http1).await;
    let mut cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    cfg.trusted = TrustedProxies {
        load_balancers: vec![],
        proxies: vec!["127.0.0.0/8".parse().unwrap()],
        client_ip_header: ClientIpHeader::XForwardedFor,
    };
    // The client at 203.0.113.5 is denied: behind a trusted proxy the backstop sees it.
    let rules = RuleSet {
        deny: vec![DenySet {
            name: "bad".into(),
            mode: Mode::Enforce,
            prefixes: vec!["203.0.113.0/24".parse().unwrap()],
        }],
        ..RuleSet::default()
    };
    let (_p, addr) = start_with(
        &cfg,
        Backstop::new(Arc::new(compile(&rules).unwrap()), None),
    )
    .await;
    let r = send(
        addr,
        Request::get("/")
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-request-id", "lb-42")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-forwarded-for"],
        "198.51.100.7, 127.0.0.1",
        "the chain is extended"
    );
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        "lb-42",
        "a trusted proxy's request id is kept"
    );
    let r = send(
        addr,
        Request::get("/")
            .header("x-forwarded-for", "203.0.113.5")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        !String::from_utf8_lossy(&r.body).contains("deny:bad"),
        "the rule is logged, not shown"
    );
}

#[tokio::test]
async fn proxy_protocol_only_from_trusted_load_balancers() {
    let b = Backend::start("b", Proto::Http1).await;
    let mut l = plain_listener("lb");
    l.proxy_protocol = true;
    let mut cfg = config(
        vec![l],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    cfg.trusted.load_balancers = vec!["127.0.0.1/32".parse().unwrap()];
    let (_p, addr) = start(&cfg).await;
    let exchange = |from: &'static str| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.99 198.51.100.1 40000 443\r\nGET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let trusted = exchange("127.0.0.1").await;
    assert!(trusted.starts_with("HTTP/1.1 200"), "{trusted}");
    assert!(
        trusted.contains("\"x-forwarded-for\":\"192.0.2.99\""),
        "the announced source is the client: {trusted}"
    );
    let untrusted = exchange("127.0.0.2").await;
    assert!(
        untrusted.is_empty(),
        "a PROXY header from an untrusted peer closes the connection: {untrusted}"
    );
    assert_eq!(b.served(), 1);
}

#[tokio::test]
async fn backstop_refuses_denied_peers_before_anything_is_read() {
    let b = Backend::start("b", Proto::Http1).await;
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let rules = RuleSet {
        deny: vec![DenySet {
            name: "lo2".into(),
            mode: Mode::Enforce,
            prefixes: vec!["127.0.0.2/32".parse().unwrap()],
        }],
        ..RuleSet::default()
    };
    let metrics = Metrics::new(None);
    let proxy = Proxy::start(
        &cfg,
        Backstop::new(Arc::new(compile(&rules).unwrap()), None),
        metrics.clone(),
    )
    .await
    .unwrap();
    let addr = proxy.local_addrs()[0].1;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    assert!(out.is_empty());
    assert_eq!(b.served(), 0);
    assert!(
        metrics.render().contains("rule=\"deny:lo2\""),
        "counted apart from kernel drops"
    );
    assert_eq!(
        get(addr, "/").await.status,
        StatusCode::OK,
        "127.0.0.1 passes"
    );
}

/// A TLS client for the test PKI with the given ALPN protocols.
fn tls_connector(pki: &TestPki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(portcullis::proxy::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn tls_listener(pki: &TestPki, hsts: Option<Hsts>) -> ListenerConfig {
    let leaf = pki.server(&["api.example.com"]);
    ListenerConfig {
        kind: ListenerKind::Https(TlsConfig {
            certificates: vec![leaf.certified_key()],
            certificate_files: vec![],
            min_version: TlsVersion::Tls12,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            hsts,
            client_certs: None,
        }),
        ..plain_listener("tls")
    }
}

#[tokio::test]
async fn tls_listener_serves_h2_and_http1_with_hsts_and_plain_http_redirects() {
    let pki = TestPki::new("proxy-test");
    let b = Backend::start("b", Proto::Http1).await;
    let hsts = Hsts {
        max_age: Duration::from_secs(31_536_000),
        include_subdomains: true,
        preload: false,
    };
    let mut redirect = plain_listener("redirect");
    redirect.kind = ListenerKind::Http(PlainMode::RedirectToHttps { port: 8443 });
    let cfg = config(
        vec![tls_listener(&pki, Some(hsts)), redirect],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let proxy = Proxy::start(&cfg, no_rules(), Metrics::new(None))
        .await
        .unwrap();
    let addrs: HashMap<String, SocketAddr> = proxy.local_addrs().into_iter().collect();

    for (alpn, want) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], "h2"),
        (&[b"http/1.1".as_slice()][..], "http/1.1"),
    ] {
        let tcp = TcpStream::connect(addrs["tls"]).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
        let tls = tls_connector(&pki, alpn).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want.as_bytes()));
        let io = hyper_util::rt::TokioIo::new(tls);
        let resp = if want == "h2" {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(
                Request::get("https://api.example.com/x")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(
                Request::get("/x")
                    .header("host", "api.example.com")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap()
        };
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(
            echo["headers"]["host"], "api.example.com",
            "an h2 request reaches an HTTP/1.1 backend with a Host header"
        );
    }

    let r = send(
        addrs["redirect"],
        Request::get("/a?b=c")
            .header("host", "api.example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "https://api.example.com:8443/a?b=c");
    assert!(
        r.headers.get("strict-transport-security").is_none(),
        "HSTS only over TLS (RFC 6797 section 7.2)"
    );
}

#[tokio::test]
async fn slow_clients_cannot_hold_sockets() {
    let pki = TestPki::new("slow");
    let b = Backend::start("b", Proto::Http1).await;
    let mut tls = tls_listener(&pki, None);
    tls.handshake_timeout = Duration::from_millis(300);
    let mut plain = plain_listener("plain");
    plain.header_timeout = Duration::from_millis(300);
    let cfg = config(
        vec![tls, plain],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let proxy = Proxy::start(&cfg, no_rules(), Metrics::new(None))
        .await
        .unwrap();
    let addrs: HashMap<String, SocketAddr> = proxy.local_addrs().into_iter().collect();
    for (name, send_first) in [
        ("tls", &b""[..]),
        ("plain", &b"GET / HTTP/1.1\r\nhost: t\r\n"[..]),
    ] {
        let mut s = TcpStream::connect(addrs[name]).await.unwrap();
        s.write_all(send_first).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the gateway closes the socket");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: closed after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let a = Backend::start("a", Proto::Http1).await;
    let b = Backend::start("b", Proto::Http1).await;
    let cfg_a = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&a)])],
    );
    let mut proxy = Proxy::start(&cfg_a, no_rules(), Metrics::new(None))
        .await
        .unwrap();
    let addr = proxy.local_addrs()[0].1;
    let mut cfg_b = cfg_a.clone();
    cfg_b.pools = vec![pool("p", vec![endpoint(&b)])];
    cfg_b.listeners[0].bind = addr;
    let mut cfg_a = cfg_a;
    cfg_a.listeners[0].bind = addr;

    let load = tokio::spawn(async move {
        let client = client();
        let mut failures = 0;
        let mut ok = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let client = client.clone();
            tasks.spawn(async move {
                let (mut ok, mut failures) = (0, 0);
                while Instant::now() < deadline {
                    let req = Request::get(format!("http://{addr}/delay/5"))
                        .body(Full::default())
                        .unwrap();
                    match client.request(req).await {
                        Ok(r) if r.status() == StatusCode::OK => ok += 1,
                        _ => failures += 1,
                    }
                }
                (ok, failures)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (o, f) = r.unwrap();
            ok += o;
            failures += f;
        }
        (ok, failures)
    });
    // Ten reloads, alternating the pool, while the load runs.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cfg = if i % 2 == 0 { &cfg_b } else { &cfg_a };
        let prepared = proxy.prepare(cfg).await.unwrap();
        proxy.commit(cfg, prepared, no_rules());
    }
    let (ok, failures) = load.await.unwrap();
    assert_eq!(
        failures, 0,
        "{failures} requests failed during reloads ({ok} succeeded)"
    );
    assert!(ok > 100, "only {ok} requests ran");
    assert!(a.served() > 0 && b.served() > 0, "both generations served");
}

#[tokio::test]
async fn tls_to_backends_is_verified_against_the_pool_ca() {
    let pki = TestPki::new("backend-ca");
    let other = TestPki::new("other-ca");
    let server_tls = |p: &TestPki| {
        portcullis::proxy::tls::server_config(&TlsConfig {
            certificates: vec![p.server(&["backend.internal"]).certified_key()],
            certificate_files: vec![],
            min_version: TlsVersion::Tls12,
            alpn: vec![b"http/1.1".to_vec()],
            hsts: None,
            client_certs: None,
        })
        .unwrap()
    };
    let good = Backend::start_tls("good", Proto::Http1, server_tls(&pki)).await;
    let forged = Backend::start_tls("forged", Proto::Http1, server_tls(&other)).await;
    let with_tls = |b: &Backend| {
        let mut p = pool("p", vec![endpoint(b)]);
        p.tls = Some(portcullis::config::UpstreamTls {
            roots: pki.roots(),
            ca_file: "ca.pem".into(),
            server_name: Some("backend.internal".into()),
            client_identity: None,
        });
        p
    };
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![with_tls(&good)],
    );
    let (_p, addr) = start(&cfg).await;
    let r = get(addr, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["backend"], "good");

    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/", 0)],
        vec![with_tls(&forged)],
    );
    let (_p2, addr) = start(&cfg).await;
    assert_eq!(
        get(addr, "/").await.status,
        StatusCode::BAD_GATEWAY,
        "a backend certificate from another CA is refused"
    );
    assert_eq!(forged.served(), 0);
}

#[tokio::test]
async fn websocket_upgrades_pass_only_where_enabled() {
    let b = Backend::start("ws", Proto::Http1).await;
    let mut ws_route = route("ws", "/live", 0);
    ws_route.websocket = true;
    let cfg = config(
        vec![plain_listener("web")],
        vec![ws_route, route("rest", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let (_p, addr) = start(&cfg).await;
    let upgrade = |path: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let (mut s, head) = upgrade("/live/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping through the tunnel");
    let (_s, head) = upgrade("/other/ws").await;
    assert!(
        head.starts_with("HTTP/1.1 400"),
        "no upgrade where the route does not allow it: {head}"
    );
}

#[tokio::test]
async fn connection_limit_closes_the_extra_connection() {
    let b = Backend::start("b", Proto::Http1).await;
    let mut l = plain_listener("web");
    l.max_connections = 2;
    let cfg = config(
        vec![l],
        vec![route("r", "/", 0)],
        vec![pool("p", vec![endpoint(&b)])],
    );
    let metrics = Metrics::new(None);
    let proxy = Proxy::start(&cfg, no_rules(), metrics.clone())
        .await
        .unwrap();
    let addr = proxy.local_addrs()[0].1;
    let _held: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut out)).await;
    assert!(
        out.is_empty(),
        "the third connection is closed without an answer"
    );
    assert!(metrics.render().contains("rule=\"max_connections\""));
    drop(_held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(addr, "/").await.status,
        StatusCode::OK,
        "a freed slot is usable again"
    );
}

#[tokio::test]
async fn metrics_show_requests_decisions_and_upstream_health() {
    let a = Backend::start("a", Proto::Http1).await;
    let cfg = config(
        vec![plain_listener("web")],
        vec![route("r", "/api", 0)],
        vec![pool("p", vec![endpoint(&a), dead_endpoint()])],
    );
    let metrics = Metrics::new(None);
    let proxy = Proxy::start(&cfg, no_rules(), metrics.clone())
        .await
        .unwrap();
    let addr = proxy.local_addrs()[0].1;
    get(addr, "/api/x").await;
    get(addr, "/nowhere").await;
    let text = metrics.render();
    assert!(
        text.contains("portcullis_requests_total{route=\"r\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "portcullis_decisions_total{phase=\"route\",rule=\"route_not_found\",action=\"deny\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "portcullis_upstream_healthy{{pool=\"p\",endpoint=\"{}\"}} 1",
            a.addr
        )),
        "{text}"
    );
}

#[tokio::test]
async fn api_keys_are_required_scoped_and_never_forwarded() {
    use portcullis::identity::api_keys::{KeyStore, hash_key};
    let b = Backend::start("b", Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nid = \"shop-app\"\nowner = \"test\"\nprimary = \"{}\"\nsecondary = \"{}\"\nscope = {{ product = \"shop\" }}\n\n\
             [[keys]]\nid = \"billing-app\"\nowner = \"test\"\nprimary = \"{}\"\nscope = {{ product = \"billing\" }}\n\n\
             [[keys]]\nid = \"old-app\"\nowner = \"test\"\nprimary = \"{}\"\nscope = \"all\"\nexpires = 2020-01-01T00:00:00Z\n",
            hash_key("shop-key"),
            hash_key("shop-key-next"),
            hash_key("billing-key"),
            hash_key("old-key"),
        ),
    )
    .unwrap();
    let mut r = route("orders", "/", 0);
    r.product = Some("shop".into());
    r.auth.api_key = true;
    let mut cfg = config(
        vec![plain_listener("web")],
        vec![r],
        vec![pool("p", vec![endpoint(&b)])],
    );
    cfg.api_keys = Some(portcullis::config::ApiKeysConfig {
        store: Arc::new(KeyStore::load(&keys).unwrap()),
        file: keys.clone(),
        header: "ocp-apim-subscription-key".parse().unwrap(),
        query_param: "subscription-key".into(),
    });
    let (_p, addr) = start(&cfg).await;
    let with_key = |k: &str| {
        Request::get("/o")
            .header("ocp-apim-subscription-key", k)
            .body(Full::default())
            .unwrap()
    };

    let r = get(addr, "/o").await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("key_missing"))
    );
    assert_eq!(
        send(addr, with_key("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(addr, with_key("old-key")).await.status,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    assert_eq!(
        send(addr, with_key("billing-key")).await.status,
        StatusCode::FORBIDDEN,
        "another product's key"
    );
    assert_eq!(b.served(), 0);

    // Primary and secondary both work (rotation); the key never reaches the backend.
    for k in ["shop-key", "shop-key-next"] {
        let r = send(addr, with_key(k)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.json()["headers"]
                .get("ocp-apim-subscription-key")
                .is_none()
        );
    }
    // The query parameter works without the header, and is removed before forwarding.
    let r = get(addr, "/o?a=1&subscription-key=shop-key&b=2").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["uri"], "/o?a=1&b=2");
    // A key in the header twice is ambiguous: refused.
    let twice = Request::get("/o")
        .header("ocp-apim-subscription-key", "shop-key")
        .header("ocp-apim-subscription-key", "shop-key")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(addr, twice).await.status, StatusCode::UNAUTHORIZED);
    // The problem body never echoes the key.
    assert!(
        !String::from_utf8_lossy(&send(addr, with_key("wrong-secret-value")).await.body)
            .contains("wrong-secret-value")
    );
}
