//! Identity phase (issue 4, in progress): token validation and API keys as libraries. They are
//! not yet wired into the request path, the config or the CLI.

pub mod api_keys;
pub mod authz;
pub(crate) mod encoding;
pub mod jwt;
pub mod mtls;
pub mod oidc;
#[cfg(test)]
pub(crate) mod test_tokens;
pub mod token_cache;
pub mod validator;
