//! Identity: JWT validation and OIDC provider keys (`jwt`, `oidc`, `validator`, `token_cache`),
//! claims rules (`authz`), API keys (`api_keys`), client certificates (`mtls`). The request
//! path calls them from `proxy::identity`; `fetch` is the HTTP exchange with identity endpoints.

pub mod api_keys;
pub mod authz;
pub mod encoding;
pub mod fetch;
pub mod jwt;
pub mod mtls;
pub mod oidc;
#[cfg(test)]
pub(crate) mod test_tokens;
pub mod token_cache;
pub mod validator;
