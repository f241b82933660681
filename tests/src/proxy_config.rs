//! Proxy configurations built in code for tests that exercise one route: a plain HTTP
//! listener on a free loopback port, route `orders` (`/orders` and below) to one backend, and
//! whatever identity the test puts on it. Tests of the config file itself write TOML instead.

use std::sync::Arc;
use std::time::Duration;

use portcullis::config::{
    Endpoint, ListenerConfig, ListenerKind, PassiveEjection, PathMatch, PlainMode, PoolConfig,
    ProxyConfig, RouteAuth, RouteConfig, RouteTimeouts, TokenProviderConfig,
};
use portcullis::identity::jwt::ValidationPolicy;
use portcullis::identity::oidc::OidcConfig;
use portcullis::proxy::backstop::Backstop;
use portcullis::rules::RuleSet;
use portcullis::rules::table::compile;

use crate::backend::Backend;

/// A backstop with no rules: nothing is refused at accept.
pub fn no_rules() -> Backstop {
    Backstop::new(
        Arc::new(compile(&RuleSet::default()).expect("empty rules")),
        None,
    )
}

/// Listener `web` (plain HTTP, serving), route `orders` with `auth`, pool `orders` (`backend`).
pub fn orders_route(backend: &Backend, auth: RouteAuth) -> ProxyConfig {
    ProxyConfig {
        listeners: vec![ListenerConfig {
            name: "web".into(),
            bind: "127.0.0.1:0".parse().expect("loopback"),
            kind: ListenerKind::Http(PlainMode::Serve),
            proxy_protocol: false,
            max_connections: 1000,
            handshake_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
        }],
        trusted: Default::default(),
        routes: vec![RouteConfig {
            name: "orders".into(),
            product: None,
            hosts: vec![],
            path: PathMatch::Prefix("/orders".into()),
            methods: vec![],
            pool: 0,
            timeouts: RouteTimeouts {
                connect: Duration::from_secs(1),
                response_headers: Duration::from_secs(5),
                total: Duration::from_secs(5),
            },
            retries: 0,
            max_body_bytes: 1 << 16,
            websocket: false,
            auth,
            cors: None,
            response: None,
            validation: None,
        }],
        pools: vec![PoolConfig {
            name: "orders".into(),
            endpoints: vec![Endpoint {
                authority: backend.addr.to_string(),
                addr: backend.addr,
            }],
            balance: Default::default(),
            protocol: Default::default(),
            tls: None,
            health: None,
            passive: PassiveEjection {
                consecutive_failures: 0,
                ejection_time: Duration::from_secs(1),
            },
            idle_timeout: Duration::from_secs(10),
            auth: None,
        }],
        token_providers: vec![],
        api_keys: None,
        drain_timeout: Duration::from_secs(1),
    }
}

/// Token provider `idp` for `issuer` (keys by discovery), accepting RFC 9068 access tokens
/// (`typ: at+jwt`) for `audience`.
pub fn discovered_provider(issuer: &str, audience: &str, oidc: OidcConfig) -> TokenProviderConfig {
    TokenProviderConfig {
        name: "idp".into(),
        oidc,
        policy: ValidationPolicy {
            require_typ: Some("at+jwt".into()),
            ..ValidationPolicy::new(issuer, vec![audience.to_string()])
        },
        jwks_file: None,
        ca_file: None,
    }
}

/// Writes `text` as `<dir>/portcullis.toml`, loads it (panicking with the errors if it is
/// refused) and starts the proxy; returns it with its first listener's address.
pub async fn start_from_toml(
    dir: &std::path::Path,
    text: &str,
) -> (portcullis::proxy::Proxy, std::net::SocketAddr) {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).expect("write the config");
    let cfg = portcullis::config::load(&path).unwrap_or_else(|e| panic!("config refused:\n{e}"));
    let proxy = portcullis::proxy::Proxy::start(
        &cfg.proxy,
        no_rules(),
        portcullis::metrics::Metrics::new(None),
    )
    .await
    .expect("start the proxy");
    let addr = proxy.local_addrs()[0].1;
    (proxy, addr)
}
