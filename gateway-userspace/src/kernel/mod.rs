//! Kernel control: loads the XDP program with a compiled rule set, attaches it (native where
//! the driver supports it, generic otherwise), swaps rule sets atomically, adopts what an
//! earlier process pinned, and owns the ban and counter maps. It does not decide anything: the
//! rules come from [`crate::rules`], the bans from whoever calls [`bans`].
//!
//! Pinned state lives under `<pin_root>/v<LAYOUT_VERSION>/` (see [`PinLayout`]), so a crash or
//! restart of userspace keeps the protection, and a new layout never misreads an old one.

pub mod bans;
pub mod control;
pub mod counters;
pub mod generation;
pub mod testrun;
mod time;

use std::io;
use std::path::{Path, PathBuf};

pub use bans::{Ban, BanReason, Bans};
pub use control::{
    AttachMode, AttachedMode, Attachment, KernelControl, ReloadOutcome, attachments, read_meta,
    teardown,
};
pub use counters::{CounterReading, Counters};
pub use generation::{Generation, map_memlock};
pub use time::monotonic_ns;

/// The compiled XDP objects, built for the BPF target by build.rs.
pub mod objects {
    /// The enforcement program (gateway-ebpf `src/main.rs`).
    pub static FILTER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"));
    /// The kernel-LPM-trie baseline for benchmarks (gateway-ebpf `src/lpm_baseline.rs`).
    pub static LPM_BASELINE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lpm-baseline"));
}

/// Errors of kernel control. Each message says what was being done; the cause is the error's
/// `source()` (print the chain, as `{:#}` with anyhow does). None carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The BPF object could not be loaded (verifier, missing privileges, bpffs).
    #[error("loading the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed (load, attach, link update).
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    /// Pinning or opening a pin failed.
    #[error("{what} at {path}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Neither native nor generic XDP could be attached.
    #[error("attaching XDP to interface {interface}: {reason}")]
    Attach { interface: String, reason: String },
    /// Nothing is pinned where the command looked.
    #[error(
        "no Portcullis state is pinned at {0} (is `portcullis run` started, and bpffs mounted?)"
    )]
    NotPinned(PathBuf),
    /// A ban request the kernel table cannot express.
    #[error("{0}")]
    Ban(String),
    /// The rule set could not be compiled into tables.
    #[error(transparent)]
    Compile(#[from] crate::rules::table::CompileError),
}

impl KernelError {
    pub(crate) fn map(what: impl Into<String>, source: aya::maps::MapError) -> Self {
        Self::Map {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn program(what: impl Into<String>, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            what: what.into(),
            source,
        }
    }
}

/// Where everything is pinned: `<root>/v<layout>/{maps/, prog, links/<interface>@<mode>}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

impl PinLayout {
    /// The layout under `pin_root` (for example `/sys/fs/bpf/portcullis`).
    pub fn new(pin_root: &Path) -> Self {
        Self {
            dir: pin_root.join(format!("v{}", gateway_common::LAYOUT_VERSION)),
        }
    }

    /// The versioned directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shared maps (bans, counters, registry, meta), pinned by name.
    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// The program currently attached.
    pub fn program(&self) -> PathBuf {
        self.dir.join("prog")
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// Link pin for an interface; the attach mode is part of the name so a restarted process
    /// can report it.
    pub fn link(&self, interface: &str, mode: AttachedMode) -> PathBuf {
        self.links().join(format!("{interface}@{}", mode.as_str()))
    }

    /// Whether anything is pinned here.
    pub fn exists(&self) -> bool {
        self.maps().join(gateway_common::maps::BANS).exists()
    }
}

pub(crate) fn pin_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> KernelError + 'a {
    move |source| KernelError::Pin {
        what,
        path: path.to_path_buf(),
        source,
    }
}
