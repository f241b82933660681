//! Config errors: what went wrong ([`ErrorKind`]), where ([`Location`]), and the sorted list of
//! every error of one load ([`ConfigErrors`]), rendered as `path:line:col: error: message`.
//! Collecting errors while reading is [`super::source::Diagnostics`]'s job.

use std::fmt;
use std::path::PathBuf;

use crate::rules::cidr_file::LineError;
use crate::rules::prefix::PrefixError;

/// A place in a file: 1-based line and column, the column counted in characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One error, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: error: {kind}")]
pub struct ConfigError {
    pub location: Location,
    pub kind: ErrorKind,
}

/// What is wrong. Messages name the key (as a dotted path) or the value, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The config file could not be read at all (reported at 1:1).
    #[error("cannot read the config file: {0}")]
    ReadConfig(String),
    /// The config file is not UTF-8, so it cannot be TOML; located at the first bad byte.
    #[error("the file is not valid UTF-8")]
    NotUtf8,
    /// A TOML syntax error. Only the first is reported: later ones are often its echoes.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key the schema does not have: in a security config a typo must fail, not be ignored.
    #[error(
        "unknown key `{key}` in {table}{}",
        unknown_key_hint(suggestion, expected)
    )]
    UnknownKey {
        key: String,
        /// The table, as written in TOML (`[kernel]`, `[[deny]]`, `the top level`).
        table: String,
        /// The closest known key, when one is close enough to be a likely typo.
        suggestion: Option<&'static str>,
        expected: Vec<&'static str>,
    },
    /// A value of the wrong TOML type (a string where a list is expected, ...).
    #[error("`{key}`: {reason}")]
    WrongType { key: String, reason: String },
    /// A string that is not one of the words the key accepts.
    #[error("`{key}`: unknown value `{value}`; expected one of: {}", expected.join(", "))]
    UnknownKeyword {
        key: String,
        value: String,
        expected: Vec<&'static str>,
    },
    /// A required key is absent.
    #[error("missing required key `{key}` in {table}")]
    Missing { key: &'static str, table: String },
    /// The kernel layer is enabled but no interface is named to attach it to.
    #[error(
        "no interface to attach to: list at least one in `kernel.interfaces`, \
         or set `kernel.enabled = false`"
    )]
    NoInterfaces,
    /// An interface name the kernel would refuse (see `dev_valid_name` in net/core/dev.c).
    #[error("invalid interface name `{name}`: {reason}")]
    InterfaceName { name: String, reason: &'static str },
    /// The same interface twice: attaching twice would fail at run time.
    #[error("interface `{name}` is listed more than once")]
    DuplicateInterface { name: String },
    /// `pin_root` must not depend on the working directory of whoever starts the gateway.
    #[error("`kernel.pin_root` must be an absolute path, not `{path}`")]
    PinRootNotAbsolute { path: String },
    /// A duration that does not parse or is out of range.
    #[error("`{key}`: invalid duration `{value}`: {reason}")]
    Duration {
        key: String,
        value: String,
        reason: String,
    },
    /// A file path that is the empty string.
    #[error("`{key}`: empty file path")]
    EmptyPath { key: String },
    /// A CIDR prefix or address in the config that does not parse.
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// A bad line in an included CIDR file (located in that file).
    #[error(transparent)]
    CidrLine(#[from] LineError),
    /// An included CIDR file that cannot be used at all (located at its reference).
    #[error("{0}")]
    CidrFile(String),
    /// A name (of a deny set, listener, pool, route or product) outside `[a-z0-9_-]{1,32}`:
    /// names appear in metrics labels and logs.
    #[error("invalid {what} name `{name}`: use 1 to 32 characters from a-z, 0-9, `_` and `-`")]
    Name { what: &'static str, name: String },
    /// Two entries of one kind with one name: counters, logs and references could not tell
    /// them apart.
    #[error("duplicate {what} name `{name}` (first used on line {first_line})")]
    DuplicateName {
        what: &'static str,
        name: String,
        first_line: usize,
    },
    /// A country that is not two ASCII letters.
    #[error("`{code}` is not an ISO 3166-1 alpha-2 country code (two letters, such as `RU`)")]
    CountryCode { code: String },
    /// A `[geo]` section that could never block anything: almost certainly a mistake.
    #[error(
        "[geo] blocks nothing: list countries in `geo.block`, set `geo.unknown = \"block\"`, \
         or remove the [geo] section"
    )]
    GeoBlocksNothing,
    /// The country database could not be loaded; the message names the .mmdb file.
    #[error("{0}")]
    Geo(String),
    /// An integer outside the range its key allows.
    #[error("`{key}`: {value} is out of range; expected {min} to {max}")]
    OutOfRange {
        key: String,
        value: i64,
        min: i64,
        max: i64,
    },
    /// A value that must be an IP address with a port; `example` is quoted as it should read.
    #[error("`{key}`: `{value}` is not an IP address and port such as {example}")]
    SocketAddr {
        key: String,
        value: String,
        example: &'static str,
    },
    /// The admin endpoint (metrics, bans, reload) on a non-loopback address, not asked for.
    #[error(
        "`admin.listen`: {addr} is not a loopback address, so the admin endpoint (metrics, bans, \
         reload) would be reachable from the network; set `admin.allow_remote = true` if that is \
         intended"
    )]
    AdminNotLoopback { addr: std::net::SocketAddr },
    /// Two sockets that cannot both be bound: the same address, or a wildcard address and
    /// another on the same port.
    #[error("{}", bind_conflict(addr, other, owner))]
    BindConflict {
        addr: std::net::SocketAddr,
        other: std::net::SocketAddr,
        /// Who binds `other`, and where: ``listener `public` (line 4)``.
        owner: String,
    },
    /// A listener expecting PROXY headers while no peer may send one.
    #[error(
        "`listeners.proxy_protocol` is true but `trusted_proxies.load_balancers` is empty: no \
         peer may send a PROXY header, so every connection would be closed"
    )]
    ProxyProtocolUntrusted,
    /// A key that means nothing in this context (`http_mode` on an https listener).
    #[error("`{key}` applies only {applies}")]
    NotApplicable { key: String, applies: &'static str },
    /// An https listener without its certificates.
    #[error("https listener `{listener}` needs a [listeners.tls] section with its certificates")]
    TlsMissing { listener: String },
    /// A list that must not be empty; `hint` says what to write instead.
    #[error("`{key}` is empty: {hint}")]
    EmptyList { key: String, hint: &'static str },
    /// The same value twice in a list where that is a mistake.
    #[error("`{key}`: `{value}` is listed more than once")]
    Duplicate { key: String, value: String },
    /// A certificate, key or CA file that cannot be used (located at the entry naming it).
    #[error(transparent)]
    TlsFile(#[from] super::tls_files::TlsFileError),
    /// HSTS preload asked for without what the preload list requires.
    #[error("`listeners.tls.hsts.preload` requires {requirement} (the hstspreload.org rules)")]
    HstsPreload { requirement: &'static str },
    /// A backend endpoint that is not `host:port`.
    #[error("`pools.endpoints`: `{value}` is not a `host:port` endpoint: {reason}")]
    Endpoint { value: String, reason: String },
    /// A backend name that does not resolve at load time.
    #[error("cannot resolve `{endpoint}`: {reason}")]
    Resolve { endpoint: String, reason: String },
    /// A TLS server name that is neither a DNS name nor an IP address.
    #[error("`{key}`: `{value}` is not a valid DNS name or IP address")]
    ServerName { key: String, value: String },
    /// A URL path that cannot be used as written.
    #[error("`{key}`: invalid path `{value}`: {reason}")]
    Path {
        key: String,
        value: String,
        reason: &'static str,
    },
    /// Two durations in the wrong order (a health check timeout longer than its interval).
    #[error(
        "`{key}` ({}) must be {relation} `{other}` ({})",
        humantime::format_duration(*value),
        humantime::format_duration(*other_value)
    )]
    DurationOrder {
        key: String,
        value: std::time::Duration,
        relation: &'static str,
        other: String,
        other_value: std::time::Duration,
    },
    /// A byte size that does not parse.
    #[error("`{key}`: invalid size `{value}`: {reason}")]
    Size {
        key: String,
        value: String,
        reason: super::size::SizeError,
    },
    /// A string that is not an HTTP method token (RFC 9110 section 9.1).
    #[error("`{key}`: `{value}` is not an HTTP method (a token such as `GET`)")]
    Method { key: String, value: String },
    /// A route host pattern that could never match, or is ambiguous.
    #[error("`routes.hosts`: invalid host `{value}`: {reason}")]
    HostPattern { value: String, reason: String },
    /// A route naming a pool that does not exist.
    #[error("unknown pool `{name}`{}", unknown_pool_hint(suggestion.as_deref(), pools))]
    UnknownPool {
        name: String,
        suggestion: Option<String>,
        pools: Vec<String>,
    },
    /// A route that can never be chosen: an earlier one matches every request it would.
    #[error(
        "route `{by}` (line {line}) shadows route `{route}`: it matches every request `{route}` \
         would (same hosts and path, and its methods include all of `{route}`'s), so `{route}` \
         would never be used"
    )]
    Shadowed {
        route: String,
        by: String,
        line: usize,
    },
    /// A route names a token provider that does not exist.
    #[error(
        "unknown token provider `{name}`{}",
        unknown_provider_hint(suggestion.as_deref(), providers)
    )]
    UnknownTokenProvider {
        name: String,
        suggestion: Option<String>,
        providers: Vec<String>,
    },
    /// An issuer URL the key fetcher would refuse.
    #[error("`token_providers.issuer`: `{value}` {reason}")]
    Issuer { value: String, reason: String },
    /// A JWS algorithm that is never acceptable.
    #[error("`token_providers.algorithms`: `{value}` is refused: {reason}")]
    AlgorithmRefused { value: String, reason: &'static str },
    /// A size outside what the key allows.
    #[error("`{key}`: size `{value}` is out of range; expected {min} to {max}")]
    SizeRange {
        key: String,
        value: String,
        min: &'static str,
        max: &'static str,
    },
    /// A value refused for a reason particular to its key.
    #[error("`{key}`: invalid value `{value}`: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    /// A token source that is not `bearer`, `header:`, `query:` or `cookie:`.
    #[error("`routes.token.sources`: invalid token source `{value}`: {reason}")]
    TokenSource { value: String, reason: String },
    /// A string that is not an HTTP header name.
    #[error("`{key}`: `{value}` is not a valid header name (a token such as `X-User-Id`)")]
    HeaderName { key: String, value: String },
    /// A header that claims must not set.
    #[error("`routes.token.claim_headers.header`: `{value}` cannot carry claims: {reason}")]
    ForbiddenClaimHeader { value: String, reason: &'static str },
    /// A header that cannot carry API keys.
    #[error("`api_keys.header`: `{value}` cannot carry API keys: {reason}")]
    ForbiddenKeyHeader { value: String, reason: &'static str },
    /// A key file that cannot be read (located at `api_keys.file`).
    #[error("`api_keys.file`: cannot read the key file `{path}`: {reason}")]
    KeyFileRead { path: String, reason: String },
    /// An error inside the key file (located in that file).
    #[error(transparent)]
    KeyFile(crate::identity::api_keys::KeyFileErrorKind),
    /// A key whose scope names a product or route that no route has (located in the key file).
    #[error(
        "key `{id}`: its scope names {scope}, which no route has; the key would be refused \
         everywhere"
    )]
    UnknownKeyScope { id: String, scope: String },
    /// `api_key = true` on a route while there is no `[api_keys]` section.
    #[error(
        "`routes.api_key`: the route requires an API key, but there is no [api_keys] section \
         naming the key file"
    )]
    ApiKeyWithoutKeys,
    /// A quota (or a quota tier) with neither `calls` nor `bytes`.
    #[error("{table} counts nothing: give it `calls`, `bytes` or both")]
    QuotaCountsNothing { table: &'static str },
    /// `[routes.client_cert]` while no listener asks for client certificates.
    #[error(
        "[routes.client_cert]: the route requires a client certificate, but no listener asks \
         for one; add [listeners.client_certs] with `mode = \"required\"` or `\"optional\"` to \
         an https listener"
    )]
    ClientCertNotOffered,
    /// `bound_token = true` on a route without `[routes.token]`.
    #[error(
        "`routes.client_cert.bound_token`: binding a token to the certificate (RFC 8705) needs \
         a token; add [routes.token] to the route"
    )]
    BoundTokenWithoutToken,
    /// A token provider given its keys in two ways.
    #[error(
        "`token_providers.{key}`: the provider already has its keys from `token_providers.{other}`; \
         give keys one way: `jwks_file`, inline `jwks`, or neither to discover them from the \
         issuer"
    )]
    KeySourceConflict {
        key: &'static str,
        other: &'static str,
    },
    /// A static JWKS file that cannot be read (located at `token_providers.jwks_file`).
    #[error("`token_providers.jwks_file`: cannot read the JWKS file `{path}`: {reason}")]
    JwksFileRead { path: String, reason: String },
    /// A static JWKS (a file, located in it where possible, or inline `jwks`) that the key
    /// hygiene refuses; `what` names it, `reason` is the JWKS problem.
    #[error("{what}: {reason}")]
    Jwks { what: String, reason: String },
    /// A claim requirement with both `any` and `all`, or neither.
    #[error("{}", require_match(*both))]
    RequireMatch { both: bool },
}

fn require_match(both: bool) -> &'static str {
    if both {
        "[[routes.token.rules.require]] takes `any` or `all`, not both: `any` passes when the \
         claim holds one of the values, `all` when it holds every one"
    } else {
        "[[routes.token.rules.require]] needs `any` (the claim holds one of the values) or `all` \
         (it holds every one); an empty list only asks for the claim to be present"
    }
}

fn unknown_provider_hint(suggestion: Option<&str>, providers: &[String]) -> String {
    match (suggestion, providers) {
        (Some(s), _) => format!("; did you mean `{s}`?"),
        (None, []) => "; no [[token_providers]] are defined".to_owned(),
        (None, providers) => format!("; defined token providers: {}", providers.join(", ")),
    }
}

fn bind_conflict(addr: &std::net::SocketAddr, other: &std::net::SocketAddr, owner: &str) -> String {
    if addr == other {
        format!("bind address {addr} is already used by {owner}")
    } else {
        format!("bind address {addr} overlaps {other}, bound by {owner}")
    }
}

fn unknown_pool_hint(suggestion: Option<&str>, pools: &[String]) -> String {
    match (suggestion, pools) {
        (Some(s), _) => format!("; did you mean `{s}`?"),
        (None, []) => "; no [[pools]] are defined".to_owned(),
        (None, pools) => format!("; defined pools: {}", pools.join(", ")),
    }
}

fn unknown_key_hint(suggestion: &Option<&'static str>, expected: &[&'static str]) -> String {
    match (suggestion, expected) {
        (Some(s), _) => format!("; did you mean `{s}`?"),
        (None, []) => "; this table takes no keys".to_owned(),
        (None, keys) => format!("; expected one of: {}", keys.join(", ")),
    }
}

/// Every error of one load, sorted by file, then line and column; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Sorts (stably, so errors at one place keep the order they were found in) and removes
    /// exact duplicates, which arise when one bad file is included twice.
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty(), "ConfigErrors must not be empty");
        errors.sort_by(|a, b| a.location.cmp(&b.location));
        errors.dedup();
        Self(errors)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a load that found no error returns a config instead.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, line: usize, column: usize, kind: ErrorKind) -> ConfigError {
        ConfigError {
            location: Location {
                file: file.into(),
                line,
                column,
            },
            kind,
        }
    }

    /// Every variant, as an operator reads it.
    #[test]
    fn every_kind_formats() {
        let cases: Vec<(ErrorKind, &str)> = vec![
            (
                ErrorKind::ReadConfig("No such file or directory (os error 2)".into()),
                "cannot read the config file: No such file or directory (os error 2)",
            ),
            (ErrorKind::NotUtf8, "the file is not valid UTF-8"),
            (
                ErrorKind::Syntax("invalid boolean, expected `true`".into()),
                "invalid TOML: invalid boolean, expected `true`",
            ),
            (
                ErrorKind::UnknownKey {
                    key: "interfacs".into(),
                    table: "[kernel]".into(),
                    suggestion: Some("interfaces"),
                    expected: vec!["enabled", "interfaces"],
                },
                "unknown key `interfacs` in [kernel]; did you mean `interfaces`?",
            ),
            (
                ErrorKind::UnknownKey {
                    key: "zzz".into(),
                    table: "[log]".into(),
                    suggestion: None,
                    expected: vec!["level", "format"],
                },
                "unknown key `zzz` in [log]; expected one of: level, format",
            ),
            (
                ErrorKind::UnknownKey {
                    key: "a".into(),
                    table: "[empty]".into(),
                    suggestion: None,
                    expected: vec![],
                },
                "unknown key `a` in [empty]; this table takes no keys",
            ),
            (
                ErrorKind::WrongType {
                    key: "kernel.enabled".into(),
                    reason: "invalid type: string \"yes\", expected a boolean".into(),
                },
                "`kernel.enabled`: invalid type: string \"yes\", expected a boolean",
            ),
            (
                ErrorKind::UnknownKeyword {
                    key: "log.format".into(),
                    value: "xml".into(),
                    expected: vec!["json", "text"],
                },
                "`log.format`: unknown value `xml`; expected one of: json, text",
            ),
            (
                ErrorKind::Missing {
                    key: "name",
                    table: "[[deny]]".into(),
                },
                "missing required key `name` in [[deny]]",
            ),
            (
                ErrorKind::NoInterfaces,
                "no interface to attach to: list at least one in `kernel.interfaces`, or set \
                 `kernel.enabled = false`",
            ),
            (
                ErrorKind::InterfaceName {
                    name: "eth/0".into(),
                    reason: "it contains `/`",
                },
                "invalid interface name `eth/0`: it contains `/`",
            ),
            (
                ErrorKind::DuplicateInterface {
                    name: "eth0".into(),
                },
                "interface `eth0` is listed more than once",
            ),
            (
                ErrorKind::PinRootNotAbsolute { path: "bpf".into() },
                "`kernel.pin_root` must be an absolute path, not `bpf`",
            ),
            (
                ErrorKind::Duration {
                    key: "kernel.ban_sweep_interval".into(),
                    value: "0s".into(),
                    reason: "must be greater than zero".into(),
                },
                "`kernel.ban_sweep_interval`: invalid duration `0s`: must be greater than zero",
            ),
            (
                ErrorKind::EmptyPath {
                    key: "allow.files".into(),
                },
                "`allow.files`: empty file path",
            ),
            (
                ErrorKind::Prefix(PrefixError::Syntax("x".into())),
                "`x` is not an IP address or CIDR prefix",
            ),
            (
                ErrorKind::CidrLine(LineError::NotUtf8),
                "line is not valid UTF-8",
            ),
            (
                ErrorKind::CidrFile("`d/x.txt` is not a regular file".into()),
                "`d/x.txt` is not a regular file",
            ),
            (
                ErrorKind::Name {
                    what: "deny set",
                    name: "Bogons".into(),
                },
                "invalid deny set name `Bogons`: use 1 to 32 characters from a-z, 0-9, `_` and `-`",
            ),
            (
                ErrorKind::DuplicateName {
                    what: "route",
                    name: "orders".into(),
                    first_line: 3,
                },
                "duplicate route name `orders` (first used on line 3)",
            ),
            (
                ErrorKind::CountryCode { code: "RUS".into() },
                "`RUS` is not an ISO 3166-1 alpha-2 country code (two letters, such as `RU`)",
            ),
            (
                ErrorKind::GeoBlocksNothing,
                "[geo] blocks nothing: list countries in `geo.block`, set `geo.unknown = \"block\"`, \
                 or remove the [geo] section",
            ),
            (
                ErrorKind::Geo("cannot open `x.mmdb`: gone".into()),
                "cannot open `x.mmdb`: gone",
            ),
            (
                ErrorKind::OutOfRange {
                    key: "routes.retries".into(),
                    value: 9,
                    min: 0,
                    max: 5,
                },
                "`routes.retries`: 9 is out of range; expected 0 to 5",
            ),
            (
                ErrorKind::SocketAddr {
                    key: "listeners.bind".into(),
                    value: "localhost:80".into(),
                    example: "`0.0.0.0:8443`",
                },
                "`listeners.bind`: `localhost:80` is not an IP address and port such as `0.0.0.0:8443`",
            ),
            (
                ErrorKind::AdminNotLoopback {
                    addr: "0.0.0.0:9901".parse().expect("addr"),
                },
                "`admin.listen`: 0.0.0.0:9901 is not a loopback address, so the admin endpoint \
                 (metrics, bans, reload) would be reachable from the network; set \
                 `admin.allow_remote = true` if that is intended",
            ),
            (
                ErrorKind::BindConflict {
                    addr: "0.0.0.0:443".parse().expect("addr"),
                    other: "0.0.0.0:443".parse().expect("addr"),
                    owner: "listener `public` (line 4)".into(),
                },
                "bind address 0.0.0.0:443 is already used by listener `public` (line 4)",
            ),
            (
                ErrorKind::BindConflict {
                    addr: "10.0.0.1:443".parse().expect("addr"),
                    other: "0.0.0.0:443".parse().expect("addr"),
                    owner: "listener `public` (line 4)".into(),
                },
                "bind address 10.0.0.1:443 overlaps 0.0.0.0:443, bound by listener `public` (line 4)",
            ),
            (
                ErrorKind::ProxyProtocolUntrusted,
                "`listeners.proxy_protocol` is true but `trusted_proxies.load_balancers` is empty: \
                 no peer may send a PROXY header, so every connection would be closed",
            ),
            (
                ErrorKind::NotApplicable {
                    key: "listeners.http_mode".into(),
                    applies: "to `protocol = \"http\"` listeners",
                },
                "`listeners.http_mode` applies only to `protocol = \"http\"` listeners",
            ),
            (
                ErrorKind::TlsMissing {
                    listener: "public".into(),
                },
                "https listener `public` needs a [listeners.tls] section with its certificates",
            ),
            (
                ErrorKind::EmptyList {
                    key: "routes.methods".into(),
                    hint: "list at least one method, or remove the key to match any method",
                },
                "`routes.methods` is empty: list at least one method, or remove the key to match \
                 any method",
            ),
            (
                ErrorKind::Duplicate {
                    key: "routes.methods".into(),
                    value: "GET".into(),
                },
                "`routes.methods`: `GET` is listed more than once",
            ),
            (
                ErrorKind::TlsFile(super::super::tls_files::TlsFileError::NoCertificate {
                    path: "certs/api.pem".into(),
                }),
                "certs/api.pem: no certificate found",
            ),
            (
                ErrorKind::HstsPreload {
                    requirement: "`include_subdomains = true`",
                },
                "`listeners.tls.hsts.preload` requires `include_subdomains = true` (the \
                 hstspreload.org rules)",
            ),
            (
                ErrorKind::Endpoint {
                    value: "api".into(),
                    reason: "no port".into(),
                },
                "`pools.endpoints`: `api` is not a `host:port` endpoint: no port",
            ),
            (
                ErrorKind::Resolve {
                    endpoint: "api.invalid:80".into(),
                    reason: "no such host".into(),
                },
                "cannot resolve `api.invalid:80`: no such host",
            ),
            (
                ErrorKind::ServerName {
                    key: "pools.tls.server_name".into(),
                    value: "a b".into(),
                },
                "`pools.tls.server_name`: `a b` is not a valid DNS name or IP address",
            ),
            (
                ErrorKind::Path {
                    key: "routes.path".into(),
                    value: "api".into(),
                    reason: "it must start with `/`",
                },
                "`routes.path`: invalid path `api`: it must start with `/`",
            ),
            (
                ErrorKind::DurationOrder {
                    key: "pools.health.timeout".into(),
                    value: std::time::Duration::from_secs(5),
                    relation: "shorter than",
                    other: "pools.health.interval".into(),
                    other_value: std::time::Duration::from_secs(2),
                },
                "`pools.health.timeout` (5s) must be shorter than `pools.health.interval` (2s)",
            ),
            (
                ErrorKind::Size {
                    key: "routes.max_body_size".into(),
                    value: "-1".into(),
                    reason: super::super::size::SizeError::Negative,
                },
                "`routes.max_body_size`: invalid size `-1`: it must not be negative",
            ),
            (
                ErrorKind::Method {
                    key: "routes.methods".into(),
                    value: "GE T".into(),
                },
                "`routes.methods`: `GE T` is not an HTTP method (a token such as `GET`)",
            ),
            (
                ErrorKind::HostPattern {
                    value: "*.*.example.com".into(),
                    reason: "a wildcard is allowed only as the whole leftmost label".into(),
                },
                "`routes.hosts`: invalid host `*.*.example.com`: a wildcard is allowed only as the \
                 whole leftmost label",
            ),
            (
                ErrorKind::UnknownPool {
                    name: "apii".into(),
                    suggestion: Some("api".into()),
                    pools: vec!["api".into()],
                },
                "unknown pool `apii`; did you mean `api`?",
            ),
            (
                ErrorKind::UnknownPool {
                    name: "x".into(),
                    suggestion: None,
                    pools: vec!["api".into(), "web".into()],
                },
                "unknown pool `x`; defined pools: api, web",
            ),
            (
                ErrorKind::UnknownPool {
                    name: "x".into(),
                    suggestion: None,
                    pools: vec![],
                },
                "unknown pool `x`; no [[pools]] are defined",
            ),
            (
                ErrorKind::Shadowed {
                    route: "b".into(),
                    by: "a".into(),
                    line: 7,
                },
                "route `a` (line 7) shadows route `b`: it matches every request `b` would (same \
                 hosts and path, and its methods include all of `b`'s), so `b` would never be used",
            ),
            (
                ErrorKind::UnknownTokenProvider {
                    name: "x".into(),
                    suggestion: None,
                    providers: vec![],
                },
                "unknown token provider `x`; no [[token_providers]] are defined",
            ),
            (
                ErrorKind::UnknownTokenProvider {
                    name: "x".into(),
                    suggestion: None,
                    providers: vec!["a".into(), "b".into()],
                },
                "unknown token provider `x`; defined token providers: a, b",
            ),
            (
                ErrorKind::SizeRange {
                    key: "token_providers.max_token_size".into(),
                    value: "1MiB".into(),
                    min: "1KiB",
                    max: "64KiB",
                },
                "`token_providers.max_token_size`: size `1MiB` is out of range; expected 1KiB to \
                 64KiB",
            ),
            (
                ErrorKind::Invalid {
                    key: "token_providers.audiences".into(),
                    value: "".into(),
                    reason: "it is empty".into(),
                },
                "`token_providers.audiences`: invalid value ``: it is empty",
            ),
            (
                ErrorKind::HeaderName {
                    key: "routes.token.claim_headers.header".into(),
                    value: "X User".into(),
                },
                "`routes.token.claim_headers.header`: `X User` is not a valid header name (a token \
                 such as `X-User-Id`)",
            ),
        ];
        for (kind, expected) in cases {
            assert_eq!(kind.to_string(), expected);
        }
    }

    #[test]
    fn sorted_by_file_then_position_and_deduplicated() {
        let errors = ConfigErrors::new(vec![
            at("p.toml", 9, 1, ErrorKind::NoInterfaces),
            at("deny.txt", 2, 3, ErrorKind::CidrLine(LineError::NotUtf8)),
            at("p.toml", 2, 7, ErrorKind::GeoBlocksNothing),
            at("p.toml", 2, 5, ErrorKind::NotUtf8),
            at("deny.txt", 2, 3, ErrorKind::CidrLine(LineError::NotUtf8)),
        ]);
        assert_eq!(errors.len(), 4);
        assert_eq!(
            errors.to_string(),
            "deny.txt:2:3: error: line is not valid UTF-8\n\
             p.toml:2:5: error: the file is not valid UTF-8\n\
             p.toml:2:7: error: [geo] blocks nothing: list countries in `geo.block`, set \
             `geo.unknown = \"block\"`, or remove the [geo] section\n\
             p.toml:9:1: error: no interface to attach to: list at least one in \
             `kernel.interfaces`, or set `kernel.enabled = false`"
        );
    }
}
