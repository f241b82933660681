//! Countries from an .mmdb: this module owns turning a MaxMind DB file (GeoIP2/GeoLite2 Country
//! or City, DB-IP, geo-whois-asn-country, anything in the MaxMind DB format whose records name a
//! country) into the list of non-overlapping `(Prefix, CountryCode)` pairs that geo-blocking
//! compiles into kernel tables. It does not decide what is blocked, nor what happens to
//! addresses without a country (that is `GeoRules::unknown`, set by config).
//!
//! The `maxminddb` crate validates the file's metadata and decodes records; the search tree
//! itself is walked here rather than with `Reader::within`, because this module needs three
//! things that iterator does not give: IPv4 data returned once as IPv4 prefixes whatever the
//! writer did with the IPv4-mapped range, alias detection that cannot mistake an ordinary
//! record for an alias (the crate compares *any* node number, data pointers included, with the
//! IPv4 start node), and hard bounds on the work a corrupt or hostile tree can cause.
//!
//! See `docs/geo.md` for the semantics (schemas, aliases, unknown countries, merging).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use maxminddb::{MaxMindDbError, Reader};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::CountryCode;
use super::prefix::{Prefix, mask};

/// Why an .mmdb file could not be turned into country networks. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read at all (missing, unreadable, a directory, ...).
    #[error("cannot read geo database {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a usable MaxMind DB (no metadata marker, bad metadata, bad layout).
    #[error("geo database {} is not a valid MaxMind DB file: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: MaxMindDbError,
    },
    /// The search tree is damaged: a record points outside the tree, the tree is deeper
    /// than an address, or it visits far more nodes than it has (cycles, shared subtrees).
    #[error("geo database {} has a corrupt search tree: {detail}", path.display())]
    Tree { path: PathBuf, detail: String },
    /// A data record the tree points at cannot be decoded.
    #[error("geo database {}: cannot decode the record for {network}: {source}", path.display())]
    Record {
        path: PathBuf,
        /// The network whose record is bad, as the tree spells it (IPv6 in IPv6 databases).
        network: String,
        #[source]
        source: MaxMindDbError,
    },
    /// Not one record names a country: probably an ASN, ISP, anonymous-IP or other
    /// non-country database. Refused, because geo-blocking with it would silently block nothing.
    #[error(
        "geo database {} (type `{database_type}`) has no country data: no record has \
         `country.iso_code`, `registered_country.iso_code` or `country_code`; \
         use a country or city database",
        path.display()
    )]
    NoCountryData {
        path: PathBuf,
        database_type: String,
    },
}

/// Loads every network of the database at `path` that has a country.
///
/// The result is sorted (IPv4 first, then by address), its prefixes do not overlap, IPv4 data
/// comes out once as IPv4 prefixes, and adjacent sibling networks with the same country are
/// merged. Networks without a country (or with `ZZ`, "unknown") are left out: what happens to
/// them is the caller's `unknown` policy.
pub fn load_country_networks(path: &Path) -> Result<Vec<(Prefix, CountryCode)>, GeoError> {
    let buf = std::fs::read(path).map_err(|source| GeoError::Read {
        path: path.to_owned(),
        source,
    })?;
    let reader = Reader::from_source(buf.as_slice()).map_err(|source| GeoError::Format {
        path: path.to_owned(),
        source,
    })?;
    let tree = Tree::new(&reader, &buf).map_err(|detail| GeoError::Tree {
        path: path.to_owned(),
        detail,
    })?;
    let mut walk = Collector::new(&reader, tree.node_count);
    tree.walk(&mut walk).map_err(|e| match e {
        WalkError::Tree(detail) => GeoError::Tree {
            path: path.to_owned(),
            detail,
        },
        WalkError::Record { network, source } => GeoError::Record {
            path: path.to_owned(),
            network,
            source,
        },
    })?;
    let networks = walk.finish();
    if networks.is_empty() {
        return Err(GeoError::NoCountryData {
            path: path.to_owned(),
            database_type: reader.metadata().database_type.clone(),
        });
    }
    Ok(networks)
}

/// IPv4 addresses live at `::/96` in an IPv6 database (RFC 4291 "IPv4-compatible" form).
const IPV4_DEPTH: u8 = 96;
/// `::ffff:0:0/96`, the IPv4-mapped range, left aligned like [`Prefix::bits`].
const MAPPED_BITS: u128 = 0xffff << 32;

/// The raw search tree: node numbers, record values, and where IPv4 starts.
struct Tree<'a> {
    nodes: &'a [u8],
    node_count: u32,
    record_size: u16,
    /// 32 or 128: how deep a path can go.
    bit_count: u8,
    /// In IPv6 databases: the node reached from the root by 96 zero bits, when that is an
    /// internal node. Any other record pointing at it is an alias (`::ffff:0:0/96`,
    /// `2001::/32`, `2002::/16` in MaxMind's databases) and is not walked again.
    ipv4_root: Option<u32>,
}

#[derive(Debug)]
enum WalkError {
    Tree(String),
    Record {
        network: String,
        source: MaxMindDbError,
    },
}

impl<'a> Tree<'a> {
    fn new(reader: &Reader<&'a [u8]>, buf: &'a [u8]) -> Result<Self, String> {
        let meta = reader.metadata();
        // The reader has checked record_size (24/28/32) and that the tree ends before the
        // metadata; re-derive the slice with checked arithmetic rather than trust that here.
        let tree_len = (meta.node_count as usize)
            .checked_mul(meta.record_size as usize / 4)
            .filter(|&len| len <= buf.len())
            .ok_or_else(|| {
                format!(
                    "{} nodes of {} bits do not fit in a {}-byte file",
                    meta.node_count,
                    meta.record_size,
                    buf.len()
                )
            })?;
        let mut tree = Tree {
            nodes: &buf[..tree_len],
            node_count: meta.node_count,
            record_size: meta.record_size,
            bit_count: if meta.ip_version == 4 { 32 } else { 128 },
            ipv4_root: None,
        };
        if tree.bit_count == 128 {
            let mut node = 0;
            for _ in 0..IPV4_DEPTH {
                if node >= tree.node_count {
                    break;
                }
                node = tree.record(node, 0)?;
            }
            tree.ipv4_root = (node < tree.node_count).then_some(node);
        }
        Ok(tree)
    }

    /// The left (`side` 0) or right (1) record of internal node `node`.
    fn record(&self, node: u32, side: usize) -> Result<u32, String> {
        let out_of_tree = || format!("node {node} lies outside the search tree");
        let n = node as usize;
        let value = match self.record_size {
            24 => {
                let at = n * 6 + side * 3;
                let b = self.nodes.get(at..at + 3).ok_or_else(out_of_tree)?;
                u32::from_be_bytes([0, b[0], b[1], b[2]])
            }
            28 => {
                // [left low 24][left high 4 | right high 4][right low 24]
                let b = self.nodes.get(n * 7..n * 7 + 7).ok_or_else(out_of_tree)?;
                if side == 0 {
                    u32::from_be_bytes([b[3] >> 4, b[0], b[1], b[2]])
                } else {
                    u32::from_be_bytes([b[3] & 0x0f, b[4], b[5], b[6]])
                }
            }
            32 => {
                let at = n * 8 + side * 4;
                let b = self.nodes.get(at..at + 4).ok_or_else(out_of_tree)?;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
            other => return Err(format!("unsupported record size {other}")),
        };
        Ok(value)
    }

    /// Depth-first, left before right, so networks come out in ascending address order.
    fn walk(&self, out: &mut Collector<'_, 'a>) -> Result<(), WalkError> {
        // In a tree every internal node is reached once; allow generous slack for writers
        // that share a few subtrees, but stop a DAG of shared nodes (2^128 paths through a
        // few hundred nodes) from turning into an endless walk or an endless list.
        let budget = (self.node_count as u64) * 4 + 1024;
        let mut visited = 0u64;
        // (node, address bits left aligned, depth). Depth-first keeps this at most
        // bit_count + 1 entries deep.
        let mut stack: Vec<(u32, u128, u8)> = vec![(0, 0, 0)];
        while let Some((node, bits, depth)) = stack.pop() {
            if node > self.node_count {
                out.data(bits, depth, node, self.bit_count)?;
                continue;
            }
            if node == self.node_count {
                continue; // "no data"
            }
            visited += 1;
            if visited > budget {
                return Err(WalkError::Tree(format!(
                    "more than {budget} node visits for {} nodes (shared or cyclic nodes)",
                    self.node_count
                )));
            }
            if depth >= self.bit_count {
                return Err(WalkError::Tree(format!(
                    "node {node} at {} is deeper than a {}-bit address (cyclic tree?)",
                    net_string(bits, depth, self.bit_count),
                    self.bit_count
                )));
            }
            let child_depth = depth + 1;
            for side in [1usize, 0] {
                let child = self.record(node, side).map_err(WalkError::Tree)?;
                let child_bits = bits | ((side as u128) << (127 - depth as u32));
                let is_ipv4_path = child_bits == 0 && child_depth == IPV4_DEPTH;
                if Some(child) == self.ipv4_root && !is_ipv4_path {
                    continue; // an alias of the IPv4 subtree, walked once at ::/96
                }
                stack.push((child, child_bits, child_depth));
            }
        }
        Ok(())
    }
}

/// Receives data records from the walk, decodes each distinct record once, and sorts the
/// networks into families.
struct Collector<'r, 'a> {
    reader: &'r Reader<&'a [u8]>,
    node_count: u32,
    /// Record pointer → its country. Country databases have a few hundred distinct records
    /// for a million networks, so decoding once per record is what makes loading fast.
    countries: HashMap<u32, Option<CountryCode>>,
    v6: Vec<(Prefix, CountryCode)>,
    /// IPv4 from `::/96` (or the whole IPv4 database).
    v4: Vec<(Prefix, CountryCode)>,
    /// IPv4 from `::ffff:0:0/96` when a writer stored copies there instead of an alias.
    v4_mapped: Vec<(Prefix, CountryCode)>,
    /// Whether `::/96` holds any record at all, with or without a country.
    v4_has_records: bool,
}

impl<'r, 'a> Collector<'r, 'a> {
    fn new(reader: &'r Reader<&'a [u8]>, node_count: u32) -> Self {
        Self {
            reader,
            node_count,
            countries: HashMap::new(),
            v6: Vec::new(),
            v4: Vec::new(),
            v4_mapped: Vec::new(),
            v4_has_records: false,
        }
    }

    fn data(
        &mut self,
        bits: u128,
        depth: u8,
        pointer: u32,
        bit_count: u8,
    ) -> Result<(), WalkError> {
        let ipv4_db = bit_count == 32;
        let in_range =
            |range: u128| !ipv4_db && depth >= IPV4_DEPTH && bits & mask(IPV4_DEPTH) == range;
        let covers = |range: u128| !ipv4_db && depth < IPV4_DEPTH && range & mask(depth) == bits;
        if ipv4_db || in_range(0) || covers(0) {
            self.v4_has_records = true;
        }
        let country = match self.countries.get(&pointer) {
            Some(c) => *c,
            None => {
                let c = self.decode(bits, depth, pointer, bit_count)?;
                self.countries.insert(pointer, c);
                c
            }
        };
        let Some(country) = country else {
            return Ok(());
        };
        let v4 = |bits: u128, len: u8| ipv4_prefix((bits >> 96) as u32, len);
        if ipv4_db {
            self.v4.push((v4(bits, depth)?, country));
        } else if in_range(0) {
            // ::a.b.c.d/96+n is a.b.c.d/n.
            self.v4.push((v4(bits << 96, depth - IPV4_DEPTH)?, country));
        } else if in_range(MAPPED_BITS) {
            self.v4_mapped
                .push((v4(bits << 96, depth - IPV4_DEPTH)?, country));
        } else {
            // Shorter than /96 or outside both ranges: an IPv6 network, which Prefix keeps
            // as IPv6. If it covers a whole IPv4 range (a database with no IPv4 subtree, or
            // one record for ::/0), that range's IPv4 addresses have its country too.
            self.v6.push((v6_prefix(bits, depth)?, country));
            if covers(0) {
                self.v4.push((v4(0, 0)?, country));
            }
            if covers(MAPPED_BITS) {
                self.v4_mapped.push((v4(0, 0)?, country));
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        bits: u128,
        depth: u8,
        pointer: u32,
        bit_count: u8,
    ) -> Result<Option<CountryCode>, WalkError> {
        let record_err = |source| WalkError::Record {
            network: net_string(bits, depth, bit_count),
            source,
        };
        // Records are reached through a lookup of the network's first address, which takes
        // the same path as the walk, so the crate's own bounds checks and decoder apply.
        let addr = if bit_count == 32 {
            IpAddr::V4(Ipv4Addr::from((bits >> 96) as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(bits))
        };
        let found = self.reader.lookup(addr).map_err(record_err)?;
        let expected = u64::from(pointer).checked_sub(u64::from(self.node_count) + 16);
        if expected.is_none() || found.offset().map(|o| o as u64) != expected {
            return Err(WalkError::Tree(format!(
                "the lookup of {addr} does not reach the record the tree walk found"
            )));
        }
        let fields = found.decode::<CountryFields>().map_err(record_err)?;
        Ok(fields.and_then(|f| f.country()))
    }

    /// Chooses the IPv4 source, merges, and returns IPv4 then IPv6.
    fn finish(self) -> Vec<(Prefix, CountryCode)> {
        // Readers look IPv4 addresses up under ::/96, so that is the database's answer for
        // IPv4. Only a database with nothing at all there but data under ::ffff:0:0/96 gets
        // its IPv4 from the mapped range; using both could yield overlapping prefixes.
        let v4 = if self.v4_has_records {
            self.v4
        } else {
            self.v4_mapped
        };
        let mut out = merge_siblings(v4);
        out.extend(merge_siblings(self.v6));
        out
    }
}

fn ipv4_prefix(addr: u32, len: u8) -> Result<Prefix, WalkError> {
    Prefix::new(IpAddr::V4(Ipv4Addr::from(addr)), len).map_err(|e| WalkError::Tree(e.to_string()))
}

fn v6_prefix(bits: u128, len: u8) -> Result<Prefix, WalkError> {
    Prefix::new(IpAddr::V6(Ipv6Addr::from(bits)), len).map_err(|e| WalkError::Tree(e.to_string()))
}

/// A tree position as text, for error messages.
fn net_string(bits: u128, depth: u8, bit_count: u8) -> String {
    if bit_count == 32 {
        format!("{}/{depth}", Ipv4Addr::from((bits >> 96) as u32))
    } else {
        format!("{}/{depth}", Ipv6Addr::from(bits))
    }
}

/// Replaces pairs of sibling prefixes with the same country by their parent, repeatedly.
/// Input must be sorted and non-overlapping (the walk's order); the result covers exactly the
/// same addresses with the same countries.
fn merge_siblings(mut list: Vec<(Prefix, CountryCode)>) -> Vec<(Prefix, CountryCode)> {
    if !list.is_sorted_by_key(|(p, _)| *p) {
        list.sort_unstable_by_key(|(p, _)| *p);
    }
    let mut out: Vec<(Prefix, CountryCode)> = Vec::with_capacity(list.len());
    for item in list {
        out.push(item);
        while let [.., (a, ca), (b, cb)] = out[..] {
            let len = a.len();
            let sibling = ca == cb
                && len > 0
                && len == b.len()
                && a.is_v6() == b.is_v6()
                && a.bits() ^ b.bits() == 1u128 << (128 - u32::from(len))
                && a.bits() < b.bits();
            let Some(parent) = sibling
                .then(|| Prefix::new(a.addr(), len - 1).ok())
                .flatten()
            else {
                break;
            };
            out.truncate(out.len() - 2);
            out.push((parent, ca));
        }
    }
    out
}

/// The parts of a record that can name a country, whatever else the record holds.
///
/// Decoded leniently on purpose: a record that is not a map, or whose `country` is not a map,
/// simply has no country (databases such as ASN ones have other shapes), while data that is
/// corrupt still fails in the decoder.
#[derive(Debug, Default, PartialEq)]
struct CountryFields {
    /// MaxMind: `country.iso_code`, where the address is used.
    country: Option<String>,
    /// MaxMind: `registered_country.iso_code`, where the block is registered.
    registered_country: Option<String>,
    /// DB-IP, ip-location-db and similar: a flat `country_code`.
    country_code: Option<String>,
}

impl CountryFields {
    /// The country to block by. The product blocks by where an address is used, so
    /// `country` wins; `registered_country` fills in where MaxMind leaves `country` out
    /// (anycast, satellite and some hosting ranges), then the flat schema. An invalid code,
    /// or `ZZ` (the ISO user-assigned code data vendors use for "unknown"), is unknown.
    fn country(&self) -> Option<CountryCode> {
        [&self.country, &self.registered_country, &self.country_code]
            .into_iter()
            .flatten()
            .find_map(|s| CountryCode::parse(s).filter(|c| c.as_str() != "ZZ"))
    }
}

/// Visitor methods for every non-map, non-string shape: consume the value, keep nothing.
macro_rules! ignore_other_shapes {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

impl<'de> Deserialize<'de> for CountryFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CountryFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(CountryFields::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut f = CountryFields::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "country" => f.country = map.next_value::<IsoCode>()?.0,
                        "registered_country" => {
                            f.registered_country = map.next_value::<IsoCode>()?.0
                        }
                        "country_code" => f.country_code = map.next_value::<LooseString>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(f)
            }
            ignore_other_shapes!();
        }
        d.deserialize_any(V)
    }
}

/// `{"iso_code": "GB", ...}` → `Some("GB")`; any other shape → `None`.
#[derive(Default)]
struct IsoCode(Option<String>);

impl<'de> Deserialize<'de> for IsoCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsoCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a country map")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(IsoCode(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut code = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "iso_code" {
                        code = map.next_value::<LooseString>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(IsoCode(code))
            }
            ignore_other_shapes!();
        }
        d.deserialize_any(V)
    }
}

/// A string → `Some`; any other shape → `None`.
#[derive(Default)]
struct LooseString(Option<String>);

impl<'de> Deserialize<'de> for LooseString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LooseString(Some(s.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LooseString(None))
            }
            ignore_other_shapes!();
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CountryCode {
        CountryCode::parse(s).expect("valid code")
    }

    fn p(s: &str) -> Prefix {
        s.parse().expect("valid prefix")
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.mmdb");
        let err = load_country_networks(&path).expect_err("missing file");
        assert!(matches!(err, GeoError::Read { .. }));
        assert!(err.to_string().contains("nope.mmdb"), "{err}");
    }

    #[test]
    fn directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_country_networks(dir.path()).expect_err("a directory");
        assert!(matches!(err, GeoError::Read { .. }));
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in [
            ("empty.mmdb", &b""[..]),
            ("text.mmdb", &b"GB 81.2.69.0/24\n"[..]),
            ("marker-only.mmdb", &b"\xab\xcd\xefMaxMind.com"[..]),
            (
                "marker-bad-map.mmdb",
                &b"\xab\xcd\xefMaxMind.com\xe9\x00"[..],
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let err = load_country_networks(&path).expect_err(name);
            assert!(matches!(err, GeoError::Format { .. }), "{name}: {err:?}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn no_country_message_names_file_and_type() {
        let err = GeoError::NoCountryData {
            path: "/x/GeoLite2-ASN.mmdb".into(),
            database_type: "GeoLite2-ASN".into(),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("/x/GeoLite2-ASN.mmdb") && msg.contains("GeoLite2-ASN"),
            "{msg}"
        );
    }

    #[test]
    fn country_precedence() {
        let f = |c: Option<&str>, r: Option<&str>, flat: Option<&str>| CountryFields {
            country: c.map(Into::into),
            registered_country: r.map(Into::into),
            country_code: flat.map(Into::into),
        };
        assert_eq!(f(Some("gb"), Some("US"), None).country(), Some(cc("GB")));
        assert_eq!(f(None, Some("US"), None).country(), Some(cc("US")));
        assert_eq!(f(None, None, Some("SE")).country(), Some(cc("SE")));
        // An unusable `country` does not hide a usable fallback.
        assert_eq!(f(Some("ZZ"), Some("US"), None).country(), Some(cc("US")));
        assert_eq!(f(Some(""), None, Some("JP")).country(), Some(cc("JP")));
        assert_eq!(f(None, None, Some("ZZ")).country(), None);
        assert_eq!(f(None, None, Some("GBR")).country(), None);
        assert_eq!(f(None, None, None).country(), None);
    }

    #[test]
    fn merges_only_true_siblings_with_equal_country() {
        let gb = cc("GB");
        let se = cc("SE");
        let merged = merge_siblings(vec![
            (p("10.0.0.0/25"), gb),
            (p("10.0.0.128/25"), gb),
            (p("10.0.1.0/24"), gb),
            (p("10.0.2.0/24"), se),
            (p("10.0.3.0/24"), gb),
            // Adjacent but not siblings: 10.0.4.0/24 + 10.0.5.0/24 are, 10.0.3/24 + 10.0.4/24 not.
            (p("10.0.4.0/24"), gb),
            (p("10.0.5.0/24"), gb),
            (p("2001:db8::/33"), gb),
            (p("2001:db8:8000::/33"), gb),
        ]);
        assert_eq!(
            merged,
            vec![
                (p("10.0.0.0/23"), gb),
                (p("10.0.2.0/24"), se),
                (p("10.0.3.0/24"), gb),
                (p("10.0.4.0/23"), gb),
                (p("2001:db8::/32"), gb),
            ]
        );
    }

    #[test]
    fn merge_never_joins_families_or_whole_space() {
        let gb = cc("GB");
        let merged = merge_siblings(vec![
            (p("0.0.0.0/1"), gb),
            (p("128.0.0.0/1"), gb),
            (p("::/1"), gb),
            (p("8000::/1"), gb),
        ]);
        assert_eq!(merged, vec![(p("0.0.0.0/0"), gb), (p("::/0"), gb)]);
    }
}
