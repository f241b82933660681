//! Rate limits and quotas in the request path (docs/rate-limits.md).
//!
//! [`Hub`] owns the counters of the process: it outlives configuration generations, so a
//! reload keeps the state of every limit whose definition did not change, and quota usage is
//! kept (and written to the state file) whatever a reload does. Each generation gets an
//! [`Active`] set from [`Hub::adopt`], and a request passes [`Active::check`] after identity
//! (keys and claims are known) and before the upstream.
//!
//! The check judges every limit before consuming from any, so a request refused by one
//! limit costs nothing in the others. Everything here is local; a shared store (Redis) is to
//! be consulted only after every local limit admitted the request, so a local refusal never
//! costs a round trip: `check` is the local half, and its state sits behind
//! [`rate::RateState`] and [`quota::QuotaStore`].
//!
//! In cluster mode ([`Hub::set_cluster`]) every limit is also shared: [`Active::confirm`]
//! takes what the local check admitted to the cluster store, one `check_rates` and one
//! `add_quotas` call, and the shared budget decides (see docs/cluster.md).

pub mod headers;
pub mod keys;
pub mod quota;
pub mod rate;
mod shared;
pub mod state_file;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::MonotonicClock;
use http::{HeaderMap, StatusCode};
use tracing::{error, warn};

use crate::config::{KeyPart, LimitsConfig, RouteConfig, RouteLimits};
use crate::proxy::respond::Denial;
use headers::{BudgetHeaders, Policy, Unit, ceil_secs};
use keys::Facts;
use quota::{LocalQuotaStore, QuotaStore};
use rate::{Peek, RateLimit};

/// A rate limit on the process's monotonic clock.
pub type Rate = RateLimit<MonotonicClock>;

/// The limits of one configuration generation, with the counters they share with others.
pub struct Active {
    pub config: Arc<LimitsConfig>,
    /// Index for index with `config.rates`.
    pub rates: Vec<Arc<Rate>>,
    pub quotas: Arc<LocalQuotaStore>,
    /// The cluster store when cluster mode is on; read per request, so a store started or
    /// replaced after this generation was adopted is used at once.
    cluster: SharedCluster,
}

/// The process's cluster store, if any, as the [`Hub`] and every generation see it.
type SharedCluster = Arc<RwLock<Option<crate::cluster::Cluster>>>;

/// A request the limits admitted: the budget headers for its response, and the quota
/// counters its response bytes are still to be added to.
pub struct Admitted {
    headers: BudgetHeaders,
    charge: Vec<(String, String, u64)>,
    store: Arc<LocalQuotaStore>,
    /// What to ask the cluster store, when cluster mode is on.
    shared: Option<shared::Pending>,
}

impl Admitted {
    /// Adds the budget headers (only when `headers_on_success` asked for them).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        self.headers.apply(headers);
    }

    /// Counts the response's bytes against the byte quotas that admitted the request.
    pub fn charge_bytes(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        for (quota, key, window) in &self.charge {
            self.store.add(quota, key, *window, 0, bytes);
        }
        if let Some(pending) = &self.shared {
            pending.charge_bytes(bytes);
        }
    }
}

/// A refusal and the rule the access log names (`rate:<limit>` or `quota:<limit>`).
pub struct Refused {
    pub denial: Denial,
    pub rule: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rate_policy(rate: &Rate, tier: usize, remaining: u64, reset: Duration) -> Policy {
    let (burst, window) = rate.policy(tier);
    Policy {
        name: rate.spec.name.clone(),
        unit: Unit::Requests,
        quota: u64::from(burst),
        window: ceil_secs(window),
        remaining,
        reset,
    }
}

/// The policies of a quota (calls, bytes, or both) given its usage.
fn quota_policies(
    name: &str,
    (calls, bytes): (Option<u64>, Option<u64>),
    usage: quota::Usage,
    (start, end): (u64, u64),
    now: u64,
) -> Vec<Policy> {
    let reset = Duration::from_secs(end.saturating_sub(now));
    let mut out = Vec::new();
    if let Some(limit) = calls {
        out.push(Policy {
            name: name.to_owned(),
            unit: Unit::Requests,
            quota: limit,
            window: end - start,
            remaining: limit.saturating_sub(usage.calls),
            reset,
        });
    }
    if let Some(limit) = bytes {
        out.push(Policy {
            name: if calls.is_some() {
                format!("{name}:bytes")
            } else {
                name.to_owned()
            },
            unit: Unit::Bytes,
            quota: limit,
            window: end - start,
            remaining: limit.saturating_sub(usage.bytes),
            reset,
        });
    }
    out
}

impl Active {
    /// Judges a request against the limits of its route. `request_bytes` is the declared
    /// body size, counted against byte quotas now; the response's bytes follow through
    /// [`Admitted::charge_bytes`].
    pub fn check(
        &self,
        route: &RouteLimits,
        facts: &Facts<'_>,
        request_bytes: u64,
    ) -> Result<Admitted, Refused> {
        self.check_at(route, facts, request_bytes, unix_now())
    }

    fn check_at(
        &self,
        route: &RouteLimits,
        facts: &Facts<'_>,
        request_bytes: u64,
        now: u64,
    ) -> Result<Admitted, Refused> {
        let cfg = &self.config;
        let style = cfg.headers;
        // First judge everything without consuming.
        let mut rates = Vec::new();
        let mut refused_rate: Option<(usize, usize, Duration)> = None;
        for &i in &route.rates {
            let Some(rate) = self.rates.get(i) else {
                continue;
            };
            let key = keys::key(&rate.spec.key, facts);
            let tier = rate.tier_of(facts.key_id);
            if let Peek::Refuse { wait } = rate.peek(tier, &key)
                && refused_rate.is_none_or(|(_, _, w)| wait > w)
            {
                refused_rate = Some((i, tier, wait));
            }
            rates.push((i, key, tier));
        }
        let mut quotas = Vec::new();
        for &i in &route.quotas {
            let Some(spec) = cfg.quotas.get(i) else {
                continue;
            };
            let key = keys::key(&spec.key, facts);
            let window = quota::window(spec.period, now);
            let limits = quota::limits_for(spec, facts.key_id);
            let usage = self.quotas.usage(&spec.name, &key, window.0);
            let exhausted = limits.0.is_some_and(|l| usage.calls >= l)
                || limits.1.is_some_and(|l| usage.bytes >= l);
            if exhausted {
                // An exhausted quota outranks a rate limit: its wait is the longer one.
                let policies = quota_policies(&spec.name, limits, usage, window, now);
                return Err(Refused {
                    denial: Denial::QuotaExhausted {
                        retry_after: window.1.saturating_sub(now).max(1),
                        status: StatusCode::from_u16(cfg.quota_status)
                            .unwrap_or(StatusCode::FORBIDDEN),
                        headers: headers::render(style, &policies),
                    },
                    rule: format!("quota:{}", spec.name),
                });
            }
            quotas.push((i, key, window, limits));
        }
        if let Some((i, tier, wait)) = refused_rate {
            return Err(self.rate_refusal(i, tier, wait));
        }

        // Everything admits: consume.
        let cluster = self.cluster.read().ok().and_then(|c| c.clone());
        let mut plan = cluster.map(shared::Pending::new);
        let mut policies = Vec::new();
        for (i, key, tier) in rates {
            let rate = &self.rates[i];
            match rate.take(tier, &key) {
                Ok(taken) => {
                    let policy = rate_policy(rate, tier, u64::from(taken.remaining), taken.reset);
                    if let Some(plan) = &mut plan {
                        plan.add_rate(i, tier, rate, &key, policy.clone());
                    }
                    policies.push(policy);
                }
                // Another request took the last unit since the peek.
                Err(wait) => return Err(self.rate_refusal(i, tier, wait)),
            }
        }
        let mut charge = Vec::new();
        for (i, key, window, limits) in quotas {
            let spec = &cfg.quotas[i];
            let usage = self
                .quotas
                .add(&spec.name, &key, window.0, 1, request_bytes);
            let local = quota_policies(&spec.name, limits, usage, window, now);
            if let Some(plan) = &mut plan {
                plan.add_quota(i, spec, limits, &key, request_bytes, local.clone());
            }
            policies.extend(local);
            if limits.1.is_some() {
                charge.push((spec.name.clone(), key, window.0));
            }
        }
        Ok(Admitted {
            shared: plan,
            headers: if cfg.headers_on_success {
                headers::render(style, &policies)
            } else {
                BudgetHeaders::default()
            },
            charge,
            store: self.quotas.clone(),
        })
    }

    fn rate_refusal(&self, i: usize, tier: usize, wait: Duration) -> Refused {
        let rate = &self.rates[i];
        let policy = rate_policy(rate, tier, 0, wait);
        Refused {
            denial: Denial::RateLimited {
                retry_after: ceil_secs(wait).max(1),
                headers: headers::render(self.config.headers, &[policy]),
            },
            rule: format!("rate:{}", rate.spec.name),
        }
    }

    /// Every limit and quota that applies to `value` (an API key id, or any other key part:
    /// a client prefix, a claim value), with what is left and when it resets. Limits keyed by
    /// API key list the key's full budget even before its first request.
    pub fn show(&self, value: &str) -> serde_json::Value {
        let matches = |key: &str| key.split(keys::SEPARATOR).any(|p| p == value);
        let mut out = Vec::new();
        for rate in &self.rates {
            let by: Vec<String> = rate
                .spec
                .key
                .parts
                .iter()
                .map(ToString::to_string)
                .collect();
            let mut found = false;
            for (key, tier, remaining, reset) in rate.entries() {
                if !matches(&key) {
                    continue;
                }
                found = true;
                let (burst, window) = rate.policy(tier);
                out.push(serde_json::json!({
                    "kind": "rate", "limit": rate.spec.name, "by": by, "key": key,
                    "quota": burst, "window_seconds": ceil_secs(window),
                    "remaining": remaining, "reset_seconds": ceil_secs(reset),
                }));
            }
            if !found && rate.spec.key.parts.contains(&KeyPart::ApiKey) {
                let tier = rate.tier_of(Some(value));
                let (burst, window) = rate.policy(tier);
                out.push(serde_json::json!({
                    "kind": "rate", "limit": rate.spec.name, "by": by, "key": null,
                    "quota": burst, "window_seconds": ceil_secs(window),
                    "remaining": burst, "reset_seconds": 0,
                }));
            }
        }
        let now = unix_now();
        let entries = self.quotas.entries();
        for spec in &self.config.quotas {
            let by: Vec<String> = spec.key.parts.iter().map(ToString::to_string).collect();
            let window = quota::window(spec.period, now);
            let mut found = false;
            for e in entries.iter().filter(|e| e.quota == spec.name) {
                if !matches(&e.key) {
                    continue;
                }
                found = true;
                let usage = if e.window == window.0 {
                    e.usage
                } else {
                    quota::Usage::default()
                };
                let key_id = spec
                    .key
                    .parts
                    .iter()
                    .position(|p| *p == KeyPart::ApiKey)
                    .and_then(|i| e.key.split(keys::SEPARATOR).nth(i));
                let limits = quota::limits_for(spec, key_id);
                out.push(quota_json(
                    spec,
                    &by,
                    Some(&e.key),
                    limits,
                    usage,
                    window,
                    now,
                ));
            }
            if !found && spec.key.parts.contains(&KeyPart::ApiKey) {
                let limits = quota::limits_for(spec, Some(value));
                out.push(quota_json(
                    spec,
                    &by,
                    None,
                    limits,
                    quota::Usage::default(),
                    window,
                    now,
                ));
            }
        }
        serde_json::Value::Array(out)
    }
}

fn quota_json(
    spec: &crate::config::QuotaSpec,
    by: &[String],
    key: Option<&str>,
    (calls, bytes): (Option<u64>, Option<u64>),
    usage: quota::Usage,
    (start, end): (u64, u64),
    now: u64,
) -> serde_json::Value {
    serde_json::json!({
        "kind": "quota", "limit": spec.name, "by": by, "key": key,
        "period": spec.period.as_str(), "period_start": start,
        "calls": calls, "calls_used": usage.calls,
        "calls_remaining": calls.map(|c| c.saturating_sub(usage.calls)),
        "bytes": bytes, "bytes_used": usage.bytes,
        "bytes_remaining": bytes.map(|b| b.saturating_sub(usage.bytes)),
        "reset_seconds": end.saturating_sub(now),
    })
}

/// The process's limit state, shared by every configuration generation, the admin endpoint
/// and the metrics. Dropping it writes the quota state file one last time.
#[derive(Default)]
pub struct Hub {
    inner: Arc<Mutex<HubInner>>,
}

#[derive(Default)]
struct HubInner {
    rates: Vec<Arc<Rate>>,
    quotas: Option<Arc<LocalQuotaStore>>,
    state_file: Option<PathBuf>,
    current: Option<Arc<Active>>,
    tasks: Vec<tokio::task::AbortHandle>,
    cluster: SharedCluster,
}

fn lock(inner: &Mutex<HubInner>) -> MutexGuard<'_, HubInner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// The active set for the limits of `routes` (every route with limits shares one
    /// config); `None` when no route has any.
    pub fn adopt_routes(&self, routes: &[RouteConfig]) -> Option<Arc<Active>> {
        routes
            .iter()
            .find_map(|r| r.auth.limits.as_ref())
            .map(|l| self.adopt(&l.config))
    }

    /// The active set for `config`, reusing the counters of every rate limit whose definition
    /// is unchanged and the quota counters as they are. The first call with a state file
    /// reads it. Starts pruning (and flushing) on the current Tokio runtime, if any.
    pub fn adopt(&self, config: &Arc<LimitsConfig>) -> Arc<Active> {
        let mut inner = lock(&self.inner);
        if let Some(current) = &inner.current
            && (Arc::ptr_eq(&current.config, config) || current.config == *config)
        {
            return current.clone();
        }
        let max_keys = config.max_tracked_keys;
        let rates: Vec<Arc<Rate>> = config
            .rates
            .iter()
            .map(|spec| {
                inner
                    .rates
                    .iter()
                    .find(|r| r.spec == *spec && r.max_keys == max_keys)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(RateLimit::new(spec.clone(), max_keys, MonotonicClock))
                    })
            })
            .collect();
        inner.rates = rates.clone();
        let quotas = match &inner.quotas {
            Some(q) => q.clone(),
            None => {
                let entries = match &config.state_file {
                    Some(path) => {
                        let (entries, problem) = state_file::read_or_set_aside(path);
                        if let Some(e) = problem {
                            error!(
                                error = %e,
                                "quota counters start from zero; a corrupt file was moved to \
                                 <file>.corrupt"
                            );
                        }
                        entries
                    }
                    None => Vec::new(),
                };
                Arc::new(LocalQuotaStore::with_entries(max_keys, entries))
            }
        };
        quotas.set_max_keys(max_keys);
        inner.quotas = Some(quotas.clone());
        inner.state_file = config.state_file.clone();
        let active = Arc::new(Active {
            config: config.clone(),
            rates,
            quotas,
            cluster: inner.cluster.clone(),
        });
        inner.current = Some(active.clone());
        for task in inner.tasks.drain(..) {
            task.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&self.inner);
            inner.tasks.push(
                rt.spawn(prune_loop(weak.clone(), config.prune_interval))
                    .abort_handle(),
            );
            if config.state_file.is_some() {
                inner.tasks.push(
                    rt.spawn(flush_loop(weak, config.flush_interval))
                        .abort_handle(),
                );
            }
        }
        active
    }

    /// Turns cluster mode on (`Some`) or off for every generation, current and future.
    pub fn set_cluster(&self, cluster: Option<crate::cluster::Cluster>) {
        let shared = lock(&self.inner).cluster.clone();
        if let Ok(mut c) = shared.write() {
            *c = cluster;
        }
    }

    /// The active set of the latest generation.
    pub fn current(&self) -> Option<Arc<Active>> {
        lock(&self.inner).current.clone()
    }

    /// Writes the quota state file now (when one is configured).
    pub fn flush(&self) -> Result<(), state_file::StateFileError> {
        flush(&self.inner)
    }

    /// Tracked keys per limit, for the gauge.
    pub fn tracked(&self) -> Vec<(String, &'static str, usize)> {
        let inner = lock(&self.inner);
        let mut out: Vec<_> = inner
            .rates
            .iter()
            .map(|r| (r.spec.name.clone(), "rate", r.tracked()))
            .collect();
        if let Some(q) = &inner.quotas {
            out.extend(q.tracked().into_iter().map(|(n, c)| (n, "quota", c)));
        }
        out
    }

    /// What [`Active::show`] says for `value` under the latest generation (an empty list
    /// before any limits are configured).
    pub fn show(&self, value: &str) -> serde_json::Value {
        self.current()
            .map_or_else(|| serde_json::json!([]), |a| a.show(value))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for task in lock(&self.inner).tasks.drain(..) {
            task.abort();
        }
        if let Err(e) = flush(&self.inner) {
            warn!(error = %e, "quota counters not saved");
        }
    }
}

fn flush(inner: &Mutex<HubInner>) -> Result<(), state_file::StateFileError> {
    let (path, store) = {
        let inner = lock(inner);
        match (&inner.state_file, &inner.quotas) {
            (Some(p), Some(q)) => (p.clone(), q.clone()),
            _ => return Ok(()),
        }
    };
    store.take_dirty();
    state_file::write(&path, store.entries())
}

async fn prune_loop(inner: Weak<Mutex<HubInner>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(active) = lock(&inner).current.clone() else {
            continue;
        };
        for rate in &active.rates {
            rate.prune();
        }
        let now = unix_now();
        active.quotas.prune(&|name| {
            active
                .config
                .quotas
                .iter()
                .find(|q| q.name == name)
                .map(|q| quota::window(q.period, now).0)
        });
    }
}

async fn flush_loop(inner: Weak<Mutex<HubInner>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let store = lock(&inner).quotas.clone();
        if store.is_some_and(|s| s.take_dirty()) {
            let inner2 = inner.clone();
            let written = tokio::task::spawn_blocking(move || flush(&inner2)).await;
            if let Ok(Err(e)) = written {
                warn!(error = %e, "quota counters not saved; retrying at the next interval");
                if let Some(s) = &lock(&inner).quotas {
                    s.mark_dirty();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        HeaderStyle, KeySpec, LimitScope, Period, QuotaSpec, RateLimitSpec, RateTier,
    };

    const HOUR: Duration = Duration::from_secs(3600);

    fn by_key() -> KeySpec {
        KeySpec {
            parts: vec![KeyPart::ApiKey],
            ipv4_prefix: 32,
            ipv6_prefix: 128,
        }
    }

    /// Rates per hour, so the real clock cannot refill anything during a test.
    fn rate(name: &str, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            name: name.into(),
            requests: burst,
            per: HOUR,
            burst,
            key: by_key(),
            scope: LimitScope::default(),
            tiers: vec![],
        }
    }

    fn config(rates: Vec<RateLimitSpec>, quotas: Vec<QuotaSpec>) -> Arc<LimitsConfig> {
        Arc::new(LimitsConfig {
            headers: HeaderStyle::Ietf,
            headers_on_success: true,
            max_tracked_keys: 100,
            prune_interval: Duration::from_secs(60),
            quota_status: 403,
            state_file: None,
            flush_interval: Duration::from_secs(30),
            rates,
            quotas,
        })
    }

    fn route(config: &Arc<LimitsConfig>) -> RouteLimits {
        RouteLimits {
            config: config.clone(),
            rates: (0..config.rates.len()).collect(),
            quotas: (0..config.quotas.len()).collect(),
        }
    }

    fn facts<'a>(headers: &'a HeaderMap, key_id: &'a str) -> Facts<'a> {
        Facts {
            route: "orders",
            product: None,
            key_id: Some(key_id),
            claims: None,
            client: "192.0.2.1".parse().unwrap(),
            headers,
        }
    }

    fn header(a: &Admitted, name: &str) -> String {
        let mut h = HeaderMap::new();
        a.apply_headers(&mut h);
        h.get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn the_tightest_limit_decides_and_a_refusal_consumes_nothing() {
        let hub = Hub::default();
        let cfg = config(vec![rate("tight", 3), rate("loose", 5)], vec![]);
        let active = hub.adopt(&cfg);
        let r = route(&cfg);
        let h = HeaderMap::new();
        for left in [2, 1, 0] {
            let a = active
                .check(&r, &facts(&h, "acme"), 0)
                .ok()
                .expect("admitted");
            // The headers name the policy nearest exhaustion.
            assert_eq!(
                header(&a, "ratelimit"),
                format!("\"tight\";r={left};t={}", 1200 * (3 - left))
            );
            assert_eq!(
                header(&a, "ratelimit-policy"),
                "\"tight\";q=3;w=3600, \"loose\";q=5;w=3600"
            );
        }
        for _ in 0..3 {
            let refused = active
                .check(&r, &facts(&h, "acme"), 0)
                .err()
                .expect("refused");
            assert_eq!(refused.rule, "rate:tight");
            let Denial::RateLimited {
                retry_after,
                headers,
            } = refused.denial
            else {
                panic!("not a rate limit");
            };
            assert_eq!(retry_after, 1200);
            assert_eq!(headers.get("ratelimit").unwrap(), "\"tight\";r=0;t=1200");
        }
        // The refused requests took nothing from `loose`: 2 of 5 left, not 0.
        let loose = &active.rates[1];
        assert_eq!(loose.peek(0, "acme"), Peek::Admit { remaining: 2 });
        // Another key has its own budgets.
        assert!(active.check(&r, &facts(&h, "other"), 0).is_ok());
    }

    #[test]
    fn tiers_apply_by_key_id() {
        let hub = Hub::default();
        let mut spec = rate("tiered", 1);
        spec.tiers.push(RateTier {
            keys: vec!["gold".into()],
            requests: 3,
            burst: 3,
        });
        let cfg = config(vec![spec], vec![]);
        let active = hub.adopt(&cfg);
        let r = route(&cfg);
        let h = HeaderMap::new();
        assert!(active.check(&r, &facts(&h, "free"), 0).is_ok());
        assert!(active.check(&r, &facts(&h, "free"), 0).is_err());
        for _ in 0..3 {
            assert!(active.check(&r, &facts(&h, "gold"), 0).is_ok());
        }
        assert!(active.check(&r, &facts(&h, "gold"), 0).is_err());
    }

    #[test]
    fn quotas_count_calls_and_bytes_and_refuse_with_403() {
        let hub = Hub::default();
        let quota = QuotaSpec {
            name: "daily".into(),
            period: Period::Day,
            calls: Some(3),
            bytes: Some(1000),
            key: by_key(),
            scope: LimitScope::default(),
            tiers: vec![],
        };
        let cfg = config(vec![], vec![quota]);
        let active = hub.adopt(&cfg);
        let r = route(&cfg);
        let h = HeaderMap::new();
        let now = 1_795_336_215; // 2026-11-22T08:30:15Z
        let a = active
            .check_at(&r, &facts(&h, "acme"), 100, now)
            .ok()
            .expect("first");
        a.charge_bytes(400);
        assert_eq!(
            header(&a, "ratelimit-policy"),
            "\"daily\";q=3;w=86400, \"daily:bytes\";q=1000;w=86400;qu=\"content-bytes\""
        );
        // Bytes: 500 of 1000 used after the charge; the next request sees 900 left before it
        // sends its response.
        let b = active
            .check_at(&r, &facts(&h, "acme"), 0, now)
            .ok()
            .expect("second");
        b.charge_bytes(600);
        // 1100 bytes used: exhausted, though only 2 of 3 calls.
        let refused = active
            .check_at(&r, &facts(&h, "acme"), 0, now)
            .err()
            .expect("bytes exhausted");
        assert_eq!(refused.rule, "quota:daily");
        let Denial::QuotaExhausted {
            retry_after,
            status,
            ..
        } = &refused.denial
        else {
            panic!("not a quota");
        };
        assert_eq!(*status, StatusCode::FORBIDDEN);
        // Until 2026-11-23T00:00:00Z.
        assert_eq!(*retry_after, 1_795_392_000 - now);
        // The next day starts from zero.
        assert!(
            active
                .check_at(&r, &facts(&h, "acme"), 0, 1_795_392_000)
                .is_ok()
        );
        let shown = active.show("acme");
        assert_eq!(shown[0]["limit"], "daily");
    }

    #[test]
    fn a_reload_keeps_the_counters_of_unchanged_limits() {
        let hub = Hub::default();
        let first = config(vec![rate("kept", 2), rate("changed", 2)], vec![]);
        let active = hub.adopt(&first);
        let h = HeaderMap::new();
        for _ in 0..2 {
            assert!(active.check(&route(&first), &facts(&h, "acme"), 0).is_ok());
        }
        let second = config(vec![rate("kept", 2), rate("changed", 3)], vec![]);
        let reloaded = hub.adopt(&second);
        assert!(Arc::ptr_eq(&active.rates[0], &reloaded.rates[0]));
        assert!(!Arc::ptr_eq(&active.rates[1], &reloaded.rates[1]));
        assert!(matches!(
            reloaded.rates[0].peek(0, "acme"),
            Peek::Refuse { .. }
        ));
        assert_eq!(
            reloaded.rates[1].peek(0, "acme"),
            Peek::Admit { remaining: 3 }
        );
        // The same config again is the same set.
        assert!(Arc::ptr_eq(&reloaded, &hub.adopt(&second)));
    }

    #[test]
    fn admin_view_lists_budgets_without_traffic() {
        let hub = Hub::default();
        assert_eq!(hub.show("acme"), serde_json::json!([]));
        let cfg = config(vec![rate("r", 4)], vec![]);
        hub.adopt(&cfg);
        let shown = hub.show("acme");
        assert_eq!(shown[0]["remaining"], 4);
        assert_eq!(shown[0]["quota"], 4);
        assert_eq!(hub.tracked(), vec![("r".to_owned(), "rate", 0)]);
    }
}
