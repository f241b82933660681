//! The detector: counts refusals per client and kind in a sliding window and says when a
//! client crossed a rule's threshold, with the ban length its history earns. It owns no clock
//! (every call takes `now`, so tests drive time) and enforces nothing: [`super::Abuse`] turns
//! its answers into kernel or userspace bans.
//!
//! Memory is bounded: one fixed-size record per client, at most `max_tracked_clients` of them.
//! The window is the two-bucket estimate (the previous window's count weighted by how much of it
//! still overlaps the sliding window, plus the current one), so a client costs a few words
//! whatever its threshold, where an exact window would keep one timestamp per refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::{AbuseConfig, AbuseKind, AbuseRule};
use crate::rules::Mode;

/// How often, at most, a full table triggers a prune (each is a scan of the table).
const PRUNE_ON_FULL_EVERY: Duration = Duration::from_secs(1);

/// A client crossed a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub addr: IpAddr,
    pub kind: AbuseKind,
    /// Refusals counted in the window (the estimate, rounded), at least the threshold.
    pub count: u32,
    pub threshold: u32,
    pub window: Duration,
    /// Which ban of this client this is (1 for a first offender, more within offender_memory).
    pub offense: u32,
    /// How long the ban lasts, escalation applied.
    pub ban: Duration,
}

/// What one refusal led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not counted: abuse bans are off, or no rule counts this kind.
    Ignored,
    /// Counted; below the threshold.
    Counted,
    /// Counted, but the table of clients is full: this client is not tracked.
    Untracked,
    /// Ban this client.
    Ban(Trigger),
    /// The threshold was reached in report-only mode: log "would ban", ban nothing.
    WouldBan(Trigger),
    /// The threshold was reached by an allow-listed address or one of our own proxies: it is
    /// never banned, only logged.
    Protected(Trigger),
}

/// The two-bucket sliding window of one kind for one client.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Start of the current bucket.
    start: Instant,
    current: u32,
    previous: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            current: 0,
            previous: 0,
        }
    }

    /// Moves the buckets forward to the one containing `now`.
    fn roll(&mut self, now: Instant, window: Duration) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < window || window.is_zero() {
            return;
        }
        let periods = elapsed.as_nanos() / window.as_nanos();
        self.previous = if periods == 1 { self.current } else { 0 };
        self.current = 0;
        let advance = u32::try_from(periods).unwrap_or(u32::MAX);
        self.start += window.saturating_mul(advance);
    }

    /// Refusals in the window that ends at `now` (after [`Window::roll`]).
    fn estimate(&self, now: Instant, window: Duration) -> f64 {
        let into = now.saturating_duration_since(self.start).as_secs_f64();
        let overlap = (1.0 - into / window.as_secs_f64()).clamp(0.0, 1.0);
        f64::from(self.previous) * overlap + f64::from(self.current)
    }

    /// Whether nothing counted is left in it at `now`.
    fn idle(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.start) >= window.saturating_mul(2)
            || (self.current == 0 && self.previous == 0)
    }
}

/// What is kept per client.
#[derive(Clone, Debug)]
struct Client {
    windows: [Option<Window>; 3],
    /// Bans so far within `offender_memory` of each other.
    offenses: u32,
    last_ban: Option<Instant>,
}

fn slot(kind: AbuseKind) -> usize {
    match kind {
        AbuseKind::AuthFailure => 0,
        AbuseKind::RateLimit => 1,
        AbuseKind::Validation => 2,
    }
}

/// Counts refusals and decides bans.
pub struct Detector {
    config: AbuseConfig,
    clients: HashMap<IpAddr, Client>,
    last_prune_on_full: Option<Instant>,
}

impl Detector {
    pub fn new(config: AbuseConfig) -> Self {
        Self {
            config,
            clients: HashMap::new(),
            last_prune_on_full: None,
        }
    }

    pub fn config(&self) -> &AbuseConfig {
        &self.config
    }

    /// Applies a new configuration; counts and offender history are kept across reloads.
    pub fn set_config(&mut self, config: AbuseConfig, now: Instant) {
        self.config = config;
        if self.clients.len() > self.config.max_tracked_clients {
            self.prune(now);
        }
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }

    /// Counts one refusal of `kind` from `addr` at `now`. `protected` says whether the address
    /// may never be banned (asked only when a threshold is reached).
    pub fn observe(
        &mut self,
        addr: IpAddr,
        kind: AbuseKind,
        now: Instant,
        protected: impl FnOnce(IpAddr) -> bool,
    ) -> Outcome {
        if !self.config.enabled {
            return Outcome::Ignored;
        }
        let Some(rule) = self.config.rule(kind).cloned() else {
            return Outcome::Ignored;
        };
        if !self.clients.contains_key(&addr) && !self.make_room(now) {
            return Outcome::Untracked;
        }
        let memory = self.config.offender_memory;
        let report = self.config.mode == Mode::Report;
        let client = self.clients.entry(addr).or_insert_with(|| Client {
            windows: [None; 3],
            offenses: 0,
            last_ban: None,
        });
        let w = client.windows[slot(kind)].get_or_insert_with(|| Window::new(now));
        w.roll(now, rule.window);
        w.current = w.current.saturating_add(1);
        let estimate = w.estimate(now, rule.window);
        if estimate < f64::from(rule.threshold) {
            return Outcome::Counted;
        }
        // Threshold reached: start counting afresh whatever happens next, so a protected or
        // report-only client is logged once per threshold, not on every refusal after it.
        *w = Window::new(now);
        let trigger = |offense: u32, rule: &AbuseRule| Trigger {
            addr,
            kind,
            count: estimate.round() as u32,
            threshold: rule.threshold,
            window: rule.window,
            offense,
            ban: rule.ban_for(offense),
        };
        let remembered = client
            .last_ban
            .is_some_and(|t| now.saturating_duration_since(t) < memory);
        let offense = if remembered {
            client.offenses.saturating_add(1)
        } else {
            1
        };
        if protected(addr) {
            return Outcome::Protected(trigger(offense, &rule));
        }
        if report {
            return Outcome::WouldBan(trigger(offense, &rule));
        }
        client.offenses = offense;
        client.last_ban = Some(now);
        Outcome::Ban(trigger(offense, &rule))
    }

    /// Whether a new client fits: prunes idle ones when the table is full (at most once per
    /// [`PRUNE_ON_FULL_EVERY`], so a flood of new addresses cannot make every refusal a scan).
    fn make_room(&mut self, now: Instant) -> bool {
        if self.clients.len() < self.config.max_tracked_clients {
            return true;
        }
        let due = self
            .last_prune_on_full
            .is_none_or(|t| now.saturating_duration_since(t) >= PRUNE_ON_FULL_EVERY);
        if due {
            self.last_prune_on_full = Some(now);
            self.prune(now);
        }
        self.clients.len() < self.config.max_tracked_clients
    }

    /// Forgets clients with nothing left to remember: every window idle and no ban within
    /// `offender_memory`. When still above the cap (after a reload lowered it), forgets the
    /// clients banned longest ago. Returns how many were removed.
    pub fn prune(&mut self, now: Instant) -> usize {
        let before = self.clients.len();
        let config = &self.config;
        self.clients.retain(|_, c| {
            let windows_idle = AbuseKind::ALL.into_iter().all(|k| {
                let window = config.rule(k).map_or(Duration::ZERO, |r| r.window);
                c.windows[slot(k)].is_none_or(|w| w.idle(now, window))
            });
            let remembered = c
                .last_ban
                .is_some_and(|t| now.saturating_duration_since(t) < config.offender_memory);
            !windows_idle || remembered
        });
        let cap = self.config.max_tracked_clients;
        if self.clients.len() > cap {
            let mut by_age: Vec<(Option<Instant>, IpAddr)> =
                self.clients.iter().map(|(a, c)| (c.last_ban, *a)).collect();
            by_age.sort();
            for (_, addr) in by_age.into_iter().take(self.clients.len() - cap) {
                self.clients.remove(&addr);
            }
        }
        before - self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Escalation;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(kind: AbuseKind, threshold: u32, window: u64, ban: u64) -> AbuseRule {
        AbuseRule {
            kind,
            threshold,
            window: Duration::from_secs(window),
            ban: Duration::from_secs(ban),
            escalation: Escalation::Double,
            max_ban: Duration::from_secs(ban * 4),
        }
    }

    fn config(rules: Vec<AbuseRule>) -> AbuseConfig {
        AbuseConfig {
            enabled: true,
            mode: Mode::Enforce,
            max_tracked_clients: 1000,
            offender_memory: Duration::from_secs(3600),
            rules,
        }
    }

    /// A fake clock: `at(s)` is `s` seconds after a fixed start.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, secs: f64) -> Instant {
            self.0 + Duration::from_secs_f64(secs)
        }
    }

    fn open(_: IpAddr) -> bool {
        false
    }

    fn ban_of(o: &Outcome) -> Option<&Trigger> {
        match o {
            Outcome::Ban(t) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn the_threshold_within_the_window_bans() {
        let clock = Clock(Instant::now());
        let mut d = Detector::new(config(vec![rule(AbuseKind::AuthFailure, 3, 10, 60)]));
        let a = ip("192.0.2.1");
        assert_eq!(
            d.observe(a, AbuseKind::AuthFailure, clock.at(0.0), open),
            Outcome::Counted
        );
        assert_eq!(
            d.observe(a, AbuseKind::AuthFailure, clock.at(1.0), open),
            Outcome::Counted
        );
        let got = d.observe(a, AbuseKind::AuthFailure, clock.at(2.0), open);
        assert_eq!(
            got,
            Outcome::Ban(Trigger {
                addr: a,
                kind: AbuseKind::AuthFailure,
                count: 3,
                threshold: 3,
                window: Duration::from_secs(10),
                offense: 1,
                ban: Duration::from_secs(60),
            })
        );
        // Kinds and clients are counted apart; kinds without a rule are ignored.
        let b = ip("192.0.2.2");
        assert_eq!(
            d.observe(b, AbuseKind::AuthFailure, clock.at(2.0), open),
            Outcome::Counted
        );
        assert_eq!(
            d.observe(a, AbuseKind::RateLimit, clock.at(2.0), open),
            Outcome::Ignored
        );
    }

    #[test]
    fn the_window_slides() {
        let clock = Clock(Instant::now());
        let mut d = Detector::new(config(vec![rule(AbuseKind::AuthFailure, 3, 10, 60)]));
        let a = ip("2001:db8::1");
        // Two early, then quiet: by 25 s they have left the window.
        d.observe(a, AbuseKind::AuthFailure, clock.at(0.0), open);
        d.observe(a, AbuseKind::AuthFailure, clock.at(1.0), open);
        assert_eq!(
            d.observe(a, AbuseKind::AuthFailure, clock.at(25.0), open),
            Outcome::Counted
        );
        assert_eq!(
            d.observe(a, AbuseKind::AuthFailure, clock.at(26.0), open),
            Outcome::Counted
        );
        // Across a bucket boundary: 0, 8, 9 in the first bucket, then 10.5 and 11. The sliding
        // window ending at 11 holds 8, 9, 10.5 and 11: four, the threshold.
        let clock = Clock(Instant::now());
        let mut d = Detector::new(config(vec![rule(AbuseKind::AuthFailure, 4, 10, 60)]));
        for t in [0.0, 8.0, 9.0, 10.5] {
            let got = d.observe(a, AbuseKind::AuthFailure, clock.at(t), open);
            assert_eq!(got, Outcome::Counted, "at {t}");
        }
        assert!(ban_of(&d.observe(a, AbuseKind::AuthFailure, clock.at(11.0), open)).is_some());
        // One per 6 s never reaches 3 in 10 s.
        let mut d = Detector::new(config(vec![rule(AbuseKind::AuthFailure, 3, 10, 60)]));
        for i in 0..50 {
            let got = d.observe(
                a,
                AbuseKind::AuthFailure,
                clock.at(f64::from(i) * 6.0),
                open,
            );
            assert_eq!(got, Outcome::Counted, "refusal {i}");
        }
    }

    #[test]
    fn repeat_offenders_get_longer_bans_up_to_the_cap() {
        let clock = Clock(Instant::now());
        let mut d = Detector::new(config(vec![rule(AbuseKind::RateLimit, 2, 10, 60)]));
        let a = ip("198.51.100.9");
        let mut bans = Vec::new();
        let mut t = 0.0;
        for _ in 0..4 {
            d.observe(a, AbuseKind::RateLimit, clock.at(t), open);
            let got = d.observe(a, AbuseKind::RateLimit, clock.at(t + 0.1), open);
            let trigger = ban_of(&got).expect("banned").clone();
            bans.push((trigger.offense, trigger.ban.as_secs()));
            t += 100.0;
        }
        assert_eq!(bans, vec![(1, 60), (2, 120), (3, 240), (4, 240)]);
        // After offender_memory without a ban, the next one is a first offense again.
        t += 3600.0;
        d.observe(a, AbuseKind::RateLimit, clock.at(t), open);
        let got = d.observe(a, AbuseKind::RateLimit, clock.at(t + 0.1), open);
        assert_eq!(
            ban_of(&got).map(|b| (b.offense, b.ban.as_secs())),
            Some((1, 60))
        );
    }

    #[test]
    fn report_only_never_bans_and_does_not_escalate() {
        let clock = Clock(Instant::now());
        let mut c = config(vec![rule(AbuseKind::Validation, 2, 10, 60)]);
        c.mode = Mode::Report;
        let mut d = Detector::new(c);
        let a = ip("203.0.113.4");
        for round in 0..3 {
            let t = f64::from(round) * 20.0;
            d.observe(a, AbuseKind::Validation, clock.at(t), open);
            match d.observe(a, AbuseKind::Validation, clock.at(t + 1.0), open) {
                Outcome::WouldBan(trigger) => assert_eq!(trigger.offense, 1),
                other => panic!("expected a would-ban, got {other:?}"),
            }
        }
        // Disabled: nothing is counted.
        let mut c = config(vec![rule(AbuseKind::Validation, 1, 10, 60)]);
        c.enabled = false;
        let mut d = Detector::new(c);
        assert_eq!(
            d.observe(a, AbuseKind::Validation, clock.at(0.0), open),
            Outcome::Ignored
        );
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn protected_addresses_are_never_banned() {
        let clock = Clock(Instant::now());
        let mut d = Detector::new(config(vec![rule(AbuseKind::AuthFailure, 2, 10, 60)]));
        let lb = ip("10.0.0.1");
        let mut asked = 0;
        for i in 0..10 {
            let got = d.observe(lb, AbuseKind::AuthFailure, clock.at(f64::from(i)), |a| {
                asked += 1;
                a == lb
            });
            assert!(ban_of(&got).is_none(), "{got:?}");
            if i % 2 == 1 {
                assert!(matches!(got, Outcome::Protected(_)), "{got:?}");
            }
        }
        // Asked only when a threshold was reached, once per threshold.
        assert_eq!(asked, 5);
    }

    #[test]
    fn the_table_is_bounded_and_idle_clients_are_pruned() {
        let clock = Clock(Instant::now());
        let mut c = config(vec![rule(AbuseKind::AuthFailure, 5, 10, 60)]);
        c.max_tracked_clients = 3;
        let mut d = Detector::new(c);
        for i in 1..=3u8 {
            let a = IpAddr::from([192, 0, 2, i]);
            d.observe(a, AbuseKind::AuthFailure, clock.at(0.0), open);
        }
        assert_eq!(d.tracked(), 3);
        // Full, nobody idle yet: a fourth client is not tracked.
        let fourth = ip("192.0.2.4");
        assert_eq!(
            d.observe(fourth, AbuseKind::AuthFailure, clock.at(1.0), open),
            Outcome::Untracked
        );
        // Known clients are still counted.
        assert_eq!(
            d.observe(ip("192.0.2.1"), AbuseKind::AuthFailure, clock.at(1.0), open),
            Outcome::Counted
        );
        // Two windows later every one is idle: pruned to make room.
        assert_eq!(
            d.observe(fourth, AbuseKind::AuthFailure, clock.at(21.0), open),
            Outcome::Counted
        );
        assert_eq!(d.tracked(), 1);
        // A banned client is remembered (for escalation) until offender_memory passes.
        let e = ip("192.0.2.5");
        for i in 0..5 {
            d.observe(
                e,
                AbuseKind::AuthFailure,
                clock.at(30.0 + f64::from(i) * 0.1),
                open,
            );
        }
        assert_eq!(d.prune(clock.at(100.0)), 1, "the fourth is idle");
        assert_eq!(d.tracked(), 1, "the banned one is remembered");
        assert_eq!(d.prune(clock.at(30.0 + 3601.0)), 1);
        assert_eq!(d.tracked(), 0);
        // A reload that lowers the cap forgets the excess.
        for i in 1..=3u8 {
            d.observe(
                IpAddr::from([198, 51, 100, i]),
                AbuseKind::AuthFailure,
                clock.at(4000.0),
                open,
            );
        }
        let mut lower = d.config().clone();
        lower.max_tracked_clients = 1;
        d.set_config(lower, clock.at(4000.0));
        assert_eq!(d.tracked(), 1);
    }
}
