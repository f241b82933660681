//! Identity and authorization phases: for a route that requires a token, find it (RFC 6750
//! sources), validate it against the route's token provider (keys from OIDC discovery, cached
//! and refreshed by `identity::oidc`), check the route's claims rules for the method, and
//! prepare the claims headers for the backend; for a route that requires an API key, check it
//! and remove it before forwarding; for a route that requires a client certificate, check the
//! verified certificate against the route's rules, bind tokens to it (RFC 8705) and forward
//! the chosen facts.
//! Every refusal is a `Denial`; the rule that decided is logged, never the token.

use std::sync::Arc;

use http::{HeaderMap, Method};
use tokio::task::JoinHandle;
use tracing::warn;

use super::respond::Denial;
use std::time::SystemTime;

use crate::config::{ApiKeysConfig, ProxyConfig, RouteConfig, RouteToken, TokenProviderConfig};
use crate::identity::api_keys::{KeyError, presented_key};
use crate::identity::authz::{self, extract_token};
use crate::identity::jwt::{Claims, ValidationPolicy};
use crate::identity::mtls::CertFacts;
use crate::identity::oidc::{OidcConfig, OidcError, OidcProvider, Readiness, StartupPolicy};
use crate::identity::token_cache::{CacheCounters, TokenCache};
use crate::identity::validator::TokenValidator;

/// A running token provider: the key cache, its refresh task (stopped on drop), the
/// validation policy from the config and the verified-token cache ([`TokenValidator`]).
pub struct TokenProvider {
    pub name: String,
    pub client: OidcProvider,
    pub policy: ValidationPolicy,
    /// Validation through the verified-token cache, under `policy`.
    pub validator: TokenValidator,
    /// The settings the provider was built from, to tell on reload whether it can be kept.
    settings: OidcConfig,
    refresh: JoinHandle<()>,
}

impl Drop for TokenProvider {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

impl TokenProvider {
    /// Starts a provider (its key refresh runs on the current tokio runtime); the cache counts
    /// into `counters`, shared with earlier providers of the same name.
    pub fn start(
        tp: &TokenProviderConfig,
        counters: Arc<CacheCounters>,
    ) -> Result<Self, OidcError> {
        let client = OidcProvider::new(tp.oidc.clone())?;
        let refresh = client.spawn_refresh();
        let cache = TokenCache::named(&tp.name, tp.oidc.token_cache_entries, counters);
        Ok(TokenProvider {
            name: tp.name.clone(),
            validator: TokenValidator::with_cache(client.clone(), tp.policy.clone(), cache),
            client,
            policy: tp.policy.clone(),
            settings: tp.oidc.clone(),
            refresh,
        })
    }

    /// Readiness as the start-up policy decides: with `wait_for_keys` (the default) only once
    /// keys have loaded; with `serve` always (its tokens are still refused until then).
    pub fn ready(&self) -> bool {
        self.client.readiness() == Readiness::Ready || self.settings.startup == StartupPolicy::Serve
    }

    /// Validates a token through the cache (see [`TokenValidator::validate`]).
    pub async fn validate(&self, token: &str) -> Result<Arc<Claims>, OidcError> {
        self.validator.validate(token).await
    }

    /// Whether this running provider is what `tp` describes: same name, policy and settings
    /// (issuer, CA bundle contents, key source and static keys' contents, refresh, start-up
    /// policy, cache bound).
    pub fn matches(&self, tp: &TokenProviderConfig) -> bool {
        self.name == tp.name && self.policy == tp.policy && self.settings.same_settings(&tp.oidc)
    }
}

/// The providers for `cfg`. A provider whose name, policy and settings are unchanged from
/// `previous` is kept, so a reload keeps its warm key and token caches and never refuses
/// tokens while keys reload; any other is built anew (its cache counters carry on by name).
pub fn providers(
    cfg: &ProxyConfig,
    previous: &[Arc<TokenProvider>],
) -> Result<Vec<Arc<TokenProvider>>, OidcError> {
    cfg.token_providers
        .iter()
        .map(|tp: &TokenProviderConfig| {
            if let Some(p) = previous.iter().find(|p| p.matches(tp)) {
                return Ok(p.clone());
            }
            let counters = previous
                .iter()
                .find(|p| p.name == tp.name)
                .map(|p| p.validator.cache().counters().clone())
                .unwrap_or_default();
            Ok(Arc::new(TokenProvider::start(tp, counters)?))
        })
        .collect()
}

/// A refusal with the rule that decided, for the access log.
pub struct Refusal {
    pub denial: Denial,
    pub phase: &'static str,
    pub rule: String,
}

/// Runs the identity and authorization phases for a route with a token requirement. Returns
/// the validated claims.
pub async fn authenticate(
    requirement: &RouteToken,
    providers: &[Arc<TokenProvider>],
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Arc<Claims>, Refusal> {
    let refuse = |denial, phase, rule: String| Refusal {
        denial,
        phase,
        rule,
    };
    let token = match extract_token(headers, query, &requirement.sources) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(refuse(
                Denial::TokenMissing,
                "identity",
                "token_missing".into(),
            ));
        }
        Err(e) => {
            // The variant name is the rule (the error's Debug never holds the token).
            let debug = format!("{e:?}");
            let variant = debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("invalid");
            // RFC 6750 section 3.1: a token in several places is a malformed *request*
            // (400 invalid_request); a token that is itself malformed (bytes outside
            // b64token, padding inside, two tokens in one header) is an invalid *token*
            // (401 invalid_token), like any other token that fails validation.
            use crate::identity::authz::ExtractError as E;
            let denial = match e {
                E::MalformedBearer
                | E::MalformedHeader(_)
                | E::MalformedQueryParam(_)
                | E::MalformedCookie(_) => Denial::TokenInvalid,
                _ => Denial::TokenRequestInvalid,
            };
            return Err(refuse(
                denial,
                "identity",
                format!("token_source:{variant}"),
            ));
        }
    };
    let Some(provider) = providers.get(requirement.provider) else {
        // The config compiler resolves provider names; a gap here is our bug, and refusing is
        // the safe answer.
        warn!(
            provider = requirement.provider,
            "route refers to a missing token provider"
        );
        return Err(refuse(
            Denial::TokenInvalid,
            "identity",
            "token:provider_missing".into(),
        ));
    };
    let claims = match provider.validate(&token).await {
        Ok(c) => c,
        Err(e) => {
            let kind = match &e {
                OidcError::Jwt(j) => j.kind(),
                OidcError::NotReady => "provider_not_ready",
                _ => "provider_error",
            };
            return Err(refuse(
                Denial::TokenInvalid,
                "identity",
                format!("token:{kind}"),
            ));
        }
    };
    if let Err(d) = requirement.policy.authorize(method, &claims) {
        return Err(refuse(
            Denial::InsufficientClaims,
            "authorization",
            format!("claims:rule{}:{}", d.rule, d.claim),
        ));
    }
    Ok(claims)
}

/// Sets the route's claims headers (client copies always removed first) and strips the
/// `Authorization` header unless the route forwards it.
pub fn forward_identity(
    requirement: &RouteToken,
    headers: &mut HeaderMap,
    claims: Option<&Claims>,
) {
    match claims {
        Some(c) => authz::apply_claim_headers(headers, &requirement.claim_headers, c),
        None => {
            for h in &requirement.claim_headers {
                headers.remove(&h.header);
            }
        }
    }
    authz::strip_authorization(headers, requirement.forward_authorization);
}

/// Checks the API key of a route that requires one: presented (header first, the query
/// parameter only without the header), known, not expired, and scoped to this route or its
/// product. Returns the key's id for the access log; the key itself is never logged.
pub fn check_api_key(
    keys: Option<&ApiKeysConfig>,
    route: &RouteConfig,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Arc<str>, Refusal> {
    let refuse = |denial, rule: &str| Refusal {
        denial,
        phase: "identity",
        rule: rule.to_string(),
    };
    let Some(keys) = keys else {
        // The config compiler refuses `api_key = true` without `[api_keys]`; refuse anyway.
        return Err(refuse(Denial::KeyInvalid, "key:not_configured"));
    };
    let presented = match presented_key(headers, query, &keys.header, &keys.query_param) {
        Ok(Some(k)) => k,
        Ok(None) => return Err(refuse(Denial::KeyMissing, "key:missing")),
        Err(_) => return Err(refuse(Denial::KeyInvalid, "key:ambiguous")),
    };
    let found = match keys.store.lookup(presented.expose(), SystemTime::now()) {
        Ok(m) => m,
        Err(KeyError::Expired { id }) => {
            return Err(refuse(Denial::KeyInvalid, &format!("key:expired:{id}")));
        }
        Err(_) => return Err(refuse(Denial::KeyInvalid, "key:unknown")),
    };
    if !found.scope.allows(&route.name, route.product.as_deref()) {
        return Err(refuse(Denial::KeyScope, &format!("key:scope:{}", found.id)));
    }
    Ok(found.id)
}

/// Removes the API key from what goes to the backend: its header, and its query parameter.
pub fn strip_api_key(
    keys: &ApiKeysConfig,
    headers: &mut HeaderMap,
    path_and_query: &str,
) -> String {
    headers.remove(&keys.header);
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            crate::identity::encoding::form_decode(name).is_none_or(|n| n != keys.query_param)
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Checks the client certificate of a route that requires one: the connection must carry a
/// verified certificate (the listener's verifier checked chain, validity and revocation) and
/// the route's allow lists must admit it.
pub fn check_client_cert(
    requirement: &crate::config::RouteClientCert,
    cert: Option<&CertFacts>,
) -> Result<(), Refusal> {
    let Some(facts) = cert else {
        return Err(Refusal {
            denial: Denial::CertificateRequired,
            phase: "identity",
            rule: "client_cert:missing".into(),
        });
    };
    if !requirement.rule.allows(facts) {
        return Err(Refusal {
            denial: Denial::CertificateRefused,
            phase: "authorization",
            rule: "client_cert:not_allowed".into(),
        });
    }
    Ok(())
}

/// RFC 8705 section 3: a certificate-bound token is accepted only on a connection with the
/// certificate its `cnf.x5t#S256` names; otherwise 401 `invalid_token`, as section 3 says.
pub fn check_certificate_binding(claims: &Claims, cert: Option<&CertFacts>) -> Result<(), Refusal> {
    let bound = claims
        .get("cnf")
        .and_then(|c| c.get("x5t#S256"))
        .and_then(serde_json::Value::as_str);
    let rule = match (bound, cert) {
        (Some(x5t), Some(facts)) if crate::identity::mtls::cnf_matches(x5t, facts) => {
            return Ok(());
        }
        (None, _) => "token:cnf_missing",
        (Some(_), None) => "token:cnf_no_certificate",
        (Some(_), Some(_)) => "token:cnf_mismatch",
    };
    Err(Refusal {
        denial: Denial::TokenInvalid,
        phase: "identity",
        rule: rule.into(),
    })
}

/// Certificate facts for the backend: client-sent copies of every certificate header are
/// removed on every route (a backend must be able to trust them), then the route's chosen
/// facts are added when the connection has a certificate.
pub fn forward_client_cert(
    requirement: Option<&crate::config::RouteClientCert>,
    cert: Option<&CertFacts>,
    headers: &mut HeaderMap,
) {
    crate::identity::mtls::strip_client_copies(headers);
    let (Some(requirement), Some(facts)) = (requirement, cert) else {
        return;
    };
    if requirement.forward.is_empty() {
        return;
    }
    for (name, value) in crate::identity::mtls::forwarded_headers(facts) {
        if requirement.forward.contains(&name.as_str()) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_parameter_is_removed_and_the_rest_kept() {
        let keys = ApiKeysConfig {
            store: Arc::new(crate::identity::api_keys::KeyStore::empty()),
            file: "keys.toml".into(),
            header: http::HeaderName::from_static("ocp-apim-subscription-key"),
            query_param: "subscription-key".into(),
        };
        let mut h = HeaderMap::new();
        h.insert("ocp-apim-subscription-key", "secret".parse().unwrap());
        assert_eq!(
            strip_api_key(&keys, &mut h, "/a?x=1&subscription-key=s&y=2"),
            "/a?x=1&y=2"
        );
        assert!(h.is_empty());
        assert_eq!(
            strip_api_key(&keys, &mut h, "/a?subscription%2Dkey=s"),
            "/a"
        );
        assert_eq!(strip_api_key(&keys, &mut h, "/a"), "/a");
    }
}
