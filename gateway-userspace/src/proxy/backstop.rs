//! Connection phase, userspace backstop: the kernel's allow, ban, deny and geo rules checked
//! again in userspace at accept time, before the TLS handshake. It holds where XDP is not
//! attached (unprivileged run, unsupported interface) and for addresses XDP cannot see
//! (a client behind a trusted load balancer's PROXY header, or behind trusted proxies).
//! Its refusals are counted apart from kernel drops.

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
}

impl Backstop {
    /// `pins` is where the kernel's ban map lives, when the kernel layer is on.
    pub fn new(rules: Arc<CompiledRules>, pins: Option<&PinLayout>) -> Self {
        let bans = pins.and_then(|p| Bans::open(p).ok()).map(Mutex::new);
        Self { rules, bans }
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
}
