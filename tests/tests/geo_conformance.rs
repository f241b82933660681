//! Conformance of `rules::geo::load_country_networks`, the .mmdb → `(Prefix, CountryCode)`
//! loader behind geo-blocking.
//!
//! - Own data (always run): databases made by `portcullis_tests::mmdb_writer`, both record
//!   schemas, IPv4 and IPv6 databases, with and without MaxMind's IPv4 aliases; exact answers
//!   for hand-written cases, and a property test comparing our prefixes with what the
//!   `maxminddb` crate looks up for random addresses.
//! - Shared data (`PORTCULLIS_TESTDATA`, default `<workspace>/../shared/testdata`): MaxMind's
//!   test databases and known answers, every corrupt database in `mmdb/bad-data`, and the two
//!   real country databases (counts and load time printed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ipnet::IpNet;
use maxminddb::{Reader, path};
use portcullis::rules::geo::{GeoError, load_country_networks};
use portcullis::rules::{CountryCode, Prefix};
use portcullis_tests::mmdb_writer::{MmdbBuilder, Schema, Value};
use proptest::prelude::*;

type Networks = Vec<(Prefix, CountryCode)>;

fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn pfx(s: &str) -> Prefix {
    s.parse().expect("prefix")
}

fn cc(s: &str) -> CountryCode {
    CountryCode::parse(s).expect("country code")
}

/// Writes `b`'s database to a temporary file and loads it.
fn load(b: &MmdbBuilder) -> Result<Networks, GeoError> {
    load_bytes(&b.build())
}

fn load_bytes(bytes: &[u8]) -> Result<Networks, GeoError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.mmdb");
    std::fs::write(&path, bytes).expect("write database");
    load_country_networks(&path)
}

/// The country our list gives `addr` (IPv4-mapped addresses count as IPv4, like the XDP
/// program judges them). Binary search: the list is sorted and non-overlapping, so the only
/// candidate is the last prefix starting at or before the address.
fn country_of(list: &[(Prefix, CountryCode)], addr: IpAddr) -> Option<CountryCode> {
    let host = Prefix::host(addr);
    let key = (host.is_v6(), host.bits());
    let i = list.partition_point(|(p, _)| (p.is_v6(), p.bits()) <= key);
    let (p, c) = list.get(i.checked_sub(1)?)?;
    p.contains(addr).then_some(*c)
}

/// Sorted, and no prefix overlaps another.
fn assert_sorted_and_disjoint(list: &[(Prefix, CountryCode)]) {
    for pair in list.windows(2) {
        let (a, b) = (pair[0].0, pair[1].0);
        assert!(a < b, "not sorted: {a} before {b}");
        assert!(
            a.is_v6() != b.is_v6() || !a.contains(b.addr()),
            "{a} overlaps {b}"
        );
    }
}

/// The last address of a prefix.
fn last_addr(p: Prefix) -> IpAddr {
    match p.addr() {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
        }
    }
}

/// What `maxminddb` says the country of `addr` is, with the loader's documented precedence
/// (`country`, then `registered_country`, then `country_code`; `ZZ` and invalid codes are
/// unknown). An IPv4-mapped address is looked up as the IPv4 address it maps, because that
/// is how the gateway judges it.
fn reference<S: AsRef<[u8]>>(reader: &Reader<S>, addr: IpAddr) -> Option<CountryCode> {
    let addr = match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    record_country(reader, addr)
}

/// The country of the record maxminddb finds for `addr`, looked up literally.
fn record_country<S: AsRef<[u8]>>(reader: &Reader<S>, addr: IpAddr) -> Option<CountryCode> {
    let found = reader.lookup(addr).ok()?;
    let paths = [
        path!["country", "iso_code"].to_vec(),
        path!["registered_country", "iso_code"].to_vec(),
        path!["country_code"].to_vec(),
    ];
    paths.iter().find_map(|p| {
        found
            .decode_path::<String>(p)
            .ok()
            .flatten()
            .and_then(|s| CountryCode::parse(&s))
            .filter(|c| c.as_str() != "ZZ")
    })
}

// ---------------------------------------------------------------------------------------
// Own data
// ---------------------------------------------------------------------------------------

const SCHEMAS: [Schema; 3] = [
    Schema::MaxMind,
    Schema::RegisteredCountry,
    Schema::CountryCode,
];

#[test]
fn ipv4_database_exact_networks() {
    for schema in SCHEMAS {
        for rs in [24, 28, 32] {
            let mut b = MmdbBuilder::new(4, "Test-Country")
                .schema(schema)
                .record_size(rs);
            b.insert(net("81.2.69.0/24"), "GB")
                .insert(net("89.160.0.0/16"), "se")
                .insert(net("10.0.0.0/25"), "US")
                .insert(net("10.0.0.128/25"), "US")
                .insert(net("10.0.1.0/24"), "US")
                .insert(net("198.51.100.0/24"), "ZZ")
                .insert(net("203.0.113.0/24"), "GBR")
                .insert_record(net("192.0.2.0/24"), Value::map([("asn", Value::U32(1))]));
            let got = load(&b).unwrap_or_else(|e| panic!("{schema:?}/{rs}: {e}"));
            assert_eq!(
                got,
                vec![
                    (pfx("10.0.0.0/23"), cc("US")),
                    (pfx("81.2.69.0/24"), cc("GB")),
                    (pfx("89.160.0.0/16"), cc("SE")),
                ],
                "{schema:?}/{rs}"
            );
        }
    }
}

#[test]
fn ipv6_database_returns_ipv4_once_as_ipv4() {
    for schema in SCHEMAS {
        for (mapped, tunnels) in [(false, false), (true, false), (false, true), (true, true)] {
            for rs in [24, 28, 32] {
                let ctx = format!("{schema:?} mapped={mapped} tunnels={tunnels} rs={rs}");
                let mut b = MmdbBuilder::new(6, "Test-Country")
                    .schema(schema)
                    .record_size(rs)
                    .alias_ipv4_mapped(mapped)
                    .alias_ipv4_tunnels(tunnels);
                b.insert(net("81.2.69.0/24"), "GB")
                    .insert(net("89.160.20.0/24"), "SE")
                    .insert(net("2001:218::/32"), "JP")
                    .insert(net("2a02:ff0::/32"), "SE");
                let got = load(&b).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(
                    got,
                    vec![
                        (pfx("81.2.69.0/24"), cc("GB")),
                        (pfx("89.160.20.0/24"), cc("SE")),
                        (pfx("2001:218::/32"), cc("JP")),
                        (pfx("2a02:ff0::/32"), cc("SE")),
                    ],
                    "{ctx}"
                );
                assert_eq!(country_of(&got, ip("::ffff:81.2.69.142")), Some(cc("GB")));
                assert_eq!(country_of(&got, ip("2002:5102:458e::1")), None, "{ctx}");
            }
        }
    }
}

#[test]
fn mapped_copies_are_used_only_without_native_ipv4() {
    // A writer that stored IPv4 only as ::ffff:a.b.c.d: that is the IPv4 data.
    let mut b = MmdbBuilder::new(6, "Test");
    b.insert(net("::ffff:81.2.69.0/120"), "GB")
        .insert(net("2001:218::/32"), "JP");
    assert_eq!(
        load(&b).expect("load"),
        vec![
            (pfx("81.2.69.0/24"), cc("GB")),
            (pfx("2001:218::/32"), cc("JP"))
        ]
    );

    // Both: ::/96 is what readers answer for IPv4, so it wins; no overlapping copies.
    let mut b = MmdbBuilder::new(6, "Test");
    b.insert(net("81.2.69.0/24"), "GB")
        .insert(net("::ffff:81.2.69.0/120"), "SE")
        .insert(net("::ffff:1.2.3.0/120"), "JP");
    assert_eq!(
        load(&b).expect("load"),
        vec![(pfx("81.2.69.0/24"), cc("GB"))]
    );
}

#[test]
fn database_without_ipv4_subtree_covers_ipv4() {
    // Like MaxMind-DB-no-ipv4-search-tree: one record covers ::/64, so readers answer it for
    // every IPv4 address too. 2001:db8::/32 shares that record: an alias check that compares
    // data pointers with the "IPv4 start" drops it (maxminddb 0.32.0's `networks()` yields
    // only ::/64 and 2a02:ff0::/32 for this database).
    let mut b = MmdbBuilder::new(6, "Test");
    b.insert(net("::/64"), "GB")
        .insert(net("2001:db8::/32"), "GB")
        .insert(net("2a02:ff0::/32"), "SE");
    let got = load(&b).expect("load");
    assert_eq!(
        got,
        vec![
            (pfx("0.0.0.0/0"), cc("GB")),
            (pfx("::/64"), cc("GB")),
            (pfx("2001:db8::/32"), cc("GB")),
            (pfx("2a02:ff0::/32"), cc("SE")),
        ]
    );
}

#[test]
fn registered_country_is_a_fallback() {
    let iso = |c: &str| Value::map([("iso_code", Value::str(c))]);
    let mut b = MmdbBuilder::new(6, "GeoIP2-City");
    b.insert_record(
        net("10.0.0.0/24"),
        Value::map([("country", iso("SE")), ("registered_country", iso("GB"))]),
    )
    .insert_record(
        net("10.0.1.0/24"),
        Value::map([("registered_country", iso("GB"))]),
    )
    .insert_record(
        net("10.0.2.0/24"),
        Value::map([
            (
                "country",
                Value::map([("names", Value::map([("en", Value::str("Nowhere"))]))]),
            ),
            ("registered_country", iso("JP")),
        ]),
    )
    .insert_record(
        net("10.0.3.0/24"),
        Value::map([
            ("continent", Value::map([("code", Value::str("EU"))])),
            ("country", iso("de")),
            ("location", Value::map([("latitude", Value::Double(51.0))])),
        ]),
    );
    assert_eq!(
        load(&b).expect("load"),
        vec![
            (pfx("10.0.0.0/24"), cc("SE")),
            (pfx("10.0.1.0/24"), cc("GB")),
            (pfx("10.0.2.0/24"), cc("JP")),
            (pfx("10.0.3.0/24"), cc("DE")),
        ]
    );
}

#[test]
fn records_without_a_usable_country_are_unknown() {
    let mut b = MmdbBuilder::new(4, "Test");
    let odd = [
        Value::map([("autonomous_system_number", Value::U32(64_496))]),
        Value::str("GB"),
        Value::map([("country", Value::str("GB"))]),
        Value::map([("country_code", Value::U32(7))]),
        Value::map([("country_code", Value::str("GBR"))]),
        Value::map([("country_code", Value::str("G1"))]),
        Value::map([("country_code", Value::str("ZZ"))]),
        Value::map([("country_code", Value::str(""))]),
        Value::map([("country", Value::map([("iso_code", Value::U16(1))]))]),
        Value::Array(vec![Value::str("GB")]),
        Value::map([]),
    ];
    for (i, v) in odd.into_iter().enumerate() {
        b.insert_record(format!("10.0.{i}.0/24").parse().expect("net"), v);
    }
    b.insert(net("81.2.69.0/24"), "GB");
    assert_eq!(
        load(&b).expect("load"),
        vec![(pfx("81.2.69.0/24"), cc("GB"))]
    );
}

#[test]
fn non_country_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("GeoLite2-ASN.mmdb");
    let mut b = MmdbBuilder::new(6, "GeoLite2-ASN");
    b.insert_record(
        net("1.0.0.0/24"),
        Value::map([
            ("autonomous_system_number", Value::U32(13_335)),
            (
                "autonomous_system_organization",
                Value::str("CLOUDFLARENET"),
            ),
        ]),
    );
    b.write_to(&path).expect("write");
    let err = load_country_networks(&path).expect_err("ASN database");
    assert!(matches!(err, GeoError::NoCountryData { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("GeoLite2-ASN.mmdb") && msg.contains("`GeoLite2-ASN`"),
        "{msg}"
    );

    let path = dir.path().join("empty.mmdb");
    MmdbBuilder::new(4, "Test-Country")
        .write_to(&path)
        .expect("write");
    let err = load_country_networks(&path).expect_err("empty database");
    assert!(matches!(err, GeoError::NoCountryData { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.mmdb"), "{err}");
}

#[test]
fn adjacent_networks_merge_exactly() {
    let mut b = MmdbBuilder::new(6, "Test").schema(Schema::CountryCode);
    for i in 0..256 {
        let c = if i == 77 { "SE" } else { "GB" };
        // Distinct records with the same country, as a City database has.
        b.insert_record(
            format!("10.0.{i}.0/24").parse().expect("net"),
            Value::map([("country_code", Value::str(c)), ("n", Value::U32(i))]),
        );
    }
    let got = load(&b).expect("load");
    assert_sorted_and_disjoint(&got);
    // A /16 less one /24 is 8 prefixes, plus the /24 itself.
    assert_eq!(got.len(), 9, "{got:?}");
    for i in 0..=255u8 {
        let want = if i == 77 { "SE" } else { "GB" };
        for host in [0u8, 255] {
            let a = IpAddr::V4(Ipv4Addr::new(10, 0, i, host));
            assert_eq!(country_of(&got, a), Some(cc(want)), "{a}");
        }
    }
    assert_eq!(country_of(&got, ip("10.1.0.0")), None);
    assert_eq!(country_of(&got, ip("9.255.255.255")), None);
}

// Random databases against maxminddb.

const POOL: [&str; 8] = ["GB", "SE", "JP", "US", "DE", "gb", "ZZ", "GBR"];

#[derive(Clone, Debug)]
struct Case {
    ip_version: u8,
    schema: Schema,
    alias_mapped: bool,
    alias_tunnels: bool,
    record_size: u16,
    /// Networks and pool index; `None` is a record without a country.
    nets: Vec<(IpNet, Option<usize>)>,
    probes: Vec<IpAddr>,
}

fn v4_net() -> impl Strategy<Value = IpNet> {
    (
        any::<u32>(),
        prop_oneof![1 => 0u8..8, 6 => 8u8..=24, 3 => 24u8..=32],
    )
        .prop_map(|(a, l)| IpNet::new(IpAddr::V4(a.into()), l).expect("len").trunc())
}

fn v6_net() -> impl Strategy<Value = IpNet> {
    let under = |base: u128, base_len: u8| {
        (any::<u128>(), base_len..=128u8).prop_map(move |(r, l)| {
            let host = u128::MAX.checked_shr(u32::from(base_len)).unwrap_or(0);
            let a = base | (r & host);
            IpNet::new(IpAddr::V6(a.into()), l).expect("len").trunc()
        })
    };
    let len = prop_oneof![1 => 0u8..16, 6 => 16u8..=64, 1 => 64u8..=128];
    prop_oneof![
        4 => (any::<u128>(), len).prop_map(|(a, l)| IpNet::new(IpAddr::V6(a.into()), l)
            .expect("len")
            .trunc()),
        // IPv4-mapped copies, IPv4-compatible space, the tunnel ranges, 2001:db8::/32.
        1 => under(0xffff << 32, 104),
        1 => under(0, 72),
        1 => under(0x2002 << 112, 16),
        1 => under(0x2001 << 112, 32),
        2 => under(0x2001_0db8 << 96, 32),
    ]
}

fn probe() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        any::<u64>().prop_map(|a| IpAddr::V6(((0x2001_0db8u128 << 96) | u128::from(a)).into())),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let schema = prop_oneof![
        Just(Schema::MaxMind),
        Just(Schema::RegisteredCountry),
        Just(Schema::CountryCode)
    ];
    let country = prop::option::weighted(0.9, 0..POOL.len());
    (
        prop_oneof![Just(4u8), Just(6u8)],
        schema,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(24u16), Just(28u16), Just(32u16)],
        prop::collection::vec((v4_net(), country.clone()), 0..25),
        prop::collection::vec((v6_net(), country), 0..25),
        prop::collection::vec(probe(), 0..60),
    )
        .prop_map(
            |(ip_version, schema, alias_mapped, alias_tunnels, record_size, v4, v6, probes)| {
                let mut nets = v4;
                if ip_version == 6 {
                    // Interleave so later-wins overlaps mix families.
                    for (i, n) in v6.into_iter().enumerate() {
                        nets.insert((i * 2).min(nets.len()), n);
                    }
                }
                Case {
                    ip_version,
                    schema,
                    alias_mapped,
                    alias_tunnels,
                    record_size,
                    nets,
                    probes,
                }
            },
        )
}

/// What the gateway should answer for `addr`, from maxminddb's lookups.
enum Expect {
    Exactly(Option<CountryCode>),
    /// An aliased tunnel range: not returned when it is a true alias, but a writer that had
    /// no IPv4 subtree to alias copied a record there instead, and that copy is data.
    NoneOr(Option<CountryCode>),
    /// IPv4-compatible `::a.b.c.d` IPv6 addresses: the loader returns that range as IPv4.
    Skip,
}

fn expected<S: AsRef<[u8]>>(case: &Case, reader: &Reader<S>, addr: IpAddr) -> Expect {
    // The gateway judges ::ffff:a.b.c.d as a.b.c.d.
    let addr = match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match addr {
        IpAddr::V4(a) if case.ip_version == 6 => Expect::Exactly(ipv4_model(case, reader, a)),
        IpAddr::V4(_) => Expect::Exactly(record_country(reader, addr)),
        IpAddr::V6(_) if case.ip_version == 4 => Expect::Exactly(None),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let tunnel = bits >> 96 == 0x2001_0000 || bits >> 112 == 0x2002;
            if bits >> 32 == 0 {
                Expect::Skip
            } else if tunnel && case.alias_tunnels {
                Expect::NoneOr(record_country(reader, addr))
            } else {
                Expect::Exactly(record_country(reader, addr))
            }
        }
    }
}

/// IPv4 in an IPv6 database: what readers find under `::/96`, or, only when nothing at all
/// is stored there, what is stored (not aliased) under `::ffff:0:0/96`.
fn ipv4_model<S: AsRef<[u8]>>(case: &Case, reader: &Reader<S>, a: Ipv4Addr) -> Option<CountryCode> {
    let native: IpNet = net("::/96");
    let has_native = case.nets.iter().any(|(n, _)| match n {
        IpNet::V4(_) => true,
        IpNet::V6(_) => n.contains(&native) || native.contains(n),
    });
    if has_native {
        record_country(reader, IpAddr::V4(a))
    } else {
        record_country(reader, IpAddr::V6(a.to_ipv6_mapped()))
    }
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let mut b = MmdbBuilder::new(case.ip_version, "Test-Country")
        .schema(case.schema)
        .record_size(case.record_size)
        .alias_ipv4_mapped(case.alias_mapped)
        .alias_ipv4_tunnels(case.alias_tunnels);
    for (n, c) in &case.nets {
        match c {
            Some(i) => b.insert(*n, POOL[*i]),
            None => b.insert_record(*n, Value::map([("asn", Value::U32(1))])),
        };
    }
    let bytes = b.build();
    let reader = Reader::from_source(bytes.as_slice()).expect("writer output is readable");
    let got = match load_bytes(&bytes) {
        Ok(got) => got,
        Err(GeoError::NoCountryData { .. }) => {
            // Then no address may have a country either.
            Vec::new()
        }
        Err(e) => return Err(TestCaseError::fail(format!("load failed: {e}"))),
    };
    assert_sorted_and_disjoint(&got);

    // Probes: random addresses plus both edges of every inserted network and every result.
    let mut probes = case.probes.clone();
    for (n, _) in &case.nets {
        probes.push(n.network());
        probes.push(n.broadcast());
    }
    for (p, _) in &got {
        probes.push(p.addr());
        probes.push(last_addr(*p));
    }
    for addr in probes {
        let ours = country_of(&got, addr);
        match expected(case, &reader, addr) {
            Expect::Exactly(want) => prop_assert_eq!(ours, want, "address {}", addr),
            Expect::NoneOr(want) => {
                prop_assert!(
                    ours.is_none() || ours == want,
                    "address {}: {:?}",
                    addr,
                    ours
                )
            }
            Expect::Skip => {}
        }
    }
    Ok(())
}

proptest! {
    // Integration tests have no lib.rs for proptest to store regressions beside; failures
    // print the minimal case instead.
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_databases_agree_with_maxminddb(case in case()) {
        check_case(&case)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Damaged files (bytes overwritten, or cut short) are refused or loaded, never a panic
    /// or a hang, and anything loaded is still well formed.
    #[test]
    fn damaged_databases_never_panic(
        case in case(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::weighted(0.3, any::<prop::sample::Index>()),
    ) {
        let mut b = MmdbBuilder::new(case.ip_version, "Test-Country")
            .record_size(case.record_size)
            .alias_ipv4_mapped(case.alias_mapped)
            .alias_ipv4_tunnels(case.alias_tunnels);
        for (n, c) in &case.nets {
            b.insert(*n, POOL[c.unwrap_or(0)]);
        }
        let mut bytes = b.build();
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(at) = cut {
            let len = at.index(bytes.len());
            bytes.truncate(len);
        }
        let result = std::panic::catch_unwind(|| load_bytes(&bytes));
        prop_assert!(result.is_ok(), "panicked");
        if let Ok(Ok(list)) = result {
            assert_sorted_and_disjoint(&list);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared data
// ---------------------------------------------------------------------------------------

/// `$PORTCULLIS_TESTDATA`, or `shared/testdata` beside the workspace; `None` (and a plain
/// message) when it is absent. CI always has it.
fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("PORTCULLIS_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/testdata"
            ))
        });
    if dir.join("mmdb").is_dir() {
        Some(dir)
    } else {
        eprintln!("shared testdata not found at {}, skipping", dir.display());
        None
    }
}

fn mmdb_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            mmdb_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "mmdb") {
            out.push(p);
        }
    }
}

/// Every prefix agrees with maxminddb at both edges.
fn assert_edges_agree<S: AsRef<[u8]>>(
    name: &str,
    reader: &Reader<S>,
    list: &[(Prefix, CountryCode)],
    step: usize,
) {
    for (p, c) in list.iter().step_by(step.max(1)) {
        for a in [p.addr(), last_addr(*p)] {
            assert_eq!(reference(reader, a), Some(*c), "{name}: {p} at {a}");
        }
    }
}

#[test]
fn maxmind_test_databases_known_answers() {
    let Some(root) = testdata() else { return };
    for name in [
        "GeoIP2-Country-Test.mmdb",
        "GeoLite2-Country-Test.mmdb",
        "GeoIP2-City-Test.mmdb",
        "GeoLite2-City-Test.mmdb",
    ] {
        let path = root.join("mmdb/test-data").join(name);
        let list = load_country_networks(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_sorted_and_disjoint(&list);
        for (addr, want) in [
            ("81.2.69.142", "GB"),
            ("89.160.20.112", "SE"),
            ("2001:218::1", "JP"),
            ("::ffff:81.2.69.142", "GB"),
        ] {
            assert_eq!(
                country_of(&list, ip(addr)),
                Some(cc(want)),
                "{name}: {addr}"
            );
        }
        let bytes = std::fs::read(&path).expect("read");
        let reader = Reader::from_source(bytes.as_slice()).expect("reader");
        assert_edges_agree(name, &reader, &list, 1);
        // Nothing the crate's own iterator (which skips aliases) finds is missing.
        for found in reader.networks(Default::default()).expect("networks") {
            let found = found.expect("network");
            let n = found.network().expect("network");
            let a = n.network();
            if reference(&reader, a).is_some() {
                assert_eq!(country_of(&list, a), reference(&reader, a), "{name}: {n}");
            }
        }
        // The aliases are not returned as IPv6 copies.
        assert!(
            list.iter().all(|(p, _)| !p.is_v6()
                || !(p.bits() >> 112 == 0x2002 || p.bits() >> 96 == 0x2001_0000)),
            "{name}: aliased tunnel ranges returned"
        );
        let v4 = list.iter().filter(|(p, _)| !p.is_v6()).count();
        println!(
            "{name}: {} prefixes ({v4} IPv4, {} IPv6)",
            list.len(),
            list.len() - v4
        );
    }
}

#[test]
fn corrupt_databases_are_refused_cleanly() {
    let Some(root) = testdata() else { return };
    let mut files = Vec::new();
    mmdb_files(&root.join("mmdb/bad-data"), &mut files);
    assert!(
        files.len() >= 20,
        "expected the bad-data corpus, found {}",
        files.len()
    );
    // MaxMind's broken test databases are corrupt too.
    for name in [
        "GeoIP2-City-Test-Broken-Double-Format.mmdb",
        "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
        "MaxMind-DB-test-broken-pointers-24.mmdb",
        "MaxMind-DB-test-broken-search-tree-24.mmdb",
    ] {
        files.push(root.join("mmdb/test-data").join(name));
    }
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let result = std::panic::catch_unwind(|| load_country_networks(&path));
        let result = result.unwrap_or_else(|_| panic!("{name}: the loader panicked"));
        if name == "libmaxminddb-uint64-max-epoch.mmdb" {
            // Structurally valid; only the epoch is absurd. Either answer is fine.
            println!(
                "{name}: {:?}",
                result.as_ref().map(Vec::len).map_err(ToString::to_string)
            );
            continue;
        }
        match result {
            Ok(list) => panic!(
                "{name}: loaded {} networks from a corrupt database",
                list.len()
            ),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&name),
                    "{name}: message does not name the file: {msg}"
                );
                println!("{name}: {msg}");
            }
        }
    }
}

#[test]
fn non_country_maxmind_databases_are_refused() {
    let Some(root) = testdata() else { return };
    for name in [
        "GeoLite2-ASN-Test.mmdb",
        "GeoIP2-ISP-Test.mmdb",
        "GeoIP2-Connection-Type-Test.mmdb",
        "GeoIP2-Anonymous-IP-Test.mmdb",
        "GeoIP2-Domain-Test.mmdb",
    ] {
        let err = load_country_networks(&root.join("mmdb/test-data").join(name)).expect_err(name);
        assert!(
            matches!(err, GeoError::NoCountryData { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn real_databases_load_fast_with_ipv4_as_ipv4() {
    let Some(root) = testdata() else { return };
    for (name, file) in [
        ("dbip-country", "real/dbip-country/dbip-country.mmdb"),
        (
            "geo-whois-asn-country",
            "real/geo-whois-asn-country/geo-whois-asn-country.mmdb",
        ),
    ] {
        let path = root.join("mmdb").join(file);
        let start = Instant::now();
        let list = load_country_networks(&path).unwrap_or_else(|e| panic!("{e}"));
        let took = start.elapsed();
        let v4 = list.iter().filter(|(p, _)| !p.is_v6()).count();
        let v6 = list.len() - v4;
        println!(
            "{name}: {} prefixes ({v4} IPv4, {v6} IPv6) loaded in {took:?} ({} build)",
            list.len(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        // Load time is printed here for information; `cargo xtask bench kernel` measures it.
        // They do not alias ::ffff:0:0/96, and still their IPv4 data is IPv4 prefixes.
        assert!(v4 > 100_000, "{name}: only {v4} IPv4 prefixes");
        assert!(v6 > 100_000, "{name}: only {v6} IPv6 prefixes");
        assert_sorted_and_disjoint(&list);

        let bytes = std::fs::read(&path).expect("read");
        let reader = Reader::from_source(bytes.as_slice()).expect("reader");
        // About a thousand prefixes of each, checked at both edges.
        assert_edges_agree(name, &reader, &list, list.len() / 1000);
        for (addr, plausible) in [
            ("8.8.8.8", &["US"][..]),
            ("::ffff:8.8.8.8", &["US"][..]),
            ("193.0.6.139", &["NL"][..]),
            ("81.2.69.142", &["GB"][..]),
            ("1.1.1.1", &["AU", "US"][..]),
            // Only agreement with maxminddb: vendors differ on where this range is used.
            ("2001:4860:4860::8888", &[][..]),
            ("2001:67c:2e8:22::c100:68b", &["NL"][..]),
        ] {
            let ours = country_of(&list, ip(addr));
            assert_eq!(ours, reference(&reader, ip(addr)), "{name}: {addr}");
            let ours = ours.unwrap_or_else(|| panic!("{name}: no country for {addr}"));
            assert!(
                plausible.is_empty() || plausible.contains(&ours.as_str()),
                "{name}: {addr} → {ours}"
            );
        }
    }
}
