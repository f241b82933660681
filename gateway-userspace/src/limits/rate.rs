//! One rate limit: governor's GCRA over a bounded, prunable state store, generic over the
//! clock so tests drive time by hand. Each tier (the base rate and every per-key override)
//! has its own governor limiter and store; a key is counted in the tier its API key id names.
//!
//! The store is ours rather than governor's `DashMap` because the limiter needs what governor
//! does not expose: the theoretical arrival time of a key (to judge several limits before
//! consuming any, and to report the reset time), a cap on tracked keys, and pruning that a
//! shared store could implement too (see [`RateState`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::config::{RateLimitSpec, RateTier};

/// The key new entries share once a store tracks `max_keys` keys: tracked clients keep their
/// own budgets, and a flood of new keys (spoofed header values, say) cannot grow memory or
/// escape limiting; it only competes for one budget.
pub const OVERFLOW_KEY: &str = "\u{1}overflow";

/// Where a rate limit keeps its per-key state: the theoretical arrival time (TAT) of each key
/// in nanoseconds since the limiter's start. The local implementation is [`LocalRateState`];
/// a store shared between gateways implements the same operations.
pub trait RateState: Send + Sync {
    /// The TAT of `key` (after the cap: an untracked key at the cap reads the overflow's).
    fn tat(&self, key: &str) -> Option<u64>;
    /// Atomically reads and, when `update` returns a new TAT, replaces the TAT of `key`.
    fn update(&self, key: &str, update: &mut dyn FnMut(Option<u64>) -> Option<u64>);
    /// Drops keys whose TAT is at or before `now`: their bucket is full again, the same as
    /// a key never seen.
    fn prune(&self, now: u64);
    /// Keys tracked.
    fn count(&self) -> usize;
    /// Tracked keys with their TAT, for the admin endpoint.
    fn entries(&self) -> Vec<(String, u64)>;
}

/// In-process state: a map bounded to `max_keys` entries (plus the overflow entry).
pub struct LocalRateState {
    map: Mutex<HashMap<String, u64>>,
    max_keys: usize,
}

impl LocalRateState {
    pub fn new(max_keys: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        // A panic elsewhere while holding the lock cannot leave a half-written u64.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot<'k>(&self, map: &HashMap<String, u64>, key: &'k str) -> &'k str {
        if map.contains_key(key) || map.len() < self.max_keys {
            key
        } else {
            OVERFLOW_KEY
        }
    }
}

impl RateState for LocalRateState {
    fn tat(&self, key: &str) -> Option<u64> {
        let map = self.lock();
        map.get(self.slot(&map, key)).copied()
    }

    fn update(&self, key: &str, update: &mut dyn FnMut(Option<u64>) -> Option<u64>) {
        let mut map = self.lock();
        let slot = self.slot(&map, key);
        if let Some(new) = update(map.get(slot).copied()) {
            map.insert(slot.to_owned(), new);
        }
    }

    fn prune(&self, now: u64) {
        self.lock().retain(|_, tat| *tat > now);
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    fn entries(&self) -> Vec<(String, u64)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Governor's view of a [`RateState`].
struct Store(Arc<dyn RateState>);

impl StateStore for Store {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut out = None;
        self.0.update(key, &mut |old| match f(old.map(Nanos::new)) {
            Ok((t, new)) => {
                out = Some(Ok(t));
                Some(new.as_u64())
            }
            Err(e) => {
                out = Some(Err(e));
                None
            }
        });
        // `update` always calls the closure exactly once.
        match out {
            Some(r) => r,
            None => f(None).map(|(t, _)| t),
        }
    }
}

/// One tier's rate: governor's limiter and the GCRA parameters it was built with.
struct Tier<C: Clock> {
    limiter: RateLimiter<String, Store, C, StateInformationMiddleware>,
    state: Arc<dyn RateState>,
    /// Emission interval: nanoseconds per request.
    t: u64,
    /// Burst tolerance: `t * (burst - 1)`.
    tau: u64,
    burst: u32,
}

/// What one limit says about one request, before anything is consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Admitted; `remaining` requests could follow at once.
    Admit { remaining: u32 },
    /// Refused until `wait` has passed.
    Refuse { wait: Duration },
}

/// After consuming: the budget left and when the bucket is full again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub remaining: u32,
    pub reset: Duration,
}

/// A rate limit (`[[proxy.limits.rate]]`) with every tier's state.
pub struct RateLimit<C: Clock> {
    pub spec: RateLimitSpec,
    pub max_keys: usize,
    clock: C,
    start: C::Instant,
    /// `tiers[0]` is the base rate; `tiers[i + 1]` is `spec.tiers[i]`.
    tiers: Vec<Tier<C>>,
}

fn quota_for(requests: u32, per: Duration, burst: u32) -> (Quota, u64) {
    let per_ns = per.as_nanos().max(1);
    let t = (per_ns / u128::from(requests.max(1))).clamp(1, u128::from(u64::MAX)) as u64;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_nanos(t))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    (quota, t)
}

impl<C: Clock + Clone> RateLimit<C> {
    pub fn new(spec: RateLimitSpec, max_keys: usize, clock: C) -> Self {
        // Taken before governor's own start (see `now`).
        let start = clock.now();
        let mut rates = vec![(spec.requests, spec.burst)];
        rates.extend(spec.tiers.iter().map(|t| (t.requests, t.burst)));
        let tiers = rates
            .into_iter()
            .map(|(requests, burst)| {
                let (quota, t) = quota_for(requests, spec.per, burst);
                let state: Arc<dyn RateState> = Arc::new(LocalRateState::new(max_keys));
                Tier {
                    limiter: RateLimiter::<
                        String,
                        Store,
                        C,
                        governor::middleware::NoOpMiddleware<C::Instant>,
                    >::new(quota, Store(state.clone()), clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
                    state,
                    t,
                    tau: t.saturating_mul(u64::from(burst.max(1) - 1)),
                    burst: burst.max(1),
                }
            })
            .collect();
        Self {
            spec,
            max_keys,
            clock,
            start,
            tiers,
        }
    }

    /// The tier index for an API key id.
    pub fn tier_of(&self, key_id: Option<&str>) -> usize {
        key_id
            .and_then(|id| {
                self.spec
                    .tiers
                    .iter()
                    .position(|t: &RateTier| t.keys.iter().any(|k| k == id))
            })
            .map_or(0, |i| i + 1)
    }

    /// The burst size and window (the time a drained burst takes to refill) of a tier, as
    /// `RateLimit-Policy` reports them.
    pub fn policy(&self, tier: usize) -> (u32, Duration) {
        let tier = &self.tiers[tier.min(self.tiers.len() - 1)];
        (
            tier.burst,
            Duration::from_nanos(tier.t.saturating_mul(u64::from(tier.burst))),
        )
    }

    /// Nanoseconds since the limiter started, on the limiter's clock. Governor measures from
    /// its own start, a few microseconds after ours, so a time read here is never earlier
    /// than governor's: a reset is never overstated (and never rounds up to one second too
    /// many), and a peek can only be that much more generous than governor, whose `take`
    /// decides in the end.
    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// Whether `key` would be admitted now, without consuming anything.
    pub fn peek(&self, tier: usize, key: &str) -> Peek {
        let tier = &self.tiers[tier.min(self.tiers.len() - 1)];
        let now = self.now();
        match tier.state.tat(key) {
            Some(tat) if now.saturating_add(tier.tau) < tat => Peek::Refuse {
                wait: Duration::from_nanos(tat - tier.tau - now),
            },
            Some(tat) => Peek::Admit {
                remaining: remaining(tier, now, tat),
            },
            None => Peek::Admit {
                remaining: tier.burst,
            },
        }
    }

    /// Consumes one request for `key`; `Err(wait)` when the bucket is empty.
    pub fn take(&self, tier: usize, key: &str) -> Result<Taken, Duration> {
        let tier = &self.tiers[tier.min(self.tiers.len() - 1)];
        match tier.limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let now = self.now();
                let tat = tier.state.tat(key).unwrap_or(now);
                Ok(Taken {
                    remaining: snapshot.remaining_burst_capacity(),
                    reset: Duration::from_nanos(tat.saturating_sub(now)),
                })
            }
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets every key whose bucket is full again.
    pub fn prune(&self) {
        let now = self.now();
        for tier in &self.tiers {
            tier.state.prune(now);
        }
    }

    /// Keys tracked over every tier.
    pub fn tracked(&self) -> usize {
        self.tiers.iter().map(|t| t.state.count()).sum()
    }

    /// `(key, tier, remaining, reset)` of every tracked key, for the admin endpoint.
    pub fn entries(&self) -> Vec<(String, usize, u32, Duration)> {
        let now = self.now();
        let mut out = Vec::new();
        for (i, tier) in self.tiers.iter().enumerate() {
            for (key, tat) in tier.state.entries() {
                if tat > now {
                    out.push((
                        key,
                        i,
                        remaining(tier, now, tat),
                        Duration::from_nanos(tat - now),
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

/// Requests that could pass at once at `now` with TAT `tat` (governor's formula).
fn remaining<C: Clock>(tier: &Tier<C>, now: u64, tat: u64) -> u32 {
    let capacity = tier.tau.saturating_add(tier.t);
    let left = now
        .saturating_add(capacity)
        .saturating_sub(tat)
        .min(capacity);
    u32::try_from(left / tier.t.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeySpec, LimitScope};
    use governor::clock::FakeRelativeClock;

    fn spec(requests: u32, per: Duration, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            name: "r".into(),
            requests,
            per,
            burst,
            key: KeySpec {
                parts: vec![],
                ipv4_prefix: 32,
                ipv6_prefix: 128,
            },
            scope: LimitScope::default(),
            tiers: vec![],
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_a_refill_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let r = RateLimit::new(spec(10, SEC, 20), 100, clock.clone());
        for i in 0..20 {
            assert_eq!(r.peek(0, "k"), Peek::Admit { remaining: 20 - i });
            let taken = r.take(0, "k").expect("within the burst");
            assert_eq!(taken.remaining, 19 - i);
        }
        // The 21st waits one emission interval (100 ms) and consumed nothing.
        assert_eq!(
            r.peek(0, "k"),
            Peek::Refuse {
                wait: Duration::from_millis(100)
            }
        );
        assert_eq!(r.take(0, "k"), Err(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(100));
        assert!(r.take(0, "k").is_ok());
        assert!(r.take(0, "k").is_err());
        // A full refill takes burst / rate = 2 s.
        clock.advance(2 * SEC);
        assert_eq!(r.peek(0, "k"), Peek::Admit { remaining: 20 });
    }

    #[test]
    fn the_reset_is_the_time_until_the_bucket_is_full() {
        let clock = FakeRelativeClock::default();
        let r = RateLimit::new(spec(10, SEC, 20), 100, clock.clone());
        let first = r.take(0, "k").expect("first");
        assert_eq!(first.reset, Duration::from_millis(100));
        for _ in 0..19 {
            r.take(0, "k").expect("burst");
        }
        assert_eq!(r.take(0, "x").expect("other key").remaining, 19);
        assert_eq!(r.policy(0), (20, 2 * SEC));
    }

    #[test]
    fn keys_have_separate_budgets() {
        let clock = FakeRelativeClock::default();
        let r = RateLimit::new(spec(1, SEC, 1), 100, clock);
        assert!(r.take(0, "a").is_ok());
        assert!(r.take(0, "a").is_err());
        assert!(r.take(0, "b").is_ok());
    }

    #[test]
    fn tiers_give_named_keys_their_own_rate() {
        let clock = FakeRelativeClock::default();
        let mut s = spec(1, SEC, 1);
        s.tiers.push(RateTier {
            keys: vec!["gold".into()],
            requests: 5,
            burst: 5,
        });
        let r = RateLimit::new(s, 100, clock);
        assert_eq!(r.tier_of(Some("gold")), 1);
        assert_eq!(r.tier_of(Some("free")), 0);
        assert_eq!(r.tier_of(None), 0);
        for _ in 0..5 {
            assert!(r.take(1, "gold").is_ok());
        }
        assert!(r.take(1, "gold").is_err());
        assert!(r.take(0, "free").is_ok());
        assert!(r.take(0, "free").is_err());
        assert_eq!(r.policy(1).0, 5);
    }

    #[test]
    fn the_key_cap_sends_new_keys_to_one_overflow_budget() {
        let clock = FakeRelativeClock::default();
        let r = RateLimit::new(spec(1, SEC, 1), 2, clock.clone());
        assert!(r.take(0, "a").is_ok());
        assert!(r.take(0, "b").is_ok());
        // At the cap: c and d share the overflow budget; a and b keep theirs.
        assert!(r.take(0, "c").is_ok());
        assert!(r.take(0, "d").is_err());
        assert_eq!(r.tracked(), 3);
        // Pruning forgets keys whose bucket has refilled, making room again.
        clock.advance(2 * SEC);
        r.prune();
        assert_eq!(r.tracked(), 0);
        assert!(r.take(0, "d").is_ok());
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn pruning_keeps_keys_still_draining() {
        let clock = FakeRelativeClock::default();
        let r = RateLimit::new(spec(1, Duration::from_secs(10), 2), 100, clock.clone());
        r.take(0, "a").expect("a");
        r.take(0, "a").expect("a");
        clock.advance(SEC);
        r.prune();
        assert_eq!(r.tracked(), 1);
        assert_eq!(r.entries().len(), 1);
    }
}
