//! Backend responses on their way to the client, configured from TOML: headers naming the
//! backend's software never leave the gateway, a backend 5xx with internal details becomes the
//! gateway's problem document (status kept), a route's allowed status codes are enforced, and
//! response bodies are validated against an OpenAPI document or a JSON Schema.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::proxy_config::start_from_toml;

/// The echo backend's responses, documented: `/orders/{id}` answers with the echo (valid),
/// `/invoices/{id}` is documented with a field the echo never has (invalid), `/orders/{id}/status/{code}`
/// documents 200 and 404 only.
const OPENAPI: &str = r#"
openapi: 3.1.0
info: {title: echo, version: "1"}
paths:
  /checked/orders/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    get:
      responses:
        "200":
          description: the order
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Echo'}
  /checked/invoices/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    get:
      responses:
        "200":
          description: the invoice
          content:
            application/json:
              schema:
                type: object
                required: [invoice_id]
  /checked/orders/{id}/status/{code}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
      - {name: code, in: path, required: true, schema: {type: integer}}
    get:
      responses:
        "200": {description: ok}
        "404":
          description: gone
          content:
            application/json:
              schema: {type: object, required: [status]}
components:
  schemas:
    Echo:
      type: object
      required: [backend, method, uri]
      properties:
        method: {enum: [GET]}
        body_len: {type: integer, minimum: 0}
"#;

async fn start(dir: &std::path::Path, backend: &Backend) -> (Proxy, SocketAddr) {
    std::fs::write(dir.join("echo.openapi.yaml"), OPENAPI).unwrap();
    std::fs::write(
        dir.join("echo.schema.json"),
        r#"{"type": "object", "required": ["backend", "uri"], "properties": {"backend": {"const": "orders"}}}"#,
    )
    .unwrap();
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

[[routes]]
name = "checked"
path = "/checked"
pool = "orders"
[routes.response]
openapi = "echo.openapi.yaml"

[[routes]]
name = "checked-detect"
path = "/audited"
pool = "orders"
[routes.response]
schema = "echo.schema.json"
action = "detect"
max_body_size = "1KiB"

[[routes]]
name = "small"
path = "/small"
pool = "orders"
[routes.response]
schema = "echo.schema.json"
max_body_size = "1KiB"
"#,
        backend = backend.addr
    );
    start_from_toml(dir, &config).await
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
    get_with(addr, path, &[]).await
}

async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_follow_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    // The echo matches the documented order: passed on byte for byte.
    let (status, _, body) = get(addr, "/checked/orders/7").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["uri"], "/checked/orders/7");

    // The invoice schema requires a field the backend does not send: 502, and the client
    // learns nothing of the backend's answer.
    let (status, _, body) = get(addr, "/checked/invoices/7").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "response_not_allowed");
    assert!(
        !body.contains("invoice_id") && !body.contains("\"backend\""),
        "{body}"
    );

    // Documented statuses pass (404 with its body schema), an undocumented one does not.
    let (status, _, _) = get(addr, "/checked/orders/7/status/404").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(addr, "/checked/orders/7/status/201").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "201 is not documented");
    // A path the document does not describe is not judged.
    let (status, _, _) = get(addr, "/checked/elsewhere/status/201").await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_schema_detect_mode_and_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;

    // The echo names its backend "orders", as the schema requires.
    let (status, _, _) = get(addr, "/small/x").await;
    assert_eq!(status, StatusCode::OK);
    // A response larger than max_body_size cannot be checked: refused in prevent mode...
    let pad = "p".repeat(2048);
    let (status, _, body) = get_with(addr, "/small/x", &[("x-pad", &pad)]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // ...passed on whole in detect mode.
    let (status, _, body) = get_with(addr, "/audited/x", &[("x-pad", &pad)]).await;
    assert_eq!(status, StatusCode::OK);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-pad"], pad.as_str());
    // Only 2xx bodies are held to the schema: a 404 passes either way.
    let (status, _, _) = get(addr, "/small/status/404").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
