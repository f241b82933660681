//! Demo (filled in below).
pub fn run(_bin: &std::path::Path) -> anyhow::Result<()> { anyhow::bail!("demo not written yet") }
