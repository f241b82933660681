//! A CIDR prefix in the form the table compiler works on: a family, the address as a
//! left-aligned 128-bit integer, and a length. IPv4-mapped IPv6 prefixes (::ffff:0:0/96 and
//! longer) become IPv4 prefixes, because the XDP program judges such addresses as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    v6: bool,
    /// Address bits, left aligned: an IPv4 address occupies the top 32 bits.
    bits: u128,
    len: u8,
}

/// Why a string is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("`{0}` is not an IP address or CIDR prefix")]
    Syntax(String),
    #[error("prefix length {len} is longer than {max} for this address family")]
    Length { len: u32, max: u8 },
    #[error("`{0}` has bits set past its prefix length; did you mean `{1}`?")]
    HostBits(String, String),
}

impl Prefix {
    /// A prefix from an address and length; host bits past `len` are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let (v6, bits, max) = match addr {
            IpAddr::V4(a) => (false, (u32::from(a) as u128) << 96, 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        if len > max {
            return Err(PrefixError::Length {
                len: len.into(),
                max,
            });
        }
        Ok(Self::normalized(v6, bits & mask(len), len))
    }

    /// A single address (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self::new(addr, len).unwrap_or_else(|_| unreachable!("full length is valid"))
    }

    fn normalized(v6: bool, bits: u128, len: u8) -> Self {
        const MAPPED: u128 = 0xffff << 32;
        if v6 && len >= 96 && bits >> 32 == MAPPED >> 32 {
            return Self {
                v6: false,
                bits: bits << 96,
                len: len - 96,
            };
        }
        Self { v6, bits, len }
    }

    /// Parses `a.b.c.d`, `a.b.c.d/n`, `x::y` or `x::y/n`. Host bits must be zero, so a typo
    /// such as `10.0.0.1/8` is refused rather than silently widened.
    pub fn parse_strict(s: &str) -> Result<Self, PrefixError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                let addr = IpAddr::from_str(a).map_err(|_| PrefixError::Syntax(s.into()))?;
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
                    return Err(PrefixError::Syntax(s.into()));
                }
                let len: u32 = l.parse().map_err(|_| PrefixError::Syntax(s.into()))?;
                (addr, len)
            }
            None => {
                let addr = IpAddr::from_str(s).map_err(|_| PrefixError::Syntax(s.into()))?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        if len > u32::from(max) {
            return Err(PrefixError::Length { len, max });
        }
        let p = Self::new(addr, len as u8)?;
        let as_given = match addr {
            IpAddr::V4(a) => (u32::from(a) as u128) << 96,
            IpAddr::V6(a) => u128::from(a),
        };
        if as_given & !mask(len as u8) != 0 {
            return Err(PrefixError::HostBits(
                s.into(),
                format!("{}/{}", masked_addr(addr, len as u8), len),
            ));
        }
        Ok(p)
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Prefix length in bits, within the family (0..=32 or 0..=128).
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for /0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address bits, left aligned in 128 bits (IPv4 in the top 32).
    pub fn bits(&self) -> u128 {
        self.bits
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.bits))
        } else {
            IpAddr::V4(Ipv4Addr::from((self.bits >> 96) as u32))
        }
    }

    /// Address bytes in network order: 4 for IPv4, 16 for IPv6.
    pub fn octets(&self) -> Vec<u8> {
        match self.addr() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// Whether `addr` (after IPv4-mapped normalisation) lies inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let host = Prefix::host(addr);
        host.v6 == self.v6 && host.bits & mask(self.len) == self.bits
    }
}

/// The top `len` bits set.
pub(crate) fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

fn masked_addr(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask(len))),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_strict(s)
    }
}

impl From<ipnet::IpNet> for Prefix {
    fn from(n: ipnet::IpNet) -> Self {
        Prefix::new(n.addr(), n.prefix_len())
            .unwrap_or_else(|_| unreachable!("ipnet lengths are valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            Prefix::parse_strict("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(Prefix::parse_strict("192.0.2.7").unwrap().len(), 32);
        assert_eq!(
            Prefix::parse_strict("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let mapped = Prefix::parse_strict("::ffff:81.2.69.0/120").unwrap();
        assert!(!mapped.is_v6());
        assert_eq!(mapped.to_string(), "81.2.69.0/24");
        assert_eq!(Prefix::parse_strict("0.0.0.0/0").unwrap().len(), 0);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(
            matches!(Prefix::parse_strict("10.0.0.1/8"), Err(PrefixError::HostBits(_, s)) if s == "10.0.0.0/8")
        );
        assert!(matches!(
            Prefix::parse_strict("10.0.0.0/33"),
            Err(PrefixError::Length { .. })
        ));
        assert!(matches!(
            Prefix::parse_strict("::/129"),
            Err(PrefixError::Length { .. })
        ));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/+8",
            "x",
            "10.0.0.0/8/8",
            "1::/0009",
        ] {
            assert!(Prefix::parse_strict(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contains_respects_mapping() {
        let p = Prefix::parse_strict("81.2.69.0/24").unwrap();
        assert!(p.contains("81.2.69.142".parse().unwrap()));
        assert!(p.contains("::ffff:81.2.69.142".parse().unwrap()));
        assert!(!p.contains("81.2.70.1".parse().unwrap()));
    }
}
