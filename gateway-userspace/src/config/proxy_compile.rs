//! Compiles the proxy sections: the admin endpoint, trusted proxies, listeners (with their
//! certificates read and checked) and backend pools (with names resolved and CA bundles read).
//! Routes compile in [`super::routes`]. Like the rest of the compile layer, every check runs
//! even after one fails, and defaults are the safe choice: HSTS on, admin on loopback.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use toml::Spanned;

use super::api_keys;
use super::compile::{Names, prefixes_from, resolve};
use super::duration;
use super::error::ErrorKind;
use super::proxy_model::{
    AdminConfig, Balance, ClientIpHeader, Endpoint, HealthCheck, Hsts, ListenerConfig,
    ListenerKind, PassiveEjection, PlainMode, PoolConfig, ProxyConfig, TlsConfig, TlsVersion,
    TrustedProxies, UpstreamProtocol, UpstreamTls,
};
use super::proxy_raw::{
    HttpMode, ListenerProtocol, RawAdmin, RawApiKeys, RawHealth, RawHsts, RawListener,
    RawListenerTls, RawPassive, RawPool, RawPoolTls, RawProxy, RawRoute, RawTokenProvider,
    RawTrustedProxies,
};
use super::reader::Field;
use super::routes;
use super::source::Diagnostics;
use super::tls_files::{self, PairFile};
use super::token;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Defaults and limits, named once: the docs, the example and the schema quote them.
pub(crate) mod defaults {
    use super::{DAY, Duration, HOUR, MINUTE};

    pub(crate) const ADMIN_LISTEN: &str = "127.0.0.1:9901";
    pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub(crate) const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

    pub(crate) const MAX_CONNECTIONS: i64 = 10_000;
    pub(crate) const MAX_CONNECTIONS_LIMIT: i64 = 1_000_000;
    pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Handshake and header timeouts: longer ones let slow clients hold sockets.
    pub(crate) const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
    pub(crate) const MAX_IDLE_TIMEOUT: Duration = HOUR;
    pub(crate) const REDIRECT_PORT: u16 = 443;

    pub(crate) const HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 86_400);
    /// hstspreload.org: "The max-age must be at least 31536000 seconds (1 year)".
    pub(crate) const HSTS_PRELOAD_MIN_AGE: Duration = Duration::from_secs(31_536_000);
    pub(crate) const MAX_HSTS_MAX_AGE: Duration = Duration::from_secs(10 * 365 * 86_400);

    pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub(crate) const MAX_HEALTH_INTERVAL: Duration = HOUR;
    pub(crate) const HEALTHY_THRESHOLD: i64 = 2;
    pub(crate) const UNHEALTHY_THRESHOLD: i64 = 3;
    pub(crate) const MAX_THRESHOLD: i64 = 100;
    pub(crate) const CONSECUTIVE_FAILURES: i64 = 5;
    pub(crate) const MAX_CONSECUTIVE_FAILURES: i64 = 1000;
    pub(crate) const EJECTION_TIME: Duration = Duration::from_secs(30);
    pub(crate) const MAX_EJECTION_TIME: Duration = HOUR;

    pub(crate) const RETRIES: i64 = 1;
    pub(crate) const MAX_RETRIES: i64 = 5;
    pub(crate) const MAX_BODY_BYTES: u64 = 10 << 20;
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub(crate) const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
    pub(crate) const RESPONSE_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
    pub(crate) const MAX_RESPONSE_HEADERS_TIMEOUT: Duration = HOUR;
    pub(crate) const TOTAL_TIMEOUT: Duration = MINUTE;
    pub(crate) const MAX_TOTAL_TIMEOUT: Duration = DAY;
}

/// The proxy sections of the raw config, moved out of it together.
pub(crate) struct RawProxySections {
    pub proxy: Option<RawProxy>,
    pub trusted_proxies: Option<RawTrustedProxies>,
    pub listeners: Vec<RawListener>,
    pub pools: Vec<RawPool>,
    pub token_providers: Vec<RawTokenProvider>,
    pub api_keys: Field<RawApiKeys>,
    pub routes: Vec<RawRoute>,
}

/// `[admin]` compiled, with what listeners need to avoid its port.
pub(crate) struct CompiledAdmin {
    pub config: AdminConfig,
    /// Where `listen` is set, for a bind conflict message; `None` when it is the default.
    line: Option<usize>,
}

pub(crate) fn admin(raw: Option<RawAdmin>, d: &mut Diagnostics) -> CompiledAdmin {
    let default: SocketAddr = defaults::ADMIN_LISTEN
        .parse()
        .unwrap_or_else(|_| unreachable!("the default admin address parses"));
    let Some(raw) = raw else {
        // `admin` was not a table (reported): no further checks.
        return CompiledAdmin {
            config: AdminConfig { listen: None },
            line: None,
        };
    };
    let Some(listen) = raw.listen.present() else {
        let listen = match raw.listen {
            Field::Invalid => None,
            _ => Some(default),
        };
        return CompiledAdmin {
            config: AdminConfig { listen },
            line: None,
        };
    };
    let line = Some(d.source().location(listen.span().start).line);
    if listen.get_ref() == "off" {
        return CompiledAdmin {
            config: AdminConfig { listen: None },
            line,
        };
    }
    let Ok(addr) = listen.get_ref().parse::<SocketAddr>() else {
        let kind = ErrorKind::SocketAddr {
            key: "admin.listen".into(),
            value: listen.get_ref().clone(),
            example: "`127.0.0.1:9901`, or `off`",
        };
        d.at(&listen.span(), kind);
        return CompiledAdmin {
            config: AdminConfig { listen: None },
            line,
        };
    };
    if !addr.ip().to_canonical().is_loopback() && !raw.allow_remote.value_or(false) {
        d.at(&listen.span(), ErrorKind::AdminNotLoopback { addr });
    }
    CompiledAdmin {
        config: AdminConfig { listen: Some(addr) },
        line,
    }
}

pub(crate) fn proxy(
    raw: RawProxySections,
    admin: &CompiledAdmin,
    d: &mut Diagnostics,
) -> ProxyConfig {
    let drain_timeout = raw.proxy.as_ref().map_or(Field::Absent, |p| {
        duration(
            &p.drain_timeout,
            "proxy.drain_timeout",
            defaults::MAX_DRAIN_TIMEOUT,
            d,
        )
    });
    let trusted = trusted(raw.trusted_proxies.as_ref(), d);
    // Whether PROXY headers have a trusted source; unknown (so no complaint) when the
    // section itself was refused.
    let load_balancers_declared = match &raw.trusted_proxies {
        None => true,
        Some(t) => match &t.load_balancers {
            Field::Present(list) => !list.get_ref().is_empty(),
            Field::Invalid => true,
            Field::Absent => false,
        },
    };
    // Declared even when refused, so routes requiring certificates are not also reported.
    let client_certs_offered = raw.listeners.iter().any(|l| {
        l.client_certs
            .as_ref()
            .is_some_and(super::client_certs::RawClientCerts::asks)
    });
    let listeners = listeners(raw.listeners, load_balancers_declared, admin, d);
    let (pools, pool_names) = pools(raw.pools, d);
    let (token_providers, provider_names) = token::providers(raw.token_providers, d);
    // Declared even when refused, so routes requiring keys are not also reported.
    let api_keys_declared = !matches!(raw.api_keys, Field::Absent);
    let api_keys = api_keys::api_keys(&raw.api_keys, d);
    let mut routes = routes::routes(
        raw.routes,
        &pool_names,
        &provider_names,
        api_keys_declared,
        client_certs_offered,
        d,
    );
    if let Some(keys) = &api_keys {
        api_keys::check_scopes(keys, &routes, d);
    }
    super::limits::attach(
        raw.proxy.as_ref().and_then(|p| p.limits.as_ref()),
        &mut routes,
        d,
    );
    ProxyConfig {
        listeners,
        trusted,
        routes,
        pools,
        token_providers,
        api_keys,
        drain_timeout: drain_timeout.value_or(defaults::DRAIN_TIMEOUT),
    }
}

fn trusted(raw: Option<&RawTrustedProxies>, d: &mut Diagnostics) -> TrustedProxies {
    let Some(raw) = raw else {
        return TrustedProxies::default();
    };
    TrustedProxies {
        load_balancers: prefixes_from(&raw.load_balancers, d),
        proxies: prefixes_from(&raw.proxies, d),
        client_ip_header: raw.client_ip_header.value_or(ClientIpHeader::default()),
    }
}

/// A duration key: `Present` when it parsed within `(0, max]`, `Invalid` when refused
/// (reported here), `Absent` when not written.
pub(crate) fn duration(
    field: &Field<String>,
    key: &str,
    max: Duration,
    d: &mut Diagnostics,
) -> Field<Duration> {
    duration_with(field, key, d, |s| duration::parse_bounded(s, max))
}

fn duration_with(
    field: &Field<String>,
    key: &str,
    d: &mut Diagnostics,
    parse: impl FnOnce(&str) -> Result<Duration, duration::DurationError>,
) -> Field<Duration> {
    match field {
        Field::Absent => Field::Absent,
        Field::Invalid => Field::Invalid,
        Field::Present(s) => match parse(s.get_ref()) {
            Ok(v) => Field::Present(Spanned::new(s.span(), v)),
            Err(e) => {
                let kind = ErrorKind::Duration {
                    key: key.to_owned(),
                    value: s.get_ref().clone(),
                    reason: e.to_string(),
                };
                d.at(&s.span(), kind);
                Field::Invalid
            }
        },
    }
}

/// An integer key within `min..=max`; out-of-range values are reported and read as `Invalid`.
pub(crate) fn integer(
    field: &Field<i64>,
    key: &str,
    (min, max): (i64, i64),
    d: &mut Diagnostics,
) -> Field<i64> {
    match field {
        Field::Present(v) if !(min..=max).contains(v.get_ref()) => {
            let kind = ErrorKind::OutOfRange {
                key: key.to_owned(),
                value: *v.get_ref(),
                min,
                max,
            };
            d.at(&v.span(), kind);
            Field::Invalid
        }
        other => other.clone(),
    }
}

/// Whether two sockets cannot both be bound. Port 0 asks for any free port, so never clashes.
/// `[::]` is taken as dual-stack (Linux's default, `net.ipv6.bindv6only = 0`), so it clashes
/// with IPv4 addresses on its port too.
fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |w: IpAddr, other: IpAddr| w.is_unspecified() && (w.is_ipv6() || other.is_ipv4());
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

fn listeners(
    raw: Vec<RawListener>,
    load_balancers_declared: bool,
    admin: &CompiledAdmin,
    d: &mut Diagnostics,
) -> Vec<ListenerConfig> {
    let mut names = Names::new("listener");
    // Bound so far, with who binds it, for conflict messages.
    let mut bound: Vec<(SocketAddr, String)> = Vec::new();
    if let Some(addr) = admin.config.listen {
        let owner = match admin.line {
            Some(line) => format!("the admin endpoint (line {line})"),
            None => format!("the admin endpoint (the default `admin.listen = \"{addr}\"`)"),
        };
        bound.push((addr, owner));
    }
    let mut out = Vec::with_capacity(raw.len());
    for l in raw {
        if let Some(name) = &l.name {
            names.check(name, d);
        }
        let name = l
            .name
            .as_ref()
            .map_or_else(String::new, |n| n.get_ref().clone());

        let bind = l.bind.as_ref().and_then(|b| {
            let Ok(addr) = b.get_ref().parse::<SocketAddr>() else {
                let kind = ErrorKind::SocketAddr {
                    key: "listeners.bind".into(),
                    value: b.get_ref().clone(),
                    example: "`0.0.0.0:8443`",
                };
                d.at(&b.span(), kind);
                return None;
            };
            if let Some((other, owner)) = bound.iter().find(|(o, _)| binds_conflict(addr, *o)) {
                let kind = ErrorKind::BindConflict {
                    addr,
                    other: *other,
                    owner: owner.clone(),
                };
                d.at(&b.span(), kind);
            } else {
                let line = d.source().location(b.span().start).line;
                bound.push((addr, format!("listener `{name}` (line {line})")));
            }
            Some(addr)
        });

        let kind = listener_kind(&l, &name, d);

        let proxy_protocol = l.proxy_protocol.present().filter(|p| *p.get_ref());
        if let Some(p) = proxy_protocol.filter(|_| !load_balancers_declared) {
            d.at(&p.span(), ErrorKind::ProxyProtocolUntrusted);
        }

        let max_connections = integer(
            &l.max_connections,
            "listeners.max_connections",
            (1, defaults::MAX_CONNECTIONS_LIMIT),
            d,
        )
        .value_or(defaults::MAX_CONNECTIONS);
        let timeout = |field: &Field<String>, key: &str, max, default, d: &mut Diagnostics| {
            duration(field, key, max, d).value_or(default)
        };
        out.push(ListenerConfig {
            name,
            bind: bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            kind,
            proxy_protocol: proxy_protocol.is_some(),
            max_connections: usize::try_from(max_connections).unwrap_or(0),
            handshake_timeout: timeout(
                &l.handshake_timeout,
                "listeners.handshake_timeout",
                defaults::MAX_CLIENT_TIMEOUT,
                defaults::HANDSHAKE_TIMEOUT,
                d,
            ),
            header_timeout: timeout(
                &l.header_timeout,
                "listeners.header_timeout",
                defaults::MAX_CLIENT_TIMEOUT,
                defaults::HEADER_TIMEOUT,
                d,
            ),
            idle_timeout: timeout(
                &l.idle_timeout,
                "listeners.idle_timeout",
                defaults::MAX_IDLE_TIMEOUT,
                defaults::LISTENER_IDLE_TIMEOUT,
                d,
            ),
        });
    }
    out
}

/// TLS or plain, with the keys that apply to only one of them checked against `protocol`.
/// The result is a placeholder when `protocol` is missing or TLS is (both reported).
fn listener_kind(l: &RawListener, name: &str, d: &mut Diagnostics) -> ListenerKind {
    let protocol = l.protocol.as_ref().map(|p| *p.get_ref());
    // Certificates are read even on a listener that refuses them, so every error shows.
    let tls = match &l.tls {
        Field::Present(t) => Some(listener_tls(t.get_ref(), d)),
        Field::Absent | Field::Invalid => None,
    };
    const ONLY_HTTP: &str = "to `protocol = \"http\"` listeners";
    if let (Some(ListenerProtocol::Https), Some(mode)) = (protocol, l.http_mode.present()) {
        let kind = ErrorKind::NotApplicable {
            key: "listeners.http_mode".into(),
            applies: ONLY_HTTP,
        };
        d.at(&mode.span(), kind);
    }
    let mode = l.http_mode.value_or(HttpMode::Redirect);
    let redirect_port = integer(
        &l.redirect_port,
        "listeners.redirect_port",
        (1, u16::MAX.into()),
        d,
    );
    if let Some(port) = redirect_port.present() {
        let applies = match (protocol, mode) {
            (Some(ListenerProtocol::Https), _) => Some(ONLY_HTTP),
            (_, HttpMode::Serve) => Some("with `http_mode = \"redirect\"`"),
            _ => None,
        };
        if let Some(applies) = applies {
            let kind = ErrorKind::NotApplicable {
                key: "listeners.redirect_port".into(),
                applies,
            };
            d.at(&port.span(), kind);
        }
    }
    let client_certs = l
        .client_certs
        .as_ref()
        .and_then(|c| super::client_certs::listener(c, d));
    let placeholder = ListenerKind::Http(PlainMode::Serve);
    match protocol {
        Some(ListenerProtocol::Https) => match (tls, &l.tls) {
            (Some(tls), _) => ListenerKind::Https(TlsConfig {
                client_certs,
                ..tls
            }),
            (None, Field::Absent) => {
                let kind = ErrorKind::TlsMissing {
                    listener: name.to_owned(),
                };
                d.at(&l.header, kind);
                placeholder
            }
            (None, _) => placeholder,
        },
        Some(ListenerProtocol::Http) => {
            if let Field::Present(t) = &l.tls {
                let kind = ErrorKind::NotApplicable {
                    key: "listeners.tls".into(),
                    applies: "to `protocol = \"https\"` listeners",
                };
                d.at(&t.span(), kind);
            }
            if let Some(c) = &l.client_certs {
                let kind = ErrorKind::NotApplicable {
                    key: "listeners.client_certs".into(),
                    applies: "to `protocol = \"https\"` listeners",
                };
                d.at(&c.header, kind);
            }
            ListenerKind::Http(match mode {
                HttpMode::Serve => PlainMode::Serve,
                HttpMode::Redirect => PlainMode::RedirectToHttps {
                    port: u16::try_from(redirect_port.value_or(defaults::REDIRECT_PORT.into()))
                        .unwrap_or(defaults::REDIRECT_PORT),
                },
            })
        }
        None => placeholder,
    }
}

fn listener_tls(raw: &RawListenerTls, d: &mut Diagnostics) -> TlsConfig {
    let mut certificates = Vec::new();
    let mut certificate_files = Vec::new();
    match &raw.certificates {
        Field::Absent => {
            let kind = ErrorKind::Missing {
                key: "certificates",
                table: "[listeners.tls]".into(),
            };
            d.at(&raw.header, kind);
        }
        Field::Invalid => {}
        Field::Present(list) => {
            if list.get_ref().is_empty() {
                let kind = ErrorKind::EmptyList {
                    key: "listeners.tls.certificates".into(),
                    hint: "list at least one `{ cert = \"...\", key = \"...\" }`",
                };
                d.at(&list.span(), kind);
            }
            for pair in list.get_ref() {
                let cert = pair.cert.as_ref().and_then(|c| {
                    let path = resolve("listeners.tls.certificates.cert", c, d)?;
                    tls_files::certificates(&path)
                        .map_err(|e| d.at(&c.span(), e.into()))
                        .ok()
                        .map(|chain| (path, chain, c.span()))
                });
                let key = pair.key.as_ref().and_then(|k| {
                    let path = resolve("listeners.tls.certificates.key", k, d)?;
                    tls_files::private_key(&path)
                        .map_err(|e| d.at(&k.span(), e.into()))
                        .ok()
                        .map(|key| (path, key, k.span()))
                });
                let (Some((cert_path, chain, cert_span)), Some((key_path, key, key_span))) =
                    (cert, key)
                else {
                    continue;
                };
                match tls_files::certified_key(chain, &cert_path, key, &key_path) {
                    Ok(certified) => {
                        certificates.push(certified);
                        certificate_files.push((cert_path, key_path));
                    }
                    Err((PairFile::Cert, e)) => d.at(&cert_span, e.into()),
                    Err((PairFile::Key, e)) => d.at(&key_span, e.into()),
                }
            }
        }
    }

    TlsConfig {
        certificates,
        certificate_files,
        min_version: raw.min_version.value_or(TlsVersion::Tls12),
        alpn: alpn(&raw.alpn, d),
        hsts: raw.hsts.as_ref().and_then(|h| hsts(h, d)),
        client_certs: None,
    }
}

/// ALPN ids in preference order; only what the proxy speaks.
fn alpn(raw: &Field<Vec<Spanned<String>>>, d: &mut Diagnostics) -> Vec<Vec<u8>> {
    const KNOWN: [&str; 2] = ["h2", "http/1.1"];
    let Some(list) = raw.present() else {
        return KNOWN.iter().map(|p| p.as_bytes().to_vec()).collect();
    };
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: "listeners.tls.alpn".into(),
            hint: "list `h2`, `http/1.1` or both, or remove the key for both",
        };
        d.at(&list.span(), kind);
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for p in list.get_ref() {
        let id = p.get_ref();
        if !KNOWN.contains(&id.as_str()) {
            let kind = ErrorKind::UnknownKeyword {
                key: "listeners.tls.alpn".into(),
                value: id.clone(),
                expected: KNOWN.to_vec(),
            };
            d.at(&p.span(), kind);
        } else if out.iter().any(|o| o == id.as_bytes()) {
            let kind = ErrorKind::Duplicate {
                key: "listeners.tls.alpn".into(),
                value: id.clone(),
            };
            d.at(&p.span(), kind);
        } else {
            out.push(id.as_bytes().to_vec());
        }
    }
    out
}

/// HSTS is on by default for https listeners: turning it off must be written.
fn hsts(raw: &RawHsts, d: &mut Diagnostics) -> Option<Hsts> {
    let max_age = duration_with(&raw.max_age, "listeners.tls.hsts.max_age", d, |s| {
        duration::parse_up_to(s, defaults::MAX_HSTS_MAX_AGE)
    });
    let hsts = Hsts {
        max_age: max_age.value_or(defaults::HSTS_MAX_AGE),
        include_subdomains: raw.include_subdomains.value_or(false),
        preload: raw.preload.value_or(false),
    };
    if !raw.enabled.value_or(true) {
        return None;
    }
    if let Some(preload) = raw.preload.present().filter(|p| *p.get_ref()) {
        if !hsts.include_subdomains && !matches!(raw.include_subdomains, Field::Invalid) {
            let kind = ErrorKind::HstsPreload {
                requirement: "`include_subdomains = true`",
            };
            d.at(&preload.span(), kind);
        }
        if hsts.max_age < defaults::HSTS_PRELOAD_MIN_AGE && !matches!(max_age, Field::Invalid) {
            let kind = ErrorKind::HstsPreload {
                requirement: "a `max_age` of at least 365 days",
            };
            d.at(&preload.span(), kind);
        }
    }
    Some(hsts)
}

/// The pools, and every pool's name in order (`None` where it was missing) for resolving
/// route references by index.
fn pools(raw: Vec<RawPool>, d: &mut Diagnostics) -> (Vec<PoolConfig>, Vec<Option<String>>) {
    let mut names = Names::new("pool");
    let mut pools = Vec::with_capacity(raw.len());
    let mut pool_names = Vec::with_capacity(raw.len());
    for p in raw {
        if let Some(name) = &p.name {
            names.check(name, d);
        }
        pool_names.push(p.name.as_ref().map(|n| n.get_ref().clone()));
        let idle_timeout = duration(
            &p.idle_timeout,
            "pools.idle_timeout",
            defaults::MAX_IDLE_TIMEOUT,
            d,
        );
        pools.push(PoolConfig {
            name: p
                .name
                .as_ref()
                .map_or_else(String::new, |n| n.get_ref().clone()),
            endpoints: p
                .endpoints
                .as_ref()
                .map(|e| endpoints(e, d))
                .unwrap_or_default(),
            balance: p.balance.value_or(Balance::default()),
            protocol: p.protocol.value_or(UpstreamProtocol::default()),
            tls: p.tls.as_ref().and_then(|t| upstream_tls(t, "pools.tls", d)),
            health: p.health.as_ref().map(|h| health(h, d)),
            passive: passive(p.passive.as_ref(), d),
            idle_timeout: idle_timeout.value_or(defaults::POOL_IDLE_TIMEOUT),
            auth: p
                .auth
                .as_ref()
                .and_then(|a| super::backend_auth::backend_auth(a, d)),
        });
    }
    (pools, pool_names)
}

/// `host:port` strings, each resolved now (the first address), so a name that does not
/// resolve fails `check` instead of every request.
fn endpoints(list: &Spanned<Vec<Spanned<String>>>, d: &mut Diagnostics) -> Vec<Endpoint> {
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: "pools.endpoints".into(),
            hint: "list at least one `host:port`",
        };
        d.at(&list.span(), kind);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in list.get_ref() {
        let authority = e.get_ref();
        let (host, port) = match split_endpoint(authority) {
            Ok(parts) => parts,
            Err(reason) => {
                let kind = ErrorKind::Endpoint {
                    value: authority.clone(),
                    reason,
                };
                d.at(&e.span(), kind);
                continue;
            }
        };
        if !seen.insert(authority.to_ascii_lowercase()) {
            let kind = ErrorKind::Duplicate {
                key: "pools.endpoints".into(),
                value: authority.clone(),
            };
            d.at(&e.span(), kind);
            continue;
        }
        let addr = match host {
            EndpointHost::Ip(ip) => SocketAddr::new(ip, port),
            EndpointHost::Name(name) => match (name, port).to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(addr) => addr,
                    None => {
                        let kind = ErrorKind::Resolve {
                            endpoint: authority.clone(),
                            reason: "the name has no address".into(),
                        };
                        d.at(&e.span(), kind);
                        continue;
                    }
                },
                Err(err) => {
                    let kind = ErrorKind::Resolve {
                        endpoint: authority.clone(),
                        reason: err.to_string(),
                    };
                    d.at(&e.span(), kind);
                    continue;
                }
            },
        };
        out.push(Endpoint {
            authority: authority.clone(),
            addr,
        });
    }
    out
}

enum EndpointHost<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// Splits `host:port`, `1.2.3.4:port` or `[v6]:port`; the reason says what is wrong.
fn split_endpoint(s: &str) -> Result<(EndpointHost<'_>, u16), String> {
    if s.contains("://") {
        return Err("write it without a scheme, as `host:port`".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or_else(|| "write an IPv6 address as `[2001:db8::1]:8080`".to_owned())?;
        let ip = v6
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        (EndpointHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| "no port".to_owned())?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets, as `[2001:db8::1]:8080`".into());
        }
        let host = match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => EndpointHost::Ip(IpAddr::V4(ip)),
            Err(_) => {
                if let Some(problem) = routes::dns_name_problem(host) {
                    return Err(format!("the host {problem}"));
                }
                EndpointHost::Name(host)
            }
        };
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be connected to".into()),
        Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(format!("`{port}` is not a port number (1 to 65535)")),
    }
}

/// A `[pools.tls]` or `[cluster.tls]` table (`table` names it in errors): the CA bundle the
/// server must chain to, the name to check, and the gateway's client certificate.
pub(crate) fn upstream_tls(
    raw: &RawPoolTls,
    table: &str,
    d: &mut Diagnostics,
) -> Option<UpstreamTls> {
    let server_name = raw.server_name.present().and_then(|n| {
        match rustls_pki_types::ServerName::try_from(n.get_ref().as_str()) {
            Ok(_) => Some(n.get_ref().clone()),
            Err(_) => {
                let kind = ErrorKind::ServerName {
                    key: format!("{table}.server_name"),
                    value: n.get_ref().clone(),
                };
                d.at(&n.span(), kind);
                None
            }
        }
    });
    let ca = raw.ca.as_ref()?;
    let ca_file = resolve(&format!("{table}.ca"), ca, d)?;
    let roots = tls_files::root_store(&ca_file)
        .map_err(|e| d.at(&ca.span(), e.into()))
        .ok()?;
    Some(UpstreamTls {
        roots: std::sync::Arc::new(roots),
        ca_file,
        server_name,
        client_identity: super::backend_auth::client_identity(
            &raw.client_cert,
            &raw.client_key,
            &raw.header,
            table,
            d,
        ),
    })
}

fn health(raw: &RawHealth, d: &mut Diagnostics) -> HealthCheck {
    let path = raw.path.as_ref().map_or_else(String::new, |p| {
        if let Some(reason) = routes::health_path_problem(p.get_ref()) {
            let kind = ErrorKind::Path {
                key: "pools.health.path".into(),
                value: p.get_ref().clone(),
                reason,
            };
            d.at(&p.span(), kind);
        }
        p.get_ref().clone()
    });
    let interval = duration(
        &raw.interval,
        "pools.health.interval",
        defaults::MAX_HEALTH_INTERVAL,
        d,
    );
    let timeout = duration(
        &raw.timeout,
        "pools.health.timeout",
        defaults::MAX_HEALTH_INTERVAL,
        d,
    );
    let check = HealthCheck {
        path,
        interval: interval.value_or(defaults::HEALTH_INTERVAL),
        timeout: timeout.value_or(defaults::HEALTH_TIMEOUT),
        healthy_threshold: threshold(&raw.healthy_threshold, "healthy_threshold", d)
            .value_or(defaults::HEALTHY_THRESHOLD) as u32,
        unhealthy_threshold: threshold(&raw.unhealthy_threshold, "unhealthy_threshold", d)
            .value_or(defaults::UNHEALTHY_THRESHOLD) as u32,
    };
    // A probe that may outlive its interval would overlap the next one.
    let invalid = |f: &Field<Duration>| matches!(f, Field::Invalid);
    if check.timeout >= check.interval && !invalid(&interval) && !invalid(&timeout) {
        let span = timeout
            .present()
            .or(interval.present())
            .map(|s| s.span())
            .unwrap_or_default();
        let kind = ErrorKind::DurationOrder {
            key: "pools.health.timeout".into(),
            value: check.timeout,
            relation: "shorter than",
            other: "pools.health.interval".into(),
            other_value: check.interval,
        };
        d.at(&span, kind);
    }
    check
}

fn threshold(field: &Field<i64>, key: &'static str, d: &mut Diagnostics) -> Field<i64> {
    integer(
        field,
        &format!("pools.health.{key}"),
        (1, defaults::MAX_THRESHOLD),
        d,
    )
}

fn passive(raw: Option<&RawPassive>, d: &mut Diagnostics) -> PassiveEjection {
    let default = PassiveEjection {
        consecutive_failures: defaults::CONSECUTIVE_FAILURES as u32,
        ejection_time: defaults::EJECTION_TIME,
    };
    let Some(raw) = raw else {
        return default;
    };
    PassiveEjection {
        consecutive_failures: integer(
            &raw.consecutive_failures,
            "pools.passive.consecutive_failures",
            (0, defaults::MAX_CONSECUTIVE_FAILURES),
            d,
        )
        .value_or(defaults::CONSECUTIVE_FAILURES) as u32,
        ejection_time: duration(
            &raw.ejection_time,
            "pools.passive.ejection_time",
            defaults::MAX_EJECTION_TIME,
            d,
        )
        .value_or(default.ejection_time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn bind_conflicts() {
        let c = |a, b| binds_conflict(addr(a), addr(b));
        assert!(c("0.0.0.0:443", "0.0.0.0:443"));
        assert!(c("0.0.0.0:443", "10.0.0.1:443"));
        assert!(c("10.0.0.1:443", "0.0.0.0:443"));
        assert!(c("[::]:443", "10.0.0.1:443"));
        assert!(c("[::1]:443", "[::]:443"));
        assert!(!c("0.0.0.0:443", "[::1]:443"));
        assert!(!c("10.0.0.1:443", "10.0.0.2:443"));
        assert!(!c("0.0.0.0:443", "0.0.0.0:80"));
        assert!(!c("127.0.0.1:0", "127.0.0.1:0"));
    }

    #[test]
    fn endpoint_forms() {
        let ok = |s| split_endpoint(s).map(|(_, p)| p);
        assert_eq!(ok("127.0.0.1:80"), Ok(80));
        assert_eq!(ok("[::1]:8080"), Ok(8080));
        assert_eq!(ok("backend.internal:9000"), Ok(9000));
        let err = |s| split_endpoint(s).err().unwrap_or_default();
        assert_eq!(err("backend"), "no port");
        assert_eq!(
            err("http://a:80"),
            "write it without a scheme, as `host:port`"
        );
        assert_eq!(
            err("::1:80"),
            "write an IPv6 address in brackets, as `[2001:db8::1]:8080`"
        );
        assert_eq!(
            err("[::1]"),
            "write an IPv6 address as `[2001:db8::1]:8080`"
        );
        assert_eq!(err("[nope]:80"), "`nope` is not an IPv6 address");
        assert_eq!(err("a:0"), "port 0 cannot be connected to");
        assert_eq!(err("a:+80"), "`+80` is not a port number (1 to 65535)");
        assert_eq!(err("a:70000"), "`70000` is not a port number (1 to 65535)");
        assert_eq!(err(":80"), "the host is empty");
        assert_eq!(err("a b:80"), "the host contains ` `");
    }
}
