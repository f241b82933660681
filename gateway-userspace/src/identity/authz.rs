//! Where an access token comes from, claims-based authorization rules per route and method, and
//! claims copied to the backend as request headers (issue 4).
//!
//! Pure library code: nothing here is wired into the proxy's request path, the config or the CLI
//! yet. The rules work on the validated claims ([`Claims`]); every function also has a form that
//! takes the payload object (`&Map<String, Value>`, what [`Claims::as_map`] returns), which is
//! what the tests use.
//!
//! Nothing here formats a token or a claim value: [`ExtractError`] and [`Denied`] name the source,
//! the claim and the rule, never what the client sent. See `docs/authorization.md`.

use std::borrow::Cow;
use std::fmt;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use super::jwt::Claims;

// ---------------------------------------------------------------------------------------------
// Token extraction
// ---------------------------------------------------------------------------------------------

/// One place a client may present its access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    Bearer,
    /// The whole value of a named request header (e.g. `X-Access-Token`).
    Header(HeaderName),
    /// A query parameter (RFC 6750 §2.3, e.g. `access_token`), percent-decoded.
    Query(String),
    /// A cookie, by name (RFC 6265 `Cookie` header).
    Cookie(String),
}

impl TokenSource {
    /// A short name for logs: `bearer`, `header`, `query` or `cookie`.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenSource::Bearer => "bearer",
            TokenSource::Header(_) => "header",
            TokenSource::Query(_) => "query",
            TokenSource::Cookie(_) => "cookie",
        }
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Bearer => f.write_str("Authorization: Bearer"),
            TokenSource::Header(h) => write!(f, "header `{h}`"),
            TokenSource::Query(q) => write!(f, "query parameter `{q}`"),
            TokenSource::Cookie(c) => write!(f, "cookie `{c}`"),
        }
    }
}

/// Why no token could be taken from a request. Never carries the token or any header value; all
/// of these are `invalid_request` in RFC 6750 terms (HTTP 400 or 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    DuplicateAuthorization,
    /// `Authorization: Bearer` with no token, more than one token, or characters outside token68.
    #[error("malformed Bearer credentials in the Authorization header")]
    MalformedBearer,
    /// The named header appears more than once.
    #[error("header `{0}` appears more than once")]
    DuplicateHeader(HeaderName),
    /// The header's value is not visible ASCII, is empty, or contains whitespace.
    #[error("header `{0}` does not hold a well-formed token")]
    MalformedHeader(HeaderName),
    /// The query parameter appears more than once.
    #[error("query parameter `{0}` appears more than once")]
    DuplicateQueryParam(String),
    /// The query parameter is not UTF-8 once percent-decoded, or is empty.
    #[error("query parameter `{0}` does not hold a well-formed token")]
    MalformedQueryParam(String),
    /// The cookie appears more than once.
    #[error("cookie `{0}` appears more than once")]
    DuplicateCookie(String),
    /// The `Cookie` header is not visible ASCII, or the cookie's value is malformed.
    #[error("cookie `{0}` does not hold a well-formed token")]
    MalformedCookie(String),
    /// The token was presented in two places (RFC 6750 §2: clients "MUST NOT use more than one
    /// method to transmit the token in each request").
    #[error("a token was presented in more than one place ({first} and {second})")]
    MoreThanOneMethod {
        first: &'static str,
        second: &'static str,
    },
}

/// Takes the access token from the request: every configured source is looked at, the first
/// configured source that is present gives the token, and a token present in two configured
/// sources is refused ([`ExtractError::MoreThanOneMethod`]). `Ok(None)`: no token anywhere.
///
/// `query` is the request's raw query string (without `?`). An `Authorization` header with another
/// scheme (e.g. `Basic`) is not a bearer token and counts as absent.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    sources: &[TokenSource],
) -> Result<Option<Cow<'a, str>>, ExtractError> {
    let mut found: Option<(&'static str, Cow<'a, str>)> = None;
    for source in sources {
        let token = match source {
            TokenSource::Bearer => from_bearer(headers)?.map(Cow::Borrowed),
            TokenSource::Header(name) => from_header(headers, name)?.map(Cow::Borrowed),
            TokenSource::Query(name) => from_query(query, name)?,
            TokenSource::Cookie(name) => from_cookie(headers, name)?.map(Cow::Borrowed),
        };
        let Some(token) = token else { continue };
        match &found {
            None => found = Some((source.kind(), token)),
            Some((first, _)) => {
                return Err(ExtractError::MoreThanOneMethod {
                    first,
                    second: source.kind(),
                });
            }
        }
    }
    Ok(found.map(|(_, token)| token))
}

/// RFC 6750 §2.1: `credentials = "Bearer" 1*SP b64token`, the scheme case-insensitive.
fn from_bearer(headers: &HeaderMap) -> Result<Option<&str>, ExtractError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExtractError::DuplicateAuthorization);
    }
    let bytes = value.as_bytes();
    // The scheme is a token; anything up to the first space.
    let scheme_end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(bytes.len());
    if !bytes[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let value = value.to_str().map_err(|_| ExtractError::MalformedBearer)?;
    let rest = value[scheme_end..].trim_start_matches(' ');
    if rest.len() == value.len() - scheme_end {
        // No space after the scheme: `Bearer` alone.
        return Err(ExtractError::MalformedBearer);
    }
    let rest = rest.trim_end_matches([' ', '\t']);
    if !is_token68(rest) {
        return Err(ExtractError::MalformedBearer);
    }
    Ok(Some(rest))
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="` (RFC 9110 §11.2).
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn from_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, ExtractError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExtractError::DuplicateHeader(name.clone()));
    }
    let malformed = || ExtractError::MalformedHeader(name.clone());
    let value = value
        .to_str()
        .map_err(|_| malformed())?
        .trim_matches([' ', '\t']);
    if value.is_empty() || value.bytes().any(|b| b == b' ' || b == b'\t') {
        return Err(malformed());
    }
    Ok(Some(value))
}

fn from_query<'a>(
    query: Option<&'a str>,
    param: &str,
) -> Result<Option<Cow<'a, str>>, ExtractError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let value =
        crate::identity::encoding::unique_query_param(query, param).map_err(|e| match e {
            crate::identity::encoding::QueryParamError::Duplicate => {
                ExtractError::DuplicateQueryParam(param.to_owned())
            }
            crate::identity::encoding::QueryParamError::Undecodable => {
                ExtractError::MalformedQueryParam(param.to_owned())
            }
        })?;
    // RFC 6750 section 2.3: an empty access_token is malformed, not absent.
    if value.as_deref() == Some("") {
        return Err(ExtractError::MalformedQueryParam(param.to_owned()));
    }
    let found = value;
    Ok(found)
}

/// RFC 6265 §4.2.1 / §5.4: `cookie-string = cookie-pair *( ";" SP cookie-pair )`. Every `Cookie`
/// header is read (HTTP/2 may split it into several). Pairs without `=` are ignored, as user
/// agents never send them; a value in double quotes is unquoted.
fn from_cookie<'a>(headers: &'a HeaderMap, cookie: &str) -> Result<Option<&'a str>, ExtractError> {
    let malformed = || ExtractError::MalformedCookie(cookie.to_owned());
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        // Bytes, not text: other cookies may hold non-ASCII octets, which are no concern of ours.
        for pair in header.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != cookie.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(ExtractError::DuplicateCookie(cookie.to_owned()));
            }
            let value = pair[eq + 1..].trim_ascii();
            let value = match value.strip_prefix(b"\"") {
                Some(v) => v.strip_suffix(b"\"").ok_or_else(malformed)?,
                None => value,
            };
            if value.is_empty() || !value.iter().copied().all(is_cookie_octet) {
                return Err(malformed());
            }
            found = Some(std::str::from_utf8(value).map_err(|_| malformed())?);
        }
    }
    Ok(found)
}

/// `cookie-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E` (RFC 6265 §4.1.1).
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

// ---------------------------------------------------------------------------------------------
// Authorization rules
// ---------------------------------------------------------------------------------------------

/// How many of a requirement's values must be found in the claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Match {
    /// At least one.
    #[default]
    Any,
    /// Every one.
    All,
}

/// How a required value is compared with one value of the claim (both case-sensitive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Op {
    /// The claim value is exactly the required value.
    #[default]
    Equals,
    /// The claim value contains the required value as a substring.
    Contains,
}

/// One required claim.
///
/// The claim's values: a string is one value, or is split by `separator` when one is given
/// (empty pieces dropped, so `"a  b"` split by `' '` is `a`, `b`); an array gives its elements
/// (strings as they are, numbers and booleans as their JSON text, each string also split by
/// `separator`); a number or boolean is its JSON text (`42`, `true`). `null`, an object, or an
/// array holding either counts as no usable value: the requirement fails.
///
/// With no `values`, the requirement only asks for the claim to be present with a usable value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequirement {
    /// The claim's name; a dotted path reaches into objects (`realm_access.roles`). A claim whose
    /// name itself contains dots (`https://example.com/roles`) is found too: at each level the
    /// longest literal name is tried first.
    pub claim: String,
    /// The required values.
    pub values: Vec<String>,
    /// Any or all of `values`.
    pub match_: Match,
    /// Splits string claim values (`' '` for `scope` and `scp`).
    pub separator: Option<char>,
    /// How each value is compared.
    pub op: Op,
}

impl ClaimRequirement {
    /// `claim` must hold any of `values` (equality, no separator).
    pub fn any_of(claim: impl Into<String>, values: &[&str]) -> Self {
        Self {
            claim: claim.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            match_: Match::Any,
            separator: None,
            op: Op::Equals,
        }
    }

    /// `claim` must hold all of `values` (equality, no separator).
    pub fn all_of(claim: impl Into<String>, values: &[&str]) -> Self {
        Self {
            match_: Match::All,
            ..Self::any_of(claim, values)
        }
    }

    /// The same requirement with a separator for string values.
    pub fn separated_by(self, separator: char) -> Self {
        Self {
            separator: Some(separator),
            ..self
        }
    }

    /// The same requirement comparing by substring.
    pub fn contains(self) -> Self {
        Self {
            op: Op::Contains,
            ..self
        }
    }

    /// Checks the requirement against a claims payload.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), DenyReason> {
        let value = lookup(claims, &self.claim).ok_or(DenyReason::Missing)?;
        let mut have = Vec::new();
        if !collect_values(value, self.separator, &mut have) || have.is_empty() {
            return Err(DenyReason::Unusable);
        }
        let matches = |want: &String| {
            have.iter().any(|h| match self.op {
                Op::Equals => h == want,
                Op::Contains => h.contains(want.as_str()),
            })
        };
        let ok = match self.match_ {
            Match::Any => self.values.is_empty() || self.values.iter().any(matches),
            Match::All => self.values.iter().all(matches),
        };
        if ok {
            Ok(())
        } else {
            Err(DenyReason::NotMatched)
        }
    }
}

/// Finds a claim by name or dotted path. At each level the whole remaining path is tried as a
/// literal name first, then splits at each dot from the left.
fn lookup<'v>(map: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(v) = map.get(path) {
        return Some(v);
    }
    path.match_indices('.')
        .find_map(|(i, _)| match map.get(&path[..i]) {
            Some(Value::Object(inner)) => lookup(inner, &path[i + 1..]),
            _ => None,
        })
}

/// Appends the claim's values as text; `false` when the value (or an element) is unusable.
fn collect_values<'v>(
    value: &'v Value,
    separator: Option<char>,
    out: &mut Vec<Cow<'v, str>>,
) -> bool {
    match value {
        Value::String(s) => {
            match separator {
                Some(sep) => out.extend(s.split(sep).filter(|p| !p.is_empty()).map(Cow::Borrowed)),
                None => out.push(Cow::Borrowed(s)),
            }
            true
        }
        Value::Number(n) => {
            out.push(Cow::Owned(n.to_string()));
            true
        }
        Value::Bool(b) => {
            out.push(Cow::Borrowed(if *b { "true" } else { "false" }));
            true
        }
        Value::Array(items) => items
            .iter()
            .all(|item| !matches!(item, Value::Array(_)) && collect_values(item, separator, out)),
        Value::Null | Value::Object(_) => false,
    }
}

/// Requirements that apply to some methods (all methods when `methods` is empty); all must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodRule {
    /// The methods this rule applies to; empty: every method.
    pub methods: Vec<Method>,
    /// Every requirement must hold.
    pub requirements: Vec<ClaimRequirement>,
}

impl MethodRule {
    /// Whether the rule applies to a request with this method.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// A route's authorization policy: every rule that applies to the request's method must pass.
/// An empty policy (or one whose rules all name other methods) allows any validated token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    pub rules: Vec<MethodRule>,
}

impl RoutePolicy {
    /// Checks validated claims for a request with this method.
    pub fn authorize(&self, method: &Method, claims: &Claims) -> Result<(), Denied> {
        self.authorize_map(method, claims.as_map())
    }

    /// As [`RoutePolicy::authorize`], on the claims payload.
    pub fn authorize_map(
        &self,
        method: &Method,
        claims: &Map<String, Value>,
    ) -> Result<(), Denied> {
        for (rule_index, rule) in self.rules.iter().enumerate() {
            if !rule.applies_to(method) {
                continue;
            }
            for (requirement_index, req) in rule.requirements.iter().enumerate() {
                req.check(claims).map_err(|reason| Denied {
                    rule: rule_index,
                    requirement: requirement_index,
                    claim: req.claim.clone(),
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

/// Why a requirement failed; never carries the claim's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The claim is absent.
    Missing,
    /// The claim is `null`, an object, empty, or an array holding something other than strings,
    /// numbers and booleans.
    Unusable,
    /// The claim's values do not satisfy the requirement.
    NotMatched,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Missing => "missing",
            DenyReason::Unusable => "not a string, number, boolean or array of them",
            DenyReason::NotMatched => "does not hold the required values",
        }
    }
}

/// A failed authorization (HTTP 403, `insufficient_scope` in RFC 6750 terms), for the log: which
/// rule and requirement, which claim and why; never the claim's values or the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}, requirement {requirement}: claim `{claim}` {}", reason.as_str())]
pub struct Denied {
    /// Index of the failed rule in [`RoutePolicy::rules`].
    pub rule: usize,
    /// Index of the failed requirement in that rule's `requirements`.
    pub requirement: usize,
    /// The claim the requirement names.
    pub claim: String,
    pub reason: DenyReason,
}

// ---------------------------------------------------------------------------------------------
// Claims to the backend
// ---------------------------------------------------------------------------------------------

/// A request header set from a claim: the first of `claims` present in the token decides
/// (`["oid", "sub"]`: `oid`, else `sub`). Claim names may be dotted paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: HeaderName,
    pub claims: Vec<String>,
}

/// Sets the mapped headers from validated claims.
///
/// First removes every copy of every mapped header, whatever the claims hold, so a client can
/// never supply one. Then, for each mapping, takes the first present claim (not `null`): a string
/// as it is, a number or boolean as its JSON text, an array of those joined with `", "`. A value
/// holding a control character (or an object, nested array or `null` element) is skipped: the
/// header stays absent, and the next claim is not tried, so the header never names a different
/// identity from the one expected. A later mapping for the same header replaces an earlier one.
pub fn apply_claim_headers(headers: &mut HeaderMap, mapping: &[ClaimHeader], claims: &Claims) {
    apply_claim_headers_map(headers, mapping, claims.as_map());
}

/// As [`apply_claim_headers`], on the claims payload.
pub fn apply_claim_headers_map(
    headers: &mut HeaderMap,
    mapping: &[ClaimHeader],
    claims: &Map<String, Value>,
) {
    for m in mapping {
        headers.remove(&m.header);
    }
    for m in mapping {
        let Some(value) = m
            .claims
            .iter()
            .find_map(|c| lookup(claims, c).filter(|v| !v.is_null()))
        else {
            continue;
        };
        if let Some(value) = header_value(value) {
            headers.insert(m.header.clone(), value);
        }
    }
}

fn header_value(value: &Value) -> Option<HeaderValue> {
    fn scalar(v: &Value) -> Option<Cow<'_, str>> {
        match v {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        }
    }
    let text = match value {
        Value::Array(items) => {
            let parts = items.iter().map(scalar).collect::<Option<Vec<_>>>()?;
            Cow::Owned(parts.join(", "))
        }
        v => scalar(v)?,
    };
    if text.is_empty() || text.chars().any(char::is_control) {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

/// Removes the `Authorization` header unless it is to be forwarded to the backend.
pub fn strip_authorization(headers: &mut HeaderMap, forward: bool) {
    if !forward {
        headers.remove(AUTHORIZATION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    fn all_sources() -> Vec<TokenSource> {
        vec![
            TokenSource::Bearer,
            TokenSource::Header(HeaderName::from_static("x-access-token")),
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("at".into()),
        ]
    }

    fn extract<'a>(
        h: &'a HeaderMap,
        q: Option<&'a str>,
    ) -> Result<Option<Cow<'a, str>>, ExtractError> {
        extract_token(h, q, &all_sources())
    }

    // --- extraction ---

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let h = headers(&[("authorization", &format!("{scheme} {TOKEN}"))]);
            assert_eq!(
                extract(&h, None).expect("ok").as_deref(),
                Some(TOKEN),
                "{scheme}"
            );
        }
    }

    #[test]
    fn bearer_token68_with_padding_and_extra_spaces() {
        let h = headers(&[("authorization", "Bearer   abc+/~-._==")]);
        assert_eq!(
            extract(&h, None).expect("ok").as_deref(),
            Some("abc+/~-._==")
        );
    }

    #[test]
    fn malformed_bearer_refused() {
        for v in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer =abc",
            "Bearer a=b",
            "Bearer\ta",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                extract(&h, None),
                Err(ExtractError::MalformedBearer),
                "{v:?}"
            );
        }
    }

    #[test]
    fn other_scheme_is_not_a_token() {
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(extract(&h, None), Ok(None));
        let h = headers(&[("authorization", "Bearerx abc")]);
        assert_eq!(extract(&h, None), Ok(None));
    }

    #[test]
    fn duplicate_authorization_refused() {
        let h = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("authorization", "Bearer other"),
        ]);
        assert_eq!(extract(&h, None), Err(ExtractError::DuplicateAuthorization));
        let h = headers(&[
            ("authorization", "Basic x"),
            ("authorization", "Bearer other"),
        ]);
        assert_eq!(extract(&h, None), Err(ExtractError::DuplicateAuthorization));
    }

    #[test]
    fn named_header() {
        let h = headers(&[("x-access-token", TOKEN)]);
        assert_eq!(extract(&h, None).expect("ok").as_deref(), Some(TOKEN));
        let h = headers(&[("x-access-token", TOKEN), ("x-access-token", TOKEN)]);
        assert!(matches!(
            extract(&h, None),
            Err(ExtractError::DuplicateHeader(_))
        ));
        let h = headers(&[("x-access-token", "a b")]);
        assert!(matches!(
            extract(&h, None),
            Err(ExtractError::MalformedHeader(_))
        ));
    }

    #[test]
    fn query_parameter_percent_decoded() {
        let h = HeaderMap::new();
        let q = "a=1&access_token=abc%2Edef%3D&b=2";
        assert_eq!(
            extract(&h, Some(q)).expect("ok").as_deref(),
            Some("abc.def=")
        );
        assert_eq!(
            extract(&h, Some("access%5Ftoken=xyz"))
                .expect("ok")
                .as_deref(),
            Some("xyz")
        );
        assert_eq!(extract(&h, Some("other=1")), Ok(None));
        assert_eq!(extract(&h, None), Ok(None));
    }

    #[test]
    fn query_parameter_duplicates_and_bad_values_refused() {
        let h = HeaderMap::new();
        assert!(matches!(
            extract(&h, Some("access_token=a&access_token=a")),
            Err(ExtractError::DuplicateQueryParam(_))
        ));
        assert!(matches!(
            extract(&h, Some("access_token=%FF")),
            Err(ExtractError::MalformedQueryParam(_))
        ));
        assert!(matches!(
            extract(&h, Some("access_token=")),
            Err(ExtractError::MalformedQueryParam(_))
        ));
    }

    #[test]
    fn cookie_parsing() {
        let h = headers(&[("cookie", &format!("a=1; at={TOKEN}; b=2"))]);
        assert_eq!(extract(&h, None).expect("ok").as_deref(), Some(TOKEN));
        let h = headers(&[("cookie", "at=\"abc\"")]);
        assert_eq!(extract(&h, None).expect("ok").as_deref(), Some("abc"));
        // Another cookie whose name merely contains ours, and one with our name as a value.
        let h = headers(&[("cookie", "xat=1; b=at")]);
        assert_eq!(extract(&h, None), Ok(None));
        // HTTP/2 may split cookies over several headers.
        let h = headers(&[("cookie", "a=1"), ("cookie", "at=tok")]);
        assert_eq!(extract(&h, None).expect("ok").as_deref(), Some("tok"));
        // Non-ASCII octets in another cookie do not matter.
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes("n=Zo\u{eb}; at=tok".as_bytes()).expect("value"),
        );
        assert_eq!(extract(&h, None).expect("ok").as_deref(), Some("tok"));
    }

    #[test]
    fn cookie_duplicates_and_bad_values_refused() {
        let h = headers(&[("cookie", "at=a; at=b")]);
        assert!(matches!(
            extract(&h, None),
            Err(ExtractError::DuplicateCookie(_))
        ));
        let h = headers(&[("cookie", "at=a"), ("cookie", "at=a")]);
        assert!(matches!(
            extract(&h, None),
            Err(ExtractError::DuplicateCookie(_))
        ));
        for v in ["at=", "at=\"abc", "at=a\\b", "at=a,b"] {
            let h = headers(&[("cookie", v)]);
            assert!(
                matches!(extract(&h, None), Err(ExtractError::MalformedCookie(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn two_token_locations_refused() {
        let bearer = format!("Bearer {TOKEN}");
        let cookie = format!("at={TOKEN}");
        let query = format!("access_token={TOKEN}");
        let h = headers(&[("authorization", &bearer), ("cookie", &cookie)]);
        assert_eq!(
            extract(&h, None),
            Err(ExtractError::MoreThanOneMethod {
                first: "bearer",
                second: "cookie"
            })
        );
        let h = headers(&[("authorization", &bearer)]);
        assert_eq!(
            extract(&h, Some(&query)),
            Err(ExtractError::MoreThanOneMethod {
                first: "bearer",
                second: "query"
            })
        );
        let h = headers(&[("x-access-token", TOKEN), ("cookie", &cookie)]);
        assert!(matches!(
            extract(&h, None),
            Err(ExtractError::MoreThanOneMethod { .. })
        ));
    }

    #[test]
    fn only_configured_sources_are_read() {
        let h = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("cookie", "at=other"),
        ]);
        let got = extract_token(&h, Some("access_token=q"), &[TokenSource::Bearer]).expect("ok");
        assert_eq!(got.as_deref(), Some(TOKEN));
        let got = extract_token(&h, None, &[TokenSource::Cookie("at".into())]).expect("ok");
        assert_eq!(got.as_deref(), Some("other"));
        assert_eq!(extract_token(&h, None, &[]), Ok(None));
    }

    #[test]
    fn errors_never_show_the_token() {
        let secret = "s3cr3tT0ken";
        let cases: Vec<(HeaderMap, Option<String>)> = vec![
            (
                headers(&[("authorization", &format!("Bearer {secret} x"))]),
                None,
            ),
            (
                headers(&[
                    ("authorization", &format!("Bearer {secret}")),
                    ("authorization", "Bearer y"),
                ]),
                None,
            ),
            (
                headers(&[("authorization", &format!("Bearer {secret}"))]),
                Some(format!("access_token={secret}")),
            ),
            (
                headers(&[("cookie", &format!("at={secret}; at={secret}"))]),
                None,
            ),
            (
                headers(&[("x-access-token", &format!("{secret} {secret}"))]),
                None,
            ),
            (
                HeaderMap::new(),
                Some(format!("access_token={secret}&access_token={secret}")),
            ),
        ];
        for (h, q) in &cases {
            let err = extract(h, q.as_deref()).expect_err("must fail");
            assert!(!format!("{err:?}").contains(secret));
            assert!(!err.to_string().contains(secret));
        }
        // Nor do the configuration types (they hold no token at all).
        assert!(!format!("{:?}", all_sources()).contains(secret));
    }

    // --- rules ---

    /// The seeds' example: any of roles API.Read or API.Write for all methods, API.Write
    /// required for POST, PUT and DELETE.
    fn seeds_policy() -> RoutePolicy {
        RoutePolicy {
            rules: vec![
                MethodRule {
                    methods: vec![],
                    requirements: vec![ClaimRequirement::any_of(
                        "roles",
                        &["API.Read", "API.Write"],
                    )],
                },
                MethodRule {
                    methods: vec![Method::POST, Method::PUT, Method::DELETE],
                    requirements: vec![ClaimRequirement::any_of("roles", &["API.Write"])],
                },
            ],
        }
    }

    #[test]
    fn seeds_example() {
        let p = seeds_policy();
        let reader = map(json!({"roles": ["API.Read"]}));
        let writer = map(json!({"roles": ["API.Write"]}));
        let both = map(json!({"roles": ["API.Read", "API.Write"]}));
        let neither = map(json!({"roles": ["Other"]}));
        let none = map(json!({"sub": "x"}));

        for m in [Method::GET, Method::HEAD, Method::PATCH] {
            assert_eq!(p.authorize_map(&m, &reader), Ok(()));
            assert_eq!(p.authorize_map(&m, &writer), Ok(()));
        }
        for m in [Method::POST, Method::PUT, Method::DELETE] {
            let d = p
                .authorize_map(&m, &reader)
                .expect_err("reader cannot write");
            assert_eq!((d.rule, d.requirement, d.claim.as_str()), (1, 0, "roles"));
            assert_eq!(d.reason, DenyReason::NotMatched);
            assert_eq!(p.authorize_map(&m, &writer), Ok(()));
            assert_eq!(p.authorize_map(&m, &both), Ok(()));
        }
        let d = p
            .authorize_map(&Method::GET, &neither)
            .expect_err("no role");
        assert_eq!((d.rule, d.reason), (0, DenyReason::NotMatched));
        let d = p.authorize_map(&Method::POST, &none).expect_err("no claim");
        assert_eq!(
            (d.rule, d.claim.as_str(), d.reason),
            (0, "roles", DenyReason::Missing)
        );
        // A single-string `roles` claim works too.
        assert_eq!(
            p.authorize_map(&Method::PUT, &map(json!({"roles": "API.Write"}))),
            Ok(())
        );
    }

    #[test]
    fn any_and_all() {
        let c = map(json!({"groups": ["a", "b", "c"]}));
        assert!(
            ClaimRequirement::any_of("groups", &["x", "b"])
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("groups", &["x", "y"])
                .check(&c)
                .is_err()
        );
        assert!(
            ClaimRequirement::all_of("groups", &["a", "c"])
                .check(&c)
                .is_ok()
        );
        assert_eq!(
            ClaimRequirement::all_of("groups", &["a", "x"]).check(&c),
            Err(DenyReason::NotMatched)
        );
        // No values: presence only.
        assert!(ClaimRequirement::any_of("groups", &[]).check(&c).is_ok());
        assert!(ClaimRequirement::all_of("groups", &[]).check(&c).is_ok());
        assert_eq!(
            ClaimRequirement::any_of("other", &[]).check(&c),
            Err(DenyReason::Missing)
        );
    }

    #[test]
    fn separator_on_scope() {
        let c = map(json!({"scope": "openid  orders:read orders:write"}));
        let r =
            ClaimRequirement::all_of("scope", &["orders:read", "orders:write"]).separated_by(' ');
        assert!(r.check(&c).is_ok());
        // Without the separator the whole string is one value.
        let r = ClaimRequirement::any_of("scope", &["orders:read"]);
        assert_eq!(r.check(&c), Err(DenyReason::NotMatched));
        // An empty scope string has no values.
        let r = ClaimRequirement::any_of("scope", &["x"]).separated_by(' ');
        assert_eq!(
            r.check(&map(json!({"scope": " "}))),
            Err(DenyReason::Unusable)
        );
        // `scp` as an array (Entra/Okta) with the same separator.
        let r = ClaimRequirement::any_of("scp", &["orders:write"]).separated_by(' ');
        assert!(
            r.check(&map(json!({"scp": ["orders:read", "orders:write"]})))
                .is_ok()
        );
    }

    #[test]
    fn contains_is_substring() {
        let c = map(json!({"email": "alice@example.com", "groups": ["team-payments-admins"]}));
        assert!(
            ClaimRequirement::any_of("email", &["@example.com"])
                .contains()
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("email", &["@example.org"])
                .contains()
                .check(&c)
                .is_err()
        );
        assert!(
            ClaimRequirement::any_of("groups", &["payments"])
                .contains()
                .check(&c)
                .is_ok()
        );
        // Equality is exact and case-sensitive.
        assert!(
            ClaimRequirement::any_of("groups", &["payments"])
                .check(&c)
                .is_err()
        );
        assert!(
            ClaimRequirement::any_of("email", &["Alice@example.com"])
                .check(&c)
                .is_err()
        );
    }

    #[test]
    fn dotted_paths() {
        let c = map(json!({
            "realm_access": {"roles": ["admin", "user"]},
            "resource_access": {"api": {"roles": ["write"]}},
            "https://example.com/roles": ["editor"],
            "org": {"https://example.com/tier": "gold"},
        }));
        assert!(
            ClaimRequirement::any_of("realm_access.roles", &["admin"])
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("resource_access.api.roles", &["write"])
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("https://example.com/roles", &["editor"])
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("org.https://example.com/tier", &["gold"])
                .check(&c)
                .is_ok()
        );
        assert_eq!(
            ClaimRequirement::any_of("realm_access.groups", &["admin"]).check(&c),
            Err(DenyReason::Missing)
        );
        assert_eq!(
            ClaimRequirement::any_of("realm_access.roles.x", &["admin"]).check(&c),
            Err(DenyReason::Missing)
        );
        // An object is not a usable value.
        assert_eq!(
            ClaimRequirement::any_of("realm_access", &["admin"]).check(&c),
            Err(DenyReason::Unusable)
        );
    }

    #[test]
    fn number_and_bool_claims() {
        let c = map(
            json!({"tier": 3, "ratio": 1.5, "email_verified": true, "flags": [1, false], "n": null}),
        );
        assert!(ClaimRequirement::any_of("tier", &["3"]).check(&c).is_ok());
        assert!(ClaimRequirement::any_of("tier", &["03"]).check(&c).is_err());
        assert!(
            ClaimRequirement::any_of("ratio", &["1.5"])
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("email_verified", &["true"])
                .check(&c)
                .is_ok()
        );
        assert!(
            ClaimRequirement::any_of("email_verified", &["false"])
                .check(&c)
                .is_err()
        );
        assert!(
            ClaimRequirement::all_of("flags", &["1", "false"])
                .check(&c)
                .is_ok()
        );
        assert_eq!(
            ClaimRequirement::any_of("n", &["null"]).check(&c),
            Err(DenyReason::Unusable)
        );
        let bad = map(json!({"roles": ["a", {"x": 1}], "nested": [["a"]]}));
        assert_eq!(
            ClaimRequirement::any_of("roles", &["a"]).check(&bad),
            Err(DenyReason::Unusable)
        );
        assert_eq!(
            ClaimRequirement::any_of("nested", &["a"]).check(&bad),
            Err(DenyReason::Unusable)
        );
    }

    #[test]
    fn rules_are_all_checked_and_indexed() {
        let p = RoutePolicy {
            rules: vec![
                MethodRule {
                    methods: vec![Method::GET],
                    requirements: vec![ClaimRequirement::any_of("a", &["1"])],
                },
                MethodRule {
                    methods: vec![],
                    requirements: vec![
                        ClaimRequirement::any_of("b", &["1"]),
                        ClaimRequirement::any_of("c", &["1"]),
                    ],
                },
            ],
        };
        let c = map(json!({"a": "1", "b": "1", "c": "2"}));
        let d = p.authorize_map(&Method::GET, &c).expect_err("c fails");
        assert_eq!((d.rule, d.requirement, d.claim.as_str()), (1, 1, "c"));
        let c = map(json!({"a": "0", "b": "1", "c": "1"}));
        assert_eq!(
            p.authorize_map(&Method::GET, &c).map_err(|d| d.rule),
            Err(0)
        );
        assert_eq!(p.authorize_map(&Method::POST, &c), Ok(()));
        assert_eq!(
            RoutePolicy::default().authorize_map(&Method::DELETE, &c),
            Ok(())
        );
    }

    #[test]
    fn denied_never_shows_claim_values() {
        let c = map(json!({"roles": ["SecretRole"], "email": "alice@example.com"}));
        let p = RoutePolicy {
            rules: vec![MethodRule {
                methods: vec![],
                requirements: vec![ClaimRequirement::any_of("email", &["bob@example.com"])],
            }],
        };
        let d = p.authorize_map(&Method::GET, &c).expect_err("denied");
        let text = format!("{d} {d:?}");
        assert!(text.contains("email") && text.contains("rule 0"));
        assert!(!text.contains("alice") && !text.contains("SecretRole"));
    }

    // --- claims to headers ---

    fn user_id() -> ClaimHeader {
        ClaimHeader {
            header: HeaderName::from_static("x-user-id"),
            claims: vec!["oid".into(), "sub".into()],
        }
    }

    fn roles() -> ClaimHeader {
        ClaimHeader {
            header: HeaderName::from_static("x-user-roles"),
            claims: vec!["realm_access.roles".into()],
        }
    }

    #[test]
    fn claim_headers_first_present_wins() {
        let mut h = HeaderMap::new();
        let c = map(json!({"oid": "o-1", "sub": "s-1", "realm_access": {"roles": ["a", "b"]}}));
        apply_claim_headers_map(&mut h, &[user_id(), roles()], &c);
        assert_eq!(
            h.get("x-user-id").map(HeaderValue::as_bytes),
            Some(&b"o-1"[..])
        );
        assert_eq!(
            h.get("x-user-roles").map(HeaderValue::as_bytes),
            Some(&b"a, b"[..])
        );

        let mut h = HeaderMap::new();
        let c = map(json!({"oid": null, "sub": "s-1", "n": 7, "v": true}));
        let extra = ClaimHeader {
            header: HeaderName::from_static("x-n"),
            claims: vec!["n".into()],
        };
        apply_claim_headers_map(&mut h, &[user_id(), extra], &c);
        assert_eq!(
            h.get("x-user-id").map(HeaderValue::as_bytes),
            Some(&b"s-1"[..])
        );
        assert_eq!(h.get("x-n").map(HeaderValue::as_bytes), Some(&b"7"[..]));
    }

    #[test]
    fn client_sent_copies_removed_even_without_claim() {
        let mut h = headers(&[
            ("x-user-id", "forged"),
            ("x-user-id", "forged2"),
            ("x-user-roles", "admin"),
            ("x-other", "kept"),
        ]);
        let c = map(json!({"sub": "s-1"}));
        apply_claim_headers_map(&mut h, &[user_id(), roles()], &c);
        let ids: Vec<_> = h
            .get_all("x-user-id")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(ids, vec![&b"s-1"[..]]);
        assert!(
            h.get("x-user-roles").is_none(),
            "forged header removed though the claim is absent"
        );
        assert_eq!(
            h.get("x-other").map(HeaderValue::as_bytes),
            Some(&b"kept"[..])
        );
    }

    #[test]
    fn unusable_claim_values_skipped() {
        for v in [
            json!("a\r\nX-Admin: 1"),
            json!("tab\there"),
            json!("del\u{7f}"),
            json!("c1\u{85}"),
            json!(["ok", "bad\n"]),
            json!({"x": 1}),
            json!(["a", {"x": 1}]),
            json!(""),
        ] {
            let mut h = headers(&[("x-user-id", "forged")]);
            let c = map(json!({"oid": v, "sub": "fallback"}));
            apply_claim_headers_map(&mut h, &[user_id()], &c);
            assert!(h.get("x-user-id").is_none(), "{v}");
        }
        // Non-ASCII text passes as UTF-8 bytes.
        let mut h = HeaderMap::new();
        apply_claim_headers_map(&mut h, &[user_id()], &map(json!({"oid": "Zoë"})));
        assert_eq!(
            h.get("x-user-id").map(HeaderValue::as_bytes),
            Some("Zoë".as_bytes())
        );
    }

    #[test]
    fn authorization_forwarded_or_stripped() {
        let mut h = headers(&[("authorization", "Bearer a"), ("x", "1")]);
        strip_authorization(&mut h, true);
        assert!(h.contains_key(AUTHORIZATION));
        strip_authorization(&mut h, false);
        assert!(!h.contains_key(AUTHORIZATION));
        assert!(h.contains_key("x"));
    }
}
