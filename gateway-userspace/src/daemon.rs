//! `portcullis run`: loads the config, puts its rules into the kernel, serves the proxy and
//! the admin endpoint, and keeps all of it current. Reloads come from SIGHUP, from a change of
//! the config file or of a file it references (key file, certificates, CA bundles, CRLs,
//! static JWKS; polled, debounced) or from `POST /reload`, and all take one path:
//! load and compile everything, prepare the proxy (TLS, new sockets), then swap kernel and
//! proxy. A config that fails anywhere before the swap keeps the old one serving. SIGTERM and
//! SIGINT drain the proxy and leave the pinned XDP filter enforcing.
//! This is an edge of the program: errors are anyhow.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::abuse::Abuse;
use crate::admin::{self, AdminState, ReloadReply};
use crate::config::{self, Config, ListenerKind};
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
    /// Kept across reloads: counts and offender history survive them.
    abuse: Arc<Abuse>,
    /// Cluster mode; kept across reloads that leave `[cluster]` as it is.
    cluster: Option<ClusterRun>,
    /// The store of `cluster`, shared with the admin endpoint, which publishes operators'
    /// bans and unbans through it.
    cluster_handle: SharedCluster,
}

/// The cluster store in use, if any; replaced when a reload changes `[cluster]`.
pub type SharedCluster = Arc<std::sync::RwLock<Option<crate::cluster::Cluster>>>;

impl Daemon {
    /// The backstop of a new generation, with the abuse engine brought to the same generation
    /// (its settings, the kernel map or none, the allow list and trusted hops it never bans).
    /// `[abuse]` changes apply here, on every reload: the detector's thresholds and windows
    /// (counts and offender history are kept) and the cap on tracked clients.
    fn backstop(&self, compiled: Arc<CompiledRules>, config: &Config) -> Backstop {
        let layout = config.kernel.enabled.then(|| self.kernel.layout());
        self.abuse.configure(
            config.abuse.clone(),
            layout.cloned(),
            compiled.clone(),
            config.proxy.trusted.clone(),
        );
        self.abuse.set_allow_list(config.rules.allow.clone());
        Backstop::new(compiled, layout).with_abuse(self.abuse.clone())
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
        // Limits now rather than at the next request, so the admin endpoint shows them.
        self.metrics.limits.adopt_routes(&config.proxy.routes);
        if config.cluster.as_ref() != self.cluster.as_ref().map(|c| &c.config) {
            // The old store (and its ban tasks) stops before the new one starts.
            self.cluster = None;
            self.cluster = self.start_cluster(&config).await;
            self.share_cluster();
        }
        self.config = config;
        info!(config = %self.path.display(), %summary, kernel_rules = %rule_diff, "configuration reloaded");
        Ok(summary)
    }

    async fn start_cluster(&self, config: &Config) -> Option<ClusterRun> {
        let cluster = config.cluster.clone()?;
        Some(ClusterRun::start(cluster, self.metrics.clone(), self.abuse.clone()).await)
    }

    /// Hands the current store (or none) to the admin endpoint.
    fn share_cluster(&self) {
        if let Ok(mut slot) = self.cluster_handle.write() {
            *slot = self.cluster.as_ref().map(|c| c.store.clone());
        }
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
    let abuse = Abuse::new(config.abuse.clone(), Some(metrics.clone()));
    let compiled = Arc::new(table::compile(&config.rules).context("compiling the kernel rules")?);
    let mut d = Daemon {
        path: config_path.to_path_buf(),
        config,
        kernel,
        proxy: None,
        metrics: metrics.clone(),
        abuse: abuse.clone(),
        cluster: None,
        cluster_handle: SharedCluster::default(),
    };
    if d.config.kernel.enabled {
        let config = d.config.clone();
        apply(&mut d.kernel, &config, &compiled)?;
    } else {
        warn!(
            "kernel layer disabled in the config: no XDP filtering; the userspace backstop still applies"
        );
    }
    // Also without listeners: the engine must know the allow list before the admin endpoint
    // accepts an operator's ban.
    let backstop = d.backstop(compiled, &d.config.clone());
    if !d.config.proxy.listeners.is_empty() {
        d.proxy = Some(Proxy::start(&d.config.proxy, backstop, metrics.clone()).await?);
        // Reads the quota state file now, not at the first request.
        metrics.limits.adopt_routes(&d.config.proxy.routes);
    }
    let config = d.config.clone();
    d.cluster = d.start_cluster(&config).await;
    d.share_cluster();

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
        abuse: Some(abuse.clone()),
        cluster: d.cluster_handle.clone(),
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
    let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
    let mut watch = FileWatch::new(config_path, &d.config);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let before = watch.snapshot();
                let result = d.reload_logged("SIGHUP").await;
                watch.settle(before, result.is_ok().then_some(&d.config));
            }
            Some(reply) = reload_rx.recv() => {
                let before = watch.snapshot();
                let result = d.reload_logged("admin").await;
                watch.settle(before, result.is_ok().then_some(&d.config));
                let _ = reply.send(result);
            }
            _ = watch_tick.tick() => {
                if let Some((before, changed)) = watch.poll() {
                    info!(files = %changed, "watched file changed; reloading");
                    let result = d.reload_logged("file change").await;
                    watch.settle(before, result.is_ok().then_some(&d.config));
                }
            }
            _ = sweep.tick() => {
                d.abuse.sweep();
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
    // After the drain, so the last requests' quota usage is in the file.
    if let Err(e) = metrics.limits.flush() {
        warn!(error = %e, "quota counters not saved");
    }
    d.cluster = None;
    d.share_cluster();
    let _ = stop_admin.send(true);
    if d.config.kernel.enabled {
        info!(pin_root = %d.config.kernel.pin_root.display(), "stopped; the pinned XDP filter stays in force (`portcullis detach` removes it)");
    } else {
        info!("stopped");
    }
    Ok(())
}

/// How often the watched files are looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long the watched files must stay unchanged before a reload, so an editor's or a
/// deployment's several writes make one reload, and a half-written file is not read.
const WATCH_SETTLE: Duration = Duration::from_secs(1);
/// Files up to this size are fingerprinted by content too; larger ones by metadata only.
const HASH_LIMIT: u64 = 16 << 20;

/// Every file the compiled config was read from besides the config file itself: a change to
/// any of them is a reason to reload, as a change of the config file is. Sorted, no repeats.
///
/// Not here: a token provider's `ca` bundle (the compiled config keeps only its fingerprint,
/// not its path), deny-set CIDR files and the geo database (the compiled rule set keeps
/// neither); those still reload on SIGHUP, `POST /reload` or a change of the config file.
pub fn referenced_files(cfg: &Config) -> Vec<PathBuf> {
    let proxy = &cfg.proxy;
    let mut files = Vec::new();
    for listener in &proxy.listeners {
        if let ListenerKind::Https(tls) = &listener.kind {
            for (cert, key) in &tls.certificate_files {
                files.push(cert.clone());
                files.push(key.clone());
            }
            if let Some(client) = &tls.client_certs {
                files.extend(client.ca_files.iter().cloned());
                files.extend(client.crl_files.iter().cloned());
            }
        }
    }
    let upstream_tls = proxy
        .pools
        .iter()
        .filter_map(|p| p.tls.as_ref())
        .chain(cfg.cluster.iter().filter_map(|c| Some(&c.tls.as_ref()?.0)));
    for tls in upstream_tls {
        files.push(tls.ca_file.clone());
        if let Some(id) = &tls.client_identity {
            files.push(id.cert_file.clone());
            files.push(id.key_file.clone());
        }
    }
    for provider in &proxy.token_providers {
        files.extend(provider.jwks_file.iter().cloned());
        files.extend(provider.ca_file.iter().cloned());
    }
    if let Some(keys) = &proxy.api_keys {
        files.push(keys.file.clone());
    }
    for route in &proxy.routes {
        let request = route.validation.as_ref().map(|v| &v.file);
        let response = route
            .response
            .as_ref()
            .and_then(|r| Some(&r.body.as_ref()?.file));
        files.extend(request.into_iter().chain(response).cloned());
    }
    files.sort();
    files.dedup();
    files
}

/// What a watched file looks like: identity, size, times and (for files up to
/// [`HASH_LIMIT`]) a hash of the content. The content hash catches a rewrite of the same size
/// within one timestamp tick; the inode catches a file replaced by rename, as editors and
/// configuration tools do. A file that cannot be read is one state, so its return is a change.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileState {
    Unreadable,
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
        content: Option<u64>,
    },
}

impl FileState {
    fn of(path: &Path) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        use std::os::unix::fs::MetadataExt as _;
        let Ok(meta) = std::fs::metadata(path) else {
            return FileState::Unreadable;
        };
        let content = (meta.len() <= HASH_LIMIT)
            .then(|| std::fs::read(path).ok())
            .flatten()
            .map(|bytes| {
                // Change detection only: SipHash with fixed keys is enough, no adversary here.
                let mut h = std::hash::DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            });
        FileState::Present {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            content,
        }
    }
}

/// The states of the watched files, in the order of [`FileWatch::files`].
type Snapshot = Vec<FileState>;

/// Polls the config file and the files it references; says when to reload.
struct FileWatch {
    /// The config file first, then [`referenced_files`] of the config in force.
    files: Vec<PathBuf>,
    /// The states the config in force was loaded from (or the last reload attempt saw).
    seen: Snapshot,
    /// A change seen but not yet settled: its states and when they were first seen.
    pending: Option<(Snapshot, Instant)>,
}

impl FileWatch {
    fn new(config_path: &Path, config: &Config) -> Self {
        let files = Self::list(config_path, config);
        let seen = files.iter().map(|f| FileState::of(f)).collect();
        FileWatch {
            files,
            seen,
            pending: None,
        }
    }

    fn list(config_path: &Path, config: &Config) -> Vec<PathBuf> {
        let mut files = vec![config_path.to_path_buf()];
        files.extend(
            referenced_files(config)
                .into_iter()
                .filter(|f| f != config_path),
        );
        files
    }

    fn snapshot(&self) -> Snapshot {
        self.files.iter().map(|f| FileState::of(f)).collect()
    }

    /// Called on every tick. When the files have changed and then stayed the same for
    /// [`WATCH_SETTLE`], returns the snapshot to reload from and the changed files (for the
    /// log).
    fn poll(&mut self) -> Option<(Snapshot, String)> {
        let now = self.snapshot();
        if now == self.seen {
            self.pending = None;
            return None;
        }
        match &self.pending {
            Some((states, since)) if *states == now => {
                if since.elapsed() < WATCH_SETTLE {
                    return None;
                }
            }
            _ => {
                self.pending = Some((now, Instant::now()));
                return None;
            }
        }
        self.pending = None;
        let changed = self
            .files
            .iter()
            .zip(now.iter().zip(&self.seen))
            .filter(|(_, (a, b))| a != b)
            .map(|(f, _)| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Some((now, changed))
    }

    /// After a reload attempt that started when the files were as in `before`: with the new
    /// config (`Some`, the reload succeeded) the watched set becomes its files; otherwise it
    /// stays. Either way the states in `before` count as seen, so a broken file is not retried
    /// on every tick but its next change is, and a write that landed during the reload is
    /// noticed on the next tick.
    fn settle(&mut self, before: Snapshot, reloaded: Option<&Config>) {
        self.pending = None;
        let Some(config) = reloaded else {
            self.seen = before;
            return;
        };
        let files = Self::list(&self.files[0], config);
        self.seen = files
            .iter()
            .map(|f| match self.files.iter().position(|old| old == f) {
                Some(i) => before[i].clone(),
                // Newly referenced: it was read by this reload, so its state now is the one
                // loaded (a write since would need to land within the reload to be missed).
                None => FileState::of(f),
            })
            .collect();
        self.files = files;
    }
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

/// Marks, in a published ban's evidence, an address the kernel must not drop (a PROXY
/// protocol or forwarded source rather than a packet source): other gateways then keep it to
/// their userspace set, as the deciding gateway did.
const NOT_KERNEL_BANNABLE: &str = "[proxied] ";

/// Cluster mode while `[cluster]` is configured: the store (handed to the limits) and the
/// two ban tasks. Dropping it stops the tasks, and with the last handle the connection.
struct ClusterRun {
    config: config::ClusterConfig,
    /// The store, for operators' bans published through the admin endpoint.
    store: crate::cluster::Cluster,
    metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl ClusterRun {
    /// Starts the store and shares it with the limits; bans decided here are published and
    /// bans published elsewhere applied.
    async fn start(
        config: config::ClusterConfig,
        metrics: Arc<Metrics>,
        abuse: Arc<Abuse>,
    ) -> Self {
        let cluster = crate::cluster::Cluster::start(config.clone(), metrics.cluster.clone());
        // Not required: until Redis answers, every feature follows its mode.
        if !cluster.wait_connected(Duration::from_secs(1)).await {
            warn!(redis = %config.redis, "cluster store not reachable yet; reconnecting in the background");
        } else {
            info!(redis = %config.redis, instance = cluster.instance_id(), "cluster store connected");
        }
        metrics.limits.set_cluster(Some(cluster.clone()));
        let publish = tokio::spawn(publish_bans(cluster.clone(), abuse.clone()));
        let receive = tokio::spawn(receive_bans(cluster.clone(), abuse));
        Self {
            config,
            store: cluster,
            metrics,
            tasks: vec![publish.abort_handle(), receive.abort_handle()],
        }
    }
}

impl Drop for ClusterRun {
    fn drop(&mut self) {
        self.metrics.limits.set_cluster(None);
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// Publishes every ban the local detector decides.
async fn publish_bans(cluster: crate::cluster::Cluster, abuse: Arc<Abuse>) {
    let mut decided = abuse.subscribe();
    loop {
        let decision = match decided.recv().await {
            Ok(d) => d,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "bans decided faster than they could be published; some stay local"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let evidence = if decision.kernel_bannable {
            decision.evidence.clone()
        } else {
            format!("{NOT_KERNEL_BANNABLE}{}", decision.evidence)
        };
        let ban = crate::cluster::NewBan {
            prefix: crate::rules::Prefix::host(decision.addr),
            reason: decision.reason,
            ttl: decision.ttl,
            evidence,
        };
        if let Err(e) = cluster.publish_ban(&ban).await {
            cluster.metrics().fallback(e.feature.name(), e.mode.name());
            warn!(client_ip = %decision.addr, error = %e, "ban not shared with the cluster; enforced here only");
        }
    }
}

/// Applies the bans other gateways publish (hosts and networks); with each snapshot (at start
/// and after every reconnection) the bans taken from the cluster are replaced by the
/// snapshot's.
async fn receive_bans(cluster: crate::cluster::Cluster, abuse: Arc<Abuse>) {
    use crate::cluster::BanEvent;
    use crate::rules::Prefix;
    let mut from_cluster: std::collections::HashSet<Prefix> = Default::default();
    let mut subscription = cluster.subscribe_bans();
    let own = cluster.instance_id().to_owned();
    while let Some(event) = subscription.next().await {
        match event {
            BanEvent::Snapshot(bans) => {
                let mut now: std::collections::HashSet<Prefix> = Default::default();
                for ban in bans.iter().filter(|b| b.origin != own) {
                    if let Some(prefix) = apply_cluster_ban(&abuse, ban) {
                        now.insert(prefix);
                    }
                }
                for gone in from_cluster.difference(&now) {
                    lift_ban(&abuse, *gone);
                }
                from_cluster = now;
            }
            BanEvent::Banned(ban) if ban.origin != own => {
                if let Some(prefix) = apply_cluster_ban(&abuse, &ban) {
                    from_cluster.insert(prefix);
                }
            }
            BanEvent::Banned(_) => {}
            BanEvent::Unbanned { prefix, origin } if origin != own => {
                from_cluster.remove(&prefix);
                lift_ban(&abuse, prefix);
            }
            BanEvent::Unbanned { .. } => {}
        }
    }
}

/// The address of a single-host prefix.
fn host_of(prefix: &crate::rules::Prefix) -> Option<std::net::IpAddr> {
    let host_len = if prefix.is_v6() { 128 } else { 32 };
    (prefix.len() == host_len).then(|| prefix.addr())
}

/// Applies one ban from the cluster (never to a protected address or network: the engine
/// refuses those); returns its prefix when applied. A detector's host ban goes through
/// `Abuse::apply`, as it was decided; an operator's ban (reason `manual`) and a network go
/// through `Abuse::ban_prefix`, which takes prefixes and never drops them to make room.
fn apply_cluster_ban(
    abuse: &Abuse,
    ban: &crate::cluster::ClusterBan,
) -> Option<crate::rules::Prefix> {
    if ban.remaining.is_zero() {
        return None;
    }
    let kernel_bannable = !ban.evidence.starts_with(NOT_KERNEL_BANNABLE);
    match host_of(&ban.prefix) {
        Some(addr) if ban.reason != crate::kernel::BanReason::Manual => {
            let decision = crate::abuse::BanDecision {
                addr,
                reason: ban.reason,
                ttl: ban.remaining,
                kernel_bannable,
                evidence: ban.evidence.clone(),
            };
            abuse.apply(&decision).then_some(ban.prefix)
        }
        _ => {
            let prefix_ban = crate::abuse::PrefixBan {
                prefix: ban.prefix,
                reason: ban.reason,
                ttl: Some(ban.remaining),
                kernel_bannable,
            };
            match abuse.ban_prefix(&prefix_ban, crate::abuse::PrefixBanSource::Shared) {
                Ok(_) => Some(ban.prefix),
                Err(e) => {
                    warn!(prefix = %ban.prefix, error = %e, "cluster ban not applied");
                    None
                }
            }
        }
    }
}

/// Lifts a ban the cluster no longer holds, in userspace and in the kernel.
fn lift_ban(abuse: &Abuse, prefix: crate::rules::Prefix) {
    if let Err(e) = abuse.lift(prefix) {
        warn!(%prefix, error = %e, "lifting a cluster ban from the kernel");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: &str) -> String {
        // The hash of "key-<id>"; any valid value does.
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("key-{id}").as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "[[keys]]\nid = \"{id}\"\nowner = \"t\"\nprimary = \"sha256:{hex}\"\nscope = \"all\"\n"
        )
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, Config) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("portcullis.toml");
        let key_file = dir.path().join("keys.toml");
        std::fs::write(&key_file, keys("a")).unwrap();
        std::fs::write(
            &cfg,
            "[kernel]\nenabled = false\n\n[api_keys]\nfile = \"keys.toml\"\n",
        )
        .unwrap();
        let config = config::load(&cfg).unwrap();
        (dir, cfg, key_file, config)
    }

    /// Polls until a reload is due, at most for three settle periods.
    fn due(watch: &mut FileWatch) -> Option<(Snapshot, String)> {
        let deadline = Instant::now() + 3 * WATCH_SETTLE;
        while Instant::now() < deadline {
            if let Some(due) = watch.poll() {
                return Some(due);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    #[test]
    fn referenced_files_name_the_key_file() {
        let (_dir, cfg, key_file, config) = setup();
        assert_eq!(referenced_files(&config), vec![key_file.clone()]);
        let watch = FileWatch::new(&cfg, &config);
        assert_eq!(watch.files, vec![cfg, key_file]);
    }

    #[test]
    fn a_rewrite_of_the_same_size_is_a_change_once_settled() {
        let (_dir, cfg, key_file, config) = setup();
        let mut watch = FileWatch::new(&cfg, &config);
        assert!(watch.poll().is_none(), "nothing changed");
        // Same length, other content: only the content hash can tell.
        std::fs::write(&key_file, keys("b")).unwrap();
        let started = Instant::now();
        let (before, changed) = due(&mut watch).expect("the change is noticed");
        assert!(started.elapsed() >= WATCH_SETTLE, "not before it settled");
        assert_eq!(changed, key_file.display().to_string());
        // A refused reload: the broken state counts as seen and is not retried...
        watch.settle(before, None);
        assert!(watch.poll().is_none());
        // ...and the next change is noticed again.
        std::fs::remove_file(&key_file).unwrap();
        let (before, _) = due(&mut watch).expect("a deleted file is a change");
        watch.settle(before, Some(&config));
        assert!(watch.poll().is_none());
    }
}
