//! `cargo xtask bench proxy`: the userspace proxy against Envoy, and against the backend alone.
//!
//! One run, one machine, one backend, one load generator (oha):
//!
//! 1. **Throughput and latency.** Requests per second, p50 and p99 latency and errors at fixed
//!    concurrency, HTTP/1.1 (64 keep-alive connections) and h2 (16 connections x 8 streams), for
//!    three targets: Portcullis and Envoy terminating TLS 1.3 with the same certificate and
//!    routing `/` to the same backend, and the backend directly over plain HTTP (the floor of
//!    what the machine can do). Each measurement is 10 s after a 2 s warm-up; every measurement
//!    is taken three times, interleaved across targets so that drift hits all of them alike,
//!    and the median is reported.
//! 2. **Memory.** Resident set (VmRSS) of each proxy idle after start, holding 10,000 idle TLS
//!    connections (handshake completed, nothing sent), after they closed, after the load runs,
//!    and holding 10,000 again (which tells memory kept for reuse from memory leaked).
//! 3. **Validation cost.** Request schema validation per request, in process and through a
//!    proxy with and without it (`bench_validation.rs`; alone: `cargo xtask bench validation`).
//!
//! The machine has two cores, shared by oha, the proxy under test and the backend: the figures
//! compare the proxies with each other on the same footing, not with what they would do alone.
//!
//! Everything listens on and sends to 127.0.0.1 only. Every loop is bounded in time and count.
//! Every process started here is owned by a guard that stops it by pid on drop, so an error
//! cleans up too; the temporary directory (configs, certificates, logs) goes with it.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use portcullis_tests::pki::TestPki;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::bench_util::{
    HELLO, LoopbackServer, Proc, Runs, Sample, envoy_binary, free_ports, install_tools, loadavg,
    loopback, rss_kib, versions,
};

/// HTTP/1.1: keep-alive connections, one request in flight on each.
const H1_CONNECTIONS: usize = 64;
/// h2: connections, and concurrent streams on each (128 requests in flight).
const H2_CONNECTIONS: usize = 16;
const H2_STREAMS: usize = 8;
const WARM_UP: &str = "2s";
const MEASURE: &str = "10s";
/// Each measurement is repeated and the median reported: the two cores are shared.
const RUNS: usize = 3;
/// Worker threads of each proxy (Portcullis' runtime has two workers; Envoy `--concurrency`)
/// and of oha.
const WORKERS: usize = 2;
const IDLE_CONNECTIONS: usize = 10_000;
/// Handshakes in flight at once while opening the idle connections: well under the listen
/// backlog, so none is dropped for lack of queue.
const HANDSHAKES_IN_FLIGHT: usize = 128;
/// Descriptors for this process (10k client sockets) and, inherited, for each proxy.
const NOFILE: u64 = 65_536;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "h2",
        }
    }

    fn load(self) -> String {
        match self {
            Proto::H1 => format!("{H1_CONNECTIONS} conns"),
            Proto::H2 => format!("{H2_CONNECTIONS} conns x {H2_STREAMS} streams"),
        }
    }
}

/// A URL the load generator sends to.
struct Target {
    name: &'static str,
    url: String,
}

/// Memory of one proxy over the run, KiB.
struct Memory {
    name: &'static str,
    workers: String,
    idle_kib: u64,
    /// The first 10,000 idle connections, right after start.
    held: Held,
    after_load_kib: u64,
    /// The same 10,000 again after the load runs: if RSS does not grow past the first round,
    /// what stayed resident after the first close is freed memory kept for reuse, not a leak.
    held_again: Held,
}

/// The outcome of holding idle TLS connections open against a server.
struct Held {
    opened: usize,
    failed: usize,
    open_secs: f64,
    rss_kib: u64,
    /// Descriptors the server process had open meanwhile: shows it really held them.
    server_fds: usize,
    /// RSS two seconds after all of them were closed.
    rss_after_close_kib: u64,
}

pub fn run() -> anyhow::Result<()> {
    install_tools()?;
    let portcullis_bin = crate::build_portcullis()?;
    let envoy_bin = envoy_binary()?;
    raise_nofile_limit()?;

    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-proxy")
        .tempdir()?;
    let pki = TestPki::new("bench");
    let (cert, key) = pki.write_server(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let ca = pki.write_ca(dir.path());

    let backend = LoopbackServer::backend()?;
    let ports = Ports::pick()?;
    let mut portcullis = start_portcullis(
        &portcullis_bin,
        dir.path(),
        &ports,
        &cert,
        &key,
        backend.addr,
    )?;
    let mut envoy = start_envoy(&envoy_bin, dir.path(), &ports, &cert, &key, backend.addr)?;
    let mut versions = versions(&portcullis_bin, &envoy_bin, true)?;

    // Memory first, before any load has grown the allocators.
    let idle = [rss_kib(portcullis.pid())?, rss_kib(envoy.pid())?];
    let held = [
        hold_idle_connections(&mut portcullis, ports.portcullis, pki.roots())?,
        hold_idle_connections(&mut envoy, ports.envoy, pki.roots())?,
    ];

    let targets = [
        Target {
            name: "Portcullis",
            url: format!("https://127.0.0.1:{}/", ports.portcullis),
        },
        Target {
            name: "Envoy",
            url: format!("https://127.0.0.1:{}/", ports.envoy),
        },
        Target {
            name: "backend direct (plain HTTP)",
            url: format!("http://{}/", backend.addr),
        },
    ];
    let load_before = loadavg();
    let results = load_all(&targets, &ca, &mut [&mut portcullis, &mut envoy])?;
    let load_after = loadavg();
    let after = [rss_kib(portcullis.pid())?, rss_kib(envoy.pid())?];
    let held_again = [
        hold_idle_connections(&mut portcullis, ports.portcullis, pki.roots())?,
        hold_idle_connections(&mut envoy, ports.envoy, pki.roots())?,
    ];

    let [held_p, held_e] = held;
    let [again_p, again_e] = held_again;
    let memory = [
        Memory {
            name: "Portcullis",
            workers: format!("{WORKERS} Tokio workers (fixed in `portcullis run`)"),
            idle_kib: idle[0],
            held: held_p,
            after_load_kib: after[0],
            held_again: again_p,
        },
        Memory {
            name: "Envoy",
            workers: format!("`--concurrency {WORKERS}`"),
            idle_kib: idle[1],
            held: held_e,
            after_load_kib: after[1],
            held_again: again_e,
        },
    ];
    // Other work on the shared cores shows up here (the benchmark's own processes count too).
    versions.push((
        "load average (1, 5, 15 min) before / after the load runs",
        format!("{load_before} / {load_after}"),
    ));
    let mut report = report(&targets, &results, &memory, &versions)?;
    // The validation section starts its own proxy: stop these first so they take no CPU.
    drop(portcullis);
    drop(envoy);
    report.push_str(&crate::bench_validation::section(&portcullis_bin)?);
    let out = crate::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("proxy.md"), &report)?;
    println!("\n{report}\nwritten to target/bench/proxy.md");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tools

/// 10,000 client sockets here, and as many accepted sockets in each proxy, which inherits this
/// limit from us (raising the hard limit needs root, which the benchmark has).
fn raise_nofile_limit() -> anyhow::Result<()> {
    let want = libc::rlimit {
        rlim_cur: NOFILE,
        rlim_max: NOFILE,
    };
    // SAFETY: setrlimit reads a valid struct; no other precondition.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return Ok(());
    }
    let mut have = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut have) };
    have.rlim_cur = have.rlim_max;
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &have) };
    if have.rlim_max < IDLE_CONNECTIONS as u64 + 1_000 {
        bail!(
            "RLIMIT_NOFILE hard limit {} is too low for {IDLE_CONNECTIONS} connections (run as root)",
            have.rlim_max
        );
    }
    Ok(())
}

/// Loopback ports for the two proxies and their admin endpoints. Picked by binding port 0 and
/// letting go: the proxies bind them a moment later (Portcullis' config needs a number).
struct Ports {
    portcullis: u16,
    portcullis_admin: u16,
    envoy: u16,
    envoy_admin: u16,
}

impl Ports {
    fn pick() -> anyhow::Result<Self> {
        let p = free_ports(4)?;
        Ok(Self {
            portcullis: p[0],
            portcullis_admin: p[1],
            envoy: p[2],
            envoy_admin: p[3],
        })
    }
}

/// Portcullis with one TLS listener (ALPN h2 and http/1.1), one route `/` to the backend, no
/// XDP, the access log silenced by level (its lines are info). The client timeouts are raised
/// so that the idle connections are not closed while they are measured; `max_connections`
/// leaves room above the 10,000.
fn start_portcullis(
    bin: &Path,
    dir: &Path,
    ports: &Ports,
    cert: &Path,
    key: &Path,
    backend: SocketAddr,
) -> anyhow::Result<Proc> {
    let config = format!(
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
max_connections = 20000
header_timeout = "300s"
idle_timeout = "300s"

[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]
alpn = ["h2", "http/1.1"]

[[pools]]
name = "backend"
endpoints = ["{backend}"]
protocol = "http1"

[[routes]]
name = "all"
path = "/"
pool = "backend"
"#,
        admin = ports.portcullis_admin,
        port = ports.portcullis,
        cert = cert.display(),
        key = key.display(),
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, config)?;
    let mut proc = Proc::spawn(
        "portcullis",
        Command::new(bin).arg("run").arg("-c").arg(&path),
        dir.join("portcullis.log"),
    )?;
    proc.wait_ready(loopback(ports.portcullis_admin), "/ready")?;
    Ok(proc)
}

/// Envoy with the equivalent listener: TLS termination with the same certificate (TLS 1.2 to
/// 1.3, ALPN h2 and http/1.1), the HTTP connection manager with one route `/` to a static
/// cluster of the same backend over HTTP/1.1, and no access log (none is configured).
fn start_envoy(
    bin: &Path,
    dir: &Path,
    ports: &Ports,
    cert: &Path,
    key: &Path,
    backend: SocketAddr,
) -> anyhow::Result<Proc> {
    let config = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }}
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: {bip}, port_value: {bport} }} }}
"#,
        admin = ports.envoy_admin,
        port = ports.envoy,
        cert = cert.display(),
        key = key.display(),
        bip = backend.ip(),
        bport = backend.port(),
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config)?;
    let mut proc = Proc::spawn(
        "envoy",
        Command::new(bin)
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", &WORKERS.to_string()])
            .args(["--log-level", "warn", "--disable-hot-restart"]),
        dir.join("envoy.log"),
    )?;
    // Envoy's /ready turns 200 once its listeners and clusters are initialised.
    proc.wait_ready(loopback(ports.envoy_admin), "/ready")?;
    Ok(proc)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

// ---------------------------------------------------------------------------------------------
// Idle connections

/// Opens IDLE_CONNECTIONS TLS 1.3 connections to `port` (full handshakes, ALPN http/1.1,
/// nothing sent after), holds them while the server's RSS is read, then closes them all.
fn hold_idle_connections(
    server: &mut Proc,
    port: u16,
    roots: Arc<RootCertStore>,
) -> anyhow::Result<Held> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection a full handshake, as 10,000 distinct clients would make.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (streams, failed) = runtime.block_on(open_many(connector, loopback(port)));
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server finish its side of the last handshakes before measuring.
    std::thread::sleep(Duration::from_secs(2));
    server.check_running()?;
    let (opened, rss, fds) = (
        streams.len(),
        rss_kib(server.pid())?,
        open_fds(server.pid()),
    );
    drop(streams);
    drop(runtime);
    // Let the server notice the closes before it is measured again.
    std::thread::sleep(Duration::from_secs(2));
    let held = Held {
        opened,
        failed,
        open_secs,
        rss_kib: rss,
        server_fds: fds,
        rss_after_close_kib: rss_kib(server.pid())?,
    };
    println!(
        "{}: {} idle TLS connections open ({} failed) in {:.1} s; RSS {} KiB, {} fds; {} KiB after closing",
        server.name,
        held.opened,
        held.failed,
        held.open_secs,
        held.rss_kib,
        held.server_fds,
        held.rss_after_close_kib
    );
    Ok(held)
}

/// Opens the connections with at most HANDSHAKES_IN_FLIGHT handshakes at a time, each bounded
/// by 10 s; returns the open ones and the number that failed.
async fn open_many(
    connector: TlsConnector,
    addr: SocketAddr,
) -> (
    Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    usize,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IDLE_CONNECTIONS {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let connector = connector.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let open = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                connector.connect(name, tcp).await
            };
            tokio::time::timeout(Duration::from_secs(10), open).await
        });
    }
    let mut streams = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(Ok(stream))) => streams.push(stream),
            _ => failed += 1,
        }
    }
    (streams, failed)
}

// ---------------------------------------------------------------------------------------------
// Load

/// Every target and protocol, RUNS times, interleaved: run 1 of all, then run 2 of all, ...
/// Returns the summaries indexed [protocol][target].
fn load_all(
    targets: &[Target],
    ca: &Path,
    procs: &mut [&mut Proc],
) -> anyhow::Result<Vec<Vec<Runs>>> {
    let protos = [Proto::H1, Proto::H2];
    let mut results: Vec<Vec<Runs>> = protos
        .iter()
        .map(|_| targets.iter().map(|_| Runs::default()).collect())
        .collect();
    for run in 1..=RUNS {
        for (pi, &proto) in protos.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                for p in procs.iter_mut() {
                    p.check_running()?;
                }
                oha(target, proto, WARM_UP, ca)?;
                let s = oha(target, proto, MEASURE, ca)?;
                println!(
                    "run {run}/{RUNS} {:<28} {:<8} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                    target.name,
                    proto.label(),
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors
                );
                results[pi][ti].runs.push(s);
            }
        }
    }
    Ok(results)
}

/// One oha run against `target`, keep-alive, for `duration`.
fn oha(target: &Target, proto: Proto, duration: &str, ca: &Path) -> anyhow::Result<Sample> {
    crate::bench_util::oha(&target.url, |cmd| {
        cmd.args(["-z", duration])
            .args(["--worker-threads", &WORKERS.to_string()])
            .arg("--cacert")
            .arg(ca);
        match proto {
            Proto::H1 => cmd.args(["-c", &H1_CONNECTIONS.to_string()]),
            Proto::H2 => cmd.args([
                "--http2",
                "-c",
                &H2_CONNECTIONS.to_string(),
                "-p",
                &H2_STREAMS.to_string(),
            ]),
        };
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn report(
    targets: &[Target],
    results: &[Vec<Runs>],
    memory: &[Memory],
    versions: &[(&'static str, String)],
) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "## Proxy: requests per second and latency (median of {RUNS} runs)\n"
    )?;
    writeln!(
        r,
        "oha, keep-alive, {MEASURE} per run after a {WARM_UP} warm-up; TLS 1.3 to the proxies, \
         plain HTTP to the backend; backend `GET /` answers a {}-byte body. All processes share \
         the machine's 2 cores.\n",
        HELLO.len()
    )?;
    writeln!(
        r,
        "| target | protocol | load | requests/s | p50 (ms) | p99 (ms) | errors | requests/s of each run |"
    )?;
    writeln!(r, "|---|---|---|---:|---:|---:|---:|---|")?;
    for (pi, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        for (ti, target) in targets.iter().enumerate() {
            let s = &results[pi][ti];
            let each: Vec<String> = s.runs.iter().map(|x| format!("{:.0}", x.rps)).collect();
            writeln!(
                r,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
                target.name,
                proto.label(),
                proto.load(),
                s.rps(),
                s.p50(),
                s.p99(),
                s.errors(),
                each.join(", ")
            )?;
        }
    }

    writeln!(
        r,
        "\n## Proxy: target (Portcullis at or above Envoy's requests/s, at or below its p99)\n"
    )?;
    for (pi, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        let (p, e) = (&results[pi][0], &results[pi][1]);
        let met = p.rps() >= e.rps() && p.p99() <= e.p99();
        writeln!(
            r,
            "- {}: {} (requests/s {:.0} vs {:.0}, {:+.1}%; p99 {:.2} vs {:.2} ms)",
            proto.label(),
            if met { "met" } else { "NOT met" },
            p.rps(),
            e.rps(),
            (p.rps() / e.rps() - 1.0) * 100.0,
            p.p99(),
            e.p99()
        )?;
    }

    writeln!(r, "\n## Proxy: resident memory (VmRSS)\n")?;
    writeln!(
        r,
        "| proxy | workers | idle after start | {IDLE_CONNECTIONS} idle TLS conns | per conn | after they closed | after the load runs | {IDLE_CONNECTIONS} again, after load | after they closed |"
    )?;
    writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    for m in memory {
        let per_conn =
            (m.held.rss_kib.saturating_sub(m.idle_kib)) as f64 / m.held.opened.max(1) as f64;
        writeln!(
            r,
            "| {} | {} | {} | {} | {:.1} KiB | {} | {} | {} | {} |",
            m.name,
            m.workers,
            mib(m.idle_kib),
            mib(m.held.rss_kib),
            per_conn,
            mib(m.held.rss_after_close_kib),
            mib(m.after_load_kib),
            mib(m.held_again.rss_kib),
            mib(m.held_again.rss_after_close_kib),
        )?;
    }
    writeln!(r)?;
    for m in memory {
        for (round, h) in [("first", &m.held), ("second", &m.held_again)] {
            writeln!(
                r,
                "- {} ({round} round): {} connections opened, {} failed, in {:.1} s; the process held {} descriptors meanwhile.",
                m.name, h.opened, h.failed, h.open_secs, h.server_fds
            )?;
        }
    }

    writeln!(r, "\n## Proxy: versions, machine and load\n")?;
    for (what, v) in versions {
        writeln!(r, "- {what}: {v}")?;
    }
    Ok(r)
}
