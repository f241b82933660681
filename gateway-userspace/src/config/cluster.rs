//! `[cluster]`: the Redis that gateways share rate limits, quotas and bans through. Compiled
//! into a [`ClusterConfig`] for [`crate::cluster::Cluster::start`].
//!
//! Nothing here connects: the address is checked for form (a name is resolved at each connect,
//! so a Redis that moves is followed), and the password file is named, not read (it is read at
//! each connect, so a rotated password is picked up without a reload, and `check` works on a
//! machine that does not hold the secret).

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use toml::Spanned;

use super::compile::resolve;
use super::duration;
use super::error::ErrorKind;
use super::reader::{Field, Keyword, Table};
use super::source::{Diagnostics, Span};

/// What a feature does when Redis cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Carry on with this gateway's own state (local limits, local bans).
    #[default]
    Open,
    /// Refuse what needs the shared state.
    Closed,
}

impl FailMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl Keyword for FailMode {
    const WORDS: &'static [(&'static str, Self)] =
        &[("open", Self::Open), ("closed", Self::Closed)];
}

/// Where the Redis password comes from. Both may be given: the variable wins when it is set
/// and not empty, else the file is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordSource {
    /// An environment variable holding the password.
    pub env: Option<String>,
    /// A file holding the password (one trailing newline ignored).
    pub file: Option<PathBuf>,
}

/// `[cluster.tls]`: TLS to Redis, the server verified against a CA bundle (never optional),
/// with the gateway's client certificate when Redis requires one (`tls-auth-clients yes`).
#[derive(Clone, Debug)]
pub struct ClusterTls(pub super::UpstreamTls);

/// Two TLS settings are the same when they trust the same roots, check the same name and
/// present the same certificate: a reload that changes any of them reconnects.
impl PartialEq for ClusterTls {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        fn identity(t: &super::UpstreamTls) -> Option<(&[CertificateDer<'static>], &[u8])> {
            t.client_identity
                .as_ref()
                .map(|i| (i.chain.as_slice(), i.key.secret_der()))
        }
        a.roots.roots == b.roots.roots
            && a.server_name == b.server_name
            && identity(a) == identity(b)
    }
}

impl Eq for ClusterTls {}

/// `[cluster]`, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `host:port`; a name is resolved at each connect.
    pub redis: String,
    /// `None`: plain TCP.
    pub tls: Option<ClusterTls>,
    /// The ACL user for `AUTH`; `None` authenticates as the default user.
    pub username: Option<String>,
    /// `None`: no `AUTH`.
    pub password: Option<PasswordSource>,
    /// Prepended to every key and to the ban channel, so several deployments can share a
    /// Redis.
    pub key_prefix: String,
    /// Each call's limit, from asking to answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// First pause before reconnecting; doubles up to `reconnect_backoff_max`.
    pub reconnect_backoff: Duration,
    pub reconnect_backoff_max: Duration,
    pub rate_limits: FailMode,
    pub quotas: FailMode,
    pub bans: FailMode,
}

impl ClusterConfig {
    pub const DEFAULT_KEY_PREFIX: &'static str = "portcullis:";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
    pub const DEFAULT_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
    pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(600);

    /// Every default, for `redis` (`host:port`).
    pub fn new(redis: impl Into<String>) -> Self {
        Self {
            redis: redis.into(),
            tls: None,
            username: None,
            password: None,
            key_prefix: Self::DEFAULT_KEY_PREFIX.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            reconnect_backoff: Self::DEFAULT_RECONNECT_BACKOFF,
            reconnect_backoff_max: Self::DEFAULT_RECONNECT_BACKOFF_MAX,
            rate_limits: FailMode::Open,
            quotas: FailMode::Open,
            bans: FailMode::Open,
        }
    }
}

/// `[cluster]` as written.
pub(crate) struct RawCluster {
    pub header: Span,
    pub redis: Option<Spanned<String>>,
    pub username: Field<String>,
    pub password_env: Field<String>,
    pub password_file: Field<String>,
    pub key_prefix: Field<String>,
    pub timeout: Field<String>,
    pub connect_timeout: Field<String>,
    pub reconnect_backoff: Field<String>,
    pub reconnect_backoff_max: Field<String>,
    pub rate_limits: Field<FailMode>,
    pub quotas: Field<FailMode>,
    pub bans: Field<FailMode>,
    pub tls: Option<super::proxy_raw::RawPoolTls>,
}

impl RawCluster {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            redis: t.required("redis", d),
            username: t.value("username", d),
            password_env: t.value("password_env", d),
            password_file: t.value("password_file", d),
            key_prefix: t.value("key_prefix", d),
            timeout: t.value("timeout", d),
            connect_timeout: t.value("connect_timeout", d),
            reconnect_backoff: t.value("reconnect_backoff", d),
            reconnect_backoff_max: t.value("reconnect_backoff_max", d),
            rate_limits: t.keyword("rate_limits", d),
            quotas: t.keyword("quotas", d),
            bans: t.keyword("bans", d),
            tls: t
                .table("tls", d)
                .read_optional(d, super::proxy_raw::RawPoolTls::read),
        };
        t.finish(d);
        raw
    }
}

/// Compiles `[cluster]`; `None` when absent (no cluster mode) or when it had errors.
pub(crate) fn compile(raw: Option<RawCluster>, d: &mut Diagnostics) -> Option<ClusterConfig> {
    let raw = raw?;
    let errors_before = d.error_count();
    let defaults = ClusterConfig::new("");

    let redis = match &raw.redis {
        Some(address) => {
            if let Err(reason) = check_address(address.get_ref()) {
                invalid(d, "cluster.redis", address, reason);
            }
            address.get_ref().clone()
        }
        None => String::new(),
    };

    let username = raw.username.present().and_then(|u| {
        let name = u.get_ref();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            invalid(
                d,
                "cluster.username",
                u,
                "must be a non-empty name without spaces",
            );
            None
        } else {
            Some(name.clone())
        }
    });

    let env = raw.password_env.present().and_then(|v| {
        let name = v.get_ref();
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Some(name.clone())
        } else {
            let reason = "not an environment variable name (letters, digits and `_`, not \
                          starting with a digit)";
            invalid(d, "cluster.password_env", v, reason);
            None
        }
    });
    let file = raw
        .password_file
        .present()
        .and_then(|f| resolve("cluster.password_file", f, d));
    let password = (env.is_some() || file.is_some()).then_some(PasswordSource { env, file });
    if let (Some(u), None) = (raw.username.present(), &password) {
        let reason = "a user needs a password: set `password_env` or `password_file`";
        invalid(d, "cluster.username", u, reason);
    }

    let key_prefix = match raw.key_prefix.present() {
        Some(p) => {
            let text = p.get_ref();
            if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_graphic()) {
                let reason = "at most 64 printable ASCII characters without spaces";
                invalid(d, "cluster.key_prefix", p, reason);
            }
            text.clone()
        }
        None => defaults.key_prefix.clone(),
    };

    let mut duration = |field: &Field<String>, key: &str, max: Duration, default: Duration| {
        let Some(s) = field.present() else {
            return default;
        };
        duration::parse_bounded(s.get_ref(), max).unwrap_or_else(|e| {
            let kind = ErrorKind::Duration {
                key: key.to_owned(),
                value: s.get_ref().clone(),
                reason: e.to_string(),
            };
            d.at(&s.span(), kind);
            default
        })
    };
    let timeout = duration(
        &raw.timeout,
        "cluster.timeout",
        ClusterConfig::MAX_TIMEOUT,
        defaults.timeout,
    );
    let connect_timeout = duration(
        &raw.connect_timeout,
        "cluster.connect_timeout",
        ClusterConfig::MAX_CONNECT_TIMEOUT,
        defaults.connect_timeout,
    );
    let reconnect_backoff = duration(
        &raw.reconnect_backoff,
        "cluster.reconnect_backoff",
        ClusterConfig::MAX_RECONNECT_BACKOFF,
        defaults.reconnect_backoff,
    );
    let reconnect_backoff_max = duration(
        &raw.reconnect_backoff_max,
        "cluster.reconnect_backoff_max",
        ClusterConfig::MAX_RECONNECT_BACKOFF,
        defaults.reconnect_backoff_max,
    );
    if reconnect_backoff_max < reconnect_backoff {
        let span = raw
            .reconnect_backoff_max
            .present()
            .or(raw.reconnect_backoff.present())
            .map_or_else(|| raw.header.clone(), Spanned::span);
        d.at(
            &span,
            ErrorKind::Invalid {
                key: "cluster.reconnect_backoff_max".into(),
                value: humantime::format_duration(reconnect_backoff_max).to_string(),
                reason: format!(
                    "must be at least `reconnect_backoff` ({})",
                    humantime::format_duration(reconnect_backoff)
                ),
            },
        );
    }

    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| super::proxy_compile::upstream_tls(t, "cluster.tls", d))
        .map(ClusterTls);
    let config = ClusterConfig {
        redis,
        tls,
        username,
        password,
        key_prefix,
        timeout,
        connect_timeout,
        reconnect_backoff,
        reconnect_backoff_max,
        rate_limits: raw.rate_limits.value_or(defaults.rate_limits),
        quotas: raw.quotas.value_or(defaults.quotas),
        bans: raw.bans.value_or(defaults.bans),
    };
    (d.error_count() == errors_before && raw.redis.is_some()).then_some(config)
}

fn invalid(d: &mut Diagnostics, key: &str, value: &Spanned<String>, reason: &str) {
    let kind = ErrorKind::Invalid {
        key: key.to_owned(),
        value: value.get_ref().clone(),
        reason: reason.to_owned(),
    };
    d.at(&value.span(), kind);
}

/// `host:port`, `a.b.c.d:port` or `[v6]:port`, with a port from 1 to 65535.
fn check_address(address: &str) -> Result<(), &'static str> {
    const FORM: &str = "expected `host:port`, `203.0.113.5:6379` or `[2001:db8::5]:6379`";
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return if socket.port() == 0 {
            Err("the port must be 1 to 65535")
        } else {
            Ok(())
        };
    }
    let (host, port) = address.rsplit_once(':').ok_or(FORM)?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("the port must be 1 to 65535"),
        Ok(_) => {}
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if name_ok { Ok(()) } else { Err(FORM) }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_str;

    fn load(section: &str) -> Result<Option<ClusterConfig>, String> {
        let text = format!("[kernel]\nenabled = false\n{section}");
        load_str(&text, Path::new("/etc/portcullis/p.toml"))
            .map(|c| c.cluster)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_means_no_cluster_mode() {
        assert_eq!(load(""), Ok(None));
    }

    #[test]
    fn defaults() {
        let c = load("[cluster]\nredis = \"127.0.0.1:6379\"\n")
            .expect("valid")
            .expect("present");
        assert_eq!(c, ClusterConfig::new("127.0.0.1:6379"));
    }

    #[test]
    fn every_key() {
        let c = load(
            "[cluster]\nredis = \"redis.internal:6380\"\nusername = \"gw\"\n\
             password_env = \"REDIS_PASSWORD\"\npassword_file = \"secrets/redis\"\n\
             key_prefix = \"prod:\"\ntimeout = \"20ms\"\nconnect_timeout = \"2s\"\n\
             reconnect_backoff = \"50ms\"\nreconnect_backoff_max = \"10s\"\n\
             rate_limits = \"closed\"\nquotas = \"closed\"\nbans = \"open\"\n",
        )
        .expect("valid")
        .expect("present");
        assert_eq!(c.redis, "redis.internal:6380");
        assert_eq!(c.username.as_deref(), Some("gw"));
        assert_eq!(
            c.password,
            Some(PasswordSource {
                env: Some("REDIS_PASSWORD".into()),
                file: Some("/etc/portcullis/secrets/redis".into()),
            })
        );
        assert_eq!(c.key_prefix, "prod:");
        assert_eq!(c.timeout, Duration::from_millis(20));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.reconnect_backoff, Duration::from_millis(50));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(10));
        assert_eq!(
            (c.rate_limits, c.quotas, c.bans),
            (FailMode::Closed, FailMode::Closed, FailMode::Open)
        );
    }

    #[test]
    fn errors_are_located_and_all_reported() {
        let e = load(
            "[cluster]\nredis = \"localhost\"\nusername = \"gw\"\npassword_env = \"1X\"\n\
             timeout = \"0s\"\nrate_limits = \"maybe\"\nreconnect_backoff = \"2s\"\n\
             reconnect_backoff_max = \"1s\"\nkey_prefix = \"a b\"\ncolour = 1\n",
        )
        .expect_err("invalid");
        for expected in [
            "p.toml:4:9: error: `cluster.redis`: invalid value `localhost`",
            "p.toml:5:12: error: `cluster.username`: invalid value `gw`: a user needs a password",
            "p.toml:6:16: error: `cluster.password_env`: invalid value `1X`",
            "p.toml:7:11: error: `cluster.timeout`: invalid duration `0s`",
            "`cluster.rate_limits`: unknown value `maybe`",
            "p.toml:10:25: error: `cluster.reconnect_backoff_max`",
            "p.toml:11:14: error: `cluster.key_prefix`: invalid value `a b`",
            "colour",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
        let missing = load("[cluster]\ntimeout = \"10ms\"\n").expect_err("no redis");
        assert!(
            missing.contains("missing required key `redis` in [cluster]"),
            "{missing}"
        );
    }

    #[test]
    fn addresses() {
        for good in [
            "127.0.0.1:6379",
            "[::1]:6379",
            "redis:6379",
            "a-b.example.com:1",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "redis",
            ":6379",
            "redis:0",
            "redis:65536",
            "a b:1",
            "[::1]",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }
}
