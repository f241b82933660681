//! The validated proxy configuration: listeners, trusted proxies, routes, backend pools and the
//! admin endpoint, as [`super::load`] returns them. Files named by the config (certificates,
//! keys, CA bundles) are already read and parsed here, so serving never fails on config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::rules::Prefix;

/// Everything the proxy layer needs. No listeners means the proxy does not run (kernel only).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listeners: Vec<ListenerConfig>,
    pub trusted: TrustedProxies,
    /// In match order: the compiler sorts routes by specificity (exact host before wildcard
    /// before any; exact path before longer prefix before shorter), config order breaking ties.
    pub routes: Vec<RouteConfig>,
    pub pools: Vec<PoolConfig>,
    /// Token issuers that routes accept tokens from.
    pub token_providers: Vec<TokenProviderConfig>,
    /// API (subscription) keys, when any route requires one.
    pub api_keys: Option<ApiKeysConfig>,
    /// Grace period for in-flight requests on shutdown.
    pub drain_timeout: Duration,
}

/// A token issuer (an OpenID Connect provider) whose signed JWTs routes accept.
#[derive(Clone, Debug)]
pub struct TokenProviderConfig {
    /// Unique name routes refer to.
    pub name: String,
    /// Discovery or static keys, key cache and refresh settings, start-up policy, verified-token
    /// cache bound.
    pub oidc: crate::identity::oidc::OidcConfig,
    /// What a token must satisfy: issuer, audiences, algorithms, clock skew, size, `typ`.
    pub policy: crate::identity::jwt::ValidationPolicy,
    /// The static JWKS file (`jwks_file`, resolved against the config's directory) whose
    /// contents are in `oidc.keys`: a change of this file is a reason to reload.
    pub jwks_file: Option<PathBuf>,
    /// The `ca` bundle of a discovered provider: a change of this file is a reason to reload.
    pub ca_file: Option<PathBuf>,
}

/// API keys: the hashed key file and where clients present keys.
#[derive(Clone, Debug)]
pub struct ApiKeysConfig {
    /// The key file, loaded (keys reload with the config).
    pub store: Arc<crate::identity::api_keys::KeyStore>,
    pub file: PathBuf,
    /// Header carrying the key (default `Ocp-Apim-Subscription-Key`).
    pub header: http::HeaderName,
    /// Query parameter read only when the header is absent (default `subscription-key`).
    pub query_param: String,
}

/// What a route requires of a request's identity. The default requires nothing.
#[derive(Clone, Debug, Default)]
pub struct RouteAuth {
    pub token: Option<RouteToken>,
    /// A valid API key whose scope covers this route (or its product).
    pub api_key: bool,
    /// A verified client certificate matching the route's rules (mTLS).
    pub client_cert: Option<RouteClientCert>,
    /// Rate limits and quotas covering the route (`[proxy.limits]`), checked after identity.
    pub limits: Option<Arc<super::limits::RouteLimits>>,
}

/// A route that requires a client certificate (`[routes.client_cert]`).
#[derive(Clone, Debug, Default)]
pub struct RouteClientCert {
    /// Which verified certificates may use the route (an empty rule allows any).
    pub rule: crate::identity::mtls::CertRule,
    /// Names of the certificate-fact headers sent to the backend (a subset of
    /// `identity::mtls::FORWARDED_HEADER_NAMES`).
    pub forward: Vec<&'static str>,
    /// RFC 8705: the access token's `cnf.x5t#S256` must name this certificate.
    pub bound_token: bool,
}

/// A TLS listener's client-certificate settings (`[listeners.client_certs]`).
#[derive(Clone, Debug)]
pub struct ClientCertsConfig {
    pub mode: crate::identity::mtls::ClientAuth,
    /// Trust anchors for client chains (every `ca` bundle together).
    pub roots: Arc<rustls::RootCertStore>,
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    pub revocation: crate::identity::mtls::RevocationPolicy,
    /// Source files, for messages and for reloading when they change.
    pub ca_files: Vec<PathBuf>,
    pub crl_files: Vec<PathBuf>,
}

/// A route that requires a bearer token.
#[derive(Clone, Debug)]
pub struct RouteToken {
    /// Index into `ProxyConfig::token_providers`.
    pub provider: usize,
    /// Where the token may come from (RFC 6750: `Authorization: Bearer` by default).
    pub sources: Vec<crate::identity::authz::TokenSource>,
    /// Claims rules per method.
    pub policy: crate::identity::authz::RoutePolicy,
    /// Claims copied into request headers; client-sent copies are always removed.
    pub claim_headers: Vec<crate::identity::authz::ClaimHeader>,
    /// Pass the `Authorization` header on to the backend (default: strip it).
    pub forward_authorization: bool,
}

/// One listening socket.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metrics.
    pub name: String,
    pub bind: SocketAddr,
    pub kind: ListenerKind,
    /// Expect a PROXY protocol (v1 or v2) header first. Accepted only from
    /// `trusted.load_balancers`; a connection from elsewhere is closed.
    pub proxy_protocol: bool,
    /// Open connections at most; further ones are closed at accept.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake (and the PROXY header).
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request's headers (slow clients cannot hold sockets).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub enum ListenerKind {
    /// TLS termination.
    Https(TlsConfig),
    /// Plain HTTP: redirect every request to HTTPS, or serve routes (an explicit opt-out).
    Http(PlainMode),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlainMode {
    /// 308 to `https://<host>[:port]<path>`; `port` omitted when 443.
    RedirectToHttps {
        port: u16,
    },
    Serve,
}

/// A TLS listener's certificates and policy.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Certificates chosen by SNI (by their DNS SANs); the first one is the default for a
    /// client without SNI or with an unknown name.
    pub certificates: Vec<Arc<rustls::sign::CertifiedKey>>,
    /// Source files, for messages.
    pub certificate_files: Vec<(PathBuf, PathBuf)>,
    /// Lowest protocol version (TLS 1.2 or 1.3; nothing older exists here).
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in server preference order (default h2, http/1.1).
    pub alpn: Vec<Vec<u8>>,
    /// `Strict-Transport-Security` on every response; `None` to send none.
    pub hsts: Option<Hsts>,
    /// Client certificates (mTLS); `None` asks for none.
    pub client_certs: Option<ClientCertsConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

/// Who may vouch for a client address.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    /// Peers allowed to send a PROXY protocol header (L4 load balancers).
    pub load_balancers: Vec<Prefix>,
    /// Peers (and hops) whose X-Forwarded-For / Forwarded entries and X-Request-Id we believe.
    pub proxies: Vec<Prefix>,
    /// Which header carries the client chain from trusted proxies.
    pub client_ip_header: ClientIpHeader,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`.
    Forwarded,
    /// Ignore headers: the client address is the peer (or PROXY) address.
    None,
}

/// A route: which requests it matches and where they go.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    /// Product (group of routes) it belongs to, if any.
    pub product: Option<String>,
    /// Empty = any host.
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// Empty = any method.
    pub methods: Vec<http::Method>,
    /// Index into `ProxyConfig::pools`.
    pub pool: usize,
    pub timeouts: RouteTimeouts,
    /// Extra attempts for idempotent requests when connecting to a backend failed.
    pub retries: u32,
    /// Request bodies above this are refused with 413 (checked on Content-Length and while
    /// streaming).
    pub max_body_bytes: u64,
    /// Pass WebSocket upgrades through.
    pub websocket: bool,
    /// Identity requirements: token, API key, client certificate (any combination).
    pub auth: RouteAuth,
    /// CORS answered by the gateway (`[routes.cors]`); `None`: the gateway adds no CORS
    /// headers and passes the backend's through.
    pub cors: Option<Arc<crate::proxy::cors::CorsPolicy>>,
    /// What the backend's responses may carry (`[routes.response]`); `None`: the defaults
    /// (leaky headers stripped, 5xx bodies masked).
    pub response: Option<Arc<crate::proxy::response_policy::ResponsePolicy>>,
    /// Request validation (`[routes.validation]`, docs/validation.md).
    pub validation: Option<Arc<crate::validation::RouteValidation>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself); stores
    /// the suffix with its leading dot, lower case.
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// Matches the prefix at a segment boundary: `/api` matches `/api` and `/api/x`, not
    /// `/apix`. `/` matches everything.
    Prefix(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Duration,
    /// From the request fully sent to the response headers.
    pub response_headers: Duration,
    /// The whole exchange, response body included.
    pub total: Duration,
}

/// A backend pool (the fleet behind a route).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balance: Balance,
    pub protocol: UpstreamProtocol,
    /// TLS to the backends, with CA verification.
    pub tls: Option<UpstreamTls>,
    pub health: Option<HealthCheck>,
    pub passive: PassiveEjection,
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
    /// How the gateway authenticates itself to the backends (`[pools.auth]`).
    pub auth: Option<crate::proxy::backend_auth::BackendAuthConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as written (host may be a name or an address).
    pub authority: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    /// Two random endpoints, the one with fewer requests in flight.
    PowerOfTwo,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge over plain TCP, ALPN h2 over TLS).
    H2,
}

#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// Roots that backend certificates must chain to.
    pub roots: Arc<rustls::RootCertStore>,
    pub ca_file: PathBuf,
    /// Name checked against the backend certificate; default: the endpoint host.
    pub server_name: Option<String>,
    /// The gateway's client certificate for backends that require mTLS.
    pub client_identity: Option<ClientIdentity>,
}

/// A certificate chain and its private key, presented to backends.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub key: Arc<rustls_pki_types::PrivateKeyDer<'static>>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl std::fmt::Debug for ClientIdentity {
    // The key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.key.secret_der() == other.key.secret_der()
    }
}
impl Eq for ClientIdentity {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested with GET.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark an endpoint healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures to mark it unhealthy.
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveEjection {
    /// Consecutive connect errors or 5xx responses that eject an endpoint (0 = never).
    pub consecutive_failures: u32,
    /// How long an ejected endpoint receives no traffic.
    pub ejection_time: Duration,
}

/// The local admin endpoint: /live, /ready, /metrics, /reload, /bans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Loopback by default; a non-loopback address must be asked for explicitly.
    pub listen: Option<SocketAddr>,
}
