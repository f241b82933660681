//! Header parsing shared by the filter and the benchmark baseline: finds the source address of
//! an Ethernet frame (up to two VLAN tags, IPv4, IPv6, IPv4-mapped IPv6). Every read is bounds
//! checked against `data_end`; anything that does not fit is reported, never guessed.

use aya_ebpf::programs::XdpContext;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Tags we look through: 802.1Q and 802.1ad (QinQ), at most two as the brief asks.
const MAX_VLAN_TAGS: usize = 2;

/// The address a verdict is made on.
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
    /// Not IP at all (ARP, LLDP, ...).
    NotIp,
    /// Claims to be IP (or VLAN) but is truncated or malformed, or has more than two tags.
    Unparsed,
}

/// A pointer to `N` bytes at `offset`, if the packet holds them.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the range [start+offset, start+offset+N) was just checked to lie inside the packet.
    Some(unsafe { &*((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: &[u8; 2]) -> u16 {
    u16::from_be_bytes(*b)
}

/// Source address of the frame in `ctx`.
#[inline(always)]
pub fn source(ctx: &XdpContext) -> Source {
    let Some(proto) = bytes_at::<2>(ctx, 12) else {
        return Source::Unparsed;
    };
    let mut proto = be16(proto);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI then the inner EtherType.
        let Some(inner) = bytes_at::<4>(ctx, offset) else {
            return Source::Unparsed;
        };
        proto = u16::from_be_bytes([inner[2], inner[3]]);
        offset += 4;
    }
    match proto {
        ETH_P_IP => {
            let Some(h) = bytes_at::<20>(ctx, offset) else {
                return Source::Unparsed;
            };
            // Version 4 and a header length of at least 5 words (RFC 791 section 3.1).
            if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
                return Source::Unparsed;
            }
            Source::V4([h[12], h[13], h[14], h[15]])
        }
        ETH_P_IPV6 => {
            let Some(h) = bytes_at::<40>(ctx, offset) else {
                return Source::Unparsed;
            };
            if h[0] >> 4 != 6 {
                return Source::Unparsed;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            // ::ffff:a.b.c.d (RFC 4291 section 2.5.5.2) is judged as the IPv4 address it carries.
            if src[..10] == [0; 10] && src[10] == 0xff && src[11] == 0xff {
                return Source::V4([src[12], src[13], src[14], src[15]]);
            }
            Source::V6(src)
        }
        ETH_P_8021Q | ETH_P_8021AD => Source::Unparsed,
        _ => Source::NotIp,
    }
}

/// Length of the frame, for byte counters.
#[inline(always)]
#[allow(dead_code, reason = "the LPM baseline does not count bytes")]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}
