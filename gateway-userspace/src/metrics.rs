//! Prometheus metrics, served on the admin listener: requests by route and status class,
//! latency histograms, decisions by phase, rule and action, upstream health, connections,
//! reload results, the kernel's per-reason packet counters and the verified-token caches' hits,
//! misses and sizes (read at scrape time), and the cluster store's calls and connection.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::kernel::{Counters, PinLayout};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValidationLabels {
    pub route: String,
    /// `request` or `response`.
    pub direction: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub phase: String,
    pub rule: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub pool: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// Abuse-ban decisions: `rule` is the abuse rule kind (or `shared`), `action` where the ban
/// went (`kernel`, `kernel+userspace`, `userspace`), or `report`, `protected`, `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbuseLabels {
    pub rule: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelLabels {
    pub verdict: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub decisions: Family<DecisionLabels, Counter>,
    /// Requests that failed their route's validation, by route and action (prevent, detect).
    pub validation_failures: Family<ValidationLabels, Counter>,
    pub upstream_healthy: Family<EndpointLabels, Gauge>,
    pub upstream_outstanding: Family<EndpointLabels, Gauge>,
    pub connections: Family<ListenerLabels, Gauge>,
    pub connections_refused: Family<DecisionLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    kernel_packets: Family<KernelLabels, Counter>,
    kernel_bytes: Family<KernelLabels, Counter>,
    token_cache_hits: Family<ProviderLabels, Counter>,
    token_cache_misses: Family<ProviderLabels, Counter>,
    token_cache_entries: Family<ProviderLabels, Gauge>,
    pub abuse_bans: Family<AbuseLabels, Counter>,
    pub abuse_tracked: Gauge,
    pub abuse_userspace_bans: Gauge,
    pub abuse_untracked: Counter,
    /// Where to read kernel counters from, when the kernel layer is on.
    kernel: Option<PinLayout>,
    /// Reads the current upstream endpoints' state at scrape time (set by the proxy).
    upstreams: std::sync::RwLock<Option<UpstreamProbe>>,
    /// Handed to [`crate::cluster::Cluster::start`].
    pub cluster: ClusterMetrics,
    /// The rate-limit and quota counters. They live here because this is the one object the
    /// proxy (across configuration generations), the admin endpoint and the daemon share.
    pub limits: crate::limits::Hub,
    limit_tracked_keys: Family<LimitLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterCallLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterOpLabels {
    pub op: String,
}

fn cluster_histogram() -> Histogram {
    // 100 us to about 3 s: calls are bounded by a timeout of tens of milliseconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// The cluster store's metrics. Clones share the same series, so the store can be started
/// with a clone and the registry still sees every update.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// By operation (`rate`, `quota`, `ban`, `unban`, `bans`, `subscribe`) and result (`ok`,
    /// `timeout`, `unavailable`, `error`, `bad_reply`, `bad_message`).
    pub calls: Family<ClusterCallLabels, Counter>,
    pub latency: Family<ClusterOpLabels, Histogram, fn() -> Histogram>,
    /// Connections re-established after a loss.
    pub reconnects: Counter,
    /// Connects that failed and connections lost.
    pub connection_errors: Counter,
    /// 1 while the commands connection is up.
    pub connected: Gauge,
    /// Requests judged without the store because it could not answer: `op` is the feature
    /// (`rate_limits`, `quotas`, `bans`), `result` the mode applied (`open`, `closed`).
    pub fallbacks: Family<ClusterCallLabels, Counter>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            latency: Family::new_with_constructor(cluster_histogram as fn() -> Histogram),
            reconnects: Counter::default(),
            connection_errors: Counter::default(),
            connected: Gauge::default(),
            fallbacks: Family::default(),
        }
    }
}

impl ClusterMetrics {
    /// Counts one call and, when it got an answer, its latency.
    pub fn call(&self, op: &str, result: &str, elapsed: std::time::Duration) {
        self.calls
            .get_or_create(&ClusterCallLabels {
                op: op.into(),
                result: result.into(),
            })
            .inc();
        if result == "ok" {
            self.latency
                .get_or_create(&ClusterOpLabels { op: op.into() })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a request judged without the store, by feature and the mode applied.
    pub fn fallback(&self, feature: &str, mode: &str) {
        self.fallbacks
            .get_or_create(&ClusterCallLabels {
                op: feature.into(),
                result: mode.into(),
            })
            .inc();
    }

    /// How many calls of `op` ended with `result`.
    pub fn count(&self, op: &str, result: &str) -> u64 {
        self.calls
            .get_or_create(&ClusterCallLabels {
                op: op.into(),
                result: result.into(),
            })
            .get()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_calls",
            "Cluster store calls to Redis, by operation and result",
            self.calls.clone(),
        );
        registry.register(
            "cluster_call_duration_seconds",
            "Time to answer successful cluster store calls, by operation",
            self.latency.clone(),
        );
        registry.register(
            "cluster_reconnects",
            "Connections to Redis re-established after a loss",
            self.reconnects.clone(),
        );
        registry.register(
            "cluster_connection_errors",
            "Failed connects to Redis and connections lost",
            self.connection_errors.clone(),
        );
        registry.register(
            "cluster_fallbacks",
            "Requests judged without the cluster store (unreachable), by feature and mode",
            self.fallbacks.clone(),
        );
        registry.register(
            "cluster_connected",
            "1 while the cluster store is connected to Redis",
            self.connected.clone(),
        );
    }
}

/// One endpoint's state for the upstream gauges.
pub struct UpstreamReading {
    pub pool: String,
    pub endpoint: String,
    pub available: bool,
    pub outstanding: usize,
}

/// Produces the upstream readings of the current configuration generation.
pub type UpstreamProbe = Box<dyn Fn() -> Vec<UpstreamReading> + Send + Sync>;

impl Metrics {
    pub fn new(kernel: Option<PinLayout>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            decisions: Family::default(),
            validation_failures: Family::default(),
            upstream_healthy: Family::default(),
            upstream_outstanding: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            reloads: Family::default(),
            kernel_packets: Family::default(),
            kernel_bytes: Family::default(),
            token_cache_hits: Family::default(),
            token_cache_misses: Family::default(),
            token_cache_entries: Family::default(),
            abuse_bans: Family::default(),
            abuse_tracked: Gauge::default(),
            abuse_userspace_bans: Gauge::default(),
            abuse_untracked: Counter::default(),
            kernel,
            upstreams: std::sync::RwLock::new(None),
            registry: Registry::default(),
            cluster: ClusterMetrics::default(),
            limits: crate::limits::Hub::default(),
            limit_tracked_keys: Family::default(),
        };
        m.cluster.register(&mut registry);
        registry.register(
            "validation_failures",
            "Requests that failed request validation, by route and action",
            m.validation_failures.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by route and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            m.latency.clone(),
        );
        registry.register(
            "decisions",
            "Gateway decisions by phase, rule and action",
            m.decisions.clone(),
        );
        registry.register(
            "upstream_healthy",
            "1 when a backend endpoint receives traffic",
            m.upstream_healthy.clone(),
        );
        registry.register(
            "upstream_outstanding",
            "Requests in flight per backend endpoint",
            m.upstream_outstanding.clone(),
        );
        registry.register(
            "connections_open",
            "Open client connections by listener",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept, by phase and rule",
            m.connections_refused.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads by result",
            m.reloads.clone(),
        );
        registry.register(
            "kernel_packets",
            "Packets judged by the XDP program, by verdict and reason",
            m.kernel_packets.clone(),
        );
        registry.register(
            "kernel_bytes",
            "Bytes judged by the XDP program, by verdict and reason",
            m.kernel_bytes.clone(),
        );
        registry.register(
            "token_cache_hits",
            "Tokens answered from the verified-token cache, by token provider",
            m.token_cache_hits.clone(),
        );
        registry.register(
            "token_cache_misses",
            "Token cache lookups that needed a full verification, by token provider",
            m.token_cache_misses.clone(),
        );
        registry.register(
            "token_cache_entries",
            "Verified tokens held in the cache, by token provider",
            m.token_cache_entries.clone(),
        );
        registry.register(
            "limit_tracked_keys",
            "Keys a rate limit or quota holds counters for (bounded by max_tracked_keys)",
            m.limit_tracked_keys.clone(),
        );
        registry.register(
            "abuse_bans",
            "Abuse-ban decisions by rule and action",
            m.abuse_bans.clone(),
        );
        registry.register(
            "abuse_tracked_clients",
            "Clients whose refusals the abuse detector is counting",
            m.abuse_tracked.clone(),
        );
        registry.register(
            "abuse_userspace_bans",
            "Live bans enforced in userspace",
            m.abuse_userspace_bans.clone(),
        );
        registry.register(
            "abuse_untracked",
            "Refusals not counted because the abuse detector's table was full",
            m.abuse_untracked.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    /// Counts a decision.
    pub fn decision(&self, phase: &str, rule: &str, action: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                phase: phase.into(),
                rule: rule.into(),
                action: action.into(),
            })
            .inc();
    }

    /// Counts a finished request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let class = format!("{}xx", status / 100);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                status_class: class,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .observe(seconds);
    }

    /// Sets where the upstream gauges are read from.
    pub fn set_upstream_probe(&self, probe: UpstreamProbe) {
        if let Ok(mut p) = self.upstreams.write() {
            *p = Some(probe);
        }
    }

    /// The exposition text (OpenMetrics), with the kernel counters and upstream gauges
    /// brought up to date.
    pub fn render(&self) -> String {
        self.refresh_kernel();
        self.refresh_upstreams();
        self.refresh_token_caches();
        self.refresh_limits();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn refresh_upstreams(&self) {
        let Ok(probe) = self.upstreams.read() else {
            return;
        };
        let Some(probe) = probe.as_ref() else { return };
        // Endpoints of an older generation disappear from the gauges.
        self.upstream_healthy.clear();
        self.upstream_outstanding.clear();
        for r in probe() {
            let labels = EndpointLabels {
                pool: r.pool,
                endpoint: r.endpoint,
            };
            self.upstream_healthy
                .get_or_create(&labels)
                .set(i64::from(r.available));
            self.upstream_outstanding
                .get_or_create(&labels)
                .set(r.outstanding as i64);
        }
    }

    /// The token caches' counters live with the providers (shared across reloads by name, so
    /// they only grow): add what they grew by since the last scrape.
    fn refresh_token_caches(&self) {
        self.token_cache_entries.clear();
        for r in crate::identity::token_cache::readings() {
            let labels = ProviderLabels {
                provider: r.provider,
            };
            let hits = self.token_cache_hits.get_or_create(&labels);
            hits.inc_by(r.stats.hits.saturating_sub(hits.get()));
            let misses = self.token_cache_misses.get_or_create(&labels);
            misses.inc_by(r.stats.misses.saturating_sub(misses.get()));
            self.token_cache_entries
                .get_or_create(&labels)
                .set(i64::try_from(r.stats.entries).unwrap_or(i64::MAX));
        }
    }

    fn refresh_limits(&self) {
        self.limit_tracked_keys.clear();
        for (limit, kind, tracked) in self.limits.tracked() {
            self.limit_tracked_keys
                .get_or_create(&LimitLabels {
                    limit,
                    kind: kind.into(),
                })
                .set(i64::try_from(tracked).unwrap_or(i64::MAX));
        }
    }

    /// Kernel counters only ever grow: add what they grew by since the last scrape.
    fn refresh_kernel(&self) {
        let Some(layout) = &self.kernel else { return };
        let Ok(readings) = Counters::open(layout).and_then(|c| c.read()) else {
            return;
        };
        for r in readings {
            let labels = KernelLabels {
                verdict: r.verdict().into(),
                reason: r.reason().into(),
            };
            let packets = self.kernel_packets.get_or_create(&labels);
            packets.inc_by(r.packets.saturating_sub(packets.get()));
            let bytes = self.kernel_bytes.get_or_create(&labels);
            bytes.inc_by(r.bytes.saturating_sub(bytes.get()));
        }
    }
}
