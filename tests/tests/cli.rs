//! The `portcullis` binary as an operator uses it: `check` exit codes and messages, the ban
//! and stats commands, `run` with SIGHUP reloads (a broken config keeps the old rules), SIGKILL
//! of the process (the pinned filter keeps dropping), a restart that adopts the pinned state,
//! and `detach` removing it all.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis::kernel::{Generation, PinLayout, attachments, read_meta};
use portcullis::rules::RuleSet;
use portcullis::rules::table::compile;
use portcullis_tests::netns::Link;
use portcullis_tests::pins::PinRoot;
use portcullis_tests::{portcullis_bin, require_privileges};

fn portcullis(args: &[&str]) -> Output {
    Command::new(portcullis_bin())
        .args(args)
        .output()
        .expect("run portcullis")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_reports_every_error_with_its_place_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[kernel]\ninterfaces = [\"eth0\"]\ncolour = \"blue\"\n\n[[deny]]\nname = \"x\"\ncidrs = [\"10.0.0.1/8\", \"300.1.1.1\"]\n",
    )
    .unwrap();
    let out = portcullis(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let shown = cfg.display().to_string();
    assert!(err.contains(&format!("{shown}:3:1: error:")), "{err}");
    assert!(err.contains(&format!("{shown}:7:10: error:")), "{err}");
    assert!(err.contains(&format!("{shown}:7:24: error:")), "{err}");
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/portcullis.toml");
    let out = portcullis(&["check", "-c", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration is valid"));
}

#[test]
fn ban_commands_round_trip() {
    if !require_privileges("ban_commands_round_trip") {
        return;
    }
    let pins = PinRoot::new();
    // A loaded (unattached) generation creates the pinned maps the commands work on.
    let _g = Generation::load(
        &PinLayout::new(pins.path()),
        &compile(&RuleSet::default()).unwrap(),
    )
    .unwrap();
    let root = pins.path().to_str().unwrap();
    let out = portcullis(&[
        "ban",
        "add",
        "192.0.2.1",
        "--ttl",
        "1h",
        "--reason",
        "auth-failure",
        "--pin-root",
        root,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = portcullis(&["ban", "add", "2001:db8::/32", "--pin-root", root]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&portcullis(&["ban", "list", "--pin-root", root]).stdout);
    assert!(
        list.contains("192.0.2.1/32") && list.contains("auth-failure"),
        "{list}"
    );
    assert!(
        list.contains("2001:db8::/32") && list.contains("never"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&portcullis(&["ban", "list", "--json", "--pin-root", root]).stdout)
            .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert!(
        portcullis(&["ban", "rm", "192.0.2.1", "--pin-root", root])
            .status
            .success()
    );
    let again = portcullis(&["ban", "rm", "192.0.2.1", "--pin-root", root]);
    assert!(!again.status.success() && text(&again.stderr).contains("was not banned"));
    let bad = portcullis(&["ban", "add", "10.0.0.1/8", "--pin-root", root]);
    assert!(
        !bad.status.success() && text(&bad.stderr).contains("10.0.0.0/8"),
        "{}",
        text(&bad.stderr)
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&portcullis(&["stats", "--json", "--pin-root", root]).stdout)
            .unwrap();
    assert!(
        stats["counters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["reason"] == "no-rule")
    );
}

#[test]
fn commands_on_nothing_pinned_say_so() {
    let out = portcullis(&[
        "ban",
        "list",
        "--pin-root",
        "/sys/fs/bpf/portcullis-nothing-here",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no Portcullis state is pinned"),
        "{}",
        text(&out.stderr)
    );
}

/// A `portcullis run` inside the gateway namespace, killed on drop if still running.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(link: &Link, config: &Path) -> Self {
        let child = link
            .gateway
            .command(portcullis_bin())
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis run");
        Self { child }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    fn wait(mut self) -> String {
        let mut out = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn write_config(path: &Path, interface: &str, pin_root: &Path, deny: &[&str]) {
    let cidrs: Vec<String> = deny.iter().map(|c| format!("\"{c}\"")).collect();
    std::fs::write(
        path,
        format!(
            "[kernel]\ninterfaces = [\"{interface}\"]\npin_root = \"{}\"\nban_sweep_interval = \"1s\"\n\n[[deny]]\nname = \"test\"\ncidrs = [{}]\n\n[log]\nformat = \"text\"\n",
            pin_root.display(),
            cidrs.join(", ")
        ),
    )
    .unwrap();
}

fn generation(pins: &Path) -> u64 {
    read_meta(&PinLayout::new(pins), gateway_common::meta::GENERATION)
        .unwrap()
        .unwrap_or(0)
}

const A: &str = "192.0.2.10";
const B: &str = "198.51.100.10";

fn received(link: &Link) -> (bool, bool) {
    let a: IpAddr = A.parse().unwrap();
    let b: IpAddr = B.parse().unwrap();
    let got = link.udp_exchange(&[a, b], 5);
    (got.contains_key(&a), got.contains_key(&b))
}

#[test]
fn run_reloads_on_sighup_survives_sigkill_adopts_on_restart_and_detaches() {
    if !require_privileges("run_reloads_on_sighup_survives_sigkill_adopts_on_restart_and_detaches")
    {
        return;
    }
    let link = Link::new(&[A, B]);
    let pins = PinRoot::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg: PathBuf = dir.path().join("portcullis.toml");
    write_config(&cfg, &link.gateway_if, pins.path(), &["192.0.2.0/24"]);
    let layout = PinLayout::new(pins.path());

    let daemon = Daemon::start(&link, &cfg);
    wait_for("the filter to attach", || {
        !attachments(&layout).unwrap().is_empty()
    });
    assert_eq!(received(&link), (false, true), "A is denied, B passes");
    let first = generation(pins.path());

    // A broken config is refused on SIGHUP and the old rules stay in force.
    std::fs::write(&cfg, "[kernel]\ninterfaces = [\"x\"]\nbogus = 1\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        generation(pins.path()),
        first,
        "a broken config must not load"
    );
    assert_eq!(received(&link), (false, true));

    // A good config is applied on SIGHUP.
    write_config(&cfg, &link.gateway_if, pins.path(), &["198.51.100.0/24"]);
    daemon.signal(libc::SIGHUP);
    wait_for("the reload", || generation(pins.path()) > first);
    assert_eq!(received(&link), (true, false), "the new rules apply");
    let reloaded = generation(pins.path());

    // SIGKILL: no cleanup runs, and the pinned filter keeps dropping.
    daemon.signal(libc::SIGKILL);
    let log = daemon.wait();
    assert!(
        log.contains("reload refused"),
        "the refusal is logged: {log}"
    );
    assert_eq!(
        received(&link),
        (true, false),
        "protection survives the process"
    );

    // A restart with the same config adopts what is pinned instead of loading again.
    let daemon = Daemon::start(&link, &cfg);
    std::thread::sleep(Duration::from_millis(1500));
    daemon.signal(libc::SIGTERM);
    let log = daemon.wait();
    assert!(log.contains("adopted the pinned program"), "{log}");
    assert_eq!(generation(pins.path()), reloaded);
    assert_eq!(
        received(&link),
        (true, false),
        "SIGTERM leaves the filter in place"
    );

    // `detach` removes everything: traffic flows and nothing stays pinned.
    let out = portcullis(&["detach", "--pin-root", pins.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed link"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(received(&link), (true, true));
    assert!(!pins.path().exists(), "the pin root is gone");
}
