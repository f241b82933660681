//! Authentication of the gateway to its backends (`[pools.auth]`): HTTP Basic with a secret
//! from a file or the environment, or an OAuth 2 access token obtained with the client
//! credentials grant (RFC 6749 §4.4), cached until shortly before it expires and refreshed
//! ahead of time in the background (the managed-identity analogue). The client certificate
//! for backends that require mTLS is in `[pools.tls]` (see `proxy::tls`).
//!
//! Whatever `Authorization` the client sent is replaced on such a pool: the backend sees the
//! gateway's credentials only. Secrets never appear in logs, errors or `Debug` output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::identity::encoding::b64_encode;
use crate::identity::fetch;

/// A secret read from the config's file or environment variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the client credentials travel to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` (`client_secret_basic`), which every server must support.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// `[pools.auth]`, compiled.
#[derive(Clone, Debug)]
pub enum BackendAuthConfig {
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        password: Secret,
    },
    ClientCredentials(ClientCredentials),
}

/// An OAuth 2 client of a token endpoint.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    pub token_url: Uri,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    /// RFC 8707 resource indicator (the backend's audience).
    pub resource: Option<String>,
    pub client_auth: ClientAuthMethod,
    /// CA bundle for an `https` token endpoint.
    pub ca_roots: Option<Arc<rustls::RootCertStore>>,
    /// A token is replaced this long before it expires.
    pub refresh_before: Duration,
    /// Deadline of one token request.
    pub timeout: Duration,
}

/// Why a request could not get the backend's credentials (the request gets 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendAuthError {
    #[error("token endpoint: {0}")]
    Fetch(#[from] fetch::FetchError),
    #[error("token endpoint {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("token endpoint {url}: {reason}")]
    BadResponse { url: String, reason: &'static str },
}

/// A pool's credentials at run time.
pub enum BackendAuth {
    Basic(HeaderValue),
    Token(Arc<TokenSource>),
}

impl std::fmt::Debug for BackendAuth {
    // Credentials stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAuth::Basic(_) => f.write_str("BackendAuth::Basic(<redacted>)"),
            BackendAuth::Token(t) => write!(f, "BackendAuth::Token({})", t.cfg.token_url),
        }
    }
}

impl BackendAuth {
    /// Starts what `cfg` needs: for client credentials, a background task that fetches the
    /// first token now and refreshes it ahead of expiry (stopped when this is dropped).
    pub fn start(cfg: &BackendAuthConfig, pool: &str) -> Self {
        match cfg {
            BackendAuthConfig::Basic { username, password } => {
                let encoded = b64_encode(format!("{username}:{}", password.expose()).as_bytes());
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
                value.set_sensitive(true);
                BackendAuth::Basic(value)
            }
            BackendAuthConfig::ClientCredentials(cc) => {
                BackendAuth::Token(TokenSource::start(cc.clone(), pool))
            }
        }
    }

    /// The `Authorization` value for the next backend request.
    pub async fn header(&self) -> Result<HeaderValue, BackendAuthError> {
        match self {
            BackendAuth::Basic(v) => Ok(v.clone()),
            BackendAuth::Token(t) => t.header().await,
        }
    }
}

struct Cached {
    header: HeaderValue,
    expires: Instant,
}

/// Tokens from one token endpoint for one pool.
pub struct TokenSource {
    cfg: ClientCredentials,
    pool: String,
    tls: Option<TlsConnector>,
    current: ArcSwapOption<Cached>,
    /// Held while fetching: concurrent requests without a usable token wait for one fetch.
    flight: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    refresher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for TokenSource {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.refresher.lock()
            && let Some(task) = guard.take()
        {
            task.abort();
        }
    }
}

/// Wait after a failed fetch before the background task tries again.
const RETRY: Duration = Duration::from_secs(5);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

impl TokenSource {
    fn start(cfg: ClientCredentials, pool: &str) -> Arc<Self> {
        let tls = cfg.ca_roots.as_ref().map(|roots| {
            let upstream = crate::config::UpstreamTls {
                roots: Arc::clone(roots),
                ca_file: Default::default(),
                server_name: None,
                client_identity: None,
            };
            TlsConnector::from(super::tls::upstream_client_config(
                Some(&upstream),
                &[b"http/1.1"],
            ))
        });
        let source = Arc::new(TokenSource {
            cfg,
            pool: pool.to_owned(),
            tls,
            current: ArcSwapOption::empty(),
            flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            refresher: std::sync::Mutex::new(None),
        });
        // The task holds a weak reference, so dropping the pool's generation ends it.
        let weak = Arc::downgrade(&source);
        let task = tokio::spawn(async move {
            loop {
                let Some(source) = weak.upgrade() else { return };
                let wait = match source.refresh().await {
                    Ok(()) => source.until_refresh(),
                    Err(e) => {
                        warn!(pool = %source.pool, error = %e, "backend token refresh failed");
                        RETRY
                    }
                };
                drop(source);
                tokio::time::sleep(wait).await;
            }
        });
        if let Ok(mut slot) = source.refresher.lock() {
            *slot = Some(task);
        }
        source
    }

    /// Token requests made so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Time until the current token should be replaced.
    fn until_refresh(&self) -> Duration {
        match self.current.load().as_ref() {
            Some(c) => c
                .expires
                .checked_sub(self.cfg.refresh_before)
                .map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                })
                .max(Duration::from_millis(500)),
            None => RETRY,
        }
    }

    /// The current token while it has not expired; otherwise one fetch (single flight).
    async fn header(&self) -> Result<HeaderValue, BackendAuthError> {
        if let Some(c) = self.current.load().as_ref()
            && Instant::now() < c.expires
        {
            return Ok(c.header.clone());
        }
        let _flight = self.flight.lock().await;
        if let Some(c) = self.current.load().as_ref()
            && Instant::now() < c.expires
        {
            return Ok(c.header.clone());
        }
        let cached = self.fetch().await?;
        let header = cached.header.clone();
        self.current.store(Some(Arc::new(cached)));
        Ok(header)
    }

    /// A new token now (the background task's path).
    async fn refresh(&self) -> Result<(), BackendAuthError> {
        let _flight = self.flight.lock().await;
        let cached = self.fetch().await?;
        self.current.store(Some(Arc::new(cached)));
        Ok(())
    }

    async fn fetch(&self) -> Result<Cached, BackendAuthError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = self.cfg.token_url.to_string();
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.cfg.scope {
            form.push(("scope", scope));
        }
        if let Some(resource) = &self.cfg.resource {
            form.push(("resource", resource));
        }
        let mut request = Request::post(self.cfg.token_url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        match self.cfg.client_auth {
            ClientAuthMethod::Basic => {
                // RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.cfg.client_id),
                    form_encode(self.cfg.client_secret.expose())
                );
                let mut value =
                    HeaderValue::from_str(&format!("Basic {}", b64_encode(pair.as_bytes())))
                        .map_err(|_| BackendAuthError::BadResponse {
                            url: url.clone(),
                            reason: "client credentials cannot form a header",
                        })?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            ClientAuthMethod::Post => {
                form.push(("client_id", &self.cfg.client_id));
                form.push(("client_secret", self.cfg.client_secret.expose()));
            }
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = request.body(Full::new(Bytes::from(body))).map_err(|_| {
            BackendAuthError::BadResponse {
                url: url.clone(),
                reason: "cannot build the token request",
            }
        })?;
        let started = Instant::now();
        let fetched = fetch::exchange(
            self.tls.as_ref(),
            request,
            self.cfg.timeout,
            MAX_TOKEN_RESPONSE,
        )
        .await?;
        if fetched.status != StatusCode::OK {
            return Err(BackendAuthError::Status {
                url,
                status: fetched.status.as_u16(),
            });
        }
        let bad = |reason| BackendAuthError::BadResponse {
            url: url.clone(),
            reason,
        };
        let doc: serde_json::Value =
            serde_json::from_slice(&fetched.body).map_err(|_| bad("not JSON"))?;
        let token = doc
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        let kind = doc
            .get("token_type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(bad("token_type is not Bearer"));
        }
        // Without `expires_in` (it is only RECOMMENDED), assume a short life rather than a
        // long one: a token refreshed early costs one request, an expired one fails calls.
        let lifetime = doc
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .map_or(Duration::from_secs(300), Duration::from_secs);
        // Measured from when the request left: the server's clock started no earlier.
        let expires = started + lifetime;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("access_token is not a valid header value"))?;
        header.set_sensitive(true);
        info!(pool = %self.pool, expires_in_s = lifetime.as_secs(), "backend token fetched");
        Ok(Cached { header, expires })
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let cfg = BackendAuthConfig::Basic {
            username: "gw".into(),
            password: s,
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn basic_header() {
        let cfg = BackendAuthConfig::Basic {
            username: "Aladdin".into(),
            password: Secret::new("open sesame".into()),
        };
        let auth = BackendAuth::start(&cfg, "p");
        let v = auth.header().await.unwrap();
        // RFC 7617 section 2's example.
        assert_eq!(v, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(v.is_sensitive());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
