//! Compiles a [`RuleSet`] into the XDP program's tables (layout in `gateway-common`): one
//! multibit trie per family whose leaves are decision indices, plus the decision array.
//!
//! How: every prefix becomes an operation on a "label" (allow?, which deny sets, which
//! country). Prefixes are applied shortest first, each expanded to the slots it covers, so a
//! longer prefix refines what a shorter one set. Labels are then resolved into decisions in
//! the program's order (allow, then deny sets in config order, then geo), identical subtrees
//! are collapsed, and the nodes are numbered for the kernel. [`CompiledRules::lookup`] walks
//! the result exactly as the program does; [`naive_decision`] is the reference it is tested
//! against.

use std::collections::HashMap;
use std::net::IpAddr;

use gateway_common::{CHILD_FLAG, Decision, NO_COUNTER, NODE_SLOTS, Node, ROOT_NODES, action};

use super::{CountryCode, Mode, Prefix, RuleSet, UnknownCountry};

/// Names of the fixed counter slots (see `gateway_common::slot`).
pub mod counter_name {
    pub const PASS_NO_RULE: &str = "pass/no-rule";
    pub const PASS_ALLOW: &str = "pass/allow";
    pub const PASS_UNPARSED: &str = "pass/unparsed";
    pub const PASS_NOT_IP: &str = "pass/not-ip";
}

/// Hands out counter slots by name. The kernel implementation keeps them in a pinned map so a
/// rule keeps its counter across reloads; [`LocalSlots`] is the in-memory one.
pub trait CounterSlots {
    /// The slot for `name`, allocating one if needed. Returns `None` when slots are exhausted.
    fn slot(&mut self, name: &str) -> Option<u32>;
}

/// In-memory slot registry (tests, `check`, benchmarks).
#[derive(Debug, Default, Clone)]
pub struct LocalSlots {
    names: HashMap<String, u32>,
}

impl LocalSlots {
    /// Slot names known so far, by slot.
    pub fn names(&self) -> impl Iterator<Item = (&str, u32)> {
        self.names.iter().map(|(n, s)| (n.as_str(), *s))
    }
}

impl CounterSlots for LocalSlots {
    fn slot(&mut self, name: &str) -> Option<u32> {
        if let Some(fixed) = fixed_slot(name) {
            return Some(fixed);
        }
        let next = gateway_common::slot::FIRST_DYNAMIC + self.names.len() as u32;
        if next >= gateway_common::slot::COUNT && !self.names.contains_key(name) {
            return None;
        }
        Some(*self.names.entry(name.to_string()).or_insert(next))
    }
}

/// Slots every side agrees on without the registry.
pub fn fixed_slot(name: &str) -> Option<u32> {
    use gateway_common::slot;
    Some(match name {
        counter_name::PASS_NO_RULE => slot::PASS_NO_RULE,
        counter_name::PASS_ALLOW => slot::PASS_ALLOW,
        counter_name::PASS_UNPARSED => slot::PASS_UNPARSED,
        counter_name::PASS_NOT_IP => slot::PASS_NOT_IP,
        _ => {
            let reason = name.strip_prefix("drop/ban:")?;
            slot::BAN_DROP_BASE + crate::kernel::BanReason::from_name(reason)?.code()
        }
    })
}

/// What a decision means, by counter name: the form in which decisions are compared, shown
/// and diffed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub action: u32,
    pub counter: String,
    pub report: Option<String>,
}

/// The tables for one rule set, ready to load.
#[derive(Clone, Debug)]
pub struct CompiledRules {
    pub v4: Vec<Node>,
    pub v6: Vec<Node>,
    /// What each leaf value means, by index; turned into kernel [`Decision`]s by
    /// [`CompiledRules::decisions`] once counter slots are known.
    pub verdicts: Vec<Verdict>,
    pub stats: TableStats,
}

/// Sizes, for logs, metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub nodes_v4: usize,
    pub nodes_v6: usize,
    pub decisions: usize,
}

impl TableStats {
    /// Bytes of kernel array memory the tables take.
    pub fn table_bytes(&self) -> usize {
        (self.nodes_v4 + self.nodes_v6) * std::mem::size_of::<Node>()
            + self.decisions * std::mem::size_of::<Decision>()
    }
}

/// Why rules could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// More distinct rule counters than the kernel counter array holds.
    #[error(
        "too many distinct rule counters (the kernel has {} slots)",
        gateway_common::slot::COUNT
    )]
    CounterSlotsExhausted,
    /// More nodes than the 31-bit child index can address (never with real data).
    #[error("the prefix table needs more than 2^31 nodes")]
    TooManyNodes,
}

impl CompiledRules {
    /// The verdict the XDP program reaches for `addr`, walking the tables the same way.
    pub fn lookup(&self, addr: IpAddr) -> &Verdict {
        &self.verdicts[self.lookup_index(addr) as usize]
    }

    /// The kernel decision array, with counter slots from `slots`.
    pub fn decisions(&self, slots: &mut dyn CounterSlots) -> Result<Vec<Decision>, CompileError> {
        self.verdicts
            .iter()
            .map(|v| {
                let counter = slots
                    .slot(&v.counter)
                    .ok_or(CompileError::CounterSlotsExhausted)?;
                let report_counter = match &v.report {
                    Some(name) => slots
                        .slot(name)
                        .ok_or(CompileError::CounterSlotsExhausted)?,
                    None => NO_COUNTER,
                };
                Ok(Decision {
                    action: v.action,
                    counter,
                    report_counter,
                    _pad: 0,
                })
            })
            .collect()
    }

    /// The decision index for `addr`.
    pub fn lookup_index(&self, addr: IpAddr) -> u32 {
        let host = Prefix::host(addr);
        let bytes = host.octets();
        let nodes = if host.is_v6() { &self.v6 } else { &self.v4 };
        let mut entry = nodes[bytes[0] as usize].slots[bytes[1] as usize];
        for b in &bytes[2..] {
            if entry & CHILD_FLAG == 0 {
                return entry;
            }
            entry = nodes[(entry & !CHILD_FLAG) as usize].slots[*b as usize];
        }
        if entry & CHILD_FLAG == 0 { entry } else { 0 }
    }

    /// A stable 64-bit fingerprint of the tables (FNV-1a), to tell whether a reload changes
    /// anything.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::default();
        for (tag, nodes) in [(4u8, &self.v4), (6, &self.v6)] {
            h.write(&[tag]);
            for n in nodes {
                for s in n.slots {
                    h.write(&s.to_le_bytes());
                }
            }
        }
        for v in &self.verdicts {
            h.write(&v.action.to_le_bytes());
            h.write(v.counter.as_bytes());
            h.write(&[0]);
            h.write(v.report.as_deref().unwrap_or("").as_bytes());
            h.write(&[0]);
        }
        h.0
    }
}

struct Fnv(u64);
impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}
impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Labels: what is known about an address before resolution.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Label {
    allow: bool,
    /// Indices of matching deny sets, ascending.
    deny: Vec<u16>,
    /// Country of the longest geo network covering the address.
    country: Option<CountryCode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Allow,
    Deny(u16),
    Country(CountryCode),
}

impl Label {
    fn apply(&self, op: Op) -> Label {
        let mut l = self.clone();
        match op {
            Op::Allow => l.allow = true,
            Op::Deny(i) => {
                if let Err(pos) = l.deny.binary_search(&i) {
                    l.deny.insert(pos, i);
                }
            }
            // Longest match wins: prefixes are applied shortest first.
            Op::Country(c) => l.country = Some(c),
        }
        l
    }
}

/// Interns labels and memoises `apply`, so a million prefixes touch a handful of labels.
#[derive(Default)]
struct Labels {
    all: Vec<Label>,
    ids: HashMap<Label, u32>,
    applied: HashMap<(u32, Op), u32>,
}

impl Labels {
    fn new() -> Self {
        let mut l = Self::default();
        l.intern(Label::default());
        l
    }

    fn intern(&mut self, label: Label) -> u32 {
        if let Some(id) = self.ids.get(&label) {
            return *id;
        }
        let id = self.all.len() as u32;
        self.all.push(label.clone());
        self.ids.insert(label, id);
        id
    }

    fn apply(&mut self, id: u32, op: Op) -> u32 {
        if let Some(out) = self.applied.get(&(id, op)) {
            return *out;
        }
        let next = self.all[id as usize].apply(op);
        let out = self.intern(next);
        self.applied.insert((id, op), out);
        out
    }
}

/// Resolves a label in the program's order: allow, deny sets in order, geo.
fn resolve(rules: &RuleSet, label: &Label) -> Verdict {
    if label.allow {
        return Verdict {
            action: action::ALLOW,
            counter: counter_name::PASS_ALLOW.into(),
            report: None,
        };
    }
    let mut enforce = None;
    let mut report = None;
    for &i in &label.deny {
        let set = &rules.deny[i as usize];
        match set.mode {
            Mode::Enforce => {
                enforce = Some(format!("drop/deny:{}", set.name));
                break;
            }
            Mode::Report => {
                report.get_or_insert_with(|| format!("report/deny:{}", set.name));
            }
        }
    }
    if enforce.is_none()
        && let Some(geo) = &rules.geo
    {
        let blocked = match label.country {
            Some(c) => geo.blocked.contains(&c).then(|| c.to_string()),
            None => (geo.unknown == UnknownCountry::Block).then(|| "unknown".to_string()),
        };
        if let Some(country) = blocked {
            match geo.mode {
                Mode::Enforce => enforce = Some(format!("drop/geo:{country}")),
                Mode::Report => {
                    report.get_or_insert_with(|| format!("report/geo:{country}"));
                }
            }
        }
    }
    match enforce {
        Some(counter) => Verdict {
            action: action::DROP,
            counter,
            report,
        },
        None => Verdict {
            action: action::PASS,
            counter: counter_name::PASS_NO_RULE.into(),
            report,
        },
    }
}

/// The verdict for `addr` computed straight from the rule set, by linear scans: the reference
/// that the compiled tables are tested against.
pub fn naive_decision(rules: &RuleSet, addr: IpAddr) -> Verdict {
    let mut label = Label {
        allow: rules.allow.iter().any(|p| p.contains(addr)),
        ..Label::default()
    };
    for (i, set) in rules.deny.iter().enumerate() {
        if set.prefixes.iter().any(|p| p.contains(addr)) {
            label.deny.push(i as u16);
        }
    }
    if let Some(geo) = &rules.geo {
        label.country = geo
            .networks
            .iter()
            .filter(|(p, _)| p.contains(addr))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, c)| *c);
    }
    resolve(rules, &label)
}

// ---------------------------------------------------------------------------------------------
// The trie builder.
// ---------------------------------------------------------------------------------------------

/// Bits resolved by the root level (first two bytes), then by each child level.
const ROOT_BITS: u32 = 16;
const STRIDE: u32 = 8;

struct Trie {
    /// Slot values: a label id, or CHILD_FLAG | node index.
    nodes: Vec<[u32; NODE_SLOTS]>,
}

impl Trie {
    fn new() -> Self {
        Self {
            nodes: vec![[0; NODE_SLOTS]; ROOT_NODES as usize],
        }
    }

    /// Applies `op` to every address of `prefix`.
    fn insert(&mut self, labels: &mut Labels, prefix: &Prefix, op: Op) -> Result<(), CompileError> {
        let bits = prefix.bits();
        let len = u32::from(prefix.len());
        let byte = |i: u32| ((bits >> (120 - 8 * i)) & 0xff) as usize;
        if len <= ROOT_BITS {
            // The root level is 65,536 slots spread over 256 nodes: [first byte][second byte].
            let first = ((bits >> 112) & 0xffff) as usize;
            let span = 1usize << (ROOT_BITS - len);
            for flat in first..first + span {
                self.apply_slot(labels, flat / NODE_SLOTS, flat % NODE_SLOTS, op);
            }
            return Ok(());
        }
        // (node, slot) addresses a slot of the level whose bits end at `level_end`; the prefix
        // is longer, so it continues in that slot's child.
        let mut node = byte(0);
        let mut slot = byte(1);
        let mut level_end = ROOT_BITS;
        loop {
            let child = self.child(node, slot)?;
            let next_end = level_end + STRIDE;
            let here = byte(level_end / 8);
            if len >= next_end {
                if len == next_end {
                    self.apply_slot(labels, child, here, op);
                    return Ok(());
                }
                node = child;
                slot = here;
                level_end = next_end;
            } else {
                // The prefix ends inside this byte: it covers 2^(free bits) slots.
                let free = next_end - len;
                let first = here & !((1usize << free) - 1);
                for s in first..first + (1usize << free) {
                    self.apply_slot(labels, child, s, op);
                }
                return Ok(());
            }
        }
    }

    /// The child node under (node, slot), created from the slot's label if absent.
    fn child(&mut self, node: usize, slot: usize) -> Result<usize, CompileError> {
        let entry = self.nodes[node][slot];
        if entry & CHILD_FLAG != 0 {
            return Ok((entry & !CHILD_FLAG) as usize);
        }
        let idx = self.nodes.len();
        if idx as u64 >= u64::from(CHILD_FLAG) {
            return Err(CompileError::TooManyNodes);
        }
        self.nodes.push([entry; NODE_SLOTS]);
        self.nodes[node][slot] = CHILD_FLAG | idx as u32;
        Ok(idx)
    }

    /// Applies `op` to a slot, and to the whole subtree when the slot has children (only when
    /// a longer prefix was applied first, which the shortest-first order avoids).
    fn apply_slot(&mut self, labels: &mut Labels, node: usize, slot: usize, op: Op) {
        let entry = self.nodes[node][slot];
        if entry & CHILD_FLAG == 0 {
            self.nodes[node][slot] = labels.apply(entry, op);
        } else {
            let child = (entry & !CHILD_FLAG) as usize;
            for s in 0..NODE_SLOTS {
                self.apply_slot(labels, child, s, op);
            }
        }
    }

    /// Rewrites labels to decision ids, folds children whose slots all hold one decision into
    /// their parent slot, and renumbers the surviving nodes densely (roots stay 0..256).
    fn finish(mut self, decision_of_label: &[u32]) -> Vec<Node> {
        for n in &mut self.nodes {
            for s in n.iter_mut() {
                if *s & CHILD_FLAG == 0 {
                    *s = decision_of_label[*s as usize];
                }
            }
        }
        // Children always have higher indices than their parents, so walking backwards folds
        // the deepest levels first and a parent sees its children already folded.
        let mut alive = vec![true; self.nodes.len()];
        for idx in (0..self.nodes.len()).rev() {
            for s in 0..NODE_SLOTS {
                let e = self.nodes[idx][s];
                if e & CHILD_FLAG != 0 {
                    let c = (e & !CHILD_FLAG) as usize;
                    if let Some(v) = uniform(&self.nodes[c]) {
                        self.nodes[idx][s] = v;
                        alive[c] = false;
                    }
                }
            }
        }
        // Renumber: a node is kept if it is a root or still referenced and alive.
        let mut new_index = vec![u32::MAX; self.nodes.len()];
        let mut next = 0u32;
        for (i, a) in alive.iter().enumerate() {
            if *a {
                new_index[i] = next;
                next += 1;
            }
        }
        let mut out = Vec::with_capacity(next as usize);
        for (i, n) in self.nodes.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            let mut node = Node::filled(0);
            for (d, s) in node.slots.iter_mut().zip(n.iter()) {
                *d = if *s & CHILD_FLAG != 0 {
                    CHILD_FLAG | new_index[(*s & !CHILD_FLAG) as usize]
                } else {
                    *s
                };
            }
            out.push(node);
        }
        out
    }
}

/// The single decision held by every slot of a leaf-only node.
fn uniform(slots: &[u32; NODE_SLOTS]) -> Option<u32> {
    let first = slots[0];
    (first & CHILD_FLAG == 0 && slots.iter().all(|s| *s == first)).then_some(first)
}

/// Compiles `rules` into kernel tables.
pub fn compile(rules: &RuleSet) -> Result<CompiledRules, CompileError> {
    let mut labels = Labels::new();
    let mut ops: Vec<(Prefix, Op)> = Vec::new();
    ops.extend(rules.allow.iter().map(|p| (*p, Op::Allow)));
    for (i, set) in rules.deny.iter().enumerate() {
        ops.extend(set.prefixes.iter().map(|p| (*p, Op::Deny(i as u16))));
    }
    if let Some(geo) = &rules.geo {
        ops.extend(geo.networks.iter().map(|(p, c)| (*p, Op::Country(*c))));
    }
    // Shortest first, so longer prefixes refine shorter ones (longest match for countries).
    ops.sort_by_key(|(p, _)| p.len());

    let mut v4 = Trie::new();
    let mut v6 = Trie::new();
    let mut stats = TableStats::default();
    for (p, op) in &ops {
        if p.is_v6() {
            stats.prefixes_v6 += 1;
            v6.insert(&mut labels, p, *op)?;
        } else {
            stats.prefixes_v4 += 1;
            v4.insert(&mut labels, p, *op)?;
        }
    }

    // Resolve every label, then share one decision per distinct verdict. Decision 0 is "no
    // rule", which is also what an empty label resolves to.
    let no_rule = Verdict {
        action: action::PASS,
        counter: counter_name::PASS_NO_RULE.into(),
        report: None,
    };
    let mut verdicts = vec![no_rule.clone()];
    let mut verdict_ids: HashMap<Verdict, u32> = HashMap::from([(no_rule, 0)]);
    let decision_of_label: Vec<u32> = labels
        .all
        .iter()
        .map(|l| {
            let v = resolve(rules, l);
            *verdict_ids.entry(v.clone()).or_insert_with(|| {
                verdicts.push(v);
                (verdicts.len() - 1) as u32
            })
        })
        .collect();
    let v4 = v4.finish(&decision_of_label);
    let v6 = v6.finish(&decision_of_label);
    stats.nodes_v4 = v4.len();
    stats.nodes_v6 = v6.len();
    stats.decisions = verdicts.len();
    Ok(CompiledRules {
        v4,
        v6,
        verdicts,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::rules::{DenySet, GeoRules};

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn cc(s: &str) -> CountryCode {
        CountryCode::parse(s).unwrap()
    }

    fn deny(name: &str, mode: Mode, prefixes: &[&str]) -> DenySet {
        DenySet {
            name: name.into(),
            mode,
            prefixes: prefixes.iter().map(|s| p(s)).collect(),
        }
    }

    fn verdict_of(rules: &RuleSet, addr: &str) -> Verdict {
        let compiled = compile(rules).unwrap();
        let addr: IpAddr = addr.parse().unwrap();
        let got = compiled.lookup(addr).clone();
        assert_eq!(
            got,
            naive_decision(rules, addr),
            "table and reference disagree for {addr}"
        );
        got
    }

    #[test]
    fn allow_beats_deny_and_geo() {
        let rules = RuleSet {
            allow: vec![p("10.1.0.0/16")],
            deny: vec![deny("all", Mode::Enforce, &["0.0.0.0/0", "::/0"])],
            geo: None,
        };
        assert_eq!(verdict_of(&rules, "10.1.2.3").action, action::ALLOW);
        assert_eq!(verdict_of(&rules, "10.2.0.1").counter, "drop/deny:all");
        assert_eq!(verdict_of(&rules, "2001:db8::1").counter, "drop/deny:all");
        // ::ffff:10.1.2.3 is judged as IPv4.
        assert_eq!(verdict_of(&rules, "::ffff:10.1.2.3").action, action::ALLOW);
    }

    #[test]
    fn report_only_counts_and_passes_and_enforce_later_still_drops() {
        let rules = RuleSet {
            allow: vec![],
            deny: vec![
                deny("watch", Mode::Report, &["192.0.2.0/24"]),
                deny("block", Mode::Enforce, &["192.0.2.128/25"]),
            ],
            geo: None,
        };
        let v = verdict_of(&rules, "192.0.2.1");
        assert_eq!(
            (v.action, v.report.as_deref()),
            (action::PASS, Some("report/deny:watch"))
        );
        let v = verdict_of(&rules, "192.0.2.200");
        assert_eq!(v.action, action::DROP);
        assert_eq!(v.counter, "drop/deny:block");
        assert_eq!(v.report.as_deref(), Some("report/deny:watch"));
    }

    #[test]
    fn geo_longest_network_wins_and_unknown_is_explicit() {
        let mut geo = GeoRules {
            mode: Mode::Enforce,
            blocked: BTreeSet::from([cc("GB")]),
            unknown: UnknownCountry::Pass,
            networks: vec![(p("81.0.0.0/8"), cc("SE")), (p("81.2.69.0/24"), cc("GB"))],
        };
        let rules = |g: &GeoRules| RuleSet {
            allow: vec![],
            deny: vec![],
            geo: Some(g.clone()),
        };
        assert_eq!(
            verdict_of(&rules(&geo), "81.2.69.142").counter,
            "drop/geo:GB"
        );
        assert_eq!(verdict_of(&rules(&geo), "81.3.0.1").action, action::PASS);
        assert_eq!(verdict_of(&rules(&geo), "8.8.8.8").action, action::PASS);
        geo.unknown = UnknownCountry::Block;
        assert_eq!(
            verdict_of(&rules(&geo), "8.8.8.8").counter,
            "drop/geo:unknown"
        );
        geo.mode = Mode::Report;
        let v = verdict_of(&rules(&geo), "81.2.69.142");
        assert_eq!(
            (v.action, v.report.as_deref()),
            (action::PASS, Some("report/geo:GB"))
        );
    }

    #[test]
    fn edges_of_the_address_space() {
        let rules = RuleSet {
            allow: vec![
                p("255.255.255.255/32"),
                p("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
            ],
            deny: vec![deny(
                "edges",
                Mode::Enforce,
                &[
                    "0.0.0.0/32",
                    "255.255.255.0/24",
                    "::/128",
                    "ffff::/16",
                    "::1/128",
                ],
            )],
            geo: None,
        };
        assert_eq!(verdict_of(&rules, "0.0.0.0").action, action::DROP);
        assert_eq!(verdict_of(&rules, "0.0.0.1").action, action::PASS);
        assert_eq!(verdict_of(&rules, "255.255.255.254").action, action::DROP);
        assert_eq!(verdict_of(&rules, "255.255.255.255").action, action::ALLOW);
        assert_eq!(verdict_of(&rules, "::").action, action::DROP);
        assert_eq!(verdict_of(&rules, "::1").action, action::DROP);
        assert_eq!(verdict_of(&rules, "::2").action, action::PASS);
        assert_eq!(verdict_of(&rules, "ffff::1").action, action::DROP);
        assert_eq!(
            verdict_of(&rules, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").action,
            action::ALLOW
        );
    }

    #[test]
    fn uniform_subtrees_collapse() {
        // Two halves of a /24 with the same verdict need no node below the /16 root slot.
        let rules = RuleSet {
            allow: vec![],
            deny: vec![deny(
                "d",
                Mode::Enforce,
                &["198.51.100.0/25", "198.51.100.128/25"],
            )],
            geo: None,
        };
        let c = compile(&rules).unwrap();
        assert_eq!(c.stats.nodes_v4, ROOT_NODES as usize + 1);
        assert_eq!(
            c.lookup("198.51.100.7".parse().unwrap()).action,
            action::DROP
        );
        assert_eq!(
            c.lookup("198.51.101.7".parse().unwrap()).action,
            action::PASS
        );
    }

    #[test]
    fn empty_rules_need_only_roots() {
        let c = compile(&RuleSet::default()).unwrap();
        assert_eq!(
            (c.stats.nodes_v4, c.stats.nodes_v6, c.verdicts.len()),
            (256, 256, 1)
        );
    }

    #[test]
    fn counter_slots_are_stable_and_bounded() {
        let mut slots = LocalSlots::default();
        let a = slots.slot("drop/deny:a").unwrap();
        assert_eq!(slots.slot("drop/deny:a"), Some(a));
        assert_eq!(
            slots.slot("pass/no-rule"),
            Some(gateway_common::slot::PASS_NO_RULE)
        );
        assert_eq!(
            slots.slot("drop/ban:rate-limit"),
            Some(gateway_common::slot::BAN_DROP_BASE + 2)
        );
        for i in 0..gateway_common::slot::COUNT {
            let _ = slots.slot(&format!("n{i}"));
        }
        assert_eq!(slots.slot("one-too-many"), None);
    }

    // --- Property tests against the naive reference ---------------------------------------

    /// Prefixes clustered around a few bases so that they overlap often.
    fn v4_prefix() -> impl Strategy<Value = Prefix> {
        (
            prop::sample::select(vec![
                0x0a00_0000u32,
                0xc000_0200,
                0x5102_4500,
                0xffff_ff00,
                0,
            ]),
            any::<u32>(),
            0u8..=32,
        )
            .prop_map(|(base, noise, len)| {
                let spread = noise & 0x0003_ffff;
                Prefix::new(IpAddr::V4(Ipv4Addr::from(base ^ spread)), len).unwrap()
            })
    }

    fn v6_prefix() -> impl Strategy<Value = Prefix> {
        (
            prop::sample::select(vec![
                0x2001_0db8u128 << 96,
                0x2a02u128 << 112,
                u128::MAX << 64,
                0,
            ]),
            any::<u128>(),
            0u8..=128,
        )
            .prop_map(|(base, noise, len)| {
                let spread = noise & ((1u128 << 70) - 1) & !((noise >> 64) << 64 & 0xff);
                Prefix::new(IpAddr::V6(Ipv6Addr::from(base ^ spread)), len).unwrap()
            })
    }

    fn any_prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![v4_prefix(), v6_prefix()]
    }

    fn rule_set() -> impl Strategy<Value = RuleSet> {
        let deny_set = (prop::collection::vec(any_prefix(), 0..12), any::<bool>());
        let geo_net = (
            any_prefix(),
            prop::sample::select(vec!["GB", "SE", "JP", "US"]),
        );
        (
            prop::collection::vec(any_prefix(), 0..4),
            prop::collection::vec(deny_set, 0..4),
            prop::option::of((
                prop::collection::vec(geo_net, 0..16),
                prop::collection::btree_set(prop::sample::select(vec!["GB", "SE", "JP"]), 0..3),
                any::<bool>(),
                any::<bool>(),
            )),
        )
            .prop_map(|(allow, denies, geo)| RuleSet {
                allow,
                deny: denies
                    .into_iter()
                    .enumerate()
                    .map(|(i, (prefixes, report))| DenySet {
                        name: format!("set{i}"),
                        mode: if report { Mode::Report } else { Mode::Enforce },
                        prefixes,
                    })
                    .collect(),
                geo: geo.map(|(nets, blocked, unknown_block, report)| {
                    // A database never holds the same network twice.
                    let mut seen = BTreeSet::new();
                    GeoRules {
                        mode: if report { Mode::Report } else { Mode::Enforce },
                        blocked: blocked.into_iter().map(cc).collect(),
                        unknown: if unknown_block {
                            UnknownCountry::Block
                        } else {
                            UnknownCountry::Pass
                        },
                        networks: nets
                            .into_iter()
                            .filter(|(p, _)| seen.insert(*p))
                            .map(|(p, c)| (p, cc(c)))
                            .collect(),
                    }
                }),
            })
    }

    /// Addresses near the rule set's prefix boundaries, plus arbitrary ones.
    fn probes(rules: &RuleSet, noise: &[u128]) -> Vec<IpAddr> {
        let mut prefixes: Vec<Prefix> = rules.allow.clone();
        prefixes.extend(rules.deny.iter().flat_map(|d| d.prefixes.iter().copied()));
        if let Some(g) = &rules.geo {
            prefixes.extend(g.networks.iter().map(|(p, _)| *p));
        }
        let mut out = Vec::new();
        for (i, pre) in prefixes.iter().enumerate() {
            let n = noise[i % noise.len()];
            let host_bits = if pre.is_v6() { 128 } else { 32 } - u32::from(pre.len());
            let host_mask = if host_bits == 0 {
                0
            } else {
                u128::MAX >> (128 - host_bits)
            };
            let base = if pre.is_v6() {
                pre.bits()
            } else {
                pre.bits() >> 96
            };
            for offset in [0, host_mask, n & host_mask, host_mask.wrapping_add(1)] {
                let a = base.wrapping_add(offset);
                out.push(if pre.is_v6() {
                    IpAddr::V6(Ipv6Addr::from(a))
                } else {
                    IpAddr::V4(Ipv4Addr::from(a as u32))
                });
            }
        }
        for n in noise {
            out.push(IpAddr::V4(Ipv4Addr::from(*n as u32)));
            out.push(IpAddr::V6(Ipv6Addr::from(*n)));
            out.push(IpAddr::V6(Ipv4Addr::from(*n as u32).to_ipv6_mapped()));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn compiled_tables_match_the_reference(rules in rule_set(), noise in prop::collection::vec(any::<u128>(), 1..8)) {
            let compiled = compile(&rules).unwrap();
            for addr in probes(&rules, &noise) {
                prop_assert_eq!(compiled.lookup(addr), &naive_decision(&rules, addr), "address {}", addr);
            }
        }

        #[test]
        fn compiling_is_deterministic(rules in rule_set()) {
            prop_assert_eq!(compile(&rules).unwrap().fingerprint(), compile(&rules).unwrap().fingerprint());
        }
    }
}
