//! Configuration: the TOML file read into raw sections (`raw`, through the spanned-tree walker
//! in `reader`), then compiled (`compile`) into a validated [`Config`] with every referenced
//! file read. It does not apply a config; the kernel and proxy modules do that.
//!
//! [`load`] is the one entry point: `portcullis check` and `portcullis run` both call exactly it,
//! so "check passes" means "run will not fail on config". It reports every error it can find
//! in one run, each as `path:line:col: error: message`; see `docs/configuration.md`.

mod api_keys;
mod client_certs;
mod compile;
mod duration;
mod error;
mod model;
mod proxy_compile;
mod proxy_model;
mod proxy_raw;
mod raw;
mod reader;
mod routes;
mod schema;
mod size;
pub(crate) mod source;
mod tls_files;
mod token;

use std::path::Path;

use toml::de::DeTable;

pub use error::{ConfigError, ConfigErrors, ErrorKind, Location};
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
    let raw = raw::RawConfig::read(doc.get_ref(), &mut d);
    let config = compile::compile(raw, &mut d);
    d.finish(config)
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
