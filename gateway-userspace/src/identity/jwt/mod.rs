//! JWT access-token validation (issue 4, "Validation"; mission "validate-jwt").
//!
//! A self-contained library: strict compact JWS parsing, signature verification with `ring`
//! against a hygiene-checked JWKS ([`parse_jwks`]), and claims validation against a
//! [`ValidationPolicy`]. Not yet wired into the proxy, OIDC discovery or the config.
//! The checks, their order and what is refused by design are in `docs/jwt.md`.
//!
//! Crypto backend: `ring` directly (already in the tree through rustls). It verifies every
//! algorithm we support (RS/PS 256-512 with 2048-8192-bit keys, ES256, ES384, EdDSA) and cannot
//! express `none` or HMAC-with-a-public-key, which removes whole attack classes by construction.

mod jwk;

pub use jwk::{
    Algorithm, JwksError, Key, KeyRejection, KeySet, MAX_JWKS_BYTES, RejectedKey, parse_jwk,
    parse_jwks,
};

use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a token is refused. Messages never contain the token or any part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`ValidationPolicy::max_token_bytes`]; checked before any decoding.
    #[error("token larger than the configured maximum")]
    TooLarge,
    /// Not exactly three segments, a segment that is not strict unpadded base64url, a header or
    /// payload that is not a JSON object (or repeats a member), or a header member of the wrong
    /// type. The reason is a fixed string.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header has a `crit` member: we implement no JWS extension (RFC 7515 §4.1.11).
    #[error("token header has a crit parameter")]
    Crit,
    /// The header carries a key or a key location (`jwk`, `jku`, `x5u`, `x5c`): keys come only
    /// from the configured JWKS, and such tokens are refused rather than partly trusted.
    #[error("token header embeds or points to a key")]
    EmbeddedKey,
    /// `alg` is `none`, an HMAC algorithm, unknown, or not in the allow-list.
    #[error("token algorithm not allowed")]
    AlgNotAllowed,
    /// The key found for the token is of another type or declares another `alg` (e.g. an ES256
    /// token against an RSA key).
    #[error("token algorithm does not fit the key")]
    AlgKeyMismatch,
    /// No key with the header's `kid`.
    #[error("no key with the token's kid")]
    UnknownKid,
    /// No `kid` in the header and the key set has more than one key.
    #[error("token has no kid and the key set has several keys")]
    MissingKid,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `typ` is required by the policy and is missing or different.
    #[error("token typ missing or not the required one")]
    Typ,
    /// `exp` is missing.
    #[error("token has no exp claim")]
    MissingExp,
    /// A time claim (`exp`, `nbf`, `iat`) is not a finite JSON number.
    #[error("time claim is not a number")]
    BadTimeClaim,
    /// `exp` plus the leeway is not after now.
    #[error("token expired")]
    Expired,
    /// `nbf` is after now plus the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is after now plus the leeway.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` is missing or not exactly the configured issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// `aud` is missing, not a string or an array of strings, or names none of the configured
    /// audiences.
    #[error("token audience not accepted")]
    WrongAudience,
}

impl JwtError {
    /// A stable short code for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed(_) | JwtError::MissingExp | JwtError::BadTimeClaim => "malformed",
            JwtError::Crit => "crit",
            JwtError::EmbeddedKey => "embedded_key",
            JwtError::AlgNotAllowed | JwtError::AlgKeyMismatch => "alg_not_allowed",
            JwtError::UnknownKid | JwtError::MissingKid => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::Typ => "typ",
            JwtError::Expired => "expired",
            JwtError::NotYetValid | JwtError::IssuedInFuture => "not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
        }
    }

    /// The RFC 6750 `error` value for `WWW-Authenticate: Bearer`: always `invalid_token`.
    pub fn www_authenticate_error(&self) -> &'static str {
        "invalid_token"
    }
}

/// The protected header fields we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The verified algorithm.
    pub alg: Algorithm,
    /// `kid`, if present.
    pub kid: Option<String>,
    /// `typ`, if present.
    pub typ: Option<String>,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationPolicy {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one. Empty accepts nothing.
    pub audiences: Vec<String>,
    /// Algorithm allow-list; empty means the keys' own algorithms ([`KeySet::algorithms`]).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Tokens longer than this are refused before decoding.
    pub max_token_bytes: usize,
    /// Required `typ` (e.g. `at+jwt`, RFC 9068), compared case-insensitively, with or without
    /// the `application/` prefix.
    pub require_typ: Option<String>,
}

/// Default [`ValidationPolicy::max_token_bytes`].
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default [`ValidationPolicy::leeway`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

impl ValidationPolicy {
    /// A policy with the defaults: algorithms from the keys, 60 s leeway, 8 KiB, no `typ` check.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        ValidationPolicy {
            issuer: issuer.into(),
            audiences,
            algorithms: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            require_typ: None,
        }
    }
}

/// The validated claims: the payload object plus typed accessors.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    header: Header,
    map: Map<String, Value>,
}

impl Claims {
    /// The whole payload object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }
    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }
    /// A claim that is a string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.map.get(name).and_then(Value::as_str)
    }
    /// The verified header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// `iss`.
    pub fn issuer(&self) -> Option<&str> {
        self.get_str("iss")
    }
    /// `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.get_str("sub")
    }
    /// `client_id` (RFC 9068), else `azp` (OIDC), else `appid` (Entra v1).
    pub fn client_id(&self) -> Option<&str> {
        self.get_str("client_id")
            .or_else(|| self.get_str("azp"))
            .or_else(|| self.get_str("appid"))
    }
    /// `jti`.
    pub fn jti(&self) -> Option<&str> {
        self.get_str("jti")
    }
    /// `aud` as a list (a single string gives one element).
    pub fn audiences(&self) -> Vec<&str> {
        match self.map.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    /// The space-delimited `scope` (RFC 8693 / 9068), else `scp` (string or array, Entra/Okta).
    pub fn scopes(&self) -> Vec<&str> {
        match self.map.get("scope").or_else(|| self.map.get("scp")) {
            Some(Value::String(s)) => s.split(' ').filter(|x| !x.is_empty()).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    /// `exp` in whole seconds since the epoch (always present in validated claims).
    pub fn expires_at(&self) -> Option<SystemTime> {
        let secs = self.map.get("exp").and_then(Value::as_f64)?;
        (secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs(secs as u64))
    }
}

/// Splits, decodes and verifies a compact JWS; returns the header and the raw payload bytes.
/// Checks no claims (the payload need not be JSON). `allowed` is the algorithm allow-list; an
/// empty list allows nothing.
pub fn verify_signature(
    token: &str,
    keys: &KeySet,
    allowed: &[Algorithm],
) -> Result<(Header, Vec<u8>), JwtError> {
    let bytes = token.as_bytes();
    let mut parts = bytes.split(|b| *b == b'.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three segments"));
    };
    let bad_b64 = JwtError::Malformed("segment is not unpadded base64url");
    let header_bytes = super::encoding::b64url_decode(h64).ok_or(bad_b64.clone())?;
    let payload = super::encoding::b64url_decode(p64).ok_or(bad_b64.clone())?;
    let sig = super::encoding::b64url_decode(s64).ok_or(bad_b64)?;
    let h = super::encoding::json_object(&header_bytes)
        .ok_or(JwtError::Malformed("header is not a JSON object"))?;
    if h.contains_key("crit") {
        return Err(JwtError::Crit);
    }
    if ["jwk", "jku", "x5u", "x5c"]
        .iter()
        .any(|m| h.contains_key(*m))
    {
        return Err(JwtError::EmbeddedKey);
    }
    let opt_str = |name: &str| match h.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Malformed("header member of the wrong type")),
    };
    let alg_name = opt_str("alg")?.ok_or(JwtError::Malformed("header has no alg"))?;
    let alg = Algorithm::from_name(&alg_name)
        .filter(|a| allowed.contains(a))
        .ok_or(JwtError::AlgNotAllowed)?;
    let kid = opt_str("kid")?;
    let typ = opt_str("typ")?;
    let key = match &kid {
        Some(k) => keys.get(k).ok_or(JwtError::UnknownKid)?,
        None => match keys.keys() {
            [only] => only,
            _ => return Err(JwtError::MissingKid),
        },
    };
    if !key.fits(alg) {
        return Err(JwtError::AlgKeyMismatch);
    }
    // The signing input is the two encoded segments exactly as received.
    let signing_input = &bytes[..h64.len() + 1 + p64.len()];
    if !key.verify(alg, signing_input, &sig) {
        return Err(JwtError::BadSignature);
    }
    Ok((Header { alg, kid, typ }, payload))
}

fn time_claim(map: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or(JwtError::BadTimeClaim),
        Some(_) => Err(JwtError::BadTimeClaim),
    }
}

fn typ_matches(typ: &str, required: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    let r = required.to_ascii_lowercase();
    let r = r.strip_prefix("application/").unwrap_or(&r);
    t == r || t.strip_prefix("application/") == Some(r)
}

/// Validates a compact JWS access token: size, structure, header, algorithm, key, signature,
/// `typ`, then the claims (`exp`, `nbf`, `iat`, `iss`, `aud`) at `now`.
pub fn validate(
    token: &str,
    keys: &KeySet,
    policy: &ValidationPolicy,
    now: SystemTime,
) -> Result<Claims, JwtError> {
    if token.len() > policy.max_token_bytes {
        return Err(JwtError::TooLarge);
    }
    let derived;
    let allowed: &[Algorithm] = if policy.algorithms.is_empty() {
        derived = keys.algorithms();
        &derived
    } else {
        &policy.algorithms
    };
    let (header, payload) = verify_signature(token, keys, allowed)?;
    if let Some(required) = &policy.require_typ
        && !header
            .typ
            .as_deref()
            .is_some_and(|t| typ_matches(t, required))
    {
        return Err(JwtError::Typ);
    }
    let map = super::encoding::json_object(&payload)
        .ok_or(JwtError::Malformed("payload is not a JSON object"))?;

    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(_) => 0.0,
    };
    let leeway = policy.leeway.as_secs_f64();
    let exp = time_claim(&map, "exp")?.ok_or(JwtError::MissingExp)?;
    let nbf = time_claim(&map, "nbf")?;
    let iat = time_claim(&map, "iat")?;
    if now >= exp + leeway {
        return Err(JwtError::Expired);
    }
    if nbf.is_some_and(|t| t > now + leeway) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|t| t > now + leeway) {
        return Err(JwtError::IssuedInFuture);
    }
    if map.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    let aud_ok = match map.get("aud") {
        Some(Value::String(a)) => policy.audiences.iter().any(|c| c == a),
        Some(Value::Array(list)) => {
            list.iter().all(Value::is_string)
                && list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| policy.audiences.iter().any(|c| c == a))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(JwtError::WrongAudience);
    }
    Ok(Claims { header, map })
}

#[cfg(test)]
mod tests;
