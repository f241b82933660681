//! RESP2, the Redis wire protocol, limited to what the cluster store sends and receives.
//!
//! Replies come from the network, so the parser is written for hostile input: it never panics,
//! never trusts a length before the bytes are there, and bounds what it will buffer or nest
//! (a reply claiming a 4 GiB string or a million-deep array is refused, not allocated).

use bytes::{Buf, BufMut, BytesMut};

/// Longest bulk string accepted. Ban lists are the largest replies (a few hundred bytes per
/// ban); 64 MiB leaves room for millions of bans and still stops a corrupt length early.
pub(crate) const MAX_BULK: usize = 64 << 20;
/// Most elements accepted in one array.
pub(crate) const MAX_ARRAY: usize = 4 << 20;
/// Deepest nesting accepted; the scripts reply with at most two levels.
pub(crate) const MAX_DEPTH: usize = 8;
/// Longest line (status, error, integer, length header).
const MAX_LINE: usize = 64 << 10;

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Status(String),
    /// `-ERR ...`: an error reply, which answers the command (it is not a broken connection).
    Error(String),
    Int(i64),
    /// `$-1` and `*-1`.
    Nil,
    Bulk(Vec<u8>),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bulk(b) => Some(b),
            Self::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Why bytes from the server are not RESP2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown reply type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("malformed length or integer")]
    BadNumber,
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("bulk string of {0} bytes exceeds the limit")]
    BulkTooLong(i64),
    #[error("array of {0} elements exceeds the limit")]
    ArrayTooLong(i64),
    #[error("replies nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    #[error("status or error line is not UTF-8")]
    NotUtf8,
}

/// Encodes a command as an array of bulk strings, the only form Redis requires clients to send.
pub fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    out.reserve(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.put_u8(b'*');
    put_decimal(out, args.len() as u64);
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        put_decimal(out, arg.len() as u64);
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
    out.put_slice(b"\r\n");
}

/// Takes one complete reply off the front of `buf`: `Ok(None)` when more bytes are needed
/// (nothing is consumed), an error when the bytes can never become a valid reply (the
/// connection must then be dropped, since the stream position is lost).
pub fn parse(buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(v) => {
            buf.advance(pos);
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Value>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::TooDeep);
    }
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    let Some(line) = line_at(buf, *pos + 1)? else {
        return Ok(None);
    };
    let after_line = *pos + 1 + line.len() + 2;
    match kind {
        b'+' | b'-' => {
            let text = std::str::from_utf8(line)
                .map_err(|_| ProtocolError::NotUtf8)?
                .to_owned();
            *pos = after_line;
            Ok(Some(if kind == b'+' {
                Value::Status(text)
            } else {
                Value::Error(text)
            }))
        }
        b':' => {
            let n = number(line)?;
            *pos = after_line;
            Ok(Some(Value::Int(n)))
        }
        b'$' => {
            let n = number(line)?;
            if n == -1 {
                *pos = after_line;
                return Ok(Some(Value::Nil));
            }
            let len = usize::try_from(n)
                .ok()
                .filter(|l| *l <= MAX_BULK)
                .ok_or(ProtocolError::BulkTooLong(n))?;
            let end = after_line + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf);
            }
            let data = buf[after_line..end].to_vec();
            *pos = end + 2;
            Ok(Some(Value::Bulk(data)))
        }
        b'*' => {
            let n = number(line)?;
            if n == -1 {
                *pos = after_line;
                return Ok(Some(Value::Nil));
            }
            let count = usize::try_from(n)
                .ok()
                .filter(|c| *c <= MAX_ARRAY)
                .ok_or(ProtocolError::ArrayTooLong(n))?;
            let mut cursor = after_line;
            // Capacity bounded by the bytes at hand, so a large claimed count allocates nothing
            // before its elements arrive (each element takes at least three bytes).
            let mut items = Vec::with_capacity(count.min(buf.len().saturating_sub(cursor) / 3));
            for _ in 0..count {
                match parse_at(buf, &mut cursor, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            *pos = cursor;
            Ok(Some(Value::Array(items)))
        }
        other => Err(ProtocolError::UnknownType(other)),
    }
}

/// The line starting at `start`, without its CRLF; `None` until the CRLF has arrived.
fn line_at(buf: &[u8], start: usize) -> Result<Option<&[u8]>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or_default();
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i > MAX_LINE => Err(ProtocolError::LineTooLong),
        Some(i) => Ok(Some(&rest[..i])),
        None if rest.len() > MAX_LINE + 1 => Err(ProtocolError::LineTooLong),
        None => Ok(None),
    }
}

fn number(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(ProtocolError::BadNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Option<Value>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        parse(&mut buf)
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = BytesMut::new();
        encode(&["SET", "k", ""], &mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse_all(b"+OK\r\n"), Ok(Some(Value::Status("OK".into()))));
        assert_eq!(
            parse_all(b"-NOSCRIPT No matching script\r\n"),
            Ok(Some(Value::Error("NOSCRIPT No matching script".into())))
        );
        assert_eq!(parse_all(b":-42\r\n"), Ok(Some(Value::Int(-42))));
        assert_eq!(parse_all(b"$-1\r\n"), Ok(Some(Value::Nil)));
        assert_eq!(parse_all(b"*-1\r\n"), Ok(Some(Value::Nil)));
        assert_eq!(
            parse_all(b"$5\r\na\r\nbc\r\n"),
            Ok(Some(Value::Bulk(b"a\r\nbc".to_vec())))
        );
        assert_eq!(
            parse_all(b"*2\r\n:1\r\n*1\r\n$0\r\n\r\n"),
            Ok(Some(Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Bulk(Vec::new())])
            ])))
        );
    }

    #[test]
    fn partial_replies_consume_nothing() {
        let full = b"*2\r\n$3\r\nabc\r\n:7\r\n+OK\r\n";
        for cut in 0..full.len() - 5 {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&full[..]);
        assert!(matches!(parse(&mut buf), Ok(Some(Value::Array(_)))));
        assert_eq!(parse(&mut buf), Ok(Some(Value::Status("OK".into()))));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_malformed_input() {
        assert_eq!(parse_all(b"?x\r\n"), Err(ProtocolError::UnknownType(b'?')));
        assert_eq!(parse_all(b":12a\r\n"), Err(ProtocolError::BadNumber));
        assert_eq!(parse_all(b":\r\n"), Err(ProtocolError::BadNumber));
        assert_eq!(parse_all(b"$-2\r\n"), Err(ProtocolError::BulkTooLong(-2)));
        assert_eq!(
            parse_all(b"$99999999999\r\n"),
            Err(ProtocolError::BulkTooLong(99_999_999_999))
        );
        assert_eq!(
            parse_all(b"*9223372036854775807\r\n"),
            Err(ProtocolError::ArrayTooLong(i64::MAX))
        );
        assert_eq!(parse_all(b"$1\r\nab\r\n"), Err(ProtocolError::MissingCrlf));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(parse_all(deep.as_bytes()), Err(ProtocolError::TooDeep));
        let long = vec![b'+'; MAX_LINE + 10];
        assert_eq!(parse_all(&long), Err(ProtocolError::LineTooLong));
        assert_eq!(parse_all(b"+\xff\r\n"), Err(ProtocolError::NotUtf8));
    }

    #[test]
    fn a_huge_claimed_array_allocates_nothing_up_front() {
        // Ten million elements claimed (over the cap) and just under it with no elements sent.
        assert!(parse_all(b"*10000000\r\n").is_err());
        assert_eq!(parse_all(b"*4000000\r\n"), Ok(None));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Keep parsing until it needs more bytes or fails, as the connection does.
            for _ in 0..300 {
                match parse(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn resp_like_bytes_never_panic(parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b"*".to_vec()), proptest::strategy::Just(b"$".to_vec()),
                proptest::strategy::Just(b":".to_vec()), proptest::strategy::Just(b"+".to_vec()),
                proptest::strategy::Just(b"-".to_vec()), proptest::strategy::Just(b"\r\n".to_vec()),
                proptest::strategy::Just(b"-1".to_vec()), proptest::strategy::Just(b"3".to_vec()),
                proptest::strategy::Just(b"abc".to_vec()),
            ], 0..40)) {
            let bytes: Vec<u8> = parts.concat();
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..100 {
                match parse(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
