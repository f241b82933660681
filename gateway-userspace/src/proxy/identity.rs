//! Identity and authorization phases: for a route that requires a token, find it (RFC 6750
//! sources), validate it against the route's token provider (keys from OIDC discovery, cached
//! and refreshed by `identity::oidc`), check the route's claims rules for the method, and
//! prepare the claims headers for the backend. API keys and client certificates come later.
//! Every refusal is a `Denial`; the rule that decided is logged, never the token.

use std::sync::Arc;

use http::{HeaderMap, Method};
use tokio::task::JoinHandle;
use tracing::warn;

use super::respond::Denial;
use crate::config::{ProxyConfig, RouteToken, TokenProviderConfig};
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
