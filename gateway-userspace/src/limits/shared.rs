//! Cluster mode for rate limits and quotas: what the local check admitted is asked of the
//! cluster store, whose budget (shared by every gateway) then decides.
//!
//! The local check runs first and is kept: a local refusal costs no round trip, and when
//! Redis cannot answer in mode `open` the local decision stands, so each gateway still holds
//! its clients to the configured limits on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tracing::warn;

use super::headers::{self, Policy, ceil_secs};
use super::{Active, Admitted, Rate, Refused, quota, quota_policies, rate_policy, unix_now};
use crate::cluster::{self, Cluster, QuotaPolicy, QuotaUse, Unavailable};
use crate::config::{Period, QuotaSpec};
use crate::proxy::respond::Denial;

/// A quota's limits for a key: calls, bytes.
type QuotaLimits = (Option<u64>, Option<u64>);

/// What a request still has to ask the cluster store.
pub(super) struct Pending {
    cluster: Cluster,
    rates: Vec<cluster::RateLimit>,
    /// Per shared rate: its index in `Active::rates`, tier, and the local policy.
    rate_meta: Vec<(usize, usize, Policy)>,
    quotas: Vec<QuotaUse>,
    /// Per shared quota: its index in the config's quotas, its limits, the local policies.
    quota_meta: Vec<(usize, QuotaLimits, Vec<Policy>)>,
}

impl Pending {
    pub(super) fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            rates: Vec::new(),
            rate_meta: Vec::new(),
            quotas: Vec::new(),
            quota_meta: Vec::new(),
        }
    }

    pub(super) fn add_rate(
        &mut self,
        i: usize,
        tier: usize,
        rate: &Rate,
        key: &str,
        local: Policy,
    ) {
        let spec = &rate.spec;
        let (requests, burst) = match tier.checked_sub(1).and_then(|t| spec.tiers.get(t)) {
            Some(t) => (t.requests, t.burst),
            None => (spec.requests, spec.burst),
        };
        let (Some(rate_n), Some(burst)) = (
            std::num::NonZeroU64::new(u64::from(requests)),
            std::num::NonZeroU64::new(u64::from(burst)),
        ) else {
            return;
        };
        self.rates.push(cluster::RateLimit {
            // The definition is part of the key, so a changed limit starts with full budgets
            // everywhere, as it does locally.
            key: format!(
                "{}:{requests}:{burst}:{}:{key}",
                spec.name,
                spec.per.as_millis()
            ),
            rate: rate_n,
            per: spec.per,
            burst,
            cost: 1,
        });
        self.rate_meta.push((i, tier, local));
    }

    pub(super) fn add_quota(
        &mut self,
        i: usize,
        spec: &QuotaSpec,
        limits: QuotaLimits,
        key: &str,
        request_bytes: u64,
        local: Vec<Policy>,
    ) {
        self.quotas.push(QuotaUse {
            key: format!("{}:{key}", spec.name),
            period: match spec.period {
                Period::Hour => cluster::Period::Hour,
                Period::Day => cluster::Period::Day,
                Period::Month => cluster::Period::Month,
            },
            calls: 1,
            bytes: request_bytes,
            max_calls: limits.0,
            max_bytes: limits.1,
        });
        self.quota_meta.push((i, limits, local));
    }

    /// Adds a response's bytes to the shared byte quotas, in the background: the response
    /// is already sent, and a lost count only makes the quota more lenient.
    pub(super) fn charge_bytes(&self, bytes: u64) {
        let uses: Vec<QuotaUse> = self
            .quotas
            .iter()
            .filter(|q| q.max_bytes.is_some())
            .map(|q| QuotaUse {
                calls: 0,
                bytes,
                ..q.clone()
            })
            .collect();
        if uses.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cluster = self.cluster.clone();
        rt.spawn(async move {
            if let Err(u) = cluster.add_quotas(&uses, QuotaPolicy::Count).await {
                fallback(&cluster, &u);
            }
        });
    }
}

/// Unix seconds of a time from the store.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Counts a call the store could not answer and logs it, at most once per 10 seconds so an
/// outage does not flood the log.
fn fallback(cluster: &Cluster, u: &Unavailable) {
    static LAST_LOG: AtomicU64 = AtomicU64::new(0);
    cluster.metrics().fallback(u.feature.name(), u.mode.name());
    let now = unix_now();
    let last = LAST_LOG.load(Ordering::Relaxed);
    if now >= last.saturating_add(10)
        && LAST_LOG
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(error = %u, "cluster store unavailable; limits follow the configured mode");
    }
}

fn unavailable(feature: &str) -> Refused {
    Refused {
        denial: Denial::ClusterUnavailable,
        rule: format!("cluster:{feature}"),
    }
}

impl Active {
    /// Takes what [`Active::check`] admitted to the cluster store (when cluster mode is on):
    /// one call for the rate limits, one for the quotas. The shared budget decides and
    /// fills the headers; when the store cannot answer, mode `open` keeps the local decision
    /// and mode `closed` refuses with `cluster_unavailable`.
    pub async fn confirm(&self, mut admitted: Admitted) -> Result<Admitted, Refused> {
        let Some(pending) = admitted.shared.as_ref() else {
            return Ok(admitted);
        };
        let cfg = &self.config;
        let style = cfg.headers;
        let mut policies: Vec<Policy> = Vec::new();

        if pending.rates.is_empty() {
            // Nothing to ask.
        } else {
            match pending.cluster.check_rates(&pending.rates).await {
                Ok(d) if d.allowed && d.limits.len() == pending.rate_meta.len() => {
                    for (&(i, tier, _), o) in pending.rate_meta.iter().zip(&d.limits) {
                        policies.push(rate_policy(
                            &self.rates[i],
                            tier,
                            o.remaining,
                            o.reset_after,
                        ));
                    }
                }
                Ok(d) => {
                    // The limit with the longest wait names the refusal.
                    let refusing = pending
                        .rate_meta
                        .iter()
                        .zip(&d.limits)
                        .filter(|(_, o)| !o.allowed)
                        .max_by_key(|(_, o)| o.retry_after)
                        .or_else(|| pending.rate_meta.iter().zip(&d.limits).next());
                    let Some((&(i, tier, _), o)) = refusing else {
                        return Ok(admitted);
                    };
                    let rate = &self.rates[i];
                    let wait = o.retry_after.max(d.retry_after());
                    let policy = rate_policy(rate, tier, 0, wait);
                    return Err(Refused {
                        denial: Denial::RateLimited {
                            retry_after: ceil_secs(wait).max(1),
                            headers: headers::render(style, &[policy]),
                        },
                        rule: format!("rate:{}", rate.spec.name),
                    });
                }
                Err(u) => {
                    fallback(&pending.cluster, &u);
                    if u.refuses() {
                        return Err(unavailable("rate_limits"));
                    }
                    policies.extend(pending.rate_meta.iter().map(|(_, _, p)| p.clone()));
                }
            }
        }

        if !pending.quotas.is_empty() {
            match pending
                .cluster
                .add_quotas(&pending.quotas, QuotaPolicy::Refuse)
                .await
            {
                Ok(d) if d.quotas.len() == pending.quota_meta.len() => {
                    let now = unix_now();
                    for (&(i, limits, _), u) in pending.quota_meta.iter().zip(&d.quotas) {
                        let Some(spec) = cfg.quotas.get(i) else {
                            continue;
                        };
                        let usage = quota::Usage {
                            calls: u.calls,
                            bytes: u.bytes,
                        };
                        let window = (unix(u.period_start), unix(u.period_end));
                        let these = quota_policies(&spec.name, limits, usage, window, now);
                        if u.over {
                            return Err(Refused {
                                denial: Denial::QuotaExhausted {
                                    retry_after: window.1.saturating_sub(now).max(1),
                                    status: StatusCode::from_u16(cfg.quota_status)
                                        .unwrap_or(StatusCode::FORBIDDEN),
                                    headers: headers::render(style, &these),
                                },
                                rule: format!("quota:{}", spec.name),
                            });
                        }
                        policies.extend(these);
                    }
                }
                Ok(_) => {
                    policies.extend(pending.quota_meta.iter().flat_map(|(_, _, p)| p.clone()));
                }
                Err(u) => {
                    fallback(&pending.cluster, &u);
                    if u.refuses() {
                        return Err(unavailable("quotas"));
                    }
                    policies.extend(pending.quota_meta.iter().flat_map(|(_, _, p)| p.clone()));
                }
            }
        }

        if cfg.headers_on_success && !policies.is_empty() {
            admitted.headers = headers::render(style, &policies);
        }
        Ok(admitted)
    }
}
