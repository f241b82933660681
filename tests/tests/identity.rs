//! Tokens through the proxy, issued by a real OpenID provider (`oidc-provider` from npm,
//! started by the test): a valid token reaches the backend with its claims as headers; no
//! token, a token of the wrong audience, a forged or garbage token are 401 with
//! `WWW-Authenticate`; the seeds' role rules per method give 403 for a client without
//! API.Write on POST; client-sent copies of claim headers never reach the backend.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::config::{ListenerConfig, ProxyConfig, RouteAuth, RouteToken};
use portcullis::identity::authz::{
    ClaimHeader, ClaimRequirement, MethodRule, RoutePolicy, TokenSource,
};
use portcullis::identity::oidc::OidcConfig;
use portcullis::metrics::Metrics;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::oidc::{self, ES256_CLIENT, OidcProvider, RESOURCE, RS256_CLIENT};
use portcullis_tests::proxy_config::{discovered_provider, no_rules, orders_route};

/// The seeds' example: any of API.Read or API.Write for every method, API.Write for POST, PUT
/// and DELETE; X-User-Id from `oid`, else `sub` (client credentials tokens carry `sub`).
fn orders_token() -> RouteToken {
    RouteToken {
        provider: 0,
        sources: vec![TokenSource::Bearer],
        policy: RoutePolicy {
            rules: vec![
                MethodRule {
                    methods: vec![],
                    requirements: vec![ClaimRequirement::any_of(
                        "roles",
                        &["API.Read", "API.Write"],
                    )],
                },
                MethodRule {
                    methods: vec![Method::POST, Method::PUT, Method::DELETE],
                    requirements: vec![ClaimRequirement::any_of("roles", &["API.Write"])],
                },
            ],
        },
        claim_headers: vec![ClaimHeader {
            header: "x-user-id".parse().unwrap(),
            claims: vec!["oid".into(), "sub".into()],
        }],
        forward_authorization: false,
    }
}

fn config(issuer: &str, audience: &str, backend: &Backend) -> ProxyConfig {
    let auth = RouteAuth {
        token: Some(orders_token()),
        ..Default::default()
    };
    ProxyConfig {
        listeners: vec![ListenerConfig {
            max_connections: 100,
            ..orders_route(backend, RouteAuth::default())
                .listeners
                .remove(0)
        }],
        token_providers: vec![discovered_provider(
            issuer,
            audience,
            OidcConfig::new(issuer),
        )],
        ..orders_route(backend, auth)
    }
}

struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: serde_json::Value,
}

async fn call(
    addr: std::net::SocketAddr,
    method: Method,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/orders/1"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(b.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        www_authenticate,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    }
}

async fn start(issuer: &str, audience: &str, backend: &Backend) -> (Proxy, std::net::SocketAddr) {
    let backstop = no_rules();
    let proxy = Proxy::start(
        &config(issuer, audience, backend),
        backstop,
        Metrics::new(None),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.ready() {
        assert!(
            Instant::now() < deadline,
            "the provider's keys never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = proxy.local_addrs()[0].1;
    (proxy, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_claim_headers_through_the_proxy() {
    if !oidc::available("tokens_roles_and_claim_headers_through_the_proxy") {
        return;
    }
    let provider = tokio::task::spawn_blocking(OidcProvider::start)
        .await
        .unwrap();
    let issuer = provider.issuer().to_string();
    let backend = Backend::start("orders", Proto::Http1).await;
    let (_proxy, addr) = start(&issuer, RESOURCE, &backend).await;
    let (provider, reader, writer) = tokio::task::spawn_blocking(move || {
        let (r, w) = (provider.token(RS256_CLIENT), provider.token(ES256_CLIENT));
        (provider, r, w)
    })
    .await
    .unwrap();

    // A reader (roles API.Read) may GET; its sub reaches the backend as X-User-Id, a copy sent
    // by the client does not, and the Authorization header is not forwarded.
    let r = call(addr, Method::GET, Some(&reader), &[("x-user-id", "admin")]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let seen = &r.body["headers"];
    assert_eq!(
        seen["x-user-id"], RS256_CLIENT,
        "client credentials tokens carry the client as sub"
    );
    assert!(seen.get("authorization").is_none());
    // ...but not POST (API.Write needed): 403 insufficient_scope.
    let r = call(addr, Method::POST, Some(&reader), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.www_authenticate
            .as_deref()
            .is_some_and(|w| w.contains("insufficient_scope"))
    );
    // A writer (API.Read and API.Write, ES256) may POST.
    assert_eq!(
        call(addr, Method::POST, Some(&writer), &[]).await.status,
        StatusCode::OK
    );

    // No token: 401 with a challenge and no error code (RFC 6750 section 3.1).
    let r = call(addr, Method::GET, None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.www_authenticate.as_deref(),
        Some("Bearer realm=\"portcullis\"")
    );
    // Garbage and a tampered signature: 401 invalid_token; the body never echoes the token.
    for bad in ["not.a.token", &format!("{}x", &writer[..writer.len() - 1])] {
        let r = call(addr, Method::GET, Some(bad), &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(
            r.www_authenticate
                .as_deref()
                .is_some_and(|w| w.contains("invalid_token"))
        );
        assert!(!r.body.to_string().contains(bad));
    }
    assert_eq!(
        backend.served(),
        2,
        "only the two authorised requests reached the backend"
    );

    // The same provider with another audience: every token is refused.
    let other = Backend::start("other", Proto::Http1).await;
    let (_p2, addr2) = start(&issuer, "https://other.example", &other).await;
    let r = call(addr2, Method::GET, Some(&reader), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(other.served(), 0);
    drop(provider);
}
