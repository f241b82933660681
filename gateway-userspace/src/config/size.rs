//! Byte sizes written as an integer (`1048576`) or a number with a unit (`"10MiB"`, `"512 KB"`).
//! Every size in the config goes through here, so they all read and fail alike.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A size as written: a TOML integer (bytes) or a string with a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of bytes or a size such as \"10MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl fmt::Display for RawSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(n) => write!(f, "{n}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// Why a size was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a whole number followed by a known unit.
    #[error(
        "write a whole number and a unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB \
         (powers of 1024), such as \"10MiB\""
    )]
    Syntax,
    /// A negative integer.
    #[error("it must not be negative")]
    Negative,
    /// More bytes than a u64 holds.
    #[error("it is too large")]
    TooLarge,
}

/// The size in bytes.
pub(crate) fn parse(raw: &RawSize) -> Result<u64, SizeError> {
    match raw {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| SizeError::Negative),
        RawSize::Text(s) => parse_text(s),
    }
}

fn parse_text(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(if s.starts_with('-') {
            SizeError::Negative
        } else {
            SizeError::Syntax
        });
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(SizeError::Syntax),
    };
    let n: u64 = number.parse().map_err(|_| SizeError::TooLarge)?;
    n.checked_mul(multiplier).ok_or(SizeError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<u64, SizeError> {
        parse(&RawSize::Text(s.into()))
    }

    #[test]
    fn units() {
        assert_eq!(text("0B"), Ok(0));
        assert_eq!(text("512B"), Ok(512));
        assert_eq!(text("1KB"), Ok(1000));
        assert_eq!(text("1 kB"), Ok(1000));
        assert_eq!(text("10MB"), Ok(10_000_000));
        assert_eq!(text("2GB"), Ok(2_000_000_000));
        assert_eq!(text("1KiB"), Ok(1024));
        assert_eq!(text("10MiB"), Ok(10 << 20));
        assert_eq!(text(" 3 GiB "), Ok(3 << 30));
        assert_eq!(parse(&RawSize::Bytes(1234)), Ok(1234));
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "10",
            "MiB",
            "1.5MiB",
            "10 parsecs",
            "1e6B",
            "10MiBs",
            "+1B",
        ] {
            assert_eq!(text(bad), Err(SizeError::Syntax), "{bad:?}");
        }
        assert_eq!(text("-1MiB"), Err(SizeError::Negative));
        assert_eq!(parse(&RawSize::Bytes(-1)), Err(SizeError::Negative));
        assert_eq!(text("99999999999999999999B"), Err(SizeError::TooLarge));
        assert_eq!(text("20000000000GiB"), Err(SizeError::TooLarge));
        assert_eq!(
            SizeError::Syntax.to_string(),
            "write a whole number and a unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB \
             (powers of 1024), such as \"10MiB\""
        );
        assert_eq!(SizeError::TooLarge.to_string(), "it is too large");
    }
}
