//! Benchmark baseline, never loaded in production: the same parsing, with the prefixes in the
//! kernel's own LPM trie maps, so `cargo xtask bench kernel` compares table structures and
//! nothing else.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use parse::Source;

/// LPM tries must be created with BPF_F_NO_PREALLOC.
const NO_PREALLOC: u32 = 1;

#[map]
static LPM4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1, NO_PREALLOC);
#[map]
static LPM6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1, NO_PREALLOC);

#[xdp]
pub fn lpm_baseline(ctx: XdpContext) -> u32 {
    let hit = match parse::source(&ctx) {
        Source::V4(a) => LPM4.get(Key::new(32, a)).copied(),
        Source::V6(a) => LPM6.get(Key::new(128, a)).copied(),
        Source::NotIp | Source::Unparsed => None,
    };
    match hit {
        Some(v) if v != 0 => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
