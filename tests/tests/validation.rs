//! Request validation through the proxy, configured from TOML: an OpenAPI 3.1 document
//! (body, path, query and header parameters, content types, size), an OpenAPI 3.0 document
//! with `nullable`, a plain JSON Schema body rule, and detect mode.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::proxy_config::start_from_toml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(dir: &Path, backend: &Backend) -> (Proxy, SocketAddr) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for f in [
        "validation-orders.yaml",
        "validation-legacy.json",
        "validation-body.schema.json",
    ] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    let config = format!(
        r#"
[kernel]
enabled = false

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
http_mode = "serve"

[[pools]]
name = "api"
endpoints = ["{backend}"]

[[routes]]
name = "orders"
path = "/orders"
pool = "api"
[routes.validation]
openapi = "validation-orders.yaml"
max_body_size = 1024
unknown_operations = "refuse"

[[routes]]
name = "orders-detect"
path = "/detect/orders"
pool = "api"
[routes.validation]
schema = "validation-body.schema.json"
action = "detect"

[[routes]]
name = "legacy"
path = "/legacy"
pool = "api"
[routes.validation]
openapi = "validation-legacy.json"

[[routes]]
name = "events"
path = "/events"
pool = "api"
[routes.validation]
schema = "validation-body.schema.json"
"#,
        backend = backend.addr
    );
    start_from_toml(dir, &config).await
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// The failure locations of a 400 problem body.
fn locations(problem: &serde_json::Value) -> Vec<String> {
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    problem["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["location"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_bodies_are_checked_and_failures_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("api", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    let (s, _) = send(
        addr,
        Method::POST,
        "/orders",
        &[JSON],
        r#"{"item":"a","quantity":2}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(backend.served(), 1);

    let cases = [
        (r#"{"item":"a","quantity":"secret-two"}"#, "/quantity"),
        (r#"{"quantity":2}"#, "/item"),
        (r#"{"item":"a","quantity":2,"extra":1}"#, "/extra"),
        (r#"{"item":"a","#, ""),
    ];
    for (body, field) in cases {
        let (s, p) = send(addr, Method::POST, "/orders", &[JSON], body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(locations(&p), [field], "{body}");
        assert!(!p.to_string().contains("secret-two"), "{p}");
    }
    assert_eq!(
        backend.served(),
        1,
        "invalid bodies never reach the backend"
    );

    // A required body that is missing.
    let (s, p) = send(addr, Method::POST, "/orders", &[], "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), [""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_checked_by_their_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("api", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;
    let tenant = ("x-tenant", "shop");

    assert_eq!(
        send(addr, Method::GET, "/orders/12", &[], "").await.0,
        StatusCode::OK
    );
    let (s, p) = send(addr, Method::GET, "/orders/twelve", &[], "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), ["path:id"]);

    assert_eq!(
        send(addr, Method::GET, "/orders?limit=10", &[tenant], "")
            .await
            .0,
        StatusCode::OK
    );
    let (s, p) = send(addr, Method::GET, "/orders?limit=51", &[tenant], "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), ["query:limit"]);
    assert_eq!(p["failures"][0]["reason"], "must be at most 50");

    let (s, p) = send(addr, Method::GET, "/orders", &[], "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), ["header:X-Tenant"]);

    let region = |r: &'static str| ("cookie", r);
    assert_eq!(
        send(
            addr,
            Method::GET,
            "/orders",
            &[tenant, region("theme=dark; region=eu")],
            ""
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, p) = send(
        addr,
        Method::GET,
        "/orders",
        &[tenant, region("region=mars")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), ["cookie:region"]);

    // Not in the document, refused with unknown_operations = "refuse".
    assert_eq!(
        send(addr, Method::DELETE, "/orders/1", &[], "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(backend.served(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_and_sizes_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("api", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    let (s, p) = send(
        addr,
        Method::POST,
        "/orders",
        &[("content-type", "text/plain")],
        "item=a",
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(p["code"], "unsupported_media_type");

    // Refused on Content-Length alone: the gateway answers without waiting for the body.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 5000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Over the limit while reading (no Content-Length: chunked).
    let big = format!(r#"{{"item":"{}","quantity":1}}"#, "a".repeat(2000));
    let body = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n{body}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let n = tcp.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(backend.served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_logs_and_passes_and_plain_schemas_and_nullable_work() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("api", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    // Detect: an invalid body is forwarded.
    let (s, _) = send(
        addr,
        Method::POST,
        "/detect/orders",
        &[JSON],
        r#"{"event":"z"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(backend.served(), 1);

    // The same schema in prevent mode.
    let (s, p) = send(addr, Method::POST, "/events", &[JSON], r#"{"event":"z"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), ["/event"]);
    assert_eq!(
        send(addr, Method::POST, "/events", &[JSON], r#"{"event":"a"}"#)
            .await
            .0,
        StatusCode::OK
    );

    // OpenAPI 3.0 `nullable`.
    assert_eq!(
        send(addr, Method::POST, "/legacy", &[JSON], r#"{"note":null}"#)
            .await
            .0,
        StatusCode::OK
    );
    let (s, p) = send(addr, Method::POST, "/legacy", &[JSON], r#"{"note":5}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(locations(&p), ["/note"]);
    assert_eq!(backend.served(), 3);
}
