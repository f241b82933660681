//! Compiles `[[token_providers]]` (issuer, audiences, algorithms, key source: discovery, a JWKS
//! file or inline keys, key refresh, start-up policy, token cache bound) and a route's
//! `[routes.token]` (where the token comes from, claims rules per method, claims copied into
//! headers). The checks are the ones the identity layer would otherwise fail on at run time,
//! or silently weaken: an issuer the key fetcher refuses, `none` or HMAC algorithms, a claim
//! header that would overwrite what the proxy itself sets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::compile::{Names, resolve};
use super::duration;
use super::error::{ConfigError, ErrorKind, Location};
use super::proxy_model::{RouteToken, TokenProviderConfig};
use super::proxy_raw::{ClaimOp, RawClaimHeader, RawRequirement, RawRouteToken, RawTokenProvider};
use super::raw::Strings;
use super::reader::{Field, Keyword, closest};
use super::routes;
use super::size;
use super::source::{Diagnostics, SourceFile};
use super::tls_files;
use crate::identity::authz::{
    ClaimHeader, ClaimRequirement, Match, MethodRule, RoutePolicy, TokenSource,
};
use crate::identity::jwt::{
    Algorithm, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES, JwksError, MAX_JWKS_BYTES,
    ValidationPolicy, parse_jwks,
};
use crate::identity::oidc::{
    DEFAULT_TOKEN_CACHE_ENTRIES, KeySource, OidcConfig, OidcError, StartupPolicy, StaticJwks,
    check_url, fingerprint,
};

/// Defaults and limits, named once: the docs, the example and the schema quote them.
pub(crate) mod defaults {
    use std::time::Duration;

    pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
    pub(crate) const MIN_TOKEN_BYTES: u64 = 1 << 10;
    pub(crate) const MAX_TOKEN_BYTES: u64 = 64 << 10;
    pub(crate) const MIN_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);
    pub(crate) const MAX_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(600);
}

/// The providers, and every provider's name in order (`None` where it was missing) for
/// resolving route references by index.
pub(crate) fn providers(
    raw: Vec<RawTokenProvider>,
    d: &mut Diagnostics,
) -> (Vec<TokenProviderConfig>, Vec<Option<String>>) {
    let mut names = Names::new("token provider");
    let mut out = Vec::with_capacity(raw.len());
    let mut provider_names = Vec::with_capacity(raw.len());
    for p in raw {
        if let Some(name) = &p.name {
            names.check(name, d);
        }
        provider_names.push(p.name.as_ref().map(|n| n.get_ref().clone()));
        out.push(provider(&p, d));
    }
    (out, provider_names)
}

fn provider(p: &RawTokenProvider, d: &mut Diagnostics) -> TokenProviderConfig {
    // Keys from the config (a file or inline) instead of discovery. A key present but refused
    // still counts, so its errors do not cascade into discovery's (issuer transport, `ca`).
    let is_static = !matches!(p.jwks_file, Field::Absent) || !matches!(p.jwks, Field::Absent);
    if is_static {
        not_for_static_keys(p, d);
    }
    let ca_roots = p.ca.present().filter(|_| !is_static).and_then(|ca| {
        let path = resolve("token_providers.ca", ca, d)?;
        let roots = tls_files::root_store(&path)
            .map_err(|e| d.at(&ca.span(), e.into()))
            .ok()?;
        // The bundle's bytes identify it across reloads (a changed bundle rebuilds the
        // provider); read after a successful load, so a failure here is not expected.
        let fp = std::fs::read(&path).ok().map(|b| fingerprint(&b));
        Some((Arc::new(roots), fp, path))
    });
    let (ca_roots, ca_fingerprint, ca_file) = match ca_roots {
        Some((roots, fp, path)) => (Some(roots), fp, Some(path)),
        None => (None, None, None),
    };
    let issuer = p.issuer.as_ref().map_or_else(String::new, |i| {
        if is_static {
            static_issuer(i, d);
        } else {
            // A `ca` that failed to load was reported; do not also say it is missing.
            let have_ca = !matches!(p.ca, Field::Absent);
            issuer(i, have_ca, p.ca.present().map(|c| c.span()), d);
        }
        i.get_ref().clone()
    });
    let (keys, jwks_file) = key_source(p, d);
    let defaults = OidcConfig::new(issuer.clone());
    let jwks_refresh = duration_within(
        &p.jwks_refresh,
        "token_providers.jwks_refresh",
        (defaults.min_refresh, defaults.max_refresh),
        d,
    );
    let unknown_kid_interval = duration_within(
        &p.unknown_kid_interval,
        "token_providers.unknown_kid_interval",
        (
            defaults::MIN_UNKNOWN_KID_INTERVAL,
            defaults::MAX_UNKNOWN_KID_INTERVAL,
        ),
        d,
    );
    let clock_skew = match p.clock_skew.present() {
        Some(s) => {
            duration::parse_up_to(s.get_ref(), defaults::MAX_CLOCK_SKEW).unwrap_or_else(|e| {
                let kind = ErrorKind::Duration {
                    key: "token_providers.clock_skew".into(),
                    value: s.get_ref().clone(),
                    reason: e.to_string(),
                };
                d.at(&s.span(), kind);
                DEFAULT_LEEWAY
            })
        }
        None => DEFAULT_LEEWAY,
    };
    let max_token_bytes = p
        .max_token_size
        .present()
        .and_then(|s| {
            let bytes = size::parse(s.get_ref())
                .map_err(|reason| {
                    let kind = ErrorKind::Size {
                        key: "token_providers.max_token_size".into(),
                        value: s.get_ref().to_string(),
                        reason,
                    };
                    d.at(&s.span(), kind);
                })
                .ok()?;
            if !(defaults::MIN_TOKEN_BYTES..=defaults::MAX_TOKEN_BYTES).contains(&bytes) {
                let kind = ErrorKind::SizeRange {
                    key: "token_providers.max_token_size".into(),
                    value: s.get_ref().to_string(),
                    min: "1KiB",
                    max: "64KiB",
                };
                d.at(&s.span(), kind);
                return None;
            }
            usize::try_from(bytes).ok()
        })
        .unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    let require_typ = p.require_typ.present().and_then(|t| {
        if t.get_ref().trim().is_empty() {
            let kind = ErrorKind::Invalid {
                key: "token_providers.require_typ".into(),
                value: t.get_ref().clone(),
                reason: "it is empty; remove the key to accept any `typ`".into(),
            };
            d.at(&t.span(), kind);
            return None;
        }
        Some(t.get_ref().clone())
    });
    TokenProviderConfig {
        name: p
            .name
            .as_ref()
            .map_or_else(String::new, |n| n.get_ref().clone()),
        policy: ValidationPolicy {
            issuer: issuer.clone(),
            audiences: p
                .audiences
                .as_ref()
                .map(|a| audiences(a, d))
                .unwrap_or_default(),
            algorithms: algorithms(&p.algorithms, d),
            leeway: clock_skew,
            max_token_bytes,
            require_typ,
        },
        oidc: OidcConfig {
            issuer,
            ca_roots,
            default_refresh: jwks_refresh.unwrap_or(defaults.default_refresh),
            unknown_kid_interval: unknown_kid_interval.unwrap_or(defaults.unknown_kid_interval),
            ca_fingerprint,
            keys,
            startup: p.startup.value_or(StartupPolicy::default()),
            token_cache_entries: token_cache_entries(&p.token_cache_entries, d),
            ..defaults
        },
        jwks_file,
        ca_file,
    }
}

impl Keyword for StartupPolicy {
    const WORDS: &'static [(&'static str, Self)] =
        &[("wait_for_keys", Self::WaitForKeys), ("serve", Self::Serve)];
}

/// Keys that only apply to discovered keys, reported when the keys are static.
fn not_for_static_keys(p: &RawTokenProvider, d: &mut Diagnostics) {
    const APPLIES: &str = "to providers whose keys are discovered from the issuer (not with \
                           `jwks_file` or `jwks`)";
    let spans = [
        ("token_providers.ca", p.ca.present().map(|v| v.span())),
        (
            "token_providers.jwks_refresh",
            p.jwks_refresh.present().map(|v| v.span()),
        ),
        (
            "token_providers.unknown_kid_interval",
            p.unknown_kid_interval.present().map(|v| v.span()),
        ),
        (
            "token_providers.startup",
            p.startup.present().map(|v| v.span()),
        ),
    ];
    for (key, span) in spans {
        if let Some(span) = span {
            let kind = ErrorKind::NotApplicable {
                key: key.into(),
                applies: APPLIES,
            };
            d.at(&span, kind);
        }
    }
}

/// The issuer of a provider with static keys: nothing is fetched from it, so the transport
/// rules do not apply, but it is still the exact `iss` and must look like one.
fn static_issuer(i: &Spanned<String>, d: &mut Diagnostics) {
    let value = i.get_ref();
    let uri = value.parse::<http::Uri>().ok();
    let reason = if value.contains(['?', '#']) {
        Some("must not carry a query or fragment: tokens' `iss` is compared with it exactly")
    } else if !uri
        .as_ref()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
    {
        Some("is not an http(s)://host[:port][/path] URL")
    } else {
        None
    };
    if let Some(reason) = reason {
        let kind = ErrorKind::Issuer {
            value: value.clone(),
            reason: reason.into(),
        };
        d.at(&i.span(), kind);
    }
}

/// Largest `token_cache_entries`: a bound on memory (an entry holds a token's claims).
const MAX_TOKEN_CACHE_ENTRIES: i64 = 1_000_000;

fn token_cache_entries(field: &Field<i64>, d: &mut Diagnostics) -> usize {
    let Some(v) = field.present() else {
        return DEFAULT_TOKEN_CACHE_ENTRIES;
    };
    match usize::try_from(*v.get_ref()) {
        Ok(n) if *v.get_ref() <= MAX_TOKEN_CACHE_ENTRIES => n,
        _ => {
            let kind = ErrorKind::Invalid {
                key: "token_providers.token_cache_entries".into(),
                value: v.get_ref().to_string(),
                reason: format!("it must be 0 (no cache) to {MAX_TOKEN_CACHE_ENTRIES}"),
            };
            d.at(&v.span(), kind);
            DEFAULT_TOKEN_CACHE_ENTRIES
        }
    }
}

/// Where the keys come from: `jwks_file` (read and checked now, so a reload re-reads it),
/// inline `jwks`, or discovery. Returns the source and the resolved file.
fn key_source(p: &RawTokenProvider, d: &mut Diagnostics) -> (KeySource, Option<PathBuf>) {
    let (file, inline) = (p.jwks_file.present(), p.jwks.present());
    if let (Some(_), Some(inline)) = (file, inline) {
        let kind = ErrorKind::KeySourceConflict {
            key: "jwks",
            other: "jwks_file",
        };
        d.at(&inline.span(), kind);
        return (KeySource::Discovery, None);
    }
    if let Some(file) = file {
        let Some(path) = resolve("token_providers.jwks_file", file, d) else {
            return (KeySource::Discovery, None);
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                let kind = ErrorKind::JwksFileRead {
                    path: file.get_ref().clone(),
                    reason: e.to_string(),
                };
                d.at(&file.span(), kind);
                return (KeySource::Discovery, Some(path));
            }
        };
        let ok = check_jwks(&bytes, JwksAt::File(&path), d);
        let keys = if ok {
            KeySource::Static(StaticJwks::new(bytes))
        } else {
            KeySource::Discovery
        };
        return (keys, Some(path));
    }
    if let Some(inline) = inline {
        let bytes = inline.get_ref().as_bytes();
        if check_jwks(bytes, JwksAt::Inline(inline.span()), d) {
            return (KeySource::Static(StaticJwks::new(bytes)), None);
        }
    }
    (KeySource::Discovery, None)
}

/// Where a static JWKS is, for locating its errors.
enum JwksAt<'p> {
    /// A file: errors are located in it (at the offending key where it can be found).
    File(&'p Path),
    /// The `jwks` string: errors are located at it.
    Inline(std::ops::Range<usize>),
}

/// Applies the JWKS hygiene of fetched keys ([`parse_jwks`]); reports what it refuses, naming
/// the key (by position and `kid`, never key material) and the reason. Returns whether the set
/// is usable.
fn check_jwks(json: &[u8], at: JwksAt, d: &mut Diagnostics) -> bool {
    let err = match parse_jwks(json) {
        Ok(_) => return true,
        Err(e) => e,
    };
    let offsets = jwk_offsets(json);
    let text = std::str::from_utf8(json).ok();
    let mut report = |offset: Option<usize>, line_col: Option<(usize, usize)>, reason: String| {
        let what = match &at {
            JwksAt::File(_) => "invalid JWKS".to_owned(),
            JwksAt::Inline(_) => "`token_providers.jwks`: invalid JWKS".to_owned(),
        };
        let kind = ErrorKind::Jwks { what, reason };
        match &at {
            JwksAt::Inline(span) => d.at(span, kind),
            JwksAt::File(path) => {
                let location = match (line_col, offset, text) {
                    (Some((line, column)), _, _) => Location {
                        file: path.to_path_buf(),
                        line: line.max(1),
                        column: column.max(1),
                    },
                    (None, Some(o), Some(t)) => SourceFile::new(path, t).location(o),
                    _ => Location {
                        file: path.to_path_buf(),
                        line: 1,
                        column: 1,
                    },
                };
                d.push(ConfigError { location, kind });
            }
        }
    };
    let name = |i: usize, kid: Option<&str>| match kid {
        Some(k) => format!("key #{} (kid `{k}`)", i + 1),
        None => format!("key #{}", i + 1),
    };
    match err {
        JwksError::Malformed => match serde_json::from_slice::<serde_json::Value>(json) {
            _ if json.len() > MAX_JWKS_BYTES => {
                report(None, None, format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            Err(e) => {
                // serde_json's message ends with its own "at line L column C"; the location
                // already says where.
                let message = e.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or("not JSON")
                    .to_owned();
                report(
                    None,
                    Some((e.line(), e.column())),
                    format!("not JSON: {message}"),
                );
            }
            Ok(_) => report(
                None,
                None,
                "not a JSON object with a \"keys\" array of JWKs (RFC 7517 section 5), or a \
                 member name is repeated"
                    .into(),
            ),
        },
        JwksError::DuplicateKid => {
            let doc: Option<serde_json::Value> = serde_json::from_slice(json).ok();
            let list = doc
                .as_ref()
                .and_then(|v| v.get("keys"))
                .and_then(serde_json::Value::as_array);
            let kids: Vec<Option<&str>> = list
                .map(|l| {
                    l.iter()
                        .map(|k| k.get("kid").and_then(serde_json::Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            let dup = kids.iter().enumerate().find_map(|(i, k)| {
                let k = (*k)?;
                kids[..i]
                    .iter()
                    .position(|e| *e == Some(k))
                    .map(|first| (i, first, k))
            });
            match dup {
                Some((i, first, kid)) => report(
                    offsets.get(i).copied(),
                    None,
                    format!(
                        "{} repeats the kid of key #{}: a token names its key by kid, so kids \
                         must be unique",
                        name(i, Some(kid)),
                        first + 1
                    ),
                ),
                None => report(None, None, JwksError::DuplicateKid.to_string()),
            }
        }
        JwksError::NoUsableKeys { rejected } => {
            if rejected.is_empty() {
                report(
                    None,
                    None,
                    "the \"keys\" array is empty: list the issuer's public signing keys".into(),
                );
            }
            // With no usable key, every key was rejected, in document order.
            for (i, r) in rejected.iter().enumerate() {
                report(
                    offsets.get(i).copied(),
                    None,
                    format!(
                        "no usable signature verification key: {} is not usable: {}",
                        name(i, r.kid.as_deref()),
                        r.reason
                    ),
                );
            }
        }
    }
    false
}

/// Byte offsets of the elements of the top-level `keys` array of a JSON document (empty when
/// it cannot be found). A small scanner: serde_json keeps no positions of values.
fn jwk_offsets(json: &[u8]) -> Vec<usize> {
    let mut s = Scan { b: json, i: 0 };
    s.ws();
    if !s.eat(b'{') {
        return Vec::new();
    }
    loop {
        s.ws();
        let Some(name) = s.string() else {
            return Vec::new();
        };
        s.ws();
        if !s.eat(b':') {
            return Vec::new();
        }
        s.ws();
        if name == b"keys" && s.peek() == Some(b'[') {
            s.i += 1;
            let mut out = Vec::new();
            loop {
                s.ws();
                if s.peek() == Some(b']') || s.peek().is_none() {
                    return out;
                }
                out.push(s.i);
                if !s.skip_value() {
                    return out;
                }
                s.ws();
                if !s.eat(b',') {
                    return out;
                }
            }
        }
        if !s.skip_value() {
            return Vec::new();
        }
        s.ws();
        if !s.eat(b',') {
            return Vec::new();
        }
    }
}

struct Scan<'b> {
    b: &'b [u8],
    i: usize,
}

impl<'b> Scan<'b> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    /// A string's raw bytes (escapes left as written).
    fn string(&mut self) -> Option<&'b [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    let s = self.b.get(start..self.i);
                    self.i += 1;
                    return s;
                }
                _ => self.i += 1,
            }
        }
    }
    fn skip_value(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => self.string().is_some(),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        None => return false,
                        Some(b'"') => {
                            if self.string().is_none() {
                                return false;
                            }
                            continue;
                        }
                        Some(b'{' | b'[') => depth += 1,
                        Some(b'}' | b']') => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                self.i += 1;
                                return true;
                            }
                        }
                        Some(_) => {}
                    }
                    self.i += 1;
                }
            }
            Some(_) => {
                let start = self.i;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n')
                ) {
                    self.i += 1;
                }
                self.i > start
            }
            None => false,
        }
    }
}

/// The issuer as the key fetcher will use it: discovery at `<issuer>/.well-known/...`, plain
/// http only to loopback, https only with a CA bundle (there are no built-in web roots).
fn issuer(
    i: &Spanned<String>,
    have_ca: bool,
    ca: Option<std::ops::Range<usize>>,
    d: &mut Diagnostics,
) {
    let value = i.get_ref();
    let reason = if value.contains(['?', '#']) {
        Some(
            "must not carry a query or fragment: tokens' `iss` is compared with it exactly, and \
             discovery appends a path to it"
                .to_owned(),
        )
    } else {
        match check_url(&OidcConfig::new(value.clone()).discovery_url(), have_ca) {
            Ok(_) => None,
            Err(OidcError::NoCaBundle(_)) => Some(
                "is https:// but the provider has no `ca`: there are no built-in web roots, so \
                 name the PEM bundle of the CA that signed the issuer's certificate"
                    .to_owned(),
            ),
            Err(OidcError::InsecureUrl(_)) => Some(
                "is plain http:// to a host that is not loopback: the signing keys fetched from it \
                 could be replaced in transit; use https:// with `ca`"
                    .to_owned(),
            ),
            Err(OidcError::BadUrl { reason, .. }) => Some(format!(
                "is not an http(s)://host[:port][/path] URL: {reason}"
            )),
            Err(other) => Some(other.to_string()),
        }
    };
    match reason {
        Some(reason) => {
            let kind = ErrorKind::Issuer {
                value: value.clone(),
                reason,
            };
            d.at(&i.span(), kind);
        }
        None => {
            if let (Some(ca), true) = (ca, value.starts_with("http://")) {
                let kind = ErrorKind::NotApplicable {
                    key: "token_providers.ca".into(),
                    applies: "to https:// issuers",
                };
                d.at(&ca, kind);
            }
        }
    }
}

/// A duration key bounded on both sides; `None` when absent or refused (reported).
fn duration_within(
    field: &Field<String>,
    key: &str,
    (min, max): (Duration, Duration),
    d: &mut Diagnostics,
) -> Option<Duration> {
    let s = field.present()?;
    let reason = match duration::parse_bounded(s.get_ref(), max) {
        Ok(v) if v >= min => return Some(v),
        Ok(_) => format!("must be at least {}", humantime::format_duration(min)),
        Err(e) => e.to_string(),
    };
    let kind = ErrorKind::Duration {
        key: key.to_owned(),
        value: s.get_ref().clone(),
        reason,
    };
    d.at(&s.span(), kind);
    None
}

fn audiences(list: &Spanned<Strings>, d: &mut Diagnostics) -> Vec<String> {
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: "token_providers.audiences".into(),
            hint: "list the `aud` values this gateway accepts (its API identifiers)",
        };
        d.at(&list.span(), kind);
    }
    let mut out: Vec<String> = Vec::new();
    for a in list.get_ref() {
        if a.get_ref().is_empty() {
            let kind = ErrorKind::Invalid {
                key: "token_providers.audiences".into(),
                value: String::new(),
                reason: "it is empty".into(),
            };
            d.at(&a.span(), kind);
        } else if out.contains(a.get_ref()) {
            let kind = ErrorKind::Duplicate {
                key: "token_providers.audiences".into(),
                value: a.get_ref().clone(),
            };
            d.at(&a.span(), kind);
        } else {
            out.push(a.get_ref().clone());
        }
    }
    out
}

fn algorithms(raw: &Field<Strings>, d: &mut Diagnostics) -> Vec<Algorithm> {
    let Some(list) = raw.present() else {
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: "token_providers.algorithms".into(),
            hint: "list at least one algorithm, or remove the key to accept the keys' own",
        };
        d.at(&list.span(), kind);
    }
    let mut out = Vec::new();
    for a in list.get_ref() {
        let name = a.get_ref();
        let refused = if name.eq_ignore_ascii_case("none") {
            Some("it means an unsigned token, which anyone can forge")
        } else if ["HS256", "HS384", "HS512"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            Some(
                "HMAC algorithms use a shared secret, so whoever can verify a token can also \
                 forge one; OpenID providers sign with public keys (RS256, ES256, ...)",
            )
        } else {
            None
        };
        let kind = match (refused, Algorithm::from_name(name)) {
            (Some(reason), _) => ErrorKind::AlgorithmRefused {
                value: name.clone(),
                reason,
            },
            (None, None) => ErrorKind::UnknownKeyword {
                key: "token_providers.algorithms".into(),
                value: name.clone(),
                expected: Algorithm::ALL.iter().map(|a| a.name()).collect(),
            },
            (None, Some(alg)) if out.contains(&alg) => ErrorKind::Duplicate {
                key: "token_providers.algorithms".into(),
                value: name.clone(),
            },
            (None, Some(alg)) => {
                out.push(alg);
                continue;
            }
        };
        d.at(&a.span(), kind);
    }
    out
}

/// `[routes.token]` compiled; `provider` is 0 when unresolved (reported).
pub(crate) fn route_token(
    raw: &RawRouteToken,
    provider_names: &[Option<String>],
    d: &mut Diagnostics,
) -> RouteToken {
    let provider = raw
        .provider
        .as_ref()
        .map_or(0, |p| provider_index(p, provider_names, d));
    let rules = raw
        .rules
        .iter()
        .map(|r| MethodRule {
            methods: routes::methods(&r.methods, "routes.token.rules.methods", d),
            requirements: match &r.require {
                Field::Present(list) => list
                    .get_ref()
                    .iter()
                    .filter_map(|q| requirement(q, d))
                    .collect(),
                Field::Absent => {
                    let kind = ErrorKind::Missing {
                        key: "require",
                        table: "[[routes.token.rules]]".into(),
                    };
                    d.at(&r.header, kind);
                    Vec::new()
                }
                Field::Invalid => Vec::new(),
            },
        })
        .collect();
    for r in &raw.rules {
        if let Some(list) = r.require.present().filter(|l| l.get_ref().is_empty()) {
            let kind = ErrorKind::EmptyList {
                key: "routes.token.rules.require".into(),
                hint: "add at least one [[routes.token.rules.require]], or remove the rule",
            };
            d.at(&list.span(), kind);
        }
    }
    RouteToken {
        provider,
        sources: sources(&raw.sources, d),
        policy: RoutePolicy { rules },
        claim_headers: claim_headers(&raw.claim_headers, d),
        forward_authorization: raw.forward_authorization.value_or(false),
    }
}

fn provider_index(
    provider: &Spanned<String>,
    provider_names: &[Option<String>],
    d: &mut Diagnostics,
) -> usize {
    let wanted = provider.get_ref();
    if let Some(i) = provider_names
        .iter()
        .position(|n| n.as_ref() == Some(wanted))
    {
        return i;
    }
    let known: Vec<String> = provider_names.iter().flatten().cloned().collect();
    let kind = ErrorKind::UnknownTokenProvider {
        name: wanted.clone(),
        suggestion: closest(wanted, known.iter().map(String::as_str)).map(str::to_owned),
        providers: known.clone(),
    };
    d.at(&provider.span(), kind);
    0
}

const SOURCE_FORMS: &str =
    "expected `bearer`, `header:<name>`, `query:<parameter>` or `cookie:<name>`";

fn sources(raw: &Field<Strings>, d: &mut Diagnostics) -> Vec<TokenSource> {
    let Some(list) = raw.present() else {
        return vec![TokenSource::Bearer];
    };
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: "routes.token.sources".into(),
            hint: "list at least one source, or remove the key for `bearer`",
        };
        d.at(&list.span(), kind);
    }
    let mut out = Vec::new();
    for s in list.get_ref() {
        match token_source(s.get_ref()) {
            Ok(source) if out.contains(&source) => {
                let kind = ErrorKind::Duplicate {
                    key: "routes.token.sources".into(),
                    value: s.get_ref().clone(),
                };
                d.at(&s.span(), kind);
            }
            Ok(source) => out.push(source),
            Err(reason) => {
                let kind = ErrorKind::TokenSource {
                    value: s.get_ref().clone(),
                    reason,
                };
                d.at(&s.span(), kind);
            }
        }
    }
    out
}

fn token_source(s: &str) -> Result<TokenSource, String> {
    if s == "bearer" {
        return Ok(TokenSource::Bearer);
    }
    let Some((kind, name)) = s.split_once(':') else {
        return Err(SOURCE_FORMS.into());
    };
    if name.is_empty() {
        return Err(format!("the {kind} name is empty"));
    }
    match kind {
        "header" => {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            if header == http::header::AUTHORIZATION {
                return Err("write `bearer` for `Authorization: Bearer <token>`".into());
            }
            if header == http::header::COOKIE {
                return Err("write `cookie:<name>` to take the token from a cookie".into());
            }
            Ok(TokenSource::Header(header))
        }
        "query" if name.contains(['&', '=', '#']) => {
            Err(format!("`{name}` is not a query parameter name"))
        }
        "query" => Ok(TokenSource::Query(name.to_owned())),
        "cookie" if !routes::is_token(name) => {
            Err(format!("`{name}` is not a cookie name (a token, RFC 6265)"))
        }
        "cookie" => Ok(TokenSource::Cookie(name.to_owned())),
        _ => Err(SOURCE_FORMS.into()),
    }
}

fn requirement(q: &RawRequirement, d: &mut Diagnostics) -> Option<ClaimRequirement> {
    let claim = q.claim.as_ref().map(|c| {
        if c.get_ref().is_empty() {
            let kind = ErrorKind::Invalid {
                key: "routes.token.rules.require.claim".into(),
                value: String::new(),
                reason: "it is empty".into(),
            };
            d.at(&c.span(), kind);
        }
        c.get_ref().clone()
    });
    let separator = q.separator.present().and_then(|s| {
        let mut chars = s.get_ref().chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => {
                let kind = ErrorKind::Invalid {
                    key: "routes.token.rules.require.separator".into(),
                    value: s.get_ref().clone(),
                    reason: "it must be exactly one character".into(),
                };
                d.at(&s.span(), kind);
                None
            }
        }
    });
    let (match_, values) = match (&q.any, &q.all) {
        (Field::Present(_), Field::Present(all)) => {
            d.at(&all.span(), ErrorKind::RequireMatch { both: true });
            return None;
        }
        (Field::Absent, Field::Absent) => {
            d.at(&q.header, ErrorKind::RequireMatch { both: false });
            return None;
        }
        (Field::Present(any), _) => (Match::Any, any),
        (_, Field::Present(all)) => (Match::All, all),
        _ => return None,
    };
    let key = match match_ {
        Match::Any => "routes.token.rules.require.any",
        Match::All => "routes.token.rules.require.all",
    };
    let mut out: Vec<String> = Vec::new();
    for v in values.get_ref() {
        if v.get_ref().is_empty() {
            let kind = ErrorKind::Invalid {
                key: key.into(),
                value: String::new(),
                reason: "it is empty; an empty list asks only for the claim to be present".into(),
            };
            d.at(&v.span(), kind);
        } else if out.contains(v.get_ref()) {
            let kind = ErrorKind::Duplicate {
                key: key.into(),
                value: v.get_ref().clone(),
            };
            d.at(&v.span(), kind);
        } else {
            out.push(v.get_ref().clone());
        }
    }
    Some(ClaimRequirement {
        claim: claim?,
        values: out,
        match_,
        separator,
        op: q.op.value_or(ClaimOp::default()),
    })
}

/// Why claims must not set `header`, if they must not: the proxy sets or strips it itself, or
/// it frames, targets or authenticates the request.
pub(crate) fn forbidden_claim_header(header: &HeaderName) -> Option<&'static str> {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    const FORWARDING: [&str; 5] = [
        "forwarded",
        "x-request-id",
        "x-real-ip",
        "via",
        "x-client-ip",
    ];
    const REQUEST: [&str; 6] = [
        "host",
        "authorization",
        "cookie",
        "content-length",
        "content-type",
        "expect",
    ];
    let name = header.as_str();
    if HOP_BY_HOP.contains(&name) {
        Some("it is a hop-by-hop header, which applies to one connection and is not forwarded")
    } else if FORWARDING.contains(&name) || name.starts_with("x-forwarded-") {
        Some("the proxy sets it itself (the client address and request id the backends trust)")
    } else if REQUEST.contains(&name) {
        Some("it carries the request itself (its target, framing or credentials)")
    } else {
        None
    }
}

fn claim_headers(raw: &[RawClaimHeader], d: &mut Diagnostics) -> Vec<ClaimHeader> {
    let mut out: Vec<ClaimHeader> = Vec::new();
    for h in raw {
        let header = h.header.as_ref().and_then(|name| {
            let Ok(header) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
                let kind = ErrorKind::HeaderName {
                    key: "routes.token.claim_headers.header".into(),
                    value: name.get_ref().clone(),
                };
                d.at(&name.span(), kind);
                return None;
            };
            if let Some(reason) = forbidden_claim_header(&header) {
                let kind = ErrorKind::ForbiddenClaimHeader {
                    value: name.get_ref().clone(),
                    reason,
                };
                d.at(&name.span(), kind);
                return None;
            }
            if out.iter().any(|c| c.header == header) {
                let kind = ErrorKind::Duplicate {
                    key: "routes.token.claim_headers.header".into(),
                    value: name.get_ref().clone(),
                };
                d.at(&name.span(), kind);
                return None;
            }
            Some(header)
        });
        let claims = h.claims.as_ref().map(|list| {
            if list.get_ref().is_empty() {
                let kind = ErrorKind::EmptyList {
                    key: "routes.token.claim_headers.claims".into(),
                    hint: "list the claims to copy, the first one present wins",
                };
                d.at(&list.span(), kind);
            }
            let mut claims: Vec<String> = Vec::new();
            for c in list.get_ref() {
                if c.get_ref().is_empty() {
                    let kind = ErrorKind::Invalid {
                        key: "routes.token.claim_headers.claims".into(),
                        value: String::new(),
                        reason: "it is empty".into(),
                    };
                    d.at(&c.span(), kind);
                } else if claims.contains(c.get_ref()) {
                    let kind = ErrorKind::Duplicate {
                        key: "routes.token.claim_headers.claims".into(),
                        value: c.get_ref().clone(),
                    };
                    d.at(&c.span(), kind);
                } else {
                    claims.push(c.get_ref().clone());
                }
            }
            claims
        });
        if let (Some(header), Some(claims)) = (header, claims) {
            out.push(ClaimHeader { header, claims });
        }
    }
    out
}
