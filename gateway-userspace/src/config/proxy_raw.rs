//! The raw proxy sections (`[admin]`, `[proxy]`, `[trusted_proxies]`, `[[listeners]]`,
//! `[[pools]]`, `[[token_providers]]`, `[[routes]]`) as written: which keys exist in which
//! table, typed but not yet checked. [`super::proxy_compile`] and [`super::token`] own what the
//! values mean; [`super::raw`] the other sections. Every sub-table is read even where compile
//! will refuse it (`tls` on a plain listener), so unknown keys inside it are still reported.

use toml::Spanned;

use super::proxy_model::{Balance, ClientIpHeader, TlsVersion, UpstreamProtocol};
use super::raw::Strings;
use super::reader::{Field, Keyword, Table};
use super::size::RawSize;
use super::source::{Diagnostics, Span};

/// `[admin]`.
#[derive(Default)]
pub(crate) struct RawAdmin {
    pub listen: Field<String>,
    pub allow_remote: Field<bool>,
}

impl RawAdmin {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            listen: t.value("listen", d),
            allow_remote: t.value("allow_remote", d),
        };
        t.finish(d);
        raw
    }
}

/// `[proxy]`: settings of the proxy as a whole.
#[derive(Default)]
pub(crate) struct RawProxy {
    pub drain_timeout: Field<String>,
    /// `[proxy.limits]`: rate limits and quotas; `None` when absent or not a table (reported).
    pub limits: Option<super::limits::RawLimits>,
}

impl RawProxy {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            drain_timeout: t.value("drain_timeout", d),
            limits: t
                .table("limits", d)
                .read_optional(d, super::limits::RawLimits::read),
        };
        t.finish(d);
        raw
    }
}

/// `[trusted_proxies]`.
#[derive(Default)]
pub(crate) struct RawTrustedProxies {
    pub load_balancers: Field<Strings>,
    pub proxies: Field<Strings>,
    pub client_ip_header: Field<ClientIpHeader>,
}

impl RawTrustedProxies {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            load_balancers: t.value("load_balancers", d),
            proxies: t.value("proxies", d),
            client_ip_header: t.keyword("client_ip_header", d),
        };
        t.finish(d);
        raw
    }
}

/// `protocol` of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListenerProtocol {
    Https,
    Http,
}

/// `http_mode` of a plain listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpMode {
    Redirect,
    Serve,
}

/// One `[[listeners]]` entry.
pub(crate) struct RawListener {
    pub header: Span,
    pub name: Option<Spanned<String>>,
    pub bind: Option<Spanned<String>>,
    pub protocol: Option<Spanned<ListenerProtocol>>,
    pub proxy_protocol: Field<bool>,
    pub max_connections: Field<i64>,
    pub handshake_timeout: Field<String>,
    pub header_timeout: Field<String>,
    pub idle_timeout: Field<String>,
    pub http_mode: Field<HttpMode>,
    pub redirect_port: Field<i64>,
    pub tls: Field<RawListenerTls>,
    /// `[listeners.client_certs]` (mTLS): `None` when absent or not a table (reported).
    pub client_certs: Option<super::client_certs::RawClientCerts>,
}

impl RawListener {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            name: t.required("name", d),
            bind: t.required("bind", d),
            protocol: t.required_keyword("protocol", d),
            proxy_protocol: t.value("proxy_protocol", d),
            max_connections: t.value("max_connections", d),
            handshake_timeout: t.value("handshake_timeout", d),
            header_timeout: t.value("header_timeout", d),
            idle_timeout: t.value("idle_timeout", d),
            http_mode: t.keyword("http_mode", d),
            redirect_port: t.value("redirect_port", d),
            tls: t.table("tls", d).read_field(d, RawListenerTls::read),
            client_certs: t
                .table("client_certs", d)
                .read_optional(d, super::client_certs::RawClientCerts::read),
        };
        t.finish(d);
        raw
    }
}

/// `[listeners.tls]`.
pub(crate) struct RawListenerTls {
    pub header: Span,
    pub certificates: Field<Vec<RawCertificate>>,
    pub min_version: Field<TlsVersion>,
    pub alpn: Field<Strings>,
    /// `None` when `hsts` is not a table (reported); absent reads as all defaults.
    pub hsts: Option<RawHsts>,
}

impl RawListenerTls {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let certificates = match t.tables_field("certificates", d) {
            Field::Present(tables) => {
                let span = tables.span();
                let certs = tables
                    .into_inner()
                    .into_iter()
                    .map(|t| RawCertificate::read(t, d))
                    .collect();
                Field::Present(Spanned::new(span, certs))
            }
            Field::Absent => Field::Absent,
            Field::Invalid => Field::Invalid,
        };
        let raw = Self {
            header: t.span().clone(),
            certificates,
            min_version: t.keyword("min_version", d),
            alpn: t.value("alpn", d),
            hsts: t.table("hsts", d).read_or_default(d, RawHsts::read),
        };
        t.finish(d);
        raw
    }
}

/// One `{ cert = ..., key = ... }` of `listeners.tls.certificates`.
pub(crate) struct RawCertificate {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

impl RawCertificate {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            cert: t.required("cert", d),
            key: t.required("key", d),
        };
        t.finish(d);
        raw
    }
}

/// `[listeners.tls.hsts]`.
#[derive(Default)]
pub(crate) struct RawHsts {
    pub enabled: Field<bool>,
    pub max_age: Field<String>,
    pub include_subdomains: Field<bool>,
    pub preload: Field<bool>,
}

impl RawHsts {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            enabled: t.value("enabled", d),
            max_age: t.value("max_age", d),
            include_subdomains: t.value("include_subdomains", d),
            preload: t.value("preload", d),
        };
        t.finish(d);
        raw
    }
}

/// One `[[pools]]` entry.
pub(crate) struct RawPool {
    pub name: Option<Spanned<String>>,
    pub endpoints: Option<Spanned<Strings>>,
    pub balance: Field<Balance>,
    pub protocol: Field<UpstreamProtocol>,
    pub idle_timeout: Field<String>,
    pub tls: Option<RawPoolTls>,
    /// `[pools.auth]`: `None` when absent or not a table (reported).
    pub auth: Option<super::backend_auth::RawBackendAuth>,
    pub health: Option<RawHealth>,
    /// `None` when `passive` is not a table (reported); absent reads as all defaults.
    pub passive: Option<RawPassive>,
}

impl RawPool {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            name: t.required("name", d),
            endpoints: t.required("endpoints", d),
            balance: t.keyword("balance", d),
            protocol: t.keyword("protocol", d),
            idle_timeout: t.value("idle_timeout", d),
            tls: t.table("tls", d).read_optional(d, RawPoolTls::read),
            auth: t
                .table("auth", d)
                .read_optional(d, super::backend_auth::RawBackendAuth::read),
            health: t.table("health", d).read_optional(d, RawHealth::read),
            passive: t.table("passive", d).read_or_default(d, RawPassive::read),
        };
        t.finish(d);
        raw
    }
}

/// `[pools.tls]`.
pub(crate) struct RawPoolTls {
    pub header: Span,
    pub ca: Option<Spanned<String>>,
    pub server_name: Field<String>,
    pub client_cert: Field<String>,
    pub client_key: Field<String>,
}

impl RawPoolTls {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            ca: t.required("ca", d),
            server_name: t.value("server_name", d),
            client_cert: t.value("client_cert", d),
            client_key: t.value("client_key", d),
        };
        t.finish(d);
        raw
    }
}

/// `[pools.health]`.
pub(crate) struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Field<String>,
    pub timeout: Field<String>,
    pub healthy_threshold: Field<i64>,
    pub unhealthy_threshold: Field<i64>,
}

impl RawHealth {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            path: t.required("path", d),
            interval: t.value("interval", d),
            timeout: t.value("timeout", d),
            healthy_threshold: t.value("healthy_threshold", d),
            unhealthy_threshold: t.value("unhealthy_threshold", d),
        };
        t.finish(d);
        raw
    }
}

/// `[pools.passive]`.
#[derive(Default)]
pub(crate) struct RawPassive {
    pub consecutive_failures: Field<i64>,
    pub ejection_time: Field<String>,
}

impl RawPassive {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            consecutive_failures: t.value("consecutive_failures", d),
            ejection_time: t.value("ejection_time", d),
        };
        t.finish(d);
        raw
    }
}

/// `path_match` of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathMatchKind {
    Prefix,
    Exact,
}

/// One `[[routes]]` entry.
pub(crate) struct RawRoute {
    pub header: Span,
    pub name: Option<Spanned<String>>,
    pub product: Field<String>,
    pub hosts: Field<Strings>,
    pub path: Option<Spanned<String>>,
    pub path_match: Field<PathMatchKind>,
    pub methods: Field<Strings>,
    pub pool: Option<Spanned<String>>,
    pub retries: Field<i64>,
    pub max_body_size: Field<RawSize>,
    pub websocket: Field<bool>,
    /// `None` when `timeouts` is not a table (reported); absent reads as all defaults.
    pub timeouts: Option<RawTimeouts>,
    /// `[routes.token]`: `None` when absent or not a table (reported).
    pub token: Option<RawRouteToken>,
    /// Requires an API key (needs `[api_keys]`).
    pub api_key: Field<bool>,
    /// `[routes.client_cert]`: `None` when absent or not a table (reported).
    pub client_cert: Option<super::client_certs::RawRouteClientCert>,
    /// `[routes.cors]`: `None` when absent or not a table (reported).
    pub cors: Option<super::cors::RawCors>,
    /// `[routes.response]`: `None` when absent or not a table (reported).
    pub response: Option<super::response::RawResponse>,
    /// `[routes.validation]`: `None` when absent or not a table (reported).
    pub validation: Option<super::validation::RawValidation>,
}

impl RawRoute {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            name: t.required("name", d),
            product: t.value("product", d),
            hosts: t.value("hosts", d),
            path: t.required("path", d),
            path_match: t.keyword("path_match", d),
            methods: t.value("methods", d),
            pool: t.required("pool", d),
            retries: t.value("retries", d),
            max_body_size: t.value("max_body_size", d),
            websocket: t.value("websocket", d),
            timeouts: t.table("timeouts", d).read_or_default(d, RawTimeouts::read),
            token: t.table("token", d).read_optional(d, RawRouteToken::read),
            api_key: t.value("api_key", d),
            client_cert: t
                .table("client_cert", d)
                .read_optional(d, super::client_certs::RawRouteClientCert::read),
            cors: t
                .table("cors", d)
                .read_optional(d, super::cors::RawCors::read),
            response: t
                .table("response", d)
                .read_optional(d, super::response::RawResponse::read),
            validation: t
                .table("validation", d)
                .read_optional(d, super::validation::RawValidation::read),
        };
        t.finish(d);
        raw
    }
}

/// `[routes.timeouts]`.
#[derive(Default)]
pub(crate) struct RawTimeouts {
    pub connect: Field<String>,
    pub response_headers: Field<String>,
    pub total: Field<String>,
}

impl RawTimeouts {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            connect: t.value("connect", d),
            response_headers: t.value("response_headers", d),
            total: t.value("total", d),
        };
        t.finish(d);
        raw
    }
}

/// `[api_keys]`: the key file and where clients present keys.
pub(crate) struct RawApiKeys {
    pub file: Option<Spanned<String>>,
    pub header: Field<String>,
    pub query_param: Field<String>,
}

impl RawApiKeys {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            file: t.required("file", d),
            header: t.value("header", d),
            query_param: t.value("query_param", d),
        };
        t.finish(d);
        raw
    }
}

/// One `[[token_providers]]` entry.
pub(crate) struct RawTokenProvider {
    pub name: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Spanned<Strings>>,
    pub algorithms: Field<Strings>,
    pub clock_skew: Field<String>,
    pub max_token_size: Field<RawSize>,
    pub require_typ: Field<String>,
    pub ca: Field<String>,
    pub jwks_refresh: Field<String>,
    pub unknown_kid_interval: Field<String>,
    pub jwks_file: Field<String>,
    pub jwks: Field<String>,
    pub startup: Field<crate::identity::oidc::StartupPolicy>,
    pub token_cache_entries: Field<i64>,
}

impl RawTokenProvider {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            name: t.required("name", d),
            issuer: t.required("issuer", d),
            audiences: t.required("audiences", d),
            algorithms: t.value("algorithms", d),
            clock_skew: t.value("clock_skew", d),
            max_token_size: t.value("max_token_size", d),
            require_typ: t.value("require_typ", d),
            ca: t.value("ca", d),
            jwks_refresh: t.value("jwks_refresh", d),
            unknown_kid_interval: t.value("unknown_kid_interval", d),
            jwks_file: t.value("jwks_file", d),
            jwks: t.value("jwks", d),
            startup: t.keyword("startup", d),
            token_cache_entries: t.value("token_cache_entries", d),
        };
        t.finish(d);
        raw
    }
}

/// `[routes.token]`: the route requires a bearer token.
pub(crate) struct RawRouteToken {
    pub provider: Option<Spanned<String>>,
    pub sources: Field<Strings>,
    pub forward_authorization: Field<bool>,
    pub rules: Vec<RawTokenRule>,
    pub claim_headers: Vec<RawClaimHeader>,
}

impl RawRouteToken {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            provider: t.required("provider", d),
            sources: t.value("sources", d),
            forward_authorization: t.value("forward_authorization", d),
            rules: t
                .tables("rules", d)
                .into_iter()
                .map(|t| RawTokenRule::read(t, d))
                .collect(),
            claim_headers: t
                .tables("claim_headers", d)
                .into_iter()
                .map(|t| RawClaimHeader::read(t, d))
                .collect(),
        };
        t.finish(d);
        raw
    }
}

/// One `[[routes.token.rules]]` entry.
pub(crate) struct RawTokenRule {
    pub header: Span,
    pub methods: Field<Strings>,
    /// `None` when absent (reported) or not an array of tables.
    pub require: Field<Vec<RawRequirement>>,
}

impl RawTokenRule {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let methods = t.value("methods", d);
        let require = match t.tables_field("require", d) {
            Field::Present(tables) => {
                let span = tables.span();
                let list = tables
                    .into_inner()
                    .into_iter()
                    .map(|t| RawRequirement::read(t, d))
                    .collect();
                Field::Present(Spanned::new(span, list))
            }
            Field::Absent => Field::Absent,
            Field::Invalid => Field::Invalid,
        };
        let raw = Self {
            header: t.span().clone(),
            methods,
            require,
        };
        t.finish(d);
        raw
    }
}

// `op` of a claim requirement.
pub(crate) use crate::identity::authz::Op as ClaimOp;

/// One `[[routes.token.rules.require]]` entry.
pub(crate) struct RawRequirement {
    pub header: Span,
    pub claim: Option<Spanned<String>>,
    pub any: Field<Strings>,
    pub all: Field<Strings>,
    pub separator: Field<String>,
    pub op: Field<ClaimOp>,
}

impl RawRequirement {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            claim: t.required("claim", d),
            any: t.value("any", d),
            all: t.value("all", d),
            separator: t.value("separator", d),
            op: t.keyword("op", d),
        };
        t.finish(d);
        raw
    }
}

/// One `[[routes.token.claim_headers]]` entry.
pub(crate) struct RawClaimHeader {
    pub header: Option<Spanned<String>>,
    pub claims: Option<Spanned<Strings>>,
}

impl RawClaimHeader {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.required("header", d),
            claims: t.required("claims", d),
        };
        t.finish(d);
        raw
    }
}

impl Keyword for ClaimOp {
    const WORDS: &'static [(&'static str, Self)] =
        &[("equals", Self::Equals), ("contains", Self::Contains)];
}

impl Keyword for ListenerProtocol {
    const WORDS: &'static [(&'static str, Self)] = &[("https", Self::Https), ("http", Self::Http)];
}

impl Keyword for HttpMode {
    const WORDS: &'static [(&'static str, Self)] =
        &[("redirect", Self::Redirect), ("serve", Self::Serve)];
}

impl Keyword for TlsVersion {
    const WORDS: &'static [(&'static str, Self)] = &[("1.2", Self::Tls12), ("1.3", Self::Tls13)];
}

impl Keyword for ClientIpHeader {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("x-forwarded-for", Self::XForwardedFor),
        ("forwarded", Self::Forwarded),
        ("none", Self::None),
    ];
}

impl Keyword for Balance {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("round_robin", Self::RoundRobin),
        ("least_outstanding", Self::LeastOutstanding),
        ("power_of_two", Self::PowerOfTwo),
    ];
}

impl Keyword for UpstreamProtocol {
    const WORDS: &'static [(&'static str, Self)] = &[("http1", Self::Http1), ("h2", Self::H2)];
}

impl Keyword for PathMatchKind {
    const WORDS: &'static [(&'static str, Self)] =
        &[("prefix", Self::Prefix), ("exact", Self::Exact)];
}
