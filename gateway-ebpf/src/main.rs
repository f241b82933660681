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
    BAN_LEN_SLOTS, BanEntry, BanKey, CHILD_FLAG, COUNTER_NAME_LEN, Counter, Decision, FAMILY_V4,
    FAMILY_V6, NO_COUNTER, Node, ROOT_NODES, action, ban_reason, meta, slot,
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
static BAN_LENS: Array<u32> = Array::pinned(2 * BAN_LEN_SLOTS, 0);
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
            judge(lookup(&NODES4, &a), FAMILY_V4, &key, 0, bytes)
        }
        Source::V6(a) => judge(lookup(&NODES6, &a), FAMILY_V6, &a, BAN_LEN_SLOTS, bytes),
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
fn judge(decision: u32, family: u8, addr: &[u8; 16], lens_base: u32, bytes: u64) -> u32 {
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
    if let Some(reason) = banned(family, addr, lens_base) {
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
fn banned(family: u8, addr: &[u8; 16], lens_base: u32) -> Option<u32> {
    let mut now = 0u64;
    for i in 0..BAN_LEN_SLOTS {
        let stored = match BAN_LENS.get(lens_base + i) {
            Some(v) => *v,
            None => 0,
        };
        if stored == 0 {
            continue;
        }
        let prefix_len = (stored - 1) as u8;
        let key = BanKey {
            family,
            prefix_len,
            _pad: [0; 2],
            addr: masked(addr, prefix_len),
        };
        // SAFETY: the value is copied out at once; a concurrent delete cannot free it under us
        // because the program runs inside an RCU read-side section.
        if let Some(entry) = unsafe { BANS.get(&key) } {
            if entry.expires_at_ns == 0 {
                return Some(entry.reason);
            }
            if now == 0 {
                // SAFETY: plain helper call without arguments.
                now = unsafe { bpf_ktime_get_ns() };
            }
            if now < entry.expires_at_ns {
                return Some(entry.reason);
            }
        }
    }
    None
}

/// `addr` with every bit past `prefix_len` cleared.
#[inline(always)]
fn masked(addr: &[u8; 16], prefix_len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    let len = prefix_len as usize;
    for (i, byte) in out.iter_mut().enumerate() {
        let start = i * 8;
        if start + 8 <= len {
            *byte = addr[i];
        } else if start < len {
            *byte = addr[i] & (0xffu8 << (8 - (len - start)));
        }
    }
    out
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
