//! The validated configuration: what [`super::load`] returns once every check has passed.
//! Every value here is ready to use; nothing needs re-checking at run time.

use std::path::PathBuf;
use std::time::Duration;

use super::abuse::AbuseConfig;
use super::cluster::ClusterConfig;
use super::proxy_model::{AdminConfig, ProxyConfig};
use crate::rules::RuleSet;

/// A loaded and fully checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file it was loaded from.
    pub source: PathBuf,
    pub kernel: KernelConfig,
    /// Allow list, deny sets and geo-blocking with every file read and every prefix parsed.
    pub rules: RuleSet,
    pub log: LogConfig,
    /// Listeners, routes and pools with every certificate read; no listeners means no proxy.
    pub proxy: ProxyConfig,
    /// The local admin endpoint.
    pub admin: AdminConfig,
    /// `[cluster]`: the shared Redis; `None` when the section is absent.
    pub cluster: Option<ClusterConfig>,
    /// `[abuse]`: when refusals from one client become a ban; the defaults when absent.
    pub abuse: AbuseConfig,
}

/// `[kernel]`: the XDP layer.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelConfig {
    /// Load the XDP program (needs CAP_BPF and CAP_NET_ADMIN).
    pub enabled: bool,
    /// Interfaces to attach to; at least one when enabled.
    pub interfaces: Vec<String>,
    pub attach_mode: AttachMode,
    /// The bpffs directory holding the pinned maps and link.
    pub pin_root: PathBuf,
    /// How often expired bans are removed from the kernel map.
    pub ban_sweep_interval: Duration,
}

impl KernelConfig {
    pub const DEFAULT_PIN_ROOT: &'static str = "/sys/fs/bpf/portcullis";
    pub const DEFAULT_BAN_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
    /// Longer sweeps would leave expired bans dropping traffic for too long after they end.
    pub const MAX_BAN_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            attach_mode: AttachMode::default(),
            pin_root: Self::DEFAULT_PIN_ROOT.into(),
            ban_sweep_interval: Self::DEFAULT_BAN_SWEEP_INTERVAL,
        }
    }
}

/// How the XDP program is attached: the kernel module's own type, so config and kernel
/// share one vocabulary.
pub use crate::kernel::AttachMode;

/// `[log]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

/// The least severe level logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Trace => Self::TRACE,
            LogLevel::Debug => Self::DEBUG,
            LogLevel::Info => Self::INFO,
            LogLevel::Warn => Self::WARN,
            LogLevel::Error => Self::ERROR,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for collectors.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}
