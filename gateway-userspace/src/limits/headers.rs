//! Budget headers. The IETF fields follow draft-ietf-httpapi-ratelimit-headers-09 (the
//! structured-field syntax introduced in -08): `RateLimit-Policy` lists every policy that
//! applied to the request as items `"name";q=<quota>;w=<window seconds>` (with
//! `qu="content-bytes"` for byte quotas), and `RateLimit` reports the one nearest exhaustion
//! as `"name";r=<remaining>;t=<seconds until reset>`. The legacy style reports that same
//! policy as `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderStyle;

/// What a policy is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Bytes,
}

/// One policy's budget for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The limit's name (names are `[a-z0-9_-]`, safe inside a structured-field string).
    pub name: String,
    pub unit: Unit,
    /// The quota (`q`): burst size for a rate, calls or bytes for a quota.
    pub quota: u64,
    /// The window (`w`) in seconds.
    pub window: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// Headers ready to add to a response. Carried by refusals, so it compares and clones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetHeaders {
    pairs: Vec<(HeaderName, HeaderValue)>,
}

impl BudgetHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.pairs {
            headers.insert(name.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.pairs
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }
}

/// Whole seconds, rounded up: a client told "0" would retry too early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The policy nearest exhaustion: the smallest share of its quota left; on a tie the one
/// with fewer units left, then the one that takes longer to reset.
pub fn nearest(policies: &[Policy]) -> Option<&Policy> {
    policies.iter().min_by(|a, b| {
        let left_a = u128::from(a.remaining) * u128::from(b.quota.max(1));
        let left_b = u128::from(b.remaining) * u128::from(a.quota.max(1));
        left_a
            .cmp(&left_b)
            .then(a.remaining.cmp(&b.remaining))
            .then(b.reset.cmp(&a.reset))
    })
}

/// The headers of `style` for `policies`.
pub fn render(style: HeaderStyle, policies: &[Policy]) -> BudgetHeaders {
    let mut pairs = Vec::new();
    let Some(near) = nearest(policies) else {
        return BudgetHeaders { pairs };
    };
    let mut push = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            pairs.push((HeaderName::from_static(name), v));
        }
    };
    match style {
        HeaderStyle::Ietf => {
            let list: Vec<String> = policies
                .iter()
                .map(|p| {
                    let unit = match p.unit {
                        Unit::Requests => "",
                        Unit::Bytes => ";qu=\"content-bytes\"",
                    };
                    format!("\"{}\";q={};w={}{unit}", p.name, p.quota, p.window.max(1))
                })
                .collect();
            push("ratelimit-policy", list.join(", "));
            push(
                "ratelimit",
                format!(
                    "\"{}\";r={};t={}",
                    near.name,
                    near.remaining,
                    ceil_secs(near.reset)
                ),
            );
        }
        HeaderStyle::Legacy => {
            push("x-ratelimit-limit", near.quota.to_string());
            push("x-ratelimit-remaining", near.remaining.to_string());
            push("x-ratelimit-reset", ceil_secs(near.reset).to_string());
        }
        HeaderStyle::None => {}
    }
    BudgetHeaders { pairs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, quota: u64, window: u64, remaining: u64, reset: u64) -> Policy {
        Policy {
            name: name.into(),
            unit: Unit::Requests,
            quota,
            window,
            remaining,
            reset: Duration::from_secs(reset),
        }
    }

    #[test]
    fn ietf_lists_every_policy_and_reports_the_nearest() {
        let ps = [p("burst", 20, 2, 15, 1), p("minute", 1000, 60, 40, 58)];
        let h = render(HeaderStyle::Ietf, &ps);
        assert_eq!(
            h.get("ratelimit-policy").unwrap(),
            "\"burst\";q=20;w=2, \"minute\";q=1000;w=60"
        );
        // 40/1000 left is nearer exhaustion than 15/20.
        assert_eq!(h.get("ratelimit").unwrap(), "\"minute\";r=40;t=58");
        assert!(h.get("x-ratelimit-limit").is_none());
    }

    #[test]
    fn legacy_trio_and_byte_units() {
        let mut bytes = p("daily", 1 << 20, 86_400, 0, 3600);
        bytes.unit = Unit::Bytes;
        let ps = [p("burst", 20, 2, 3, 2), bytes];
        let h = render(HeaderStyle::Legacy, &ps);
        assert_eq!(h.get("x-ratelimit-limit").unwrap(), "1048576");
        assert_eq!(h.get("x-ratelimit-remaining").unwrap(), "0");
        assert_eq!(h.get("x-ratelimit-reset").unwrap(), "3600");
        let h = render(HeaderStyle::Ietf, &ps);
        assert_eq!(
            h.get("ratelimit-policy").unwrap(),
            "\"burst\";q=20;w=2, \"daily\";q=1048576;w=86400;qu=\"content-bytes\""
        );
        assert!(render(HeaderStyle::None, &ps).is_empty());
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(100)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
