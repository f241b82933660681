//! Strict base64url (RFC 4648 §5, no padding) and JSON objects without duplicate members,
//! shared by the identity modules (JWT, API keys, mTLS).

use std::borrow::Cow;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Decodes unpadded base64url. Refuses `=`, whitespace, any byte outside the URL-safe alphabet,
/// an impossible length (4n+1) and non-zero unused trailing bits, so every byte string has exactly
/// one accepted encoding.
pub fn b64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    }
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut chunks = input.chunks_exact(4);
    for c in &mut chunks {
        let n = (val(c[0])? << 18) | (val(c[1])? << 12) | (val(c[2])? << 6) | val(c[3])?;
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    match *chunks.remainder() {
        [] => {}
        [a, b] => {
            let n = (val(a)? << 18) | (val(b)? << 12);
            if n & 0xffff != 0 {
                return None;
            }
            out.push((n >> 16) as u8);
        }
        [a, b, c] => {
            let n = (val(a)? << 18) | (val(b)? << 12) | (val(c)? << 6);
            if n & 0xff != 0 {
                return None;
            }
            out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
        }
        _ => return None,
    }
    Some(out)
}

/// Encodes unpadded base64url: API keys, RFC 8705 certificate thumbprints, test tokens.
pub fn b64url_encode(input: &[u8]) -> String {
    encode(
        input,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        false,
    )
}

/// Encodes padded standard base64 (RFC 4648 §4): HTTP Basic credentials.
pub fn b64_encode(input: &[u8]) -> String {
    encode(
        input,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true,
    )
}

fn encode(input: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if pad {
            for _ in chars..4 {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON object whose top level has no repeated member names (RFC 7515 §4 / RFC 7519 §4 let a
/// parser reject them; two parsers picking different duplicates is a classic bypass).
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: Value = m.next_value()?;
                    if map.insert(k, v).is_some() {
                        return Err(de::Error::custom("duplicate member"));
                    }
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses bytes as one JSON object with unique top-level member names.
pub(crate) fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<StrictObject>(bytes)
        .ok()
        .map(|o| o.0)
}

/// One `application/x-www-form-urlencoded` component (query parameters: RFC 6750 §2.3 tokens, API keys): `+` is a
/// space, `%XX` a byte, a `%` without two hex digits stays as it is. `None` when not UTF-8.
pub fn form_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex_value(b)),
                bytes.get(i + 2).and_then(|&b| hex_value(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push((hi << 4) | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why a query parameter could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryParamError {
    /// The parameter appears more than once: ambiguous, so refused.
    Duplicate,
    /// Its value does not decode to UTF-8.
    Undecodable,
}

/// The form-decoded value of `param` in a raw query string (without `?`), if present once.
/// Pairs whose name does not decode cannot be `param` and are skipped, as a backend would.
pub fn unique_query_param<'a>(
    query: &'a str,
    param: &str,
) -> Result<Option<Cow<'a, str>>, QueryParamError> {
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name).is_none_or(|n| n != param) {
            continue;
        }
        if found.is_some() {
            return Err(QueryParamError::Duplicate);
        }
        found = Some(form_decode(value).ok_or(QueryParamError::Undecodable)?);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_roundtrip_and_strictness() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let e = b64url_encode(&data);
            assert_eq!(b64url_decode(e.as_bytes()).as_deref(), Some(&data[..]));
        }
        assert!(b64url_decode(b"AB").is_none(), "non-zero trailing bits");
        assert!(b64url_decode(b"AA").is_some());
        assert!(b64url_decode(b"AA==").is_none());
        assert!(b64url_decode(b"A").is_none());
        assert!(b64url_decode(b"A A").is_none());
        assert!(b64url_decode(b"a+/b").is_none());
    }

    #[test]
    fn duplicate_members_refused() {
        assert!(json_object(br#"{"a":1,"a":2}"#).is_none());
        assert!(json_object(br#"{"a":{"b":1},"c":2}"#).is_some());
        assert!(json_object(b"[1]").is_none());
        assert!(json_object(br#"{"a":1} x"#).is_none());
    }
}
