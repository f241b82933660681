//! The contract between the XDP program and its userspace control plane: map names, the
//! encoding of the prefix tables, counter slots and ban records. Nothing here runs; both sides
//! compile against it. Changing a layout here is a breaking change for pinned state: bump
//! [`LAYOUT_VERSION`], which names the bpffs directory, so old pins are never misread.
#![no_std]

/// Version of everything in this crate that lives in pinned kernel state.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names as they appear in the ELF object (kept under the kernel's 16-byte name limit).
pub mod maps {
    /// Prefix table for IPv4 (and IPv4-mapped IPv6): an array of [`super::Node`].
    pub const NODES4: &str = "NODES4";
    /// Prefix table for IPv6: an array of [`super::Node`].
    pub const NODES6: &str = "NODES6";
    /// What each table leaf means: an array of [`super::Decision`].
    pub const DECISIONS: &str = "DECISIONS";
    /// Dynamic bans: hash of [`super::BanKey`] to [`super::BanEntry`]. Pinned, shared by all
    /// program generations.
    pub const BANS: &str = "BANS";
    /// Prefix lengths that currently have at least one ban (see [`super::BAN_LEN_SLOTS`]).
    pub const BAN_LENS: &str = "BAN_LENS";
    /// Per-CPU packet and byte counters, one slot per verdict and reason.
    pub const COUNTERS: &str = "COUNTERS";
    /// Userspace-only registry that gives each counter name a stable slot across reloads.
    pub const COUNTER_NAMES: &str = "CTR_NAMES";
    /// Userspace-only facts about the loaded generation (see [`super::meta`]).
    pub const META: &str = "META";
    /// Benchmark baseline: the kernel's LPM trie for IPv4 keys.
    pub const LPM4: &str = "LPM4";
    /// Benchmark baseline: the kernel's LPM trie for IPv6 keys.
    pub const LPM6: &str = "LPM6";
}

/// Program names in the ELF objects.
pub mod programs {
    /// The enforcement program.
    pub const FILTER: &str = "portcullis";
    /// The LPM-trie baseline used only by the benchmark.
    pub const LPM_BASELINE: &str = "lpm_baseline";
}

// ---------------------------------------------------------------------------------------------
// Prefix tables
//
// A multibit trie with controlled prefix expansion: the first 16 bits of the address select a
// slot in one of 256 root nodes (node = first byte, slot = second byte), and every further
// byte selects a slot in a child node. A slot holds either a decision index (a leaf) or, with
// CHILD_FLAG set, the index of the node for the next byte. Every prefix is expanded to the
// slots it covers at build time, so a lookup is at most one array access per byte of address
// past the second, whatever the number of prefixes. docs/kernel-tables.md has the numbers.
// ---------------------------------------------------------------------------------------------

/// Slots per node: one per value of an address byte.
pub const NODE_SLOTS: usize = 256;
/// Nodes 0..256 are the roots, indexed by the first address byte.
pub const ROOT_NODES: u32 = 256;
/// Set in a slot whose value is a child node index rather than a decision.
pub const CHILD_FLAG: u32 = 1 << 31;
/// Child levels below the root for IPv4 (bytes 2 and 3).
pub const V4_CHILD_LEVELS: usize = 2;
/// Child levels below the root for IPv6 (bytes 2 to 15).
pub const V6_CHILD_LEVELS: usize = 14;

/// One trie node: 256 slots of 4 bytes (1 KiB).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub slots: [u32; NODE_SLOTS],
}

impl Node {
    /// A node whose every slot holds `value`.
    pub const fn filled(value: u32) -> Self {
        Self {
            slots: [value; NODE_SLOTS],
        }
    }
}

/// What the program does for a table leaf.
pub mod action {
    /// No rule enforces anything here: go on to the ban check, then pass.
    pub const PASS: u32 = 0;
    /// On the allow list: pass at once, before bans.
    pub const ALLOW: u32 = 1;
    /// A static deny or geo rule in enforce mode: drop (after the ban check).
    pub const DROP: u32 = 2;
}

/// The meaning of a table leaf. Index 0 is always "no rule".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// One of [`action`].
    pub action: u32,
    /// Counter slot to bump with the final verdict for this leaf.
    pub counter: u32,
    /// Counter slot of a report-only rule that matched ("would drop"), or [`NO_COUNTER`].
    pub report_counter: u32,
    pub _pad: u32,
}

/// Marks an absent counter slot.
pub const NO_COUNTER: u32 = u32::MAX;

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// Packets and bytes for one counter slot on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Counter slots. The fixed ones are known to both sides; rule-specific slots from
/// [`slot::FIRST_DYNAMIC`] on are handed out by userspace through the `CTR_NAMES` registry so a
/// rule keeps its slot across reloads and restarts.
pub mod slot {
    /// Number of counter slots.
    pub const COUNT: u32 = 4096;
    /// Passed: no rule matched.
    pub const PASS_NO_RULE: u32 = 0;
    /// Passed: on the allow list.
    pub const PASS_ALLOW: u32 = 1;
    /// Passed: an Ethernet/VLAN/IP header the program could not read (truncated or malformed).
    pub const PASS_UNPARSED: u32 = 2;
    /// Passed: not IPv4 or IPv6 (ARP, LLDP, ...).
    pub const PASS_NOT_IP: u32 = 3;
    /// Dropped by a dynamic ban: `BAN_DROP_BASE + reason` (see [`super::ban_reason`]).
    pub const BAN_DROP_BASE: u32 = 16;
    /// First slot handed out by the registry.
    pub const FIRST_DYNAMIC: u32 = 64;
}

// ---------------------------------------------------------------------------------------------
// Dynamic bans
// ---------------------------------------------------------------------------------------------

/// Why a ban exists. Counted per reason.
pub mod ban_reason {
    pub const MANUAL: u32 = 0;
    pub const AUTH_FAILURE: u32 = 1;
    pub const RATE_LIMIT: u32 = 2;
    pub const VALIDATION: u32 = 3;
    pub const CLUSTER: u32 = 4;
    /// Reasons are below this.
    pub const COUNT: u32 = 16;
}

/// Address family tags in [`BanKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Key of a ban: a prefix of one family, its host bits zeroed. IPv4 uses `addr[..4]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BanKey {
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}

/// A ban record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanEntry {
    /// CLOCK_MONOTONIC nanoseconds after which the ban no longer applies; 0 means never.
    pub expires_at_ns: u64,
    /// Wall-clock seconds when the ban was made (for listing only).
    pub created_unix: u64,
    /// One of [`ban_reason`].
    pub reason: u32,
    pub _pad: u32,
}

/// `BAN_LENS` is an array of two u64, entry 0 for IPv4 and entry 1 for IPv6. Each packs up to
/// [`BAN_LEN_SLOTS`] prefix lengths that currently have bans, one per byte, stored as
/// `length + 1` (0 = unused byte). The program reads one word and probes only those lengths,
/// so with no bans the check costs one array read, and a host-only ban set one hash lookup.
pub const BAN_LEN_SLOTS: u32 = 8;
/// `BAN_LENS` entries.
pub const BAN_LENS_V4: u32 = 0;
pub const BAN_LENS_V6: u32 = 1;

/// Slots of the `META` array (u64 values), read and written by userspace only.
pub mod meta {
    pub const LAYOUT: u32 = 0;
    pub const GENERATION: u32 = 1;
    pub const FINGERPRINT: u32 = 2;
    pub const LOADED_UNIX: u32 = 3;
    pub const COUNT: u32 = 8;
}

/// Length of a counter name key in `CTR_NAMES` (NUL-padded UTF-8).
pub const COUNTER_NAME_LEN: usize = 48;

/// Key of the benchmark LPM tries: prefix length in bits, then the address in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LpmKey<const N: usize> {
    pub prefix_len: u32,
    pub addr: [u8; N],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with explicit padding fields so
    // every byte is initialised.
    unsafe impl aya::Pod for super::Node {}
    unsafe impl aya::Pod for super::Decision {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::BanKey {}
    unsafe impl aya::Pod for super::BanEntry {}
}
