//! Prometheus metrics, served on the admin listener: requests by route and status class,
//! latency histograms, decisions by phase, rule and action, upstream health, connections,
//! reload results, the kernel's per-reason packet counters and the verified-token caches' hits,
//! misses and sizes (read at scrape time).

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelLabels {
    pub verdict: String,
    pub reason: String,
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
    /// Where to read kernel counters from, when the kernel layer is on.
    kernel: Option<PinLayout>,
    /// Reads the current upstream endpoints' state at scrape time (set by the proxy).
    upstreams: std::sync::RwLock<Option<UpstreamProbe>>,
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
            kernel,
            upstreams: std::sync::RwLock::new(None),
            registry: Registry::default(),
        };
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
