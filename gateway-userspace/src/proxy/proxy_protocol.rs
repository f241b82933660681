//! The PROXY protocol, versions 1 and 2 (haproxy's `doc/proxy-protocol.txt`): the header an L4
//! load balancer writes before the client's bytes to say whom it is relaying. This module owns
//! parsing that header ([`parse`]) and reading exactly that header off a stream
//! ([`read_header`]). It does not decide who may send one (the listener accepts a header only
//! from `trusted.load_balancers`), nor apply timeouts (the caller wraps the read), nor turn the
//! result into the client address (`super::client_ip`).
//!
//! A header that carries no address (v1 `UNKNOWN`, v2 `LOCAL`, v2 `AF_UNSPEC`, `AF_UNIX` or a
//! datagram transport) parses to a [`ProxyHeader`] with `source: None`: the connection then keeps
//! its TCP peer address, as the spec asks (§2.1 for `UNKNOWN`, §2.2 for `LOCAL` and for the
//! combinations a receiver does not implement).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 line, CRLF included (§2.1: "107 chars" for `UNKNOWN`, the worst case).
pub const V1_MAX_LEN: usize = 107;
/// The shortest v1 line: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;
/// Every v1 line starts with this (§2.1: the word and exactly one space).
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 signature (§2.2), chosen to be rejected by every common protocol.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
const V2_FIXED_LEN: usize = 16;
/// The longest v2 header: the length field is 16 bits (§2.2).
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

/// What a PROXY header says about the relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// The client's address and port as the load balancer saw them. `None` when the header
    /// carries no usable address (v1 `UNKNOWN`, v2 `LOCAL`, `AF_UNSPEC`, `AF_UNIX`, datagram):
    /// the connection then keeps its TCP peer address.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, with the same `None` cases as `source`.
    pub destination: Option<SocketAddr>,
    /// 1 or 2.
    pub version: u8,
}

impl ProxyHeader {
    fn unknown(version: u8) -> Self {
        Self {
            source: None,
            destination: None,
            version,
        }
    }
}

/// The result of [`parse`] on the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// The bytes so far can begin a valid header; more are needed. Never returned for input
    /// that can already be rejected (for a partial v1 IPv6 address the check is structural:
    /// such a line may be refused only when the address is complete).
    Incomplete,
    /// A complete header of `len` bytes; what follows it belongs to the relayed connection.
    Complete { len: usize, header: ProxyHeader },
}

/// Which endpoint of the relayed connection a v1 field describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Up to the first 8 bytes of some input, shown as hex: enough to tell a TLS ClientHello
/// (`16 03 01`) or an HTTP request from a PROXY header, and never a payload worth hiding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexPrefix {
    bytes: [u8; 8],
    len: u8,
}

impl HexPrefix {
    fn of(input: &[u8]) -> Self {
        let mut bytes = [0; 8];
        let len = input.len().min(bytes.len());
        bytes[..len].copy_from_slice(&input[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }
}

impl fmt::Display for HexPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("nothing");
        }
        for (i, b) in self.bytes[..usize::from(self.len)].iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HexPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexPrefix({self})")
    }
}

/// Why a connection's PROXY header was refused. The connection is closed; every variant is the
/// sender's fault (a misconfigured load balancer or something that is not one), except `Io`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The first bytes are neither `PROXY ` (v1) nor the v2 signature: the peer does not speak
    /// the PROXY protocol, typically a load balancer not configured to send it (a TLS
    /// ClientHello starts `16 03`).
    #[error("not a PROXY protocol header (starts with {start})")]
    NotProxyProtocol { start: HexPrefix },
    /// v1: no CRLF within the 107 bytes the spec allows (§2.1).
    #[error("PROXY v1 line is longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// v1: a CR not followed by LF, or an LF without a CR before it (§2.1: the line ends with
    /// CRLF).
    #[error("PROXY v1 line is not terminated by CRLF")]
    V1LineEnding,
    /// v1: an empty field (two spaces in a row, or a space before the CRLF); §2.1 separates
    /// fields by exactly one space.
    #[error("PROXY v1 fields must be separated by exactly one space")]
    V1Spacing,
    /// v1: the protocol field is not `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")]
    V1Protocol,
    /// v1: a `TCP4`/`TCP6` line without exactly two addresses and two ports.
    #[error("PROXY v1 line must have two addresses and two ports")]
    V1FieldCount,
    /// v1: an address that is not in the canonical form of the announced family (§2.1: four
    /// decimal numbers without leading zeros for TCP4, an IPv6 address for TCP6).
    #[error("PROXY v1 {side} address is not a valid {family} address")]
    V1Address { side: Side, family: &'static str },
    /// v1: a port that is not a decimal number in 0..=65535 without leading zeros (§2.1).
    #[error("PROXY v1 {side} port is not a decimal number in 0-65535 without leading zeros")]
    V1Port { side: Side },
    /// v2: the version nibble is not 2 (§2.2: "the receiver must only accept this value").
    #[error("PROXY v2 header has version {version}, expected 2")]
    V2Version { version: u8 },
    /// v2: the command is neither LOCAL (0) nor PROXY (1) (§2.2: receivers must drop these).
    #[error("PROXY v2 header has unknown command {command:#x}")]
    V2Command { command: u8 },
    /// v2: an address family other than UNSPEC, INET, INET6 or UNIX (§2.2: "must be rejected
    /// as invalid by receivers").
    #[error("PROXY v2 header has unknown address family {family:#x}")]
    V2Family { family: u8 },
    /// v2: a transport other than UNSPEC, STREAM or DGRAM (§2.2, rejected likewise).
    #[error("PROXY v2 header has unknown transport protocol {transport:#x}")]
    V2Transport { transport: u8 },
    /// v2: the length field is smaller than the address block of the announced family.
    #[error(
        "PROXY v2 address block of {len} bytes is shorter than the {need} bytes its family needs"
    )]
    V2AddressTooShort { len: u16, need: u16 },
    /// v2: the TLVs after the addresses do not tile the rest of the header: one runs past the
    /// length field, or fewer than 3 bytes (the smallest TLV, §2.2) are left over.
    #[error("PROXY v2 TLV at byte {offset} runs past the end of the header")]
    V2Tlv { offset: usize },
    /// The stream ended before a complete header arrived.
    #[error("connection closed after {received} bytes of a PROXY header")]
    Truncated { received: usize },
    /// Reading from the connection failed.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[source] std::io::Error),
}

/// Parses a PROXY header, v1 or v2, at the start of `buf`. Pure: it looks at `buf` only and
/// never reads past the header, so `buf[len..]` (when complete) is the relayed connection's
/// first bytes, untouched.
pub fn parse(buf: &[u8]) -> Result<Parse, ProxyHeaderError> {
    // §2.2 "identifying the protocol version": the v2 signature, else the word PROXY. A buffer
    // too short to tell stays Incomplete as long as it matches either.
    let v2 = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2] == V2_SIGNATURE[..v2] {
        return if buf.len() < V2_SIGNATURE.len() {
            Ok(Parse::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let v1 = buf.len().min(V1_PREFIX.len());
    if buf[..v1] == V1_PREFIX[..v1] {
        return if buf.len() < V1_PREFIX.len() {
            Ok(Parse::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyHeaderError::NotProxyProtocol {
        start: HexPrefix::of(buf),
    })
}

/// Reads one PROXY header from `stream`, consuming exactly its bytes: what follows (the TLS
/// ClientHello, say) is still unread. Reads are sized so they can never overshoot the header:
/// one byte to tell the version, then v2's fixed part and its announced length, or v1 up to
/// the shortest possible line and then at most the two bytes a CRLF still needs. No timeout
/// here: the caller bounds the whole read (the listener's handshake timeout).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyHeaderError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    // One byte first, so that anything else (a ClientHello from a load balancer that does not
    // send PROXY) is refused at once instead of after waiting for more bytes.
    let mut want = 1;
    loop {
        fill(stream, &mut buf, want).await?;
        match parse(&buf)? {
            Parse::Complete { header, .. } => return Ok(header),
            Parse::Incomplete => want = certainly_needed(&buf),
        }
    }
}

/// How many more bytes are part of the header for sure, given that `buf` is an incomplete
/// but valid start of one (at least 1).
fn certainly_needed(buf: &[u8]) -> usize {
    if buf.first() == Some(&V2_SIGNATURE[0]) {
        // v2: the fixed part, then exactly the announced length (§2.2: "always exactly 16 +
        // this value").
        let total = match buf.get(14..16) {
            Some(&[hi, lo]) => V2_FIXED_LEN + usize::from(u16::from_be_bytes([hi, lo])),
            _ => V2_FIXED_LEN,
        };
        return total.saturating_sub(buf.len()).max(1);
    }
    if buf.len() < V1_MIN_LEN {
        V1_MIN_LEN - buf.len()
    } else if buf.last() == Some(&b'\r') {
        1
    } else {
        // The line is not over, and it ends with CRLF: two bytes at least.
        2
    }
}

/// Appends exactly `want` bytes from `stream` to `buf`.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), ProxyHeaderError> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut filled = start;
    while filled < buf.len() {
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(ProxyHeaderError::Io)?;
        if n == 0 {
            return Err(ProxyHeaderError::Truncated { received: filled });
        }
        filled += n;
    }
    Ok(())
}

// ---- Version 1 (§2.1) ----

/// `buf` starts with `PROXY `.
fn parse_v1(buf: &[u8]) -> Result<Parse, ProxyHeaderError> {
    // The CR must sit at index V1_MAX_LEN - 2 at the latest for the line, CRLF included, to
    // fit in V1_MAX_LEN bytes.
    let last_cr = V1_MAX_LEN - 2;
    for (i, &b) in buf.iter().enumerate().take(last_cr + 1) {
        match b {
            b'\n' => return Err(ProxyHeaderError::V1LineEnding),
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => {
                        let header = v1_line(&buf[..i], true)?;
                        Ok(Parse::Complete {
                            len: i + 2,
                            header: header.unwrap_or(ProxyHeader::unknown(1)),
                        })
                    }
                    Some(_) => Err(ProxyHeaderError::V1LineEnding),
                    // Only the LF is missing, so the line itself must already be whole.
                    None => v1_line(&buf[..i], true).map(|_| Parse::Incomplete),
                };
            }
            _ => {}
        }
    }
    if buf.len() > last_cr {
        return Err(ProxyHeaderError::V1TooLong);
    }
    v1_line(buf, false).map(|_| Parse::Incomplete)
}

/// Checks a v1 line without its CRLF. With `complete == false` the line may stop anywhere,
/// the last field may be cut short, and `Ok(None)` means "a valid start so far". With
/// `complete == true`, `Ok(Some(_))` is the header (`Ok(None)` does not occur).
fn v1_line(line: &[u8], complete: bool) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    use ProxyHeaderError as E;
    let rest = &line[V1_PREFIX.len()..];
    let (proto, after) = match rest.iter().position(|&b| b == b' ') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    if after.is_none() && !complete {
        return if [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
            .iter()
            .any(|p| p.starts_with(proto))
        {
            Ok(None)
        } else {
            Err(E::V1Protocol)
        };
    }
    let v6 = match proto {
        // §2.1: after UNKNOWN "the receiver must ignore anything presented before the CRLF".
        b"UNKNOWN" => return Ok(Some(ProxyHeader::unknown(1))),
        b"TCP4" => false,
        b"TCP6" => true,
        b"" if after.is_some() => return Err(E::V1Spacing),
        _ => return Err(E::V1Protocol),
    };
    let Some(after) = after else {
        return Err(E::V1FieldCount);
    };
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mut addrs = [None::<IpAddr>; 2];
    let mut ports = [0u16; 2];
    let mut count = 0;
    let fields: Vec<&[u8]> = after.split(|&b| b == b' ').take(5).collect();
    for (i, &field) in fields.iter().enumerate() {
        count = i + 1;
        // In an incomplete line only the last field may be cut short.
        let cut = !complete && i + 1 == fields.len();
        if i >= 4 {
            return Err(E::V1FieldCount);
        }
        if field.is_empty() && !cut {
            return Err(E::V1Spacing);
        }
        let side = if i % 2 == 0 {
            Side::Source
        } else {
            Side::Destination
        };
        if i < 2 {
            if cut {
                let ok = if v6 {
                    could_start_ipv6(field)
                } else {
                    could_start_ipv4(field)
                };
                if !ok {
                    return Err(E::V1Address { side, family });
                }
            } else {
                addrs[i] = Some(parse_v1_addr(field, v6).ok_or(E::V1Address { side, family })?);
            }
        } else if cut {
            if !could_start_decimal(field, 5, 65_535) {
                return Err(E::V1Port { side });
            }
        } else {
            ports[i - 2] = parse_decimal(field, 5, 65_535)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(E::V1Port { side })?;
        }
    }
    if !complete {
        return Ok(None);
    }
    if count != 4 {
        return Err(E::V1FieldCount);
    }
    match addrs {
        [Some(src), Some(dst)] => Ok(Some(ProxyHeader {
            source: Some(SocketAddr::new(src, ports[0])),
            destination: Some(SocketAddr::new(dst, ports[1])),
            version: 1,
        })),
        _ => Err(E::V1FieldCount),
    }
}

/// An address of the announced family. std's IPv4 parser already refuses leading zeros, the
/// octal ambiguity §2.1 forbids.
fn parse_v1_addr(field: &[u8], v6: bool) -> Option<IpAddr> {
    let s = std::str::from_utf8(field).ok()?;
    if v6 {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A decimal number of at most `max_digits` digits, no sign, no leading zero (except "0"
/// itself), at most `max`. (`u16::from_str` would accept "+80".)
fn parse_decimal(s: &[u8], max_digits: usize, max: u32) -> Option<u32> {
    if s.is_empty() || !could_start_decimal(s, max_digits, max) {
        return None;
    }
    s.iter().try_fold(0u32, |n, &d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// Whether `s` can begin such a number (the empty string can).
fn could_start_decimal(s: &[u8], max_digits: usize, max: u32) -> bool {
    if s.len() > max_digits || !s.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if s.len() > 1 && s[0] == b'0' {
        return false;
    }
    let value = s.iter().fold(0u32, |n, &d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    });
    value <= max
}

/// Whether `s` can begin a dotted-quad IPv4 address.
fn could_start_ipv4(s: &[u8]) -> bool {
    let parts: Vec<&[u8]> = s.split(|&b| b == b'.').collect();
    if parts.len() > 4 {
        return false;
    }
    // `split` yields at least one piece, so there is always a last one.
    let Some((last, whole)) = parts.split_last() else {
        return true;
    };
    whole.iter().all(|p| parse_decimal(p, 3, 255).is_some()) && could_start_decimal(last, 3, 255)
}

/// Whether `s` can begin an IPv6 address as std parses it. Structural, not exact: it checks
/// the characters, the length, the group sizes and counts and at most one `::`, all of which
/// every valid address satisfies, so a valid prefix is never refused.
fn could_start_ipv6(s: &[u8]) -> bool {
    // The longest form: six groups and a dotted quad, "ffff:...:ffff:255.255.255.255".
    const MAX_TEXT: usize = 45;
    if s.len() > MAX_TEXT
        || !s
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        || s.windows(3).any(|w| w == b":::")
        || s.windows(2).filter(|w| *w == b"::").count() > 1
    {
        return false;
    }
    let groups: Vec<&[u8]> = s.split(|&b| b == b':').collect();
    let compressed = s.windows(2).any(|w| w == b"::");
    // 8 groups; "::" adds one empty piece between its colons (two at either end, which then
    // stand for fewer explicit groups), so 9 pieces at most.
    if groups.len() > if compressed { 9 } else { 8 } {
        return false;
    }
    let Some((last, whole)) = groups.split_last() else {
        return true;
    };
    if whole.iter().any(|g| g.len() > 4 || g.contains(&b'.')) {
        return false;
    }
    if last.contains(&b'.') {
        // An embedded IPv4 address takes the place of the last two groups.
        groups.len() <= if compressed { 8 } else { 7 } && could_start_ipv4(last)
    } else {
        // Up to three decimal digits of a dotted quad may still turn this group into one.
        last.len() <= 4
    }
}

// ---- Version 2 (§2.2) ----

/// `buf` starts with the 12-byte signature.
fn parse_v2(buf: &[u8]) -> Result<Parse, ProxyHeaderError> {
    use ProxyHeaderError as E;
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parse::Incomplete);
    };
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(E::V2Version { version });
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        command => return Err(E::V2Command { command }),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parse::Incomplete);
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    // §2.2: for LOCAL the receiver discards "the protocol block including the family which is
    // ignored"; for PROXY, unknown family or transport values must be rejected.
    if !local {
        if family > 3 {
            return Err(E::V2Family { family });
        }
        if transport > 2 {
            return Err(E::V2Transport { transport });
        }
    }
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(Parse::Incomplete);
    };
    let len = u16::from_be_bytes([hi, lo]);
    let total = V2_FIXED_LEN + usize::from(len);
    let block = &buf[V2_FIXED_LEN..buf.len().min(total)];
    let complete = buf.len() >= total;
    if local {
        // §2.2: the length must still be honoured ("must not assume zero is presented for
        // LOCAL connections"); whatever it covers is skipped.
        return Ok(if complete {
            Parse::Complete {
                len: total,
                header: ProxyHeader::unknown(2),
            }
        } else {
            Parse::Incomplete
        });
    }
    // Address block sizes from §2.2; with UNSPEC in either nibble the block's layout is
    // unknown, so it is skipped whole.
    let addr_len: u16 = match (family, transport) {
        (1, 1 | 2) => 12,
        (2, 1 | 2) => 36,
        (3, 1 | 2) => 216,
        _ => 0,
    };
    if len < addr_len {
        return Err(E::V2AddressTooShort {
            len,
            need: addr_len,
        });
    }
    if addr_len > 0 {
        let tlvs = block.get(usize::from(addr_len)..).unwrap_or(&[]);
        check_tlvs(
            tlvs,
            usize::from(len - addr_len),
            V2_FIXED_LEN + usize::from(addr_len),
        )?;
    }
    if !complete {
        return Ok(Parse::Incomplete);
    }
    // Only TCP over IPv4/IPv6 gives a client address; the other valid combinations fall back
    // to the real endpoints, as §2.2 asks of a receiver that does not implement them.
    let (source, destination) = match fam {
        0x11 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            (
                SocketAddr::new(ip(0), be16(block, 8)),
                SocketAddr::new(ip(4), be16(block, 10)),
            )
        }
        0x21 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            (
                SocketAddr::new(ip(0), be16(block, 32)),
                SocketAddr::new(ip(16), be16(block, 34)),
            )
        }
        _ => {
            return Ok(Parse::Complete {
                len: total,
                header: ProxyHeader::unknown(2),
            });
        }
    };
    Ok(Parse::Complete {
        len: total,
        header: ProxyHeader {
            source: Some(source),
            destination: Some(destination),
            version: 2,
        },
    })
}

/// A big-endian u16 at `at`; the caller has checked the block is long enough.
fn be16(block: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([block[at], block[at + 1]])
}

/// Checks that TLVs (§2.2: type, 16-bit length, value) exactly fill `total` bytes, of which
/// `avail` have arrived; a TLV whose header has not arrived yet is checked later. Their
/// contents are ignored (the spec lets a receiver skip them; PP2_TYPE_CRC32C is therefore not
/// verified: the load balancer link is trusted by configuration).
fn check_tlvs(avail: &[u8], total: usize, base: usize) -> Result<(), ProxyHeaderError> {
    let mut pos = 0;
    while pos < total {
        if pos + 3 > total {
            return Err(ProxyHeaderError::V2Tlv { offset: base + pos });
        }
        let Some(&[_, hi, lo]) = avail.get(pos..pos + 3) else {
            return Ok(());
        };
        let end = pos + 3 + usize::from(u16::from_be_bytes([hi, lo]));
        if end > total {
            return Err(ProxyHeaderError::V2Tlv { offset: base + pos });
        }
        pos = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    const TLS_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (usize, ProxyHeader) {
        match parse(buf) {
            Ok(Parse::Complete { len, header }) => (len, header),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn error(buf: &[u8]) -> ProxyHeaderError {
        match parse(buf) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// A v1 line for a TCP connection, as a sender writes it.
    fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {proto} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes()
    }

    /// A v2 header with the given version/command and family/transport bytes, address block
    /// and TLVs.
    fn v2_raw(ver_cmd: u8, fam: u8, block: &[u8], tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut rest = block.to_vec();
        for (t, v) in tlvs {
            rest.push(*t);
            rest.extend_from_slice(&(v.len() as u16).to_be_bytes());
            rest.extend_from_slice(v);
        }
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        out.extend_from_slice(&rest);
        out
    }

    /// A v2 PROXY header for a TCP connection.
    fn v2(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut block = Vec::new();
        let fam = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                0x21
            }
            _ => panic!("mixed families"),
        };
        block.extend_from_slice(&src.port().to_be_bytes());
        block.extend_from_slice(&dst.port().to_be_bytes());
        v2_raw(0x21, fam, &block, tlvs)
    }

    fn known_good() -> Vec<(Vec<u8>, ProxyHeader)> {
        let tcp = |s: &str, d: &str, version| ProxyHeader {
            source: Some(sock(s)),
            destination: Some(sock(d)),
            version,
        };
        vec![
            // The spec's own example (§2.1).
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
                tcp("192.168.0.1:56324", "192.168.0.11:443", 1),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 0 65535\r\n".to_vec(),
                tcp("[2001:db8::1]:0", "[2001:db8::2]:65535", 1),
            ),
            (
                b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n".to_vec(),
                tcp("[::ffff:192.0.2.1]:1", "[::1]:2", 1),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::unknown(1)),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(),
                ProxyHeader::unknown(1),
            ),
            (
                v2(sock("203.0.113.7:51000"), sock("10.0.0.1:443"), &[]),
                tcp("203.0.113.7:51000", "10.0.0.1:443", 2),
            ),
            (
                v2(sock("[2001:db8::7]:51000"), sock("[2001:db8::1]:443"), &[]),
                tcp("[2001:db8::7]:51000", "[2001:db8::1]:443", 2),
            ),
            // ALPN, AUTHORITY, a NOOP padding TLV and a UNIQUE_ID, as AWS NLB and haproxy
            // send them.
            (
                v2(
                    sock("198.51.100.9:40000"),
                    sock("10.0.0.1:443"),
                    &[
                        (0x01, b"h2"),
                        (0x02, b"api.example.com"),
                        (0x04, &[]),
                        (0x05, &[7; 32]),
                    ],
                ),
                tcp("198.51.100.9:40000", "10.0.0.1:443", 2),
            ),
            // LOCAL (a health check from the balancer itself): no address, length 0 ...
            (v2_raw(0x20, 0x00, &[], &[]), ProxyHeader::unknown(2)),
            // ... or with an address block and TLVs that must be skipped anyway (§2.2).
            (
                v2_raw(0x20, 0x11, &[1; 12], &[(0x04, b"pad")]),
                ProxyHeader::unknown(2),
            ),
            // PROXY with AF_UNSPEC, AF_UNIX and UDP: valid, no usable address.
            (v2_raw(0x21, 0x00, &[9; 5], &[]), ProxyHeader::unknown(2)),
            (
                v2_raw(0x21, 0x31, &[b'/'; 216], &[]),
                ProxyHeader::unknown(2),
            ),
            (v2_raw(0x21, 0x12, &[1; 12], &[]), ProxyHeader::unknown(2)),
        ]
    }

    #[test]
    fn parses_known_good_vectors_and_leaves_the_payload() {
        for (header, expected) in known_good() {
            let mut buf = header.clone();
            buf.extend_from_slice(TLS_HELLO);
            let (len, got) = complete(&buf);
            assert_eq!(len, header.len(), "{:?}", String::from_utf8_lossy(&header));
            assert_eq!(got, expected);
            assert_eq!(&buf[len..], TLS_HELLO);
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for (header, _) in known_good() {
            for n in 0..header.len() {
                assert_eq!(
                    parse(&header[..n]).unwrap(),
                    Parse::Incomplete,
                    "{:?} cut at {n}",
                    String::from_utf8_lossy(&header)
                );
            }
        }
    }

    #[test]
    fn v1_length_limit_is_107_bytes_with_crlf() {
        let line = |n: usize| {
            let mut l = b"PROXY UNKNOWN ".to_vec();
            l.resize(n - 2, b'x');
            l.extend_from_slice(b"\r\n");
            l
        };
        assert_eq!(complete(&line(V1_MAX_LEN)).0, V1_MAX_LEN);
        assert!(matches!(
            error(&line(V1_MAX_LEN + 1)),
            ProxyHeaderError::V1TooLong
        ));
        // Refused as soon as no CRLF can fit any more, not after waiting for more.
        let long = [b'x'; 200];
        let mut partial = b"PROXY UNKNOWN ".to_vec();
        partial.extend_from_slice(&long[..V1_MAX_LEN - 1 - partial.len()]);
        assert!(matches!(error(&partial), ProxyHeaderError::V1TooLong));
        assert_eq!(
            parse(&partial[..V1_MAX_LEN - 2]).unwrap(),
            Parse::Incomplete
        );
    }

    #[test]
    fn v1_rejects_malformed_lines() {
        use ProxyHeaderError as E;
        type Expect = fn(&E) -> bool;
        let cases: &[(&[u8], Expect)] = &[
            (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", |e| {
                matches!(e, E::V1LineEnding)
            }),
            (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX", |e| {
                matches!(e, E::V1LineEnding)
            }),
            (b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n", |e| {
                matches!(e, E::V1Spacing)
            }),
            (b"PROXY  TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", |e| {
                matches!(e, E::V1Spacing)
            }),
            (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", |e| {
                matches!(e, E::V1FieldCount)
            }),
            (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", |e| {
                matches!(e, E::V1FieldCount)
            }),
            (b"PROXY TCP4\r\n", |e| matches!(e, E::V1FieldCount)),
            (b"PROXY \r\n", |e| matches!(e, E::V1Protocol)),
            (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n", |e| {
                matches!(e, E::V1Protocol)
            }),
            (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 1\r\n", |e| {
                matches!(e, E::V1Protocol)
            }),
            (b"PROXY UNKNOWNX\r\n", |e| matches!(e, E::V1Protocol)),
            (b"PROXY TCP4 192.168.0.01 1.2.3.4 1 1\r\n", |e| {
                matches!(
                    e,
                    E::V1Address {
                        side: Side::Source,
                        ..
                    }
                )
            }),
            (b"PROXY TCP4 1.2.3.4 ::1 1 1\r\n", |e| {
                matches!(
                    e,
                    E::V1Address {
                        side: Side::Destination,
                        family: "IPv4"
                    }
                )
            }),
            (b"PROXY TCP6 1.2.3.4 ::1 1 1\r\n", |e| {
                matches!(
                    e,
                    E::V1Address {
                        side: Side::Source,
                        family: "IPv6"
                    }
                )
            }),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 080 1\r\n", |e| {
                matches!(e, E::V1Port { side: Side::Source })
            }),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 +80 1\r\n", |e| {
                matches!(e, E::V1Port { .. })
            }),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 80 65536\r\n", |e| {
                matches!(
                    e,
                    E::V1Port {
                        side: Side::Destination
                    }
                )
            }),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 80 -1\r\n", |e| {
                matches!(e, E::V1Port { .. })
            }),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 80 \xff\r\n", |e| {
                matches!(e, E::V1Port { .. })
            }),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 80 1\r\r\n", |e| {
                matches!(e, E::V1LineEnding)
            }),
        ];
        for (input, ok) in cases {
            let e = error(input);
            assert!(ok(&e), "{:?}: {e:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn v1_rejects_early_what_cannot_become_valid() {
        // No waiting for more bytes when the start is already wrong.
        for partial in [
            &b"PROXY TCP7"[..],
            b"PROXY TCP4 1.2.3.4.",
            b"PROXY TCP4 256",
            b"PROXY TCP4 01",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            b"PROXY TCP4  ",
            b"PROXY TCP6 1:::",
            b"PROXY TCP6 fe80::1%",
            b"PROXY TCP6 12345",
            b"PROXY TCP4\r",
        ] {
            assert!(
                parse(partial).is_err(),
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
    }

    #[test]
    fn v2_rejects_malformed_headers() {
        use ProxyHeaderError as E;
        let good = v2(sock("1.2.3.4:5"), sock("6.7.8.9:10"), &[]);
        let with = |at: usize, b: u8| {
            let mut h = good.clone();
            h[at] = b;
            h
        };
        assert!(matches!(
            error(&with(12, 0x11)),
            E::V2Version { version: 1 }
        ));
        assert!(matches!(
            error(&with(12, 0x31)),
            E::V2Version { version: 3 }
        ));
        assert!(matches!(
            error(&with(12, 0x22)),
            E::V2Command { command: 2 }
        ));
        assert!(matches!(error(&with(13, 0x41)), E::V2Family { family: 4 }));
        assert!(matches!(
            error(&with(13, 0x13)),
            E::V2Transport { transport: 3 }
        ));
        // The address block of AF_INET is 12 bytes, of AF_INET6 36 (§2.2).
        assert!(matches!(
            error(&v2_raw(0x21, 0x11, &[0; 11], &[])),
            E::V2AddressTooShort { len: 11, need: 12 }
        ));
        assert!(matches!(
            error(&v2_raw(0x21, 0x21, &[0; 12], &[])),
            E::V2AddressTooShort { len: 12, need: 36 }
        ));
        // A TLV running past the header, and two stray bytes after the TLVs.
        let mut overrun = v2(sock("1.2.3.4:5"), sock("6.7.8.9:10"), &[(0x01, b"h2")]);
        let n = overrun.len();
        overrun[n - 3] = 9;
        assert!(matches!(error(&overrun), E::V2Tlv { offset: 28 }));
        let stray = v2_raw(0x21, 0x11, &[0; 14], &[]);
        assert!(matches!(error(&stray), E::V2Tlv { offset: 28 }));
        // These are refused from the first 16 bytes, without waiting for the rest.
        assert!(parse(&overrun[..V2_FIXED_LEN]).is_ok());
        assert!(matches!(
            parse(&v2_raw(0x21, 0x11, &[0; 11], &[])[..V2_FIXED_LEN]),
            Err(E::V2AddressTooShort { .. })
        ));
        assert!(matches!(parse(&overrun[..31]), Err(E::V2Tlv { .. })));
        assert!(matches!(
            parse(&with(12, 0x11)[..13]),
            Err(E::V2Version { .. })
        ));
    }

    #[test]
    fn v2_header_length_is_bounded_by_its_16_bit_field() {
        let big = v2_raw(0x21, 0x00, &vec![0; u16::MAX as usize], &[]);
        assert_eq!(big.len(), V2_MAX_LEN);
        assert_eq!(complete(&big).0, V2_MAX_LEN);
    }

    #[test]
    fn garbage_is_refused_with_a_short_hex_prefix() {
        let get = b"GET /secret-token-in-path HTTP/1.1\r\n";
        match error(get) {
            ProxyHeaderError::NotProxyProtocol { start } => {
                assert_eq!(start.to_string(), "47 45 54 20 2f 73 65 63")
            }
            e => panic!("{e:?}"),
        }
        let msg = error(TLS_HELLO).to_string();
        assert_eq!(
            msg,
            "not a PROXY protocol header (starts with 16 03 01 02 00 01 00 01)"
        );
        assert!(error(b"proxy ").to_string().contains("70 72 6f 78 79 20"));
        assert!(
            error(b"\r\n\r\n\0\r\nQUIT\r")
                .to_string()
                .contains("0d 0a 0d")
        );
        assert_eq!(parse(b"").unwrap(), Parse::Incomplete);
        assert_eq!(parse(b"PROX").unwrap(), Parse::Incomplete);
        assert_eq!(parse(b"\r\n\r").unwrap(), Parse::Incomplete);
    }

    #[test]
    fn every_error_formats_without_raw_bytes() {
        use ProxyHeaderError as E;
        let all = [
            E::NotProxyProtocol {
                start: HexPrefix::of(b""),
            },
            E::V1TooLong,
            E::V1LineEnding,
            E::V1Spacing,
            E::V1Protocol,
            E::V1FieldCount,
            E::V1Address {
                side: Side::Source,
                family: "IPv4",
            },
            E::V1Port {
                side: Side::Destination,
            },
            E::V2Version { version: 1 },
            E::V2Command { command: 15 },
            E::V2Family { family: 4 },
            E::V2Transport { transport: 3 },
            E::V2AddressTooShort { len: 3, need: 12 },
            E::V2Tlv { offset: 28 },
            E::Truncated { received: 7 },
            E::Io(std::io::Error::other("reset")),
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.is_ascii() && !s.is_empty() && s.len() < 100, "{s}");
        }
        assert_eq!(
            E::V2Command { command: 15 }.to_string(),
            "PROXY v2 header has unknown command 0xf"
        );
    }

    async fn read_after(chunks: &[&[u8]]) -> (Result<ProxyHeader, ProxyHeaderError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1 << 17);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for c in chunks {
                client.write_all(&c).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let header = read_header(&mut server).await;
        writer.await.unwrap();
        let mut rest = Vec::new();
        if header.is_ok() {
            server.read_to_end(&mut rest).await.unwrap();
        }
        (header, rest)
    }

    #[tokio::test]
    async fn read_header_consumes_exactly_the_header() {
        for (header, expected) in known_good() {
            let whole = [&header[..], TLS_HELLO].concat();
            let (got, rest) = read_after(&[&whole]).await;
            assert_eq!(got.unwrap(), expected);
            assert_eq!(rest, TLS_HELLO);
            // Arriving a byte at a time changes nothing.
            let bytes: Vec<&[u8]> = whole.chunks(1).collect();
            let (got, rest) = read_after(&bytes).await;
            assert_eq!(got.unwrap(), expected);
            assert_eq!(rest, TLS_HELLO);
        }
    }

    #[tokio::test]
    async fn read_header_refuses_garbage_and_truncation() {
        let (got, _) = read_after(&[TLS_HELLO]).await;
        assert!(matches!(
            got,
            Err(ProxyHeaderError::NotProxyProtocol { .. })
        ));
        let (got, _) = read_after(&[b"PROXY TCP4 1.2.3.4"]).await;
        assert!(matches!(
            got,
            Err(ProxyHeaderError::Truncated { received: 18 })
        ));
        let header = v2(sock("1.2.3.4:5"), sock("6.7.8.9:10"), &[]);
        let (got, _) = read_after(&[&header[..20]]).await;
        assert!(matches!(
            got,
            Err(ProxyHeaderError::Truncated { received: 20 })
        ));
        let (got, _) = read_after(&[b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"]).await;
        assert!(matches!(got, Err(ProxyHeaderError::V1LineEnding)));
    }

    fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| (
                    SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv4Addr::from(d).into(), dp)
                )),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| (
                    SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv6Addr::from(d).into(), dp)
                )),
            // Zero-heavy and mapped IPv6 addresses exercise `::` and dotted-quad tails in v1.
            (any::<[u8; 4]>(), 0u16..3, any::<u16>()).prop_map(|(v4, hi, p)| {
                let mapped = Ipv4Addr::from(v4).to_ipv6_mapped();
                let sparse = Ipv6Addr::new(hi, 0, 0, 0, 0, 0, 0, u16::from(v4[0]));
                (
                    SocketAddr::new(mapped.into(), p),
                    SocketAddr::new(sparse.into(), p),
                )
            }),
        ]
    }

    /// A valid header, either version, with random TLVs for v2.
    fn valid_header() -> impl Strategy<Value = (Vec<u8>, ProxyHeader)> {
        (
            socket_pair(),
            any::<bool>(),
            proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)),
                0..3,
            ),
        )
            .prop_map(|((src, dst), version1, tlvs)| {
                let tlvs: Vec<(u8, &[u8])> = tlvs.iter().map(|(t, v)| (*t, &v[..])).collect();
                let bytes = if version1 {
                    v1(src, dst)
                } else {
                    v2(src, dst, &tlvs)
                };
                let header = ProxyHeader {
                    source: Some(src),
                    destination: Some(dst),
                    version: if version1 { 1 } else { 2 },
                };
                (bytes, header)
            })
    }

    /// The invariants of `parse` on any input: no panic, a complete length within the input,
    /// and a verdict that more bytes cannot overturn.
    fn check_invariants(buf: &[u8], more: &[u8]) -> Result<(), TestCaseError> {
        let first = parse(buf);
        let extended = parse(&[buf, more].concat());
        match first {
            Ok(Parse::Complete { len, header }) => {
                prop_assert!(len <= buf.len());
                prop_assert_eq!(extended.ok(), Some(Parse::Complete { len, header }));
            }
            Err(_) => prop_assert!(extended.is_err()),
            Ok(Parse::Incomplete) => {}
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_random_bytes(
            buf in proptest::collection::vec(any::<u8>(), 0..300),
            more in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            check_invariants(&buf, &more)?;
        }

        #[test]
        fn parse_never_panics_after_a_valid_start(
            v2_start in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            text in "[ -~]{0,120}",
            more in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let buf = if v2_start {
                [&V2_SIGNATURE[..], &tail].concat()
            } else {
                [&b"PROXY "[..], text.as_bytes()].concat()
            };
            check_invariants(&buf, &more)?;
        }

        #[test]
        fn parse_never_panics_on_mutated_headers(
            (header, _) in valid_header(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
            more in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut buf = header;
            for (at, byte, kind) in edits {
                let i = at.index(buf.len().max(1));
                match kind {
                    0 if i < buf.len() => buf[i] = byte,
                    1 => buf.insert(i.min(buf.len()), byte),
                    _ if i < buf.len() => { buf.remove(i); }
                    _ => {}
                }
            }
            check_invariants(&buf, &more)?;
        }

        #[test]
        fn valid_headers_round_trip(
            (header, expected) in valid_header(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let buf = [&header[..], &payload].concat();
            prop_assert_eq!(
                parse(&buf).ok(),
                Some(Parse::Complete { len: header.len(), header: expected })
            );
            for n in 0..header.len() {
                prop_assert_eq!(parse(&header[..n]).ok(), Some(Parse::Incomplete), "cut at {}", n);
            }
        }

        #[test]
        fn read_header_leaves_the_payload(
            (header, expected) in valid_header(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            chunk in 1usize..20,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole = [&header[..], &payload].concat();
            let chunks: Vec<&[u8]> = whole.chunks(chunk).collect();
            let (got, rest) = rt.block_on(read_after(&chunks));
            prop_assert_eq!(got.ok(), Some(expected));
            prop_assert_eq!(rest, payload);
        }
    }
}
