//! Real traffic over veth pairs in network namespaces the tests create: the XDP filter attached
//! to the gateway's end drops what the rules deny, passes the rest, counts both, honours ban
//! expiry and report-only mode, swaps rule sets atomically under traffic, and keeps enforcing
//! after the userspace process is killed. Each test owns its namespaces and pins (guards).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis::kernel::{
    AttachMode, AttachedMode, BanReason, Bans, Counters, KernelControl, PinLayout, ReloadOutcome,
};
use portcullis::rules::table::compile;
use portcullis::rules::{CountryCode, DenySet, GeoRules, Mode, Prefix, RuleSet, UnknownCountry};
use portcullis_tests::netns::{Link, send_to_gateway, xdp_mode};
use portcullis_tests::pins::PinRoot;
use portcullis_tests::require_privileges;

const ALLOWED4: &str = "100.64.0.10";
const DENIED4: &str = "192.0.2.10";
const ALLOWED6: &str = "2001:db8:1::10";
const DENIED6: &str = "2001:db8:bad::10";

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn deny_rules(mode: Mode) -> RuleSet {
    RuleSet {
        deny: vec![DenySet {
            name: "test".into(),
            mode,
            prefixes: vec![p("192.0.2.0/24"), p("2001:db8:bad::/48")],
        }],
        ..RuleSet::default()
    }
}

/// Attaches `rules` to the link's gateway end (from inside the gateway namespace).
fn attach(
    link: &Link,
    pins: &PinRoot,
    rules: &RuleSet,
    mode: AttachMode,
) -> (KernelControl, ReloadOutcome) {
    let compiled = compile(rules).unwrap();
    let interfaces = vec![link.gateway_if.clone()];
    link.gateway.enter(|| {
        let mut k = KernelControl::new(pins.path());
        let outcome = k
            .apply(&compiled, &interfaces, mode)
            .expect("attach the filter");
        (k, outcome)
    })
}

fn counter(pins: &Path, name: &str) -> u64 {
    Counters::open(&PinLayout::new(pins))
        .unwrap()
        .get(name)
        .unwrap()
        .packets
}

#[test]
fn denied_ranges_are_dropped_on_the_wire_in_native_mode() {
    if !require_privileges("denied_ranges_are_dropped_on_the_wire_in_native_mode") {
        return;
    }
    let link = Link::new(&[ALLOWED4, DENIED4, ALLOWED6, DENIED6]);
    let pins = PinRoot::new();
    let (_k, outcome) = attach(&link, &pins, &deny_rules(Mode::Enforce), AttachMode::Auto);
    match outcome {
        ReloadOutcome::Swapped { attached, .. } => {
            assert_eq!(
                attached[0].0.mode,
                AttachedMode::Native,
                "veth supports native XDP"
            )
        }
        other => panic!("expected a fresh attach, got {other:?}"),
    }
    assert_eq!(
        xdp_mode(&link.gateway, &link.gateway_if).as_deref(),
        Some("xdp")
    );

    let got = link.udp_exchange(&[ip(ALLOWED4), ip(DENIED4), ip(ALLOWED6), ip(DENIED6)], 20);
    assert_eq!(got.get(&ip(ALLOWED4)), Some(&20), "{got:?}");
    assert_eq!(got.get(&ip(ALLOWED6)), Some(&20), "{got:?}");
    assert_eq!(got.get(&ip(DENIED4)), None, "{got:?}");
    assert_eq!(got.get(&ip(DENIED6)), None, "{got:?}");
    assert!(counter(pins.path(), "drop/deny:test") >= 40);
}

#[test]
fn generic_mode_when_asked_and_report_only_passes_but_counts() {
    if !require_privileges("generic_mode_when_asked_and_report_only_passes_but_counts") {
        return;
    }
    let link = Link::new(&[DENIED4, DENIED6]);
    let pins = PinRoot::new();
    attach(&link, &pins, &deny_rules(Mode::Report), AttachMode::Generic);
    assert_eq!(
        xdp_mode(&link.gateway, &link.gateway_if).as_deref(),
        Some("xdpgeneric")
    );
    let got = link.udp_exchange(&[ip(DENIED4), ip(DENIED6)], 15);
    assert_eq!(
        got.get(&ip(DENIED4)),
        Some(&15),
        "report-only must pass: {got:?}"
    );
    assert_eq!(got.get(&ip(DENIED6)), Some(&15), "{got:?}");
    assert_eq!(counter(pins.path(), "report/deny:test"), 30);
    assert_eq!(counter(pins.path(), "drop/deny:test"), 0);
}

#[test]
fn geo_blocking_from_a_database_written_by_the_test() {
    if !require_privileges("geo_blocking_from_a_database_written_by_the_test") {
        return;
    }
    use portcullis_tests::mmdb_writer::MmdbBuilder;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("country.mmdb");
    let mut builder = MmdbBuilder::new(6, "GeoIP2-Country").alias_ipv4_mapped(true);
    builder.insert("81.2.69.0/24".parse().unwrap(), "GB");
    builder.insert("89.160.20.0/24".parse().unwrap(), "SE");
    builder.insert("2001:218::/32".parse().unwrap(), "JP");
    builder.write_to(&db).unwrap();
    let networks = portcullis::rules::geo::load_country_networks(&db).unwrap();

    let rules = RuleSet {
        geo: Some(GeoRules {
            mode: Mode::Enforce,
            blocked: BTreeSet::from([
                CountryCode::parse("SE").unwrap(),
                CountryCode::parse("JP").unwrap(),
            ]),
            unknown: UnknownCountry::Pass,
            networks,
        }),
        ..RuleSet::default()
    };
    let (gb, se, jp, other) = ("81.2.69.142", "89.160.20.112", "2001:218::1", "100.64.9.9");
    let link = Link::new(&[gb, se, jp, other]);
    let pins = PinRoot::new();
    attach(&link, &pins, &rules, AttachMode::Auto);
    let got = link.udp_exchange(&[ip(gb), ip(se), ip(jp), ip(other)], 10);
    assert_eq!(got.get(&ip(gb)), Some(&10), "{got:?}");
    assert_eq!(got.get(&ip(other)), Some(&10), "{got:?}");
    assert_eq!(got.get(&ip(se)), None, "{got:?}");
    assert_eq!(got.get(&ip(jp)), None, "{got:?}");
    assert_eq!(counter(pins.path(), "drop/geo:SE"), 10);
    assert_eq!(counter(pins.path(), "drop/geo:JP"), 10);
}

#[test]
fn maxmind_test_database_conformance_on_the_wire() {
    if !require_privileges("maxmind_test_database_conformance_on_the_wire") {
        return;
    }
    let Some(db) = portcullis_tests::shared_testdata("mmdb/test-data/GeoIP2-Country-Test.mmdb")
    else {
        return;
    };
    let networks = portcullis::rules::geo::load_country_networks(&db).unwrap();
    let rules = RuleSet {
        geo: Some(GeoRules {
            mode: Mode::Enforce,
            blocked: BTreeSet::from([
                CountryCode::parse("GB").unwrap(),
                CountryCode::parse("JP").unwrap(),
            ]),
            unknown: UnknownCountry::Pass,
            networks,
        }),
        ..RuleSet::default()
    };
    // Known answers: 81.2.69.142 GB, 89.160.20.112 SE, 2001:218::1 JP.
    let link = Link::new(&["81.2.69.142", "89.160.20.112", "2001:218::1"]);
    let pins = PinRoot::new();
    attach(&link, &pins, &rules, AttachMode::Auto);
    let got = link.udp_exchange(
        &[ip("81.2.69.142"), ip("89.160.20.112"), ip("2001:218::1")],
        10,
    );
    assert_eq!(got.get(&ip("89.160.20.112")), Some(&10), "{got:?}");
    assert_eq!(got.get(&ip("81.2.69.142")), None, "{got:?}");
    assert_eq!(got.get(&ip("2001:218::1")), None, "{got:?}");
}

#[test]
fn a_ban_drops_until_it_expires() {
    if !require_privileges("a_ban_drops_until_it_expires") {
        return;
    }
    let link = Link::new(&[ALLOWED4, ALLOWED6]);
    let pins = PinRoot::new();
    let (k, _) = attach(&link, &pins, &RuleSet::default(), AttachMode::Auto);
    let mut bans = Bans::open(k.layout()).unwrap();
    bans.ban(
        p(ALLOWED4),
        Some(Duration::from_millis(1500)),
        BanReason::AuthFailure,
    )
    .unwrap();
    bans.ban(
        p("2001:db8:1::/64"),
        Some(Duration::from_millis(1500)),
        BanReason::RateLimit,
    )
    .unwrap();
    let banned_at = Instant::now();
    let got = link.udp_exchange(&[ip(ALLOWED4), ip(ALLOWED6)], 10);
    assert!(
        banned_at.elapsed() < Duration::from_millis(1500),
        "the exchange took too long to judge"
    );
    assert!(
        got.is_empty(),
        "banned sources must not reach the gateway: {got:?}"
    );
    assert_eq!(counter(pins.path(), "drop/ban:auth-failure"), 10);
    assert_eq!(counter(pins.path(), "drop/ban:rate-limit"), 10);
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(banned_at.elapsed()));
    let got = link.udp_exchange(&[ip(ALLOWED4), ip(ALLOWED6)], 10);
    assert_eq!(
        got.get(&ip(ALLOWED4)),
        Some(&10),
        "the ban expired: {got:?}"
    );
    assert_eq!(got.get(&ip(ALLOWED6)), Some(&10), "{got:?}");
}

#[test]
fn reload_under_traffic_is_atomic() {
    if !require_privileges("reload_under_traffic_is_atomic") {
        return;
    }
    let link = Link::new(&[ALLOWED4, DENIED4, ALLOWED6, DENIED6]);
    let pins = PinRoot::new();
    let (mut k, _) = attach(&link, &pins, &deny_rules(Mode::Enforce), AttachMode::Auto);
    // Two rule sets that both deny the denied sources but differ elsewhere, so every reload
    // really loads and swaps a new generation.
    let variant = |i: usize| {
        let mut r = deny_rules(Mode::Enforce);
        r.deny[0]
            .prefixes
            .push(Prefix::new(ip("10.0.0.0"), 8 + (i % 2) as u8).unwrap());
        r.allow
            .push(Prefix::new(ip("100.100.0.0"), 16 + (i % 3) as u8).unwrap());
        compile(&r).unwrap()
    };
    let rx = link.receiver();
    let senders = link.senders(&[ip(ALLOWED4), ip(DENIED4), ip(ALLOWED6), ip(DENIED6)]);
    // Traffic runs until the reloader has swapped RELOADS times (bounded in rounds and time).
    const RELOADS: usize = 5;
    let reloads_done = AtomicBool::new(false);
    let (sent, n, got) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let started = Instant::now();
            let mut rounds = 0usize;
            let mut accepted = std::collections::HashMap::new();
            while rounds < 200_000 && started.elapsed() < Duration::from_secs(20) {
                for (src, sock) in &senders {
                    if send_to_gateway(sock, *src, rx.port) {
                        *accepted.entry(*src).or_insert(0usize) += 1;
                    }
                }
                rounds += 1;
                if rounds.is_multiple_of(50) {
                    // Pace below what the receiver's buffer absorbs; losses would be ours.
                    std::thread::sleep(Duration::from_millis(1));
                    if reloads_done.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            (rounds, accepted)
        });
        let counts = s.spawn(|| rx.collect());
        let interfaces = vec![link.gateway_if.clone()];
        let mut n = 0;
        link.gateway.enter(|| {
            while n < RELOADS {
                n += 1;
                match k.apply(&variant(n), &interfaces, AttachMode::Auto).unwrap() {
                    ReloadOutcome::Swapped { .. } => {}
                    other => panic!("reload {n} did not swap: {other:?}"),
                }
            }
        });
        reloads_done.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        (sent, n, counts.join().unwrap())
    });
    let (rounds, sent) = sent;
    assert_eq!(n, RELOADS);
    assert!(
        rounds >= 100,
        "too little traffic overlapped the reloads ({rounds} rounds)"
    );
    assert_eq!(
        got.get(&ip(DENIED4)),
        None,
        "a denied packet passed during a swap: {got:?}"
    );
    assert_eq!(got.get(&ip(DENIED6)), None, "{got:?}");
    assert_eq!(
        got.get(&ip(ALLOWED4)),
        sent.get(&ip(ALLOWED4)),
        "an allowed packet was lost: {got:?} of {sent:?}"
    );
    assert_eq!(
        got.get(&ip(ALLOWED6)),
        sent.get(&ip(ALLOWED6)),
        "{got:?} of {sent:?}"
    );
    eprintln!("{n} atomic reloads under {rounds} rounds of traffic");
}
