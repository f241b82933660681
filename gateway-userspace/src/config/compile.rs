//! The compile layer: raw sections in, a validated [`Config`] out. It owns what values mean:
//! defaults, ranges, names, CIDRs, and reading the files the config points at (CIDR lists, the
//! .mmdb). Every check runs even after one fails, so one run reports every error. The proxy
//! sections compile in [`super::proxy_compile`] and [`super::routes`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::duration;
use super::error::{ConfigError, ErrorKind, Location};
use super::model::{Config, KernelConfig, LogConfig};
use super::proxy_compile;
use super::raw::{RawConfig, RawDeny, RawGeo, RawKernel, RawLog, RawPrefixSources, Strings};
use super::reader::Field;
use super::source::Diagnostics;
use crate::rules::cidr_file::{CidrFileError, parse_cidr_file};
use crate::rules::geo::load_country_networks;
use crate::rules::{CountryCode, DenySet, GeoRules, Mode, Prefix, RuleSet, UnknownCountry};

/// Compiles every section; `abuse` is `[abuse]`, read and compiled apart (see `super::load_str`).
/// The result is only meaningful if nothing was reported to `d`.
pub(crate) fn compile(
    raw: RawConfig,
    abuse: super::abuse::AbuseConfig,
    d: &mut Diagnostics,
) -> Config {
    let admin = proxy_compile::admin(raw.admin, d);
    let proxy = proxy_compile::proxy(
        proxy_compile::RawProxySections {
            proxy: raw.proxy,
            trusted_proxies: raw.trusted_proxies,
            listeners: raw.listeners,
            pools: raw.pools,
            token_providers: raw.token_providers,
            api_keys: raw.api_keys,
            routes: raw.routes,
        },
        &admin,
        d,
    );
    Config {
        source: d.source().path().to_path_buf(),
        kernel: raw.kernel.map(|k| kernel(k, d)).unwrap_or_default(),
        rules: RuleSet {
            allow: raw.allow.map(|a| prefixes(&a, d)).unwrap_or_default(),
            deny: deny_sets(raw.deny, d),
            geo: raw.geo.map(|g| geo(g, d)),
        },
        log: raw.log.map(log).unwrap_or_default(),
        proxy,
        admin: admin.config,
        cluster: super::cluster::compile(raw.cluster, d),
        abuse,
    }
}

fn kernel(raw: RawKernel, d: &mut Diagnostics) -> KernelConfig {
    let defaults = KernelConfig::default();
    // A refused `enabled` (reported already) must not also produce "no interfaces".
    let enabled = match raw.enabled {
        Field::Invalid => None,
        ref e => Some(e.value_or(defaults.enabled)),
    };
    let interfaces = interfaces(&raw, enabled == Some(true), d);

    let pin_root = match raw.pin_root.present() {
        Some(p) if Path::new(p.get_ref()).is_absolute() => PathBuf::from(p.get_ref()),
        Some(p) => {
            let kind = ErrorKind::PinRootNotAbsolute {
                path: p.get_ref().clone(),
            };
            d.at(&p.span(), kind);
            defaults.pin_root
        }
        None => defaults.pin_root,
    };

    let ban_sweep_interval = match raw.ban_sweep_interval.present() {
        Some(s) => duration::parse_bounded(s.get_ref(), KernelConfig::MAX_BAN_SWEEP_INTERVAL)
            .unwrap_or_else(|e| {
                let kind = ErrorKind::Duration {
                    key: "kernel.ban_sweep_interval".to_owned(),
                    value: s.get_ref().clone(),
                    reason: e.to_string(),
                };
                d.at(&s.span(), kind);
                defaults.ban_sweep_interval
            }),
        None => defaults.ban_sweep_interval,
    };

    KernelConfig {
        enabled: enabled.unwrap_or(defaults.enabled),
        interfaces,
        attach_mode: raw.attach_mode.value_or(defaults.attach_mode),
        pin_root,
        ban_sweep_interval,
    }
}

fn interfaces(raw: &RawKernel, required: bool, d: &mut Diagnostics) -> Vec<String> {
    let list = match &raw.interfaces {
        Field::Present(list) => list,
        Field::Absent => {
            if required {
                d.at(&raw.header, ErrorKind::NoInterfaces);
            }
            return Vec::new();
        }
        Field::Invalid => return Vec::new(),
    };
    if required && list.get_ref().is_empty() {
        d.at(&list.span(), ErrorKind::NoInterfaces);
    }
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for name in list.get_ref() {
        if let Some(reason) = interface_name_problem(name.get_ref()) {
            let kind = ErrorKind::InterfaceName {
                name: name.get_ref().clone(),
                reason,
            };
            d.at(&name.span(), kind);
        } else if !seen.insert(name.get_ref()) {
            let kind = ErrorKind::DuplicateInterface {
                name: name.get_ref().clone(),
            };
            d.at(&name.span(), kind);
        } else {
            names.push(name.get_ref().clone());
        }
    }
    names
}

/// What the kernel's `dev_valid_name` (net/core/dev.c) would refuse, checked here so a typo
/// fails `check` instead of the attach at start-up.
fn interface_name_problem(name: &str) -> Option<&'static str> {
    // IFNAMSIZ is 16 including the terminating NUL.
    const MAX_LEN: usize = 15;
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not interface names")
    } else if name.contains('/') {
        Some("it contains `/`")
    } else if name.contains(':') {
        Some("it contains `:`")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else {
        None
    }
}

/// Inline CIDRs first, then each file's, in the order written.
fn prefixes(raw: &RawPrefixSources, d: &mut Diagnostics) -> Vec<Prefix> {
    let mut out = prefixes_from(&raw.cidrs, d);
    if let Some(files) = raw.files.present() {
        let key = format!("{}.files", raw.path);
        for file in files.get_ref() {
            out.extend(cidr_file(&key, file, d));
        }
    }
    out
}

/// A list of inline prefixes; each bad one is reported where it is written.
pub(crate) fn prefixes_from(list: &Field<Strings>, d: &mut Diagnostics) -> Vec<Prefix> {
    let mut out = Vec::new();
    if let Some(cidrs) = list.present() {
        for cidr in cidrs.get_ref() {
            match Prefix::parse_strict(cidr.get_ref()) {
                Ok(p) => out.push(p),
                Err(e) => d.at(&cidr.span(), e.into()),
            }
        }
    }
    out
}

/// Reads one CIDR file: errors in a line are located in that file; errors about the whole file
/// at the config entry that names it.
fn cidr_file(key: &str, file: &Spanned<String>, d: &mut Diagnostics) -> Vec<Prefix> {
    let Some(path) = resolve(key, file, d) else {
        return Vec::new();
    };
    parse_cidr_file(&path).unwrap_or_else(|errors| {
        for e in errors {
            match e {
                CidrFileError::Line {
                    path,
                    line,
                    column,
                    reason,
                } => d.push(ConfigError {
                    location: Location {
                        file: path,
                        line,
                        column,
                    },
                    kind: reason.into(),
                }),
                whole_file => d.at(&file.span(), ErrorKind::CidrFile(whole_file.to_string())),
            }
        }
        Vec::new()
    })
}

/// A path from the config, relative to the config file's directory.
pub(crate) fn resolve(key: &str, path: &Spanned<String>, d: &mut Diagnostics) -> Option<PathBuf> {
    if path.get_ref().is_empty() {
        d.at(
            &path.span(),
            ErrorKind::EmptyPath {
                key: key.to_owned(),
            },
        );
        return None;
    }
    Some(d.source().dir().join(path.get_ref()))
}

fn deny_sets(raw: Vec<RawDeny>, d: &mut Diagnostics) -> Vec<DenySet> {
    let mut names = Names::new("deny set");
    let mut sets = Vec::with_capacity(raw.len());
    for set in raw {
        if let Some(name) = &set.name {
            names.check(name, d);
        }
        sets.push(DenySet {
            name: set
                .name
                .as_ref()
                .map_or_else(String::new, |n| n.get_ref().clone()),
            mode: set.mode.value_or(Mode::default()),
            prefixes: prefixes(&set.sources, d),
        });
    }
    sets
}

/// The names of one kind of entry (deny sets, listeners, pools, routes): each must be
/// well-formed and unique.
pub(crate) struct Names {
    what: &'static str,
    /// Name -> line of its first use, for the duplicate message.
    first_use: HashMap<String, usize>,
}

impl Names {
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            first_use: HashMap::new(),
        }
    }

    /// Reports a malformed or duplicate name.
    pub(crate) fn check(&mut self, name: &Spanned<String>, d: &mut Diagnostics) {
        if !is_valid_name(name.get_ref()) {
            return d.at(&name.span(), self.malformed(name.get_ref()));
        }
        if let Some(&first_line) = self.first_use.get(name.get_ref()) {
            let kind = ErrorKind::DuplicateName {
                what: self.what,
                name: name.get_ref().clone(),
                first_line,
            };
            return d.at(&name.span(), kind);
        }
        let line = d.source().location(name.span().start).line;
        self.first_use.insert(name.get_ref().clone(), line);
    }

    /// The error for a malformed name of this kind (for names that need not be unique).
    pub(crate) fn malformed(&self, name: &str) -> ErrorKind {
        ErrorKind::Name {
            what: self.what,
            name: name.to_owned(),
        }
    }
}

/// `[a-z0-9_-]{1,32}`: safe as a metrics label value and in a log line, unquoted.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn geo(raw: RawGeo, d: &mut Diagnostics) -> GeoRules {
    let unknown = match raw.unknown {
        Field::Invalid => None,
        ref u => Some(u.value_or(UnknownCountry::default())),
    };

    let mut blocked = BTreeSet::new();
    match &raw.block {
        Field::Present(codes) => {
            for code in codes.get_ref() {
                match CountryCode::parse(code.get_ref()) {
                    Some(c) => {
                        blocked.insert(c);
                    }
                    None => {
                        let kind = ErrorKind::CountryCode {
                            code: code.get_ref().clone(),
                        };
                        d.at(&code.span(), kind);
                    }
                }
            }
            if codes.get_ref().is_empty() && unknown == Some(UnknownCountry::Pass) {
                d.at(&codes.span(), ErrorKind::GeoBlocksNothing);
            }
        }
        Field::Absent if unknown == Some(UnknownCountry::Pass) => {
            d.at(&raw.header, ErrorKind::GeoBlocksNothing);
        }
        Field::Absent | Field::Invalid => {}
    }

    let networks = raw
        .database
        .as_ref()
        .and_then(|db| {
            let path = resolve("geo.database", db, d)?;
            load_country_networks(&path)
                .map_err(|e| d.at(&db.span(), ErrorKind::Geo(e.to_string())))
                .ok()
        })
        .unwrap_or_default();

    GeoRules {
        mode: raw.mode.value_or(Mode::default()),
        blocked,
        unknown: unknown.unwrap_or_default(),
        networks,
    }
}

fn log(raw: RawLog) -> LogConfig {
    let defaults = LogConfig::default();
    LogConfig {
        level: raw.level.value_or(defaults.level),
        format: raw.format.value_or(defaults.format),
    }
}
