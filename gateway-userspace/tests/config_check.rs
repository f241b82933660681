//! What `portcullis check` prints for representative broken configs, as exact text, and what a
//! valid config compiles to. Each test writes its files into a fresh temporary directory; paths
//! in the output are shown as `$DIR/...` so the expected text is stable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::config::{AttachMode, Config, LogFormat, LogLevel, load};
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
