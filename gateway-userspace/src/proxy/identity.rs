//! Identity and authorization phases: for a route that requires a token, find it (RFC 6750
//! sources), validate it against the route's token provider (keys from OIDC discovery, cached
//! and refreshed by `identity::oidc`), check the route's claims rules for the method, and
//! prepare the claims headers for the backend; for a route that requires an API key, check it
//! and remove it before forwarding. Client certificates come later.
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
use crate::identity::oidc::{OidcError, OidcProvider, Readiness};

/// A running token provider: the key cache, its refresh task (stopped on drop) and the
/// validation policy from the config.
pub struct TokenProvider {
    pub name: String,
    pub client: OidcProvider,
    pub policy: ValidationPolicy,
    refresh: JoinHandle<()>,
}

impl Drop for TokenProvider {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

impl TokenProvider {
    pub fn ready(&self) -> bool {
        self.client.readiness() == Readiness::Ready
    }
}

/// The providers for `cfg`. A provider whose name and issuer are unchanged from `previous`
/// is kept, so a reload keeps its warm key cache and never refuses tokens while keys reload.
pub fn providers(
    cfg: &ProxyConfig,
    previous: &[Arc<TokenProvider>],
) -> Result<Vec<Arc<TokenProvider>>, OidcError> {
    cfg.token_providers
        .iter()
        .map(|tp: &TokenProviderConfig| {
            if let Some(p) = previous.iter().find(|p| {
                p.name == tp.name && p.client.issuer() == tp.oidc.issuer && p.policy == tp.policy
            }) {
                return Ok(p.clone());
            }
            let client = OidcProvider::new(tp.oidc.clone())?;
            let refresh = client.spawn_refresh();
            Ok(Arc::new(TokenProvider {
                name: tp.name.clone(),
                client,
                policy: tp.policy.clone(),
                refresh,
            }))
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
) -> Result<Claims, Refusal> {
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
            return Err(refuse(
                Denial::TokenRequestInvalid,
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
    let claims = match provider.client.validate(&token, &provider.policy).await {
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
