//! Unit tests of the whole pipeline through [`load_str`]; file-backed cases with rendered
//! output live in `tests/config_check.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::rules::{Mode, Prefix};

fn errors(text: &str) -> String {
    match load_str(text, Path::new("p.toml")) {
        Ok(c) => panic!("expected errors, loaded {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn loads(text: &str) -> Config {
    load_str(text, Path::new("p.toml")).unwrap_or_else(|e| panic!("expected a config:\n{e}"))
}

fn prefixes(list: &[&str]) -> Vec<Prefix> {
    list.iter()
        .map(|s| Prefix::parse_strict(s).expect("test prefix"))
        .collect()
}

const MINIMAL: &str = "[kernel]\ninterfaces = [\"eth0\"]\n";

#[test]
fn two_unknown_keys_and_a_bad_cidr_in_one_run() {
    let text = r#"
[kernel]
interfaces = ["eth0"]
interfacs = ["eth1"]

[allow]
cidrs = ["10.0.0.0/8", "10.0.0.1/8"]

[log]
colour = "red"
"#;
    assert_eq!(
        errors(text),
        "p.toml:4:1: error: unknown key `interfacs` in [kernel]; did you mean `interfaces`?\n\
         p.toml:7:24: error: `10.0.0.1/8` has bits set past its prefix length; did you mean `10.0.0.0/8`?\n\
         p.toml:10:1: error: unknown key `colour` in [log]; expected one of: level, format"
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let c = loads(MINIMAL);
    assert_eq!(c.source, Path::new("p.toml"));
    assert_eq!(
        c.kernel,
        KernelConfig {
            enabled: true,
            interfaces: vec!["eth0".into()],
            attach_mode: AttachMode::Auto,
            pin_root: PathBuf::from("/sys/fs/bpf/portcullis"),
            ban_sweep_interval: Duration::from_secs(10),
        }
    );
    assert_eq!(c.rules, crate::rules::RuleSet::default());
    assert_eq!(
        c.log,
        LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Json
        }
    );
}

#[test]
fn every_value_is_read() {
    let c = loads(
        r#"
[kernel]
enabled = false
interfaces = ["eth0", "vlan.100"]
attach_mode = "generic"
pin_root = "/run/bpf/pc"
ban_sweep_interval = "1m 30s"

[allow]
cidrs = ["10.0.0.0/8", "::ffff:192.0.2.0/120"]

[[deny]]
name = "a"
cidrs = ["198.51.100.0/24", "198.51.100.0/24"]

[[deny]]
name = "b-2_x"
mode = "report"

[log]
level = "debug"
format = "text"
"#,
    );
    assert!(!c.kernel.enabled);
    assert_eq!(c.kernel.interfaces, ["eth0", "vlan.100"]);
    assert_eq!(c.kernel.attach_mode, AttachMode::Generic);
    assert_eq!(c.kernel.pin_root, Path::new("/run/bpf/pc"));
    assert_eq!(c.kernel.ban_sweep_interval, Duration::from_secs(90));
    // The IPv4-mapped prefix is an IPv4 rule.
    assert_eq!(c.rules.allow, prefixes(&["10.0.0.0/8", "192.0.2.0/24"]));
    assert_eq!(c.rules.deny.len(), 2);
    assert_eq!(c.rules.deny[0].name, "a");
    assert_eq!(c.rules.deny[0].mode, Mode::Enforce);
    // Duplicates within a set are harmless and kept.
    assert_eq!(
        c.rules.deny[0].prefixes,
        prefixes(&["198.51.100.0/24", "198.51.100.0/24"])
    );
    assert_eq!(c.rules.deny[1].name, "b-2_x");
    assert_eq!(c.rules.deny[1].mode, Mode::Report);
    assert!(c.rules.deny[1].prefixes.is_empty());
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn dotted_keys_and_inline_tables_are_the_same_config() {
    let c = loads(
        r#"
kernel.interfaces = ["eth0"]
allow = { cidrs = ["10.0.0.0/8"] }
deny = [{ name = "x", cidrs = ["192.0.2.0/24"] }]
"#,
    );
    assert_eq!(c.kernel.interfaces, ["eth0"]);
    assert_eq!(c.rules.allow, prefixes(&["10.0.0.0/8"]));
    assert_eq!(c.rules.deny[0].prefixes, prefixes(&["192.0.2.0/24"]));
}

#[test]
fn unknown_sections_and_nested_keys() {
    assert_eq!(
        errors(
            "[kernel]\ninterfaces = [\"eth0\"]\n[kernel.extra]\nx = 1\n[upstreams]\nport = 1\n[[deny]]\nname = \"a\"\nmdoe = \"report\"\n"
        ),
        "p.toml:3:9: error: unknown key `extra` in [kernel]; expected one of: enabled, interfaces, \
         attach_mode, pin_root, ban_sweep_interval\n\
         p.toml:5:2: error: unknown key `upstreams` in the top level; expected one of: kernel, allow, \
         deny, geo, log, admin, proxy, trusted_proxies, listeners, pools, token_providers, \
         api_keys, routes, cluster, abuse\n\
         p.toml:9:1: error: unknown key `mdoe` in [[deny]]; did you mean `mode`?"
    );
}

#[test]
fn wrong_types_and_words_are_reported_per_key() {
    let text = r#"
[kernel]
enabled = "yes"
interfaces = ["eth0", 5]
attach_mode = "fast"
pin_root = 7
ban_sweep_interval = 10

[log]
level = "verbose"
format = ["json"]
"#;
    assert_eq!(
        errors(text),
        "p.toml:3:11: error: `kernel.enabled`: invalid type: string \"yes\", expected a boolean\n\
         p.toml:4:23: error: `kernel.interfaces`: invalid type: integer `5`, expected a string\n\
         p.toml:5:15: error: `kernel.attach_mode`: unknown value `fast`; expected one of: auto, native, generic\n\
         p.toml:6:12: error: `kernel.pin_root`: invalid type: integer `7`, expected a string\n\
         p.toml:7:22: error: `kernel.ban_sweep_interval`: invalid type: integer `10`, expected a string\n\
         p.toml:10:9: error: `log.level`: unknown value `verbose`; expected one of: trace, debug, info, warn, error\n\
         p.toml:11:10: error: `log.format`: invalid type: sequence, expected a string"
    );
}

#[test]
fn sections_of_the_wrong_type_do_not_cascade() {
    // No "no interfaces" error for a `kernel` that is not a table.
    assert_eq!(
        errors("kernel = 5\ndeny = { name = \"x\" }\ngeo = \"RU\"\nlog = [1]\n"),
        "p.toml:1:10: error: `kernel`: expected a table ([kernel]), found an integer\n\
         p.toml:2:8: error: `deny`: expected an array of tables ([[deny]]), found a table\n\
         p.toml:3:7: error: `geo`: expected a table ([geo]), found a string\n\
         p.toml:4:7: error: `log`: expected a table ([log]), found an array"
    );
    assert_eq!(
        errors("[kernel]\nenabled = 1\n"),
        "p.toml:2:11: error: `kernel.enabled`: invalid type: integer `1`, expected a boolean"
    );
    assert_eq!(
        errors("deny = [1, { name = \"ok\" }]\n[kernel]\nenabled = false\n"),
        "p.toml:1:9: error: `deny`: expected an array of tables ([[deny]]), found an integer"
    );
}

#[test]
fn kernel_checks() {
    assert_eq!(
        errors(""),
        "p.toml:1:1: error: no interface to attach to: list at least one in `kernel.interfaces`, \
         or set `kernel.enabled = false`"
    );
    assert_eq!(
        errors("[kernel]\ninterfaces = []\n"),
        "p.toml:2:14: error: no interface to attach to: list at least one in `kernel.interfaces`, \
         or set `kernel.enabled = false`"
    );
    assert_eq!(
        loads("[kernel]\nenabled = false\n").kernel.interfaces,
        Vec::<String>::new()
    );
    let text = r#"[kernel]
interfaces = ["", "a-very-long-name0", "eth/0", "eth 0", "..", "eth0:1", "eth0", "eth0", "a\u0000"]
pin_root = "sys/fs/bpf"
ban_sweep_interval = "2h"
"#;
    assert_eq!(
        errors(text),
        "p.toml:2:15: error: invalid interface name ``: it is empty\n\
         p.toml:2:19: error: invalid interface name `a-very-long-name0`: it is longer than 15 bytes\n\
         p.toml:2:40: error: invalid interface name `eth/0`: it contains `/`\n\
         p.toml:2:49: error: invalid interface name `eth 0`: it contains whitespace\n\
         p.toml:2:58: error: invalid interface name `..`: `.` and `..` are not interface names\n\
         p.toml:2:64: error: invalid interface name `eth0:1`: it contains `:`\n\
         p.toml:2:82: error: interface `eth0` is listed more than once\n\
         p.toml:2:90: error: invalid interface name `a\0`: it contains a NUL byte\n\
         p.toml:3:12: error: `kernel.pin_root` must be an absolute path, not `sys/fs/bpf`\n\
         p.toml:4:22: error: `kernel.ban_sweep_interval`: invalid duration `2h`: must be at most 1h"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}ban_sweep_interval = \"0ms\"\n")),
        "p.toml:3:22: error: `kernel.ban_sweep_interval`: invalid duration `0ms`: must be greater than zero"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}ban_sweep_interval = \"10\"\n")),
        "p.toml:3:22: error: `kernel.ban_sweep_interval`: invalid duration `10`: time unit needed, \
         for example 10sec or 10ms"
    );
}

#[test]
fn deny_set_names() {
    let text = format!(
        "{MINIMAL}[[deny]]\nname = \"bogons\"\n[[deny]]\nmode = \"report\"\n[[deny]]\nname = \"Bad Name\"\n\
         [[deny]]\nname = \"bogons\"\n[[deny]]\nname = \"{}\"\n[[deny]]\nname = 5\n",
        "x".repeat(33)
    );
    assert_eq!(
        errors(&text),
        "p.toml:5:1: error: missing required key `name` in [[deny]]\n\
         p.toml:8:8: error: invalid deny set name `Bad Name`: use 1 to 32 characters from a-z, 0-9, `_` and `-`\n\
         p.toml:10:8: error: duplicate deny set name `bogons` (first used on line 4)\n\
         p.toml:12:8: error: invalid deny set name `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`: use 1 to 32 characters \
         from a-z, 0-9, `_` and `-`\n\
         p.toml:14:8: error: `deny.name`: invalid type: integer `5`, expected a string"
    );
    let ok = loads(&format!(
        "{MINIMAL}[[deny]]\nname = \"{}\"\n",
        "a".repeat(32)
    ));
    assert_eq!(ok.rules.deny[0].name.len(), 32);
}

#[test]
fn cidrs_in_the_config() {
    let text = format!(
        "{MINIMAL}[allow]\ncidrs = [\"10.0.0.0/33\", \"::1/129\", \"nope\", \"2001:db8::1/32\", \"\"]\nfiles = [\"\"]\n"
    );
    assert_eq!(
        errors(&text),
        "p.toml:4:10: error: prefix length 33 is longer than 32 for this address family\n\
         p.toml:4:25: error: prefix length 129 is longer than 128 for this address family\n\
         p.toml:4:36: error: `nope` is not an IP address or CIDR prefix\n\
         p.toml:4:44: error: `2001:db8::1/32` has bits set past its prefix length; did you mean `2001:db8::/32`?\n\
         p.toml:4:62: error: `` is not an IP address or CIDR prefix\n\
         p.toml:5:10: error: `allow.files`: empty file path"
    );
}

#[test]
fn geo_checks() {
    let text = format!(
        "{MINIMAL}[geo]\nblock = [\"RU\", \"RUS\", \"1a\", \"\"]\nunknown = \"maybe\"\nmode = \"log\"\nextra = 1\n"
    );
    assert_eq!(
        errors(&text),
        "p.toml:3:1: error: missing required key `database` in [geo]\n\
         p.toml:4:16: error: `RUS` is not an ISO 3166-1 alpha-2 country code (two letters, such as `RU`)\n\
         p.toml:4:23: error: `1a` is not an ISO 3166-1 alpha-2 country code (two letters, such as `RU`)\n\
         p.toml:4:29: error: `` is not an ISO 3166-1 alpha-2 country code (two letters, such as `RU`)\n\
         p.toml:5:11: error: `geo.unknown`: unknown value `maybe`; expected one of: pass, block\n\
         p.toml:6:8: error: `geo.mode`: unknown value `log`; expected one of: enforce, report\n\
         p.toml:7:1: error: unknown key `extra` in [geo]; expected one of: database, block, unknown, mode"
    );
    let nothing = "[geo]\ndatabase = \"/nonexistent/x.mmdb\"\n";
    let e = errors(&format!("{MINIMAL}{nothing}"));
    assert!(
        e.starts_with(
            "p.toml:3:1: error: [geo] blocks nothing: list countries in `geo.block`, set \
             `geo.unknown = \"block\"`, or remove the [geo] section\n\
             p.toml:4:12: error: "
        ),
        "{e}"
    );
    assert!(e.contains("/nonexistent/x.mmdb"), "{e}");
    let e = errors(&format!("{MINIMAL}{nothing}block = []\n"));
    assert!(
        e.ends_with(
            "\np.toml:5:9: error: [geo] blocks nothing: list countries in `geo.block`, set \
         `geo.unknown = \"block\"`, or remove the [geo] section"
        ),
        "{e}"
    );
    // Blocking only unknown addresses is a deliberate choice, not "nothing".
    let e = errors(&format!("{MINIMAL}{nothing}unknown = \"block\"\n"));
    assert!(!e.contains("blocks nothing"), "{e}");
}

#[test]
fn first_syntax_error_only() {
    assert_eq!(
        errors("[kernel]\nenabled = tru\ninterfaces = [\"eth0\"\n[allow]\n"),
        "p.toml:2:11: error: invalid TOML: invalid boolean, expected `true`"
    );
    assert_eq!(
        errors("[kernel]\ninterfaces = [\"eth0\"]\ninterfaces = []\n"),
        "p.toml:3:1: error: invalid TOML: duplicate key"
    );
}

#[test]
fn config_file_errors() {
    let e = load_bytes(
        b"[kernel]\ninterfaces = [\"eth\xff\"]\n",
        Path::new("p.toml"),
    )
    .expect_err("not UTF-8");
    assert_eq!(
        e.to_string(),
        "p.toml:2:19: error: the file is not valid UTF-8"
    );

    let e = load(Path::new("/nonexistent/portcullis.toml")).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "/nonexistent/portcullis.toml:1:1: error: cannot read the config file: No such file or \
         directory (os error 2)"
    );
}

#[test]
fn relative_files_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(sub.join("mgmt.txt"), "10.1.0.0/16 # ops\n").expect("write");
    std::fs::write(sub.join("deny.txt"), "192.0.2.0/24\nbad\n").expect("write");
    let config = sub.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "{MINIMAL}[allow]\ncidrs = [\"10.0.0.0/16\"]\nfiles = [\"mgmt.txt\"]\n\
             [[deny]]\nname = \"d\"\nfiles = [\"deny.txt\", \"{}\"]\n",
            sub.join("mgmt.txt").display()
        ),
    )
    .expect("write");
    let e = load(&config).expect_err("bad line");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:1: error: `bad` is not an IP address or CIDR prefix",
            sub.join("deny.txt").display()
        )
    );
    std::fs::write(sub.join("deny.txt"), "192.0.2.0/24\n").expect("write");
    let c = load(&config).expect("loads");
    assert_eq!(c.source, config);
    assert_eq!(c.rules.allow, prefixes(&["10.0.0.0/16", "10.1.0.0/16"]));
    assert_eq!(
        c.rules.deny[0].prefixes,
        prefixes(&["192.0.2.0/24", "10.1.0.0/16"])
    );
}

#[test]
fn the_shipped_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/portcullis.toml");
    let c = load(&path).unwrap_or_else(|e| panic!("examples/portcullis.toml:\n{e}"));
    assert!(c.kernel.enabled);
    assert!(!c.rules.allow.is_empty());
    assert!(
        c.rules
            .deny
            .iter()
            .any(|s| s.name == "bogons" && !s.prefixes.is_empty())
    );
    assert!(
        c.rules.geo.is_none(),
        "the example's [geo] section stays commented out"
    );
    // Its https listener and pool TLS stay commented out too (no certificates are shipped);
    // examples/proxy.toml covers them, in tests/config_check.rs.
    assert_eq!(c.proxy.listeners.len(), 1);
    assert!(matches!(
        c.proxy.listeners[0].kind,
        ListenerKind::Http(PlainMode::RedirectToHttps { port: 443 })
    ));
    assert_eq!(c.proxy.pools.len(), 1);
    assert!(c.proxy.pools[0].tls.is_none() && c.proxy.pools[0].health.is_some());
    assert_eq!(c.proxy.routes.len(), 1);
    assert_eq!(
        c.admin.listen,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for (open, close) in [("[", "]"), ("{a=", "}")] {
        let text = format!(
            "kernel.interfaces = {}{}\n",
            open.repeat(100_000),
            close.repeat(100_000)
        );
        assert!(load_str(&text, Path::new("p.toml")).is_err());
    }
    let dotted = format!("kernel.{} = 1\n", vec!["a"; 100_000].join("."));
    assert!(load_str(&dotted, Path::new("p.toml")).is_err());
}

const USERSPACE: &str = "[kernel]\nenabled = false\n";

#[test]
fn proxy_sections_of_the_wrong_type_do_not_cascade() {
    assert_eq!(
        errors(
            "admin = 1\nproxy = []\ntrusted_proxies = \"x\"\nlisteners = {}\npools = 2\n\
             routes = [3]\nkernel.enabled = false\n"
        ),
        "p.toml:1:9: error: `admin`: expected a table ([admin]), found an integer\n\
         p.toml:2:9: error: `proxy`: expected a table ([proxy]), found an array\n\
         p.toml:3:19: error: `trusted_proxies`: expected a table ([trusted_proxies]), found a string\n\
         p.toml:4:13: error: `listeners`: expected an array of tables ([[listeners]]), found a table\n\
         p.toml:5:9: error: `pools`: expected an array of tables ([[pools]]), found an integer\n\
         p.toml:6:11: error: `routes`: expected an array of tables ([[routes]]), found an integer"
    );
    // A refused [trusted_proxies] does not also make proxy_protocol "untrusted".
    assert_eq!(
        errors(
            "trusted_proxies = 1\nkernel.enabled = false\n[[listeners]]\nname = \"a\"\n\
             bind = \"0.0.0.0:1\"\nprotocol = \"http\"\nproxy_protocol = true\n"
        ),
        "p.toml:1:19: error: `trusted_proxies`: expected a table ([trusted_proxies]), found an integer"
    );
}

#[test]
fn required_proxy_keys() {
    assert_eq!(
        errors(&format!(
            "{USERSPACE}[[listeners]]\n[listeners.tls]\ncertificates = [{{}}]\n[[pools]]\n\
             [pools.tls]\n[pools.health]\n[[routes]]\n"
        )),
        "p.toml:3:1: error: missing required key `name` in [[listeners]]\n\
         p.toml:3:1: error: missing required key `bind` in [[listeners]]\n\
         p.toml:3:1: error: missing required key `protocol` in [[listeners]]\n\
         p.toml:5:17: error: missing required key `cert` in [[listeners.tls.certificates]]\n\
         p.toml:5:17: error: missing required key `key` in [[listeners.tls.certificates]]\n\
         p.toml:6:1: error: missing required key `name` in [[pools]]\n\
         p.toml:6:1: error: missing required key `endpoints` in [[pools]]\n\
         p.toml:7:1: error: missing required key `ca` in [pools.tls]\n\
         p.toml:8:1: error: missing required key `path` in [pools.health]\n\
         p.toml:9:1: error: missing required key `name` in [[routes]]\n\
         p.toml:9:1: error: missing required key `path` in [[routes]]\n\
         p.toml:9:1: error: missing required key `pool` in [[routes]]"
    );
    assert_eq!(
        errors(&format!(
            "{USERSPACE}[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\nprotocol = \"https\"\n\
             [listeners.tls]\nalpn = []\n[[listeners]]\nname = \"b\"\nbind = \"0.0.0.0:2\"\n\
             protocol = \"https\"\n[listeners.tls]\ncertificates = []\nalpn = [\"h3\", \"h2\", \"h2\"]\n"
        )),
        "p.toml:7:1: error: missing required key `certificates` in [listeners.tls]\n\
         p.toml:8:8: error: `listeners.tls.alpn` is empty: list `h2`, `http/1.1` or both, or remove \
         the key for both\n\
         p.toml:14:16: error: `listeners.tls.certificates` is empty: list at least one `{ cert = \
         \"...\", key = \"...\" }`\n\
         p.toml:15:9: error: `listeners.tls.alpn`: unknown value `h3`; expected one of: h2, http/1.1\n\
         p.toml:15:21: error: `listeners.tls.alpn`: `h2` is listed more than once"
    );
}

#[test]
fn listener_values() {
    let text = format!(
        "{USERSPACE}[[listeners]]\nname = \"Public\"\nbind = \"localhost:80\"\nprotocol = \"tcp\"\n\
         max_connections = 0\nhandshake_timeout = \"0s\"\nheader_timeout = \"6m\"\n\
         idle_timeout = \"2h\"\nredirect_port = 70000\nhttp_mode = \"proxy\"\n\
         [[listeners]]\nname = \"b\"\nbind = \"0.0.0.0:80\"\nprotocol = \"http\"\n\
         [[listeners]]\nname = \"b\"\nbind = \"[::]:80\"\nprotocol = \"http\"\n"
    );
    assert_eq!(
        errors(&text),
        "p.toml:4:8: error: invalid listener name `Public`: use 1 to 32 characters from a-z, 0-9, \
         `_` and `-`\n\
         p.toml:5:8: error: `listeners.bind`: `localhost:80` is not an IP address and port such as \
         `0.0.0.0:8443`\n\
         p.toml:6:12: error: `listeners.protocol`: unknown value `tcp`; expected one of: https, http\n\
         p.toml:7:19: error: `listeners.max_connections`: 0 is out of range; expected 1 to 1000000\n\
         p.toml:8:21: error: `listeners.handshake_timeout`: invalid duration `0s`: must be greater \
         than zero\n\
         p.toml:9:18: error: `listeners.header_timeout`: invalid duration `6m`: must be at most 5m\n\
         p.toml:10:16: error: `listeners.idle_timeout`: invalid duration `2h`: must be at most 1h\n\
         p.toml:11:17: error: `listeners.redirect_port`: 70000 is out of range; expected 1 to 65535\n\
         p.toml:12:13: error: `listeners.http_mode`: unknown value `proxy`; expected one of: \
         redirect, serve\n\
         p.toml:18:8: error: duplicate listener name `b` (first used on line 14)\n\
         p.toml:19:8: error: bind address [::]:80 overlaps 0.0.0.0:80, bound by listener `b` (line 15)"
    );
}

#[test]
fn route_values() {
    let text = format!(
        "{USERSPACE}[[pools]]\nname = \"api\"\nendpoints = [\"127.0.0.1:1\"]\n\
         [[routes]]\nname = \"r\"\nproduct = \"Shop\"\nhosts = []\npath = \"orders?x\"\n\
         path_match = \"regex\"\nmethods = []\npool = \"api\"\nretries = 6\nwebsocket = \"yes\"\n\
         [routes.timeouts]\nconnect = \"6m\"\nresponse_headers = \"90s\"\n\
         [[routes]]\nname = \"r\"\npath = \"/x?y\"\npool = \"api\"\n"
    );
    assert_eq!(
        errors(&text),
        "p.toml:8:11: error: invalid product name `Shop`: use 1 to 32 characters from a-z, 0-9, `_` \
         and `-`\n\
         p.toml:9:9: error: `routes.hosts` is empty: list at least one host, or remove the key to \
         match any host\n\
         p.toml:10:8: error: `routes.path`: invalid path `orders?x`: it must start with `/`\n\
         p.toml:11:14: error: `routes.path_match`: unknown value `regex`; expected one of: prefix, \
         exact\n\
         p.toml:12:11: error: `routes.methods` is empty: list at least one method, or remove the key \
         to match any method\n\
         p.toml:14:11: error: `routes.retries`: 6 is out of range; expected 0 to 5\n\
         p.toml:15:13: error: `routes.websocket`: invalid type: string \"yes\", expected a boolean\n\
         p.toml:17:11: error: `routes.timeouts.connect`: invalid duration `6m`: must be at most 5m\n\
         p.toml:18:20: error: `routes.timeouts.total` (1m) must be at least \
         `routes.timeouts.response_headers` (1m 30s)\n\
         p.toml:20:8: error: duplicate route name `r` (first used on line 7)\n\
         p.toml:21:8: error: `routes.path`: invalid path `/x?y`: it contains `?`: routes match the \
         path alone, without the query"
    );
}

#[test]
fn proxy_only_config_with_no_routes_loads() {
    let c = loads(&format!(
        "{USERSPACE}[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\
         http_mode = \"serve\"\n"
    ));
    assert!(!c.kernel.enabled && c.kernel.interfaces.is_empty());
    assert_eq!(c.proxy.listeners.len(), 1);
    assert!(c.proxy.routes.is_empty());
    // No proxy sections at all: no listeners, the admin endpoint on its loopback default.
    let c = loads(MINIMAL);
    assert!(c.proxy.listeners.is_empty());
    assert_eq!(
        c.admin.listen,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
}

/// A config touching every section, the seed of the mutation test. Endpoints are addresses:
/// a mutation that turned one into a name would wait on DNS.
const SEED: &str = r#"
[kernel]
enabled = true
interfaces = ["eth0"]
attach_mode = "auto"
pin_root = "/sys/fs/bpf/portcullis"
ban_sweep_interval = "10s"
[allow]
cidrs = ["10.0.0.0/8", "2001:db8::/32"]
[[deny]]
name = "bogons"
mode = "report"
cidrs = ["192.0.2.0/24"]
[geo]
database = "none.mmdb"
block = ["RU"]
unknown = "pass"
mode = "enforce"
[log]
level = "info"
format = "json"
[admin]
listen = "127.0.0.1:9901"
allow_remote = false
[proxy]
drain_timeout = "30s"
[trusted_proxies]
load_balancers = ["10.0.0.0/8"]
proxies = ["10.1.0.0/16"]
client_ip_header = "forwarded"
[[listeners]]
name = "public"
bind = "0.0.0.0:8443"
protocol = "https"
proxy_protocol = true
max_connections = 10
[listeners.tls]
certificates = [{ cert = "c.pem", key = "k.pem" }]
min_version = "1.3"
alpn = ["h2"]
[listeners.tls.hsts]
max_age = "365d"
include_subdomains = true
preload = true
[[listeners]]
name = "plain"
bind = "[::]:8080"
protocol = "http"
http_mode = "redirect"
redirect_port = 8443
[[pools]]
name = "api"
endpoints = ["[::1]:9001"]
balance = "power_of_two"
[pools.tls]
ca = "ca.pem"
server_name = "api.internal"
[pools.health]
path = "/healthz"
interval = "5s"
timeout = "2s"
[pools.passive]
consecutive_failures = 5
[[routes]]
name = "orders"
hosts = ["api.example.com", "*.example.com"]
path = "/orders"
methods = ["GET"]
pool = "api"
max_body_size = "1MiB"
[routes.timeouts]
total = "60s"
[[routes]]
name = "all"
path = "/"
path_match = "exact"
pool = "api"
"#;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let _ = load_bytes(&bytes, Path::new("/nonexistent/fuzz.toml"));
    }

    #[test]
    fn random_toml_ish_text_never_panics(text in r#"[\[\]{}="a-z0-9.,/:# \n-]{0,200}"#) {
        let _ = load_str(&text, Path::new("/nonexistent/fuzz.toml"));
    }

    #[test]
    fn mutated_configs_never_panic(
        edits in proptest::collection::vec((0usize..SEED.len(), 0usize..4, r#"[\[\]{}="\\a-z0-9./ \n\u{e9}]{0,3}"#), 1..6)
    ) {
        let mut text = SEED.to_owned();
        for (at, remove, insert) in edits {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + remove).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(at..end, &insert);
        }
        let _ = load_str(&text, Path::new("/nonexistent/fuzz.toml"));
    }
}

// ---------------------------------------------------------------------------------------------
// Token providers: static keys, start-up policy, verified-token cache bound.

/// Writes `files` and `config` (as `p.toml`) into a new directory; returns the load result
/// with the directory shown as `$DIR`.
fn load_in_dir(config: &str, files: &[(&str, &str)]) -> Result<Config, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let path = dir.path().join("p.toml");
    std::fs::write(&path, config).expect("write");
    load(&path).map_err(|e| {
        e.to_string()
            .replace(&dir.path().display().to_string(), "$DIR")
    })
}

const PROVIDER: &str = "[kernel]\nenabled = false\n[[token_providers]]\nname = \"idp\"\n\
                        issuer = \"https://idp.example\"\naudiences = [\"api\"]\n";

#[test]
fn static_keys_from_a_file_or_inline() {
    use crate::identity::oidc::{KeySource, StartupPolicy};
    use crate::identity::test_tokens::{TestKey, jwks};
    let keys = jwks(&[&TestKey::new("k1")]);
    let config = format!(
        "{PROVIDER}jwks_file = \"keys.json\"\n\
         [[token_providers]]\nname = \"inline\"\nissuer = \"http://partner.example\"\n\
         audiences = [\"api\"]\njwks = '{keys}'\ntoken_cache_entries = 0\n\
         [[token_providers]]\nname = \"discovered\"\nissuer = \"http://127.0.0.1:9000\"\n\
         audiences = [\"api\"]\nstartup = \"serve\"\ntoken_cache_entries = 50\n"
    );
    let c = load_in_dir(&config, &[("keys.json", &keys)]).unwrap_or_else(|e| panic!("{e}"));
    let [file, inline, discovered] = &c.proxy.token_providers[..] else {
        panic!("three providers");
    };
    assert!(
        file.jwks_file
            .as_ref()
            .is_some_and(|p| p.ends_with("keys.json"))
    );
    assert!(matches!(&file.oidc.keys, KeySource::Static(j) if j.json() == keys.as_bytes()));
    assert_eq!(file.oidc.token_cache_entries, 10_000);
    assert_eq!(file.oidc.startup, StartupPolicy::WaitForKeys);
    assert!(inline.jwks_file.is_none());
    assert!(matches!(&inline.oidc.keys, KeySource::Static(j) if j.json() == keys.as_bytes()));
    assert_eq!(inline.oidc.token_cache_entries, 0);
    assert_eq!(discovered.oidc.keys, KeySource::Discovery);
    assert_eq!(discovered.oidc.startup, StartupPolicy::Serve);
    assert_eq!(discovered.oidc.token_cache_entries, 50);
}

#[test]
fn bad_jwks_files_are_located_at_the_key() {
    let config = format!("{PROVIDER}jwks_file = \"keys.json\"\n");
    let unusable = "{\n  \"keys\": [\n    {\"kty\": \"oct\", \"k\": \"c2VjcmV0\", \"kid\": \"hmac\"},\n    \
                    {\"kty\": \"OKP\", \"crv\": \"Ed25519\", \"x\": \"AAAA\"}\n  ]\n}\n";
    assert_eq!(
        load_in_dir(&config, &[("keys.json", unusable)]).unwrap_err(),
        "$DIR/keys.json:3:5: error: invalid JWKS: no usable signature verification key: key #1 \
         (kid `hmac`) is not usable: symmetric (oct) keys are never used: HMAC is refused by \
         design\n\
         $DIR/keys.json:4:5: error: invalid JWKS: no usable signature verification key: key #2 \
         is not usable: EC or OKP coordinates of the wrong length or not a point on the curve"
    );
    use crate::identity::test_tokens::TestKey;
    let (a, b) = (TestKey::new("same"), TestKey::new("same"));
    let duplicate = format!("{{\"keys\": [\n{},\n  {}\n]}}", a.jwk(), b.jwk());
    assert_eq!(
        load_in_dir(&config, &[("keys.json", &duplicate)]).unwrap_err(),
        "$DIR/keys.json:3:3: error: invalid JWKS: key #2 (kid `same`) repeats the kid of key \
         #1: a token names its key by kid, so kids must be unique"
    );
    assert_eq!(
        load_in_dir(&config, &[("keys.json", "{\"keys\": [\n  {\"kty\": }\n]}")]).unwrap_err(),
        "$DIR/keys.json:2:11: error: invalid JWKS: not JSON: expected value"
    );
    assert_eq!(
        load_in_dir(&config, &[("keys.json", "[]")]).unwrap_err(),
        "$DIR/keys.json:1:1: error: invalid JWKS: not a JSON object with a \"keys\" array of \
         JWKs (RFC 7517 section 5), or a member name is repeated"
    );
    assert_eq!(
        load_in_dir(&config, &[]).unwrap_err(),
        "$DIR/p.toml:7:13: error: `token_providers.jwks_file`: cannot read the JWKS file \
         `keys.json`: No such file or directory (os error 2)"
    );
}

#[test]
fn key_sources_and_the_keys_that_go_with_them() {
    use crate::identity::test_tokens::{TestKey, jwks};
    let keys = jwks(&[&TestKey::new("k1")]);
    let config = format!(
        "{PROVIDER}jwks_file = \"keys.json\"\njwks = '{keys}'\n\
         [[token_providers]]\nname = \"s\"\nissuer = \"https://s.example\"\naudiences = [\"api\"]\n\
         jwks = '{keys}'\nca = \"ca.pem\"\njwks_refresh = \"5m\"\nunknown_kid_interval = \"10s\"\n\
         startup = \"serve\"\n\
         [[token_providers]]\nname = \"d\"\nissuer = \"http://127.0.0.1:9000\"\n\
         audiences = [\"api\"]\nstartup = \"later\"\ntoken_cache_entries = -1\n\
         [[token_providers]]\nname = \"e\"\nissuer = \"idp.example\"\naudiences = [\"api\"]\n\
         jwks = '{{\"keys\": []}}'\ntoken_cache_entries = 2000000\n"
    );
    assert_eq!(
        load_in_dir(&config, &[("keys.json", &keys)]).unwrap_err(),
        "$DIR/p.toml:8:8: error: `token_providers.jwks`: the provider already has its keys from \
         `token_providers.jwks_file`; give keys one way: `jwks_file`, inline `jwks`, or neither \
         to discover them from the issuer\n\
         $DIR/p.toml:14:6: error: `token_providers.ca` applies only to providers whose keys are \
         discovered from the issuer (not with `jwks_file` or `jwks`)\n\
         $DIR/p.toml:15:16: error: `token_providers.jwks_refresh` applies only to providers whose \
         keys are discovered from the issuer (not with `jwks_file` or `jwks`)\n\
         $DIR/p.toml:16:24: error: `token_providers.unknown_kid_interval` applies only to \
         providers whose keys are discovered from the issuer (not with `jwks_file` or `jwks`)\n\
         $DIR/p.toml:17:11: error: `token_providers.startup` applies only to providers whose keys \
         are discovered from the issuer (not with `jwks_file` or `jwks`)\n\
         $DIR/p.toml:22:11: error: `token_providers.startup`: unknown value `later`; expected one \
         of: wait_for_keys, serve\n\
         $DIR/p.toml:23:23: error: `token_providers.token_cache_entries`: invalid value `-1`: it \
         must be 0 (no cache) to 1000000\n\
         $DIR/p.toml:26:10: error: `token_providers.issuer`: `idp.example` is not an \
         http(s)://host[:port][/path] URL\n\
         $DIR/p.toml:28:8: error: `token_providers.jwks`: invalid JWKS: the \"keys\" array is \
         empty: list the issuer's public signing keys\n\
         $DIR/p.toml:29:23: error: `token_providers.token_cache_entries`: invalid value \
         `2000000`: it must be 0 (no cache) to 1000000"
    );
}
