//! `[abuse]` and its `[[abuse.rules]]`: when refusals from one client turn into a ban. Read
//! (raw), checked and compiled here; the detector in `crate::abuse` applies it.
//!
//! The section is taken out of the document and read apart from the other sections (see
//! [`super::load_str`]); its result is [`super::Config::abuse`]. `portcullis check` reads and
//! checks it through the same path.

use std::time::Duration;

use toml::Spanned;

use super::error::ErrorKind;
use super::proxy_compile::{duration, integer};
use super::reader::{Field, Keyword, Table};
use super::source::Diagnostics;
use crate::kernel::BanReason;
use crate::rules::Mode;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Defaults and limits, named once: the docs, the example and the schema quote them.
pub(crate) mod defaults {
    use super::{DAY, Duration, HOUR, MINUTE};

    pub(crate) const MAX_TRACKED_CLIENTS: i64 = 100_000;
    pub(crate) const MAX_TRACKED_CLIENTS_LIMIT: i64 = 10_000_000;
    pub(crate) const OFFENDER_MEMORY: Duration = DAY;
    pub(crate) const MAX_OFFENDER_MEMORY: Duration = Duration::from_secs(30 * 86_400);
    pub(crate) const WINDOW: Duration = MINUTE;
    pub(crate) const MAX_WINDOW: Duration = HOUR;
    pub(crate) const BAN: Duration = Duration::from_secs(600);
    pub(crate) const MAX_BAN: Duration = DAY;
    pub(crate) const MAX_BAN_LIMIT: Duration = Duration::from_secs(30 * 86_400);
    pub(crate) const MAX_THRESHOLD: i64 = 1_000_000;
    pub(crate) const AUTH_FAILURES: u32 = 20;
    pub(crate) const RATE_LIMITED: u32 = 100;
    pub(crate) const VALIDATION_FAILURES: u32 = 10;
}

/// What a rule counts: refusals of one family, recognised by their problem `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbuseKind {
    /// Credentials presented and refused: a guessed key, a forged or expired token.
    AuthFailure,
    /// Requests refused by a rate limit.
    RateLimit,
    /// Requests refused by request validation.
    Validation,
}

impl AbuseKind {
    pub const ALL: [AbuseKind; 3] = [Self::AuthFailure, Self::RateLimit, Self::Validation];

    /// The config word, also the `rule` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::AuthFailure => "auth_failure",
            Self::RateLimit => "rate_limit",
            Self::Validation => "validation",
        }
    }

    /// The refusal codes (`Denial::code`) this kind counts. Missing credentials
    /// (`token_missing`, `key_missing`, `client_cert_required`) are not counted: that is how
    /// every client starts an authentication challenge. Valid credentials without the right
    /// (`insufficient_claims`, `key_scope`, `client_cert_refused`) are not either: the client
    /// is known, so banning it would hide a permission mistake behind a network outage.
    pub fn codes(self) -> &'static [&'static str] {
        match self {
            Self::AuthFailure => &["token_invalid", "token_request_invalid", "key_invalid"],
            Self::RateLimit => &["rate_limited"],
            Self::Validation => &["validation_failed"],
        }
    }

    /// The kind that counts refusal `code`, if any.
    pub fn of_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.codes().contains(&code))
    }

    /// The reason a ban of this kind carries in the kernel map.
    pub fn ban_reason(self) -> BanReason {
        match self {
            Self::AuthFailure => BanReason::AuthFailure,
            Self::RateLimit => BanReason::RateLimit,
            Self::Validation => BanReason::Validation,
        }
    }
}

impl Keyword for AbuseKind {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("auth_failure", Self::AuthFailure),
        ("rate_limit", Self::RateLimit),
        ("validation", Self::Validation),
    ];
}

/// How the ban of a repeat offender grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escalation {
    /// Every ban lasts `ban`.
    None,
    /// Each ban within `offender_memory` of the previous one lasts twice as long, up to
    /// `max_ban`.
    Double,
}

impl Keyword for Escalation {
    const WORDS: &'static [(&'static str, Self)] =
        &[("none", Self::None), ("double", Self::Double)];
}

/// One `[[abuse.rules]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbuseRule {
    pub kind: AbuseKind,
    /// Refusals within `window` that trigger a ban.
    pub threshold: u32,
    pub window: Duration,
    /// The first ban's length.
    pub ban: Duration,
    pub escalation: Escalation,
    /// The longest a ban can grow to.
    pub max_ban: Duration,
}

impl AbuseRule {
    /// The length of the `offense`-th ban (1 for the first) of a client.
    pub fn ban_for(&self, offense: u32) -> Duration {
        match self.escalation {
            Escalation::None => self.ban,
            Escalation::Double => {
                let factor = 1u32.checked_shl(offense.saturating_sub(1)).unwrap_or(0);
                if factor == 0 {
                    return self.max_ban;
                }
                self.ban.saturating_mul(factor).min(self.max_ban)
            }
        }
    }

    fn default_for(kind: AbuseKind) -> Self {
        let threshold = match kind {
            AbuseKind::AuthFailure => defaults::AUTH_FAILURES,
            AbuseKind::RateLimit => defaults::RATE_LIMITED,
            AbuseKind::Validation => defaults::VALIDATION_FAILURES,
        };
        Self {
            kind,
            threshold,
            window: defaults::WINDOW,
            ban: defaults::BAN,
            escalation: Escalation::Double,
            max_ban: defaults::MAX_BAN,
        }
    }
}

/// `[abuse]` compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbuseConfig {
    pub enabled: bool,
    /// `report`: log and count "would ban", ban nothing.
    pub mode: Mode,
    /// Clients counted at once; past it, idle ones are pruned and new ones go uncounted.
    pub max_tracked_clients: usize,
    /// How long a past ban makes the next one longer.
    pub offender_memory: Duration,
    /// At most one rule per kind.
    pub rules: Vec<AbuseRule>,
}

impl Default for AbuseConfig {
    /// On, enforcing, with one rule per kind: the secure choice for a gateway whose refusals
    /// an attacker can otherwise repeat for free.
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Enforce,
            max_tracked_clients: defaults::MAX_TRACKED_CLIENTS as usize,
            offender_memory: defaults::OFFENDER_MEMORY,
            rules: AbuseKind::ALL
                .into_iter()
                .map(AbuseRule::default_for)
                .collect(),
        }
    }
}

impl AbuseConfig {
    /// The rule counting `kind`, if any.
    pub fn rule(&self, kind: AbuseKind) -> Option<&AbuseRule> {
        self.rules.iter().find(|r| r.kind == kind)
    }
}

/// `[abuse]` as written.
#[derive(Default)]
pub(crate) struct RawAbuse {
    pub enabled: Field<bool>,
    pub mode: Field<Mode>,
    pub max_tracked_clients: Field<i64>,
    pub offender_memory: Field<String>,
    pub rules: Field<Vec<RawAbuseRule>>,
}

/// One `[[abuse.rules]]` as written.
pub(crate) struct RawAbuseRule {
    pub kind: Option<Spanned<AbuseKind>>,
    pub threshold: Option<Spanned<i64>>,
    pub window: Field<String>,
    pub ban: Field<String>,
    pub escalation: Field<Escalation>,
    pub max_ban: Field<String>,
}

impl RawAbuse {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let rules = match t.tables_field("rules", d) {
            Field::Present(tables) => {
                let span = tables.span();
                let rules = tables
                    .into_inner()
                    .into_iter()
                    .map(|t| RawAbuseRule::read(t, d))
                    .collect();
                Field::Present(Spanned::new(span, rules))
            }
            Field::Absent => Field::Absent,
            Field::Invalid => Field::Invalid,
        };
        let raw = Self {
            enabled: t.value("enabled", d),
            mode: t.keyword("mode", d),
            max_tracked_clients: t.value("max_tracked_clients", d),
            offender_memory: t.value("offender_memory", d),
            rules,
        };
        t.finish(d);
        raw
    }
}

impl RawAbuseRule {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            kind: t.required_keyword("kind", d),
            threshold: t.required("threshold", d),
            window: t.value("window", d),
            ban: t.value("ban", d),
            escalation: t.keyword("escalation", d),
            max_ban: t.value("max_ban", d),
        };
        t.finish(d);
        raw
    }
}

/// Checks and compiles `[abuse]`; `None` (the section was not a table, reported) compiles to
/// the defaults so the rest of the checks still run.
pub(crate) fn compile(raw: Option<RawAbuse>, d: &mut Diagnostics) -> AbuseConfig {
    let defaults = AbuseConfig::default();
    let Some(raw) = raw else {
        return defaults;
    };
    let max_tracked = integer(
        &raw.max_tracked_clients,
        "abuse.max_tracked_clients",
        (1, defaults::MAX_TRACKED_CLIENTS_LIMIT),
        d,
    );
    let memory = duration(
        &raw.offender_memory,
        "abuse.offender_memory",
        defaults::MAX_OFFENDER_MEMORY,
        d,
    );
    let rules = match &raw.rules {
        Field::Present(list) => rules(list.get_ref(), d),
        Field::Absent | Field::Invalid => defaults.rules.clone(),
    };
    AbuseConfig {
        enabled: raw.enabled.value_or(defaults.enabled),
        mode: raw.mode.value_or(defaults.mode),
        max_tracked_clients: max_tracked
            .value_or(defaults::MAX_TRACKED_CLIENTS)
            .try_into()
            .unwrap_or(usize::MAX),
        offender_memory: memory.value_or(defaults.offender_memory),
        rules,
    }
}

fn rules(raw: &[RawAbuseRule], d: &mut Diagnostics) -> Vec<AbuseRule> {
    let mut out: Vec<AbuseRule> = Vec::new();
    // Kinds seen so far, refused rules included, so a duplicate is reported either way.
    let mut seen: Vec<AbuseKind> = Vec::new();
    for r in raw {
        let threshold = r.threshold.as_ref().map_or(Field::Absent, |t| {
            integer(
                &Field::Present(t.clone()),
                "abuse.rules.threshold",
                (1, defaults::MAX_THRESHOLD),
                d,
            )
        });
        let window = duration(&r.window, "abuse.rules.window", defaults::MAX_WINDOW, d);
        let ban = duration(&r.ban, "abuse.rules.ban", defaults::MAX_BAN_LIMIT, d);
        let max_ban = duration(
            &r.max_ban,
            "abuse.rules.max_ban",
            defaults::MAX_BAN_LIMIT,
            d,
        );
        let ban_value = ban.value_or(defaults::BAN);
        let max_value = max_ban.value_or(defaults::MAX_BAN);
        if let (Some(m), true) = (max_ban.present(), max_value < ban_value) {
            let kind = ErrorKind::DurationOrder {
                key: "abuse.rules.max_ban".into(),
                value: max_value,
                relation: "at least",
                other: "abuse.rules.ban".into(),
                other_value: ban_value,
            };
            d.at(&m.span(), kind);
        }
        let Some(kind) = r.kind.as_ref() else {
            continue;
        };
        if seen.contains(kind.get_ref()) {
            let err = ErrorKind::Duplicate {
                key: "abuse.rules.kind".into(),
                value: kind.get_ref().name().into(),
            };
            d.at(&kind.span(), err);
            continue;
        }
        seen.push(*kind.get_ref());
        let Some(threshold) = threshold.present() else {
            continue;
        };
        out.push(AbuseRule {
            kind: *kind.get_ref(),
            threshold: u32::try_from(*threshold.get_ref()).unwrap_or(u32::MAX),
            window: window.value_or(defaults::WINDOW),
            ban: ban_value,
            escalation: r.escalation.value_or(Escalation::Double),
            // The cap is never below the first ban.
            max_ban: max_value.max(ban_value),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(text: &str) -> Result<AbuseConfig, String> {
        super::super::load_str(text, Path::new("/etc/portcullis/p.toml"))
            .map(|c| c.abuse)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_on_and_enforcing() {
        let a = load("[kernel]\nenabled = false\n").unwrap();
        assert_eq!(a, AbuseConfig::default());
        assert!(a.enabled);
        assert_eq!(a.mode, Mode::Enforce);
        assert_eq!(a.rule(AbuseKind::AuthFailure).unwrap().threshold, 20);
        assert_eq!(a.rule(AbuseKind::RateLimit).unwrap().threshold, 100);
        assert_eq!(a.rule(AbuseKind::Validation).unwrap().threshold, 10);
    }

    #[test]
    fn a_full_section_compiles() {
        let a = load(
            r#"[kernel]
enabled = false
[abuse]
enabled = true
mode = "report"
max_tracked_clients = 50
offender_memory = "1h"
[[abuse.rules]]
kind = "auth_failure"
threshold = 3
window = "10s"
ban = "2s"
escalation = "none"
max_ban = "1m"
"#,
        )
        .unwrap();
        assert_eq!(a.mode, Mode::Report);
        assert_eq!(a.max_tracked_clients, 50);
        assert_eq!(a.offender_memory, HOUR);
        assert_eq!(
            a.rules,
            vec![AbuseRule {
                kind: AbuseKind::AuthFailure,
                threshold: 3,
                window: Duration::from_secs(10),
                ban: Duration::from_secs(2),
                escalation: Escalation::None,
                max_ban: MINUTE,
            }]
        );
    }

    #[test]
    fn errors_are_located() {
        let e = load(
            r#"[kernel]
enabled = false
[abuse]
mode = "ban"
max_tracked_clients = 0
bogus = 1
[[abuse.rules]]
kind = "auth_failure"
threshold = 0
ban = "10m"
max_ban = "1m"
[[abuse.rules]]
kind = "auth_failure"
threshold = 5
window = "2h"
[[abuse.rules]]
threshold = 5
"#,
        )
        .unwrap_err();
        for needle in [
            "p.toml:4:8: error:",
            "`abuse.mode`",
            "p.toml:5:23: error:",
            "`abuse.max_tracked_clients`: 0 is out of range",
            "p.toml:6:1: error:",
            "bogus",
            "p.toml:9:13: error:",
            "`abuse.rules.threshold`: 0",
            "p.toml:11:11: error:",
            "`abuse.rules.max_ban` (1m) must be at least `abuse.rules.ban` (10m)",
            "p.toml:13:8: error:",
            "`auth_failure` is listed more than once",
            "p.toml:15:10: error:",
            "`abuse.rules.window`",
            "`kind`",
        ] {
            assert!(e.contains(needle), "{needle:?} missing in:\n{e}");
        }
    }

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            AbuseKind::of_code("key_invalid"),
            Some(AbuseKind::AuthFailure)
        );
        assert_eq!(
            AbuseKind::of_code("token_invalid"),
            Some(AbuseKind::AuthFailure)
        );
        assert_eq!(
            AbuseKind::of_code("rate_limited"),
            Some(AbuseKind::RateLimit)
        );
        assert_eq!(
            AbuseKind::of_code("validation_failed"),
            Some(AbuseKind::Validation)
        );
        for other in [
            "key_missing",
            "token_missing",
            "forbidden",
            "route_not_found",
        ] {
            assert_eq!(AbuseKind::of_code(other), None, "{other}");
        }
    }

    #[test]
    fn escalation_doubles_up_to_the_cap() {
        let mut r = AbuseRule::default_for(AbuseKind::AuthFailure);
        r.ban = Duration::from_secs(60);
        r.max_ban = Duration::from_secs(300);
        let got: Vec<u64> = (1..=5).map(|n| r.ban_for(n).as_secs()).collect();
        assert_eq!(got, vec![60, 120, 240, 300, 300]);
        assert_eq!(r.ban_for(200), Duration::from_secs(300));
        r.escalation = Escalation::None;
        assert_eq!(r.ban_for(7), Duration::from_secs(60));
    }
}
