//! Backend responses on their way to the client, configured from TOML: headers naming the
//! backend's software never leave the gateway, a backend 5xx with internal details becomes the
//! gateway's problem document (status kept), and a route's allowed status codes are enforced.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::proxy_config::start_from_toml;

async fn start(dir: &std::path::Path, backend: &Backend) -> (Proxy, SocketAddr) {
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
name = "orders"
endpoints = ["{backend}"]

# Defaults only: leaky headers stripped, 5xx bodies masked.
[[routes]]
name = "plain"
path = "/plain"
pool = "orders"

[[routes]]
name = "strict"
path = "/strict"
pool = "orders"
[routes.response]
status_codes = [200, 404]
strip_headers = ["X-Internal-Host"]

[[routes]]
name = "raw-errors"
path = "/raw"
pool = "orders"
[routes.response]
mask_server_errors = false

[[routes]]
name = "watched"
path = "/watched"
pool = "orders"
[routes.response]
status_codes = [200]
action = "detect"
"#,
        backend = backend.addr
    );
    start_from_toml(dir, &config).await
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::get(format!("http://{addr}{path}"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_backend_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    let (status, headers, body) = get(addr, "/plain/crash").await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the status is kept"
    );
    assert_eq!(headers["content-type"], "application/problem+json");
    for secret in ["Traceback", "db-7.internal", "app.py", "psycopg2"] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "upstream_error");
    assert!(!headers.contains_key("server") && !headers.contains_key("x-powered-by"));

    // On a 200 the body passes, the software headers do not.
    let (status, headers, _) = get(addr, "/plain/leaky").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("server"));
    assert!(!headers.contains_key("x-powered-by"));
    assert_eq!(
        headers["x-internal-host"], "db-7.internal",
        "not listed on this route"
    );
    let (_, headers, _) = get(addr, "/strict/leaky").await;
    assert!(
        !headers.contains_key("x-internal-host"),
        "listed on this route"
    );

    // A route whose backend's error bodies are part of its API passes them on.
    let (status, headers, body) = get(addr, "/raw/crash").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("Traceback"));
    assert!(!headers.contains_key("server"), "software headers still go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_status_codes_prevent_and_detect() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    let (status, _, _) = get(addr, "/strict/status/404").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "listed");
    let (status, _, body) = get(addr, "/strict/status/201").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "not listed");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "response_not_allowed");

    // Detect mode reports and passes.
    let (status, _, body) = get(addr, "/watched/status/201").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body.contains("\"status\":201"), "{body}");
}
