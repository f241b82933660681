//! The JSON Schema of the config file, for editors: completion, hover documentation and
//! checking as you type. Generated with schemars from the mirror types below, whose doc
//! comments become the descriptions and whose keyword enums take their words from the reader's
//! own [`Keyword`] tables.
//!
//! The reader ([`super::raw`], [`super::proxy_raw`]) stays the authority on what loads; the
//! schema describes it. Tests keep the two in step: every table here has exactly the keys the
//! reader asks for, every default here is the compiler's default, and the shipped examples
//! validate. What only the compiler can judge (files, references between sections, overlapping
//! binds) is not in the schema. The committed copy is `docs/portcullis.schema.json`.

#![allow(dead_code)] // The mirror types are never built, only described.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use super::abuse::{AbuseKind, Escalation};
use super::backend_auth::AuthKind as BackendAuthKind;
use super::client_certs::RevocationDepth;
use super::cluster::FailMode;
use super::model::{AttachMode, LogFormat, LogLevel};
use super::proxy_model::{Balance, ClientIpHeader, TlsVersion, UpstreamProtocol};
use super::proxy_raw::{ClaimOp, HttpMode, ListenerProtocol, PathMatchKind};
use super::reader::Keyword;
use crate::identity::mtls::ClientAuth;
use crate::proxy::backend_auth::ClientAuthMethod;
use crate::rules::{Mode, UnknownCountry};

/// The JSON Schema (draft 2020-12) of the Portcullis config file, as TOML converted to JSON.
/// `portcullis schema` prints it; `docs/portcullis.schema.json` is a copy.
pub fn json_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<ConfigFile>();
    let mut value = schema.to_value();
    tidy(&mut value);
    value
}

/// Adapts schemars' output to TOML and to editors. TOML has no null, so an optional key is
/// one that may be absent, never one that may be null: schemars' `Option` adds `null` as an
/// alternative, which this removes. Doc comments are wrapped at 100 columns; descriptions
/// are shown as flowing text, so single line breaks become spaces.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = text
                    .split("\n\n")
                    .map(|p| p.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            if let Some(Value::Array(words)) = map.get_mut("enum") {
                words.retain(|w| !w.is_null());
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if let [Value::Object(only)] = any.as_mut_slice() {
                    let only = std::mem::take(only);
                    map.remove("anyOf");
                    for (k, v) in only {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// A keyword's schema: a string enum of exactly the words the reader accepts.
macro_rules! keyword_schema {
    ($($ty:ty),* $(,)?) => {$(
        impl JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let words: Vec<&str> = <$ty as Keyword>::WORDS.iter().map(|(w, _)| *w).collect();
                json_schema!({ "type": "string", "enum": words })
            }
        }
    )*};
}

keyword_schema!(
    AttachMode,
    Mode,
    UnknownCountry,
    LogLevel,
    LogFormat,
    ClientIpHeader,
    ListenerProtocol,
    HttpMode,
    TlsVersion,
    Balance,
    UpstreamProtocol,
    PathMatchKind,
    ClaimOp,
    ClientAuth,
    RevocationDepth,
    AbuseKind,
    Escalation,
    FailMode,
);

/// A string schema with a pattern the reader's own check is stricter than or equal to.
macro_rules! string_schema {
    ($($(#[$doc:meta])* $name:ident => $schema:tt),* $(,)?) => {$(
        $(#[$doc])*
        struct $name;
        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    )*};
}

string_schema!(
    /// A humantime duration: a number and a unit, such as "10s", "1m 30s" or "500ms".
    DurationStr => { "type": "string", "pattern": "^\\s*[0-9]" },
    /// `[a-z0-9_-]{1,32}`, as names must be.
    Name => { "type": "string", "pattern": "^[a-z0-9_-]{1,32}$" },
    /// A file path, relative to the config file's directory unless absolute.
    FilePath => { "type": "string", "minLength": 1 },
    /// An HTTP method token (RFC 9110 section 5.6.2), any case.
    Method => { "type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" },
    /// A route path: `/` first, printable ASCII without `?` and `#`.
    RoutePath => { "type": "string", "pattern": "^/[!-\"$->@-~]*$" },
    /// Bytes as an integer, or a whole number and a unit.
    Size => {
        "anyOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgG][iI]?)?[bB]\\s*$" }
        ]
    },
);

/// Portcullis configuration. Unknown keys are errors; relative paths resolve against the
/// directory of the config file. Reference: docs/configuration.md.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, title = "Portcullis configuration")]
struct ConfigFile {
    /// The XDP layer: drops denied and geo-blocked sources before the network stack.
    kernel: Option<Kernel>,
    /// Sources that always pass, before bans, deny sets and geo-blocking (management networks).
    allow: Option<PrefixSources>,
    /// Named deny sets, judged in order after the allow list and bans.
    deny: Option<Vec<Deny>>,
    /// Geo-blocking from a MaxMind-format country database.
    geo: Option<Geo>,
    log: Option<Log>,
    /// The local admin endpoint: /live, /ready, /metrics, bans, reload.
    admin: Option<Admin>,
    /// Settings of the proxy as a whole.
    proxy: Option<Proxy>,
    /// Who may vouch for a client address (PROXY protocol, X-Forwarded-For, Forwarded).
    trusted_proxies: Option<TrustedProxies>,
    /// Listening sockets. None means the proxy does not run (kernel layer only).
    listeners: Option<Vec<Listener>>,
    /// Backend pools (the fleets routes send to).
    pools: Option<Vec<Pool>>,
    /// OpenID Connect providers whose signed JWTs routes accept.
    token_providers: Option<Vec<TokenProvider>>,
    /// API (subscription) keys: the hashed key file and where clients send keys.
    api_keys: Option<ApiKeysSection>,
    /// Routes: which requests go to which pool. Matched most specific first.
    routes: Option<Vec<Route>>,
    /// Abuse bans: repeated refusals from one client become a kernel (or userspace) ban.
    abuse: Option<AbuseSection>,
    /// Cluster mode: the Redis that gateways share rate limits, quotas and bans through.
    cluster: Option<Cluster>,
}

/// `[cluster]`: the shared Redis. Absent: no cluster mode.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Cluster {
    /// Redis as "host:port", "203.0.113.5:6379" or "[2001:db8::5]:6379"; a name is resolved at
    /// each connect. Plain TCP unless [cluster.tls] is given.
    redis: String,
    /// TLS to Redis: the CA bundle its certificate must chain to, the name to check (default:
    /// the host of redis), and a client certificate for `tls-auth-clients yes`.
    tls: Option<PoolTls>,
    /// The ACL user to authenticate as (Redis 6 and later); needs a password.
    username: Option<String>,
    /// An environment variable holding the password. Wins over password_file when set.
    password_env: Option<String>,
    /// A file holding the password (one trailing newline ignored), read at each connect.
    password_file: Option<FilePath>,
    /// Prepended to every key and to the ban channel: at most 64 printable ASCII characters.
    #[schemars(extend("default" = "portcullis:"))]
    key_prefix: Option<String>,
    /// Each call's limit; past it the call counts as Redis being unavailable. At most 10s.
    #[schemars(extend("default" = "50ms"))]
    timeout: Option<DurationStr>,
    /// Time allowed to connect and authenticate. At most 1m.
    #[schemars(extend("default" = "1s"))]
    connect_timeout: Option<DurationStr>,
    /// First pause before reconnecting, doubled after each failure. At most 10m.
    #[schemars(extend("default" = "100ms"))]
    reconnect_backoff: Option<DurationStr>,
    /// Longest pause between reconnection attempts; at least reconnect_backoff. At most 10m.
    #[schemars(extend("default" = "5s"))]
    reconnect_backoff_max: Option<DurationStr>,
    /// When Redis cannot answer: open judges rate limits locally only, closed refuses.
    #[schemars(extend("default" = "open"))]
    rate_limits: Option<FailMode>,
    /// When Redis cannot answer: open skips the shared quotas, closed refuses.
    #[schemars(extend("default" = "open"))]
    quotas: Option<FailMode>,
    /// When Redis cannot answer: open keeps local bans only, closed refuses.
    #[schemars(extend("default" = "open"))]
    bans: Option<FailMode>,
}

/// `[abuse]`: when refusals from one client become a ban (docs/abuse-bans.md).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct AbuseSection {
    /// Count refusals and ban abusive clients.
    #[schemars(extend("default" = true))]
    enabled: Option<bool>,
    /// enforce: ban. report: log and count "would ban", ban nothing.
    #[schemars(extend("default" = "enforce"))]
    mode: Option<Mode>,
    /// Clients counted at once; past it idle ones are pruned and new ones go uncounted.
    #[schemars(range(min = 1, max = 10_000_000), extend("default" = 100000))]
    max_tracked_clients: Option<i64>,
    /// How long a past ban makes the next one of the same client longer. At most 30 days.
    #[schemars(extend("default" = "24h"))]
    offender_memory: Option<DurationStr>,
    /// The rules, at most one per kind. Absent: auth_failure 20, rate_limit 100 and
    /// validation 10 refusals per 60s, each banning for 10m, doubling up to 24h.
    rules: Option<Vec<AbuseRuleSection>>,
}

/// One `[[abuse.rules]]` entry.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct AbuseRuleSection {
    /// auth_failure: token_invalid, token_request_invalid, key_invalid. rate_limit:
    /// rate_limited. validation: validation_failed.
    kind: AbuseKind,
    /// Refusals within the window that trigger a ban.
    #[schemars(range(min = 1, max = 1_000_000))]
    threshold: i64,
    /// The sliding window. At most 1h.
    #[schemars(extend("default" = "60s"))]
    window: Option<DurationStr>,
    /// The first ban's length. At most 30 days.
    #[schemars(extend("default" = "10m"))]
    ban: Option<DurationStr>,
    /// double: each ban within offender_memory of the previous one lasts twice as long.
    #[schemars(extend("default" = "double"))]
    escalation: Option<Escalation>,
    /// The longest a ban grows to; at least `ban`, at most 30 days.
    #[schemars(extend("default" = "24h"))]
    max_ban: Option<DurationStr>,
}

/// `[kernel]`: the XDP layer.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Kernel {
    /// Load and attach the XDP program (needs CAP_BPF and CAP_NET_ADMIN). With false, rules
    /// are checked but not loaded, and no interface is needed.
    #[schemars(extend("default" = true))]
    enabled: Option<bool>,
    /// Interfaces to attach to; at least one when enabled.
    interfaces: Option<Vec<String>>,
    /// auto: native mode where the driver supports it, generic otherwise. native: driver mode
    /// only. generic: skb mode, works everywhere.
    #[schemars(extend("default" = "auto"))]
    attach_mode: Option<AttachMode>,
    /// The bpffs directory of the pinned maps and link. Absolute.
    #[schemars(extend("default" = "/sys/fs/bpf/portcullis"))]
    pin_root: Option<String>,
    /// How often expired bans are removed from the kernel map. Greater than zero, at most 1h.
    #[schemars(extend("default" = "10s"))]
    ban_sweep_interval: Option<DurationStr>,
}

/// Prefix sources: inline CIDRs and CIDR files.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct PrefixSources {
    /// Prefixes or single addresses ("10.0.0.0/8", "2001:db8::1"); host bits must be zero.
    cidrs: Option<Vec<String>>,
    /// Files of one prefix or address per line; `#` starts a comment.
    files: Option<Vec<FilePath>>,
}

/// One `[[deny]]` set.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Deny {
    /// Unique; used as a metrics label.
    name: Name,
    /// enforce: drop. report: count what would be dropped, and pass.
    #[schemars(extend("default" = "enforce"))]
    mode: Option<Mode>,
    /// Prefixes or single addresses; host bits must be zero.
    cidrs: Option<Vec<String>>,
    /// CIDR files.
    files: Option<Vec<FilePath>>,
}

/// `[geo]`: geo-blocking from a MaxMind-format country database.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Geo {
    /// A MaxMind DB format (.mmdb) country database.
    database: FilePath,
    /// ISO 3166-1 alpha-2 country codes to block (any case). At least one unless
    /// unknown = "block".
    block: Option<Vec<String>>,
    /// What happens to addresses the database has no country for.
    #[schemars(extend("default" = "pass"))]
    unknown: Option<UnknownCountry>,
    /// enforce: drop. report: count what would be dropped, and pass.
    #[schemars(extend("default" = "enforce"))]
    mode: Option<Mode>,
}

/// `[log]`: what is logged, and how.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Log {
    /// The least severe level written.
    #[schemars(extend("default" = "info"))]
    level: Option<LogLevel>,
    /// json: one object per line, for collectors. text: for a terminal.
    #[schemars(extend("default" = "json"))]
    format: Option<LogFormat>,
}

/// `[admin]`: the local admin endpoint (health, readiness, metrics, bans, reload), on
/// loopback by default.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Admin {
    /// Address and port of the admin endpoint, or "off". A non-loopback address is refused
    /// unless allow_remote = true.
    #[schemars(extend("default" = "127.0.0.1:9901"))]
    listen: Option<String>,
    /// Allow a non-loopback `listen` address: metrics, bans and reload reachable from the
    /// network.
    #[schemars(extend("default" = false))]
    allow_remote: Option<bool>,
}

/// `[proxy]`: settings of the proxy as a whole.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Proxy {
    /// Grace period for in-flight requests on shutdown. Greater than zero, at most 10m.
    #[schemars(extend("default" = "30s"))]
    drain_timeout: Option<DurationStr>,
    /// Rate limits and quotas (docs/rate-limits.md).
    limits: Option<LimitsSection>,
}

/// `[trusted_proxies]`: the only peers whose word about the client address is taken.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TrustedProxies {
    /// CIDRs allowed to send PROXY protocol headers (L4 load balancers).
    load_balancers: Option<Vec<String>>,
    /// CIDRs whose X-Forwarded-For / Forwarded entries and X-Request-Id are believed.
    proxies: Option<Vec<String>>,
    /// Which header carries the client chain from trusted proxies; none: the client is the
    /// peer (or PROXY) address.
    #[schemars(extend("default" = "x-forwarded-for"))]
    client_ip_header: Option<ClientIpHeader>,
}

/// One `[[listeners]]` socket.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, transform = listener_rules)]
struct Listener {
    /// Unique; used in logs and metrics.
    name: Name,
    /// IP address and port ("0.0.0.0:8443", "[::]:443"). Unique across listeners.
    bind: String,
    /// https: TLS termination (needs [listeners.tls]). http: plain HTTP, see http_mode.
    protocol: ListenerProtocol,
    /// Expect a PROXY protocol v1/v2 header first; accepted only from
    /// trusted_proxies.load_balancers, which must not be empty.
    #[schemars(extend("default" = false))]
    proxy_protocol: Option<bool>,
    /// Open connections at most; further ones are closed at accept.
    #[schemars(range(min = 1, max = 1_000_000), extend("default" = 10000))]
    max_connections: Option<i64>,
    /// Time allowed for the TLS handshake (and the PROXY header). At most 5m.
    #[schemars(extend("default" = "10s"))]
    handshake_timeout: Option<DurationStr>,
    /// Time allowed to receive a request's headers. At most 5m.
    #[schemars(extend("default" = "10s"))]
    header_timeout: Option<DurationStr>,
    /// An idle keep-alive connection is closed after this long. At most 1h.
    #[schemars(extend("default" = "60s"))]
    idle_timeout: Option<DurationStr>,
    /// Only for protocol = "http": redirect every request to HTTPS (308), or serve routes.
    #[schemars(extend("default" = "redirect"))]
    http_mode: Option<HttpMode>,
    /// Only for protocol = "http" with http_mode = "redirect": the HTTPS port redirected to.
    #[schemars(range(min = 1, max = 65535), extend("default" = 443))]
    redirect_port: Option<i64>,
    /// TLS settings: required for https listeners, refused for http ones.
    tls: Option<ListenerTls>,
    /// Client certificates (mTLS) on an https listener; refused for http ones.
    client_certs: Option<ClientCerts>,
}

/// `[listeners.client_certs]`: ask clients for certificates and verify them.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, transform = client_certs_rules)]
struct ClientCerts {
    /// none: ask for no certificate. optional: ask; a client may send none (routes that need
    /// one answer 403), but one that is sent must verify. required: no handshake without a
    /// valid certificate.
    #[schemars(extend("default" = "required"))]
    mode: Option<ClientAuth>,
    /// PEM bundles of the CAs that issue client certificates (needed unless mode = "none").
    #[schemars(length(min = 1))]
    ca: Option<Vec<FilePath>>,
    /// Certificate revocation lists (PEM `X509 CRL` sections or DER). With CRLs, a
    /// certificate from an issuer no CRL covers is refused unless allow_unknown_revocation.
    crls: Option<Vec<FilePath>>,
    /// chain: check every certificate of the chain against the CRLs; end_entity: only the
    /// client's own.
    #[schemars(extend("default" = "chain"))]
    revocation_depth: Option<RevocationDepth>,
    /// Accept certificates whose issuer no configured CRL covers.
    #[schemars(extend("default" = false))]
    allow_unknown_revocation: Option<bool>,
    /// Accept CRLs past their nextUpdate.
    #[schemars(extend("default" = false))]
    allow_expired_crls: Option<bool>,
}

/// `ca` is needed unless the mode is none.
fn client_certs_rules(schema: &mut Schema) {
    schema.insert(
        "if".into(),
        serde_json::json!({ "properties": { "mode": { "const": "none" } }, "required": ["mode"] }),
    );
    schema.insert("else".into(), serde_json::json!({ "required": ["ca"] }));
}

/// What `protocol` implies, as JSON Schema conditionals.
fn listener_rules(schema: &mut Schema) {
    schema.insert(
        "if".into(),
        serde_json::json!({ "properties": { "protocol": { "const": "https" } } }),
    );
    schema.insert(
        "then".into(),
        serde_json::json!({
            "required": ["tls"],
            "properties": { "http_mode": false, "redirect_port": false }
        }),
    );
    schema.insert(
        "else".into(),
        serde_json::json!({ "properties": { "tls": false, "client_certs": false } }),
    );
}

/// `[listeners.tls]`: certificates and TLS policy of an https listener (TLS 1.2 and 1.3 only).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct ListenerTls {
    /// Certificate chains and keys, chosen by SNI; the first is the default.
    #[schemars(length(min = 1))]
    certificates: Vec<CertificatePair>,
    /// Lowest TLS version accepted.
    #[schemars(extend("default" = "1.2"))]
    min_version: Option<TlsVersion>,
    /// ALPN protocols offered, in preference order.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = r"^(h2|http/1\.1)$")),
        extend("uniqueItems" = true, "default" = ["h2", "http/1.1"])
    )]
    alpn: Option<Vec<String>>,
    /// Strict-Transport-Security: on by default.
    hsts: Option<Hsts>,
}

/// A certificate chain and its private key (PEM).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct CertificatePair {
    /// PEM certificate chain, leaf first.
    cert: FilePath,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    key: FilePath,
}

/// `[listeners.tls.hsts]`: the Strict-Transport-Security header, sent by default.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, transform = hsts_rules)]
struct Hsts {
    /// Send Strict-Transport-Security on every response.
    #[schemars(extend("default" = true))]
    enabled: Option<bool>,
    /// The max-age directive; "0s" tells browsers to forget the policy. At most 3650 days.
    #[schemars(extend("default" = "365d"))]
    max_age: Option<DurationStr>,
    /// The includeSubDomains directive.
    #[schemars(extend("default" = false))]
    include_subdomains: Option<bool>,
    /// The preload directive; requires include_subdomains and a max_age of at least 365 days.
    #[schemars(extend("default" = false))]
    preload: Option<bool>,
}

fn hsts_rules(schema: &mut Schema) {
    schema.insert(
        "if".into(),
        serde_json::json!({ "properties": { "preload": { "const": true } }, "required": ["preload"] }),
    );
    schema.insert(
        "then".into(),
        serde_json::json!({
            "properties": { "include_subdomains": { "const": true } },
            "required": ["include_subdomains"]
        }),
    );
}

/// One `[[pools]]` backend pool.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Pool {
    /// Unique; routes name it.
    name: Name,
    /// "host:port" backends; names are resolved when the config loads.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    endpoints: Vec<String>,
    /// How a request picks an endpoint.
    #[schemars(extend("default" = "round_robin"))]
    balance: Option<Balance>,
    /// HTTP version to the backends (h2: prior knowledge, or ALPN over TLS).
    #[schemars(extend("default" = "http1"))]
    protocol: Option<UpstreamProtocol>,
    /// Idle pooled connections are closed after this long. At most 1h.
    #[schemars(extend("default" = "90s"))]
    idle_timeout: Option<DurationStr>,
    /// TLS to the backends, verified against a CA bundle.
    tls: Option<PoolTls>,
    /// How the gateway authenticates itself to the backends.
    auth: Option<PoolAuth>,
    /// Active health checks; without this section, none.
    health: Option<Health>,
    /// Passive ejection on connect errors and 5xx responses.
    passive: Option<Passive>,
}

/// `[pools.tls]`: TLS to the backends, with certificate verification.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct PoolTls {
    /// PEM bundle of the CA certificates backend certificates must chain to.
    ca: FilePath,
    /// Name checked against backend certificates (a DNS name or IP address); default: the
    /// endpoint's host.
    server_name: Option<String>,
    /// The gateway's PEM certificate chain for backends that require client certificates
    /// (with client_key).
    client_cert: Option<FilePath>,
    /// The private key of client_cert (PEM, unencrypted).
    client_key: Option<FilePath>,
}

keyword_schema!(BackendAuthKind, ClientAuthMethod);

/// `[pools.auth]`: the gateway's credentials for the backends; the client's Authorization
/// header is replaced by them.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, transform = pool_auth_rules)]
struct PoolAuth {
    /// basic: HTTP Basic. client_credentials: an OAuth 2 token from token_url.
    #[serde(rename = "type")]
    kind: BackendAuthKind,
    /// basic: the user name (no `:`).
    username: Option<String>,
    /// basic: a file whose first line is the password.
    password_file: Option<FilePath>,
    /// basic: an environment variable holding the password.
    password_env: Option<String>,
    /// client_credentials: the token endpoint; http:// only to loopback, https:// needs ca.
    #[schemars(regex(pattern = r"^https?://"))]
    token_url: Option<String>,
    /// client_credentials: the client id.
    client_id: Option<String>,
    /// client_credentials: a file whose first line is the client secret.
    client_secret_file: Option<FilePath>,
    /// client_credentials: an environment variable holding the client secret.
    client_secret_env: Option<String>,
    /// client_credentials: how the secret is sent: basic (Authorization header) or post (form).
    #[schemars(extend("default" = "basic"))]
    client_auth: Option<ClientAuthMethod>,
    /// client_credentials: the scope asked for.
    scope: Option<String>,
    /// client_credentials: the RFC 8707 resource (the backend's audience).
    resource: Option<String>,
    /// client_credentials: PEM bundle for an https token_url.
    ca: Option<FilePath>,
    /// client_credentials: replace a token this long before it expires. At most 1h.
    #[schemars(extend("default" = "60s"))]
    refresh_before: Option<DurationStr>,
}

/// Keys per type.
fn pool_auth_rules(schema: &mut Schema) {
    schema.insert(
        "if".into(),
        serde_json::json!({ "properties": { "type": { "const": "basic" } } }),
    );
    schema.insert(
        "then".into(),
        serde_json::json!({ "required": ["username"] }),
    );
    schema.insert(
        "else".into(),
        serde_json::json!({ "required": ["token_url", "client_id"] }),
    );
}

/// `[pools.health]`: active health checks (GET probes).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Health {
    /// Path requested with GET; starts with `/`, may carry a query.
    #[schemars(regex(pattern = r"^/"))]
    path: String,
    /// Time between probes of one endpoint. At most 1h.
    #[schemars(extend("default" = "5s"))]
    interval: Option<DurationStr>,
    /// Time a probe may take; shorter than interval.
    #[schemars(extend("default" = "2s"))]
    timeout: Option<DurationStr>,
    /// Consecutive successes that mark an endpoint healthy again.
    #[schemars(range(min = 1, max = 100), extend("default" = 2))]
    healthy_threshold: Option<i64>,
    /// Consecutive failures that mark it unhealthy.
    #[schemars(range(min = 1, max = 100), extend("default" = 3))]
    unhealthy_threshold: Option<i64>,
}

/// `[pools.passive]`: ejection of endpoints that fail real requests.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Passive {
    /// Consecutive connect errors or 5xx responses that eject an endpoint; 0 disables.
    #[schemars(range(min = 0, max = 1000), extend("default" = 5))]
    consecutive_failures: Option<i64>,
    /// How long an ejected endpoint receives no traffic. At most 1h.
    #[schemars(extend("default" = "30s"))]
    ejection_time: Option<DurationStr>,
}

/// One `[[routes]]` entry.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Route {
    /// Unique; used in logs and metrics.
    name: Name,
    /// The product (group of routes) it belongs to.
    product: Option<Name>,
    /// Hosts matched, without port, any case: "api.example.com", or "*.example.com" (any
    /// name ending in .example.com). Absent: any host.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    hosts: Option<Vec<String>>,
    /// The path: `/` first, no query or fragment.
    path: RoutePath,
    /// prefix: the path and anything below it at a `/` boundary. exact: the path only.
    #[schemars(extend("default" = "prefix"))]
    path_match: Option<PathMatchKind>,
    /// HTTP methods matched; absent: any method.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    methods: Option<Vec<Method>>,
    /// The [[pools]] entry requests go to.
    pool: Name,
    /// Extra attempts for idempotent requests when connecting to a backend failed.
    #[schemars(range(min = 0, max = 5), extend("default" = 1))]
    retries: Option<i64>,
    /// Largest request body accepted (413 above): bytes, or a number with B, KB, MB, GB
    /// (powers of 1000) or KiB, MiB, GiB (powers of 1024).
    #[schemars(extend("default" = "10MiB"))]
    max_body_size: Option<Size>,
    /// Pass WebSocket upgrades through.
    #[schemars(extend("default" = false))]
    websocket: Option<bool>,
    /// Upstream timeouts.
    timeouts: Option<Timeouts>,
    /// Require a bearer token from a [[token_providers]] entry.
    token: Option<RouteTokenSection>,
    /// Require a valid API key whose scope covers this route; needs [api_keys].
    #[schemars(extend("default" = false))]
    api_key: Option<bool>,
    /// Require a verified client certificate; needs a listener with [listeners.client_certs].
    client_cert: Option<RouteClientCertSection>,
    /// CORS answered by the gateway; absent: no CORS headers are added.
    cors: Option<RouteCors>,
    /// What backend responses may carry; absent: leaky headers stripped, 5xx bodies masked.
    response: Option<RouteResponse>,
    /// Request validation against an OpenAPI document or a JSON Schema (docs/validation.md).
    validation: Option<RouteValidationSection>,
}

/// `[routes.validation]`: checks parameters, content type and body; `openapi` or `schema`.
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend("oneOf" = [{"required": ["openapi"]}, {"required": ["schema"]}])
)]
struct RouteValidationSection {
    /// An OpenAPI 3.0 or 3.1 document (YAML or JSON); operations are matched by path template
    /// and method.
    openapi: Option<FilePath>,
    /// A JSON Schema (2020-12 unless it says otherwise) for every request body of the route.
    schema: Option<FilePath>,
    /// Allowed media types or ranges ("application/json", "application/*"); absent: those of
    /// the operation's requestBody (openapi), or "application/json" (schema).
    content_types: Option<Vec<String>>,
    /// Bodies are buffered for validation up to this size (at most the route's
    /// max_body_size, the default); larger ones get 413.
    max_body_size: Option<Size>,
    /// prevent (the default): refuse (400, 415); detect: log and forward.
    action: Option<ValidationAction>,
    /// What happens to a path and method the document does not describe: pass (forwarded
    /// unchecked, the default) or refuse (404, logged only with action = "detect").
    unknown_operations: Option<ValidationUnknown>,
}

use crate::validation::{Action as ValidationAction, UnknownOperations as ValidationUnknown};
keyword_schema!(ValidationAction, ValidationUnknown);

/// `[routes.response]`: backend response hygiene. Server, X-Powered-By and similar headers
/// are always removed.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RouteResponse {
    /// Status codes the backend may answer with (others: 502 in prevent mode); absent: any.
    #[schemars(length(min = 1), inner(range(min = 100, max = 599)))]
    status_codes: Option<Vec<i64>>,
    /// prevent: refuse a response outside status_codes, or one that fails schema/openapi
    /// (502). detect: log it and pass it on.
    #[schemars(extend("default" = "prevent"))]
    action: Option<ValidationAction>,
    /// A JSON Schema (2020-12 unless it says otherwise) for the JSON bodies of 2xx responses.
    schema: Option<FilePath>,
    /// An OpenAPI 3.0 or 3.1 document: the status, media type and JSON body of each response
    /// are checked against the matching operation's `responses`.
    openapi: Option<FilePath>,
    /// Response bodies are buffered for validation up to this size; larger ones are refused
    /// (prevent) or passed on unchecked (detect). No effect without schema or openapi.
    #[schemars(extend("default" = "1MiB"))]
    max_body_size: Option<Size>,
    /// Response headers removed in addition to the built-in list.
    strip_headers: Option<Vec<String>>,
    /// Replace the body of a backend 5xx (stack traces, internal names) with the gateway's
    /// problem document; the status is kept.
    #[schemars(extend("default" = true))]
    mask_server_errors: Option<bool>,
}

/// `[routes.cors]`: which web origins may call the route from a browser.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RouteCors {
    /// "https://app.example.com", "https://*.example.com" (any subdomain), or "*" (any origin,
    /// not with allow_credentials). No path, no `null`.
    #[schemars(length(min = 1))]
    allowed_origins: Vec<String>,
    /// Methods a preflight may ask for; absent: the route's methods, or GET, HEAD, POST for a
    /// route that takes any method.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    allowed_methods: Option<Vec<Method>>,
    /// Request headers a preflight may ask for (Accept, Accept-Language, Content-Language need
    /// not be listed).
    allowed_headers: Option<Vec<String>>,
    /// Response headers scripts may read.
    exposed_headers: Option<Vec<String>>,
    /// Allow cookies and credentials (Access-Control-Allow-Credentials).
    #[schemars(extend("default" = false))]
    allow_credentials: Option<bool>,
    /// How long browsers may cache a preflight answer. At most 24h.
    #[schemars(extend("default" = "10m"))]
    max_age: Option<DurationStr>,
}

/// `[routes.client_cert]`: which client certificates may use the route. Every non-empty list
/// must match (and), an entry of a list suffices (or); no lists: any verified certificate.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RouteClientCertSection {
    /// SHA-256 of the certificate's DER, 64 hex digits (`:` separators allowed).
    #[schemars(inner(regex(pattern = r"^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$")))]
    thumbprints: Option<Vec<String>>,
    /// Subject DNs as RFC 4514 writes them ("CN=client,O=Example"), compared exactly.
    subjects: Option<Vec<String>>,
    /// Issuer DNs as RFC 4514 writes them, compared exactly.
    issuers: Option<Vec<String>>,
    /// DNS SANs: exact (any case) or "*.example.com" (one label).
    dns: Option<Vec<String>>,
    /// URI SANs (SPIFFE IDs): exact, or a prefix when ending in `/`.
    uris: Option<Vec<String>>,
    /// Certificate facts sent to the backend as X-Client-Cert-* headers (client copies are
    /// always removed).
    #[schemars(extend("uniqueItems" = true))]
    forward: Option<Vec<CertFact>>,
    /// RFC 8705: the access token's cnf.x5t#S256 must name this certificate (needs
    /// [routes.token]).
    #[schemars(extend("default" = false))]
    bound_token: Option<bool>,
}

/// A certificate fact `forward` can send.
struct CertFact;
impl JsonSchema for CertFact {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "CertFact".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let words: Vec<&str> = super::client_certs::FORWARD_FACTS
            .iter()
            .map(|(w, _)| *w)
            .collect();
        json_schema!({ "type": "string", "enum": words })
    }
}

/// `[api_keys]`: the key file (hashes only) and where clients present keys.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct ApiKeysSection {
    /// The key file: `[[keys]]` entries with id, owner, hashes, scope and expiry. Read again on
    /// reload.
    file: FilePath,
    /// The header carrying the key; not a hop-by-hop, forwarding, Host, Authorization or
    /// Cookie header.
    #[schemars(
        regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"),
        extend("default" = "Ocp-Apim-Subscription-Key")
    )]
    header: Option<String>,
    /// The query parameter read when the header is absent.
    #[schemars(length(min = 1), extend("default" = "subscription-key"))]
    query_param: Option<String>,
}

keyword_schema!(crate::identity::oidc::StartupPolicy);

/// One `[[token_providers]]` entry: an OpenID Connect issuer whose signed JWTs routes accept.
/// Its keys come from discovery, or from `jwks_file` or `jwks` (at most one of the two).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("not" = {"required": ["jwks_file", "jwks"]}))]
struct TokenProvider {
    /// Unique; routes name it in `[routes.token] provider`.
    name: Name,
    /// The exact `iss` of its tokens; discovery is at <issuer>/.well-known/openid-configuration.
    /// http:// only to loopback hosts; https:// needs `ca` (there are no built-in web roots).
    /// With static keys (`jwks_file`, `jwks`) nothing is fetched and any http(s) URL will do.
    #[schemars(regex(pattern = r"^https?://"))]
    issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    audiences: Vec<String>,
    /// Accepted signature algorithms; absent: the keys' own. `none` and HS256/384/512 are
    /// refused.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = r"^(RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|EdDSA)$")),
        extend("uniqueItems" = true)
    )]
    algorithms: Option<Vec<String>>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`. At most 5m.
    #[schemars(extend("default" = "60s"))]
    clock_skew: Option<DurationStr>,
    /// Longer tokens are refused before decoding. 1KiB to 64KiB.
    #[schemars(extend("default" = "8KiB"))]
    max_token_size: Option<Size>,
    /// Required JOSE `typ` (such as "at+jwt", RFC 9068), any case, with or without
    /// "application/"; absent: any.
    #[schemars(length(min = 1))]
    require_typ: Option<String>,
    /// PEM bundle of the CA certificates the issuer's https certificate must chain to.
    ca: Option<FilePath>,
    /// How often the signing keys are refetched when the JWKS response has no max-age. 1m to
    /// 24h.
    #[schemars(extend("default" = "5m"))]
    jwks_refresh: Option<DurationStr>,
    /// At most one refetch per this interval for a token signed with an unknown key. 1s to 10m.
    #[schemars(extend("default" = "10s"))]
    unknown_kid_interval: Option<DurationStr>,
    /// Static keys: a JWKS file (RFC 7517 `{"keys": [...]}`), instead of discovery. Read
    /// again on every reload, and reloaded when it changes.
    jwks_file: Option<FilePath>,
    /// Static keys written inline: the JWKS document as a string, instead of discovery.
    #[schemars(length(min = 1))]
    jwks: Option<String>,
    /// Until the keys first load: "wait_for_keys" keeps the gateway not ready (/ready answers
    /// 503); "serve" reports ready. Tokens of this provider are refused either way until then.
    #[schemars(extend("default" = "wait_for_keys"))]
    startup: Option<crate::identity::oidc::StartupPolicy>,
    /// Bound of the verified-token cache (tokens already verified are not verified again until
    /// their `exp` or until their key leaves the JWKS); 0 disables it. At most 1000000.
    #[schemars(range(min = 0, max = 1_000_000), extend("default" = 10000))]
    token_cache_entries: Option<u32>,
}

/// `[routes.token]`: the route requires a valid bearer token.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RouteTokenSection {
    /// The [[token_providers]] entry whose tokens are accepted.
    provider: Name,
    /// Where the token may come from: "bearer" (Authorization: Bearer), "header:<name>",
    /// "query:<parameter>" or "cookie:<name>". A token in two places is refused.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = r"^(bearer|header:.+|query:.+|cookie:.+)$")),
        extend("uniqueItems" = true, "default" = ["bearer"])
    )]
    sources: Option<Vec<String>>,
    /// Pass the Authorization header on to the backend; by default it is removed.
    #[schemars(extend("default" = false))]
    forward_authorization: Option<bool>,
    /// Claims rules: every rule whose methods match the request must pass.
    rules: Option<Vec<TokenRule>>,
    /// Claims copied into request headers; copies sent by the client are always removed.
    claim_headers: Option<Vec<ClaimHeaderSection>>,
}

/// One `[[routes.token.rules]]` entry: claims required for some methods.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TokenRule {
    /// HTTP methods the rule applies to; absent: every method.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    methods: Option<Vec<Method>>,
    /// Claim requirements, all of which must hold.
    #[schemars(length(min = 1))]
    require: Vec<Requirement>,
}

/// One `[[routes.token.rules.require]]` entry: a claim and the values it must hold.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, transform = requirement_rules)]
struct Requirement {
    /// The claim's name; a dotted path reaches into objects ("realm_access.roles").
    #[schemars(length(min = 1))]
    claim: String,
    /// The claim holds at least one of these; an empty list: the claim is present.
    #[schemars(extend("uniqueItems" = true))]
    any: Option<Vec<String>>,
    /// The claim holds every one of these.
    #[schemars(extend("uniqueItems" = true))]
    all: Option<Vec<String>>,
    /// Splits string claim values (such as " " for a `scp` string).
    #[schemars(length(min = 1, max = 1))]
    separator: Option<String>,
    /// How a claim value is compared with a wanted one.
    #[schemars(extend("default" = "equals"))]
    op: Option<ClaimOp>,
}

/// Exactly one of `any` and `all`.
fn requirement_rules(schema: &mut Schema) {
    schema.insert(
        "oneOf".into(),
        serde_json::json!([{ "required": ["any"] }, { "required": ["all"] }]),
    );
}

/// One `[[routes.token.claim_headers]]` entry: a request header set from claims.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct ClaimHeaderSection {
    /// The header set; not a hop-by-hop, forwarding, Host, Authorization or Cookie header.
    #[schemars(regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    header: String,
    /// Claims tried in order; the first one present is copied.
    #[schemars(length(min = 1))]
    claims: Vec<String>,
}

/// `[routes.timeouts]`: how long each step of an upstream exchange may take.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Timeouts {
    /// Connecting to a backend. At most 5m.
    #[schemars(extend("default" = "2s"))]
    connect: Option<DurationStr>,
    /// From the request fully sent to the response headers. At most 1h.
    #[schemars(extend("default" = "30s"))]
    response_headers: Option<DurationStr>,
    /// The whole exchange, response body included; at least response_headers. At most 24h.
    #[schemars(extend("default" = "60s"))]
    total: Option<DurationStr>,
}

keyword_schema!(super::limits::HeaderStyle, super::limits::Period);

/// `[proxy.limits]`: rate limits and quotas, checked after identity, before the upstream.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct LimitsSection {
    /// Budget headers: "ietf" (RateLimit-Policy and RateLimit), "legacy" (X-RateLimit-*) or
    /// "none" (only Retry-After on refusals).
    #[schemars(extend("default" = "ietf"))]
    headers: Option<super::limits::HeaderStyle>,
    /// Budget headers on forwarded responses too, not only on refusals.
    #[schemars(extend("default" = false))]
    headers_on_success: Option<bool>,
    /// Keys each limit tracks; new keys beyond share one overflow budget. 1 to 10000000.
    #[schemars(range(min = 1, max = 10_000_000), extend("default" = 100_000))]
    max_tracked_keys: Option<i64>,
    /// How often keys whose budget is full again are forgotten. At most 1h.
    #[schemars(extend("default" = "1m"))]
    prune_interval: Option<DurationStr>,
    /// The status of an exhausted quota: 403 (as Azure API Management) or 429.
    #[schemars(extend("enum" = [403, 429], "default" = 403))]
    quota_status: Option<i64>,
    /// Where quota counters survive restarts; absent: in memory only.
    state_file: Option<FilePath>,
    /// How often changed quota counters are written to the state file. At most 1h.
    #[schemars(extend("default" = "30s"))]
    flush_interval: Option<DurationStr>,
    /// Rate limits (GCRA): `requests` per `per`, up to `burst` at once.
    rate: Option<Vec<RateSection>>,
    /// Quotas: calls and bytes per hour, day or month (UTC).
    quota: Option<Vec<QuotaSection>>,
}

/// One `[[proxy.limits.rate]]`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RateSection {
    /// Unique among limits and quotas; the policy name in headers and the log rule.
    name: Name,
    /// What a key is: "api_key", "ip", "route", "claim:<name>", "header:<name>"; empty: one
    /// budget for every request covered.
    by: Vec<String>,
    /// Prefix length IPv4 clients are grouped by for "ip".
    #[schemars(range(min = 0, max = 32), extend("default" = 32))]
    ipv4_prefix: Option<i64>,
    /// Prefix length IPv6 clients are grouped by for "ip" (64: one budget per /64).
    #[schemars(range(min = 0, max = 128), extend("default" = 128))]
    ipv6_prefix: Option<i64>,
    /// Routes covered; with `products` absent too: every route.
    routes: Option<Vec<Name>>,
    /// Products covered.
    products: Option<Vec<Name>>,
    /// Requests per `per`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    requests: i64,
    /// The period of `requests`. At most 24h.
    per: DurationStr,
    /// Requests allowed at once; absent: `requests`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    burst: Option<i64>,
    /// Other rates for named API keys.
    tiers: Option<Vec<RateTierSection>>,
}

/// One `[[proxy.limits.rate.tiers]]`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct RateTierSection {
    /// API key ids.
    #[schemars(length(min = 1))]
    keys: Vec<String>,
    #[schemars(range(min = 1, max = 1_000_000_000))]
    requests: i64,
    /// Absent: the tier's `requests`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    burst: Option<i64>,
}

/// One `[[proxy.limits.quota]]`: at least one of `calls` and `bytes`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct QuotaSection {
    /// Unique among limits and quotas.
    name: Name,
    /// As for rate limits.
    by: Vec<String>,
    #[schemars(range(min = 0, max = 32), extend("default" = 32))]
    ipv4_prefix: Option<i64>,
    #[schemars(range(min = 0, max = 128), extend("default" = 128))]
    ipv6_prefix: Option<i64>,
    routes: Option<Vec<Name>>,
    products: Option<Vec<Name>>,
    /// The calendar period, in UTC.
    period: super::limits::Period,
    /// Calls per period.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    calls: Option<i64>,
    /// Request and response body bytes per period.
    bytes: Option<Size>,
    /// Other quotas for named API keys; absent values keep the quota's.
    tiers: Option<Vec<QuotaTierSection>>,
}

/// One `[[proxy.limits.quota.tiers]]`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct QuotaTierSection {
    #[schemars(length(min = 1))]
    keys: Vec<String>,
    #[schemars(range(min = 1, max = 1_000_000_000))]
    calls: Option<i64>,
    bytes: Option<Size>,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use serde_json::{Map, Value, json};

    use super::json_schema;
    use crate::config::{ErrorKind, load, load_str};

    const REGENERATE: &str =
        "cargo run -p gateway-userspace --bin portcullis -- schema > docs/portcullis.schema.json";

    fn repo_file(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    /// A TOML file as the JSON the schema describes.
    fn toml_as_json(path: &str) -> Value {
        let text = std::fs::read_to_string(repo_file(path)).expect("read example");
        toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&json_schema()).expect("the schema compiles")
    }

    fn schema_errors(instance: &Value) -> Vec<String> {
        validator()
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Follows a local `$ref` (`#/$defs/X`).
    fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => root
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
            None => schema,
        }
    }

    /// Every table the schema describes, by dotted path (`listeners.tls`; "" for the top
    /// level), with the schema of its contents. Arrays of tables count as tables.
    fn tables(root: &Value) -> BTreeMap<String, &Value> {
        fn walk<'a>(
            root: &'a Value,
            s: &'a Value,
            path: String,
            out: &mut BTreeMap<String, &'a Value>,
        ) {
            let s = resolve(root, s);
            let Some(props) = s.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, p) in props {
                let p = resolve(root, p);
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match p.get("type").and_then(Value::as_str) {
                    Some("object") => walk(root, p, child, out),
                    Some("array") => {
                        let items = resolve(root, &p["items"]);
                        if items.get("type").and_then(Value::as_str) == Some("object") {
                            walk(root, items, child, out);
                        }
                    }
                    _ => {}
                }
            }
            out.insert(path, s);
        }
        let mut out = BTreeMap::new();
        walk(root, root, String::new(), &mut out);
        out
    }

    fn property_names(s: &Value) -> BTreeSet<String> {
        s["properties"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_committed_schema_is_current() {
        let path = repo_file("docs/portcullis.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let current = format!(
            "{}\n",
            serde_json::to_string_pretty(&json_schema()).expect("serialize")
        );
        assert!(
            committed == current,
            "docs/portcullis.schema.json is stale; regenerate it with:\n    {REGENERATE}"
        );
    }

    #[test]
    fn the_schema_is_valid_draft_2020_12() {
        let schema = json_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn every_table_refuses_unknown_keys() {
        let schema = json_schema();
        for (path, s) in tables(&schema) {
            assert_eq!(s["additionalProperties"], json!(false), "table `{path}`");
            assert_eq!(s["type"], "object", "table `{path}`");
        }
    }

    #[test]
    fn the_examples_validate() {
        for example in ["examples/portcullis.toml", "examples/proxy.toml"] {
            assert_eq!(
                schema_errors(&toml_as_json(example)),
                Vec::<String>::new(),
                "{example}"
            );
        }
    }

    #[test]
    fn unknown_keys_fail_schema_validation_as_they_fail_loading() {
        let mut config = toml_as_json("examples/proxy.toml");
        config["listeners"][0]["max_conections"] = json!(10);
        config["listeners"][0]["tls"]["ciphers"] = json!(["x"]);
        config["colour"] = json!("red");
        let errors = schema_errors(&config);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors.iter().any(|e| e.contains("max_conections")),
            "{errors:#?}"
        );
        assert!(errors.iter().any(|e| e.contains("ciphers")), "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("colour")), "{errors:#?}");

        let text = toml::to_string(&config).expect("to TOML");
        let loaded = load_str(&text, Path::new("/nonexistent/p.toml")).expect_err("unknown keys");
        let unknown: BTreeSet<String> = loaded
            .iter()
            .filter_map(|e| match &e.kind {
                ErrorKind::UnknownKey { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            unknown,
            BTreeSet::from(["ciphers".into(), "colour".into(), "max_conections".into()])
        );
    }

    /// Every table the schema describes is written (with a key no table has), and the reader's
    /// "unknown key" errors list, for each, the keys it knows: they must be the schema's.
    #[test]
    fn the_schema_and_the_reader_know_the_same_keys() {
        const PROBE: &str = "zz_probe";
        let schema = json_schema();
        let tables = tables(&schema);

        // A document with every table, holding only its sub-tables and the probe key.
        fn skeleton(tables: &BTreeMap<String, &Value>, schema: &Value, path: &str) -> Value {
            let mut table = Map::new();
            table.insert(PROBE.into(), json!(1));
            let s = tables[path];
            for key in property_names(s) {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if !tables.contains_key(&child) {
                    continue;
                }
                let p = resolve(schema, &s["properties"][&key]);
                let value = skeleton(tables, schema, &child);
                table.insert(
                    key,
                    if p["type"] == "array" {
                        json!([value])
                    } else {
                        value
                    },
                );
            }
            Value::Object(table)
        }
        let doc = skeleton(&tables, &schema, "");
        let text = toml::to_string(&doc).expect("to TOML");
        let errors = load_str(&text, Path::new("/nonexistent/p.toml")).expect_err("probes");

        let mut seen = BTreeSet::new();
        for e in &errors {
            let ErrorKind::UnknownKey {
                key,
                table,
                expected,
                ..
            } = &e.kind
            else {
                continue;
            };
            assert_eq!(key, PROBE, "{e}");
            let path = if table == "the top level" {
                String::new()
            } else {
                table.trim_matches(|c| c == '[' || c == ']').to_owned()
            };
            let schema_keys = tables
                .get(&path)
                .map(|s| property_names(s))
                .unwrap_or_else(|| panic!("the reader has table `{path}`, the schema has not"));
            let reader_keys: BTreeSet<String> = expected.iter().map(|k| k.to_string()).collect();
            assert_eq!(
                reader_keys, schema_keys,
                "keys of `{path}`: reader, then schema"
            );
            seen.insert(path);
        }
        let described: BTreeSet<String> = tables.keys().cloned().collect();
        assert_eq!(
            seen, described,
            "tables the reader walked, then tables the schema has"
        );
    }

    /// A config with every defaulted key left out loads exactly as one with each such key set
    /// to the schema's `default`.
    #[test]
    fn the_schema_defaults_are_the_compilers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["api.example.com".to_owned()])
                .expect("certificate");
        std::fs::write(dir.path().join("c.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("k.pem"), signing_key.serialize_pem()).expect("write");
        std::fs::write(
            dir.path().join("keys.toml"),
            format!(
                "[[keys]]\nid = \"k\"\nowner = \"o\"\nprimary = \"{}\"\nscope = \"all\"\n",
                crate::identity::api_keys::hash_key("test-key")
            ),
        )
        .expect("write");
        let path = dir.path().join("p.toml");
        let sparse = r#"
[kernel]
interfaces = ["eth0"]
[allow]
[log]
[admin]
[proxy]
[proxy.limits]
[[proxy.limits.rate]]
name = "rl"
requests = 10
per = "1s"
by = ["api_key"]
[[proxy.limits.rate.tiers]]
keys = ["k"]
requests = 20
[[proxy.limits.quota]]
name = "q"
period = "day"
calls = 100
by = ["api_key", "ip"]
[[proxy.limits.quota.tiers]]
keys = ["k"]
calls = 200
[trusted_proxies]
[abuse]
[[abuse.rules]]
kind = "auth_failure"
threshold = 5
[[deny]]
name = "d"
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{ cert = "c.pem", key = "k.pem" }]
[listeners.tls.hsts]
[listeners.client_certs]
ca = ["c.pem"]
[[listeners]]
name = "plain"
bind = "127.0.0.1:0"
protocol = "http"
[[pools]]
name = "p"
endpoints = ["127.0.0.1:1"]
[pools.tls]
ca = "c.pem"
[pools.auth]
type = "client_credentials"
token_url = "http://127.0.0.1:9000/token"
client_id = "gateway"
client_secret_file = "keys.toml"
[pools.health]
path = "/"
[pools.passive]
[[token_providers]]
name = "idp"
issuer = "http://127.0.0.1:9000"
audiences = ["api"]
[api_keys]
file = "keys.toml"
[[routes]]
name = "r"
path = "/"
pool = "p"
[routes.timeouts]
[routes.client_cert]
[routes.cors]
allowed_origins = ["https://app.example.com"]
[routes.response]
[routes.token]
provider = "idp"
[[routes.token.rules]]
[[routes.token.rules.require]]
claim = "roles"
any = []
[[routes.token.claim_headers]]
header = "x-user"
claims = ["sub"]
[cluster]
redis = "127.0.0.1:6379"
"#;
        fn fill(
            schema: &Value,
            s: &Value,
            value: &mut Value,
            path: &str,
            filled: &mut BTreeSet<String>,
        ) {
            let s = resolve(schema, s);
            let Some(table) = value.as_object_mut() else {
                return;
            };
            // Keys only for plain listeners; an https one refuses them.
            let https = table.get("protocol") == Some(&json!("https"));
            for (key, p) in s["properties"].as_object().into_iter().flatten() {
                let p = resolve(schema, p);
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match table.get_mut(key) {
                    Some(Value::Array(items)) => {
                        for item in items {
                            fill(schema, &p["items"], item, &child, filled);
                        }
                    }
                    Some(sub) => fill(schema, p, sub, &child, filled),
                    None => {
                        let plain_only = key == "http_mode" || key == "redirect_port";
                        if let Some(default) = p.get("default").filter(|_| !(https && plain_only)) {
                            table.insert(key.clone(), default.clone());
                            filled.insert(child);
                        }
                    }
                }
            }
        }
        let schema = json_schema();
        let mut full: Value = toml::from_str(sparse).expect("parse");
        let mut filled = BTreeSet::new();
        fill(&schema, &schema, &mut full, "", &mut filled);
        let full_text = toml::to_string(&full).expect("to TOML");

        std::fs::write(&path, sparse).expect("write");
        let a = load(&path).unwrap_or_else(|e| panic!("sparse:\n{e}"));
        std::fs::write(&path, &full_text).expect("write");
        let b = load(&path).unwrap_or_else(|e| panic!("with defaults:\n{e}\n{full_text}"));
        assert_eq!(format!("{a:#?}"), format!("{b:#?}"), "{full_text}");

        // Every default but those of [geo] (no database here) was tried.
        let mut defaults = BTreeSet::new();
        for (path, s) in tables(&schema) {
            for (key, p) in s["properties"].as_object().into_iter().flatten() {
                if resolve(&schema, p).get("default").is_some() && path != "geo" {
                    defaults.insert(if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    });
                }
            }
        }
        assert_eq!(filled, defaults);
    }

    /// The two examples between them write every key, except those of [geo], which ships
    /// commented out for want of a database.
    #[test]
    fn the_examples_write_every_key() {
        fn keys(v: &Value, path: &str, out: &mut BTreeSet<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        out.insert(p.clone());
                        keys(v, &p, out);
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| keys(i, path, out)),
                _ => {}
            }
        }
        let mut written = BTreeSet::new();
        for example in ["examples/portcullis.toml", "examples/proxy.toml"] {
            keys(&toml_as_json(example), "", &mut written);
        }
        let schema = json_schema();
        let mut missing = Vec::new();
        for (path, s) in tables(&schema) {
            if path == "geo" {
                continue;
            }
            for key in property_names(s) {
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                // A secret is given one way, from a file or from the environment; the examples
                // use files and docs/configuration.md shows the `_env` spelling.
                let alternative =
                    p == "pools.auth.password_env" || p == "pools.auth.client_secret_env";
                if p != "geo" && !alternative && !written.contains(&p) {
                    missing.push(p);
                }
            }
        }
        assert_eq!(missing, Vec::<String>::new());
    }
}
