//! The XDP program on synthetic frames through the kernel's test-run: every verdict, VLAN
//! tags, truncated and malformed headers, IPv6, IPv4-mapped IPv6, fragments, bans and their
//! expiry, and the counters each verdict bumps. No interface or traffic is involved.

use std::net::IpAddr;
use std::time::Duration;

use portcullis::kernel::testrun::test_run;
use portcullis::kernel::{BanReason, Bans, Counters, Generation, PinLayout};
use portcullis::rules::table::compile;
use portcullis::rules::{DenySet, GeoRules, Mode, Prefix, RuleSet, UnknownCountry};
use portcullis_tests::packets::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Frame, raw_frame,
};
use portcullis_tests::pins::PinRoot;
use portcullis_tests::require_privileges;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn rules() -> RuleSet {
    RuleSet {
        allow: vec![p("203.0.113.0/24"), p("2001:db8:a11::/48")],
        deny: vec![
            DenySet {
                name: "bogons".into(),
                mode: Mode::Enforce,
                prefixes: vec![
                    p("192.0.2.0/24"),
                    p("2001:db8:bad::/48"),
                    p("203.0.113.0/24"),
                ],
            },
            DenySet {
                name: "watch".into(),
                mode: Mode::Report,
                prefixes: vec![p("198.51.100.0/24")],
            },
        ],
        geo: Some(GeoRules {
            mode: Mode::Enforce,
            blocked: ["SE".parse_cc()].into(),
            unknown: UnknownCountry::Pass,
            networks: vec![
                (p("81.2.69.0/24"), "GB".parse_cc()),
                (p("89.160.20.0/24"), "SE".parse_cc()),
                (p("2a02:cf40::/29"), "SE".parse_cc()),
            ],
        }),
    }
}

trait ParseCc {
    fn parse_cc(self) -> portcullis::rules::CountryCode;
}
impl ParseCc for &str {
    fn parse_cc(self) -> portcullis::rules::CountryCode {
        portcullis::rules::CountryCode::parse(self).unwrap()
    }
}

struct Loaded {
    _pins: PinRoot,
    layout: PinLayout,
    generation: Generation,
}

fn load(rules: &RuleSet) -> Loaded {
    let pins = PinRoot::new();
    let layout = PinLayout::new(pins.path());
    let compiled = compile(rules).unwrap();
    let generation = Generation::load(&layout, &compiled).expect("load the filter");
    Loaded {
        _pins: pins,
        layout,
        generation,
    }
}

impl Loaded {
    fn run(&self, frame: &[u8]) -> u32 {
        let fd = self.generation.program_fd().unwrap();
        test_run(fd, frame, 1).expect("test run").retval
    }

    fn from(&self, addr: &str) -> u32 {
        self.run(&Frame::udp_from(addr.parse().unwrap()).build())
    }

    fn count(&self, name: &str) -> u64 {
        Counters::open(&self.layout)
            .unwrap()
            .get(name)
            .unwrap()
            .packets
    }
}

#[test]
fn every_static_verdict_and_its_counter() {
    if !require_privileges("every_static_verdict_and_its_counter") {
        return;
    }
    let l = load(&rules());
    // (source, verdict, counter that must rise by one)
    let cases = [
        ("8.8.8.8", XDP_PASS, "pass/no-rule"),
        ("192.0.2.77", XDP_DROP, "drop/deny:bogons"),
        ("2001:db8:bad::1", XDP_DROP, "drop/deny:bogons"),
        ("203.0.113.9", XDP_PASS, "pass/allow"),
        ("2001:db8:a11::9", XDP_PASS, "pass/allow"),
        ("198.51.100.4", XDP_PASS, "report/deny:watch"),
        ("89.160.20.112", XDP_DROP, "drop/geo:SE"),
        ("2a02:cf40::1", XDP_DROP, "drop/geo:SE"),
        ("81.2.69.142", XDP_PASS, "pass/no-rule"),
        ("::ffff:89.160.20.112", XDP_DROP, "drop/geo:SE"),
        ("::ffff:203.0.113.9", XDP_PASS, "pass/allow"),
    ];
    for (src, verdict, counter) in cases {
        let before = l.count(counter);
        assert_eq!(l.from(src), verdict, "verdict for {src}");
        assert_eq!(l.count(counter), before + 1, "counter {counter} for {src}");
    }
}

#[test]
fn vlan_tags_fragments_and_malformed_frames() {
    if !require_privileges("vlan_tags_fragments_and_malformed_frames") {
        return;
    }
    let l = load(&rules());
    let denied: IpAddr = "192.0.2.1".parse().unwrap();
    let denied6: IpAddr = "2001:db8:bad::2".parse().unwrap();
    assert_eq!(
        l.run(&Frame::udp_from(denied).vlan(ETH_P_8021Q, 10).build()),
        XDP_DROP
    );
    assert_eq!(
        l.run(&Frame::udp_from(denied6).vlan(ETH_P_8021Q, 10).build()),
        XDP_DROP
    );
    assert_eq!(
        l.run(
            &Frame::udp_from(denied)
                .vlan(ETH_P_8021AD, 100)
                .vlan(ETH_P_8021Q, 10)
                .build()
        ),
        XDP_DROP,
        "QinQ"
    );
    // A non-first fragment carries no transport header but is judged by its source.
    assert_eq!(
        l.run(&Frame::udp_from(denied).fragment(185).build()),
        XDP_DROP
    );

    // Three tags are more than the program reads: passed and counted as unparsed.
    let before = l.count("pass/unparsed");
    let three = Frame::udp_from(denied)
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2)
        .vlan(ETH_P_8021Q, 3)
        .build();
    assert_eq!(l.run(&three), XDP_PASS);
    // Truncated headers at every length, for each kind of frame: never a drop, never a crash.
    let full4 = Frame::udp_from(denied).build();
    let full6 = Frame::udp_from(denied6).build();
    let tagged = Frame::udp_from(denied).vlan(ETH_P_8021Q, 7).build();
    let mut truncated = 0;
    for frame in [&full4, &full6, &tagged] {
        // test-run needs at least an Ethernet header; every cut inside the IP header is short.
        let ip_end = if frame == &tagged {
            18 + 20
        } else if frame == &full6 {
            14 + 40
        } else {
            14 + 20
        };
        for cut in 14..ip_end {
            assert_eq!(l.run(&frame[..cut]), XDP_PASS, "cut at {cut}");
            truncated += 1;
        }
    }
    // Wrong IP version nibble and a too-short IHL.
    let mut bad_version = full4.clone();
    bad_version[14] = 0x65;
    let mut bad_ihl = full4.clone();
    bad_ihl[14] = 0x44;
    let mut bad_v6 = full6.clone();
    bad_v6[14] = 0x40;
    for f in [&bad_version, &bad_ihl, &bad_v6] {
        assert_eq!(l.run(f), XDP_PASS);
    }
    assert_eq!(l.count("pass/unparsed"), before + 1 + truncated + 3);

    let before = l.count("pass/not-ip");
    assert_eq!(l.run(&raw_frame(ETH_P_ARP, &[0u8; 28])), XDP_PASS);
    assert_eq!(l.count("pass/not-ip"), before + 1);
    let _ = (ETH_P_IP, ETH_P_IPV6);
}

#[test]
fn bans_apply_between_allow_and_deny_and_expire() {
    if !require_privileges("bans_apply_between_allow_and_deny_and_expire") {
        return;
    }
    let l = load(&rules());
    let mut bans = Bans::open(&l.layout).unwrap();
    assert_eq!(l.from("8.8.4.4"), XDP_PASS);
    bans.ban(
        p("8.8.4.4"),
        Some(Duration::from_millis(400)),
        BanReason::AuthFailure,
    )
    .unwrap();
    bans.ban(p("2001:db8:1234::/48"), None, BanReason::RateLimit)
        .unwrap();
    bans.ban(p("203.0.113.0/24"), None, BanReason::Manual)
        .unwrap();
    bans.ban(p("::ffff:100.64.0.0/106"), None, BanReason::Validation)
        .unwrap();

    let before = l.count("drop/ban:auth-failure");
    assert_eq!(l.from("8.8.4.4"), XDP_DROP);
    assert_eq!(l.count("drop/ban:auth-failure"), before + 1);
    assert_eq!(
        l.from("8.8.4.5"),
        XDP_PASS,
        "a host ban covers that host only"
    );
    assert_eq!(l.from("2001:db8:1234:5::1"), XDP_DROP, "prefix ban");
    assert_eq!(l.from("2001:db8:1235::1"), XDP_PASS);
    assert_eq!(
        l.from("100.64.3.4"),
        XDP_DROP,
        "a mapped-prefix ban is an IPv4 ban"
    );
    assert_eq!(
        l.from("203.0.113.7"),
        XDP_PASS,
        "the allow list wins over bans"
    );

    let listed: Vec<String> = bans
        .list()
        .unwrap()
        .iter()
        .map(|b| b.prefix.to_string())
        .collect();
    assert!(listed.contains(&"8.8.4.4/32".to_string()), "{listed:?}");
    assert!(listed.contains(&"100.64.0.0/10".to_string()), "{listed:?}");

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        l.from("8.8.4.4"),
        XDP_PASS,
        "the kernel honours the expiry by itself"
    );
    assert_eq!(bans.sweep().unwrap(), 1);
    assert!(
        bans.list()
            .unwrap()
            .iter()
            .all(|b| b.prefix != p("8.8.4.4"))
    );
    assert!(bans.unban(p("2001:db8:1234::/48")).unwrap());
    assert!(!bans.unban(p("2001:db8:1234::/48")).unwrap());
    assert_eq!(l.from("2001:db8:1234:5::1"), XDP_PASS);
}

#[test]
fn ban_lengths_are_bounded_with_a_clear_error() {
    if !require_privileges("ban_lengths_are_bounded_with_a_clear_error") {
        return;
    }
    let l = load(&RuleSet::default());
    let mut bans = Bans::open(&l.layout).unwrap();
    for len in 24..32 {
        bans.ban(
            Prefix::new("10.0.0.0".parse().unwrap(), len).unwrap(),
            None,
            BanReason::Manual,
        )
        .unwrap();
    }
    let err = bans
        .ban(p("10.0.0.0/16"), None, BanReason::Manual)
        .unwrap_err();
    assert!(
        err.to_string().contains("different prefix lengths"),
        "{err}"
    );
    // Freeing one length makes room again.
    bans.unban(p("10.0.0.0/24")).unwrap();
    bans.ban(p("10.0.0.0/16"), None, BanReason::Manual).unwrap();
    assert!(
        bans.ban(p("10.0.0.0/8"), Some(Duration::ZERO), BanReason::Manual)
            .is_err()
    );
}
