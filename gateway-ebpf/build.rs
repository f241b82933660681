//! Rebuild when bpf-linker changes: the linker is part of the BPF toolchain.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
