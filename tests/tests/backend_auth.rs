//! The gateway authenticating itself to backends, configured from TOML: HTTP Basic with the
//! password from a file or the environment, OAuth 2 client-credentials tokens from the real
//! `oidc-provider` (fetched once, reused, refreshed before they expire), and a client
//! certificate for a backend that requires mTLS. The client's own `Authorization` never
//! reaches such a backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::config::{ClientCertsConfig, Config, TlsConfig, TlsVersion, load};
use portcullis::identity::mtls::{ClientAuth, RevocationPolicy};
use portcullis::metrics::Metrics;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::oidc::{self, OidcProvider, RESOURCE};
use portcullis_tests::pki::TestPki;
use portcullis_tests::proxy_config::no_rules;

fn load_config(dir: &Path, pools: &str) -> Config {
    let text = format!(
        r#"
[kernel]
enabled = false

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
http_mode = "serve"

{pools}

[[routes]]
name = "orders"
path = "/orders"
pool = "orders"
"#
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    load(&path).unwrap_or_else(|e| panic!("{e}"))
}

async fn start(cfg: &Config) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(&cfg.proxy, no_rules(), Metrics::new(None))
        .await
        .unwrap();
    let addr = proxy.local_addrs()[0].1;
    (proxy, addr)
}

/// GET /orders/1 with the client's own `Authorization`; the status and what the backend saw.
async fn call(addr: SocketAddr) -> (StatusCode, serde_json::Value) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{addr}/orders/1"))
        .header("authorization", "Bearer client-token")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, v.get("headers").cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_from_a_file_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    std::fs::write(dir.path().join("orders.pass"), "s3cret pass\n").unwrap();
    let cfg = load_config(
        dir.path(),
        &format!(
            "[[pools]]\nname = \"orders\"\nendpoints = [\"{}\"]\n[pools.auth]\ntype = \"basic\"\n\
             username = \"gateway\"\npassword_file = \"orders.pass\"\n",
            backend.addr
        ),
    );
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "the password never shows in debug output"
    );
    let (_proxy, addr) = start(&cfg).await;
    let (status, seen) = call(addr).await;
    assert_eq!(status, StatusCode::OK);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("gateway:s3cret pass")
    );
    assert_eq!(seen["authorization"], expected.as_str());

    // The variable name is unique to this test.
    let var = "PORTCULLIS_TEST_BACKEND_PASSWORD";
    // SAFETY: set before any thread of this test reads the environment for it.
    unsafe { std::env::set_var(var, "from-env") };
    let cfg = load_config(
        dir.path(),
        &format!(
            "[[pools]]\nname = \"orders\"\nendpoints = [\"{}\"]\n[pools.auth]\ntype = \"basic\"\n\
             username = \"gateway\"\npassword_env = \"{var}\"\n",
            backend.addr
        ),
    );
    let (_proxy, addr) = start(&cfg).await;
    let (_, seen) = call(addr).await;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("gateway:from-env")
    );
    assert_eq!(seen["authorization"], expected.as_str());
}

fn jwt_claims(header_value: &str) -> serde_json::Value {
    let token = header_value
        .strip_prefix("Bearer ")
        .expect("a bearer token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_reused_and_refreshed_before_expiry() {
    if !oidc::available("client_credentials_tokens_are_reused_and_refreshed_before_expiry") {
        return;
    }
    // Tokens live 6 s; the gateway replaces them 3 s before expiry.
    let provider = tokio::task::spawn_blocking(|| OidcProvider::start_with_token_ttl(6))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("orders", Proto::Http1).await;
    std::fs::write(dir.path().join("client.secret"), "rs256-secret\n").unwrap();
    let cfg = load_config(
        dir.path(),
        &format!(
            "[[pools]]\nname = \"orders\"\nendpoints = [\"{}\"]\n[pools.auth]\n\
             type = \"client_credentials\"\ntoken_url = \"{}/token\"\nclient_id = \"rs256-client\"\n\
             client_secret_file = \"client.secret\"\nclient_auth = \"post\"\nscope = \"api:read\"\n\
             resource = \"{RESOURCE}\"\nrefresh_before = \"3s\"\n",
            backend.addr,
            provider.issuer()
        ),
    );
    let (_proxy, addr) = start(&cfg).await;
    let count = |p: &OidcProvider| p.token_count();

    let (status, seen) = call(addr).await;
    assert_eq!(status, StatusCode::OK);
    let first = seen["authorization"].as_str().expect("a token").to_owned();
    let claims = jwt_claims(&first);
    assert_eq!(claims["client_id"], "rs256-client");
    assert_eq!(claims["aud"], RESOURCE);
    for _ in 0..10 {
        let (_, seen) = call(addr).await;
        assert_eq!(seen["authorization"], first.as_str(), "the token is reused");
    }
    let (provider, fetched) = tokio::task::spawn_blocking(move || {
        let n = count(&provider);
        (provider, n)
    })
    .await
    .unwrap();
    assert_eq!(fetched, 1, "one token request for eleven backend requests");

    // Before the first token expires (at 6 s) a new one is in use: refreshed ahead of time.
    let deadline = Instant::now() + Duration::from_millis(5_500);
    let second = loop {
        let (status, seen) = call(addr).await;
        assert_eq!(status, StatusCode::OK);
        let now = seen["authorization"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the token was not refreshed before expiry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exp_first = jwt_claims(&first)["exp"].as_u64().unwrap();
    let exp_second = jwt_claims(&second)["exp"].as_u64().unwrap();
    assert!(exp_second > exp_first);
    let fetched = tokio::task::spawn_blocking(move || count(&provider))
        .await
        .unwrap();
    assert_eq!(fetched, 2);
    // The client's own credentials never reached the backend.
    assert_ne!(second, "Bearer client-token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let backend_pki = TestPki::new("backend");
    let gateway_clients = TestPki::new("gateway-clients");
    // The backend: TLS for backend.internal, client certificates from gateway_clients required.
    let tls = portcullis::proxy::tls::server_config(&TlsConfig {
        certificates: vec![backend_pki.server(&["backend.internal"]).certified_key()],
        certificate_files: vec![],
        min_version: TlsVersion::Tls12,
        alpn: vec![b"http/1.1".to_vec()],
        hsts: None,
        client_certs: Some(ClientCertsConfig {
            mode: ClientAuth::Required,
            roots: gateway_clients.roots(),
            crls: vec![],
            revocation: RevocationPolicy::default(),
            ca_files: vec![],
            crl_files: vec![],
        }),
    })
    .unwrap();
    let backend = Backend::start_tls("orders", Proto::Http1, tls).await;
    std::fs::write(dir.path().join("backend-ca.pem"), backend_pki.ca_pem()).unwrap();
    let (cert, key) = gateway_clients
        .client("gateway", &[])
        .write(dir.path(), "gateway-client");
    let pool = |identity: &str| {
        format!(
            "[[pools]]\nname = \"orders\"\nendpoints = [\"{}\"]\n[pools.tls]\nca = \"backend-ca.pem\"\n\
             server_name = \"backend.internal\"\n{identity}",
            backend.addr
        )
    };

    let cfg = load_config(dir.path(), &pool(""));
    let (_proxy, addr) = start(&cfg).await;
    let (status, _) = call(addr).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "no client certificate");
    assert_eq!(backend.served(), 0);

    let cfg = load_config(
        dir.path(),
        &pool(&format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert.display(),
            key.display()
        )),
    );
    let (_proxy, addr) = start(&cfg).await;
    let (status, _) = call(addr).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "with the gateway's client certificate"
    );
    assert_eq!(backend.served(), 1);
}
