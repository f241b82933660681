//! `portcullis run`: loads the config, puts its rules into the kernel, serves the proxy and
//! the admin endpoint, and keeps all of it current. Reloads come from SIGHUP, from a change of
//! the config file (polled, debounced) or from `POST /reload`, and all take one path:
//! load and compile everything, prepare the proxy (TLS, new sockets), then swap kernel and
//! proxy. A config that fails anywhere before the swap keeps the old one serving. SIGTERM and
//! SIGINT drain the proxy and leave the pinned XDP filter enforcing.
//! This is an edge of the program: errors are anyhow.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, ReloadReply};
use crate::config::{self, Config};
use crate::kernel::{Bans, KernelControl, ReloadOutcome};
use crate::metrics::{Metrics, ResultLabels};
use crate::proxy::Proxy;
use crate::proxy::backstop::Backstop;
use crate::rules::table::{self, CompiledRules};

/// Applies compiled rules to the kernel, logging what happened.
pub fn apply(
    kernel: &mut KernelControl,
    config: &Config,
    compiled: &CompiledRules,
) -> anyhow::Result<ReloadOutcome> {
    let started = Instant::now();
    let outcome = kernel
        .apply(
            compiled,
            &config.kernel.interfaces,
            config.kernel.attach_mode,
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
                total_ms = started.elapsed().as_millis() as u64,
                "kernel rules loaded"
            );
        }
    }
    Ok(outcome)
}

/// Everything the running process holds.
struct Daemon {
    path: PathBuf,
    config: Config,
    kernel: KernelControl,
    proxy: Option<Proxy>,
    metrics: Arc<Metrics>,
}

impl Daemon {
    fn backstop(&self, compiled: Arc<CompiledRules>, config: &Config) -> Backstop {
        Backstop::new(
            compiled,
            config.kernel.enabled.then(|| self.kernel.layout()),
        )
    }

    /// The one reload path. On error nothing has changed.
    async fn reload(&mut self) -> anyhow::Result<String> {
        let config = config::load(&self.path).map_err(|e| anyhow::anyhow!("{e}"))?;
        if config.kernel.pin_root != self.config.kernel.pin_root {
            anyhow::bail!(
                "kernel.pin_root changed from {} to {}; that needs a restart",
                self.config.kernel.pin_root.display(),
                config.kernel.pin_root.display()
            );
        }
        if config.admin != self.config.admin {
            warn!("admin.listen changed; the admin endpoint keeps its address until a restart");
        }
        let compiled =
            Arc::new(table::compile(&config.rules).context("compiling the kernel rules")?);
        let rule_diff = self.config.rules.diff(&config.rules);
        // Proxy first half: TLS and new sockets, which can fail without changing anything.
        let prepared = match &self.proxy {
            Some(p) => Some(p.prepare(&config.proxy).await?),
            None => None,
        };
        if config.kernel.enabled {
            apply(&mut self.kernel, &config, &compiled)?;
        }
        let backstop = self.backstop(compiled, &config);
        match (&mut self.proxy, prepared) {
            (Some(p), Some(prepared)) => p.commit(&config.proxy, prepared, backstop),
            _ if !config.proxy.listeners.is_empty() => {
                self.proxy =
                    Some(Proxy::start(&config.proxy, backstop, self.metrics.clone()).await?);
            }
            _ => {}
        }
        let summary = format!(
            "{} listeners, {} routes, {} pools, {} kernel prefixes",
            config.proxy.listeners.len(),
            config.proxy.routes.len(),
            config.proxy.pools.len(),
            config.rules.allow.len()
                + config
                    .rules
                    .deny
                    .iter()
                    .map(|d| d.prefixes.len())
                    .sum::<usize>()
                + config.rules.geo.as_ref().map_or(0, |g| g.networks.len()),
        );
        self.config = config;
        info!(config = %self.path.display(), %summary, kernel_rules = %rule_diff, "configuration reloaded");
        Ok(summary)
    }

    async fn reload_logged(&mut self, trigger: &str) -> ReloadReply {
        notify_systemd("RELOADING=1");
        let result = self.reload().await;
        notify_systemd("READY=1");
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .reloads
            .get_or_create(&ResultLabels {
                result: label.into(),
            })
            .inc();
        result.map_err(|e| {
            let text = format!("{e:#}");
            error!(%trigger, error = %text, "reload refused; the previous configuration stays in force");
            text
        })
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let kernel = KernelControl::new(&config.kernel.pin_root);
    let metrics = Metrics::new(config.kernel.enabled.then(|| kernel.layout().clone()));
    let compiled = Arc::new(table::compile(&config.rules).context("compiling the kernel rules")?);
    let mut d = Daemon {
        path: config_path.to_path_buf(),
        config,
        kernel,
        proxy: None,
        metrics: metrics.clone(),
    };
    if d.config.kernel.enabled {
        let config = d.config.clone();
        apply(&mut d.kernel, &config, &compiled)?;
    } else {
        warn!(
            "kernel layer disabled in the config: no XDP filtering; the userspace backstop still applies"
        );
    }
    if !d.config.proxy.listeners.is_empty() {
        let backstop = d.backstop(compiled, &d.config.clone());
        d.proxy = Some(Proxy::start(&d.config.proxy, backstop, metrics.clone()).await?);
    }

    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<ReloadReply>>(4);
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: false.into(),
        probe: std::sync::RwLock::new(
            d.proxy
                .as_ref()
                .map(|p| Box::new(p.readiness_probe()) as Box<dyn Fn() -> bool + Send + Sync>),
        ),
        reload: reload_tx,
        pins: d.config.kernel.enabled.then(|| d.kernel.layout().clone()),
    });
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    if let Some(addr) = d.config.admin.listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin endpoint on {addr}"))?;
        info!(address = %tcp.local_addr().unwrap_or(addr), "admin endpoint listening");
        tokio::spawn(admin::serve(tcp, admin_state.clone(), stop_admin_rx));
    }
    admin_state.ready.store(true, Ordering::Relaxed);
    notify_systemd("READY=1");

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sweep = tokio::time::interval(d.config.kernel.ban_sweep_interval);
    let mut watch_tick = tokio::time::interval(Duration::from_millis(500));
    let mut seen = modified(config_path);
    let mut changed_at: Option<(Option<SystemTime>, Instant)> = None;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = d.reload_logged("SIGHUP").await;
                seen = modified(config_path);
            }
            Some(reply) = reload_rx.recv() => {
                let _ = reply.send(d.reload_logged("admin").await);
                seen = modified(config_path);
            }
            _ = watch_tick.tick() => {
                // Debounced: reload once the file has stopped changing for a second, so an
                // editor's several writes make one reload.
                let now = modified(config_path);
                if now != seen {
                    match changed_at {
                        Some((m, t)) if m == now && t.elapsed() >= Duration::from_secs(1) => {
                            seen = now;
                            changed_at = None;
                            let _ = d.reload_logged("file change").await;
                        }
                        Some((m, _)) if m == now => {}
                        _ => changed_at = Some((now, Instant::now())),
                    }
                }
            }
            _ = sweep.tick() => {
                if d.config.kernel.enabled {
                    match Bans::open(d.kernel.layout()).and_then(|mut b| b.sweep()) {
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
    admin_state.ready.store(false, Ordering::Relaxed);
    notify_systemd("STOPPING=1");
    if let Some(p) = d.proxy.take() {
        info!("draining the proxy");
        p.shutdown().await;
    }
    let _ = stop_admin.send(true);
    if d.config.kernel.enabled {
        info!(pin_root = %d.config.kernel.pin_root.display(), "stopped; the pinned XDP filter stays in force (`portcullis detach` removes it)");
    } else {
        info!("stopped");
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
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
