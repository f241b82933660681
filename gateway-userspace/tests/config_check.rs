//! What `portcullis check` prints for representative broken configs, as exact text, and what a
//! valid config compiles to. Each test writes its files into a fresh temporary directory; paths
//! in the output are shown as `$DIR/...` so the expected text is stable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::config::{AttachMode, Config, LogFormat, LogLevel, load};
use portcullis::identity::api_keys::hash_key;
use portcullis::rules::{DenySet, Mode, Prefix};

/// A temporary directory holding a config and the files it references.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write fixture file");
        path
    }

    fn load(&self, config: &str) -> Result<Config, String> {
        let path = self.file("portcullis.toml", config);
        load(&path).map_err(|errors| {
            errors
                .to_string()
                .replace(&self.dir.path().display().to_string(), "$DIR")
        })
    }

    /// The rendered errors of `config`; fails if it loads.
    fn check(&self, config: &str) -> String {
        match self.load(config) {
            Ok(c) => panic!("expected errors, loaded {c:?}"),
            Err(e) => e,
        }
    }
}

/// The smallest valid start of a config: the kernel layer needs an interface.
const KERNEL: &str = "[kernel]\ninterfaces = [\"eth0\"]\n";

fn prefixes(list: &[&str]) -> Vec<Prefix> {
    list.iter()
        .map(|s| Prefix::parse_strict(s).expect("test prefix"))
        .collect()
}

#[test]
fn unknown_key_at_the_top_level() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!("{KERNEL}[alow]\ncidrs = [\"10.0.0.0/8\"]\n")),
        "$DIR/portcullis.toml:3:2: error: unknown key `alow` in the top level; did you mean `allow`?"
    );
}

#[test]
fn unknown_key_nested() {
    let f = Fixture::new();
    assert_eq!(
        f.check("[kernel]\ninterfaces = [\"eth0\"]\nattach = \"native\"\n"),
        "$DIR/portcullis.toml:3:1: error: unknown key `attach` in [kernel]; expected one of: enabled, \
         interfaces, attach_mode, pin_root, ban_sweep_interval"
    );
}

#[test]
fn bad_cidr_in_the_config() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[allow]\ncidrs = [\"10.0.0.0/8\", \"10.0.0.256/32\"]\n"
        )),
        "$DIR/portcullis.toml:4:24: error: `10.0.0.256/32` is not an IP address or CIDR prefix"
    );
}

#[test]
fn host_bits_set() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[[deny]]\nname = \"x\"\ncidrs = [\"192.0.2.1/24\"]\n"
        )),
        "$DIR/portcullis.toml:5:10: error: `192.0.2.1/24` has bits set past its prefix length; did \
         you mean `192.0.2.0/24`?"
    );
}

#[test]
fn bad_cidrs_in_an_included_file_name_that_file() {
    let f = Fixture::new();
    f.file(
        "deny.txt",
        "# comment\r\n192.0.2.0/24\r\n   198.51.100.7/16   # typo\r\n\r\n2001:db8::/129\r\n",
    );
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[[deny]]\nname = \"list\"\nfiles = [\"deny.txt\"]\n"
        )),
        "$DIR/deny.txt:3:4: error: `198.51.100.7/16` has bits set past its prefix length; did you \
         mean `198.51.0.0/16`?\n\
         $DIR/deny.txt:5:1: error: prefix length 129 is longer than 128 for this address family"
    );
}

#[test]
fn non_utf8_included_file() {
    let f = Fixture::new();
    f.file("mgmt.txt", b"10.0.0.0/8\n10.1.0.0/16 # caf\xe9\n");
    assert_eq!(
        f.check(&format!("{KERNEL}[allow]\nfiles = [\"mgmt.txt\"]\n")),
        "$DIR/mgmt.txt:2:18: error: line is not valid UTF-8"
    );
}

#[test]
fn missing_included_file() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!("{KERNEL}[allow]\nfiles = [\"nope.txt\"]\n")),
        "$DIR/portcullis.toml:4:10: error: cannot read `$DIR/nope.txt`: No such file or directory \
         (os error 2)"
    );
}

#[test]
fn duplicate_deny_name() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[[deny]]\nname = \"bogons\"\n\n[[deny]]\nname = \"bogons\"\nmode = \"report\"\n"
        )),
        "$DIR/portcullis.toml:7:8: error: duplicate deny set name `bogons` (first used on line 4)"
    );
}

#[test]
fn bad_country_code() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[geo]\ndatabase = \"c.mmdb\"\nblock = [\"RU\", \"Russia\"]\n"
        )),
        "$DIR/portcullis.toml:4:12: error: cannot read geo database $DIR/c.mmdb: No such file or \
         directory (os error 2)\n\
         $DIR/portcullis.toml:5:16: error: `Russia` is not an ISO 3166-1 alpha-2 country code (two \
         letters, such as `RU`)"
    );
}

#[test]
fn missing_geo_database() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[geo]\ndatabase = \"GeoLite2-Country.mmdb\"\nblock = [\"KP\"]\n"
        )),
        "$DIR/portcullis.toml:4:12: error: cannot read geo database $DIR/GeoLite2-Country.mmdb: No \
         such file or directory (os error 2)"
    );
}

#[test]
fn garbage_geo_database() {
    let f = Fixture::new();
    f.file(
        "countries.mmdb",
        "this is not a MaxMind database\n".repeat(10),
    );
    // The reason after the last colon is the maxminddb crate's; the rest is ours.
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[geo]\ndatabase = \"countries.mmdb\"\nblock = [\"KP\"]\n"
        )),
        "$DIR/portcullis.toml:4:12: error: geo database $DIR/countries.mmdb is not a valid MaxMind \
         DB file: invalid database: could not find MaxMind DB metadata in file"
    );
}

#[test]
fn bad_mode_string() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{KERNEL}[[deny]]\nname = \"x\"\nmode = \"audit\"\n"
        )),
        "$DIR/portcullis.toml:5:8: error: `deny.mode`: unknown value `audit`; expected one of: \
         enforce, report"
    );
}

#[test]
fn bad_duration() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!("{KERNEL}ban_sweep_interval = \"10 parsecs\"\n")),
        "$DIR/portcullis.toml:3:22: error: `kernel.ban_sweep_interval`: invalid duration `10 \
         parsecs`: unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, \
         days, weeks, months, years (and few variations)"
    );
}

#[test]
fn interfaces_missing_while_enabled() {
    let f = Fixture::new();
    assert_eq!(
        f.check("[kernel]\nenabled = true\n"),
        "$DIR/portcullis.toml:1:1: error: no interface to attach to: list at least one in \
         `kernel.interfaces`, or set `kernel.enabled = false`"
    );
}

#[test]
fn toml_syntax_error() {
    let f = Fixture::new();
    assert_eq!(
        f.check("[kernel]\ninterfaces = [\"eth0\"]\n[[deny]\nname = \"x\"\n"),
        "$DIR/portcullis.toml:3:8: error: invalid TOML: unclosed array table, expected `]`"
    );
}

#[test]
fn every_error_at_once_sorted_by_file_then_position() {
    let f = Fixture::new();
    f.file("deny.txt", "192.0.2.0/24\nnot-a-prefix\n");
    let config = r#"[kernel]
enabled = true
interfacs = ["eth0"]
attach_mode = "turbo"
ban_sweep_interval = "0s"

[allow]
cidrs = ["10.0.0.0/8", "10.0.0.1/8"]

[[deny]]
name = "Bogons!"
files = ["deny.txt", "missing.txt"]
colour = "red"

[geo]
database = "none.mmdb"
block = ["XYZ"]

[log]
level = "loud"
"#;
    assert_eq!(
        f.check(config),
        "$DIR/deny.txt:2:1: error: `not-a-prefix` is not an IP address or CIDR prefix\n\
         $DIR/portcullis.toml:1:1: error: no interface to attach to: list at least one in \
         `kernel.interfaces`, or set `kernel.enabled = false`\n\
         $DIR/portcullis.toml:3:1: error: unknown key `interfacs` in [kernel]; did you mean `interfaces`?\n\
         $DIR/portcullis.toml:4:15: error: `kernel.attach_mode`: unknown value `turbo`; expected one \
         of: auto, native, generic\n\
         $DIR/portcullis.toml:5:22: error: `kernel.ban_sweep_interval`: invalid duration `0s`: must be \
         greater than zero\n\
         $DIR/portcullis.toml:8:24: error: `10.0.0.1/8` has bits set past its prefix length; did you \
         mean `10.0.0.0/8`?\n\
         $DIR/portcullis.toml:11:8: error: invalid deny set name `Bogons!`: use 1 to 32 characters \
         from a-z, 0-9, `_` and `-`\n\
         $DIR/portcullis.toml:12:22: error: cannot read `$DIR/missing.txt`: No such file or directory \
         (os error 2)\n\
         $DIR/portcullis.toml:13:1: error: unknown key `colour` in [[deny]]; expected one of: name, \
         mode, cidrs, files\n\
         $DIR/portcullis.toml:16:12: error: cannot read geo database $DIR/none.mmdb: No such file or \
         directory (os error 2)\n\
         $DIR/portcullis.toml:17:10: error: `XYZ` is not an ISO 3166-1 alpha-2 country code (two \
         letters, such as `RU`)\n\
         $DIR/portcullis.toml:20:9: error: `log.level`: unknown value `loud`; expected one of: trace, \
         debug, info, warn, error"
    );
}

#[test]
fn a_valid_config_compiles_to_what_it_says() {
    let f = Fixture::new();
    f.file("mgmt.txt", "# ops\n10.20.0.0/16\nfd00:20::/32 # ops v6\n");
    f.file("bogons.txt", "192.0.2.0/24\r\n2001:db8::/32\r\n");
    let config = r#"
[kernel]
enabled = true
interfaces = ["eth0", "eth1"]
attach_mode = "native"
pin_root = "/sys/fs/bpf/pc-test"
ban_sweep_interval = "30s"

[allow]
cidrs = ["10.0.0.0/16"]
files = ["mgmt.txt"]

[[deny]]
name = "bogons"
files = ["bogons.txt"]
cidrs = ["0.0.0.0/8"]

[[deny]]
name = "trial"
mode = "report"
cidrs = ["::ffff:198.51.100.0/120", "203.0.113.9"]

[[deny]]
name = "empty"

[log]
level = "warn"
format = "text"
"#;
    let c = f.load(config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source, f.dir.path().join("portcullis.toml"));
    assert!(c.kernel.enabled);
    assert_eq!(c.kernel.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.kernel.attach_mode, AttachMode::Native);
    assert_eq!(c.kernel.pin_root, Path::new("/sys/fs/bpf/pc-test"));
    assert_eq!(c.kernel.ban_sweep_interval, Duration::from_secs(30));
    assert_eq!(
        c.rules.allow,
        prefixes(&["10.0.0.0/16", "10.20.0.0/16", "fd00:20::/32"])
    );
    assert_eq!(
        c.rules.deny,
        [
            DenySet {
                name: "bogons".into(),
                mode: Mode::Enforce,
                // Inline CIDRs first, then files.
                prefixes: prefixes(&["0.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]),
            },
            DenySet {
                name: "trial".into(),
                mode: Mode::Report,
                // The IPv4-mapped prefix is judged as IPv4.
                prefixes: prefixes(&["198.51.100.0/24", "203.0.113.9/32"]),
            },
            DenySet {
                name: "empty".into(),
                mode: Mode::Enforce,
                prefixes: vec![],
            },
        ]
    );
    assert_eq!(c.rules.geo, None);
    assert_eq!(c.log.level, LogLevel::Warn);
    assert_eq!(c.log.format, LogFormat::Text);
}

/// Geo settings other than the database are checked even though no test database is used:
/// this asserts only what is read, through the error path of a missing database.
#[test]
fn geo_settings_are_checked_alongside_a_database_error() {
    let f = Fixture::new();
    let e = f.check(&format!(
        "{KERNEL}[geo]\ndatabase = \"x.mmdb\"\nblock = [\"ru\"]\nunknown = \"drop\"\nmode = \"report\"\n"
    ));
    assert_eq!(
        e,
        "$DIR/portcullis.toml:4:12: error: cannot read geo database $DIR/x.mmdb: No such file or \
         directory (os error 2)\n\
         $DIR/portcullis.toml:6:11: error: `geo.unknown`: unknown value `drop`; expected one of: pass, block"
    );
}

// ---------------------------------------------------------------------------------------------
// The proxy sections. Certificates are generated per test with rcgen, never committed.

/// A proxy-only start: the kernel layer off, so no interface is needed.
const USERSPACE: &str = "[kernel]\nenabled = false\n";

impl Fixture {
    /// A self-signed certificate for `names` and its key, written as `certs/<stem>.pem` and
    /// `certs/<stem>-key.pem`.
    fn cert(&self, stem: &str, names: &[&str]) {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("generate certificate");
        std::fs::create_dir_all(self.dir.path().join("certs")).expect("mkdir certs");
        self.file(&format!("certs/{stem}.pem"), cert.pem());
        self.file(
            &format!("certs/{stem}-key.pem"),
            signing_key.serialize_pem(),
        );
    }
}

/// An https listener using `certs/api.pem`, a pool and a route: the base most cases vary.
fn https_listener(cert: &str, key: &str) -> String {
    format!(
        "{USERSPACE}\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8443\"\nprotocol = \"https\"\n\
         [listeners.tls]\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n"
    )
}

const POOL: &str = "\n[[pools]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n";

#[test]
fn unknown_keys_in_listeners_and_listener_tls() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    let config = format!(
        "{USERSPACE}[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8443\"\nprotocol = \"https\"\n\
         max_conections = 10\n[listeners.tls]\ncertificates = [{{ cert = \"certs/api.pem\", key = \
         \"certs/api-key.pem\" }}]\nmin_verison = \"1.3\"\nciphers = [\"x\"]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:7:1: error: unknown key `max_conections` in [[listeners]]; did you \
         mean `max_connections`?\n\
         $DIR/portcullis.toml:10:1: error: unknown key `min_verison` in [listeners.tls]; did you \
         mean `min_version`?\n\
         $DIR/portcullis.toml:11:1: error: unknown key `ciphers` in [listeners.tls]; expected one \
         of: certificates, min_version, alpn, hsts"
    );
}

#[test]
fn unknown_pool_reference_with_suggestion() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"orders\"\npath = \"/orders\"\npool = \"apii\"\n\n\
         [[routes]]\nname = \"users\"\npath = \"/users\"\npool = \"accounts\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:11:8: error: unknown pool `apii`; did you mean `api`?\n\
         $DIR/portcullis.toml:16:8: error: unknown pool `accounts`; defined pools: api"
    );
}

#[test]
fn duplicate_listener_bind() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:8080\"\nprotocol = \"http\"\n\n\
         [[listeners]]\nname = \"b\"\nbind = \"0.0.0.0:8080\"\nprotocol = \"http\"\n\n\
         [[listeners]]\nname = \"c\"\nbind = \"10.0.0.1:8080\"\nprotocol = \"http\"\n\n\
         [[listeners]]\nname = \"d\"\nbind = \"127.0.0.1:9901\"\nprotocol = \"http\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:10:8: error: bind address 0.0.0.0:8080 is already used by listener \
         `a` (line 5)\n\
         $DIR/portcullis.toml:15:8: error: bind address 10.0.0.1:8080 overlaps 0.0.0.0:8080, bound \
         by listener `a` (line 5)\n\
         $DIR/portcullis.toml:20:8: error: bind address 127.0.0.1:9901 is already used by the admin \
         endpoint (the default `admin.listen = \"127.0.0.1:9901\"`)"
    );
}

#[test]
fn https_listener_without_tls() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}\n[[listeners]]\nname = \"public\"\nbind = \"0.0.0.0:8443\"\nprotocol = \"https\"\n\
         http_mode = \"serve\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:4:1: error: https listener `public` needs a [listeners.tls] section \
         with its certificates\n\
         $DIR/portcullis.toml:8:13: error: `listeners.http_mode` applies only to `protocol = \
         \"http\"` listeners"
    );
}

#[test]
fn tls_on_an_http_listener() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    let config = format!(
        "{USERSPACE}\n[[listeners]]\nname = \"plain\"\nbind = \"0.0.0.0:8080\"\nprotocol = \"http\"\n\
         http_mode = \"serve\"\nredirect_port = 8443\n\n[listeners.tls]\ncertificates = [{{ cert = \
         \"certs/api.pem\", key = \"certs/api-key.pem\" }}]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:9:17: error: `listeners.redirect_port` applies only with `http_mode = \
         \"redirect\"`\n\
         $DIR/portcullis.toml:11:1: error: `listeners.tls` applies only to `protocol = \"https\"` \
         listeners"
    );
}

#[test]
fn missing_certificate_file() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&https_listener("certs/api.pem", "certs/api-key.pem")),
        "$DIR/portcullis.toml:9:26: error: cannot read $DIR/certs/api.pem: No such file or \
         directory (os error 2)\n\
         $DIR/portcullis.toml:9:49: error: cannot read $DIR/certs/api-key.pem: No such file or \
         directory (os error 2)"
    );
}

#[test]
fn certificate_file_without_a_certificate() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    // The key file named as the certificate, and a certificate as the key.
    assert_eq!(
        f.check(&https_listener("certs/api-key.pem", "certs/api.pem")),
        "$DIR/portcullis.toml:9:26: error: $DIR/certs/api-key.pem: no certificate found\n\
         $DIR/portcullis.toml:9:53: error: $DIR/certs/api.pem: no private key found"
    );
    f.file("certs/broken.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    f.file(
        "certs/locked-key.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    assert_eq!(
        f.check(&https_listener("certs/broken.pem", "certs/locked-key.pem")),
        "$DIR/portcullis.toml:9:26: error: $DIR/certs/broken.pem: invalid PEM: a section has no \
         END line\n\
         $DIR/portcullis.toml:9:52: error: $DIR/certs/locked-key.pem: no private key found \
         (encrypted keys are not supported; decrypt it first)"
    );
}

#[test]
fn key_not_matching_its_certificate() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    f.cert("other", &["other.example.com"]);
    assert_eq!(
        f.check(&https_listener("certs/api.pem", "certs/other-key.pem")),
        "$DIR/portcullis.toml:9:49: error: key $DIR/certs/other-key.pem does not match certificate \
         $DIR/certs/api.pem"
    );
}

#[test]
fn bad_size_strings() {
    let f = Fixture::new();
    let route = |size: &str| {
        format!(
            "\n[[routes]]\nname = \"r{}\"\npath = \"/{}\"\npool = \"api\"\nmax_body_size = {size}\n",
            size.len(),
            size.len()
        )
    };
    let config = format!(
        "{USERSPACE}{POOL}{}{}{}",
        route("\"10 parsecs\""),
        route("-1"),
        route("\"1.5MiB\""),
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:12:17: error: `routes.max_body_size`: invalid size `10 parsecs`: write \
         a whole number and a unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of \
         1024), such as \"10MiB\"\n\
         $DIR/portcullis.toml:18:17: error: `routes.max_body_size`: invalid size `-1`: it must not \
         be negative\n\
         $DIR/portcullis.toml:24:17: error: `routes.max_body_size`: invalid size `1.5MiB`: write a \
         whole number and a unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), \
         such as \"10MiB\""
    );
}

#[test]
fn bad_method_tokens() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"r\"\npath = \"/\"\npool = \"api\"\n\
         methods = [\"GET\", \"GE T\", \"get\", \"\", \"POST/1\"]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:12:19: error: `routes.methods`: `GE T` is not an HTTP method (a token \
         such as `GET`)\n\
         $DIR/portcullis.toml:12:27: error: `routes.methods`: `get` is listed more than once\n\
         $DIR/portcullis.toml:12:34: error: `routes.methods`: `` is not an HTTP method (a token such \
         as `GET`)\n\
         $DIR/portcullis.toml:12:38: error: `routes.methods`: `POST/1` is not an HTTP method (a \
         token such as `GET`)"
    );
}

#[test]
fn bad_host_patterns() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"r\"\npath = \"/\"\npool = \"api\"\n\
         hosts = [\"*.*.example.com\", \"api.example.com:443\", \"API.example.com\", \"api.example.com\"]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:12:10: error: `routes.hosts`: invalid host `*.*.example.com`: a \
         wildcard is allowed only as the whole leftmost label, as in `*.example.com`\n\
         $DIR/portcullis.toml:12:29: error: `routes.hosts`: invalid host `api.example.com:443`: \
         hosts are matched without a port; write `api.example.com`\n\
         $DIR/portcullis.toml:12:71: error: `routes.hosts`: `api.example.com` is listed more than once"
    );
}

#[test]
fn route_shadowing() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"orders\"\nhosts = [\"api.example.com\", \
         \"*.example.com\"]\npath = \"/orders\"\npool = \"api\"\n\n\
         [[routes]]\nname = \"orders-copy\"\nhosts = [\"*.example.com\", \"API.example.com\"]\n\
         path = \"/orders\"\nmethods = [\"GET\"]\npool = \"api\"\n\n\
         [[routes]]\nname = \"orders-exact\"\nhosts = [\"api.example.com\", \"*.example.com\"]\n\
         path = \"/orders\"\npath_match = \"exact\"\npool = \"api\"\n"
    );
    // `orders-exact` is a different match (exact path) and comes first in match order.
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:14:1: error: route `orders` (line 8) shadows route `orders-copy`: it \
         matches every request `orders-copy` would (same hosts and path, and its methods include \
         all of `orders-copy`'s), so `orders-copy` would never be used"
    );
}

#[test]
fn hsts_preload_without_include_subdomains() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    let config = format!(
        "{}[listeners.tls.hsts]\nmax_age = \"180d\"\npreload = true\n",
        https_listener("certs/api.pem", "certs/api-key.pem")
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:12:11: error: `listeners.tls.hsts.preload` requires \
         `include_subdomains = true` (the hstspreload.org rules)\n\
         $DIR/portcullis.toml:12:11: error: `listeners.tls.hsts.preload` requires a `max_age` of at \
         least 365 days (the hstspreload.org rules)"
    );
}

#[test]
fn admin_listen_not_loopback_without_allow_remote() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!("{USERSPACE}[admin]\nlisten = \"0.0.0.0:9901\"\n")),
        "$DIR/portcullis.toml:4:10: error: `admin.listen`: 0.0.0.0:9901 is not a loopback address, \
         so the admin endpoint (metrics, bans, reload) would be reachable from the network; set \
         `admin.allow_remote = true` if that is intended"
    );
    let c = f
        .load(&format!(
            "{USERSPACE}[admin]\nlisten = \"0.0.0.0:9901\"\nallow_remote = true\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.listen, Some("0.0.0.0:9901".parse().expect("addr")));
    let c = f
        .load(&format!("{USERSPACE}[admin]\nlisten = \"off\"\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.listen, None);
    assert_eq!(
        f.check(&format!(
            "{USERSPACE}[admin]\nlisten = \"localhost:9901\"\n"
        )),
        "$DIR/portcullis.toml:4:10: error: `admin.listen`: `localhost:9901` is not an IP address \
         and port such as `127.0.0.1:9901`, or `off`"
    );
}

#[test]
fn proxy_protocol_needs_trusted_load_balancers() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!(
            "{USERSPACE}[[listeners]]\nname = \"lb\"\nbind = \"0.0.0.0:8080\"\nprotocol = \"http\"\n\
             proxy_protocol = true\n"
        )),
        "$DIR/portcullis.toml:7:18: error: `listeners.proxy_protocol` is true but \
         `trusted_proxies.load_balancers` is empty: no peer may send a PROXY header, so every \
         connection would be closed"
    );
}

#[test]
fn pool_checks() {
    let f = Fixture::new();
    f.file("ca.pem", "not a certificate\n");
    let config = format!(
        "{USERSPACE}[[pools]]\nname = \"api\"\nendpoints = [\"127.0.0.1\", \"127.0.0.1:9001\", \
         \"127.0.0.1:9001\", \"http://x:1\"]\n\
         [pools.tls]\nca = \"ca.pem\"\nserver_name = \"bad name\"\n\
         [pools.health]\npath = \"healthz\"\ninterval = \"1s\"\ntimeout = \"2s\"\nhealthy_threshold = 0\n\
         [pools.passive]\nconsecutive_failures = -1\n\n[[pools]]\nname = \"empty\"\nendpoints = []\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:5:14: error: `pools.endpoints`: `127.0.0.1` is not a `host:port` \
         endpoint: no port\n\
         $DIR/portcullis.toml:5:45: error: `pools.endpoints`: `127.0.0.1:9001` is listed more than \
         once\n\
         $DIR/portcullis.toml:5:63: error: `pools.endpoints`: `http://x:1` is not a `host:port` \
         endpoint: write it without a scheme, as `host:port`\n\
         $DIR/portcullis.toml:7:6: error: $DIR/ca.pem: no certificate found\n\
         $DIR/portcullis.toml:8:15: error: `pools.tls.server_name`: `bad name` is not a valid DNS \
         name or IP address\n\
         $DIR/portcullis.toml:10:8: error: `pools.health.path`: invalid path `healthz`: it must start \
         with `/`\n\
         $DIR/portcullis.toml:12:11: error: `pools.health.timeout` (2s) must be shorter than \
         `pools.health.interval` (1s)\n\
         $DIR/portcullis.toml:13:21: error: `pools.health.healthy_threshold`: 0 is out of range; \
         expected 1 to 100\n\
         $DIR/portcullis.toml:15:24: error: `pools.passive.consecutive_failures`: -1 is out of range; \
         expected 0 to 1000\n\
         $DIR/portcullis.toml:19:13: error: `pools.endpoints` is empty: list at least one `host:port`"
    );
}

#[test]
fn unresolvable_endpoint_names_the_endpoint() {
    let f = Fixture::new();
    let e = f.check(&format!(
        "{USERSPACE}[[pools]]\nname = \"api\"\nendpoints = [\"portcullis-test.invalid:80\"]\n"
    ));
    // The reason after the colon is the resolver's.
    assert!(
        e.starts_with(
            "$DIR/portcullis.toml:5:14: error: cannot resolve `portcullis-test.invalid:80`: "
        ),
        "{e}"
    );
}

#[test]
fn a_valid_proxy_config_compiles_to_what_it_says() {
    use portcullis::config::{
        Balance, ClientIpHeader, HealthCheck, HostMatch, Hsts, ListenerKind, PassiveEjection,
        PathMatch, PlainMode, TlsVersion, UpstreamProtocol,
    };

    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    f.cert("www", &["www.example.com", "example.com"]);
    f.cert("ca", &["ca.internal"]);
    let config = r#"
[kernel]
enabled = false

[admin]
listen = "[::1]:9902"

[proxy]
drain_timeout = "45s"

[trusted_proxies]
load_balancers = ["10.0.0.0/8"]
proxies = ["10.1.0.0/16", "2001:db8::/32"]
client_ip_header = "forwarded"

[[listeners]]
name = "public"
bind = "0.0.0.0:8443"
protocol = "https"
proxy_protocol = true
max_connections = 500
handshake_timeout = "5s"
header_timeout = "3s"
idle_timeout = "2m"
[listeners.tls]
certificates = [
    { cert = "certs/api.pem", key = "certs/api-key.pem" },
    { cert = "certs/www.pem", key = "certs/www-key.pem" },
]
min_version = "1.3"
alpn = ["http/1.1"]
[listeners.tls.hsts]
max_age = "730d"
include_subdomains = true
preload = true

[[listeners]]
name = "plain"
bind = "[::]:8080"
protocol = "http"
redirect_port = 8443

[[listeners]]
name = "internal"
bind = "127.0.0.1:0"
protocol = "http"
http_mode = "serve"

[[pools]]
name = "api"
endpoints = ["127.0.0.1:9001", "[::1]:9002", "localhost:9003"]
balance = "least_outstanding"
protocol = "h2"
idle_timeout = "30s"
[pools.tls]
ca = "certs/ca.pem"
server_name = "api.internal"
[pools.health]
path = "/healthz?deep=1"
interval = "10s"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 5
[pools.passive]
consecutive_failures = 0
ejection_time = "1m"

[[pools]]
name = "web"
endpoints = ["127.0.0.1:9101"]

# Config order is deliberately not match order.
[[routes]]
name = "catch-all"
path = "/"
pool = "web"

[[routes]]
name = "orders"
product = "shop"
hosts = ["API.example.com", "*.example.com"]
path = "/orders"
methods = ["get", "POST"]
pool = "api"
retries = 0
max_body_size = "1MiB"
websocket = true
[routes.timeouts]
connect = "500ms"
response_headers = "10s"
total = "10s"

[[routes]]
name = "wild"
hosts = ["*.example.com"]
path = "/"
pool = "web"

[[routes]]
name = "orders-v1"
hosts = ["api.example.com"]
path = "/orders/v1"
pool = "api"
max_body_size = 2048

[[routes]]
name = "status"
path = "/status"
path_match = "exact"
pool = "api"
"#;
    let c = f.load(config).unwrap_or_else(|e| panic!("{e}"));
    let p = &c.proxy;
    assert_eq!(c.admin.listen, Some("[::1]:9902".parse().expect("addr")));
    assert_eq!(p.drain_timeout, Duration::from_secs(45));
    assert_eq!(p.trusted.load_balancers, prefixes(&["10.0.0.0/8"]));
    assert_eq!(
        p.trusted.proxies,
        prefixes(&["10.1.0.0/16", "2001:db8::/32"])
    );
    assert_eq!(p.trusted.client_ip_header, ClientIpHeader::Forwarded);

    assert_eq!(p.listeners.len(), 3);
    let public = &p.listeners[0];
    assert_eq!(public.name, "public");
    assert_eq!(public.bind, "0.0.0.0:8443".parse().expect("addr"));
    assert!(public.proxy_protocol);
    assert_eq!(public.max_connections, 500);
    assert_eq!(public.handshake_timeout, Duration::from_secs(5));
    assert_eq!(public.header_timeout, Duration::from_secs(3));
    assert_eq!(public.idle_timeout, Duration::from_secs(120));
    let ListenerKind::Https(tls) = &public.kind else {
        panic!("public is https: {:?}", public.kind);
    };
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(
        tls.certificate_files,
        [
            (
                f.dir.path().join("certs/api.pem"),
                f.dir.path().join("certs/api-key.pem")
            ),
            (
                f.dir.path().join("certs/www.pem"),
                f.dir.path().join("certs/www-key.pem")
            ),
        ]
    );
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.alpn, [b"http/1.1".to_vec()]);
    assert_eq!(
        tls.hsts,
        Some(Hsts {
            max_age: Duration::from_secs(730 * 86_400),
            include_subdomains: true,
            preload: true,
        })
    );
    let plain = &p.listeners[1];
    assert_eq!(plain.bind, "[::]:8080".parse().expect("addr"));
    assert!(!plain.proxy_protocol);
    assert_eq!(plain.max_connections, 10_000);
    assert_eq!(plain.handshake_timeout, Duration::from_secs(10));
    assert_eq!(plain.header_timeout, Duration::from_secs(10));
    assert_eq!(plain.idle_timeout, Duration::from_secs(60));
    assert!(matches!(
        plain.kind,
        ListenerKind::Http(PlainMode::RedirectToHttps { port: 8443 })
    ));
    assert!(matches!(
        p.listeners[2].kind,
        ListenerKind::Http(PlainMode::Serve)
    ));

    assert_eq!(p.pools.len(), 2);
    let api = &p.pools[0];
    assert_eq!(api.name, "api");
    let endpoints: Vec<(&str, std::net::SocketAddr)> = api
        .endpoints
        .iter()
        .map(|e| (e.authority.as_str(), e.addr))
        .collect();
    assert_eq!(
        endpoints[0],
        ("127.0.0.1:9001", "127.0.0.1:9001".parse().expect("addr"))
    );
    assert_eq!(
        endpoints[1],
        ("[::1]:9002", "[::1]:9002".parse().expect("addr"))
    );
    assert_eq!(endpoints[2].0, "localhost:9003");
    assert!(endpoints[2].1.ip().is_loopback() && endpoints[2].1.port() == 9003);
    assert_eq!(api.balance, Balance::LeastOutstanding);
    assert_eq!(api.protocol, UpstreamProtocol::H2);
    assert_eq!(api.idle_timeout, Duration::from_secs(30));
    let upstream_tls = api.tls.as_ref().expect("pool tls");
    assert_eq!(upstream_tls.roots.len(), 1);
    assert_eq!(upstream_tls.ca_file, f.dir.path().join("certs/ca.pem"));
    assert_eq!(upstream_tls.server_name.as_deref(), Some("api.internal"));
    assert_eq!(
        api.health,
        Some(HealthCheck {
            path: "/healthz?deep=1".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 5,
        })
    );
    assert_eq!(
        api.passive,
        PassiveEjection {
            consecutive_failures: 0,
            ejection_time: Duration::from_secs(60),
        }
    );
    let web = &p.pools[1];
    assert_eq!(web.balance, Balance::RoundRobin);
    assert_eq!(web.protocol, UpstreamProtocol::Http1);
    assert_eq!(web.idle_timeout, Duration::from_secs(90));
    assert!(web.tls.is_none() && web.health.is_none());
    assert_eq!(
        web.passive,
        PassiveEjection {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
        }
    );

    // Match order: exact host first (longer prefix before shorter), then wildcard, then any
    // host (exact path before prefix).
    let order: Vec<&str> = p.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        order,
        ["orders-v1", "orders", "wild", "status", "catch-all"]
    );
    let orders = &p.routes[1];
    assert_eq!(orders.product.as_deref(), Some("shop"));
    assert_eq!(
        orders.hosts,
        [
            HostMatch::Exact("api.example.com".into()),
            HostMatch::Suffix(".example.com".into())
        ]
    );
    assert_eq!(orders.path, PathMatch::Prefix("/orders".into()));
    assert_eq!(orders.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(orders.pool, 0);
    assert_eq!(orders.retries, 0);
    assert_eq!(orders.max_body_bytes, 1 << 20);
    assert!(orders.websocket);
    assert_eq!(orders.timeouts.connect, Duration::from_millis(500));
    assert_eq!(orders.timeouts.response_headers, Duration::from_secs(10));
    assert_eq!(orders.timeouts.total, Duration::from_secs(10));
    assert_eq!(p.routes[0].max_body_bytes, 2048);
    let catch_all = &p.routes[4];
    assert_eq!(catch_all.pool, 1);
    assert!(
        catch_all.hosts.is_empty() && catch_all.methods.is_empty() && catch_all.product.is_none()
    );
    assert_eq!(catch_all.path, PathMatch::Prefix("/".into()));
    assert_eq!(catch_all.retries, 1);
    assert_eq!(catch_all.max_body_bytes, 10 << 20);
    assert!(!catch_all.websocket);
    assert_eq!(catch_all.timeouts.connect, Duration::from_secs(2));
    assert_eq!(catch_all.timeouts.response_headers, Duration::from_secs(30));
    assert_eq!(catch_all.timeouts.total, Duration::from_secs(60));
    assert_eq!(p.routes[3].path, PathMatch::Exact("/status".into()));
}

#[test]
fn https_defaults_are_the_secure_ones() {
    use portcullis::config::{Hsts, ListenerKind, TlsVersion};

    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    let c = f
        .load(&https_listener("certs/api.pem", "certs/api-key.pem"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.admin.listen,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    assert_eq!(c.proxy.drain_timeout, Duration::from_secs(30));
    assert!(c.proxy.trusted.load_balancers.is_empty() && c.proxy.trusted.proxies.is_empty());
    // A listener with no routes at all is valid: it answers 404.
    assert!(c.proxy.routes.is_empty() && c.proxy.pools.is_empty());
    let ListenerKind::Https(tls) = &c.proxy.listeners[0].kind else {
        panic!("https");
    };
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(
        tls.hsts,
        Some(Hsts {
            max_age: Duration::from_secs(365 * 86_400),
            include_subdomains: false,
            preload: false,
        })
    );
    // HSTS off must be written.
    let c = f
        .load(&format!(
            "{}[listeners.tls.hsts]\nenabled = false\n",
            https_listener("certs/api.pem", "certs/api-key.pem")
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let ListenerKind::Https(tls) = &c.proxy.listeners[0].kind else {
        panic!("https");
    };
    assert_eq!(tls.hsts, None);
}

/// `examples/proxy.toml` names certificates that are not shipped: this loads a copy of it
/// beside generated ones.
#[test]
fn the_proxy_example_loads_with_generated_certificates() {
    use portcullis::config::ListenerKind;

    let f = Fixture::new();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy.toml"),
    )
    .expect("read examples/proxy.toml");
    f.cert("example", &["api.example.com", "*.example.com"]);
    f.cert("backend-ca", &["orders.internal"]);
    f.cert("idp-ca", &["login.example.com"]);
    f.cert("client-ca", &["partners.example.com"]);
    f.cert("gateway-client", &["gateway.example.com"]);
    std::fs::create_dir_all(f.dir.path().join("secrets")).expect("mkdir secrets");
    f.file("secrets/billing.pass", "not-a-real-password\n");
    f.file("secrets/ledger-client.secret", "not-a-real-secret\n");
    f.file("secrets/redis.pass", "not-a-real-password\n");
    f.file(
        "partner-jwks.json",
        include_str!("../../examples/partner-jwks.json"),
    );
    f.file(
        "orders.openapi.yaml",
        include_str!("../../examples/orders.openapi.yaml"),
    );
    f.file(
        "webhook.schema.json",
        include_str!("../../examples/webhook.schema.json"),
    );
    f.file(
        "webhook-ack.schema.json",
        include_str!("../../examples/webhook-ack.schema.json"),
    );
    // A hash of a throwaway key: no secret is committed or needed.
    f.file(
        "api-keys.toml",
        format!(
            "[[keys]]\nid = \"shop-client\"\nowner = \"Example shop\"\nprimary = \"{}\"\n\
             scope = {{ product = \"shop\" }}\n",
            hash_key("example-test-key")
        ),
    );
    let c = f
        .load(&example)
        .unwrap_or_else(|e| panic!("examples/proxy.toml:\n{e}"));
    assert!(!c.kernel.enabled);
    assert!(!c.proxy.listeners.is_empty());
    assert!(
        c.proxy
            .listeners
            .iter()
            .any(|l| matches!(l.kind, ListenerKind::Https(_)))
    );
    assert!(
        c.proxy
            .pools
            .iter()
            .any(|p| p.tls.is_some() && p.health.is_some())
    );
    assert!(!c.proxy.routes.is_empty());
    let keys = c.proxy.api_keys.as_ref().expect("[api_keys]");
    assert_eq!(keys.store.len(), 1);
    assert!(c.proxy.routes.iter().any(|r| r.auth.api_key));
    let cluster = c.cluster.as_ref().expect("[cluster]");
    let tls = &cluster.tls.as_ref().expect("[cluster.tls]").0;
    assert_eq!(tls.server_name.as_deref(), Some("redis.internal"));
    assert!(tls.client_identity.is_some());
}

#[test]
fn cluster_tls_mistakes() {
    let f = Fixture::new();
    f.cert("redis-ca", &["redis.internal"]);
    let config = format!(
        "{USERSPACE}\n[cluster]\nredis = \"127.0.0.1:6380\"\n[cluster.tls]\n\
         server_name = \"not a name\"\nclient_cert = \"certs/redis-ca.pem\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:6:1: error: missing required key `ca` in [cluster.tls]\n\
         $DIR/portcullis.toml:7:15: error: `cluster.tls.server_name`: `not a name` is not a \
         valid DNS name or IP address"
    );
    // With the CA, the lone client certificate is the mistake left.
    let config = format!(
        "{USERSPACE}\n[cluster]\nredis = \"127.0.0.1:6380\"\n[cluster.tls]\n\
         ca = \"certs/redis-ca.pem\"\nclient_cert = \"certs/redis-ca.pem\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:6:1: error: missing required key `client_key` in [cluster.tls] \
         (client_cert and client_key go together)"
    );
}

// ---------------------------------------------------------------------------------------------
// Token providers and routes that require a token.

/// A loopback provider named `idp`, a pool and the start of a route: the base the token cases
/// vary. The route's `[routes.token]` (or more) follows.
const TOKEN_BASE: &str = "[kernel]\nenabled = false\n\n\
[[token_providers]]\nname = \"idp\"\nissuer = \"http://127.0.0.1:9000\"\naudiences = [\"api\"]\n\n\
[[pools]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n\n\
[[routes]]\nname = \"orders\"\npath = \"/orders\"\npool = \"api\"\n";

#[test]
fn unknown_token_provider_reference_with_suggestion() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&format!("{TOKEN_BASE}[routes.token]\nprovider = \"ipd\"\n")),
        "$DIR/portcullis.toml:18:12: error: unknown token provider `ipd`; did you mean `idp`?"
    );
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let f = Fixture::new();
    let config = "[kernel]\nenabled = false\n[[token_providers]]\nname = \"idp\"\n\
                  issuer = \"http://127.0.0.1:9000\"\naudiences = [\"api\"]\n\
                  algorithms = [\"RS256\", \"none\", \"HS256\", \"rs384\"]\n";
    assert_eq!(
        f.check(config),
        "$DIR/portcullis.toml:7:24: error: `token_providers.algorithms`: `none` is refused: it \
         means an unsigned token, which anyone can forge\n\
         $DIR/portcullis.toml:7:32: error: `token_providers.algorithms`: `HS256` is refused: HMAC \
         algorithms use a shared secret, so whoever can verify a token can also forge one; \
         OpenID providers sign with public keys (RS256, ES256, ...)\n\
         $DIR/portcullis.toml:7:41: error: `token_providers.algorithms`: unknown value `rs384`; \
         expected one of: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
    );
}

#[test]
fn issuer_transport_is_checked() {
    let f = Fixture::new();
    let config = "[kernel]\nenabled = false\n\
                  [[token_providers]]\nname = \"a\"\nissuer = \"https://login.example.com\"\n\
                  audiences = [\"api\"]\n\
                  [[token_providers]]\nname = \"b\"\nissuer = \"http://login.example.com\"\n\
                  audiences = [\"api\"]\n";
    assert_eq!(
        f.check(config),
        "$DIR/portcullis.toml:5:10: error: `token_providers.issuer`: `https://login.example.com` \
         is https:// but the provider has no `ca`: there are no built-in web roots, so name the \
         PEM bundle of the CA that signed the issuer's certificate\n\
         $DIR/portcullis.toml:9:10: error: `token_providers.issuer`: `http://login.example.com` \
         is plain http:// to a host that is not loopback: the signing keys fetched from it could \
         be replaced in transit; use https:// with `ca`"
    );
}

#[test]
fn a_requirement_takes_exactly_one_of_any_and_all() {
    let f = Fixture::new();
    let config = format!(
        "{TOKEN_BASE}[routes.token]\nprovider = \"idp\"\n[[routes.token.rules]]\n\
         [[routes.token.rules.require]]\nclaim = \"roles\"\nany = [\"a\"]\nall = [\"b\"]\n\
         [[routes.token.rules.require]]\nclaim = \"scp\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:23:7: error: [[routes.token.rules.require]] takes `any` or `all`, \
         not both: `any` passes when the claim holds one of the values, `all` when it holds every \
         one\n\
         $DIR/portcullis.toml:24:1: error: [[routes.token.rules.require]] needs `any` (the claim \
         holds one of the values) or `all` (it holds every one); an empty list only asks for the \
         claim to be present"
    );
}

#[test]
fn bad_token_sources() {
    let f = Fixture::new();
    let config = format!(
        "{TOKEN_BASE}[routes.token]\nprovider = \"idp\"\n\
         sources = [\"bearer\", \"Bearer\", \"header:X Token\", \"query:\", \"bearer\"]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:19:22: error: `routes.token.sources`: invalid token source \
         `Bearer`: expected `bearer`, `header:<name>`, `query:<parameter>` or `cookie:<name>`\n\
         $DIR/portcullis.toml:19:32: error: `routes.token.sources`: invalid token source \
         `header:X Token`: `X Token` is not a valid header name\n\
         $DIR/portcullis.toml:19:50: error: `routes.token.sources`: invalid token source \
         `query:`: the query name is empty\n\
         $DIR/portcullis.toml:19:60: error: `routes.token.sources`: `bearer` is listed more than \
         once"
    );
}

#[test]
fn claims_cannot_set_forwarding_or_hop_by_hop_headers() {
    let f = Fixture::new();
    let config = format!(
        "{TOKEN_BASE}[routes.token]\nprovider = \"idp\"\n\
         [[routes.token.claim_headers]]\nheader = \"X-Forwarded-For\"\nclaims = [\"sub\"]\n\
         [[routes.token.claim_headers]]\nheader = \"Connection\"\nclaims = [\"sub\"]\n\
         [[routes.token.claim_headers]]\nheader = \"Authorization\"\nclaims = [\"sub\"]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:20:10: error: `routes.token.claim_headers.header`: \
         `X-Forwarded-For` cannot carry claims: the proxy sets it itself (the client address and \
         request id the backends trust)\n\
         $DIR/portcullis.toml:23:10: error: `routes.token.claim_headers.header`: `Connection` \
         cannot carry claims: it is a hop-by-hop header, which applies to one connection and is \
         not forwarded\n\
         $DIR/portcullis.toml:26:10: error: `routes.token.claim_headers.header`: `Authorization` \
         cannot carry claims: it carries the request itself (its target, framing or credentials)"
    );
}

#[test]
fn unknown_key_in_a_claim_requirement() {
    let f = Fixture::new();
    let config = format!(
        "{TOKEN_BASE}[routes.token]\nprovider = \"idp\"\n[[routes.token.rules]]\n\
         [[routes.token.rules.require]]\nclaim = \"roles\"\nany = [\"a\"]\nseperator = \" \"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:23:1: error: unknown key `seperator` in \
         [[routes.token.rules.require]]; did you mean `separator`?"
    );
}

#[test]
fn a_valid_token_route_compiles_to_what_it_says() {
    use portcullis::identity::authz::{
        ClaimHeader, ClaimRequirement, MethodRule, RoutePolicy, TokenSource,
    };
    use portcullis::identity::jwt::Algorithm;

    let f = Fixture::new();
    f.cert("idp-ca", &["login.example.com"]);
    let config = r#"
[kernel]
enabled = false

[[token_providers]]
name = "other"
issuer = "http://localhost:9000"
audiences = ["a"]

[[token_providers]]
name = "idp"
issuer = "https://login.example.com/tenant/v2.0"
audiences = ["https://api.example.com", "api"]
algorithms = ["ES256", "RS256"]
clock_skew = "30s"
max_token_size = 4096
require_typ = "at+jwt"
ca = "certs/idp-ca.pem"
jwks_refresh = "10m"
unknown_kid_interval = "30s"

[[pools]]
name = "api"
endpoints = ["127.0.0.1:9001"]

[[routes]]
name = "reports"
path = "/reports"
pool = "api"

[routes.token]
provider = "idp"
sources = ["bearer", "cookie:access_token", "header:X-Access-Token", "query:access_token"]
forward_authorization = true

[[routes.token.rules]]
[[routes.token.rules.require]]
claim = "roles"
any = ["API.Read", "API.Write"]

[[routes.token.rules]]
methods = ["post", "PUT", "DELETE"]
[[routes.token.rules.require]]
claim = "roles"
all = ["API.Write"]
[[routes.token.rules.require]]
claim = "scp"
any = ["write"]
separator = " "
op = "contains"

[[routes.token.claim_headers]]
header = "X-User-Id"
claims = ["oid", "sub"]

[[routes]]
name = "open"
path = "/open"
pool = "api"
"#;
    let c = f.load(config).unwrap_or_else(|e| panic!("{e}"));

    let providers = &c.proxy.token_providers;
    assert_eq!(providers.len(), 2);
    let idp = &providers[1];
    assert_eq!(idp.name, "idp");
    assert_eq!(idp.oidc.issuer, "https://login.example.com/tenant/v2.0");
    assert!(idp.oidc.ca_roots.is_some());
    assert_eq!(idp.oidc.default_refresh, Duration::from_secs(600));
    assert_eq!(idp.oidc.unknown_kid_interval, Duration::from_secs(30));
    assert_eq!(idp.oidc.min_refresh, Duration::from_secs(60));
    assert_eq!(idp.policy.issuer, idp.oidc.issuer);
    assert_eq!(
        idp.policy.audiences,
        vec!["https://api.example.com".to_owned(), "api".to_owned()]
    );
    assert_eq!(
        idp.policy.algorithms,
        vec![Algorithm::ES256, Algorithm::RS256]
    );
    assert_eq!(idp.policy.leeway, Duration::from_secs(30));
    assert_eq!(idp.policy.max_token_bytes, 4096);
    assert_eq!(idp.policy.require_typ.as_deref(), Some("at+jwt"));
    // The defaults.
    let other = &providers[0];
    assert!(other.oidc.ca_roots.is_none());
    assert_eq!(other.oidc.default_refresh, Duration::from_secs(300));
    assert_eq!(other.oidc.unknown_kid_interval, Duration::from_secs(10));
    assert!(other.policy.algorithms.is_empty());
    assert_eq!(other.policy.leeway, Duration::from_secs(60));
    assert_eq!(other.policy.max_token_bytes, 8192);
    assert_eq!(other.policy.require_typ, None);

    let route = |name: &str| {
        c.proxy
            .routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("route {name}"))
    };
    assert!(route("open").auth.token.is_none());
    let token = route("reports").auth.token.as_ref().expect("token");
    assert_eq!(token.provider, 1);
    assert_eq!(
        token.sources,
        vec![
            TokenSource::Bearer,
            TokenSource::Cookie("access_token".into()),
            TokenSource::Header(http::HeaderName::from_static("x-access-token")),
            TokenSource::Query("access_token".into()),
        ]
    );
    assert!(token.forward_authorization);
    assert_eq!(
        token.policy,
        RoutePolicy {
            rules: vec![
                MethodRule {
                    methods: vec![],
                    requirements: vec![ClaimRequirement::any_of(
                        "roles",
                        &["API.Read", "API.Write"]
                    )],
                },
                MethodRule {
                    methods: vec![http::Method::POST, http::Method::PUT, http::Method::DELETE],
                    requirements: vec![
                        ClaimRequirement::all_of("roles", &["API.Write"]),
                        ClaimRequirement::any_of("scp", &["write"])
                            .separated_by(' ')
                            .contains(),
                    ],
                },
            ],
        }
    );
    assert_eq!(
        token.claim_headers,
        vec![ClaimHeader {
            header: http::HeaderName::from_static("x-user-id"),
            claims: vec!["oid".into(), "sub".into()],
        }]
    );
}

#[test]
fn token_route_defaults() {
    use portcullis::identity::authz::TokenSource;

    let f = Fixture::new();
    let c = f
        .load(&format!("{TOKEN_BASE}[routes.token]\nprovider = \"idp\"\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let token = c.proxy.routes[0].auth.token.as_ref().expect("token");
    assert_eq!(token.provider, 0);
    assert_eq!(token.sources, vec![TokenSource::Bearer]);
    assert!(token.policy.rules.is_empty());
    assert!(token.claim_headers.is_empty());
    assert!(!token.forward_authorization);
}

// ---------------------------------------------------------------------------------------------
// API keys: [api_keys] and routes that require a key.

/// A pool and the start of a route: the base the API key cases vary.
const KEYS_BASE: &str = "[kernel]\nenabled = false\n\n\
[[pools]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9001\"]\n\n\
[[routes]]\nname = \"orders\"\nproduct = \"shop\"\npath = \"/orders\"\npool = \"api\"\napi_key = true\n";

/// A key file entry with the hash of a throwaway key.
fn key_entry(id: &str, scope: &str) -> String {
    format!(
        "[[keys]]\nid = \"{id}\"\nowner = \"Owner of {id}\"\nprimary = \"{}\"\nscope = {scope}\n",
        hash_key(&format!("test-key-{id}"))
    )
}

#[test]
fn api_key_route_without_api_keys_section() {
    let f = Fixture::new();
    assert_eq!(
        f.check(KEYS_BASE),
        "$DIR/portcullis.toml:13:11: error: `routes.api_key`: the route requires an API key, but \
         there is no [api_keys] section naming the key file"
    );
}

#[test]
fn missing_key_file() {
    let f = Fixture::new();
    let err = f.check(&format!("[api_keys]\nfile = \"keys.toml\"\n\n{KEYS_BASE}"));
    assert!(
        err.starts_with(
            "$DIR/portcullis.toml:2:8: error: `api_keys.file`: cannot read the key file \
             `keys.toml`: "
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn key_file_errors_are_located_in_the_key_file() {
    let f = Fixture::new();
    f.file(
        "keys.toml",
        format!(
            "{}\n[[keys]]\nid = \"b\"\nowner = \"B\"\nprimary = \"not-a-hash\"\nscope = \"all\"\n",
            key_entry("a", "\"all\"")
        ),
    );
    assert_eq!(
        f.check(&format!("[api_keys]\nfile = \"keys.toml\"\n\n{KEYS_BASE}")),
        "$DIR/keys.toml:10:11: error: `primary`: it does not start with `sha256:` (store the \
         key's hash, never the key); expected `sha256:` and 64 lowercase hex digits \
         (`portcullis key hash` prints it)"
    );
}

#[test]
fn key_scope_naming_no_route_is_refused_in_the_key_file() {
    let f = Fixture::new();
    f.file(
        "keys.toml",
        format!(
            "{}\n{}\n{}",
            key_entry("good", "{ api = \"orders\" }"),
            key_entry("typo", "{ product = \"shpo\" }"),
            key_entry("gone", "{ api = \"invoices\" }"),
        ),
    );
    assert_eq!(
        f.check(&format!("[api_keys]\nfile = \"keys.toml\"\n\n{KEYS_BASE}")),
        "$DIR/keys.toml:7:1: error: key `typo`: its scope names product `shpo`, which no route \
         has; the key would be refused everywhere\n\
         $DIR/keys.toml:13:1: error: key `gone`: its scope names api `invoices`, which no route \
         has; the key would be refused everywhere"
    );
}

#[test]
fn forbidden_and_invalid_api_key_headers() {
    let f = Fixture::new();
    f.file("keys.toml", key_entry("a", "\"all\""));
    assert_eq!(
        f.check(&format!(
            "[api_keys]\nfile = \"keys.toml\"\nheader = \"Authorization\"\n\n{KEYS_BASE}"
        )),
        "$DIR/portcullis.toml:3:10: error: `api_keys.header`: `Authorization` cannot carry API \
         keys: it carries the request itself (its target, framing or credentials)"
    );
    assert_eq!(
        f.check(&format!(
            "[api_keys]\nfile = \"keys.toml\"\nheader = \"Connection\"\nquery_param = \"\"\n\n\
             {KEYS_BASE}"
        )),
        "$DIR/portcullis.toml:3:10: error: `api_keys.header`: `Connection` cannot carry API \
         keys: it is a hop-by-hop header, which applies to one connection and is not forwarded\n\
         $DIR/portcullis.toml:4:15: error: `api_keys.query_param`: invalid value ``: the \
         parameter name must not be empty"
    );
}

#[test]
fn valid_api_keys_compile() {
    let f = Fixture::new();
    let keys = f.file(
        "keys.toml",
        format!(
            "{}\n{}",
            key_entry("all", "\"all\""),
            key_entry("shop", "{ product = \"shop\" }")
        ),
    );
    let config = format!(
        "[api_keys]\nfile = \"keys.toml\"\nheader = \"X-Api-Key\"\nquery_param = \"key\"\n\n\
         {KEYS_BASE}\n[[routes]]\nname = \"open\"\npath = \"/open\"\npool = \"api\"\n"
    );
    let c = f.load(&config).unwrap_or_else(|e| panic!("{e}"));
    let k = c.proxy.api_keys.as_ref().expect("[api_keys]");
    assert_eq!(k.file, keys);
    assert_eq!(k.header, http::HeaderName::from_static("x-api-key"));
    assert_eq!(k.query_param, "key");
    assert_eq!(k.store.len(), 2);
    assert!(k.store.get("shop").is_some());
    let route = |name: &str| {
        c.proxy
            .routes
            .iter()
            .find(|r| r.name == name)
            .expect("route")
    };
    assert!(route("orders").auth.api_key);
    assert!(!route("open").auth.api_key);

    // Defaults.
    let c = f
        .load(&format!("[api_keys]\nfile = \"keys.toml\"\n\n{KEYS_BASE}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let k = c.proxy.api_keys.as_ref().expect("[api_keys]");
    assert_eq!(
        k.header,
        portcullis::identity::api_keys::DEFAULT_HEADER_NAME
    );
    assert_eq!(k.query_param, "subscription-key");
}

/// Client certificates: every mistake at once, each at its place.
#[test]
fn client_certificate_mistakes() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    f.file(
        "not-a-crl.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let config = format!(
        "{}[listeners.client_certs]\nmode = \"sometimes\"\nca = []\ncrls = [\"not-a-crl.pem\"]\n\
         \n[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\
         [listeners.client_certs]\nca = [\"certs/api.pem\"]\n{POOL}\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\npool = \"api\"\n[routes.client_cert]\n\
         thumbprints = [\"abc\"]\nforward = [\"subject\", \"serial\"]\nbound_token = true\n\
         dns = [\"\"]\n",
        https_listener("certs/api.pem", "certs/api-key.pem")
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:11:8: error: `listeners.client_certs.mode`: unknown value \
         `sometimes`; expected one of: none, optional, required\n\
         $DIR/portcullis.toml:12:6: error: `listeners.client_certs.ca` is empty: name at least one \
         PEM bundle of the CAs that issue client certificates\n\
         $DIR/portcullis.toml:13:9: error: $DIR/not-a-crl.pem: no certificate revocation list \
         found (expected PEM `X509 CRL` sections or one DER CRL)\n\
         $DIR/portcullis.toml:19:1: error: `listeners.client_certs` applies only to `protocol = \
         \"https\"` listeners\n\
         $DIR/portcullis.toml:31:16: error: `routes.client_cert.thumbprints`: invalid value `abc`: \
         expected the SHA-256 of the certificate's DER as 64 hex digits (`:` separators allowed)\n\
         $DIR/portcullis.toml:32:23: error: `routes.client_cert.forward`: invalid value `serial`: \
         not a certificate fact; expected one of thumbprint, subject, issuer, san_dns, san_uri, \
         not_after\n\
         $DIR/portcullis.toml:33:15: error: `routes.client_cert.bound_token`: binding a token to \
         the certificate (RFC 8705) needs a token; add [routes.token] to the route\n\
         $DIR/portcullis.toml:34:8: error: `routes.client_cert.dns`: invalid value ``: an empty \
         entry matches no certificate; remove it"
    );
}

/// A route that requires a certificate while no listener asks for one would refuse everyone.
#[test]
fn client_certificate_route_without_a_listener_asking() {
    let f = Fixture::new();
    f.cert("api", &["api.example.com"]);
    let config = format!(
        "{}[listeners.client_certs]\nmode = \"none\"\n{POOL}\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\npool = \"api\"\n[routes.client_cert]\n",
        https_listener("certs/api.pem", "certs/api-key.pem")
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:21:1: error: [routes.client_cert]: the route requires a client \
         certificate, but no listener asks for one; add [listeners.client_certs] with `mode = \
         \"required\"` or `\"optional\"` to an https listener"
    );
}

/// CORS settings that would weaken CORS are refused, each at its entry.
#[test]
fn cors_mistakes() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"r\"\npath = \"/\"\npool = \"api\"\n[routes.cors]\n\
         allowed_origins = [\"*\", \"null\", \"https://app.example.com/\", \"https://*.com\", \
         \"ftp://x.example\", \"https://a*.example.com\", \"https://x.example:99999\"]\n\
         allowed_headers = [\"bad header\"]\nallow_credentials = true\nmax_age = \"2d\"\n\
         \n[[routes]]\nname = \"s\"\npath = \"/s\"\npool = \"api\"\n[routes.cors]\n\
         allowed_origins = []\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:13:20: error: `routes.cors.allowed_origins`: invalid value `*`: `*` \
         cannot be combined with `allow_credentials = true` (browsers refuse it, and echoing \
         every origin with credentials would let any site act as the user); list the origins\n\
         $DIR/portcullis.toml:13:25: error: `routes.cors.allowed_origins`: invalid value `null`: \
         the `null` origin is shared by sandboxed frames, local files and redirects: allowing it \
         allows all of them\n\
         $DIR/portcullis.toml:13:33: error: `routes.cors.allowed_origins`: invalid value \
         `https://app.example.com/`: an origin is `scheme://host[:port]`: no path, query, user or \
         trailing slash\n\
         $DIR/portcullis.toml:13:61: error: `routes.cors.allowed_origins`: invalid value \
         `https://*.com`: a wildcard must be a whole leading label of a domain with at least two \
         labels (`https://*.example.com`)\n\
         $DIR/portcullis.toml:13:78: error: `routes.cors.allowed_origins`: invalid value \
         `ftp://x.example`: the scheme must be https or http\n\
         $DIR/portcullis.toml:13:97: error: `routes.cors.allowed_origins`: invalid value \
         `https://a*.example.com`: `*` is allowed alone or as the whole first label \
         (`https://*.example.com`)\n\
         $DIR/portcullis.toml:13:123: error: `routes.cors.allowed_origins`: invalid value \
         `https://x.example:99999`: the port is not a number from 0 to 65535\n\
         $DIR/portcullis.toml:14:20: error: `routes.cors.allowed_headers`: `bad header` is not a \
         valid header name (a token such as `X-User-Id`)\n\
         $DIR/portcullis.toml:16:11: error: `routes.cors.max_age`: invalid duration `2d`: must be \
         at most 1day\n\
         $DIR/portcullis.toml:23:19: error: `routes.cors.allowed_origins` is empty: list the \
         origins (`https://app.example.com`) that may call this route"
    );
}

/// Rate limit and quota mistakes, each located at its value.
#[test]
fn rate_limit_and_quota_mistakes() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"r\"\npath = \"/\"\npool = \"api\"\n\
         \n[proxy.limits]\nheaders = \"draft\"\nquota_status = 500\nmax_tracked_keys = 0\n\
         \n[[proxy.limits.rate]]\nname = \"burst\"\nby = [\"api_key\", \"claim:\", \"header:Cookie\", \
         \"api_key\", \"session\"]\nrequests = 0\nper = \"2d\"\nroutes = [\"nope\"]\nipv6_prefix = 129\n\
         \n[[proxy.limits.rate]]\nname = \"burst\"\nby = []\nrequests = 5\nper = \"1s\"\nburts = 2\n\
         \n[[proxy.limits.quota]]\nname = \"daily\"\nby = [\"ip\"]\nperiod = \"week\"\nproducts = [\"shop\"]\n\
         \n[[proxy.limits.quota]]\nname = \"monthly\"\nby = [\"api_key\"]\nperiod = \"month\"\nbytes = 0\n\
         [[proxy.limits.quota.tiers]]\nkeys = []\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:14:11: error: `proxy.limits.headers`: unknown value `draft`; \
         expected one of: ietf, legacy, none\n\
         $DIR/portcullis.toml:15:16: error: `proxy.limits.quota_status`: invalid value `500`: an \
         exhausted quota is answered with 403 or 429\n\
         $DIR/portcullis.toml:16:20: error: `proxy.limits.max_tracked_keys`: 0 is out of range; \
         expected 1 to 10000000\n\
         $DIR/portcullis.toml:20:18: error: `proxy.limits.rate.by`: invalid value `claim:`: a \
         claim name is 1 to 64 visible ASCII characters, such as `claim:sub`\n\
         $DIR/portcullis.toml:20:28: error: `proxy.limits.rate.by`: invalid value \
         `header:Cookie`: this header carries credentials, which must not become counter keys\n\
         $DIR/portcullis.toml:20:45: error: `proxy.limits.rate.by`: `api_key` is listed more \
         than once\n\
         $DIR/portcullis.toml:20:56: error: `proxy.limits.rate.by`: invalid value `session`: \
         expected `api_key`, `ip`, `route`, `claim:<name>` or `header:<name>`\n\
         $DIR/portcullis.toml:21:12: error: `proxy.limits.rate.requests`: 0 is out of range; \
         expected 1 to 1000000000\n\
         $DIR/portcullis.toml:22:7: error: `proxy.limits.rate.per`: invalid duration `2d`: must \
         be at most 1day\n\
         $DIR/portcullis.toml:23:11: error: `proxy.limits.rate.routes`: invalid value `nope`: no \
         route has this name\n\
         $DIR/portcullis.toml:24:15: error: `proxy.limits.rate.ipv6_prefix`: 129 is out of \
         range; expected 0 to 128\n\
         $DIR/portcullis.toml:27:8: error: duplicate limit name `burst` (first used on line 19)\n\
         $DIR/portcullis.toml:31:1: error: unknown key `burts` in [[proxy.limits.rate]]; did you \
         mean `burst`?\n\
         $DIR/portcullis.toml:33:1: error: [[proxy.limits.quota]] counts nothing: give it \
         `calls`, `bytes` or both\n\
         $DIR/portcullis.toml:36:10: error: `proxy.limits.quota.period`: unknown value `week`; \
         expected one of: hour, day, month\n\
         $DIR/portcullis.toml:37:13: error: `proxy.limits.quota.products`: invalid value `shop`: \
         no route belongs to this product\n\
         $DIR/portcullis.toml:43:9: error: `proxy.limits.quota.bytes`: invalid value `0`: a \
         quota of zero bytes refuses everything; remove the route instead\n\
         $DIR/portcullis.toml:44:1: error: [[proxy.limits.quota.tiers]] counts nothing: give it \
         `calls`, `bytes` or both\n\
         $DIR/portcullis.toml:45:8: error: `proxy.limits.quota.tiers.keys` is empty: name the \
         API key ids the tier applies to"
    );
}

/// Limits reach the routes they cover, with the defaults filled in.
#[test]
fn rate_limits_and_quotas_compile_onto_their_routes() {
    let f = Fixture::new();
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"a\"\nproduct = \"shop\"\npath = \"/a\"\npool = \"api\"\n\
         [[routes]]\nname = \"b\"\npath = \"/b\"\npool = \"api\"\n\
         [[routes]]\nname = \"c\"\npath = \"/c\"\npool = \"api\"\n\
         \n[proxy.limits]\nstate_file = \"quotas.json\"\n\
         [[proxy.limits.rate]]\nname = \"everyone\"\nby = [\"ip\"]\nipv6_prefix = 64\nrequests = 100\nper = \"1m\"\n\
         [[proxy.limits.rate]]\nname = \"shop\"\nby = [\"api_key\", \"claim:sub\"]\nproducts = [\"shop\"]\n\
         requests = 10\nper = \"1s\"\nburst = 20\ntiers = [{{ keys = [\"gold\"], requests = 50 }}]\n\
         [[proxy.limits.quota]]\nname = \"b-daily\"\nby = [\"header:X-Tenant\"]\nroutes = [\"b\"]\n\
         period = \"day\"\nbytes = \"1MiB\"\n"
    );
    let cfg = f.load(&config).expect("valid");
    let route = |name: &str| {
        cfg.proxy
            .routes
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.auth.limits.clone())
            .expect("limits")
    };
    let (a, b, c) = (route("a"), route("b"), route("c"));
    assert_eq!((a.rates.clone(), a.quotas.clone()), (vec![0, 1], vec![]));
    assert_eq!((b.rates.clone(), b.quotas.clone()), (vec![0], vec![0]));
    assert_eq!((c.rates.clone(), c.quotas.clone()), (vec![0], vec![]));
    let limits = &a.config;
    assert_eq!(limits.headers, portcullis::config::HeaderStyle::Ietf);
    assert!(!limits.headers_on_success);
    assert_eq!(limits.max_tracked_keys, 100_000);
    assert_eq!(limits.quota_status, 403);
    assert_eq!(limits.prune_interval, Duration::from_secs(60));
    assert_eq!(limits.flush_interval, Duration::from_secs(30));
    assert_eq!(
        limits.state_file.as_deref(),
        Some(f.dir.path().join("quotas.json").as_path())
    );
    assert_eq!(limits.rates[0].burst, 100, "burst defaults to requests");
    assert_eq!(limits.rates[0].key.ipv4_prefix, 32);
    assert_eq!(limits.rates[0].key.ipv6_prefix, 64);
    assert_eq!(limits.rates[1].burst, 20);
    assert_eq!(limits.rates[1].tiers[0].burst, 50);
    assert_eq!(
        limits.rates[1].key.parts,
        vec![
            portcullis::config::KeyPart::ApiKey,
            portcullis::config::KeyPart::Claim("sub".into())
        ]
    );
    assert_eq!(limits.quotas[0].bytes, Some(1 << 20));
    assert_eq!(limits.quotas[0].calls, None);
}

/// Backend credentials: every mistake at its key, and never a secret in a message.
#[test]
fn backend_auth_mistakes() {
    let f = Fixture::new();
    f.file("empty.secret", "\n");
    let config = format!(
        "{USERSPACE}\n[[pools]]\nname = \"a\"\nendpoints = [\"127.0.0.1:9001\"]\n[pools.auth]\n\
         type = \"basic\"\nusername = \"gate:way\"\npassword_file = \"missing.pass\"\n\
         scope = \"x\"\n\n[[pools]]\nname = \"b\"\nendpoints = [\"127.0.0.1:9002\"]\n[pools.auth]\n\
         type = \"client_credentials\"\ntoken_url = \"http://idp.example.com/token\"\n\
         client_id = \"gw\"\nclient_secret_file = \"empty.secret\"\nrefresh_before = \"2h\"\n\
         \n[[pools]]\nname = \"c\"\nendpoints = [\"127.0.0.1:9003\"]\n[pools.auth]\n\
         type = \"client_credentials\"\ntoken_url = \"https://idp.example.com/token\"\n\
         client_id = \"gw\"\nclient_secret_env = \"PORTCULLIS_TEST_UNSET_SECRET\"\n\
         client_secret_file = \"empty.secret\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:9:12: error: `pools.auth.username`: invalid value `gate:way`: HTTP \
         Basic user names cannot contain `:` (RFC 7617)\n\
         $DIR/portcullis.toml:10:17: error: `pools.auth.password_file`: invalid value \
         `missing.pass`: cannot read it: No such file or directory (os error 2)\n\
         $DIR/portcullis.toml:11:9: error: `pools.auth.scope` applies only with `type = \
         \"client_credentials\"`\n\
         $DIR/portcullis.toml:18:13: error: `pools.auth.token_url`: invalid value \
         `http://idp.example.com/token`: is plain http:// to a host that is not loopback: the \
         client secret would travel in clear; use https:// with `ca`\n\
         $DIR/portcullis.toml:20:22: error: `pools.auth.client_secret_file`: invalid value \
         `empty.secret`: the file's first line is empty\n\
         $DIR/portcullis.toml:21:18: error: `pools.auth.refresh_before`: invalid duration `2h`: \
         must be at most 1h\n\
         $DIR/portcullis.toml:28:13: error: `pools.auth.token_url`: invalid value \
         `https://idp.example.com/token`: is https:// but there is no `ca`: name the PEM bundle \
         of the CA that signed the token endpoint's certificate\n\
         $DIR/portcullis.toml:30:21: error: `pools.auth.client_secret_env`: invalid value \
         `PORTCULLIS_TEST_UNSET_SECRET`: give the secret one way: `client_secret_file` or \
         `client_secret_env`, not both"
    );
}

#[test]
fn abuse_section_mistakes() {
    let f = Fixture::new();
    let config = format!(
        "{KERNEL}\n[abuse]\nmode = \"block\"\noffender_memory = \"90d\"\n\
         [[abuse.rules]]\nkind = \"login\"\nthreshold = 20\n\
         [[abuse.rules]]\nkind = \"rate_limit\"\nthreshold = 2000000\nwindow = \"0s\"\n\
         [[abuse.rules]]\nkind = \"rate_limit\"\nthreshold = 5\nban = \"1h\"\nmax_ban = \"10m\"\n\
         escalation = \"triple\"\n[abuze]\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:5:8: error: `abuse.mode`: unknown value `block`; expected one of: \
         enforce, report\n\
         $DIR/portcullis.toml:6:19: error: `abuse.offender_memory`: invalid duration `90d`: must \
         be at most 30days\n\
         $DIR/portcullis.toml:8:8: error: `abuse.rules.kind`: unknown value `login`; expected \
         one of: auth_failure, rate_limit, validation\n\
         $DIR/portcullis.toml:12:13: error: `abuse.rules.threshold`: 2000000 is out of range; \
         expected 1 to 1000000\n\
         $DIR/portcullis.toml:13:10: error: `abuse.rules.window`: invalid duration `0s`: must be \
         greater than zero\n\
         $DIR/portcullis.toml:15:8: error: `abuse.rules.kind`: `rate_limit` is listed more than \
         once\n\
         $DIR/portcullis.toml:18:11: error: `abuse.rules.max_ban` (10m) must be at least \
         `abuse.rules.ban` (1h)\n\
         $DIR/portcullis.toml:19:14: error: `abuse.rules.escalation`: unknown value `triple`; \
         expected one of: none, double\n\
         $DIR/portcullis.toml:20:2: error: unknown key `abuze` in the top level; did you mean \
         `abuse`?"
    );
}

#[test]
fn abuse_section_compiles_and_defaults_are_secure() {
    use portcullis::config::{AbuseConfig, AbuseKind, Escalation};
    let f = Fixture::new();
    let path = f.file("portcullis.toml", KERNEL);
    let abuse = load(&path).expect("loads").abuse;
    assert_eq!(abuse, AbuseConfig::default());
    assert!(abuse.enabled && abuse.mode == Mode::Enforce);
    let auth = abuse.rule(AbuseKind::AuthFailure).expect("an auth rule");
    assert_eq!(
        (
            auth.threshold,
            auth.window,
            auth.ban,
            auth.escalation,
            auth.max_ban
        ),
        (
            20,
            Duration::from_secs(60),
            Duration::from_secs(600),
            Escalation::Double,
            Duration::from_secs(86_400)
        )
    );

    let path = f.file(
        "portcullis.toml",
        format!(
            "{KERNEL}\n[abuse]\nmode = \"report\"\n[[abuse.rules]]\nkind = \"validation\"\n\
             threshold = 3\nban = \"30s\"\n"
        ),
    );
    let abuse = load(&path).expect("loads").abuse;
    assert_eq!(abuse.mode, Mode::Report);
    assert_eq!(abuse.rules.len(), 1, "written rules replace the defaults");
    let v = &abuse.rules[0];
    assert_eq!(
        (v.kind, v.threshold, v.ban),
        (AbuseKind::Validation, 3, Duration::from_secs(30))
    );
    assert_eq!(v.max_ban, Duration::from_secs(86_400));
}

/// Request validation mistakes: broken documents located at their key, with the place inside.
#[test]
fn validation_mistakes() {
    let f = Fixture::new();
    f.file("broken.yaml", "openapi: 3.1.0\npaths:\n  /a: [\n");
    f.file(
        "bad-schema.yaml",
        "openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          \
         application/json:\n            schema: {type: 12}\n",
    );
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"r\"\npath = \"/r\"\npool = \"api\"\n\
         [routes.validation]\nopenapi = \"broken.yaml\"\n\
         \n[[routes]]\nname = \"s\"\npath = \"/s\"\npool = \"api\"\n[routes.validation]\n\
         openapi = \"bad-schema.yaml\"\ncontent_types = [\"json\"]\naction = \"block\"\n\
         \n[[routes]]\nname = \"t\"\npath = \"/t\"\npool = \"api\"\n[routes.validation]\n\
         openapi = \"missing.yaml\"\nschema = \"x.json\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:13:11: error: `routes.validation.openapi`: invalid value \
         `broken.yaml`: line 4, column 1: did not find expected node content at line 4 column 1, \
         while parsing a flow node\n\
         $DIR/portcullis.toml:20:11: error: `routes.validation.openapi`: invalid value \
         `bad-schema.yaml`: at `/paths/~1a/post/requestBody/content/application~1json/schema`: \
         invalid schema: 12 is not valid under any of the schemas listed in the 'anyOf' keyword\n\
         $DIR/portcullis.toml:22:10: error: `routes.validation.action`: unknown value `block`; \
         expected one of: prevent, detect\n\
         $DIR/portcullis.toml:30:10: error: `routes.validation.schema`: invalid value `x.json`: \
         give `openapi` or `schema`, not both"
    );
}

#[test]
fn response_validation_mistakes() {
    let f = Fixture::new();
    f.file(
        "bad-status.yaml",
        "openapi: 3.1.0\npaths:\n  /a:\n    get:\n      responses:\n        \"2xx0\": {description: x}\n",
    );
    let config = format!(
        "{USERSPACE}{POOL}\n[[routes]]\nname = \"r\"\npath = \"/r\"\npool = \"api\"\n\
         [routes.response]\nopenapi = \"bad-status.yaml\"\n\
         \n[[routes]]\nname = \"s\"\npath = \"/s\"\npool = \"api\"\n[routes.response]\n\
         openapi = \"a.yaml\"\nschema = \"b.json\"\n"
    );
    assert_eq!(
        f.check(&config),
        "$DIR/portcullis.toml:13:11: error: `routes.response.openapi`: invalid value \
         `bad-status.yaml`: at `/paths/~1a/get/responses`: `2xx0` is not a status code, a range \
         such as `2XX`, or `default`\n\
         $DIR/portcullis.toml:21:10: error: `routes.response.schema`: invalid value `b.json`: \
         give `openapi` or `schema`, not both"
    );
}
