//! Builders for Ethernet frames fed to the program through the kernel's test-run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// A frame under construction: Ethernet, optional VLAN tags, an IP header and a UDP payload.
#[derive(Clone, Debug)]
pub struct Frame {
    vlans: Vec<(u16, u16)>,
    src: IpAddr,
    dst: IpAddr,
    payload: Vec<u8>,
    fragment_offset: u16,
}

impl Frame {
    /// A UDP datagram from `src`; the destination is of the same family.
    pub fn udp_from(src: IpAddr) -> Self {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
        };
        Self {
            vlans: Vec::new(),
            src,
            dst,
            payload: b"portcullis".to_vec(),
            fragment_offset: 0,
        }
    }

    /// Adds an outer-to-inner VLAN tag with the given TPID (0x8100 or 0x88a8).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    /// Makes the IPv4 packet a non-first fragment (no UDP header in it).
    pub fn fragment(mut self, offset_words: u16) -> Self {
        self.fragment_offset = offset_words;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for (tpid, vid) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        let mut udp = Vec::new();
        udp.extend_from_slice(&40000u16.to_be_bytes());
        udp.extend_from_slice(&9u16.to_be_bytes());
        udp.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let total = 20 + udp.len();
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&(total as u16).to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&(self.fragment_offset & 0x1fff).to_be_bytes());
                f.extend_from_slice(&[64, 17, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(udp.len() as u16).to_be_bytes());
                f.extend_from_slice(&[17, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => unreachable!("source and destination share a family"),
        }
        f.extend_from_slice(&udp);
        f
    }
}

/// An Ethernet frame with the given EtherType and payload bytes after it.
pub fn raw_frame(ethertype: u16, rest: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(rest);
    f
}
