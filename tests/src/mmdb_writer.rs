//! A small MaxMind DB (format 2.0) writer, so tests make their own .mmdb files instead of
//! depending on shared data: it owns the search tree layout (24-, 28- and 32-bit records),
//! the data section encoding and the metadata block, and the aliasing MaxMind's own writer
//! does (`::ffff:0:0/96`, `2001::/32`, `2002::/16` pointing at the IPv4 subtree at `::/96`).
//!
//! Spec: <https://maxmind.github.io/MaxMind-DB/>. Inserts are applied in order and a later
//! insert wins where it overlaps an earlier one, like the reference writers' "replace" mode.
//! This is test tooling: misuse (an IPv6 network in an IPv4 database, a record size too small
//! for the tree) panics with a message rather than returning an error.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// How [`MmdbBuilder::insert`] shapes a country record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// GeoIP2/GeoLite2 Country and City: `{"country": {"iso_code": "GB"}}`.
    MaxMind,
    /// Only MaxMind's fallback: `{"registered_country": {"iso_code": "GB"}}`.
    RegisteredCountry,
    /// DB-IP and ip-location-db: `{"country_code": "GB"}`.
    CountryCode,
}

/// A value in the data section (the subset of MaxMind DB types tests need).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Double(f64),
    Bytes(Vec<u8>),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Array(Vec<Value>),
    /// Keys in the order written.
    Map(Vec<(String, Value)>),
}

impl Value {
    pub fn str(s: &str) -> Self {
        Value::String(s.to_owned())
    }

    pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Self {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// The record `schema` uses for `country`.
    pub fn country(schema: Schema, country: &str) -> Self {
        let iso = || Value::map([("iso_code", Value::str(country))]);
        match schema {
            Schema::MaxMind => Value::map([("country", iso())]),
            Schema::RegisteredCountry => Value::map([("registered_country", iso())]),
            Schema::CountryCode => Value::map([("country_code", Value::str(country))]),
        }
    }
}

#[derive(Clone, Debug)]
enum Entry {
    Country(String),
    Record(Value),
}

/// Builds a MaxMind DB file in memory.
#[derive(Clone, Debug)]
pub struct MmdbBuilder {
    ip_version: u8,
    database_type: String,
    schema: Schema,
    alias_mapped: bool,
    alias_tunnels: bool,
    record_size: Option<u16>,
    build_epoch: u64,
    inserts: Vec<(IpNet, Entry)>,
}

impl MmdbBuilder {
    /// An empty database; `ip_version` is 4 or 6.
    pub fn new(ip_version: u8, database_type: &str) -> Self {
        assert!(
            ip_version == 4 || ip_version == 6,
            "ip_version must be 4 or 6"
        );
        Self {
            ip_version,
            database_type: database_type.to_owned(),
            schema: Schema::MaxMind,
            alias_mapped: false,
            alias_tunnels: false,
            record_size: None,
            build_epoch: 1_700_000_000,
            inserts: Vec::new(),
        }
    }

    /// The record shape [`insert`](Self::insert) writes (applied at build time).
    pub fn schema(mut self, s: Schema) -> Self {
        self.schema = s;
        self
    }

    /// Make `::ffff:0:0/96` point at the IPv4 subtree (`::/96`), as MaxMind's databases do.
    pub fn alias_ipv4_mapped(mut self, yes: bool) -> Self {
        self.alias_mapped = yes;
        self
    }

    /// Make Teredo `2001::/32` and 6to4 `2002::/16` point at the IPv4 subtree too, as
    /// MaxMind's databases do. Anything inserted inside them is hidden by the alias.
    pub fn alias_ipv4_tunnels(mut self, yes: bool) -> Self {
        self.alias_tunnels = yes;
        self
    }

    /// Force 24, 28 or 32-bit records; by default the smallest that fits is used.
    pub fn record_size(mut self, bits: u16) -> Self {
        assert!(
            matches!(bits, 24 | 28 | 32),
            "record size must be 24, 28 or 32"
        );
        self.record_size = Some(bits);
        self
    }

    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = epoch;
        self
    }

    /// A network with a country record in the builder's schema. In an IPv6 database an IPv4
    /// network goes under `::/96`.
    pub fn insert(&mut self, net: IpNet, country: &str) -> &mut Self {
        self.inserts.push((net, Entry::Country(country.to_owned())));
        self
    }

    /// A network with an arbitrary record.
    pub fn insert_record(&mut self, net: IpNet, record: Value) -> &mut Self {
        self.inserts.push((net, Entry::Record(record)));
        self
    }

    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.build())
    }

    /// The database file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut trie = Trie::new();
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut record_index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (net, entry) in &self.inserts {
            let value = match entry {
                Entry::Country(c) => Value::country(self.schema, c),
                Entry::Record(v) => v.clone(),
            };
            let mut bytes = Vec::new();
            encode(&value, &mut bytes);
            let next = records.len();
            let idx = *record_index.entry(bytes.clone()).or_insert(next);
            if idx == next {
                records.push(bytes);
            }
            let (bits, len) = tree_key(*net, self.ip_version);
            trie.set(bits, len, Rec::Data(idx));
        }
        if self.ip_version == 6 {
            let v4 = trie.get(0, 96);
            if self.alias_mapped {
                trie.set(0xffff << 32, 96, v4);
            }
            if self.alias_tunnels {
                trie.set(0x2001 << 112, 32, v4);
                trie.set(0x2002 << 112, 16, v4);
            }
        }

        // Number the reachable nodes depth first from the root; a shared (aliased) node
        // keeps the one number it got first.
        let mut number: HashMap<usize, u32> = HashMap::new();
        let mut order: Vec<usize> = Vec::new();
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            if number.contains_key(&n) {
                continue;
            }
            number.insert(n, order.len() as u32);
            order.push(n);
            for side in [1, 0] {
                if let Rec::Node(c) = trie.nodes[n][side] {
                    stack.push(c);
                }
            }
        }
        let node_count = order.len() as u32;

        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(records.len());
        for r in &records {
            offsets.push(data.len() as u64);
            data.extend_from_slice(r);
        }
        let value_of = |rec: Rec| -> u64 {
            match rec {
                Rec::Empty => u64::from(node_count),
                Rec::Node(c) => u64::from(number[&c]),
                Rec::Data(d) => u64::from(node_count) + 16 + offsets[d],
            }
        };
        let max_value = u64::from(node_count) + 16 + data.len() as u64;
        let record_size = self.record_size.unwrap_or(if max_value < 1 << 24 {
            24
        } else if max_value < 1 << 28 {
            28
        } else {
            32
        });
        assert!(
            max_value < 1u64 << record_size,
            "{record_size}-bit records cannot address this tree"
        );

        let mut out = Vec::new();
        for &n in &order {
            let [l, r] = trie.nodes[n];
            let (l, r) = (value_of(l) as u32, value_of(r) as u32);
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[1..]);
                    out.extend_from_slice(&r.to_be_bytes()[1..]);
                }
                28 => {
                    // [left low 24][left high 4 | right high 4][right low 24]
                    out.extend_from_slice(&l.to_be_bytes()[1..]);
                    out.push((((l >> 24) & 0x0f) << 4) as u8 | ((r >> 24) & 0x0f) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[1..]);
                }
                _ => {
                    out.extend_from_slice(&l.to_be_bytes());
                    out.extend_from_slice(&r.to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
        let metadata = Value::map([
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(record_size)),
            ("ip_version", Value::U16(self.ip_version.into())),
            ("database_type", Value::str(&self.database_type)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            (
                "description",
                Value::map([("en", Value::str("Portcullis test database"))]),
            ),
        ]);
        encode(&metadata, &mut out);
        out
    }
}

/// Where a network sits in the tree: address bits left aligned in 128 bits, and depth.
fn tree_key(net: IpNet, ip_version: u8) -> (u128, u8) {
    match (net.network(), ip_version) {
        (IpAddr::V4(a), 4) => ((u32::from(a) as u128) << 96, net.prefix_len()),
        (IpAddr::V4(a), _) => (u32::from(a) as u128, 96 + net.prefix_len()),
        (IpAddr::V6(a), 6) => (u128::from(a), net.prefix_len()),
        (IpAddr::V6(_), _) => panic!("cannot insert IPv6 network {net} into an IPv4 database"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// A binary trie in an arena; node 0 is the root. Nodes cut off by a later, shorter insert
/// stay in the arena but are not reachable, so they are never written.
struct Trie {
    nodes: Vec<[Rec; 2]>,
}

impl Trie {
    fn new() -> Self {
        Self {
            nodes: vec![[Rec::Empty; 2]],
        }
    }

    fn bit(bits: u128, depth: u8) -> usize {
        ((bits >> (127 - u32::from(depth))) & 1) as usize
    }

    /// Makes the network `bits/len` resolve to `rec`, splitting leaves on the way.
    fn set(&mut self, bits: u128, len: u8, rec: Rec) {
        if len == 0 {
            self.nodes[0] = [rec; 2];
            return;
        }
        let mut n = 0;
        for depth in 0..len - 1 {
            let side = Self::bit(bits, depth);
            n = match self.nodes[n][side] {
                Rec::Node(c) => c,
                leaf => {
                    self.nodes.push([leaf; 2]);
                    let c = self.nodes.len() - 1;
                    self.nodes[n][side] = Rec::Node(c);
                    c
                }
            };
        }
        self.nodes[n][Self::bit(bits, len - 1)] = rec;
    }

    /// What the network `bits/len` resolves to (the covering leaf if it is shallower).
    fn get(&self, bits: u128, len: u8) -> Rec {
        if len == 0 {
            return Rec::Node(0);
        }
        let mut rec = Rec::Node(0);
        for depth in 0..len {
            match rec {
                Rec::Node(n) => rec = self.nodes[n][Self::bit(bits, depth)],
                leaf => return leaf,
            }
        }
        rec
    }
}

/// Encodes one value in the MaxMind DB data format.
fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::String(s) => {
            control(2, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Double(d) => {
            control(3, 8, out);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::Bytes(b) => {
            control(4, b.len(), out);
            out.extend_from_slice(b);
        }
        Value::U16(n) => uint(5, u64::from(*n), out),
        Value::U32(n) => uint(6, u64::from(*n), out),
        Value::Map(entries) => {
            control(7, entries.len(), out);
            for (k, v) in entries {
                encode(&Value::String(k.clone()), out);
                encode(v, out);
            }
        }
        Value::U64(n) => uint(9, *n, out),
        Value::Array(items) => {
            control(11, items.len(), out);
            for item in items {
                encode(item, out);
            }
        }
        Value::Bool(b) => control(14, usize::from(*b), out),
    }
}

/// An unsigned integer in the fewest big-endian bytes (zero is zero bytes).
fn uint(type_num: u8, n: u64, out: &mut Vec<u8>) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    control(type_num, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

/// The control byte(s): type in the top 3 bits (or 0 and an extended type byte), size in
/// the low 5 bits with 1-3 extra bytes for sizes of 29 and more.
fn control(type_num: u8, size: usize, out: &mut Vec<u8>) {
    let (size_field, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        let s = (size - 65_821) as u32;
        assert!(s < 1 << 24, "value too large for the MaxMind DB format");
        (31, s.to_be_bytes()[1..].to_vec())
    };
    if type_num <= 7 {
        out.push(type_num << 5 | size_field);
    } else {
        out.push(size_field);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{Reader, path};

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    /// The country maxminddb reads for `addr`, in `schema`'s field.
    fn lookup(db: &[u8], schema: Schema, addr: &str) -> Option<String> {
        let reader = Reader::from_source(db).expect("reader");
        let found = reader.lookup(ip(addr)).expect("lookup");
        let p = match schema {
            Schema::MaxMind => path!["country", "iso_code"].to_vec(),
            Schema::RegisteredCountry => path!["registered_country", "iso_code"].to_vec(),
            Schema::CountryCode => path!["country_code"].to_vec(),
        };
        found.decode_path::<String>(&p).expect("decode")
    }

    #[test]
    fn round_trips_every_record_size_version_and_schema() {
        for ip_version in [4, 6] {
            for schema in [
                Schema::MaxMind,
                Schema::RegisteredCountry,
                Schema::CountryCode,
            ] {
                for rs in [24, 28, 32] {
                    let mut b = MmdbBuilder::new(ip_version, "Test-Country")
                        .schema(schema)
                        .record_size(rs);
                    b.insert(net("81.2.69.0/24"), "GB")
                        .insert(net("89.160.0.0/16"), "SE")
                        .insert(net("0.0.0.0/8"), "ZZ")
                        .insert(net("255.255.255.255/32"), "US");
                    if ip_version == 6 {
                        b.insert(net("2001:218::/32"), "JP");
                    }
                    let db = b.build();
                    let ctx = format!("v{ip_version} {schema:?} {rs}");
                    let reader = Reader::from_source(db.as_slice()).expect(&ctx);
                    reader.verify().expect(&ctx);
                    assert_eq!(reader.metadata().record_size, rs, "{ctx}");
                    assert_eq!(reader.metadata().database_type, "Test-Country", "{ctx}");
                    let l = |a| lookup(&db, schema, a);
                    assert_eq!(l("81.2.69.142").as_deref(), Some("GB"), "{ctx}");
                    assert_eq!(l("89.160.20.112").as_deref(), Some("SE"), "{ctx}");
                    assert_eq!(l("255.255.255.255").as_deref(), Some("US"), "{ctx}");
                    assert_eq!(l("0.1.2.3").as_deref(), Some("ZZ"), "{ctx}");
                    assert_eq!(l("81.2.70.1"), None, "{ctx}");
                    if ip_version == 6 {
                        assert_eq!(l("2001:218::1").as_deref(), Some("JP"), "{ctx}");
                        // Not aliased: the mapped form has nothing.
                        assert_eq!(l("::ffff:81.2.69.142"), None, "{ctx}");
                        assert_eq!(l("::81.2.69.142").as_deref(), Some("GB"), "{ctx}");
                    }
                }
            }
        }
    }

    #[test]
    fn smallest_record_size_by_default() {
        let mut b = MmdbBuilder::new(6, "Test");
        b.insert(net("2001:db8::/32"), "GB");
        let reader = Reader::from_source(b.build()).expect("reader");
        assert_eq!(reader.metadata().record_size, 24);
    }

    #[test]
    fn aliases_point_at_the_ipv4_subtree() {
        let mut b = MmdbBuilder::new(6, "Test")
            .alias_ipv4_mapped(true)
            .alias_ipv4_tunnels(true);
        b.insert(net("81.2.69.0/24"), "GB");
        let db = b.build();
        let reader = Reader::from_source(db.as_slice()).expect("reader");
        reader.verify().expect("valid");
        for a in [
            "81.2.69.142",
            "::ffff:81.2.69.142",
            "2002:5102:458e::",
            "2001:0:5102:458e::",
        ] {
            assert_eq!(
                lookup(&db, Schema::MaxMind, a).as_deref(),
                Some("GB"),
                "{a}"
            );
        }
        // Aliased, not copied: the subtree is stored once.
        let mut plain = MmdbBuilder::new(6, "Test");
        plain.insert(net("81.2.69.0/24"), "GB");
        let plain_nodes = Reader::from_source(plain.build())
            .expect("reader")
            .metadata()
            .node_count;
        let aliased_nodes = reader.metadata().node_count;
        assert!(
            aliased_nodes < plain_nodes + 3 * 96,
            "{aliased_nodes} vs {plain_nodes}"
        );
    }

    #[test]
    fn later_inserts_win_and_split_earlier_ones() {
        let mut b = MmdbBuilder::new(4, "Test").schema(Schema::CountryCode);
        b.insert(net("10.0.0.0/8"), "GB")
            .insert(net("10.1.0.0/16"), "SE")
            .insert(net("10.1.2.0/24"), "GB")
            .insert(net("172.16.0.0/12"), "JP")
            .insert(net("172.0.0.0/8"), "US");
        let db = b.build();
        let l = |a| lookup(&db, Schema::CountryCode, a);
        assert_eq!(l("10.0.0.1").as_deref(), Some("GB"));
        assert_eq!(l("10.1.0.1").as_deref(), Some("SE"));
        assert_eq!(l("10.1.2.1").as_deref(), Some("GB"));
        assert_eq!(l("172.16.0.1").as_deref(), Some("US"));
    }

    #[test]
    fn whole_space_and_arbitrary_records() {
        let mut b = MmdbBuilder::new(4, "GeoLite2-ASN");
        b.insert_record(
            net("0.0.0.0/0"),
            Value::map([
                ("autonomous_system_number", Value::U32(64_496)),
                (
                    "autonomous_system_organization",
                    Value::str(&"x".repeat(300)),
                ),
                (
                    "flags",
                    Value::Array(vec![Value::Bool(true), Value::Double(1.5)]),
                ),
                ("big", Value::U64(u64::MAX)),
                ("raw", Value::Bytes(vec![0; 70_000])),
            ]),
        );
        let db = b.build();
        let reader = Reader::from_source(db.as_slice()).expect("reader");
        reader.verify().expect("valid");
        let found = reader.lookup(ip("203.0.113.9")).expect("lookup");
        let asn: Option<u32> = found
            .decode_path(&path!["autonomous_system_number"])
            .expect("decode");
        assert_eq!(asn, Some(64_496));
        let org: Option<String> = found
            .decode_path(&path!["autonomous_system_organization"])
            .expect("decode");
        assert_eq!(org.map(|s| s.len()), Some(300));
        let big: Option<u64> = found.decode_path(&path!["big"]).expect("decode");
        assert_eq!(big, Some(u64::MAX));
    }

    #[test]
    fn empty_database_is_valid() {
        let db = MmdbBuilder::new(6, "Test").build();
        let reader = Reader::from_source(db.as_slice()).expect("reader");
        reader.verify().expect("valid");
        assert!(!reader.lookup(ip("1.2.3.4")).expect("lookup").has_data());
    }
}
