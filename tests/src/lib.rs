//! Harness for Portcullis's end-to-end tests: privilege checks, bpffs pin roots, network
//! namespaces with veth pairs, and packet builders. Every resource is owned by a guard that
//! removes it on drop, so a failing test still cleans up.

pub mod backend;
pub mod daemon;
pub mod mmdb_writer;
pub mod netns;
pub mod oidc;
pub mod packets;
pub mod pins;
pub mod pki;
pub mod proxy_config;
pub mod redis;

/// Whether this process may load XDP programs and create namespaces.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns `false` (and says so) when the test must be skipped for lack of privileges. With
/// `PORTCULLIS_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test` when run as root, and so in CI) a
/// missing privilege is a failure instead, so CI can never silently skip the kernel tests.
pub fn require_privileges(test: &str) -> bool {
    if privileged() {
        return true;
    }
    if std::env::var("PORTCULLIS_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) but runs unprivileged");
    }
    eprintln!("skipping {test}: needs CAP_BPF and CAP_NET_ADMIN (run as root)");
    false
}

/// A name unique to this process and call, short enough for interface names.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}{n}", std::process::id() % 100_000)
}

/// The `portcullis` binary: `PORTCULLIS_BIN`, or the one cargo built next to this test.
pub fn portcullis_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("PORTCULLIS_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/portcullis
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("portcullis");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p gateway-userspace --bin portcullis`, done by `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// A file of the shared third-party test data (`PORTCULLIS_TESTDATA`, default
/// `../shared/testdata` beside the workspace), or `None` with a plain message when absent.
pub fn shared_testdata(relative: &str) -> Option<std::path::PathBuf> {
    let root = std::env::var_os("PORTCULLIS_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata").into());
    let path = root.join(relative);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("shared testdata not found at {}, skipping", path.display());
        None
    }
}
