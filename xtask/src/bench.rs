//! Benchmarks.
use clap::Subcommand;

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// XDP program time per packet against the kernel LPM trie, traffic over veth against
    /// nftables and no filter, table memory, load and swap times.
    Kernel,
}

pub fn run(_what: Which) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
