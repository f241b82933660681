//! The raw layer: the config as written, one struct per section, typed but not yet checked
//! (a CIDR is still a string, a path still relative). It owns the schema, which keys exist in
//! which table; [`super::compile`] owns what the values mean.
//!
//! To add a section: a `Raw*` struct, a `read` function asking for each key, and one line in
//! [`RawConfig::read`]; then a compile step for it, and its mirror in [`super::schema`] (a test
//! fails until the schema and the reader agree). The proxy sections live in
//! [`super::proxy_raw`].

use toml::Spanned;
use toml::de::DeTable;

use super::cluster::RawCluster;
use super::model::{AttachMode, LogFormat, LogLevel};
use super::proxy_raw::{
    RawAdmin, RawApiKeys, RawListener, RawPool, RawProxy, RawRoute, RawTokenProvider,
    RawTrustedProxies,
};
use super::reader::{Field, Keyword, Table};
use super::source::{Diagnostics, Span};
use crate::rules::{Mode, UnknownCountry};

/// A list of strings, each with its own span so an error points at the bad element.
pub(crate) type Strings = Vec<Spanned<String>>;

/// The whole file.
pub(crate) struct RawConfig {
    /// `None` when `kernel` was not a table (reported); absent reads as all defaults.
    pub kernel: Option<RawKernel>,
    pub allow: Option<RawPrefixSources>,
    pub deny: Vec<RawDeny>,
    pub geo: Option<RawGeo>,
    pub log: Option<RawLog>,
    pub admin: Option<RawAdmin>,
    pub proxy: Option<RawProxy>,
    /// `None` also when it was not a table, so checks that depend on it stay quiet.
    pub trusted_proxies: Option<RawTrustedProxies>,
    pub listeners: Vec<RawListener>,
    pub pools: Vec<RawPool>,
    pub token_providers: Vec<RawTokenProvider>,
    pub api_keys: Field<RawApiKeys>,
    pub routes: Vec<RawRoute>,
    pub cluster: Option<RawCluster>,
}

impl RawConfig {
    pub(crate) fn read(doc: &DeTable<'_>, d: &mut Diagnostics) -> Self {
        let mut root = Table::root(doc);
        let raw = Self {
            kernel: root.table("kernel", d).read_or_default(d, RawKernel::read),
            allow: root
                .table("allow", d)
                .read_or_default(d, RawPrefixSources::read),
            deny: root
                .tables("deny", d)
                .into_iter()
                .map(|t| RawDeny::read(t, d))
                .collect(),
            geo: root.table("geo", d).read_optional(d, RawGeo::read),
            log: root.table("log", d).read_or_default(d, RawLog::read),
            admin: root.table("admin", d).read_or_default(d, RawAdmin::read),
            proxy: root.table("proxy", d).read_or_default(d, RawProxy::read),
            trusted_proxies: root
                .table("trusted_proxies", d)
                .read_or_default(d, RawTrustedProxies::read),
            listeners: root
                .tables("listeners", d)
                .into_iter()
                .map(|t| RawListener::read(t, d))
                .collect(),
            pools: root
                .tables("pools", d)
                .into_iter()
                .map(|t| RawPool::read(t, d))
                .collect(),
            token_providers: root
                .tables("token_providers", d)
                .into_iter()
                .map(|t| RawTokenProvider::read(t, d))
                .collect(),
            api_keys: root.table("api_keys", d).read_field(d, RawApiKeys::read),
            routes: root
                .tables("routes", d)
                .into_iter()
                .map(|t| RawRoute::read(t, d))
                .collect(),
            cluster: root.table("cluster", d).read_optional(d, RawCluster::read),
        };
        root.finish(d);
        raw
    }
}

/// `[kernel]`.
#[derive(Default)]
pub(crate) struct RawKernel {
    /// The `[kernel]` header, or the start of the file when the section is absent.
    pub header: Span,
    pub enabled: Field<bool>,
    pub interfaces: Field<Strings>,
    pub attach_mode: Field<AttachMode>,
    pub pin_root: Field<String>,
    pub ban_sweep_interval: Field<String>,
}

impl RawKernel {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            enabled: t.value("enabled", d),
            interfaces: t.value("interfaces", d),
            attach_mode: t.keyword("attach_mode", d),
            pin_root: t.value("pin_root", d),
            ban_sweep_interval: t.value("ban_sweep_interval", d),
        };
        t.finish(d);
        raw
    }
}

/// Where a prefix list comes from: inline CIDRs and CIDR files. `[allow]` is exactly this.
#[derive(Default)]
pub(crate) struct RawPrefixSources {
    /// Dotted path of the owning table, for messages (`allow`, `deny`).
    pub path: String,
    pub cidrs: Field<Strings>,
    pub files: Field<Strings>,
}

impl RawPrefixSources {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self::read_keys(&mut t, d);
        t.finish(d);
        raw
    }

    fn read_keys(t: &mut Table, d: &mut Diagnostics) -> Self {
        Self {
            path: t.path().to_owned(),
            cidrs: t.value("cidrs", d),
            files: t.value("files", d),
        }
    }
}

/// One `[[deny]]` set.
pub(crate) struct RawDeny {
    pub name: Option<Spanned<String>>,
    pub mode: Field<Mode>,
    pub sources: RawPrefixSources,
}

impl RawDeny {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            name: t.required("name", d),
            mode: t.keyword("mode", d),
            sources: RawPrefixSources::read_keys(&mut t, d),
        };
        t.finish(d);
        raw
    }
}

/// `[geo]`.
pub(crate) struct RawGeo {
    pub header: Span,
    pub database: Option<Spanned<String>>,
    pub block: Field<Strings>,
    pub unknown: Field<UnknownCountry>,
    pub mode: Field<Mode>,
}

impl RawGeo {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            database: t.required("database", d),
            block: t.value("block", d),
            unknown: t.keyword("unknown", d),
            mode: t.keyword("mode", d),
        };
        t.finish(d);
        raw
    }
}

/// `[log]`.
#[derive(Default)]
pub(crate) struct RawLog {
    pub level: Field<LogLevel>,
    pub format: Field<LogFormat>,
}

impl RawLog {
    fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            level: t.keyword("level", d),
            format: t.keyword("format", d),
        };
        t.finish(d);
        raw
    }
}

impl Keyword for AttachMode {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("native", Self::Native),
        ("generic", Self::Generic),
    ];
}

impl Keyword for Mode {
    const WORDS: &'static [(&'static str, Self)] =
        &[("enforce", Self::Enforce), ("report", Self::Report)];
}

impl Keyword for UnknownCountry {
    const WORDS: &'static [(&'static str, Self)] = &[("pass", Self::Pass), ("block", Self::Block)];
}

impl Keyword for LogLevel {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("trace", Self::Trace),
        ("debug", Self::Debug),
        ("info", Self::Info),
        ("warn", Self::Warn),
        ("error", Self::Error),
    ];
}

impl Keyword for LogFormat {
    const WORDS: &'static [(&'static str, Self)] = &[("json", Self::Json), ("text", Self::Text)];
}
