//! A private bpffs pin root per test, torn down (links detached, maps unpinned) on drop.

use std::path::{Path, PathBuf};

pub struct PinRoot {
    path: PathBuf,
}

impl PinRoot {
    pub fn new() -> Self {
        let path = PathBuf::from("/sys/fs/bpf").join(crate::unique("ptest-"));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PinRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = portcullis::kernel::teardown(&self.path) {
            eprintln!("cleaning up {}: {e}", self.path.display());
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
