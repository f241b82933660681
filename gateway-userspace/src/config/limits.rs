//! Rate limits and quotas: `[proxy.limits]` (how budgets are reported and stored),
//! `[[proxy.limits.rate]]` (GCRA rate limits) and `[[proxy.limits.quota]]` (call and byte
//! quotas over an hour, a day or a month), read here and compiled into a [`LimitsConfig`]
//! that every route it applies to carries in [`RouteLimits`]. The runtime is
//! `crate::limits`; docs/rate-limits.md describes both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::compile::{Names, resolve};
use super::error::ErrorKind;
use super::proxy_compile::{duration, integer};
use super::proxy_model::RouteConfig;
use super::raw::Strings;
use super::reader::{Field, Keyword, Table};
use super::size::{self, RawSize};
use super::source::{Diagnostics, Span};

/// Defaults and bounds, named once: the docs, the examples and the schema quote them.
pub(crate) mod defaults {
    use std::time::Duration;

    pub(crate) const MAX_TRACKED_KEYS: i64 = 100_000;
    pub(crate) const MAX_TRACKED_KEYS_LIMIT: i64 = 10_000_000;
    pub(crate) const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
    pub(crate) const MAX_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
    pub(crate) const QUOTA_STATUS: i64 = 403;
    pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(30);
    pub(crate) const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(3600);
    pub(crate) const MAX_PER: Duration = Duration::from_secs(86_400);
    pub(crate) const MAX_REQUESTS: i64 = 1_000_000_000;
    pub(crate) const IPV4_PREFIX: i64 = 32;
    pub(crate) const IPV6_PREFIX: i64 = 128;
}

/// Which budget headers responses carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09).
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// Only `Retry-After` on refusals.
    None,
}

impl Keyword for HeaderStyle {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("ietf", Self::Ietf),
        ("legacy", Self::Legacy),
        ("none", Self::None),
    ];
}

/// The calendar period of a quota, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Keyword for Period {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("hour", Self::Hour),
        ("day", Self::Day),
        ("month", Self::Month),
    ];
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// One part of the key a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The API key's id (never the key).
    ApiKey,
    /// A claim of the validated token (`sub`, `client_id`, any other).
    Claim(String),
    /// The client address, cut to the limit's IPv4 or IPv6 prefix.
    Ip,
    /// A request header's value.
    Header(http::HeaderName),
    /// The route's name (a per-route budget for a limit covering several routes).
    Route,
}

impl std::fmt::Display for KeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey => f.write_str("api_key"),
            Self::Claim(c) => write!(f, "claim:{c}"),
            Self::Ip => f.write_str("ip"),
            Self::Header(h) => write!(f, "header:{h}"),
            Self::Route => f.write_str("route"),
        }
    }
}

/// How a limit keys its counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeySpec {
    /// Empty: one budget shared by every request the limit covers.
    pub parts: Vec<KeyPart>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

/// Which routes a limit covers. Both lists empty: every route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitScope {
    pub routes: Vec<String>,
    pub products: Vec<String>,
}

impl LimitScope {
    pub fn covers(&self, route: &str, product: Option<&str>) -> bool {
        (self.routes.is_empty() && self.products.is_empty())
            || self.routes.iter().any(|r| r == route)
            || product.is_some_and(|p| self.products.iter().any(|q| q == p))
    }
}

/// A rate for the keys of a tier.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateTier {
    /// API key ids this tier applies to.
    pub keys: Vec<String>,
    pub requests: u32,
    pub burst: u32,
}

/// `[[proxy.limits.rate]]`: `requests` per `per`, up to `burst` at once (GCRA).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitSpec {
    pub name: String,
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: KeySpec,
    pub scope: LimitScope,
    pub tiers: Vec<RateTier>,
}

/// A quota for the keys of a tier; `None` keeps the quota's own value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuotaTier {
    pub keys: Vec<String>,
    pub calls: Option<u64>,
    pub bytes: Option<u64>,
}

/// `[[proxy.limits.quota]]`: calls and bytes per calendar period.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuotaSpec {
    pub name: String,
    pub period: Period,
    pub calls: Option<u64>,
    pub bytes: Option<u64>,
    pub key: KeySpec,
    pub scope: LimitScope,
    pub tiers: Vec<QuotaTier>,
}

/// Everything `[proxy.limits]` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    pub headers: HeaderStyle,
    /// Budget headers on forwarded responses too, not only on refusals.
    pub headers_on_success: bool,
    /// Tracked keys per limit; new keys beyond it share one overflow budget.
    pub max_tracked_keys: usize,
    pub prune_interval: Duration,
    /// 403 (as Azure API Management answers) or 429 for an exhausted quota.
    pub quota_status: u16,
    /// Where quota counters are kept across restarts; `None`: in memory only.
    pub state_file: Option<PathBuf>,
    pub flush_interval: Duration,
    pub rates: Vec<RateLimitSpec>,
    pub quotas: Vec<QuotaSpec>,
}

/// The limits of one route: indexes into the shared config's `rates` and `quotas`.
#[derive(Clone, Debug)]
pub struct RouteLimits {
    pub config: Arc<LimitsConfig>,
    pub rates: Vec<usize>,
    pub quotas: Vec<usize>,
}

/// `[proxy.limits]`.
pub(crate) struct RawLimits {
    pub headers: Field<HeaderStyle>,
    pub headers_on_success: Field<bool>,
    pub max_tracked_keys: Field<i64>,
    pub prune_interval: Field<String>,
    pub quota_status: Field<i64>,
    pub state_file: Field<String>,
    pub flush_interval: Field<String>,
    pub rate: Vec<RawRate>,
    pub quota: Vec<RawQuota>,
}

impl RawLimits {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            headers: t.keyword("headers", d),
            headers_on_success: t.value("headers_on_success", d),
            max_tracked_keys: t.value("max_tracked_keys", d),
            prune_interval: t.value("prune_interval", d),
            quota_status: t.value("quota_status", d),
            state_file: t.value("state_file", d),
            flush_interval: t.value("flush_interval", d),
            rate: t
                .tables("rate", d)
                .into_iter()
                .map(|t| RawRate::read(t, d))
                .collect(),
            quota: t
                .tables("quota", d)
                .into_iter()
                .map(|t| RawQuota::read(t, d))
                .collect(),
        };
        t.finish(d);
        raw
    }
}

/// The keys both kinds of limit share.
pub(crate) struct RawCommon {
    pub header: Span,
    pub name: Option<Spanned<String>>,
    pub by: Option<Spanned<Strings>>,
    pub ipv4_prefix: Field<i64>,
    pub ipv6_prefix: Field<i64>,
    pub routes: Field<Strings>,
    pub products: Field<Strings>,
}

impl RawCommon {
    fn read(t: &mut Table, d: &mut Diagnostics) -> Self {
        Self {
            header: t.span().clone(),
            name: t.required("name", d),
            by: t.required("by", d),
            ipv4_prefix: t.value("ipv4_prefix", d),
            ipv6_prefix: t.value("ipv6_prefix", d),
            routes: t.value("routes", d),
            products: t.value("products", d),
        }
    }
}

/// One `[[proxy.limits.rate]]`.
pub(crate) struct RawRate {
    pub common: RawCommon,
    pub requests: Option<Spanned<i64>>,
    pub per: Option<Spanned<String>>,
    pub burst: Field<i64>,
    pub tiers: Vec<RawRateTier>,
}

impl RawRate {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            common: RawCommon::read(&mut t, d),
            requests: t.required("requests", d),
            per: t.required("per", d),
            burst: t.value("burst", d),
            tiers: t
                .tables("tiers", d)
                .into_iter()
                .map(|t| RawRateTier::read(t, d))
                .collect(),
        };
        t.finish(d);
        raw
    }
}

/// One `[[proxy.limits.rate.tiers]]`.
pub(crate) struct RawRateTier {
    pub keys: Option<Spanned<Strings>>,
    pub requests: Option<Spanned<i64>>,
    pub burst: Field<i64>,
}

impl RawRateTier {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            keys: t.required("keys", d),
            requests: t.required("requests", d),
            burst: t.value("burst", d),
        };
        t.finish(d);
        raw
    }
}

/// One `[[proxy.limits.quota]]`.
pub(crate) struct RawQuota {
    pub common: RawCommon,
    pub period: Option<Spanned<Period>>,
    pub calls: Field<i64>,
    pub bytes: Field<RawSize>,
    pub tiers: Vec<RawQuotaTier>,
}

impl RawQuota {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            common: RawCommon::read(&mut t, d),
            period: t.required_keyword("period", d),
            calls: t.value("calls", d),
            bytes: t.value("bytes", d),
            tiers: t
                .tables("tiers", d)
                .into_iter()
                .map(|t| RawQuotaTier::read(t, d))
                .collect(),
        };
        t.finish(d);
        raw
    }
}

/// One `[[proxy.limits.quota.tiers]]`.
pub(crate) struct RawQuotaTier {
    pub header: Span,
    pub keys: Option<Spanned<Strings>>,
    pub calls: Field<i64>,
    pub bytes: Field<RawSize>,
}

impl RawQuotaTier {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            keys: t.required("keys", d),
            calls: t.value("calls", d),
            bytes: t.value("bytes", d),
        };
        t.finish(d);
        raw
    }
}

/// Headers that must never become a counter key: their values are credentials, and keys
/// are written to the quota state file and shown by the admin endpoint.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "ocp-apim-subscription-key",
];

/// Compiles `[proxy.limits]` and gives every route the limits that cover it.
pub(crate) fn attach(raw: Option<&RawLimits>, routes: &mut [RouteConfig], d: &mut Diagnostics) {
    let Some(raw) = raw else { return };
    let Some(config) = compile(raw, routes, d) else {
        return;
    };
    if config.rates.is_empty() && config.quotas.is_empty() {
        return;
    }
    let config = Arc::new(config);
    for route in routes.iter_mut() {
        let product = route.product.as_deref();
        let rates: Vec<usize> = (0..config.rates.len())
            .filter(|&i| config.rates[i].scope.covers(&route.name, product))
            .collect();
        let quotas: Vec<usize> = (0..config.quotas.len())
            .filter(|&i| config.quotas[i].scope.covers(&route.name, product))
            .collect();
        if !rates.is_empty() || !quotas.is_empty() {
            route.auth.limits = Some(Arc::new(RouteLimits {
                config: config.clone(),
                rates,
                quotas,
            }));
        }
    }
}

fn compile(raw: &RawLimits, routes: &[RouteConfig], d: &mut Diagnostics) -> Option<LimitsConfig> {
    let errors_before = d.error_count();
    let max_tracked_keys = integer(
        &raw.max_tracked_keys,
        "proxy.limits.max_tracked_keys",
        (1, defaults::MAX_TRACKED_KEYS_LIMIT),
        d,
    )
    .value_or(defaults::MAX_TRACKED_KEYS);
    let prune_interval = duration(
        &raw.prune_interval,
        "proxy.limits.prune_interval",
        defaults::MAX_PRUNE_INTERVAL,
        d,
    )
    .value_or(defaults::PRUNE_INTERVAL);
    let flush_interval = duration(
        &raw.flush_interval,
        "proxy.limits.flush_interval",
        defaults::MAX_FLUSH_INTERVAL,
        d,
    )
    .value_or(defaults::FLUSH_INTERVAL);
    let quota_status = match &raw.quota_status {
        Field::Present(v) if ![403, 429].contains(v.get_ref()) => {
            let kind = ErrorKind::Invalid {
                key: "proxy.limits.quota_status".into(),
                value: v.get_ref().to_string(),
                reason: "an exhausted quota is answered with 403 or 429".into(),
            };
            d.at(&v.span(), kind);
            defaults::QUOTA_STATUS
        }
        f => f.value_or(defaults::QUOTA_STATUS),
    };
    let state_file = match &raw.state_file {
        Field::Present(p) => resolve("proxy.limits.state_file", p, d),
        _ => None,
    };
    let mut names = Names::new("limit");
    let mut rates = Vec::new();
    for r in &raw.rate {
        if let Some(spec) = rate(r, routes, &mut names, d) {
            rates.push(spec);
        }
    }
    let mut quotas = Vec::new();
    for q in &raw.quota {
        if let Some(spec) = quota(q, routes, &mut names, d) {
            quotas.push(spec);
        }
    }
    if d.error_count() != errors_before {
        return None;
    }
    Some(LimitsConfig {
        headers: raw.headers.value_or(HeaderStyle::Ietf),
        headers_on_success: raw.headers_on_success.value_or(false),
        max_tracked_keys: usize::try_from(max_tracked_keys).unwrap_or(usize::MAX),
        prune_interval,
        quota_status: u16::try_from(quota_status).unwrap_or(403),
        state_file,
        flush_interval,
        rates,
        quotas,
    })
}

/// Name, key and scope of a limit; `None` when any of them was refused (reported).
fn common(
    raw: &RawCommon,
    what: &str,
    routes: &[RouteConfig],
    names: &mut Names,
    d: &mut Diagnostics,
) -> Option<(String, KeySpec, LimitScope)> {
    let errors_before = d.error_count();
    if let Some(name) = &raw.name {
        names.check(name, d);
    }
    let mut parts = Vec::new();
    if let Some(by) = &raw.by {
        for part in by.get_ref() {
            match key_part(part.get_ref()) {
                Ok(p) if parts.contains(&p) => {
                    let kind = ErrorKind::Duplicate {
                        key: format!("{what}.by"),
                        value: part.get_ref().clone(),
                    };
                    d.at(&part.span(), kind);
                }
                Ok(p) => parts.push(p),
                Err(reason) => {
                    let kind = ErrorKind::Invalid {
                        key: format!("{what}.by"),
                        value: part.get_ref().clone(),
                        reason: reason.into(),
                    };
                    d.at(&part.span(), kind);
                }
            }
        }
    }
    let ipv4_prefix = integer(&raw.ipv4_prefix, &format!("{what}.ipv4_prefix"), (0, 32), d)
        .value_or(defaults::IPV4_PREFIX);
    let ipv6_prefix = integer(
        &raw.ipv6_prefix,
        &format!("{what}.ipv6_prefix"),
        (0, 128),
        d,
    )
    .value_or(defaults::IPV6_PREFIX);
    let mut scope = LimitScope::default();
    if let Field::Present(list) = &raw.routes {
        for r in list.get_ref() {
            if !routes.iter().any(|route| &route.name == r.get_ref()) {
                let kind = ErrorKind::Invalid {
                    key: format!("{what}.routes"),
                    value: r.get_ref().clone(),
                    reason: "no route has this name".into(),
                };
                d.at(&r.span(), kind);
            }
            scope.routes.push(r.get_ref().clone());
        }
    }
    if let Field::Present(list) = &raw.products {
        for p in list.get_ref() {
            if !routes
                .iter()
                .any(|route| route.product.as_deref() == Some(p.get_ref().as_str()))
            {
                let kind = ErrorKind::Invalid {
                    key: format!("{what}.products"),
                    value: p.get_ref().clone(),
                    reason: "no route belongs to this product".into(),
                };
                d.at(&p.span(), kind);
            }
            scope.products.push(p.get_ref().clone());
        }
    }
    let name = raw.name.as_ref()?.get_ref().clone();
    raw.by.as_ref()?;
    if d.error_count() != errors_before {
        return None;
    }
    let key = KeySpec {
        parts,
        ipv4_prefix: u8::try_from(ipv4_prefix).unwrap_or(32),
        ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(128),
    };
    Some((name, key, scope))
}

fn key_part(s: &str) -> Result<KeyPart, &'static str> {
    match s {
        "api_key" => return Ok(KeyPart::ApiKey),
        "ip" => return Ok(KeyPart::Ip),
        "route" => return Ok(KeyPart::Route),
        _ => {}
    }
    if let Some(claim) = s.strip_prefix("claim:") {
        if claim.is_empty() || claim.len() > 64 || !claim.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a claim name is 1 to 64 visible ASCII characters, such as `claim:sub`");
        }
        return Ok(KeyPart::Claim(claim.to_owned()));
    }
    if let Some(header) = s.strip_prefix("header:") {
        let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) else {
            return Err("not a header name, such as `header:X-Tenant`");
        };
        if SECRET_HEADERS.contains(&name.as_str()) {
            return Err("this header carries credentials, which must not become counter keys");
        }
        return Ok(KeyPart::Header(name));
    }
    Err("expected `api_key`, `ip`, `route`, `claim:<name>` or `header:<name>`")
}

fn tier_keys(keys: &Option<Spanned<Strings>>, what: &str, d: &mut Diagnostics) -> Vec<String> {
    let Some(keys) = keys else {
        return Vec::new();
    };
    if keys.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: format!("{what}.tiers.keys"),
            hint: "name the API key ids the tier applies to",
        };
        d.at(&keys.span(), kind);
    }
    keys.get_ref().iter().map(|k| k.get_ref().clone()).collect()
}

fn positive(v: &Spanned<i64>, key: &str, d: &mut Diagnostics) -> Option<u32> {
    match integer(
        &Field::Present(v.clone()),
        key,
        (1, defaults::MAX_REQUESTS),
        d,
    ) {
        Field::Present(v) => u32::try_from(*v.get_ref()).ok(),
        _ => None,
    }
}

fn rate(
    raw: &RawRate,
    routes: &[RouteConfig],
    names: &mut Names,
    d: &mut Diagnostics,
) -> Option<RateLimitSpec> {
    let what = "proxy.limits.rate";
    let common = common(&raw.common, what, routes, names, d);
    let requests = raw
        .requests
        .as_ref()
        .and_then(|r| positive(r, &format!("{what}.requests"), d));
    let per = raw.per.as_ref().and_then(|p| {
        duration(
            &Field::Present(p.clone()),
            &format!("{what}.per"),
            defaults::MAX_PER,
            d,
        )
        .present()
        .map(|v| *v.get_ref())
    });
    let burst = match &raw.burst {
        Field::Present(b) => positive(b, &format!("{what}.burst"), d),
        _ => None,
    };
    let mut tiers = Vec::new();
    for t in &raw.tiers {
        let keys = tier_keys(&t.keys, what, d);
        let requests = t
            .requests
            .as_ref()
            .and_then(|r| positive(r, &format!("{what}.tiers.requests"), d));
        let burst = match &t.burst {
            Field::Present(b) => positive(b, &format!("{what}.tiers.burst"), d),
            _ => requests,
        };
        if let (Some(requests), Some(burst)) = (requests, burst) {
            tiers.push(RateTier {
                keys,
                requests,
                burst,
            });
        }
    }
    let (name, key, scope) = common?;
    let requests = requests?;
    Some(RateLimitSpec {
        name,
        requests,
        per: per?,
        burst: burst.unwrap_or(requests),
        key,
        scope,
        tiers,
    })
}

fn bytes(field: &Field<RawSize>, key: &str, d: &mut Diagnostics) -> Option<u64> {
    let Field::Present(raw) = field else {
        return None;
    };
    match size::parse(raw.get_ref()) {
        Ok(0) => {
            let kind = ErrorKind::Invalid {
                key: key.to_owned(),
                value: "0".into(),
                reason: "a quota of zero bytes refuses everything; remove the route instead".into(),
            };
            d.at(&raw.span(), kind);
            None
        }
        Ok(n) => Some(n),
        Err(e) => {
            let kind = ErrorKind::Size {
                key: key.to_owned(),
                value: raw.get_ref().to_string(),
                reason: e,
            };
            d.at(&raw.span(), kind);
            None
        }
    }
}

fn calls(field: &Field<i64>, key: &str, d: &mut Diagnostics) -> Option<u64> {
    match field {
        Field::Present(v) => positive(v, key, d).map(u64::from),
        _ => None,
    }
}

fn quota(
    raw: &RawQuota,
    routes: &[RouteConfig],
    names: &mut Names,
    d: &mut Diagnostics,
) -> Option<QuotaSpec> {
    let what = "proxy.limits.quota";
    let common = common(&raw.common, what, routes, names, d);
    let calls_limit = calls(&raw.calls, &format!("{what}.calls"), d);
    let bytes_limit = bytes(&raw.bytes, &format!("{what}.bytes"), d);
    if matches!(raw.calls, Field::Absent) && matches!(raw.bytes, Field::Absent) {
        let kind = ErrorKind::QuotaCountsNothing {
            table: "[[proxy.limits.quota]]",
        };
        d.at(&raw.common.header, kind);
    }
    let mut tiers = Vec::new();
    for t in &raw.tiers {
        let keys = tier_keys(&t.keys, what, d);
        tiers.push(QuotaTier {
            keys,
            calls: calls(&t.calls, &format!("{what}.tiers.calls"), d),
            bytes: bytes(&t.bytes, &format!("{what}.tiers.bytes"), d),
        });
        if matches!(t.calls, Field::Absent) && matches!(t.bytes, Field::Absent) {
            let kind = ErrorKind::QuotaCountsNothing {
                table: "[[proxy.limits.quota.tiers]]",
            };
            d.at(&t.header, kind);
        }
    }
    let (name, key, scope) = common?;
    if calls_limit.is_none() && bytes_limit.is_none() {
        return None;
    }
    Some(QuotaSpec {
        name,
        period: *raw.period.as_ref()?.get_ref(),
        calls: calls_limit,
        bytes: bytes_limit,
        key,
        scope,
        tiers,
    })
}
