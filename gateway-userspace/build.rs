//! Builds the XDP programs for the BPF target (nightly + bpf-linker, installed by
//! xtask/setup.sh) and leaves the objects in OUT_DIR for `include_bytes!`.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "gateway-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the XDP programs (run xtask/setup.sh if bpf-linker is missing)")
}
