//! Abuse bans: what the HTTP layer learns about an abusive client becomes a drop. Refusals
//! counted by [`detector`] (authentication failures, rate-limit and validation refusals, by
//! their problem code) turn into a ban once a rule's threshold is crossed within its window.
//!
//! Where the ban is enforced depends on whether the kernel can see the client's packets
//! ([`ClientIp::kernel_bannable`]): the TCP peer goes into the kernel ban map (XDP drops its
//! next packet); an address learned from a trusted proxy's header is banned in userspace, in a
//! set the backstop checks on every connection and request, with the same expiry. A PROXY
//! source goes into both: the kernel drops it where its packets arrive with that source, the
//! userspace set wherever they do not. A peer's kernel ban is also shadowed in the userspace set
//! (refused, not listed) for paths the filter does not see. With the kernel layer off every ban
//! is a userspace ban.
//! Allow-listed addresses and our own load balancers and proxies are never banned.
//!
//! Operators ban addresses and networks too ([`Abuse::ban_prefix`], through the admin
//! endpoint), and bans received from other gateways may name a network: the userspace set is
//! keyed by prefix, and a lookup probes only the prefix lengths in use (usually just hosts).
//!
//! The kernel write happens on the path that decided the ban, at once and without batching: a
//! map update is one `bpf()` call of a few microseconds, while handing it to a thread of its
//! own cost up to several milliseconds of scheduling delay on a busy machine (measured by
//! `cargo xtask bench limits`), and the ban must be in the map within a millisecond.
//! Every decision is a security log event (target `portcullis::security`) and a metric, and
//! can be observed ([`Abuse::subscribe`]) or applied from elsewhere ([`Abuse::apply`]) to share
//! bans between gateways.

pub mod detector;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use gateway_common::action;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::config::{AbuseConfig, AbuseKind, TrustedProxies};
use crate::kernel::{BanReason, Bans, KernelError, PinLayout};
use crate::metrics::{AbuseLabels, Metrics};
use crate::proxy::client_ip::{self, ClientIp, Origin};
use crate::rules::Prefix;
use crate::rules::table::CompiledRules;
use detector::{Detector, Outcome, Trigger};

/// Where a ban is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// The kernel ban map only: the address is the packet source.
    Kernel,
    /// The kernel ban map and the userspace set (a PROXY source).
    Both,
    /// The userspace set only.
    Userspace,
}

/// A ban decided here or received from another gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanDecision {
    pub addr: IpAddr,
    pub reason: BanReason,
    pub ttl: Duration,
    /// Whether the address is a packet source the kernel may drop (see
    /// [`ClientIp::kernel_bannable`]); a gateway applying a shared ban keeps this choice.
    pub kernel_bannable: bool,
    /// Why, for operators (`auth_failure: 20 refusals in 60s, offense 1`); no secret.
    pub evidence: String,
}

/// A ban held in userspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserspaceBan {
    /// A host (/32, /128) for the detector's bans; any prefix for an operator's or a shared one.
    pub prefix: Prefix,
    pub reason: BanReason,
    /// `None`: until removed (an operator's ban without a time to live).
    pub expires: Option<Instant>,
    pub created_unix: u64,
    /// A copy of a kernel ban, not listed as a userspace ban: it refuses the client where XDP
    /// does not see its packets (a keep-alive connection over an interface without the
    /// filter, loopback).
    pub shadow: bool,
    /// Put by an operator (here or, through the cluster, elsewhere): never dropped to make
    /// room for the detector's bans, which an attacker with many addresses can provoke.
    pub manual: bool,
}

impl UserspaceBan {
    /// The JSON form the admin endpoint lists, beside the kernel's bans.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        serde_json::json!({
            "prefix": self.prefix.to_string(),
            "reason": self.reason.name(),
            "remaining_secs": self.expires.map(|e| e.saturating_duration_since(now).as_secs_f64()),
            "created_unix": self.created_unix,
            "enforced": "userspace",
        })
    }

    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// A ban of an address or a network put by an operator (the admin endpoint), or received from
/// another gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixBan {
    pub prefix: Prefix,
    pub reason: BanReason,
    /// `None`: until removed.
    pub ttl: Option<Duration>,
    /// Whether the kernel may drop it: false for an address the deciding gateway learned from
    /// a proxy header (its packets come from the proxy).
    pub kernel_bannable: bool,
}

/// Where a [`PrefixBan`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixBanSource {
    /// An operator of this gateway: kernel (with an unlisted userspace copy) when the kernel
    /// layer is on, else userspace; a failed kernel write is an error the operator sees.
    Manual,
    /// Another gateway: as [`Abuse::apply`] does, kernel and userspace (it carries no origin);
    /// a failed kernel write falls back to userspace.
    Shared,
}

/// Why a ban was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// The prefix touches an address that is never banned.
    #[error(
        "{prefix} is not banned: {why}; allow-listed addresses and trusted load balancers and proxies are never banned"
    )]
    Protected { prefix: Prefix, why: String },
    /// `/0`: every address of a family.
    #[error("{0} names every address of its family; such a ban is refused")]
    Everything(Prefix),
    #[error("a ban's time to live must be more than zero")]
    ZeroTtl,
    #[error("writing the ban to the kernel: {0}")]
    Kernel(#[from] KernelError),
}

/// What [`Abuse::lift`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifted {
    pub kernel: bool,
    /// A listed userspace ban (an unlisted copy of a kernel ban does not count).
    pub userspace: bool,
}

/// The userspace ban set, keyed by prefix, with the prefix lengths in use per family so a
/// lookup probes only those: one hash lookup per length, usually one (hosts).
#[derive(Default)]
struct BanSet {
    map: HashMap<Prefix, UserspaceBan>,
    /// Bans per length: `[family][length]`, IPv4 lengths 0..=32 and IPv6 0..=128.
    counts: [Vec<u32>; 2],
    /// Lengths with at least one ban, per family, longest first.
    lens: [Vec<u8>; 2],
}

impl BanSet {
    fn family(prefix: &Prefix) -> usize {
        usize::from(prefix.is_v6())
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn contains(&self, prefix: &Prefix) -> bool {
        self.map.contains_key(prefix)
    }

    fn get(&self, prefix: &Prefix) -> Option<&UserspaceBan> {
        self.map.get(prefix)
    }

    fn values(&self) -> impl Iterator<Item = &UserspaceBan> {
        self.map.values()
    }

    fn adjust(&mut self, prefix: &Prefix, up: bool) {
        let f = Self::family(prefix);
        let counts = &mut self.counts[f];
        if counts.is_empty() {
            counts.resize(if f == 0 { 33 } else { 129 }, 0);
        }
        let Some(n) = counts.get_mut(usize::from(prefix.len())) else {
            return;
        };
        let was = *n;
        *n = if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        if (was == 0) != (*n == 0) {
            self.lens[f] = counts
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, c)| **c > 0)
                .filter_map(|(len, _)| u8::try_from(len).ok())
                .collect();
        }
    }

    fn insert(&mut self, ban: UserspaceBan) {
        let prefix = ban.prefix;
        if self.map.insert(prefix, ban).is_none() {
            self.adjust(&prefix, true);
        }
    }

    fn remove(&mut self, prefix: &Prefix) -> Option<UserspaceBan> {
        let removed = self.map.remove(prefix);
        if removed.is_some() {
            self.adjust(prefix, false);
        }
        removed
    }

    fn retain(&mut self, mut keep: impl FnMut(&UserspaceBan) -> bool) {
        let gone: Vec<Prefix> = self
            .map
            .values()
            .filter(|b| !keep(b))
            .map(|b| b.prefix)
            .collect();
        for p in gone {
            self.remove(&p);
        }
    }

    /// The most specific live ban covering `addr`.
    fn covering(&self, addr: IpAddr, now: Instant) -> Option<&UserspaceBan> {
        let host = Prefix::host(addr);
        self.lens[Self::family(&host)].iter().find_map(|&len| {
            let key = Prefix::new(host.addr(), len).ok()?;
            self.map.get(&key).filter(|b| b.live(now))
        })
    }
}

/// What the current configuration generation says.
struct Settings {
    kernel: Option<PinLayout>,
    rules: Option<Arc<CompiledRules>>,
    trusted: TrustedProxies,
    /// The allow list as prefixes: the compiled table answers per address, but a network ban
    /// must also be refused when it merely contains an allow-listed range.
    allow: Vec<Prefix>,
}

/// The userspace ban set and what counts it.
struct Shared {
    bans: RwLock<BanSet>,
    /// Cap on the userspace set (the tracked-clients cap).
    cap: std::sync::atomic::AtomicUsize,
    metrics: Option<Arc<Metrics>>,
}

/// A ban for the kernel map.
struct Order {
    layout: PinLayout,
    decision: BanDecision,
    decided: Instant,
    rule: &'static str,
    also_userspace: bool,
}

/// The abuse-ban engine; one per process, kept across reloads (counts and offender history
/// survive them).
pub struct Abuse {
    detector: Mutex<Detector>,
    settings: RwLock<Settings>,
    shared: Arc<Shared>,
    /// The pinned ban map, opened on first use and reopened when the layout changes or a
    /// write fails (the filter may have been restarted and its maps replaced).
    kernel: Mutex<Option<(PinLayout, Bans)>>,
    decided: broadcast::Sender<BanDecision>,
}

impl Abuse {
    /// Starts the engine with `config`.
    pub fn new(config: AbuseConfig, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let shared = Arc::new(Shared {
            bans: RwLock::new(BanSet::default()),
            cap: config.max_tracked_clients.into(),
            metrics,
        });
        let (decided, _) = broadcast::channel(1024);
        Arc::new(Self {
            detector: Mutex::new(Detector::new(config)),
            settings: RwLock::new(Settings {
                kernel: None,
                rules: None,
                trusted: TrustedProxies::default(),
                allow: Vec::new(),
            }),
            shared,
            kernel: Mutex::new(None),
            decided,
        })
    }

    /// Applies a configuration generation: the `[abuse]` settings, where the kernel ban map is
    /// (`None`: the kernel layer is off), and what may never be banned (the allow list in
    /// `rules`, the trusted load balancers and proxies).
    pub fn configure(
        &self,
        config: AbuseConfig,
        kernel: Option<PinLayout>,
        rules: Arc<CompiledRules>,
        trusted: TrustedProxies,
    ) {
        self.shared.cap.store(
            config.max_tracked_clients,
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Ok(mut d) = self.detector.lock() {
            d.set_config(config, Instant::now());
        }
        if let Ok(mut s) = self.settings.write() {
            let allow = std::mem::take(&mut s.allow);
            *s = Settings {
                kernel,
                rules: Some(rules),
                trusted,
                allow,
            };
        }
    }

    /// The allow list of the configuration generation, as prefixes (see [`Settings::allow`]);
    /// called with [`Abuse::configure`].
    pub fn set_allow_list(&self, allow: Vec<Prefix>) {
        if let Ok(mut s) = self.settings.write() {
            s.allow = allow;
        }
    }

    /// Why `prefix` must never be banned, if it must not: it is or overlaps an allow-listed
    /// range, or holds (or lies within) a trusted load balancer or proxy. The rule of
    /// [`Abuse::protected`], for networks: a network ban reaching a trusted hop would cut off
    /// everyone behind it.
    pub fn protected_prefix(&self, prefix: Prefix) -> Option<String> {
        let Ok(s) = self.settings.read() else {
            return Some("the gateway's settings cannot be read".into());
        };
        let Some(rules) = s.rules.as_ref() else {
            return Some("the allow list is not loaded yet".into());
        };
        if rules.lookup(prefix.addr()).action == action::ALLOW {
            return Some(format!("{} is allow-listed", prefix.addr()));
        }
        let overlaps = |a: &Prefix| {
            a.is_v6() == prefix.is_v6() && (a.contains(prefix.addr()) || prefix.contains(a.addr()))
        };
        if let Some(a) = s.allow.iter().find(|a| overlaps(a)) {
            return Some(format!("it overlaps the allow list ({a})"));
        }
        if let Some(t) = s.trusted.load_balancers.iter().find(|a| overlaps(a)) {
            return Some(format!("it overlaps the trusted load balancers ({t})"));
        }
        if let Some(t) = s.trusted.proxies.iter().find(|a| overlaps(a)) {
            return Some(format!("it overlaps the trusted proxies ({t})"));
        }
        None
    }

    /// Whether `addr` must never be banned: allow-listed, or one of our own hops.
    pub fn protected(&self, addr: IpAddr) -> bool {
        let Ok(s) = self.settings.read() else {
            // A poisoned lock: refuse to ban rather than risk banning infrastructure.
            return true;
        };
        // Not configured yet: the allow list is unknown, so nothing may be banned.
        let allowed = s
            .rules
            .as_ref()
            .is_none_or(|r| r.lookup(addr).action == action::ALLOW);
        allowed || client_ip::is_trusted_hop(&s.trusted, addr)
    }

    /// Counts the refusal `code` (a `Denial::code`) of a request from `client`; bans it when a
    /// rule's threshold is crossed. Cheap for codes no rule counts.
    pub fn observe(&self, client: &ClientIp, code: &str) {
        self.observe_at(client, code, Instant::now());
    }

    /// [`Abuse::observe`] at a given time (tests drive the clock).
    pub fn observe_at(&self, client: &ClientIp, code: &str, now: Instant) {
        let Some(kind) = AbuseKind::of_code(code) else {
            return;
        };
        let outcome = match self.detector.lock() {
            Ok(mut d) => {
                let o = d.observe(client.addr, kind, now, |a| self.protected(a));
                self.set_tracked(d.tracked());
                o
            }
            Err(_) => return,
        };
        match outcome {
            Outcome::Ignored | Outcome::Counted => {}
            Outcome::Untracked => {
                if let Some(m) = &self.shared.metrics {
                    m.abuse_untracked.inc();
                }
            }
            Outcome::Protected(t) => {
                warn!(
                    target: "portcullis::security",
                    event = "abuse_ban_refused",
                    client_ip = %t.addr,
                    origin = origin_name(client.origin),
                    rule = t.kind.name(),
                    count = t.count,
                    threshold = t.threshold,
                    window_secs = t.window.as_secs_f64(),
                    "abuse threshold reached by an allow-listed address or a trusted proxy; not banned"
                );
                self.count(t.kind.name(), "protected");
            }
            Outcome::WouldBan(t) => {
                warn!(
                    target: "portcullis::security",
                    event = "abuse_would_ban",
                    client_ip = %t.addr,
                    origin = origin_name(client.origin),
                    rule = t.kind.name(),
                    reason = t.kind.ban_reason().name(),
                    count = t.count,
                    threshold = t.threshold,
                    window_secs = t.window.as_secs_f64(),
                    ban_secs = t.ban.as_secs_f64(),
                    "would ban (report-only mode)"
                );
                self.count(t.kind.name(), "report");
            }
            Outcome::Ban(t) => {
                let decision = BanDecision {
                    addr: t.addr,
                    reason: t.kind.ban_reason(),
                    ttl: t.ban,
                    kernel_bannable: client.kernel_bannable(),
                    evidence: format!(
                        "{}: {} refusals in {}, offense {}",
                        t.kind.name(),
                        t.count,
                        humantime::format_duration(t.window),
                        t.offense
                    ),
                };
                let enforcement =
                    self.enforce(&decision, t.kind.name(), now, client.origin == Origin::Peer);
                log_ban(&t, client.origin, enforcement);
                let _ = self.decided.send(decision);
            }
        }
    }

    /// Bans decided here, for whoever shares them (cluster mode). Bans applied through
    /// [`Abuse::apply`] are not repeated on it.
    pub fn subscribe(&self) -> broadcast::Receiver<BanDecision> {
        self.decided.subscribe()
    }

    /// Applies a ban decided elsewhere (another gateway). Refused, and `false` returned, for an
    /// address this gateway must never ban.
    pub fn apply(&self, decision: &BanDecision) -> bool {
        if self.protected(decision.addr) || decision.ttl.is_zero() {
            warn!(
                target: "portcullis::security",
                event = "abuse_ban_refused",
                client_ip = %decision.addr,
                reason = decision.reason.name(),
                "shared ban names an allow-listed address or a trusted proxy; not applied"
            );
            self.count("shared", "protected");
            return false;
        }
        let enforcement = self.enforce(decision, "shared", Instant::now(), false);
        info!(
            target: "portcullis::security",
            event = "abuse_ban_applied",
            client_ip = %decision.addr,
            reason = decision.reason.name(),
            ban_secs = decision.ttl.as_secs_f64(),
            enforcement = enforcement_name(enforcement),
            "shared ban applied"
        );
        true
    }

    /// Puts the ban where it can be enforced; returns where. `peer` says the address is the
    /// TCP peer, which the kernel alone enforces; a PROXY source or a shared decision (which
    /// carries no origin) goes into the userspace set too (see the module docs).
    fn enforce(
        &self,
        decision: &BanDecision,
        rule: &'static str,
        now: Instant,
        peer: bool,
    ) -> Enforcement {
        let layout = self.settings.read().ok().and_then(|s| s.kernel.clone());
        let enforcement = match (layout, decision.kernel_bannable) {
            (Some(layout), true) => {
                // Recorded before the order is sent, so that the writer's fallback (after a
                // failed write) replaces the shadow rather than the other way round.
                self.shared.insert_userspace(decision, now, peer);
                let order = Order {
                    layout,
                    decision: decision.clone(),
                    decided: now,
                    rule,
                    also_userspace: !peer,
                };
                if !self.write_kernel(&order) {
                    Enforcement::Userspace
                } else if peer {
                    Enforcement::Kernel
                } else {
                    Enforcement::Both
                }
            }
            _ => {
                self.shared.insert_userspace(decision, now, false);
                self.count(rule, "userspace");
                Enforcement::Userspace
            }
        };
        // A failed kernel write was counted as `failed` where it happened.
        enforcement
    }

    /// The userspace ban on `addr`, if one is live.
    pub fn banned(&self, addr: IpAddr) -> Option<BanReason> {
        let bans = self.shared.bans.read().ok()?;
        if bans.is_empty() {
            return None;
        }
        bans.covering(addr, Instant::now()).map(|b| b.reason)
    }

    /// Live userspace bans, the longest-lasting first.
    pub fn userspace_bans(&self) -> Vec<UserspaceBan> {
        let now = Instant::now();
        let mut out: Vec<UserspaceBan> = self
            .shared
            .bans
            .read()
            .map(|b| {
                b.values()
                    .filter(|b| b.live(now) && !b.shadow)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // `None` (until removed) sorts last in `Option`'s order, so compare reversed keys.
        let key = |b: &UserspaceBan| {
            b.expires
                .map_or(Duration::MAX, |e| e.saturating_duration_since(now))
        };
        out.sort_by(|a, b| key(b).cmp(&key(a)).then(a.prefix.cmp(&b.prefix)));
        out
    }

    /// Removes the userspace ban on the host `addr`; returns whether a listed one was there.
    pub fn unban(&self, addr: IpAddr) -> bool {
        self.unban_prefix(Prefix::host(addr))
    }

    /// Removes the userspace ban of exactly `prefix` (listed or a kernel ban's copy); returns
    /// whether a listed one was there.
    pub fn unban_prefix(&self, prefix: Prefix) -> bool {
        let removed = self
            .shared
            .bans
            .write()
            .ok()
            .and_then(|mut b| b.remove(&prefix))
            .is_some_and(|b| !b.shadow);
        self.shared.refresh_gauge();
        removed
    }

    /// Bans `ban.prefix` as [`PrefixBanSource`] says: in the kernel map when the kernel layer
    /// is on (and the ban is kernel-bannable), else in userspace. Refused for a protected
    /// prefix ([`Abuse::protected_prefix`]) and for `/0`.
    pub fn ban_prefix(
        &self,
        ban: &PrefixBan,
        source: PrefixBanSource,
    ) -> Result<Enforcement, BanError> {
        let rule = match source {
            PrefixBanSource::Manual => "manual",
            PrefixBanSource::Shared => "shared",
        };
        if ban.prefix.is_empty() {
            return Err(BanError::Everything(ban.prefix));
        }
        if ban.ttl.is_some_and(|t| t.is_zero()) {
            return Err(BanError::ZeroTtl);
        }
        if let Some(why) = self.protected_prefix(ban.prefix) {
            warn!(
                target: "portcullis::security",
                event = "abuse_ban_refused",
                prefix = %ban.prefix,
                reason = ban.reason.name(),
                source = rule,
                why = %why,
                "ban of a protected address or network refused"
            );
            self.count(rule, "protected");
            return Err(BanError::Protected {
                prefix: ban.prefix,
                why,
            });
        }
        let now = Instant::now();
        let layout = self.settings.read().ok().and_then(|s| s.kernel.clone());
        let kernel = match layout {
            Some(layout) if ban.kernel_bannable => {
                Some(Bans::open(&layout).and_then(|mut b| b.ban(ban.prefix, ban.ttl, ban.reason)))
            }
            _ => None,
        };
        let enforcement = match (kernel, source) {
            (Some(Ok(())), PrefixBanSource::Manual) => {
                // The unlisted copy refuses requests on connections XDP does not see.
                self.shared.insert(ban, now, true);
                Enforcement::Kernel
            }
            (Some(Ok(())), PrefixBanSource::Shared) => {
                self.shared.insert(ban, now, false);
                Enforcement::Both
            }
            (Some(Err(e)), PrefixBanSource::Manual) => {
                self.count(rule, "failed");
                return Err(e.into());
            }
            (Some(Err(e)), PrefixBanSource::Shared) => {
                warn!(
                    target: "portcullis::security",
                    event = "abuse_ban_kernel_failed",
                    prefix = %ban.prefix,
                    reason = ban.reason.name(),
                    error = %e,
                    "writing the ban to the kernel failed; enforcing it in userspace"
                );
                self.count(rule, "failed");
                self.shared.insert(ban, now, false);
                Enforcement::Userspace
            }
            (None, _) => {
                self.shared.insert(ban, now, false);
                Enforcement::Userspace
            }
        };
        self.count(
            rule,
            match enforcement {
                Enforcement::Kernel => "kernel",
                Enforcement::Both => "kernel+userspace",
                Enforcement::Userspace => "userspace",
            },
        );
        info!(
            target: "portcullis::security",
            event = if source == PrefixBanSource::Manual { "manual_ban" } else { "abuse_ban_applied" },
            prefix = %ban.prefix,
            reason = ban.reason.name(),
            ban_secs = ban.ttl.map(|t| t.as_secs_f64()),
            enforcement = enforcement_name(enforcement),
            "ban in force"
        );
        Ok(enforcement)
    }

    /// Lifts the ban of exactly `prefix` from the kernel map (when the kernel layer is on) and
    /// from the userspace set.
    pub fn lift(&self, prefix: Prefix) -> Result<Lifted, KernelError> {
        let userspace = self.unban_prefix(prefix);
        let layout = self.settings.read().ok().and_then(|s| s.kernel.clone());
        let kernel = match layout {
            Some(layout) => Bans::open(&layout)?.unban(prefix)?,
            None => false,
        };
        if kernel || userspace {
            info!(
                target: "portcullis::security",
                event = "ban_lifted",
                prefix = %prefix,
                kernel,
                userspace,
                "ban lifted"
            );
        }
        Ok(Lifted { kernel, userspace })
    }

    /// Expires userspace bans and forgets idle clients; the daemon calls it on its sweep tick.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut bans) = self.shared.bans.write() {
            bans.retain(|b| b.live(now));
        }
        self.shared.refresh_gauge();
        if let Ok(mut d) = self.detector.lock() {
            d.prune(now);
            self.set_tracked(d.tracked());
        }
    }

    fn set_tracked(&self, n: usize) {
        if let Some(m) = &self.shared.metrics {
            m.abuse_tracked.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn count(&self, rule: &str, action: &str) {
        self.shared.count(rule, action);
    }
}

impl Shared {
    /// A detector's (or a shared host) ban into the userspace set.
    fn insert_userspace(&self, decision: &BanDecision, now: Instant, shadow: bool) {
        self.put(
            UserspaceBan {
                prefix: Prefix::host(decision.addr),
                reason: decision.reason,
                expires: now.checked_add(decision.ttl),
                created_unix: unix_now(),
                shadow,
                manual: false,
            },
            now,
        );
    }

    /// A [`PrefixBan`] into the userspace set; never dropped to make room.
    fn insert(&self, ban: &PrefixBan, now: Instant, shadow: bool) {
        self.put(
            UserspaceBan {
                prefix: ban.prefix,
                reason: ban.reason,
                // An instant past what `Instant` can hold is as good as "until removed".
                expires: ban.ttl.and_then(|t| now.checked_add(t)),
                created_unix: unix_now(),
                shadow,
                manual: true,
            },
            now,
        );
    }

    fn put(&self, ban: UserspaceBan, now: Instant) {
        let cap = self.cap.load(std::sync::atomic::Ordering::Relaxed).max(1);
        let Ok(mut bans) = self.bans.write() else {
            return;
        };
        // An operator's ban is not shortened or turned into a copy by a detector's ban.
        if !ban.manual
            && bans
                .get(&ban.prefix)
                .is_some_and(|b| b.manual && b.live(now))
        {
            return;
        }
        if bans.len() >= cap && !bans.contains(&ban.prefix) && !ban.manual {
            bans.retain(|b| b.live(now));
            if bans.len() >= cap {
                // Make room by dropping the detector's ban closest to its end: the newest
                // offender is the one still active. An operator's bans are never dropped.
                let first = bans
                    .values()
                    .filter(|b| !b.manual)
                    .filter_map(|b| Some((b.expires?, b.prefix)))
                    .min()
                    .map(|(_, p)| p);
                match first {
                    Some(p) => {
                        bans.remove(&p);
                    }
                    // Full of operators' bans: the detector's new ban cannot be held.
                    None => return,
                }
            }
        }
        bans.insert(ban);
        drop(bans);
        self.refresh_gauge();
    }

    fn refresh_gauge(&self) {
        if let (Some(m), Ok(b)) = (&self.metrics, self.bans.read()) {
            let listed = b.values().filter(|b| !b.shadow).count();
            m.abuse_userspace_bans
                .set(i64::try_from(listed).unwrap_or(i64::MAX));
        }
    }

    fn count(&self, rule: &str, action: &str) {
        if let Some(m) = &self.metrics {
            m.abuse_bans
                .get_or_create(&AbuseLabels {
                    rule: rule.into(),
                    action: action.into(),
                })
                .inc();
        }
    }
}

impl Abuse {
    /// Writes one ban into the kernel map; false (logged, counted, and the ban enforced in
    /// userspace instead) when the map cannot be written.
    fn write_kernel(&self, order: &Order) -> bool {
        let d = &order.decision;
        // A panic while holding the lock leaves only a map handle behind: still usable.
        let mut open = self
            .kernel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let attempt = |open: &mut Option<(PinLayout, Bans)>| {
            if open.as_ref().is_none_or(|(l, _)| *l != order.layout) {
                *open = Some((order.layout.clone(), Bans::open(&order.layout)?));
            }
            match open.as_mut() {
                Some((_, bans)) => bans.ban(Prefix::host(d.addr), Some(d.ttl), d.reason),
                None => Ok(()),
            }
        };
        let result = attempt(&mut open).or_else(|_| {
            // The pinned maps may have been replaced (a restart of the filter): reopen once.
            *open = None;
            attempt(&mut open)
        });
        drop(open);
        let latency_us = order.decided.elapsed().as_micros() as u64;
        match result {
            Ok(()) => {
                info!(
                    target: "portcullis::security",
                    event = "abuse_ban_in_kernel",
                    client_ip = %d.addr,
                    reason = d.reason.name(),
                    ban_secs = d.ttl.as_secs_f64(),
                    latency_us,
                    "ban written to the kernel ban map"
                );
                let action = if order.also_userspace {
                    "kernel+userspace"
                } else {
                    "kernel"
                };
                self.shared.count(order.rule, action);
                true
            }
            Err(e) => {
                warn!(
                    target: "portcullis::security",
                    event = "abuse_ban_kernel_failed",
                    client_ip = %d.addr,
                    reason = d.reason.name(),
                    error = %e,
                    "writing the ban to the kernel failed; enforcing it in userspace"
                );
                self.shared.count(order.rule, "failed");
                self.shared.insert_userspace(d, order.decided, false);
                false
            }
        }
    }
}

fn log_ban(t: &Trigger, origin: Origin, enforcement: Enforcement) {
    warn!(
        target: "portcullis::security",
        event = "abuse_ban",
        client_ip = %t.addr,
        origin = origin_name(origin),
        rule = t.kind.name(),
        reason = t.kind.ban_reason().name(),
        count = t.count,
        threshold = t.threshold,
        window_secs = t.window.as_secs_f64(),
        offense = t.offense,
        ban_secs = t.ban.as_secs_f64(),
        enforcement = enforcement_name(enforcement),
        "client banned for abuse"
    );
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Peer => "peer",
        Origin::ProxyProtocol => "proxy_protocol",
        Origin::Header => "header",
    }
}

fn enforcement_name(e: Enforcement) -> &'static str {
    match e {
        Enforcement::Kernel => "kernel",
        Enforcement::Both => "kernel+userspace",
        Enforcement::Userspace => "userspace",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AbuseRule, Escalation};
    use crate::rules::table::compile;
    use crate::rules::{Mode, RuleSet};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config(threshold: u32) -> AbuseConfig {
        AbuseConfig {
            enabled: true,
            mode: Mode::Enforce,
            max_tracked_clients: 100,
            offender_memory: Duration::from_secs(3600),
            rules: vec![AbuseRule {
                kind: AbuseKind::AuthFailure,
                threshold,
                window: Duration::from_secs(60),
                ban: Duration::from_secs(30),
                escalation: Escalation::None,
                max_ban: Duration::from_secs(30),
            }],
        }
    }

    /// An engine with the kernel layer off, `10.9.0.0/16` allow-listed and `10.0.0.0/8`
    /// trusted proxies.
    fn engine(threshold: u32) -> Arc<Abuse> {
        let abuse = Abuse::new(config(threshold), None);
        let rules = RuleSet {
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            ..RuleSet::default()
        };
        let trusted = TrustedProxies {
            proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..TrustedProxies::default()
        };
        abuse.configure(
            config(threshold),
            None,
            Arc::new(compile(&rules).unwrap()),
            trusted,
        );
        abuse
    }

    fn client(addr: &str, origin: Origin) -> ClientIp {
        ClientIp {
            addr: ip(addr),
            origin,
        }
    }

    #[test]
    fn counted_codes_ban_in_userspace_without_a_kernel() {
        let abuse = engine(3);
        let mut decided = abuse.subscribe();
        let c = client("192.0.2.1", Origin::Peer);
        // Codes of no rule, and missing credentials, are not counted.
        for code in [
            "key_missing",
            "token_missing",
            "route_not_found",
            "forbidden",
        ] {
            for _ in 0..5 {
                abuse.observe(&c, code);
            }
        }
        assert_eq!(abuse.banned(c.addr), None);
        for _ in 0..3 {
            abuse.observe(&c, "key_invalid");
        }
        assert_eq!(abuse.banned(c.addr), Some(BanReason::AuthFailure));
        let d = decided.try_recv().expect("a decision is published");
        assert_eq!(
            d,
            BanDecision {
                addr: c.addr,
                reason: BanReason::AuthFailure,
                ttl: Duration::from_secs(30),
                kernel_bannable: true,
                evidence: "auth_failure: 3 refusals in 1m, offense 1".into(),
            }
        );
        let listed = abuse.userspace_bans();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].to_json(Instant::now())["enforced"], "userspace");
        assert!(abuse.unban(c.addr));
        assert_eq!(abuse.banned(c.addr), None);
    }

    #[test]
    fn allow_listed_and_trusted_addresses_are_never_banned() {
        let abuse = engine(2);
        let mut decided = abuse.subscribe();
        for addr in ["10.9.1.1", "10.1.2.3"] {
            for origin in [Origin::Peer, Origin::Header] {
                for _ in 0..10 {
                    abuse.observe(&client(addr, origin), "token_invalid");
                }
            }
            assert_eq!(abuse.banned(ip(addr)), None, "{addr}");
        }
        assert!(decided.try_recv().is_err(), "nothing decided");
        // Nor through a shared decision.
        let shared = BanDecision {
            addr: ip("10.1.2.3"),
            reason: BanReason::Cluster,
            ttl: Duration::from_secs(5),
            kernel_bannable: true,
            evidence: "from another gateway".into(),
        };
        assert!(!abuse.apply(&shared));
        assert_eq!(abuse.banned(shared.addr), None);
        let shared = BanDecision {
            addr: ip("198.51.100.3"),
            ..shared
        };
        assert!(abuse.apply(&shared));
        assert_eq!(abuse.banned(shared.addr), Some(BanReason::Cluster));
    }

    #[test]
    fn header_addresses_never_go_to_the_kernel() {
        // A kernel layout that does not exist: an order for it would fail and fall back, so a
        // header address must not even produce one.
        let metrics = Metrics::new(None);
        let abuse = Abuse::new(config(2), Some(metrics.clone()));
        let dir = tempfile::tempdir().unwrap();
        abuse.configure(
            config(2),
            Some(PinLayout::new(dir.path())),
            Arc::new(compile(&RuleSet::default()).unwrap()),
            TrustedProxies::default(),
        );
        let c = client("203.0.113.7", Origin::Header);
        let mut decided = abuse.subscribe();
        abuse.observe(&c, "key_invalid");
        abuse.observe(&c, "key_invalid");
        assert_eq!(abuse.banned(c.addr), Some(BanReason::AuthFailure));
        assert!(!decided.try_recv().unwrap().kernel_bannable);
        // A peer goes to the kernel map, its userspace record a shadow (refused, not listed);
        // with no pinned map there, the failed write enforces it in userspace instead.
        let p = client("203.0.113.8", Origin::Peer);
        abuse.observe(&p, "key_invalid");
        abuse.observe(&p, "key_invalid");
        assert_eq!(abuse.banned(p.addr), Some(BanReason::AuthFailure));
        let listed = |a: &Abuse| {
            a.userspace_bans()
                .iter()
                .any(|b| b.prefix == Prefix::host(p.addr))
        };
        // Written on the deciding path: the fallback is in place when `observe` returns.
        assert!(
            listed(&abuse),
            "the failed kernel write became a userspace ban"
        );
        let text = metrics.render();
        for line in [
            "portcullis_abuse_bans_total{rule=\"auth_failure\",action=\"userspace\"} 1",
            "portcullis_abuse_bans_total{rule=\"auth_failure\",action=\"failed\"} 1",
            "portcullis_abuse_userspace_bans 2",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn userspace_bans_expire() {
        let abuse = engine(1);
        let c = client("192.0.2.50", Origin::Header);
        let long_ago = Instant::now() - Duration::from_secs(120);
        abuse.observe_at(&c, "token_invalid", long_ago);
        assert_eq!(
            abuse.banned(c.addr),
            None,
            "a 30 s ban from 120 s ago is over"
        );
        assert!(abuse.userspace_bans().is_empty());
        abuse.sweep();
        assert_eq!(abuse.shared.bans.read().unwrap().len(), 0);
    }

    #[test]
    fn report_mode_bans_nothing() {
        let abuse = engine(1);
        let mut c = config(1);
        c.mode = Mode::Report;
        abuse.configure(
            c,
            None,
            Arc::new(compile(&RuleSet::default()).unwrap()),
            TrustedProxies::default(),
        );
        let x = client("192.0.2.9", Origin::Peer);
        abuse.observe(&x, "token_invalid");
        assert_eq!(abuse.banned(x.addr), None);
    }

    fn prefix(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn manual(p: &str, ttl: Option<u64>) -> PrefixBan {
        PrefixBan {
            prefix: prefix(p),
            reason: BanReason::Manual,
            ttl: ttl.map(Duration::from_secs),
            kernel_bannable: true,
        }
    }

    #[test]
    fn network_bans_cover_their_addresses_in_userspace() {
        let abuse = engine(3);
        abuse.set_allow_list(vec![prefix("10.9.0.0/16")]);
        let got = abuse.ban_prefix(
            &manual("198.51.100.0/24", Some(60)),
            PrefixBanSource::Manual,
        );
        assert_eq!(got.unwrap(), Enforcement::Userspace);
        let v6 = manual("2001:db8:1::/64", None);
        abuse.ban_prefix(&v6, PrefixBanSource::Shared).unwrap();
        assert_eq!(abuse.banned(ip("198.51.100.77")), Some(BanReason::Manual));
        assert_eq!(
            abuse.banned(ip("::ffff:198.51.100.77")),
            Some(BanReason::Manual)
        );
        assert_eq!(abuse.banned(ip("198.51.101.1")), None);
        assert_eq!(abuse.banned(ip("2001:db8:1::42")), Some(BanReason::Manual));
        assert_eq!(abuse.banned(ip("2001:db8:2::42")), None);
        // A host ban inside the network is found too, the more specific first.
        let host = PrefixBan {
            reason: BanReason::Validation,
            ..manual("198.51.100.5", Some(60))
        };
        abuse.ban_prefix(&host, PrefixBanSource::Manual).unwrap();
        assert_eq!(
            abuse.banned(ip("198.51.100.5")),
            Some(BanReason::Validation)
        );
        // A detector's ban of the same host does not replace the operator's.
        for _ in 0..3 {
            abuse.observe(&client("198.51.100.5", Origin::Header), "key_invalid");
        }
        assert_eq!(
            abuse.banned(ip("198.51.100.5")),
            Some(BanReason::Validation)
        );
        let listed: Vec<String> = abuse
            .userspace_bans()
            .iter()
            .map(|b| b.prefix.to_string())
            .collect();
        assert_eq!(
            listed[0], "2001:db8:1::/64",
            "until removed lists first: {listed:?}"
        );
        assert_eq!(listed.len(), 3);
        assert_eq!(
            abuse.lift(prefix("198.51.100.0/24")).unwrap(),
            Lifted {
                kernel: false,
                userspace: true
            }
        );
        assert_eq!(abuse.banned(ip("198.51.100.77")), None);
        assert_eq!(
            abuse.banned(ip("198.51.100.5")),
            Some(BanReason::Validation)
        );
        assert_eq!(
            abuse.lift(prefix("198.51.100.0/24")).unwrap(),
            Lifted::default()
        );
    }

    #[test]
    fn protected_networks_are_refused() {
        let abuse = engine(3);
        abuse.set_allow_list(vec![prefix("10.9.0.0/16")]);
        for (p, why) in [
            ("10.9.1.1", "allow-listed"),
            ("10.9.0.0/24", "allow-listed"),
            ("10.0.0.0/8", "allow list"),
            ("10.200.0.0/16", "trusted proxies"),
            ("0.0.0.0/1", "allow list"),
        ] {
            let e = abuse
                .ban_prefix(&manual(p, Some(60)), PrefixBanSource::Manual)
                .unwrap_err();
            assert!(matches!(e, BanError::Protected { .. }), "{p}: {e}");
            assert!(e.to_string().contains(why), "{p}: {e}");
        }
        assert!(matches!(
            abuse.ban_prefix(&manual("::/0", None), PrefixBanSource::Manual),
            Err(BanError::Everything(_))
        ));
        assert!(matches!(
            abuse.ban_prefix(&manual("192.0.2.0/24", Some(0)), PrefixBanSource::Manual),
            Err(BanError::ZeroTtl)
        ));
        assert!(abuse.userspace_bans().is_empty());
        // Before any configuration nothing may be banned: the allow list is unknown.
        let fresh = Abuse::new(config(3), None);
        assert!(
            fresh
                .ban_prefix(&manual("192.0.2.1", Some(60)), PrefixBanSource::Manual)
                .is_err()
        );
    }

    #[test]
    fn operators_bans_are_never_evicted_by_the_detectors() {
        let mut c = config(1);
        c.max_tracked_clients = 2;
        let abuse = Abuse::new(c.clone(), None);
        abuse.configure(
            c,
            None,
            Arc::new(compile(&RuleSet::default()).unwrap()),
            TrustedProxies::default(),
        );
        abuse
            .ban_prefix(&manual("192.0.2.0/24", None), PrefixBanSource::Manual)
            .unwrap();
        for i in 1..=5 {
            abuse.observe(
                &client(&format!("198.51.100.{i}"), Origin::Header),
                "key_invalid",
            );
        }
        // The detector tracks two clients (the cap) and bans both; the second ban takes the
        // place of the first, never the operator's.
        assert_eq!(abuse.banned(ip("192.0.2.9")), Some(BanReason::Manual));
        assert_eq!(abuse.banned(ip("198.51.100.1")), None);
        assert_eq!(
            abuse.banned(ip("198.51.100.2")),
            Some(BanReason::AuthFailure)
        );
        assert!(abuse.shared.bans.read().unwrap().len() <= 2);
        // Nor shortened by a detector's ban of the same host.
        abuse
            .ban_prefix(&manual("203.0.113.1", None), PrefixBanSource::Manual)
            .unwrap();
        abuse.observe(&client("203.0.113.1", Origin::Header), "key_invalid");
        let b = abuse
            .userspace_bans()
            .into_iter()
            .find(|b| b.prefix == prefix("203.0.113.1/32"))
            .unwrap();
        assert_eq!((b.reason, b.expires), (BanReason::Manual, None));
    }
}
