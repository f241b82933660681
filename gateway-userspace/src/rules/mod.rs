//! The kernel rule model: what the allow list, the deny sets and geo-blocking say, independent
//! of where they came from (config, files, an .mmdb) and of how the kernel stores them. Config
//! compiles into a [`RuleSet`]; [`table`] compiles a `RuleSet` into the XDP program's tables.

pub mod cidr_file;
pub mod geo;
pub mod prefix;
pub mod table;

use std::collections::BTreeSet;
use std::fmt;

pub use prefix::Prefix;

/// Whether a rule acts or only counts what it would do ("audit" mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    #[default]
    Enforce,
    /// Count "would drop" and pass.
    Report,
}

/// Every static kernel rule, in the order the program applies them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    /// Always passes, before bans and every other rule (management networks).
    pub allow: Vec<Prefix>,
    /// Static deny sets, in config order; the first enforcing set that matches names the drop.
    pub deny: Vec<DenySet>,
    /// Geo-blocking, judged after the deny sets.
    pub geo: Option<GeoRules>,
}

/// A named list of denied prefixes.
#[derive(Clone, Debug, PartialEq)]
pub struct DenySet {
    pub name: String,
    pub mode: Mode,
    pub prefixes: Vec<Prefix>,
}

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Parses two ASCII letters (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to addresses the database has no country for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownCountry {
    #[default]
    Pass,
    Block,
}

/// Countries resolved to prefixes, and which of them are blocked.
#[derive(Clone, Debug, PartialEq)]
pub struct GeoRules {
    pub mode: Mode,
    pub blocked: BTreeSet<CountryCode>,
    pub unknown: UnknownCountry,
    /// Every network of the database that has a country. Networks do not overlap.
    pub networks: Vec<(Prefix, CountryCode)>,
}
