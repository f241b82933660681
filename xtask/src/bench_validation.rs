//! "Validation cost": what `[routes.validation]` with a JSON Schema costs per request, for a
//! typical JSON order body of about 200 bytes, 10 kB and 100 kB. Part of `cargo xtask bench
//! proxy`; `cargo xtask bench validation` runs it alone.
//!
//! 1. **In process.** The schema compiled the way the config compiles a `schema =` file, and
//!    the body checked with the same `BodyRule::check` the proxy calls on a buffered body
//!    (parse to a JSON value, then validate); parsing alone is timed too, so the table splits
//!    the cost. This is the precise cost per request.
//! 2. **Through the proxy.** One Portcullis with a plain-HTTP listener (so TLS cost does not
//!    blur the difference) and two routes to the same backend: `/validated` with the schema
//!    and `/plain` without. oha POSTs each body to each route, HTTP/1.1 keep-alive, and the
//!    two routes are compared in the same run.
//!
//! Every body is valid: each one is first sent once to each route and must come back 200 with
//! the backend reporting the whole body received, since a refused body would make validation
//! look cheap. An invalid body must get 400 on `/validated` (validation is really on) and 200
//! on `/plain`.
//!
//! Everything listens on and sends to 127.0.0.1 only. Every loop is bounded in time and count.
//! The proxy is owned by a guard that stops it by pid on drop; the backend stops when dropped.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portcullis::validation::openapi::{self, Dialect};
use portcullis::validation::{BodyRule, Schema};

use crate::bench_util::{
    LoopbackServer, Proc, Runs, Sample, free_ports, install_tools, loadavg, loopback, median_of,
};

/// HTTP/1.1 keep-alive connections, one request in flight on each (as in the proxy section).
const CONNECTIONS: usize = 64;
const WARM_UP: &str = "2s";
const MEASURE: &str = "5s";
/// Each cell is measured this many times, interleaved across cells, and the median reported.
const RUNS: usize = 3;
/// oha's threads; Portcullis has two Tokio workers.
const WORKERS: usize = 2;
/// A request that takes longer than this counts as an error instead of stalling the run.
const REQUEST_TIMEOUT: &str = "10s";
/// The bodies, by the size they are grown to (at least this many bytes).
const SIZES: [(&str, usize); 3] = [("small", 200), ("10 kB", 10_000), ("100 kB", 100_000)];
/// In process: timed batches per measurement (the median batch is reported) and the time one
/// batch aims at.
const MICRO_BATCHES: usize = 7;
const MICRO_BATCH_TIME: Duration = Duration::from_millis(150);
/// Upper bound on calls in one batch, whatever the calibration says.
const MICRO_MAX_CALLS: usize = 1_000_000;

/// An order: a customer, items (the part that grows), notes. Patterns and a format are there
/// because real schemas have them and they cost more than type checks.
const ORDER_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Order",
  "type": "object",
  "required": ["customer", "items"],
  "additionalProperties": false,
  "properties": {
    "customer": {
      "type": "object",
      "required": ["id", "name"],
      "additionalProperties": false,
      "properties": {
        "id": { "type": "string", "pattern": "^C[0-9]{6}$" },
        "name": { "type": "string", "minLength": 1, "maxLength": 200 },
        "email": { "type": "string", "format": "email" }
      }
    },
    "items": {
      "type": "array",
      "minItems": 1,
      "maxItems": 10000,
      "items": {
        "type": "object",
        "required": ["sku", "quantity", "price"],
        "additionalProperties": false,
        "properties": {
          "sku": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$" },
          "quantity": { "type": "integer", "minimum": 1 },
          "price": { "type": "number", "minimum": 0 }
        }
      }
    },
    "notes": { "type": "string", "maxLength": 2000 }
  }
}
"#;

/// One generated body and where it was written for oha.
struct Body {
    label: &'static str,
    bytes: Vec<u8>,
    items: usize,
    file: PathBuf,
}

/// In-process cost of one body, nanoseconds per call.
struct Micro {
    parse_ns: f64,
    check_ns: f64,
}

const ROUTES: [&str; 2] = ["validated", "plain"];

/// `cargo xtask bench validation`: the section alone, written to `target/bench/validation.md`.
pub fn run() -> anyhow::Result<()> {
    install_tools()?;
    let bin = crate::build_portcullis()?;
    let report = section(&bin)?;
    let out = crate::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("validation.md"), &report)?;
    println!("\n{report}\nwritten to target/bench/validation.md");
    Ok(())
}

/// Measures and returns the section's Markdown.
pub(crate) fn section(portcullis_bin: &Path) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-validation")
        .tempdir()?;
    let schema_path = dir.path().join("order.schema.json");
    std::fs::write(&schema_path, ORDER_SCHEMA)?;

    let bodies = SIZES
        .iter()
        .map(|&(label, size)| {
            let (bytes, items) = order_body(size);
            let file = dir.path().join(format!("order-{size}.json"));
            std::fs::write(&file, &bytes)?;
            Ok(Body {
                label,
                bytes,
                items,
                file,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!("validation cost: in process");
    let micro = bodies
        .iter()
        .map(|b| {
            let m = micro(b)?;
            println!(
                "{:>7} ({} bytes): parse {:.1} µs, parse + validate {:.1} µs",
                b.label,
                b.bytes.len(),
                m.parse_ns / 1e3,
                m.check_ns / 1e3
            );
            Ok(m)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!("validation cost: through the proxy");
    let backend = LoopbackServer::draining()?;
    let ports = free_ports(2)?;
    let (port, admin) = (ports[0], ports[1]);
    let mut proxy = start_portcullis(
        portcullis_bin,
        dir.path(),
        &schema_path,
        port,
        admin,
        backend.addr,
    )?;
    let addr = loopback(port);
    check_answers(addr, &bodies)?;

    let load_before = loadavg();
    // [body][route], every cell measured once per run, interleaved so drift hits all alike.
    let mut cells: Vec<[Runs; 2]> = bodies.iter().map(|_| Default::default()).collect();
    for run in 1..=RUNS {
        for (bi, body) in bodies.iter().enumerate() {
            for (ri, route) in ROUTES.iter().enumerate() {
                proxy.check_running()?;
                let url = format!("http://{addr}/{route}/orders");
                oha(&url, &body.file, WARM_UP)?;
                let s = oha(&url, &body.file, MEASURE)?;
                println!(
                    "run {run}/{RUNS} {:>7} /{route:<9} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                    body.label, s.rps, s.p50_ms, s.p99_ms, s.errors
                );
                cells[bi][ri].runs.push(s);
            }
        }
    }
    let load_after = loadavg();
    proxy.check_running()?;
    drop(proxy);
    drop(backend);
    report(&bodies, &micro, &cells, &load_before, &load_after)
}

// ---------------------------------------------------------------------------------------------
// Bodies and the in-process measurement

/// A valid order grown, one item at a time, to at least `size` bytes; returns it and its
/// number of items. Deterministic, so every run measures the same bodies.
fn order_body(size: usize) -> (Vec<u8>, usize) {
    let head = r#"{"customer":{"id":"C004217","name":"Ada Lovelace","email":"ada@example.com"},"notes":"leave at the door","items":["#;
    let tail = "]}";
    let mut body = String::from(head);
    let mut items = 0;
    // An item is about 50 bytes: the bound only guards against a mistake in the arithmetic.
    while (items == 0 || body.len() + tail.len() < size) && items < 100_000 {
        if items > 0 {
            body.push(',');
        }
        let letters: String = (0..3)
            .map(|k| char::from(b'A' + ((items / 26usize.pow(k)) % 26) as u8))
            .collect();
        let cents = (items * 1_237 + 199) % 100_000;
        write!(
            body,
            r#"{{"sku":"{letters}-{:06}","quantity":{},"price":{}.{:02}}}"#,
            (items * 7_919) % 1_000_000,
            1 + items % 9,
            cents / 100,
            cents % 100
        )
        .expect("writing to a String");
        items += 1;
    }
    body.push_str(tail);
    (body.into_bytes(), items)
}

/// The schema as the config compiles a `schema =` file (gateway-userspace
/// src/config/validation.rs): parsed as YAML/JSON, compiled as JSON Schema 2020-12.
fn compile_schema() -> anyhow::Result<Arc<Schema>> {
    let value =
        openapi::parse(ORDER_SCHEMA).map_err(|e| anyhow::anyhow!("{}{}", e.at, e.reason))?;
    openapi::compile(&value, "", Dialect::Draft202012)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.at, e.reason))
}

/// Parsing alone, and parsing plus validation through the proxy's own `BodyRule::check`.
fn micro(body: &Body) -> anyhow::Result<Micro> {
    let schema = compile_schema()?;
    // As the proxy builds it for a `schema =` route and a JSON body (`check_head`).
    let rule = BodyRule {
        required: false,
        schema: Some(schema.as_ref()),
    };
    let failures = rule.check(&body.bytes);
    if !failures.is_empty() {
        bail!("the {} body fails its schema: {failures:?}", body.label);
    }
    let parse_ns = time_per_call(|| {
        serde_json::from_slice::<serde_json::Value>(std::hint::black_box(&body.bytes)).is_ok()
    })?;
    let check_ns = time_per_call(|| rule.check(std::hint::black_box(&body.bytes)).is_empty())?;
    Ok(Micro { parse_ns, check_ns })
}

/// Nanoseconds per call of `f`, the median of MICRO_BATCHES batches sized from a short
/// calibration. `f` says whether the call succeeded; any failure is an error.
fn time_per_call(mut f: impl FnMut() -> bool) -> anyhow::Result<f64> {
    let mut calls = |n: usize| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut failed = 0usize;
        for _ in 0..n {
            failed += usize::from(!f());
        }
        let elapsed = started.elapsed();
        if failed > 0 {
            bail!("{failed} of {n} calls failed");
        }
        Ok(elapsed)
    };
    // Calibration (also the warm-up): double until a batch takes 20 ms, bounded.
    let mut n = 1;
    while n < MICRO_MAX_CALLS && calls(n)? < Duration::from_millis(20) {
        n *= 2;
    }
    let per_call = calls(n)?.as_secs_f64() / n as f64;
    let batch = ((MICRO_BATCH_TIME.as_secs_f64() / per_call) as usize).clamp(1, MICRO_MAX_CALLS);
    let mut samples = Vec::with_capacity(MICRO_BATCHES);
    for _ in 0..MICRO_BATCHES {
        samples.push(calls(batch)?.as_nanos() as f64 / batch as f64);
    }
    Ok(median_of(samples))
}

// ---------------------------------------------------------------------------------------------
// The proxy and the backend

/// Portcullis with one plain-HTTP listener (`http_mode = "serve"`) and two POST routes to the
/// same backend: `/validated` checks the body against the order schema, `/plain` does not.
/// The access log is silenced by level (its lines are info).
fn start_portcullis(
    bin: &Path,
    dir: &Path,
    schema: &Path,
    port: u16,
    admin: u16,
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
protocol = "http"
http_mode = "serve"

[[pools]]
name = "backend"
endpoints = ["{backend}"]
protocol = "http1"

[[routes]]
name = "validated"
path = "/validated"
methods = ["POST"]
pool = "backend"
max_body_size = "1MiB"

[routes.validation]
schema = "{schema}"
max_body_size = "256KiB"

[[routes]]
name = "plain"
path = "/plain"
methods = ["POST"]
pool = "backend"
max_body_size = "1MiB"
"#,
        schema = schema.display(),
    );
    let path = dir.join("portcullis-validation.toml");
    std::fs::write(&path, config)?;
    let mut proc = Proc::spawn(
        "portcullis (validation)",
        Command::new(bin).arg("run").arg("-c").arg(&path),
        dir.join("portcullis-validation.log"),
    )?;
    proc.wait_ready(loopback(admin), "/ready")?;
    Ok(proc)
}

/// Before measuring: every body gets 200 on both routes with the whole body received by the
/// backend, and an invalid body gets 400 on `/validated` and 200 on `/plain`.
fn check_answers(addr: SocketAddr, bodies: &[Body]) -> anyhow::Result<()> {
    for body in bodies {
        for route in ROUTES {
            let path = format!("/{route}/orders");
            let (status, text) = post(addr, &path, &body.bytes)?;
            let want = format!("received {} bytes", body.bytes.len());
            if status != 200 || !text.contains(&want) {
                bail!(
                    "the {} body ({} bytes) on {path}: status {status}, expected 200 and `{want}`; answer:\n{text}",
                    body.label,
                    body.bytes.len()
                );
            }
        }
    }
    let invalid = br#"{"customer":{"id":"C004217","name":"Ada"},"items":[{"sku":"ABC-000001","quantity":0,"price":1.5}]}"#;
    for (route, want) in [("validated", 400), ("plain", 200)] {
        let (status, text) = post(addr, &format!("/{route}/orders"), invalid)?;
        if status != want {
            bail!(
                "an invalid order on /{route}/orders: status {status}, expected {want}; answer:\n{text}"
            );
        }
    }
    Ok(())
}

/// One POST with `Connection: close`; the status and the whole answer (head and body) as text.
/// Bounded by socket timeouts and a cap on what is read.
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer to POST {path}"))?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in the answer to POST {path}: {text:?}"))?;
    Ok((status, text))
}

// ---------------------------------------------------------------------------------------------
// Load

/// One oha run: POST `body` as application/json to `url` for `duration`, keep-alive; `-t`
/// bounds each request.
fn oha(url: &str, body: &Path, duration: &str) -> anyhow::Result<Sample> {
    crate::bench_util::oha(url, |cmd| {
        cmd.args(["-z", duration])
            .args(["--worker-threads", &WORKERS.to_string()])
            .args(["-c", &CONNECTIONS.to_string()])
            .args(["-t", REQUEST_TIMEOUT])
            .args(["-m", "POST", "-T", "application/json", "-D"])
            .arg(body);
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn report(
    bodies: &[Body],
    micro: &[Micro],
    cells: &[[Runs; 2]],
    load_before: &str,
    load_after: &str,
) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(r, "\n## Validation cost\n")?;
    writeln!(
        r,
        "A JSON Schema for an order (customer, items of {{sku pattern, quantity integer ≥ 1, price}}, \
         notes; `additionalProperties: false`), bodies grown by their items. All bodies are valid.\n"
    )?;
    writeln!(
        r,
        "### In process: one body parsed and validated (`BodyRule::check`, median of {MICRO_BATCHES} batches)\n"
    )?;
    writeln!(
        r,
        "| body | bytes | items | parse only (µs) | parse + validate (µs) | of which validation (µs) | parse + validate (MB/s) |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (b, m) in bodies.iter().zip(micro) {
        writeln!(
            r,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            b.label,
            b.bytes.len(),
            b.items,
            m.parse_ns / 1e3,
            m.check_ns / 1e3,
            (m.check_ns - m.parse_ns) / 1e3,
            b.bytes.len() as f64 / m.check_ns * 1e3
        )?;
    }
    writeln!(
        r,
        "\n### Through the proxy: `/validated` against `/plain` (median of {RUNS} runs)\n"
    )?;
    writeln!(
        r,
        "One Portcullis, **plain HTTP** listener (no TLS, so only validation differs between \
         the routes), two POST routes to the same backend, which reads every body. oha, \
         HTTP/1.1, {CONNECTIONS} keep-alive connections, {MEASURE} per run after a {WARM_UP} \
         warm-up, runs interleaved across all cells. All processes share the machine's cores.\n"
    )?;
    writeln!(
        r,
        "| body | route | requests/s | p50 (ms) | p99 (ms) | errors | requests/s of each run |"
    )?;
    writeln!(r, "|---|---|---:|---:|---:|---:|---|")?;
    for (b, pair) in bodies.iter().zip(cells) {
        for (route, c) in ROUTES.iter().zip(pair) {
            let each: Vec<String> = c.runs.iter().map(|s| format!("{:.0}", s.rps)).collect();
            writeln!(
                r,
                "| {} | /{route} | {:.0} | {:.2} | {:.2} | {} | {} |",
                b.label,
                c.rps(),
                c.p50(),
                c.p99(),
                c.errors(),
                each.join(", ")
            )?;
        }
    }
    writeln!(r, "\n### Validation's share\n")?;
    writeln!(
        r,
        "| body | requests/s validated ÷ plain | p50 difference (ms) | in process parse + validate (µs) |"
    )?;
    writeln!(r, "|---|---:|---:|---:|")?;
    for ((b, [v, p]), m) in bodies.iter().zip(cells).zip(micro) {
        writeln!(
            r,
            "| {} | {:.2} | {:+.2} | {:.1} |",
            b.label,
            v.rps() / p.rps(),
            v.p50() - p.p50(),
            m.check_ns / 1e3
        )?;
    }
    writeln!(
        r,
        "\nLoad average (1, 5, 15 min) before / after the proxy runs: {load_before} / {load_after}."
    )?;
    Ok(r)
}
