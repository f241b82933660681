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

/// What a reload changes in the static rules, for the log: prefixes added and removed per
/// rule set (allow, each deny set by name, geo networks), and geo policy changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleDiff {
    /// (rule set, added, removed), only for sets that changed.
    pub sets: Vec<(String, usize, usize)>,
    /// Human-readable changes of modes, blocked countries and the unknown-country policy.
    pub policy: Vec<String>,
}

impl RuleDiff {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.policy.is_empty()
    }
}

impl fmt::Display for RuleDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let mut parts: Vec<String> = self
            .sets
            .iter()
            .map(|(name, a, r)| format!("{name}: +{a} -{r}"))
            .collect();
        parts.extend(self.policy.iter().cloned());
        f.write_str(&parts.join("; "))
    }
}

fn count_changes<T: Ord + Clone>(old: &[T], new: &[T]) -> (usize, usize) {
    let old: BTreeSet<T> = old.iter().cloned().collect();
    let new: BTreeSet<T> = new.iter().cloned().collect();
    (new.difference(&old).count(), old.difference(&new).count())
}

impl RuleSet {
    /// The changes from `self` to `new`.
    pub fn diff(&self, new: &RuleSet) -> RuleDiff {
        let mut d = RuleDiff::default();
        let mut set = |name: String, (added, removed): (usize, usize)| {
            if added + removed > 0 {
                d.sets.push((name, added, removed));
            }
        };
        set("allow".into(), count_changes(&self.allow, &new.allow));
        for n in &new.deny {
            let old = self.deny.iter().find(|o| o.name == n.name);
            set(
                format!("deny:{}", n.name),
                count_changes(old.map_or(&[][..], |o| &o.prefixes), &n.prefixes),
            );
        }
        for o in self
            .deny
            .iter()
            .filter(|o| !new.deny.iter().any(|n| n.name == o.name))
        {
            set(format!("deny:{}", o.name), (0, o.prefixes.len()));
        }
        let nets =
            |g: &Option<GeoRules>| g.as_ref().map(|g| g.networks.clone()).unwrap_or_default();
        set(
            "geo".into(),
            count_changes(&nets(&self.geo), &nets(&new.geo)),
        );
        for n in &new.deny {
            if let Some(o) = self.deny.iter().find(|o| o.name == n.name)
                && o.mode != n.mode
            {
                d.policy
                    .push(format!("deny:{} mode {:?} -> {:?}", n.name, o.mode, n.mode));
            }
        }
        match (&self.geo, &new.geo) {
            (Some(o), Some(n)) => {
                if o.blocked != n.blocked {
                    let list = |b: &BTreeSet<CountryCode>| {
                        b.iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    d.policy.push(format!(
                        "geo blocked [{}] -> [{}]",
                        list(&o.blocked),
                        list(&n.blocked)
                    ));
                }
                if o.unknown != n.unknown {
                    d.policy
                        .push(format!("geo unknown {:?} -> {:?}", o.unknown, n.unknown));
                }
                if o.mode != n.mode {
                    d.policy
                        .push(format!("geo mode {:?} -> {:?}", o.mode, n.mode));
                }
            }
            (None, Some(_)) => d.policy.push("geo enabled".into()),
            (Some(_), None) => d.policy.push("geo disabled".into()),
            (None, None) => {}
        }
        d
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    #[test]
    fn diff_counts_prefixes_and_policy() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let old = RuleSet {
            allow: vec![p("10.0.0.0/8")],
            deny: vec![
                DenySet {
                    name: "a".into(),
                    mode: Mode::Enforce,
                    prefixes: vec![p("192.0.2.0/24"), p("198.51.100.0/24")],
                },
                DenySet {
                    name: "gone".into(),
                    mode: Mode::Enforce,
                    prefixes: vec![p("203.0.113.0/24")],
                },
            ],
            geo: None,
        };
        let new = RuleSet {
            allow: vec![p("10.0.0.0/8")],
            deny: vec![DenySet {
                name: "a".into(),
                mode: Mode::Report,
                prefixes: vec![p("192.0.2.0/24"), p("2001:db8::/32"), p("2001:db8:1::/48")],
            }],
            geo: None,
        };
        let d = old.diff(&new);
        assert_eq!(
            d.sets,
            vec![
                ("deny:a".to_string(), 2, 1),
                ("deny:gone".to_string(), 0, 1)
            ]
        );
        assert_eq!(d.policy, vec!["deny:a mode Enforce -> Report".to_string()]);
        assert_eq!(
            d.to_string(),
            "deny:a: +2 -1; deny:gone: +0 -1; deny:a mode Enforce -> Report"
        );
        assert!(new.diff(&new).is_empty());
    }
}
