//! The cluster store: rate limits, quotas and bans shared by every gateway through one Redis.
//!
//! - [`Cluster::check_rates`]: GCRA rate limits, several per call, all or nothing.
//! - [`Cluster::add_quotas`]: calls and bytes counted per hour, day, month or fixed window.
//! - [`Cluster::publish_ban`], [`Cluster::unban`], [`Cluster::current_bans`],
//!   [`Cluster::subscribe_bans`]: bans stored with an expiry and announced to every gateway.
//!
//! Every check is one Lua script ([`scripts`]): atomic, one round trip, judged by the Redis
//! server's clock. Every call has a timeout; when Redis cannot answer (not connected, timed
//! out, lost) the call returns [`Unavailable`] at once, carrying the feature's configured
//! [`FailMode`] so the caller either falls back to its local state (`open`) or refuses
//! (`closed`). The connection is re-established in the background with backoff.
//!
//! TLS to Redis is not supported yet; AUTH (password, optionally with an ACL user) is.
//! See docs/cluster.md.

mod bans;
mod conn;
pub mod resp;
mod scripts;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::config::{ClusterConfig, ClusterTls, FailMode, PasswordSource};
pub use crate::metrics::ClusterMetrics;
pub use bans::{BanEvent, BanSubscription, ClusterBan, NewBan};
pub use conn::CallError;

use conn::Connection;
use resp::Value;
use scripts::Script;

/// What a call was for: each has its own [`FailMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    RateLimits,
    Quotas,
    Bans,
}

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Self::RateLimits => "rate_limits",
            Self::Quotas => "quotas",
            Self::Bans => "bans",
        }
    }
}

/// Redis could not answer. `mode` is what the configuration says to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cluster store unavailable for {}: {cause} (mode: {})", .feature.name(), .mode.name())]
pub struct Unavailable {
    pub feature: Feature,
    pub mode: FailMode,
    pub cause: CallError,
}

impl Unavailable {
    /// Whether the request must be refused (`closed`) rather than judged locally (`open`).
    pub fn refuses(&self) -> bool {
        self.mode == FailMode::Closed
    }
}

/// One rate limit to check: `rate` requests per `per`, with bursts of up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Names the budget; gateways using the same key share it (for example
    /// `route:orders:ip:203.0.113.7`). The store adds its key prefix.
    pub key: String,
    pub rate: std::num::NonZeroU64,
    /// The period `rate` is counted over; shorter than a microsecond counts as one.
    pub per: Duration,
    /// How many requests a full bucket admits at once.
    pub burst: std::num::NonZeroU64,
    /// What this request costs (usually 1; 0 only looks). A cost above `burst` is never
    /// admitted.
    pub cost: u64,
}

/// One limit's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateOutcome {
    /// Whether this limit alone would admit the request.
    pub allowed: bool,
    /// Requests left at once: after this one when the whole check admitted it, else now.
    pub remaining: u64,
    /// When this limit would admit the request (zero when it does).
    pub retry_after: Duration,
    /// When the bucket will be full again.
    pub reset_after: Duration,
}

/// The answer for a request's set of limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Every limit admitted the request, and every one was charged. When false none was.
    pub allowed: bool,
    /// One per limit, in the order given.
    pub limits: Vec<RateOutcome>,
}

impl RateDecision {
    /// How long until every refusing limit would admit the request.
    pub fn retry_after(&self) -> Duration {
        self.limits
            .iter()
            .map(|l| l.retry_after)
            .max()
            .unwrap_or_default()
    }
}

/// A quota's counting period, in UTC by the Redis server's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    /// Calendar month.
    Month,
    /// Fixed windows of this length (whole seconds, at least one) aligned on the Unix epoch.
    Window(Duration),
}

/// One quota to count a use against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaUse {
    /// Names the counters (for example `key:k-123`); the period start is appended.
    pub key: String,
    pub period: Period,
    pub calls: u64,
    pub bytes: u64,
    pub max_calls: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// One quota's usage in the current period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaUsage {
    /// After this use if it was counted, else before it.
    pub calls: u64,
    pub bytes: u64,
    /// Whether this use takes (or would take) the quota over a limit.
    pub over: bool,
    pub period_start: SystemTime,
    pub period_end: SystemTime,
}

/// The answer for a request's set of quotas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaDecision {
    /// No quota went over.
    pub within: bool,
    /// One per quota, in the order given.
    pub quotas: Vec<QuotaUsage>,
}

/// Whether a use that goes over a quota is still counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPolicy {
    /// Refuse it: nothing is counted in any quota (checking a request before it runs).
    Refuse,
    /// Count it anyway and report it over (bytes measured after the response).
    Count,
}

/// Handle on the cluster store; clones share one connection. Background tasks end when the
/// last clone and subscription are dropped.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<ClusterConfig>,
    conn: Connection,
    metrics: ClusterMetrics,
    /// Identifies this gateway in the bans it publishes, so it can tell its own apart.
    instance: String,
    rate: Script,
    quota: Script,
    ban: Script,
    unban: Script,
    list: Script,
}

impl Cluster {
    /// Starts the store's connection in the background (needs a Tokio runtime). Calls made
    /// before it connects return [`Unavailable`]; see [`Cluster::wait_connected`].
    pub fn start(config: ClusterConfig, metrics: ClusterMetrics) -> Self {
        let config = Arc::new(config);
        let conn = Connection::start(config.clone(), metrics.clone());
        Self {
            inner: Arc::new(Inner {
                conn,
                metrics,
                instance: instance_id(),
                rate: Script::new(scripts::RATE),
                quota: Script::new(scripts::QUOTA),
                ban: Script::new(scripts::BAN),
                unban: Script::new(scripts::UNBAN),
                list: Script::new(scripts::LIST),
                config,
            }),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// This gateway's identity in published bans (`host:pid:random`).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// The metrics the store counts in; callers add their fallbacks.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.inner.metrics
    }

    pub fn is_connected(&self) -> bool {
        self.inner.conn.is_connected()
    }

    /// Waits until connected, at most `within`; start-up uses it to fetch the bans early.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        self.inner.conn.wait_connected(within).await
    }

    /// Checks and charges a request's rate limits in one atomic round trip.
    pub async fn check_rates(&self, limits: &[RateLimit]) -> Result<RateDecision, Unavailable> {
        if limits.is_empty() {
            return Ok(RateDecision {
                allowed: true,
                limits: Vec::new(),
            });
        }
        let keys: Vec<String> = limits.iter().map(|l| self.key("rl:", &l.key)).collect();
        let mut args = Vec::with_capacity(limits.len() * 3);
        for l in limits {
            let per_us = (l.per.as_secs_f64() * 1e6).max(1.0);
            let interval = per_us / l.rate.get() as f64;
            args.push(format!("{interval:.6}"));
            args.push(l.burst.get().to_string());
            args.push(l.cost.to_string());
        }
        let reply = self
            .eval("rate", Feature::RateLimits, &self.inner.rate, &keys, &args)
            .await?;
        parse_rate(&reply, limits.len())
            .ok_or_else(|| self.failed("rate", Feature::RateLimits, bad_reply("rate", &reply)))
    }

    /// Counts a use against a request's quotas in one atomic round trip.
    pub async fn add_quotas(
        &self,
        quotas: &[QuotaUse],
        policy: QuotaPolicy,
    ) -> Result<QuotaDecision, Unavailable> {
        if quotas.is_empty() {
            return Ok(QuotaDecision {
                within: true,
                quotas: Vec::new(),
            });
        }
        let keys: Vec<String> = quotas.iter().map(|q| self.key("q:", &q.key)).collect();
        let mut args = Vec::with_capacity(1 + quotas.len() * 6);
        args.push(
            if policy == QuotaPolicy::Refuse {
                "1"
            } else {
                "0"
            }
            .to_owned(),
        );
        let limit = |m: Option<u64>| m.map_or_else(|| "-1".to_owned(), |v| v.to_string());
        for q in quotas {
            let (kind, window) = match q.period {
                Period::Window(d) => (0, d.as_secs().max(1)),
                Period::Hour => (1, 0),
                Period::Day => (2, 0),
                Period::Month => (3, 0),
            };
            args.push(kind.to_string());
            args.push(window.to_string());
            args.push(q.calls.to_string());
            args.push(q.bytes.to_string());
            args.push(limit(q.max_calls));
            args.push(limit(q.max_bytes));
        }
        let reply = self
            .eval("quota", Feature::Quotas, &self.inner.quota, &keys, &args)
            .await?;
        parse_quota(&reply, quotas.len())
            .ok_or_else(|| self.failed("quota", Feature::Quotas, bad_reply("quota", &reply)))
    }

    /// The full Redis key for a caller's key.
    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}{key}", self.inner.config.key_prefix)
    }

    /// Runs a script by SHA-1, falling back to sending its source when Redis does not have it.
    async fn eval(
        &self,
        op: &'static str,
        feature: Feature,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, Unavailable> {
        let started = Instant::now();
        let numkeys = keys.len().to_string();
        let mut command: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        command.push(b"EVALSHA");
        command.push(script.sha1.as_bytes());
        command.push(numkeys.as_bytes());
        command.extend(keys.iter().map(|k| k.as_bytes()));
        command.extend(args.iter().map(|a| a.as_bytes()));
        let mut result = self.inner.conn.call(&command).await;
        if matches!(&result, Err(CallError::Server(e)) if e.starts_with("NOSCRIPT")) {
            // Both attempts share the one timeout the caller was promised.
            let left = self.inner.conn.timeout.saturating_sub(started.elapsed());
            command[0] = b"EVAL";
            command[1] = script.source.as_bytes();
            result = self.inner.conn.call_within(&command, left).await;
        }
        self.observe(op, started, &result);
        result.map_err(|cause| Unavailable {
            feature,
            mode: self.mode(feature),
            cause,
        })
    }

    fn mode(&self, feature: Feature) -> FailMode {
        let c = &self.inner.config;
        match feature {
            Feature::RateLimits => c.rate_limits,
            Feature::Quotas => c.quotas,
            Feature::Bans => c.bans,
        }
    }

    fn observe(&self, op: &'static str, started: Instant, result: &Result<Value, CallError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(CallError::NotConnected) => "unavailable",
            Err(CallError::Timeout) => "timeout",
            Err(_) => "error",
        };
        self.inner.metrics.call(op, outcome, started.elapsed());
    }

    /// A reply that answered but made no sense: counted, and reported like a failed call.
    fn failed(&self, op: &'static str, feature: Feature, cause: CallError) -> Unavailable {
        self.inner.metrics.call(op, "bad_reply", Duration::ZERO);
        tracing::warn!(op, error = %cause, "cluster store: unexpected reply");
        Unavailable {
            feature,
            mode: self.mode(feature),
            cause,
        }
    }
}

fn bad_reply(what: &str, reply: &Value) -> CallError {
    let mut text = format!("{reply:?}");
    text.truncate(200);
    CallError::Reply(format!("{what} script answered {text}"))
}

fn non_negative(v: &Value) -> Option<u64> {
    v.as_int().map(|i| u64::try_from(i).unwrap_or(0))
}

fn parse_rate(reply: &Value, n: usize) -> Option<RateDecision> {
    let [admitted, results] = reply.as_array()? else {
        return None;
    };
    let results = results.as_array()?;
    if results.len() != n {
        return None;
    }
    let limits = results
        .iter()
        .map(|r| {
            let [allowed, remaining, retry, reset] = r.as_array()? else {
                return None;
            };
            Some(RateOutcome {
                allowed: allowed.as_int()? == 1,
                remaining: non_negative(remaining)?,
                retry_after: Duration::from_micros(non_negative(retry)?),
                reset_after: Duration::from_micros(non_negative(reset)?),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RateDecision {
        allowed: admitted.as_int()? == 1,
        limits,
    })
}

fn parse_quota(reply: &Value, n: usize) -> Option<QuotaDecision> {
    let [within, results] = reply.as_array()? else {
        return None;
    };
    let results = results.as_array()?;
    if results.len() != n {
        return None;
    }
    let quotas = results
        .iter()
        .map(|r| {
            let [calls, bytes, over, start, end] = r.as_array()? else {
                return None;
            };
            Some(QuotaUsage {
                calls: non_negative(calls)?,
                bytes: non_negative(bytes)?,
                over: over.as_int()? == 1,
                period_start: UNIX_EPOCH + Duration::from_secs(non_negative(start)?),
                period_end: UNIX_EPOCH + Duration::from_secs(non_negative(end)?),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(QuotaDecision {
        within: within.as_int()? == 1,
        quotas,
    })
}

/// `host:pid:random`, unique enough to tell gateways (and restarts) apart.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gateway".into());
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{random}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_script_replies_are_refused_not_trusted() {
        assert_eq!(parse_rate(&Value::Int(1), 1), None);
        assert_eq!(parse_rate(&Value::Array(vec![Value::Int(1)]), 1), None);
        let one = Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![Value::Array(vec![
                Value::Int(1),
                Value::Int(4),
                Value::Int(0),
                Value::Int(2500),
            ])]),
        ]);
        let d = parse_rate(&one, 1).expect("valid");
        assert!(d.allowed);
        assert_eq!(d.limits[0].remaining, 4);
        assert_eq!(d.limits[0].reset_after, Duration::from_micros(2500));
        // A reply for another number of limits than asked.
        assert_eq!(parse_rate(&one, 2), None);
        assert_eq!(parse_quota(&one, 1), None);
    }
}
