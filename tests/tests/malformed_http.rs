//! Malformed HTTP/1.1 against the proxy, from the shared conformance data
//! (`http1/llhttp-request-cases.jsonl`, `http1/trophy-payloads.jsonl`):
//! - every strict case llhttp rejects is rejected by the gateway (a 4xx answer or a close),
//!   and the backend never serves it;
//! - every payload with both Content-Length and Transfer-Encoding reaches the backend as at
//!   most one request (no request smuggling through the gateway).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use portcullis::config::{
    Endpoint, ListenerConfig, ListenerKind, PassiveEjection, PathMatch, PlainMode, PoolConfig,
    ProxyConfig, RouteConfig, RouteTimeouts, TrustedProxies,
};
use portcullis::metrics::Metrics;
use portcullis::proxy::Proxy;
use portcullis::proxy::backstop::Backstop;
use portcullis::rules::RuleSet;
use portcullis::rules::table::compile;
use portcullis_tests::backend::{Backend, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Case {
    title: String,
    kind: String,
    error: String,
    raw: Vec<u8>,
    expect: String,
}

fn cases(file: &str) -> Option<Vec<Case>> {
    let path = portcullis_tests::shared_testdata(&format!("http1/{file}"))?;
    let text = std::fs::read_to_string(path).unwrap();
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Case {
                    title: v["title"].as_str().unwrap_or("").to_string(),
                    kind: v["type"].as_str().unwrap_or("").to_string(),
                    error: v["error"].as_str().unwrap_or("").to_string(),
                    raw: base64::engine::general_purpose::STANDARD
                        .decode(v["raw_b64"].as_str().unwrap_or(""))
                        .unwrap(),
                    expect: v["expect"].as_str().unwrap_or("").to_string(),
                }
            })
            .collect(),
    )
}

async fn gateway() -> (Proxy, std::net::SocketAddr, Backend) {
    let b = Backend::start("b", Proto::Http1).await;
    let cfg = ProxyConfig {
        listeners: vec![ListenerConfig {
            name: "web".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            kind: ListenerKind::Http(PlainMode::Serve),
            proxy_protocol: false,
            max_connections: 1000,
            handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
        }],
        trusted: TrustedProxies::default(),
        routes: vec![RouteConfig {
            name: "all".into(),
            product: None,
            hosts: vec![],
            path: PathMatch::Prefix("/".into()),
            methods: vec![],
            pool: 0,
            timeouts: RouteTimeouts {
                connect: Duration::from_secs(1),
                response_headers: Duration::from_secs(2),
                total: Duration::from_secs(3),
            },
            retries: 0,
            max_body_bytes: 1 << 20,
            websocket: false,
            auth: Default::default(),
            cors: None,
            response: None,
            validation: None,
        }],
        pools: vec![PoolConfig {
            name: "p".into(),
            endpoints: vec![Endpoint {
                authority: b.addr.to_string(),
                addr: b.addr,
            }],
            balance: Default::default(),
            protocol: Default::default(),
            tls: None,
            health: None,
            passive: PassiveEjection {
                consecutive_failures: 0,
                ejection_time: Duration::from_secs(1),
            },
            idle_timeout: Duration::from_secs(5),
            auth: None,
        }],
        token_providers: vec![],
        api_keys: None,
        drain_timeout: Duration::from_secs(1),
    };
    let proxy = Proxy::start(
        &cfg,
        Backstop::new(Arc::new(compile(&RuleSet::default()).unwrap()), None),
        Metrics::new(None),
    )
    .await
    .unwrap();
    let addr = proxy.local_addrs()[0].1;
    (proxy, addr, b)
}

/// Sends the raw bytes and returns the status codes of every response, reading until the
/// gateway closes or stays quiet. The socket is not half-closed: a server may (and hyper
/// does) drop a response to a client that has shut down its sending side.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> Vec<u16> {
    exchange_raw(addr, raw).await.0
}

async fn exchange_raw(addr: std::net::SocketAddr, raw: &[u8]) -> (Vec<u16>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let statuses = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

/// Cases llhttp rejects that hyper's parser accepts within what RFC 9112 allows a recipient:
/// a bare LF as a line terminator (section 2.2) and chunk extensions or whitespace it ignores
/// (section 7.1.1). The gateway re-frames every request it forwards, so these can never turn
/// into two requests at a backend; for them the test asserts exactly that (at most one
/// request reaches the backend, at most one 2xx answer) instead of a refusal.
const HYPER_LENIENT: [(&str, &str); 6] = [
    (
        "Headers separated by LF",
        "bare LF accepted as a header line end (RFC 9112 section 2.2)",
    ),
    (
        "Empty headers separated by LF",
        "bare LF accepted as a header line end (RFC 9112 section 2.2)",
    ),
    (
        "No extension after semicolon",
        "an empty chunk extension is ignored",
    ),
    (
        "Unbalanced chunk extensions quoting",
        "chunk extensions are ignored, not parsed",
    ),
    (
        "Space after chunk header",
        "whitespace after the chunk size is tolerated",
    ),
    (
        "Chunk data not terminated by CRLF",
        "`Transfer-Encoding: chunked ` (trailing space) is not taken as chunked; the bytes after the headers are a second, invalid request that closes the connection",
    ),
];

#[tokio::test]
async fn llhttp_must_reject_cases_are_rejected() {
    let Some(all) = cases("llhttp-request-cases.jsonl") else {
        return;
    };
    let (_proxy, addr, backend) = gateway().await;
    let mut failures = Vec::new();
    let mut checked = 0;
    // llhttp's error 22 is "Pause on CONNECT/Upgrade": the parser pausing to hand the socket
    // over, not a malformed request (an HTTP server may ignore an Upgrade it does not speak,
    // RFC 9110 section 7.8). Those cases are not must-reject.
    for c in all
        .iter()
        .filter(|c| c.expect == "reject" && c.kind == "request" && !c.error.starts_with("22:"))
    {
        checked += 1;
        let before = backend.served();
        let statuses = exchange(addr, &c.raw).await;
        let served = backend.served() - before;
        // Rejected: the last answer is a 4xx, or the gateway closed without answering the
        // malformed part; and the backend served no more requests than were answered 2xx.
        let ok_answers = statuses.iter().filter(|s| (200..300).contains(*s)).count();
        let last_is_refusal = statuses.last().is_some_and(|s| (400..500).contains(s));
        let closed_early = ok_answers == served && !statuses.iter().any(|s| (500..600).contains(s));
        let request_lines = String::from_utf8_lossy(&c.raw).matches(" HTTP/1.").count();
        let rejected = last_is_refusal
            || (closed_early && ok_answers < request_lines.max(1) && served <= ok_answers);
        if let Some((_, why)) = HYPER_LENIENT.iter().find(|(t, _)| *t == c.title) {
            if served > 1 || ok_answers > 1 {
                failures.push(format!(
                    "{:<70} lenient case ({why}) reached the backend as {served} requests",
                    c.title
                ));
            }
            continue;
        }
        if !rejected {
            failures.push(format!(
                "{:<70} statuses {statuses:?} backend served {served}",
                c.title
            ));
        }
    }
    eprintln!("{checked} must-reject cases checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} accepted:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn conflicting_framing_never_reaches_a_backend_as_two_requests() {
    let mut all = cases("llhttp-request-cases.jsonl").unwrap_or_default();
    all.extend(cases("trophy-payloads.jsonl").unwrap_or_default());
    if all.is_empty() {
        return;
    }
    let (_proxy, addr, backend) = gateway().await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for c in &all {
        let lower = String::from_utf8_lossy(&c.raw).to_ascii_lowercase();
        if !(lower.contains("content-length") && lower.contains("transfer-encoding")) {
            continue;
        }
        checked += 1;
        let before = backend.served();
        let statuses = exchange(addr, &c.raw).await;
        let served = backend.served() - before;
        if served > 1 {
            failures.push(format!(
                "{:<70} statuses {statuses:?} backend served {served}",
                c.title
            ));
        }
    }
    eprintln!("{checked} payloads with both Content-Length and Transfer-Encoding checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
