//! CORS through the proxy, configured from TOML: the gateway answers preflights itself (no
//! credential needed, the backend never sees them), refuses what the route does not allow by
//! leaving the CORS headers out, and adds the headers to actual responses for allowed origins
//! only, refusals included.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::identity::api_keys::hash_key;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::proxy_config::start_from_toml;

const KEY: &str = "cors-test-key-0123456789";
const APP: &str = "https://app.example.com";

async fn start(dir: &std::path::Path, backend: &Backend) -> (Proxy, SocketAddr) {
    std::fs::write(
        dir.join("keys.toml"),
        format!(
            "[[keys]]\nid = \"web\"\nowner = \"Web app\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key(KEY)
        ),
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

[api_keys]
file = "keys.toml"

[[routes]]
name = "orders"
path = "/orders"
methods = ["GET", "POST"]
pool = "orders"
api_key = true
[routes.cors]
allowed_origins = ["{APP}", "https://*.partner.example"]
allowed_headers = ["Ocp-Apim-Subscription-Key", "Content-Type"]
exposed_headers = ["X-Request-Id"]
max_age = "5m"

[[routes]]
name = "account"
path = "/account"
pool = "orders"
[routes.cors]
allowed_origins = ["{APP}"]
allow_credentials = true

[[routes]]
name = "plain"
path = "/plain"
pool = "orders"
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
) -> (StatusCode, HeaderMap) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(b.body(Empty::new()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let _ = resp.into_body().collect().await;
    (status, headers)
}

fn preflight<'a>(
    origin: &'a str,
    method: &'a str,
    headers: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if let Some(asked) = headers {
        h.push(("access-control-request-headers", asked));
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;
    let acao = header::ACCESS_CONTROL_ALLOW_ORIGIN;

    // (origin, method, request headers, path, allowed)
    let matrix = [
        (
            APP,
            "POST",
            Some("content-type, ocp-apim-subscription-key"),
            "/orders/1",
            true,
        ),
        (APP, "GET", None, "/orders", true),
        ("https://shop.partner.example", "GET", None, "/orders", true),
        ("https://partner.example", "GET", None, "/orders", false),
        (
            "https://app.example.com.evil.test",
            "GET",
            None,
            "/orders",
            false,
        ),
        ("http://app.example.com", "GET", None, "/orders", false),
        ("null", "GET", None, "/orders", false),
        (APP, "POST", Some("x-debug"), "/orders", false),
        (APP, "GET", None, "/account", true),
    ];
    for (origin, method, asked, path, allowed) in matrix {
        let (status, h) = send(
            addr,
            Method::OPTIONS,
            path,
            &preflight(origin, method, asked),
        )
        .await;
        let case = format!("{origin} {method} {asked:?} {path}");
        assert_eq!(status, StatusCode::NO_CONTENT, "{case}");
        assert_eq!(h.contains_key(&acao), allowed, "{case}");
        if allowed {
            assert_eq!(h[&acao], origin, "{case}: the origin is echoed, never *");
            assert!(
                h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS),
                "{case}"
            );
        } else {
            assert!(
                !h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS),
                "{case}"
            );
            assert!(
                !h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
                "{case}"
            );
        }
        assert!(
            h[header::VARY].to_str().unwrap().contains("Origin"),
            "{case}"
        );
    }
    // A method the route does not serve at all: no route answers the preflight, so it is an
    // ordinary OPTIONS request (405), without CORS headers either way.
    let (status, h) = send(
        addr,
        Method::OPTIONS,
        "/orders",
        &preflight(APP, "DELETE", None),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!h.contains_key(&acao));
    let (_, h) = send(
        addr,
        Method::OPTIONS,
        "/orders",
        &preflight(APP, "GET", None),
    )
    .await;
    assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "300");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
    assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    let (_, h) = send(
        addr,
        Method::OPTIONS,
        "/account",
        &preflight(APP, "GET", None),
    )
    .await;
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    // No preflight reached the backend, and none needed the API key.
    assert_eq!(backend.served(), 0);

    // A route without [routes.cors]: OPTIONS is an ordinary request (no CORS answer).
    let (status, h) = send(
        addr,
        Method::OPTIONS,
        "/plain",
        &preflight(APP, "GET", None),
    )
    .await;
    assert!(!h.contains_key(&acao));
    assert_ne!(status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_responses_carry_cors_headers_for_allowed_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(dir.path(), &backend).await;
    let acao = header::ACCESS_CONTROL_ALLOW_ORIGIN;
    let key = ("ocp-apim-subscription-key", KEY);

    let (status, h) = send(addr, Method::GET, "/orders/1", &[("origin", APP), key]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[&acao], APP);
    assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
    assert!(h[header::VARY].to_str().unwrap().contains("Origin"));

    // A refusal is readable by the allowed origin's script too.
    let (status, h) = send(addr, Method::GET, "/orders/1", &[("origin", APP)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h[&acao], APP);

    // Another origin gets the response (CORS is enforced by browsers) but no CORS headers.
    let (status, h) = send(
        addr,
        Method::GET,
        "/orders/1",
        &[("origin", "https://evil.test"), key],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!h.contains_key(&acao));
    assert!(!h.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));

    let (_, h) = send(addr, Method::GET, "/account", &[("origin", APP)]).await;
    assert_eq!(h[&acao], APP);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
}
