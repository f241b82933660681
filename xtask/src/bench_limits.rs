//! `cargo xtask bench limits`: what rate limits and abuse bans cost, and how fast and how
//! exactly they act.
//!
//! 1. One limit check in process: the local limiter (`limits::Rate`, keyed by API key id), with
//!    one hot key and with many keys; and one check through Redis (`Cluster::check_rates`, one
//!    round trip) against a `redis-server` the benchmark starts on a free loopback port.
//! 2. From the request that crosses an abuse threshold to the client's first SYN dropped by
//!    XDP: `portcullis run` with `[kernel]` and `[abuse]` in a namespace pair, a new client
//!    address per repetition.
//! 3. A shared rate limit against its configured rate: two `Cluster` instances (two gateways)
//!    hammering one budget in one Redis.
//! 4. Proxy throughput on one route without a limit and with one that never refuses, with the
//!    load generator of `bench auth`.
//!
//! Loopback and namespaces only; every process, namespace and pin is owned by a guard.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::num::NonZeroU64;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper::header::{HeaderName, HeaderValue};
use portcullis::cluster::{Cluster, ClusterConfig, ClusterMetrics, RateLimit};
use portcullis::config::{KeyPart, KeySpec, LimitScope, RateLimitSpec};
use portcullis::identity::api_keys::{generate_key, hash_key};
use portcullis::kernel::{Bans, Counters, PinLayout};
use portcullis_tests::netns::{GATEWAY_V4, Link};
use portcullis_tests::pins::PinRoot;
use portcullis_tests::pki::TestPki;
use portcullis_tests::redis::{Redis, redis_server};
use socket2::{Domain, Protocol, Socket, Type};

use crate::bench_auth::{MEASURE, Spec, Values, WARM_UP, client_tls, load};
use crate::bench_util::{
    LoopbackServer, Proc, Sample, free_ports, http_status, loadavg, loopback, median,
};

const LOCAL_ITERATIONS: usize = 2_000_000;
/// Distinct keys of the many-keys row: far more than any cache line set, fewer than the cap.
const MANY_KEYS: usize = 100_000;
const REDIS_ITERATIONS: usize = 20_000;
/// Repetitions of the ban timing, each from a new client address.
const BAN_RUNS: usize = 100;
const ABUSE_THRESHOLD: usize = 3;
/// The shared-limit accuracy run: this rate, for this long, from two gateways.
const SHARED_RATE: u64 = 500;
const SHARED_BURST: u64 = 10;
const SHARED_FOR: Duration = Duration::from_secs(4);
/// Runs per route, alternating which goes first: req/s on two shared cores swings by 10-20%
/// from run to run, so the median of several and the CPU cost per request are reported.
const THROUGHPUT_RUNS: usize = 5;
const KEY_HEADER: &str = "ocp-apim-subscription-key";
const GW_PORT: u16 = 8080;
const GW_ADMIN: u16 = 9901;
/// A SYN not answered within this is taken as dropped (answers take well under 1 ms).
const SYN_ANSWER: Duration = Duration::from_millis(20);

/// One row of the in-process table.
struct CostRow {
    what: &'static str,
    iterations: usize,
    mean_ns: f64,
    p50_ns: Option<f64>,
    p99_ns: Option<f64>,
}

/// The ban timings of every repetition, microseconds.
struct BanTimes {
    to_map_us: Vec<f64>,
    to_drop_us: Vec<f64>,
    failures: Vec<String>,
}

struct Shared {
    allowed: [u64; 2],
    attempts: [u64; 2],
    secs: f64,
}

pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench limits creates network namespaces and loads XDP programs: run it as root");
    }
    let Some(_) = redis_server() else {
        bail!("redis-server is needed (xtask/setup.sh installs it)");
    };
    let bin = crate::build_portcullis()?;
    let started = Instant::now();
    let load_before = loadavg();

    let mut costs = local_costs();
    for row in &costs {
        println!("{}: {:.0} ns", row.what, row.mean_ns);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let redis = Redis::start();
    let (redis_row, shared) = runtime.block_on(async {
        let row = redis_cost(&redis.address()).await?;
        let shared = shared_accuracy(&redis.address()).await?;
        anyhow::Ok((row, shared))
    })?;
    println!(
        "{}: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs",
        redis_row.what,
        redis_row.mean_ns / 1000.0,
        redis_row.p50_ns.unwrap_or(f64::NAN) / 1000.0,
        redis_row.p99_ns.unwrap_or(f64::NAN) / 1000.0
    );
    costs.push(redis_row);
    drop(redis);
    let total: u64 = shared.allowed.iter().sum();
    let expected = shared_expected(shared.secs);
    println!(
        "shared limit: {total} allowed of {expected:.0} expected ({:.3})",
        total as f64 / expected
    );

    let bans = ban_timing(&bin)?;
    println!(
        "ban: to map p50 {:.0} µs p99 {:.0} µs; to first dropped SYN p50 {:.0} µs p99 {:.0} µs",
        pct(&bans.to_map_us, 0.5),
        pct(&bans.to_map_us, 0.99),
        pct(&bans.to_drop_us, 0.5),
        pct(&bans.to_drop_us, 0.99)
    );

    let throughput = throughput(&bin, &runtime)?;
    drop(runtime);
    let load_after = loadavg();

    let report = report(
        &costs,
        &bans,
        &shared,
        &throughput,
        &machine(&bin, &load_before, &load_after, started)?,
    )?;
    let out = crate::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("limits.md"), &report)?;
    println!("\n{report}\nwritten to target/bench/limits.md");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. One check

fn spec(requests: u32, per: Duration, burst: u32) -> RateLimitSpec {
    RateLimitSpec {
        name: "bench".into(),
        requests,
        per,
        burst,
        key: KeySpec {
            parts: vec![KeyPart::ApiKey],
            ipv4_prefix: 32,
            ipv6_prefix: 128,
        },
        scope: LimitScope::default(),
        tiers: Vec::new(),
    }
}

/// The local limiter as the request path uses it: the key's tier, then one GCRA take. The rate
/// is so high that nothing is refused, so every call does the full update.
fn local_costs() -> Vec<CostRow> {
    let rate = portcullis::limits::Rate::new(
        spec(u32::MAX, Duration::from_secs(1), 1_000_000),
        MANY_KEYS * 2,
        Default::default(),
    );
    let mut rows = Vec::new();
    let hot = "api_key:bench-client".to_string();
    let started = Instant::now();
    for _ in 0..LOCAL_ITERATIONS {
        let tier = rate.tier_of(Some("bench-client"));
        std::hint::black_box(rate.take(tier, std::hint::black_box(&hot)).is_ok());
    }
    rows.push(CostRow {
        what: "local rate limit, one hot key",
        iterations: LOCAL_ITERATIONS,
        mean_ns: started.elapsed().as_nanos() as f64 / LOCAL_ITERATIONS as f64,
        p50_ns: None,
        p99_ns: None,
    });
    let keys: Vec<String> = (0..MANY_KEYS).map(|i| format!("api_key:k{i:06}")).collect();
    // A first pass inserts every key, so the measured passes update existing entries.
    for k in &keys {
        let _ = rate.take(0, k);
    }
    let started = Instant::now();
    for i in 0..LOCAL_ITERATIONS {
        let k = &keys[i % MANY_KEYS];
        let tier = rate.tier_of(Some("bench-client"));
        std::hint::black_box(rate.take(tier, std::hint::black_box(k)).is_ok());
    }
    rows.push(CostRow {
        what: "local rate limit, 100 000 keys in turn",
        iterations: LOCAL_ITERATIONS,
        mean_ns: started.elapsed().as_nanos() as f64 / LOCAL_ITERATIONS as f64,
        p50_ns: None,
        p99_ns: None,
    });
    rows
}

async fn connected(redis: &str) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start(ClusterConfig::new(redis), ClusterMetrics::default());
    if !cluster.wait_connected(Duration::from_secs(5)).await {
        bail!("no connection to redis at {redis} within 5 s");
    }
    Ok(cluster)
}

fn limit(key: &str, rate: u64, burst: u64) -> RateLimit {
    RateLimit {
        key: key.into(),
        rate: NonZeroU64::new(rate).expect("non-zero"),
        per: Duration::from_secs(1),
        burst: NonZeroU64::new(burst).expect("non-zero"),
        cost: 1,
    }
}

/// Sequential checks of one never-refusing limit: each is one round trip and one script run.
async fn redis_cost(redis: &str) -> anyhow::Result<CostRow> {
    let cluster = connected(redis).await?;
    let limits = [limit("bench:cost", 1_000_000_000, 1_000_000)];
    for _ in 0..1000 {
        let _ = cluster.check_rates(&limits).await;
    }
    let mut ns = Vec::with_capacity(REDIS_ITERATIONS);
    let mut errors = 0;
    for _ in 0..REDIS_ITERATIONS {
        let t = Instant::now();
        match cluster.check_rates(&limits).await {
            Ok(d) if d.allowed => ns.push(t.elapsed().as_nanos() as f64),
            _ => errors += 1,
        }
    }
    if errors > 0 {
        bail!("{errors} of {REDIS_ITERATIONS} checks through redis failed or were refused");
    }
    let mean = ns.iter().sum::<f64>() / ns.len() as f64;
    Ok(CostRow {
        what: "through Redis (`Cluster::check_rates`, one round trip)",
        iterations: REDIS_ITERATIONS,
        mean_ns: mean,
        p50_ns: Some(pct(&ns, 0.5)),
        p99_ns: Some(pct(&ns, 0.99)),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. A shared limit

/// What an exact limiter admits in `secs`: the burst, then the rate.
fn shared_expected(secs: f64) -> f64 {
    SHARED_BURST as f64 + SHARED_RATE as f64 * secs
}

/// Two gateways (two `Cluster` instances, two connections) check one budget as fast as they
/// can; the sum they were allowed is compared with what the configured rate admits.
async fn shared_accuracy(redis: &str) -> anyhow::Result<Shared> {
    let gateways = [connected(redis).await?, connected(redis).await?];
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for cluster in gateways {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let limits = [limit("bench:shared", SHARED_RATE, SHARED_BURST)];
            let (mut allowed, mut attempts) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                attempts += 1;
                if cluster.check_rates(&limits).await.is_ok_and(|d| d.allowed) {
                    allowed += 1;
                }
            }
            (allowed, attempts)
        }));
    }
    tokio::time::sleep(SHARED_FOR).await;
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let mut shared = Shared {
        allowed: [0; 2],
        attempts: [0; 2],
        secs,
    };
    for (i, t) in tasks.into_iter().enumerate() {
        let (a, n) = t.await?;
        shared.allowed[i] = a;
        shared.attempts[i] = n;
    }
    Ok(shared)
}

// ---------------------------------------------------------------------------------------------
// 2. Ban timing

/// `portcullis run` in the gateway namespace of a veth pair with XDP on its end; per repetition
/// a new client address sends `ABUSE_THRESHOLD` bad keys. Measured from writing the request that
/// crosses the threshold: (a) until the address is in the pinned ban map, polled from the
/// client side; (b) until the first SYN from that address that XDP drops is sent: after the
/// offending response the client opens connections one after the other (each a SYN; one that
/// completes was not dropped and is reset), and the first one left unanswered (with the
/// `drop/ban:auth-failure` counter risen) gives the time at which it was sent.
fn ban_timing(bin: &Path) -> anyhow::Result<BanTimes> {
    let clients: Vec<String> = (0..BAN_RUNS)
        .map(|i| format!("100.64.1.{}", 10 + i))
        .collect();
    let refs: Vec<&str> = clients.iter().map(String::as_str).collect();
    // Drop order (reverse of declaration): the gateway, the namespaces, the pins.
    let pins = PinRoot::new();
    let link = Link::new(&refs);
    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-limits")
        .tempdir()?;
    let key = generate_key();
    std::fs::write(
        dir.path().join("keys.toml"),
        format!(
            "[[keys]]\nid = \"good\"\nowner = \"bench\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key(&key)
        ),
    )?;
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[kernel]
interfaces = ["{iface}"]
pin_root = "{pins}"

[admin]
listen = "127.0.0.1:{GW_ADMIN}"

[log]
level = "warn"

[[listeners]]
name = "web"
bind = "0.0.0.0:{GW_PORT}"
protocol = "http"
http_mode = "serve"

[[pools]]
name = "app"
endpoints = ["127.0.0.1:9"]

[api_keys]
file = "keys.toml"

[[routes]]
name = "app"
path = "/v1"
pool = "app"
api_key = true

[abuse]
[[abuse.rules]]
kind = "auth_failure"
threshold = {ABUSE_THRESHOLD}
window = "60s"
ban = "10m"
escalation = "none"
"#,
            iface = link.gateway_if,
            pins = pins.path().display(),
        ),
    )?;
    let mut gateway = Proc::spawn(
        "portcullis",
        link.gateway.command(bin).args(["run", "-c"]).arg(&cfg),
        dir.path().join("portcullis.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        gateway.check_running()?;
        let admin = loopback(GW_ADMIN);
        if link.gateway.enter(|| http_status(admin, "/ready")) == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("portcullis not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let layout = PinLayout::new(pins.path());
    let mut times = BanTimes {
        to_map_us: Vec::new(),
        to_drop_us: Vec::new(),
        failures: Vec::new(),
    };
    let dst = SocketAddr::new(GATEWAY_V4.parse()?, GW_PORT);
    for client in &clients {
        let src: IpAddr = client.parse()?;
        let layout = &layout;
        let got = link
            .client
            .enter(move || one_ban(layout, src, dst))
            .with_context(|| format!("ban timing from {client}"));
        match got {
            Ok((map, drop)) => {
                times.to_map_us.push(map.as_secs_f64() * 1e6);
                times.to_drop_us.push(drop.as_secs_f64() * 1e6);
            }
            Err(e) => times.failures.push(format!("{e:#}")),
        }
        gateway.check_running()?;
    }
    if times.to_drop_us.is_empty() {
        bail!("no ban was measured: {}", times.failures.join("; "));
    }
    drop(gateway);
    drop(link);
    drop(pins);
    Ok(times)
}

/// One repetition, run in the client namespace: returns (to the map, to the first dropped SYN).
fn one_ban(
    layout: &PinLayout,
    src: IpAddr,
    dst: SocketAddr,
) -> anyhow::Result<(Duration, Duration)> {
    let bans = Bans::open(layout)?;
    let counters = Counters::open(layout)?;
    let dropped = || {
        counters
            .get("drop/ban:auth-failure")
            .map(|r| r.packets)
            .unwrap_or(0)
    };
    let request = "GET /v1/items HTTP/1.1\r\nhost: bench\r\nocp-apim-subscription-key: wrong\r\nconnection: close\r\n\r\n";
    for i in 1..ABUSE_THRESHOLD {
        let status = exchange(src, dst, request, None)?;
        if status != 401 {
            bail!("bad key {i}: status {status}, expected 401");
        }
    }
    let before = dropped();
    let mut sent = None;
    let status = exchange(src, dst, request, Some(&mut sent))?;
    let sent = sent.context("the offending request was not sent")?;
    if status != 401 {
        bail!("the offending request: status {status}, expected 401");
    }
    let limit = Duration::from_secs(2);
    let mut to_map = None;
    let mut to_drop = None;
    while sent.elapsed() < limit && to_drop.is_none() {
        // One SYN. On the veth its SYN-ACK comes back within a fraction of a millisecond; one
        // unanswered for SYN_ANSWER was dropped, and the time is when it was sent. (The drop
        // counter alone could not tell: the offending connection's own last packets are
        // dropped, and counted, once the ban is in.)
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_linger(Some(Duration::ZERO))?;
        socket.bind(&SocketAddr::new(src, 0).into())?;
        socket.set_nonblocking(true)?;
        let syn_at = sent.elapsed();
        let _ = socket.connect(&dst.into());
        let attempt = Instant::now();
        loop {
            if to_map.is_none() && bans.lookup(src)?.is_some() {
                to_map = Some(sent.elapsed());
            }
            if writable(&socket) {
                break;
            }
            if attempt.elapsed() > SYN_ANSWER {
                to_drop = Some(syn_at);
                break;
            }
        }
    }
    if to_drop.is_some() && dropped() <= before {
        bail!("a SYN went unanswered but `drop/ban:auth-failure` did not rise");
    }
    match (to_map, to_drop) {
        (Some(m), Some(d)) => Ok((m, d)),
        (m, d) => bail!("within 2 s: in the map {:?}, a SYN dropped {:?}", m, d),
    }
}

/// Whether a non-blocking connect has completed (or failed): the socket is writable.
fn writable(socket: &Socket) -> bool {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

/// One HTTP/1.1 exchange from `src`; the status. `sent` gets the instant the request was written.
fn exchange(
    src: IpAddr,
    dst: SocketAddr,
    request: &str,
    sent: Option<&mut Option<Instant>>,
) -> anyhow::Result<u16> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    let mut stream = TcpStream::from(socket);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let at = Instant::now();
    stream.write_all(request.as_bytes())?;
    if let Some(s) = sent {
        *s = Some(at);
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(std::str::from_utf8(&head[9..12])?.parse()?)
}

// ---------------------------------------------------------------------------------------------
// 4. Throughput with and without a limit

struct Throughput {
    without: Vec<Sample>,
    with: Vec<Sample>,
    /// The proxy's CPU time per request (µs) in each run: steadier than req/s when the load
    /// generator and the proxy share two cores.
    cpu_without: Vec<f64>,
    cpu_with: Vec<f64>,
}

/// User plus system CPU time of a process so far, in seconds (/proc/<pid>/stat).
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ) in stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat line")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(ticks as f64 / hz as f64)
}

/// Portcullis (no kernel part) with two routes that differ only in a rate limit that never
/// refuses, loaded in turn with the `bench auth` load generator and the same API key.
fn throughput(bin: &Path, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Throughput> {
    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-limits")
        .tempdir()?;
    let pki = TestPki::new("bench-limits");
    let (cert, cert_key) = pki.write_server(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let key = generate_key();
    std::fs::write(
        dir.path().join("keys.toml"),
        format!(
            "[[keys]]\nid = \"bench-client\"\nowner = \"bench\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key(&key)
        ),
    )?;
    let backend = LoopbackServer::backend()?;
    let ports = free_ports(2)?;
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[kernel]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[proxy]
drain_timeout = "2s"

[log]
level = "warn"

[[listeners]]
name = "bench"
bind = "127.0.0.1:{port}"
protocol = "https"

[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{cert_key}" }}]
alpn = ["h2", "http/1.1"]

[[pools]]
name = "backend"
endpoints = ["{backend}"]
protocol = "http1"

[api_keys]
file = "keys.toml"

[[routes]]
name = "open"
path = "/open"
pool = "backend"
api_key = true

[[routes]]
name = "limited"
path = "/limited"
pool = "backend"
api_key = true

[proxy.limits]

[[proxy.limits.rate]]
name = "per-key"
by = ["api_key"]
routes = ["limited"]
requests = 1000000000
per = "1s"
burst = 1000000
"#,
            admin = ports[1],
            port = ports[0],
            cert = cert.display(),
            cert_key = cert_key.display(),
            backend = backend.addr,
        ),
    )?;
    let mut proc = Proc::spawn(
        "portcullis",
        Command::new(bin).arg("run").arg("-c").arg(&cfg),
        dir.path().join("portcullis.log"),
    )?;
    proc.wait_ready(loopback(ports[1]), "/ready")?;
    let tls = client_tls(pki.roots(), None)?;
    let value = Values::Same(HeaderValue::from_str(&key)?);
    let mut out = Throughput {
        without: Vec::new(),
        with: Vec::new(),
        cpu_without: Vec::new(),
        cpu_with: Vec::new(),
    };
    for run in 0..THROUGHPUT_RUNS {
        // Alternating which goes first, so drift on the shared cores favours neither.
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for limited in order {
            proc.check_running()?;
            let spec = Arc::new(Spec {
                addr: loopback(ports[0]),
                path: if limited { "/limited" } else { "/open" },
                tls: tls.clone(),
                header: Some(HeaderName::from_static(KEY_HEADER)),
                new_connections: false,
            });
            let cpu_before = cpu_secs(proc.pid())?;
            let s = runtime.block_on(load(spec, value.clone(), value.clone()));
            // Requests of the warm-up are estimated at the measured rate: the same share of
            // every run, so the comparison holds even if the absolute figure is a little off.
            let requests = s.rps * (WARM_UP + MEASURE).as_secs_f64();
            let cpu_us = (cpu_secs(proc.pid())? - cpu_before) * 1e6 / requests.max(1.0);
            println!(
                "run {}/{THROUGHPUT_RUNS} {:<16} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}  proxy CPU {:>5.1} µs/req",
                run + 1,
                if limited {
                    "with a limit"
                } else {
                    "without limits"
                },
                s.rps,
                s.p50_ms,
                s.p99_ms,
                s.errors,
                cpu_us
            );
            if limited {
                out.with.push(s);
                out.cpu_with.push(cpu_us);
            } else {
                out.without.push(s);
                out.cpu_without.push(cpu_us);
            }
        }
    }
    proc.check_running()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Report

/// The `p` quantile of unsorted values (nearest rank).
fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn machine(
    bin: &Path,
    before: &str,
    after: &str,
    started: Instant,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let first_line = |cmd: &mut Command| -> anyhow::Result<String> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    Ok(vec![
        (
            "portcullis",
            first_line(Command::new(bin).arg("--version"))?,
        ),
        (
            "redis-server",
            first_line(Command::new("redis-server").arg("--version"))?,
        ),
        ("kernel", first_line(Command::new("uname").arg("-r"))?),
        (
            "cpu",
            format!(
                "{cpu}, {} online",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
        ),
        (
            "load average (1, 5, 15 min) before / after",
            format!("{before} / {after}"),
        ),
        (
            "whole benchmark (after the build)",
            format!("{:.0} s", started.elapsed().as_secs_f64()),
        ),
    ])
}

fn report(
    costs: &[CostRow],
    bans: &BanTimes,
    shared: &Shared,
    tp: &Throughput,
    machine: &[(&'static str, String)],
) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(r, "## Limits: one check\n")?;
    writeln!(r, "| check | iterations | mean | p50 | p99 |")?;
    writeln!(r, "|---|---:|---:|---:|---:|")?;
    let us = |ns: Option<f64>| ns.map_or("-".to_string(), |n| format!("{:.1} µs", n / 1000.0));
    for c in costs {
        let mean = if c.p50_ns.is_some() {
            format!("{:.1} µs", c.mean_ns / 1000.0)
        } else {
            format!("{:.0} ns", c.mean_ns)
        };
        writeln!(
            r,
            "| {} | {} | {mean} | {} | {} |",
            c.what,
            c.iterations,
            us(c.p50_ns),
            us(c.p99_ns)
        )?;
    }
    writeln!(
        r,
        "\n## Abuse bans: from the offending request to the ban enforced\n"
    )?;
    let p99 = pct(&bans.to_drop_us, 0.99);
    writeln!(
        r,
        "{} repetitions, threshold {ABUSE_THRESHOLD} bad API keys, each from a new address.\n",
        bans.to_drop_us.len()
    )?;
    writeln!(
        r,
        "| measured from writing the offending request to | p50 | p99 | max | target |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---|")?;
    let max = |xs: &[f64]| xs.iter().copied().fold(f64::NAN, f64::max);
    writeln!(
        r,
        "| the address in the pinned ban map | {:.0} µs | {:.0} µs | {:.0} µs | |",
        pct(&bans.to_map_us, 0.5),
        pct(&bans.to_map_us, 0.99),
        max(&bans.to_map_us)
    )?;
    writeln!(
        r,
        "| its first SYN dropped by XDP (`drop/ban:auth-failure` rose) | {:.0} µs | {p99:.0} µs | {:.0} µs | at most 1 ms at p99: {} |",
        pct(&bans.to_drop_us, 0.5),
        max(&bans.to_drop_us),
        if p99 <= 1000.0 { "met" } else { "NOT met" }
    )?;
    for f in &bans.failures {
        writeln!(r, "\n- not measured: {f}")?;
    }
    let total: u64 = shared.allowed.iter().sum();
    let expected = shared_expected(shared.secs);
    writeln!(r, "\n## A shared limit against its rate\n")?;
    writeln!(
        r,
        "Two gateways (two `Cluster` instances, each with its own connection) check one budget \
         of {SHARED_RATE}/s, burst {SHARED_BURST}, as fast as they can for {:.2} s.\n",
        shared.secs
    )?;
    writeln!(r, "| gateway | checks | allowed |")?;
    writeln!(r, "|---|---:|---:|")?;
    for i in 0..2 {
        writeln!(
            r,
            "| {} | {} | {} |",
            i + 1,
            shared.attempts[i],
            shared.allowed[i]
        )?;
    }
    writeln!(
        r,
        "| both | {} | {total} (expected {expected:.0}: burst + rate × time; ratio {:.3}) |",
        shared.attempts.iter().sum::<u64>(),
        total as f64 / expected
    )?;
    writeln!(
        r,
        "\n## Proxy throughput with and without a limit (median of {THROUGHPUT_RUNS} runs)\n"
    )?;
    writeln!(
        r,
        "| route | req/s | p50 (ms) | p99 (ms) | errors | proxy CPU (µs/request) | req/s of each run |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---|")?;
    for (what, runs, cpu) in [
        ("API key, no limit", &tp.without, &tp.cpu_without),
        (
            "API key, rate limit by key that never refuses",
            &tp.with,
            &tp.cpu_with,
        ),
    ] {
        writeln!(
            r,
            "| {what} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {} |",
            median(runs, |s| s.rps),
            median(runs, |s| s.p50_ms),
            median(runs, |s| s.p99_ms),
            runs.iter().map(|s| s.errors).sum::<u64>(),
            pct(cpu, 0.5),
            runs.iter()
                .map(|s| format!("{:.0}", s.rps))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    writeln!(
        r,
        "\nProxy CPU is the gateway process's user + system time over a run divided by the \
         requests it answered (warm-up included at the measured rate): it does not depend on \
         how the two cores were shared with the load generator.\n"
    )?;
    writeln!(r, "\n## Limits: versions, machine and load\n")?;
    for (what, v) in machine {
        writeln!(r, "- {what}: {v}")?;
    }
    Ok(r)
}
