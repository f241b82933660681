//! `portcullis run`: loads the config, puts its rules into the kernel, and keeps them there:
//! SIGHUP reloads through the same compile-then-swap path (a config that fails to compile
//! keeps the old rules serving), a timer sweeps expired bans, SIGTERM/SIGINT end the process
//! and leave the pinned program enforcing. This is an edge of the program: errors are anyhow.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::kernel::{AttachMode, Bans, KernelControl, ReloadOutcome};
use crate::rules::table;

/// Maps the config's attach mode to the kernel's.
pub fn attach_mode(mode: config::AttachMode) -> AttachMode {
    match mode {
        config::AttachMode::Auto => AttachMode::Auto,
        config::AttachMode::Native => AttachMode::Native,
        config::AttachMode::Generic => AttachMode::Generic,
    }
}

/// Compiles `config`'s rules and applies them, logging what happened.
pub fn apply(kernel: &mut KernelControl, config: &Config) -> anyhow::Result<ReloadOutcome> {
    let started = Instant::now();
    let compiled = table::compile(&config.rules).context("compiling the kernel rules")?;
    let compiled_ms = started.elapsed().as_millis();
    let outcome = kernel
        .apply(
            &compiled,
            &config.kernel.interfaces,
            attach_mode(config.kernel.attach_mode),
        )
        .context("loading the rules into the kernel")?;
    match &outcome {
        ReloadOutcome::Unchanged { generation } => {
            info!(
                generation,
                "kernel rules unchanged; adopted the pinned program"
            )
        }
        ReloadOutcome::Swapped {
            generation,
            stats,
            attached,
            detached,
        } => {
            for (a, created) in attached {
                info!(
                    interface = %a.interface,
                    mode = a.mode.as_str(),
                    action = if *created { "attached" } else { "swapped" },
                    "XDP filter in place"
                );
            }
            for interface in detached {
                info!(%interface, "XDP filter detached (interface left the config)");
            }
            info!(
                generation,
                prefixes_v4 = stats.prefixes_v4,
                prefixes_v6 = stats.prefixes_v6,
                table_kib = stats.table_bytes() / 1024,
                compile_ms = compiled_ms as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "kernel rules loaded"
            );
        }
    }
    Ok(outcome)
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let mut config = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pin_root = config.kernel.pin_root.clone();
    let mut kernel = KernelControl::new(&pin_root);
    if config.kernel.enabled {
        apply(&mut kernel, &config)?;
    } else {
        warn!("kernel layer disabled in the config: no XDP filtering");
    }
    notify_systemd("READY=1");

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sweep = tokio::time::interval(config.kernel.ban_sweep_interval);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify_systemd("RELOADING=1");
                match reload(&mut kernel, config_path, &pin_root) {
                    Ok(new) => {
                        sweep = tokio::time::interval(new.kernel.ban_sweep_interval);
                        config = new;
                    }
                    Err(e) => error!(error = %format!("{e:#}"), "reload refused; the previous rules stay in force"),
                }
                notify_systemd("READY=1");
            }
            _ = sweep.tick() => {
                if config.kernel.enabled {
                    match Bans::open(kernel.layout()).and_then(|mut b| b.sweep()) {
                        Ok(0) => {}
                        Ok(n) => info!(removed = n, "expired bans swept"),
                        Err(e) => warn!(error = %e, "sweeping expired bans"),
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify_systemd("STOPPING=1");
    info!(pin_root = %pin_root.display(), "stopping; the pinned XDP filter stays in force (`portcullis detach` removes it)");
    Ok(())
}

/// Loads and applies the config again; the caller keeps the old one on error.
fn reload(kernel: &mut KernelControl, path: &Path, pin_root: &PathBuf) -> anyhow::Result<Config> {
    let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if &config.kernel.pin_root != pin_root {
        anyhow::bail!(
            "kernel.pin_root changed from {} to {}; that needs a restart",
            pin_root.display(),
            config.kernel.pin_root.display()
        );
    }
    if config.kernel.enabled {
        apply(kernel, &config)?;
    }
    info!(config = %path.display(), "configuration reloaded");
    Ok(config)
}

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, when systemd gave one.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "sd_notify socket"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        warn!(error = %e, "sd_notify");
    }
}
