//! The Portcullis XDP filter. Order of judgement, fixed by the brief: allow list (always
//! passes), dynamic bans (each with expiry and reason), static deny prefixes, geo prefixes.
//! Allow, deny and geo are folded by userspace into one prefix table per family whose leaves
//! are decisions (see gateway-common), so the static part is one table walk; bans are a hash
//! probe per banned prefix length. The program never logs per packet: it counts.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{
    BAN_LEN_SLOTS, BAN_LENS_V4, BAN_LENS_V6, BanEntry, BanKey, CHILD_FLAG, COUNTER_NAME_LEN,
    Counter, Decision, FAMILY_V4, FAMILY_V6, NO_COUNTER, Node, ROOT_NODES, action, ban_reason,
    meta, slot,
};
use parse::Source;

/// BPF_F_NO_PREALLOC: hash entries are allocated on insert, so an idle ban table costs nothing.
const NO_PREALLOC: u32 = 1;

// Per-generation tables: created fresh, sized by userspace, for every rule-set load.
#[map]
static NODES4: Array<Node> = Array::with_max_entries(ROOT_NODES, 0);
#[map]
static NODES6: Array<Node> = Array::with_max_entries(ROOT_NODES, 0);
#[map]
static DECISIONS: Array<Decision> = Array::with_max_entries(1, 0);

// Shared state: pinned by name, reused by every generation and every restart.
#[map]
static BANS: HashMap<BanKey, BanEntry> = HashMap::pinned(262_144, NO_PREALLOC);
#[map]
static BAN_LENS: Array<u64> = Array::pinned(2, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(slot::COUNT, 0);
#[map]
static CTR_NAMES: HashMap<[u8; COUNTER_NAME_LEN], u32> = HashMap::pinned(slot::COUNT, NO_PREALLOC);
#[map]
static META: Array<u64> = Array::pinned(meta::COUNT, 0);

#[xdp]
pub fn portcullis(ctx: XdpContext) -> u32 {
    let bytes = parse::frame_len(&ctx);
    match parse::source(&ctx) {
        Source::V4(a) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&a);
            judge(lookup(&NODES4, &a), FAMILY_V4, &key, BAN_LENS_V4, bytes)
        }
        Source::V6(a) => judge(lookup(&NODES6, &a), FAMILY_V6, &a, BAN_LENS_V6, bytes),
        Source::NotIp => pass(slot::PASS_NOT_IP, bytes),
        Source::Unparsed => pass(slot::PASS_UNPARSED, bytes),
    }
}

/// Walks the prefix table: the first two bytes pick a root slot, each further byte a slot in a
/// child node, until a leaf. Returns the leaf's decision index (0 = no rule).
#[inline(always)]
fn lookup<const N: usize>(nodes: &Array<Node>, addr: &[u8; N]) -> u32 {
    let mut entry = match nodes.get(addr[0] as u32) {
        Some(n) => n.slots[addr[1] as usize],
        None => return 0,
    };
    for byte in &addr[2..] {
        if entry & CHILD_FLAG == 0 {
            return entry;
        }
        entry = match nodes.get(entry & !CHILD_FLAG) {
            Some(n) => n.slots[*byte as usize],
            None => return 0,
        };
    }
    // A child flag past the last byte would be a userspace bug; treat it as "no rule".
    if entry & CHILD_FLAG == 0 { entry } else { 0 }
}

#[inline(always)]
fn judge(decision: u32, family: u8, addr: &[u8; 16], lens_entry: u32, bytes: u64) -> u32 {
    let d = match DECISIONS.get(decision) {
        Some(d) => *d,
        None => Decision {
            action: action::PASS,
            counter: slot::PASS_NO_RULE,
            report_counter: NO_COUNTER,
            _pad: 0,
        },
    };
    if d.action == action::ALLOW {
        return pass(d.counter, bytes);
    }
    if let Some(reason) = banned(family, addr, lens_entry) {
        count(slot::BAN_DROP_BASE + (reason % ban_reason::COUNT), bytes);
        return xdp_action::XDP_DROP;
    }
    if d.report_counter != NO_COUNTER {
        count(d.report_counter, bytes);
    }
    count(d.counter, bytes);
    if d.action == action::DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The reason of a live ban covering `addr`, probing only prefix lengths that have bans.
#[inline(always)]
fn banned(family: u8, addr: &[u8; 16], lens_entry: u32) -> Option<u32> {
    let lens = match BAN_LENS.get(lens_entry) {
        Some(v) => *v,
        None => 0,
    };
    if lens == 0 {
        return None;
    }
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    for i in 0..BAN_LEN_SLOTS {
        let stored = (lens >> (8 * i)) & 0xff;
        if stored == 0 {
            continue;
        }
        let prefix_len = (stored - 1) as u32;
        // Masks built from two 64-bit halves with a fixed, small number of branches: a
        // byte-by-byte mask multiplies the verifier's paths per probed length.
        let key_hi = hi & mask64(prefix_len.min(64));
        let key_lo = lo & mask64(prefix_len.saturating_sub(64));
        let mut key_addr = [0u8; 16];
        key_addr[..8].copy_from_slice(&key_hi.to_be_bytes());
        key_addr[8..].copy_from_slice(&key_lo.to_be_bytes());
        let key = BanKey {
            family,
            prefix_len: prefix_len as u8,
            _pad: [0; 2],
            addr: key_addr,
        };
        // SAFETY: the entry is read at once; the program runs in an RCU read-side section, so
        // a concurrent delete cannot free it under us.
        if let Some(entry) = unsafe { BANS.get(key) } {
            // SAFETY: plain helper call without arguments.
            if entry.expires_at_ns == 0 || unsafe { bpf_ktime_get_ns() } < entry.expires_at_ns {
                return Some(entry.reason);
            }
        }
    }
    None
}

/// The top `bits` bits of a u64 set (`bits` at most 64).
#[inline(always)]
fn mask64(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - bits)
    }
}

#[inline(always)]
fn count(slot: u32, bytes: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, so no other writer; the pointer comes from a successful lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
fn pass(slot: u32, bytes: u64) -> u32 {
    count(slot, bytes);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel reads this; "GPL" declares the program GPL-compatible (it is dual licensed).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
