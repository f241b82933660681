//! Rate limits and quotas through the real proxy, configured from TOML as an operator writes
//! it: a burst answered with 429 and the IETF (or legacy) budget headers, budgets kept apart
//! per API key, a quota answered with 403 until the end of its UTC day, and quota usage that
//! survives a restart from the same state file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::config::{Config, load};
use portcullis::identity::api_keys::hash_key;
use portcullis::metrics::Metrics;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::proxy_config::no_rules;

const KEY_A: &str = "rate-limit-test-key-a-0123456789";
const KEY_B: &str = "rate-limit-test-key-b-0123456789";

/// A config directory with a key file holding keys `alpha` (KEY_A) and `beta` (KEY_B), and a
/// config whose `[proxy.limits]` is `limits`, with route `orders` (API key required).
fn config(dir: &Path, backend: &Backend, limits: &str) -> Config {
    let keys = format!(
        "[[keys]]\nid = \"alpha\"\nowner = \"A\"\nprimary = \"{}\"\nscope = \"all\"\n\
         [[keys]]\nid = \"beta\"\nowner = \"B\"\nprimary = \"{}\"\nscope = \"all\"\n",
        hash_key(KEY_A),
        hash_key(KEY_B)
    );
    std::fs::write(dir.join("keys.toml"), keys).expect("write keys");
    let text = format!(
        r#"
[kernel]
enabled = false
[admin]
listen = "off"
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
pool = "orders"
api_key = true
{limits}
"#,
        backend = backend.addr
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).expect("write config");
    load(&path).unwrap_or_else(|e| panic!("config:\n{e}"))
}

async fn start(cfg: &Config) -> (Proxy, Arc<Metrics>, SocketAddr) {
    let metrics = Metrics::new(None);
    let proxy = Proxy::start(&cfg.proxy, no_rules(), metrics.clone())
        .await
        .expect("proxy starts");
    let addr = proxy.local_addrs()[0].1;
    (proxy, metrics, addr)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().expect("ASCII header"))
    }
}

async fn get(addr: SocketAddr, key: &str) -> Reply {
    let req = Request::get(format!("http://{addr}/orders/1"))
        .header("ocp-apim-subscription-key", key)
        .body(Full::<Bytes>::default())
        .expect("request");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

const BURST: &str = r#"
[proxy.limits]
headers_on_success = true
[[proxy.limits.rate]]
name = "burst"
by = ["api_key"]
requests = 1
per = "10s"
burst = 3
[[proxy.limits.rate]]
name = "minute"
by = ["api_key"]
requests = 100
per = "1m"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_429_with_retry_after_and_ratelimit_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start("orders", Proto::Http1).await;
    let cfg = config(dir.path(), &backend, BURST);
    let (proxy, metrics, addr) = start(&cfg).await;

    for left in [2, 1, 0] {
        let r = get(addr, KEY_A).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("ratelimit-policy"),
            "\"burst\";q=3;w=30, \"minute\";q=100;w=60"
        );
        // The burst is nearer exhaustion than the minute; it is full again 10 s per request.
        assert_eq!(
            r.header("ratelimit"),
            format!("\"burst\";r={left};t={}", 10 * (3 - left))
        );
    }
    let r = get(addr, KEY_A).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), "10");
    assert_eq!(r.header("ratelimit-policy"), "\"burst\";q=3;w=30");
    assert_eq!(r.header("ratelimit"), "\"burst\";r=0;t=10");
    assert_eq!(r.header("content-type"), "application/problem+json");
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("problem JSON");
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["status"], 429);
    assert!(
        !r.body.contains(KEY_A) && !r.body.contains("alpha"),
        "{}",
        r.body
    );
    assert_eq!(
        backend.served(),
        3,
        "the refused request never reached the backend"
    );

    // Another key has its own budget.
    let r = get(addr, KEY_B).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("ratelimit"), "\"burst\";r=2;t=10");

    // The gauge counts the keys each limit tracks.
    let text = metrics.render();
    assert!(
        text.contains("portcullis_limit_tracked_keys{limit=\"burst\",kind=\"rate\"} 2"),
        "{text}"
    );
    let shown = metrics.limits.show("alpha");
    assert_eq!(shown[0]["limit"], "burst");
    assert_eq!(shown[0]["remaining"], 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_headers_on_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start("orders", Proto::Http1).await;
    let limits = BURST.replace(
        "headers_on_success = true",
        "headers_on_success = false\nheaders = \"legacy\"",
    );
    let cfg = config(dir.path(), &backend, &limits);
    let (proxy, _metrics, addr) = start(&cfg).await;
    for _ in 0..3 {
        let r = get(addr, KEY_A).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-remaining"), "", "not on success");
        assert_eq!(r.header("ratelimit"), "");
    }
    let r = get(addr, KEY_A).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), "10");
    assert_eq!(r.header("x-ratelimit-limit"), "3");
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    assert_eq!(r.header("x-ratelimit-reset"), "10");
    assert_eq!(r.header("ratelimit"), "");
    proxy.shutdown().await;
}

/// Seconds until the next UTC midnight.
fn until_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_quota_is_403_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start("orders", Proto::Http1).await;
    let limits = r#"
[proxy.limits]
state_file = "quotas.json"
[[proxy.limits.quota]]
name = "daily"
by = ["api_key"]
period = "day"
calls = 2
"#;
    let cfg = config(dir.path(), &backend, limits);
    let (proxy, metrics, addr) = start(&cfg).await;
    assert_eq!(get(addr, KEY_A).await.status, StatusCode::OK);
    assert_eq!(get(addr, KEY_A).await.status, StatusCode::OK);
    let r = get(addr, KEY_A).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!(retry.abs_diff(until_midnight()) <= 2, "{retry}");
    assert_eq!(r.header("ratelimit"), format!("\"daily\";r=0;t={retry}"));
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("problem JSON");
    assert_eq!(body["code"], "quota_exhausted");
    assert!(
        !r.body.contains(KEY_A) && !r.body.contains("alpha"),
        "{}",
        r.body
    );
    assert_eq!(get(addr, KEY_B).await.status, StatusCode::OK);

    // Stop as the daemon does (drain, then write the counters) and start again.
    proxy.shutdown().await;
    metrics.limits.flush().expect("state written");
    drop(metrics);
    let state = std::fs::read_to_string(dir.path().join("quotas.json")).expect("state file");
    assert!(!state.contains(KEY_A), "keys never reach the state file");

    let cfg = config(dir.path(), &backend, limits);
    let (proxy, _metrics, addr) = start(&cfg).await;
    assert_eq!(get(addr, KEY_A).await.status, StatusCode::FORBIDDEN);
    // beta used 1 of 2 before the restart: one more, then refused.
    assert_eq!(get(addr, KEY_B).await.status, StatusCode::OK);
    assert_eq!(get(addr, KEY_B).await.status, StatusCode::FORBIDDEN);
    assert_eq!(backend.served(), 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_starts_empty_and_is_kept_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start("orders", Proto::Http1).await;
    std::fs::write(dir.path().join("quotas.json"), "{ not json").expect("write");
    let limits = r#"
[proxy.limits]
state_file = "quotas.json"
quota_status = 429
[[proxy.limits.quota]]
name = "hourly"
by = ["api_key"]
period = "hour"
calls = 1
"#;
    let cfg = config(dir.path(), &backend, limits);
    let (proxy, metrics, addr) = start(&cfg).await;
    assert_eq!(get(addr, KEY_A).await.status, StatusCode::OK);
    let r = get(addr, KEY_A).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_status = 429"
    );
    assert!(r.header("retry-after").parse::<u64>().expect("seconds") <= 3600);
    assert!(dir.path().join("quotas.json.corrupt").exists());
    proxy.shutdown().await;
    metrics.limits.flush().expect("state written");
    assert!(
        std::fs::read_to_string(dir.path().join("quotas.json"))
            .expect("a fresh state file")
            .contains("\"hourly\"")
    );
}
