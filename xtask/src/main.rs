//! Project tasks: `cargo xtask setup | test | demo | bench kernel | bench proxy | bench auth |
//! bench limits`. The README's two commands are `cargo xtask demo` and `cargo xtask test`; both
//! run the idempotent set-up first.

mod bench;
mod bench_auth;
mod bench_limits;
mod bench_proxy;
mod bench_util;
mod bench_validation;
mod demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (toolchain pieces, packages, bpffs); idempotent.
    Setup,
    /// Set up, build, and run the whole test suite (kernel tests need root).
    Test {
        /// Extra arguments passed to `cargo test` after `--` (for example a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and walk through Portcullis in network namespaces it creates.
    Demo,
    /// Benchmarks (not part of the tests).
    Bench {
        #[command(subcommand)]
        what: BenchWhich,
    },
}

/// The benchmarks: those of `bench.rs`, the identity benchmark and the limits benchmark.
#[derive(Subcommand)]
enum BenchWhich {
    #[command(flatten)]
    Other(bench::Which),
    /// Token validation, API keys and mTLS against Envoy (jwt_authn, api_key_auth, client
    /// certificates): requests/s and p99 per scenario, and the cost of one validation.
    Auth,
    /// Rate limits and abuse bans: one limit check (local and through Redis), time from the
    /// offending request to the XDP drop, a shared limit's accuracy, proxy throughput with and
    /// without a limit (needs root).
    Limits,
    /// Request schema validation: in-process cost of one body (200 B, 10 kB, 100 kB) and
    /// proxy throughput on a validated route against the same route without validation (also
    /// part of `bench proxy`).
    Validation,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
        Task::Demo => {
            setup()?;
            let bin = build_portcullis()?;
            demo::run(&bin)
        }
        Task::Bench { what } => {
            if cfg!(debug_assertions) {
                setup()?;
            }
            match what {
                BenchWhich::Other(what) => bench::run(what),
                BenchWhich::Auth => in_release("auth", bench_auth::run),
                BenchWhich::Limits => in_release("limits", bench_limits::run),
                BenchWhich::Validation => in_release("validation", bench_validation::run),
            }
        }
    }
}

/// Runs benchmark `name`: directly in a release build, else through `cargo run --release`,
/// because numbers from an unoptimised build would say nothing.
pub fn in_release(name: &str, run: fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        return cargo(&[
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
            name,
        ]);
    }
    run()
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn setup() -> anyhow::Result<()> {
    let script = root().join("xtask/setup.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .context("running xtask/setup.sh")?;
    if !status.success() {
        bail!("set-up failed ({status}); see the messages above");
    }
    Ok(())
}

/// Builds the `portcullis` binary (release) and returns its path.
pub fn build_portcullis() -> anyhow::Result<PathBuf> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "gateway-userspace",
        "--bin",
        "portcullis",
    ])?;
    Ok(root().join("target/release/portcullis"))
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    // The tests spawn the binary (SIGKILL and CLI tests); build it with the test profile.
    cargo(&["build", "-p", "gateway-userspace", "--bin", "portcullis"])?;
    // gateway-ebpf builds only for the BPF target (through build.rs), never as a host test.
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--no-fail-fast",
    ];
    args.push("--");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    args.extend(extra);
    // As root, a kernel test that finds itself unprivileged is a failure, never a skip.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: single-threaded here; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PORTCULLIS_REQUIRE_PRIVILEGED", "1") };
    } else {
        eprintln!(
            "note: not root; kernel and namespace tests will be skipped (they need CAP_BPF and CAP_NET_ADMIN)"
        );
    }
    cargo(&args)
}
