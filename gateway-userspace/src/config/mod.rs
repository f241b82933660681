//! Configuration: the TOML file read into raw sections (`raw`, through the spanned-tree walker
//! in `reader`), then compiled (`compile`) into a validated [`Config`] with every referenced
//! file read. It does not apply a config; the kernel and proxy modules do that.
//!
//! [`load`] is the one entry point: `portcullis check` and `portcullis run` both call exactly it,
//! so "check passes" means "run will not fail on config". It reports every error it can find
//! in one run, each as `path:line:col: error: message`; see `docs/configuration.md`.

mod abuse;
mod api_keys;
mod backend_auth;
mod client_certs;
mod cluster;
mod compile;
mod cors;
mod duration;
mod error;
mod limits;
mod model;
mod proxy_compile;
mod proxy_model;
mod proxy_raw;
mod raw;
mod reader;
mod response;
mod routes;
mod schema;
mod size;
pub(crate) mod source;
mod tls_files;
mod token;
mod validation;

use std::path::Path;

use toml::de::DeTable;

pub use abuse::{AbuseConfig, AbuseKind, AbuseRule, Escalation};
pub use cluster::{ClusterConfig, ClusterTls, FailMode, PasswordSource};
pub use error::{ConfigError, ConfigErrors, ErrorKind, Location};
pub use limits::{
    HeaderStyle, KeyPart, KeySpec, LimitScope, LimitsConfig, Period, QuotaSpec, QuotaTier,
    RateLimitSpec, RateTier, RouteLimits,
};
pub use model::{AttachMode, Config, KernelConfig, LogConfig, LogFormat, LogLevel};
pub use proxy_model::*;
pub use schema::json_schema;
pub use size::SizeError;
pub use tls_files::TlsFileError;

use source::{Diagnostics, SourceFile};

/// Reads, parses and compiles the config file at `path`. Relative paths inside it resolve
/// against its directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read(path) {
        Ok(bytes) => load_bytes(&bytes, path),
        Err(e) => Err(ConfigErrors::new(vec![ConfigError {
            location: Location {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
            },
            kind: ErrorKind::ReadConfig(e.to_string()),
        }])),
    }
}

/// Parses and compiles config text as if read from `path` (used for messages and to resolve
/// relative paths; the file itself is not read).
pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let source = SourceFile::new(path, text);
    let mut d = Diagnostics::new(&source);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    // Recovery after a syntax error is a guess, and the errors after the first are often its
    // echoes (one unclosed bracket yields several): report the first, by position, and stop.
    if let Some(first) = syntax_errors
        .iter()
        .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
    {
        let span = first.span().unwrap_or(0..0);
        d.at(&span, ErrorKind::Syntax(first.message().to_owned()));
        return Err(d.into_errors());
    }
    // `[abuse]` is taken out before the other sections are read and compiled on its own (the
    // raw top-level reader is shared with other tools and does not know it), then lands in
    // `Config::abuse`; it is read and checked like any other section.
    let mut doc = doc;
    let mut abuse_only = DeTable::new();
    if let Some((key, value)) = doc.get_mut().remove_entry("abuse") {
        abuse_only.insert(key, value);
    }
    let raw_abuse = reader::Table::root(&abuse_only)
        .table("abuse", &mut d)
        .read_or_default(&mut d, abuse::RawAbuse::read);
    let raw = raw::RawConfig::read(doc.get_ref(), &mut d);
    let abuse = abuse::compile(raw_abuse, &mut d);
    let config = compile::compile(raw, abuse, &mut d);
    d.finish(config).map_err(top_level_knows_abuse)
}

/// The top-level reader never saw `abuse` (it was taken out first): put it back among the keys
/// an unknown top-level key is compared with, so `[abuze]` still suggests `[abuse]`.
fn top_level_knows_abuse(errors: ConfigErrors) -> ConfigErrors {
    let fixed = errors
        .iter()
        .cloned()
        .map(|mut e| {
            if let ErrorKind::UnknownKey {
                key,
                table,
                suggestion,
                expected,
            } = &mut e.kind
                && table == "the top level"
                && !expected.contains(&"abuse")
            {
                expected.push("abuse");
                *suggestion = reader::closest(key, expected.iter().copied());
            }
            e
        })
        .collect();
    ConfigErrors::new(fixed)
}

/// Config bytes: TOML must be UTF-8, so bad bytes are an error located at the first of them.
fn load_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigErrors> {
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str(text, path),
        Err(e) => {
            let valid = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
            let source = SourceFile::new(path, &valid);
            let mut d = Diagnostics::new(&source);
            d.at(&(valid.len()..valid.len()), ErrorKind::NotUtf8);
            Err(d.into_errors())
        }
    }
}

#[cfg(test)]
mod tests;
