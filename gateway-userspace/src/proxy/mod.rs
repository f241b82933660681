//! The userspace proxy: listeners, the request phases, routing to backend pools.
//! Phases of a request, in order (one module each): connection (`listener`: peer address,
//! `backstop`, `proxy_protocol`) -> `tls` -> `client_ip` -> `route` -> `upstream` ->
//! response (`headers`, `respond`) -> access log (`service`). `Proxy` owns the bound sockets
//! and swaps the configuration generation on reload without closing any connection.

pub mod backend_auth;
pub mod backstop;
pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod identity;
pub mod listener;
pub mod proxy_protocol;
pub mod respond;
pub mod response_policy;
pub mod route;
pub mod service;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::config::{ListenerKind, ProxyConfig};
use crate::metrics::Metrics;
use backstop::Backstop;
use service::ProxyState;

/// Why the proxy could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding listener {name} on {addr}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("token provider")]
    TokenProvider(#[from] crate::identity::oidc::OidcError),
    #[error("TLS configuration of listener {name}")]
    Tls {
        name: String,
        #[source]
        source: tls::TlsError,
    },
}

/// A reload's fallible half, ready to commit.
pub struct Prepared {
    acceptors: Vec<(String, TlsAcceptor)>,
    providers: Vec<Arc<identity::TokenProvider>>,
    added: Vec<(String, SocketAddr, TcpListener, usize)>,
}

struct Running {
    name: String,
    bind: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Whether this socket is the listener `name` bound at `bind` (the configured address,
    /// or the one the kernel chose for port 0).
    fn serves(&self, name: &str, bind: SocketAddr) -> bool {
        self.name == name && (self.bind == bind || self.local == bind)
    }
}

/// The running proxy.
pub struct Proxy {
    state: Arc<ArcSwap<ProxyState>>,
    acceptors: Arc<ArcSwap<Vec<(String, TlsAcceptor)>>>,
    metrics: Arc<Metrics>,
    running: Vec<Running>,
}

fn acceptors(cfg: &ProxyConfig) -> Result<Vec<(String, TlsAcceptor)>, ProxyError> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        if let ListenerKind::Https(t) = &l.kind {
            let server = tls::server_config(t).map_err(|source| ProxyError::Tls {
                name: l.name.clone(),
                source,
            })?;
            out.push((l.name.clone(), TlsAcceptor::from(server)));
        }
    }
    Ok(out)
}

impl Proxy {
    /// Binds every listener and starts serving.
    pub async fn start(
        cfg: &ProxyConfig,
        backstop: Backstop,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProxyError> {
        let acceptors = Arc::new(ArcSwap::from_pointee(acceptors(cfg)?));
        let providers = identity::providers(cfg, &[])?;
        let limits = metrics.limits.adopt_routes(&cfg.routes);
        let state = Arc::new(ArcSwap::new(ProxyState::new(
            cfg, backstop, providers, limits,
        )));
        let probe_state = state.clone();
        metrics.set_upstream_probe(Box::new(move || {
            let current = probe_state.load();
            current
                .pools
                .iter()
                .flat_map(|p| {
                    p.endpoints.iter().map(|e| crate::metrics::UpstreamReading {
                        pool: p.name.clone(),
                        endpoint: e.endpoint.authority.clone(),
                        available: e.available(),
                        outstanding: e.outstanding(),
                    })
                })
                .collect()
        }));
        let mut proxy = Self {
            state,
            acceptors,
            metrics,
            running: Vec::new(),
        };
        proxy.sync_listeners(cfg).await?;
        Ok(proxy)
    }

    /// Whether every token provider has loaded its keys (readiness: until then, tokens for
    /// its routes are refused).
    pub fn ready(&self) -> bool {
        self.state.load().providers.iter().all(|p| p.ready())
    }

    /// The same check as [`Proxy::ready`], for the admin endpoint to call on each `/ready`.
    pub fn readiness_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.load().providers.iter().all(|p| p.ready())
    }

    /// Where each listener is bound (the real port when the config said port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .iter()
            .map(|r| (r.name.clone(), r.local))
            .collect()
    }

    /// First half of a reload: everything that can fail (TLS configurations, binding new
    /// listeners). Dropping the result changes nothing.
    pub async fn prepare(&self, cfg: &ProxyConfig) -> Result<Prepared, ProxyError> {
        Ok(Prepared {
            acceptors: acceptors(cfg)?,
            providers: identity::providers(cfg, &self.state.load().providers)?,
            added: self.bind_new(cfg).await?,
        })
    }

    /// Second half, which cannot fail: new TLS settings and routes apply to new connections
    /// and requests; requests in flight finish on the old generation; listeners whose name and
    /// address are unchanged keep their socket, so no connection is dropped.
    pub fn commit(&mut self, cfg: &ProxyConfig, prepared: Prepared, backstop: Backstop) {
        self.acceptors.store(Arc::new(prepared.acceptors));
        let limits = self.metrics.limits.adopt_routes(&cfg.routes);
        self.state
            .store(ProxyState::new(cfg, backstop, prepared.providers, limits));
        for (name, bind, tcp, max) in prepared.added {
            self.spawn(name, bind, tcp, max);
        }
        let mut kept = Vec::new();
        for r in self.running.drain(..) {
            if cfg.listeners.iter().any(|l| r.serves(&l.name, l.bind)) {
                kept.push(r);
            } else {
                info!(listener = %r.name, "listener removed; draining");
                let _ = r.stop.send(true);
            }
        }
        self.running = kept;
    }

    async fn sync_listeners(&mut self, cfg: &ProxyConfig) -> Result<(), ProxyError> {
        for (name, bind, tcp, max) in self.bind_new(cfg).await? {
            self.spawn(name, bind, tcp, max);
        }
        Ok(())
    }

    async fn bind_new(
        &self,
        cfg: &ProxyConfig,
    ) -> Result<Vec<(String, SocketAddr, TcpListener, usize)>, ProxyError> {
        let mut out = Vec::new();
        for l in &cfg.listeners {
            if self.running.iter().any(|r| r.serves(&l.name, l.bind)) {
                continue;
            }
            let tcp = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ProxyError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            out.push((l.name.clone(), l.bind, tcp, l.max_connections));
        }
        Ok(out)
    }

    fn spawn(&mut self, name: String, bind: SocketAddr, tcp: TcpListener, max: usize) {
        let local = tcp.local_addr().unwrap_or(bind);
        let (stop, stop_rx) = watch::channel(false);
        info!(listener = %name, address = %local, "listening");
        let task = tokio::spawn(listener::serve(
            name.clone(),
            tcp,
            max,
            self.state.clone(),
            self.acceptors.clone(),
            self.metrics.clone(),
            stop_rx,
        ));
        self.running.push(Running {
            name,
            bind,
            local,
            stop,
            task,
        });
    }

    /// Stops accepting and drains every listener (each for at most the drain timeout).
    pub async fn shutdown(self) {
        for r in &self.running {
            let _ = r.stop.send(true);
        }
        for r in self.running {
            let _ = r.task.await;
        }
    }
}
