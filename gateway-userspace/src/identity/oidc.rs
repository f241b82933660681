//! OpenID Connect provider client (issue 4, "OpenID Connect providers"): discovery, JWKS fetch
//! and a key cache that token validation reads without locking.
//!
//! - **Discovery.** `GET <issuer>/.well-known/openid-configuration`; the document's `issuer` must
//!   equal the configured one byte for byte (OpenID Connect Discovery §4.3), else the provider
//!   is refused: a mismatch means we would accept tokens from someone else.
//! - **Cache.** The parsed [`KeySet`] lives in an [`ArcSwap`]: validation takes a snapshot, a
//!   refresh swaps in a new set. A failed refresh keeps the old set, so cached keys keep serving
//!   while the provider is unreachable.
//! - **Timer refresh** ([`OidcProvider::spawn_refresh`]) every `Cache-Control: max-age` of the
//!   JWKS response, clamped to [`OidcConfig::min_refresh`]..[`OidcConfig::max_refresh`]
//!   (default 60 s..24 h; [`OidcConfig::default_refresh`] without a max-age). Until the first
//!   successful load, and after a failure, it retries every [`OidcConfig::retry_interval`].
//! - **Unknown `kid`.** A token naming a `kid` we do not have triggers one JWKS refetch and a
//!   second validation. Refetches are single-flight (concurrent misses wait for one fetch) and
//!   rate-limited (at most one per [`OidcConfig::unknown_kid_interval`], default 10 s), so tokens
//!   with random `kid`s cannot make us flood the provider.
//! - **Start-up.** [`Readiness::NotReady`] until keys first load; tokens are refused meanwhile.
//!   Whether that also makes the gateway unready is the [`StartupPolicy`].
//! - **Static keys.** [`KeySource::Static`]: the keys come from the config (a JWKS file or
//!   inline), with the same hygiene as fetched ones; nothing is fetched and the provider is ready
//!   at once. They change only when the config reloads (or through [`OidcProvider::install_jwks`]).
//! - **Key epochs.** Every key set in use is a [`KeyEpoch`]: the set, a SHA-256 fingerprint of
//!   each key's JWK, and an id that changes only when the published keys change. The verified
//!   token cache (`identity::token_cache`) checks its entries against the current epoch, so an
//!   entry dies with its signing key.
//!
//! Transport: one HTTP/1.1 connection per fetch (hyper's connection API; fetches are rare, so a
//! pool would only hold idle sockets). Every fetch has a 5 s deadline and a 1 MiB body limit.
//! `http://` is accepted only for loopback hosts (tests, sidecars); anything else must be
//! `https://` with a configured CA bundle ([`OidcConfig::ca_roots`]): there is no built-in web
//! PKI root store in this build (no network access to fetch one, and no implicit trust).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use rustls::RootCertStore;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::identity::fetch::{self, FetchError};
use crate::identity::jwt::{Claims, JwksError, JwtError, KeySet, ValidationPolicy};

/// SHA-256 of some bytes (key fingerprints, configuration fingerprints).
pub type Fingerprint = [u8; 32];

/// SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Where a provider's verification keys come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeySource {
    /// OpenID Connect discovery at the issuer, then its `jwks_uri`, refreshed on a timer.
    #[default]
    Discovery,
    /// A JWKS given in the configuration (a file or inline): never fetched or refreshed.
    Static(StaticJwks),
}

/// A JWKS document from the configuration, kept as written (it is parsed by
/// [`OidcProvider::new`] with the same hygiene as a fetched one).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticJwks {
    json: Arc<[u8]>,
    fingerprint: Fingerprint,
}

impl StaticJwks {
    /// The document as written.
    pub fn new(json: impl Into<Arc<[u8]>>) -> Self {
        let json = json.into();
        let fingerprint = fingerprint(&json);
        StaticJwks { json, fingerprint }
    }

    /// The document's bytes.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// SHA-256 of the document.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl std::fmt::Debug for StaticJwks {
    // Public keys only, but a JWKS is long: its size and fingerprint say which one it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticJwks")
            .field("bytes", &self.json.len())
            .field("sha256", &hex(&self.fingerprint[..8]))
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a provider without keys holds the gateway back (`startup` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartupPolicy {
    /// Not ready (`/ready` answers 503) until the keys first load. The default: a load
    /// balancer then keeps traffic away from a gateway that would refuse every token.
    #[default]
    WaitForKeys,
    /// Ready without keys: routes of other providers and routes without tokens serve, while
    /// tokens of this provider are still refused until its keys load.
    Serve,
}

/// Default bound of the verified-token cache of a provider.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 10_000;

/// Largest discovery or JWKS response read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Deadline of one fetch: connect, TLS, request and the whole body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach and refresh one provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The exact issuer (`iss`); discovery is `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Roots for `https://` URLs. Without it only loopback `http://` URLs are accepted.
    pub ca_roots: Option<Arc<RootCertStore>>,
    /// Shortest timer refresh interval, whatever `max-age` says (default 60 s).
    pub min_refresh: Duration,
    /// Longest timer refresh interval (default 24 h).
    pub max_refresh: Duration,
    /// Timer refresh interval when the JWKS response has no `max-age` (default 5 min).
    pub default_refresh: Duration,
    /// Retry interval of the timer while no keys are loaded or after a failed refresh
    /// (default 5 s).
    pub retry_interval: Duration,
    /// At most one unknown-`kid` refetch per this interval (default 10 s).
    pub unknown_kid_interval: Duration,
    /// Deadline of one fetch (default [`FETCH_TIMEOUT`]).
    pub timeout: Duration,
    /// Discovery (default) or keys from the configuration.
    pub keys: KeySource,
    /// SHA-256 of the CA bundle file behind [`OidcConfig::ca_roots`], when it came from one:
    /// a reload compares it to tell a changed bundle from an unchanged one.
    pub ca_fingerprint: Option<Fingerprint>,
    /// Whether missing keys make the gateway unready (default [`StartupPolicy::WaitForKeys`]).
    pub startup: StartupPolicy,
    /// Bound of the verified-token cache; 0 disables it (default
    /// [`DEFAULT_TOKEN_CACHE_ENTRIES`]).
    pub token_cache_entries: usize,
}

impl OidcConfig {
    /// The defaults for an issuer.
    pub fn new(issuer: impl Into<String>) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            ca_roots: None,
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(24 * 3600),
            default_refresh: Duration::from_secs(300),
            retry_interval: Duration::from_secs(5),
            unknown_kid_interval: Duration::from_secs(10),
            timeout: FETCH_TIMEOUT,
            keys: KeySource::Discovery,
            ca_fingerprint: None,
            startup: StartupPolicy::WaitForKeys,
            token_cache_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
        }
    }

    /// Whether a provider built from `self` behaves exactly as one built from `other`: same
    /// issuer, key source (static keys compared by content), CA bundle (by the fingerprint of
    /// its file, else by identity), refresh settings, start-up policy and cache bound. A reload
    /// keeps a running provider (and its warm caches) only then.
    pub fn same_settings(&self, other: &OidcConfig) -> bool {
        let same_ca = match (self.ca_fingerprint, other.ca_fingerprint) {
            (Some(a), Some(b)) => a == b,
            (None, None) => match (&self.ca_roots, &other.ca_roots) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            },
            _ => false,
        };
        same_ca
            && self.issuer == other.issuer
            && self.keys == other.keys
            && self.min_refresh == other.min_refresh
            && self.max_refresh == other.max_refresh
            && self.default_refresh == other.default_refresh
            && self.retry_interval == other.retry_interval
            && self.unknown_kid_interval == other.unknown_kid_interval
            && self.timeout == other.timeout
            && self.startup == other.startup
            && self.token_cache_entries == other.token_cache_entries
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }

    /// The timer interval after a JWKS response with this `max-age`.
    pub fn refresh_interval(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.default_refresh)
            .clamp(self.min_refresh, self.max_refresh.max(self.min_refresh))
    }
}

/// Why a provider could not be loaded, or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// Not an absolute `http(s)://host[:port]/...` URL.
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    /// `http://` to a host that is not loopback: keys must not travel unauthenticated.
    #[error("plain http is allowed only to loopback hosts, not {0:?}; use https with a CA bundle")]
    InsecureUrl(String),
    /// `https://` without [`OidcConfig::ca_roots`].
    #[error("{0:?} is https but no CA bundle is configured (there are no built-in roots)")]
    NoCaBundle(String),
    /// Connection, TLS or HTTP failure.
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// A status other than 200.
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// More than [`MAX_RESPONSE_BYTES`].
    #[error("{0}: response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge(String),
    /// The fetch did not finish within [`OidcConfig::timeout`].
    #[error("{0}: timed out")]
    Timeout(String),
    /// The discovery document is not JSON or lacks a string `issuer` or `jwks_uri`.
    #[error("discovery document: {0}")]
    Discovery(&'static str),
    /// The discovered issuer is not exactly the configured one.
    #[error("discovered issuer {found:?} differs from the configured {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    /// The JWKS was refused as a whole.
    #[error("JWKS: {0}")]
    Jwks(#[from] JwksError),
    /// No keys loaded yet (start-up while the provider is down): every token is refused.
    #[error("provider keys not loaded yet")]
    NotReady,
    /// The token failed validation.
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

/// Whether a provider has keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Keys loaded at least once.
    Ready,
    /// No successful load yet: tokens are refused.
    NotReady,
}

/// One key set in use, with what the verified-token cache needs to tell whether an entry's
/// signing key is still published.
#[derive(Debug, Default)]
pub struct KeyEpoch {
    /// Changes only when the published keys change (a refresh that returns the same JWKS keeps
    /// the epoch, so cached tokens stay on the fast path).
    pub id: u64,
    /// The keys.
    pub keys: Arc<KeySet>,
    /// SHA-256 of the whole JWKS document (also the fingerprint of a set's only key, for tokens
    /// without `kid`).
    document: Fingerprint,
    /// `kid` -> SHA-256 of that JWK's JSON: a key republished under the same `kid` with other
    /// material is another key.
    by_kid: std::collections::HashMap<String, Fingerprint>,
}

impl KeyEpoch {
    /// Parses a JWKS into an epoch with id `id`.
    pub fn parse(json: &[u8], id: u64) -> Result<Self, JwksError> {
        let keys = crate::identity::jwt::parse_jwks(json)?;
        let mut by_kid = std::collections::HashMap::new();
        // parse_jwks accepted the document, so it is a JSON object with a `keys` array.
        if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(json)
            && let Some(Value::Array(list)) = doc.get("keys")
        {
            for jwk in list {
                if let Some(kid) = jwk.get("kid").and_then(Value::as_str) {
                    let bytes = serde_json::to_vec(jwk).unwrap_or_default();
                    by_kid.insert(kid.to_owned(), fingerprint(&bytes));
                }
            }
        }
        Ok(KeyEpoch {
            id,
            keys: Arc::new(keys),
            document: fingerprint(json),
            by_kid,
        })
    }

    /// The fingerprint of the key a token with this `kid` is verified with: by `kid`, or for a
    /// token without one, the set's only key (identified by the whole document, so any change
    /// of the set retires it).
    pub fn key_fingerprint(&self, kid: Option<&str>) -> Option<Fingerprint> {
        match kid {
            Some(k) if self.keys.get(k).is_some() => self.by_kid.get(k).copied(),
            Some(_) => None,
            None => (self.keys.len() == 1).then_some(self.document),
        }
    }

    /// SHA-256 of the JWKS document.
    pub fn document_fingerprint(&self) -> Fingerprint {
        self.document
    }
}

/// One OpenID provider: its key cache and the way to refresh it. Cheap to clone.
#[derive(Clone)]
pub struct OidcProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: OidcConfig,
    /// `None` for static keys: nothing is fetched.
    discovery: Option<Uri>,
    tls: Option<TlsConnector>,
    epoch: ArcSwap<KeyEpoch>,
    /// Serialises key swaps so epoch ids are assigned in order.
    swap: std::sync::Mutex<()>,
    ready: AtomicBool,
    /// Bumped on every successful key store, so a waiter can tell another flight has already
    /// refreshed the keys.
    generation: AtomicU64,
    /// JWKS fetch attempts (for tests and metrics).
    fetches: AtomicU64,
    /// The `jwks_uri` from discovery, once known.
    jwks_uri: std::sync::Mutex<Option<Uri>>,
    /// Held during an unknown-`kid` refetch (single flight); holds the time of the last one
    /// (rate limit).
    kid_refetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.inner.config.issuer)
            .field("readiness", &self.readiness())
            .field("keys", &self.inner.epoch.load().keys.len())
            .finish()
    }
}

impl OidcProvider {
    /// A provider with no keys yet ([`Readiness::NotReady`]). Checks the discovery URL against
    /// the transport rules; fetches nothing. With [`KeySource::Static`] the JWKS is parsed
    /// (a refused one is [`OidcError::Jwks`]) and the provider is ready at once.
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let (discovery, epoch) = match &config.keys {
            KeySource::Discovery => (
                Some(check_url(
                    &config.discovery_url(),
                    config.ca_roots.is_some(),
                )?),
                None,
            ),
            KeySource::Static(jwks) => (None, Some(KeyEpoch::parse(jwks.json(), 1)?)),
        };
        let ready = epoch.is_some();
        let tls = config.ca_roots.as_ref().map(|roots| {
            let upstream = crate::config::UpstreamTls {
                roots: Arc::clone(roots),
                ca_file: Default::default(),
                server_name: None,
                client_identity: None,
            };
            TlsConnector::from(crate::proxy::tls::upstream_client_config(
                Some(&upstream),
                &[b"http/1.1"],
            ))
        });
        Ok(OidcProvider {
            inner: Arc::new(Inner {
                config,
                discovery,
                tls,
                epoch: ArcSwap::from_pointee(epoch.unwrap_or_default()),
                swap: std::sync::Mutex::new(()),
                ready: AtomicBool::new(ready),
                generation: AtomicU64::new(u64::from(ready)),
                fetches: AtomicU64::new(0),
                jwks_uri: std::sync::Mutex::new(None),
                kid_refetch: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.inner.config.issuer
    }

    /// Whether keys have loaded.
    pub fn readiness(&self) -> Readiness {
        if self.inner.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::NotReady
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &OidcConfig {
        &self.inner.config
    }

    /// Whether its keys come from the configuration.
    pub fn is_static(&self) -> bool {
        self.inner.discovery.is_none()
    }

    /// The current key set (empty before the first load).
    pub fn keys(&self) -> Arc<KeySet> {
        self.inner.epoch.load().keys.clone()
    }

    /// The current key epoch (id 0 and no keys before the first load).
    pub fn epoch(&self) -> Arc<KeyEpoch> {
        self.inner.epoch.load_full()
    }

    /// The current key epoch without touching its reference count (the cache's hot path).
    pub fn epoch_guard(&self) -> arc_swap::Guard<Arc<KeyEpoch>> {
        self.inner.epoch.load()
    }

    /// Key-set loads so far: bumped by every successful load, changed keys or not (the
    /// unknown-`kid` single flight compares it).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Parses `json` as a JWKS and swaps it in (fetched keys, static keys, tests). The epoch id
    /// changes only when the document differs from the current one. On error the current keys
    /// stay.
    pub fn install_jwks(&self, json: &[u8]) -> Result<(), OidcError> {
        let guard = match self.inner.swap.lock() {
            Ok(g) => g,
            // Nothing is left half-done under this lock: it only orders the swaps.
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = self.inner.epoch.load_full();
        let document = fingerprint(json);
        if !(self.readiness() == Readiness::Ready && current.document == document) {
            let epoch = KeyEpoch::parse(json, current.id + 1)?;
            self.inner.epoch.store(Arc::new(epoch));
        }
        drop(guard);
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// JWKS fetch attempts so far, successful or not.
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Discovery, then the JWKS. On success the keys are swapped in and the provider is ready;
    /// returns the timer interval until the next refresh. On failure the cached keys stay.
    pub async fn refresh(&self) -> Result<Duration, OidcError> {
        if self.is_static() {
            // Static keys change with the configuration only.
            return Ok(self.inner.config.max_refresh);
        }
        let jwks_uri = self.discover().await?;
        self.load_jwks(&jwks_uri).await
    }

    /// Starts the refresh timer on the current tokio runtime: a first load now, then one per
    /// [`OidcConfig::refresh_interval`], or per [`OidcConfig::retry_interval`] after a failure.
    /// Abort the handle to stop it.
    pub fn spawn_refresh(&self) -> JoinHandle<()> {
        let this = self.clone();
        if self.is_static() {
            return tokio::spawn(async {});
        }
        tokio::spawn(async move {
            loop {
                let wait = match this.refresh().await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(issuer = %this.issuer(), error = %e, "OIDC key refresh failed; cached keys stay in use");
                        this.inner.config.retry_interval
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// Validates a token against the cached keys; on an unknown `kid`, refetches the JWKS
    /// (single-flight, rate-limited) and tries once more.
    pub async fn validate(
        &self,
        token: &str,
        policy: &ValidationPolicy,
    ) -> Result<Claims, OidcError> {
        if self.readiness() == Readiness::NotReady {
            return Err(OidcError::NotReady);
        }
        let generation = self.generation();
        match crate::identity::jwt::validate(token, &self.keys(), policy, SystemTime::now()) {
            Err(JwtError::UnknownKid) => {}
            other => return other.map_err(OidcError::from),
        }
        self.refetch_for_unknown_kid(generation).await;
        crate::identity::jwt::validate(token, &self.keys(), policy, SystemTime::now())
            .map_err(OidcError::from)
    }

    /// One JWKS refetch after a `kid` miss seen at key `generation`, unless another flight has
    /// refreshed the keys since or the last refetch is younger than the rate-limit interval.
    /// Returns whether this call fetched.
    pub async fn refetch_for_unknown_kid(&self, generation: u64) -> bool {
        // Waiting on this lock is the single flight: concurrent misses queue behind the one
        // fetching and then find the keys already refreshed (or the window closed).
        if self.is_static() {
            // Nothing to fetch: the configuration is the only source.
            return false;
        }
        let mut last = self.inner.kid_refetch.lock().await;
        if self.inner.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        if last.is_some_and(|t| t.elapsed() < self.inner.config.unknown_kid_interval) {
            return false;
        }
        *last = Some(Instant::now());
        let known = self.jwks_uri();
        let result = match known {
            Some(uri) => self.load_jwks(&uri).await,
            None => self.refresh().await,
        };
        if let Err(e) = result {
            tracing::warn!(issuer = %self.issuer(), error = %e, "OIDC JWKS refetch for an unknown kid failed");
        }
        true
    }

    fn jwks_uri(&self) -> Option<Uri> {
        match self.inner.jwks_uri.lock() {
            Ok(g) => g.clone(),
            // A panic while holding this lock cannot leave the Option half-written.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn discover(&self) -> Result<Uri, OidcError> {
        let Some(discovery) = &self.inner.discovery else {
            return Err(OidcError::Discovery("the provider has static keys"));
        };
        let (body, _) = self.get(discovery).await?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| OidcError::Discovery("not JSON"))?;
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or(OidcError::Discovery("no issuer string"))?;
        if issuer != self.inner.config.issuer {
            return Err(OidcError::IssuerMismatch {
                expected: self.inner.config.issuer.clone(),
                found: issuer.to_owned(),
            });
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or(OidcError::Discovery("no jwks_uri string"))?;
        let uri = check_url(jwks, self.inner.tls.is_some())?;
        let mut slot = match self.inner.jwks_uri.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(uri.clone());
        Ok(uri)
    }

    async fn load_jwks(&self, uri: &Uri) -> Result<Duration, OidcError> {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let (body, max_age) = self.get(uri).await?;
        self.install_jwks(&body)?;
        Ok(self.inner.config.refresh_interval(max_age))
    }

    /// GET with the deadline; returns the body and the `Cache-Control: max-age`.
    async fn get(&self, uri: &Uri) -> Result<(Bytes, Option<Duration>), OidcError> {
        let url = uri.to_string();
        let request = Request::get(uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Full::<Bytes>::default())
            .map_err(|e| OidcError::Fetch {
                url: url.clone(),
                reason: format!("request: {e}"),
            })?;
        let fetched = fetch::exchange(
            self.inner.tls.as_ref(),
            request,
            self.inner.config.timeout,
            MAX_RESPONSE_BYTES,
        )
        .await
        .map_err(|e| match e {
            FetchError::Failed { url, reason } => OidcError::Fetch { url, reason },
            FetchError::NoCaBundle(url) => OidcError::NoCaBundle(url),
            FetchError::TooLarge { url, .. } => OidcError::TooLarge(url),
            FetchError::Timeout(url) => OidcError::Timeout(url),
        })?;
        if fetched.status != StatusCode::OK {
            return Err(OidcError::Status {
                url,
                status: fetched.status.as_u16(),
            });
        }
        let max_age = fetched
            .headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_max_age);
        Ok((fetched.body, max_age))
    }
}

/// `max-age` of one `Cache-Control` value (`no-store`/`no-cache` read as zero, which the
/// refresh bounds lift to the minimum interval).
pub fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        let secs = lower.strip_prefix("max-age=")?.trim_matches('"');
        secs.parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// Parses a URL and applies the transport rules: `https` needs a CA bundle, `http` only to
/// loopback hosts.
pub fn check_url(url: &str, have_ca: bool) -> Result<Uri, OidcError> {
    let bad = |reason| OidcError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("user info is not allowed"));
    }
    match uri.scheme_str() {
        Some("https") if have_ca => Ok(uri),
        Some("https") => Err(OidcError::NoCaBundle(url.to_owned())),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(OidcError::InsecureUrl(url.to_owned())),
        _ => Err(bad("scheme must be http or https")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_rules() {
        assert!(check_url("http://127.0.0.1:8080/x", false).is_ok());
        assert!(check_url("http://[::1]:8080/x", false).is_ok());
        assert!(check_url("http://localhost/x", false).is_ok());
        assert!(matches!(
            check_url("http://idp.example.com/x", true),
            Err(OidcError::InsecureUrl(_))
        ));
        assert!(matches!(
            check_url("https://idp.example.com/x", false),
            Err(OidcError::NoCaBundle(_))
        ));
        assert!(check_url("https://idp.example.com/x", true).is_ok());
        assert!(matches!(
            check_url("ftp://127.0.0.1/x", true),
            Err(OidcError::BadUrl { .. })
        ));
        assert!(matches!(
            check_url("http://u:p@127.0.0.1/x", true),
            Err(OidcError::BadUrl { .. })
        ));
        assert!(matches!(
            check_url("/relative", true),
            Err(OidcError::BadUrl { .. })
        ));
    }

    #[test]
    fn new_refuses_insecure_issuer() {
        let err = OidcProvider::new(OidcConfig::new("http://idp.example.com")).unwrap_err();
        assert!(matches!(err, OidcError::InsecureUrl(_)));
        let p = OidcProvider::new(OidcConfig::new("http://127.0.0.1:1")).unwrap();
        assert_eq!(p.readiness(), Readiness::NotReady);
        assert!(p.keys().is_empty());
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("Max-Age=\"7\""), Some(Duration::from_secs(7)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=-1"), None);
    }

    #[test]
    fn refresh_interval_is_bounded() {
        let c = OidcConfig::new("http://127.0.0.1");
        assert_eq!(c.refresh_interval(None), Duration::from_secs(300));
        assert_eq!(
            c.refresh_interval(Some(Duration::ZERO)),
            Duration::from_secs(60)
        );
        assert_eq!(
            c.refresh_interval(Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
        assert_eq!(
            c.refresh_interval(Some(Duration::from_secs(10 * 86400))),
            Duration::from_secs(86400)
        );
    }

    #[tokio::test]
    async fn unreachable_provider_stays_not_ready() {
        // Port 1 on loopback: nothing listens there, so the connect is refused at once.
        let p = OidcProvider::new(OidcConfig::new("http://127.0.0.1:1")).unwrap();
        assert!(matches!(p.refresh().await, Err(OidcError::Fetch { .. })));
        assert_eq!(p.readiness(), Readiness::NotReady);
        let policy = ValidationPolicy::new("http://127.0.0.1:1", vec!["a".into()]);
        assert_eq!(p.validate("a.b.c", &policy).await, Err(OidcError::NotReady));
    }
}
