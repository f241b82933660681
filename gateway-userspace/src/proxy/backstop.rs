//! Connection phase, userspace backstop: the kernel's allow, ban, deny and geo rules checked
//! again in userspace at accept time, before the TLS handshake. It holds where XDP is not
//! attached (unprivileged run, unsupported interface) and for addresses XDP cannot see
//! (a client behind a trusted load balancer's PROXY header, or behind trusted proxies).
//! Its refusals are counted apart from kernel drops. It also holds the abuse-ban engine, whose
//! userspace bans it checks with the kernel's.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use gateway_common::action;

use crate::kernel::{Bans, PinLayout};
use crate::rules::table::CompiledRules;

/// What the backstop says about an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Pass,
    /// Report-only rule matched: pass, but count "would refuse".
    Report(String),
    Refuse(String),
}

/// The static rules (the same compiled tables the kernel gets) and the kernel ban map.
pub struct Backstop {
    rules: Arc<CompiledRules>,
    bans: Option<Mutex<Bans>>,
    abuse: Option<Arc<crate::abuse::Abuse>>,
}

impl Backstop {
    /// `pins` is where the kernel's ban map lives, when the kernel layer is on.
    pub fn new(rules: Arc<CompiledRules>, pins: Option<&PinLayout>) -> Self {
        let bans = pins.and_then(|p| Bans::open(p).ok()).map(Mutex::new);
        Self {
            rules,
            bans,
            abuse: None,
        }
    }

    /// With the abuse-ban engine: its userspace bans are refused here, and requests report
    /// their refusals to it.
    pub fn with_abuse(mut self, abuse: Arc<crate::abuse::Abuse>) -> Self {
        self.abuse = Some(abuse);
        self
    }

    pub fn abuse(&self) -> Option<&Arc<crate::abuse::Abuse>> {
        self.abuse.as_ref()
    }

    /// The rule of a live userspace (abuse) ban on `addr`: a hash lookup, cheap enough for
    /// every request. Allow-listed addresses are never refused.
    pub fn banned(&self, addr: IpAddr) -> Option<String> {
        let reason = self.abuse.as_ref()?.banned(addr)?;
        (self.rules.lookup(addr).action != action::ALLOW).then(|| format!("ban:{reason}"))
    }

    pub fn check(&self, addr: IpAddr) -> Check {
        let verdict = self.rules.lookup(addr);
        if verdict.action == action::ALLOW {
            return Check::Pass;
        }
        if let Some(bans) = &self.bans
            && let Ok(guard) = bans.lock()
            && let Ok(Some(reason)) = guard.lookup(addr)
        {
            return Check::Refuse(format!("ban:{reason}"));
        }
        if let Some(reason) = self.abuse.as_ref().and_then(|a| a.banned(addr)) {
            return Check::Refuse(format!("ban:{reason}"));
        }
        // Counter names are "drop/<rule>" and "report/<rule>".
        let rule = |name: &str| name.split_once('/').map_or(name, |(_, r)| r).to_string();
        if verdict.action == action::DROP {
            return Check::Refuse(rule(&verdict.counter));
        }
        match &verdict.report {
            Some(r) => Check::Report(rule(r)),
            None => Check::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::table::compile;
    use crate::rules::{DenySet, Mode, RuleSet};

    #[test]
    fn static_rules_without_a_kernel() {
        let rules = RuleSet {
            allow: vec!["192.0.2.7".parse().unwrap()],
            deny: vec![
                DenySet {
                    name: "bad".into(),
                    mode: Mode::Enforce,
                    prefixes: vec!["192.0.2.0/24".parse().unwrap()],
                },
                DenySet {
                    name: "watch".into(),
                    mode: Mode::Report,
                    prefixes: vec!["198.51.100.0/24".parse().unwrap()],
                },
            ],
            geo: None,
        };
        let b = Backstop::new(Arc::new(compile(&rules).unwrap()), None);
        assert_eq!(
            b.check("192.0.2.1".parse().unwrap()),
            Check::Refuse("deny:bad".into())
        );
        assert_eq!(b.check("192.0.2.7".parse().unwrap()), Check::Pass);
        assert_eq!(
            b.check("::ffff:192.0.2.1".parse().unwrap()),
            Check::Refuse("deny:bad".into())
        );
        assert_eq!(
            b.check("198.51.100.1".parse().unwrap()),
            Check::Report("deny:watch".into())
        );
        assert_eq!(b.check("203.0.113.1".parse().unwrap()), Check::Pass);
    }

    #[test]
    fn userspace_abuse_bans_are_refused_but_never_allow_listed_addresses() {
        use crate::abuse::{Abuse, BanDecision};
        use crate::kernel::BanReason;
        let rules = Arc::new(
            compile(&RuleSet {
                allow: vec!["192.0.2.7".parse().unwrap()],
                ..RuleSet::default()
            })
            .unwrap(),
        );
        let abuse = Abuse::new(crate::config::AbuseConfig::default(), None);
        abuse.configure(
            crate::config::AbuseConfig::default(),
            None,
            rules.clone(),
            Default::default(),
        );
        let b = Backstop::new(rules, None).with_abuse(abuse.clone());
        let banned: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(abuse.apply(&BanDecision {
            addr: banned,
            reason: BanReason::RateLimit,
            ttl: std::time::Duration::from_secs(60),
            kernel_bannable: false,
            evidence: String::new(),
        }));
        assert_eq!(b.check(banned), Check::Refuse("ban:rate-limit".into()));
        assert_eq!(b.banned(banned).as_deref(), Some("ban:rate-limit"));
        assert_eq!(b.banned("198.51.100.2".parse().unwrap()), None);
        // The engine refuses to ban an allow-listed address at all.
        let allowed: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!abuse.apply(&BanDecision {
            addr: allowed,
            reason: BanReason::RateLimit,
            ttl: std::time::Duration::from_secs(60),
            kernel_bannable: true,
            evidence: String::new(),
        }));
        assert_eq!(b.check(allowed), Check::Pass);
        assert_eq!(b.banned(allowed), None);
    }
}
