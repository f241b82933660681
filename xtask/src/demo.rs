//! `cargo xtask demo`: a short walkthrough of the kernel layer that checks every outcome it
//! shows, so it doubles as a smoke test (non-zero exit when anything differs from expected).
//!
//! It builds three network namespaces joined by veth pairs:
//!
//! ```text
//! pcdemo-client --veth-- pcdemo-gateway (Portcullis, XDP on the client side) --veth-- pcdemo-backend
//! ```
//!
//! writes a small country database, a test PKI and a config, starts `portcullis run` in the
//! gateway namespace, and makes real HTTP requests from chosen client addresses to a tiny server
//! in the backend namespace, routed through the gateway. Allowed clients are answered; the
//! denied range and the geo-blocked country are dropped by XDP; a ban drops a client until it
//! expires; the counters say why. Then the same clients go through the proxy: HTTPS to the
//! gateway, TLS verified against the demo CA, proxied to the backend, which echoes the
//! forwarding headers it received; an unknown path gets a problem document; bearer tokens and
//! roles decide on a route; an API key's burst past its rate limit gets 429 with the budget
//! headers, and a client that keeps failing authentication is banned in the kernel until the
//! ban expires; the admin endpoint shows readiness and metrics. Last, the filter outlives the
//! process.
//!
//! Everything the demo creates (namespaces and their veths, the pins under its own pin root,
//! the gateway process, the temporary directory) is owned by a guard that removes it on drop,
//! so it goes on success, on error and on Ctrl-C: the signal only sets a flag that the demo
//! checks between steps, which then returns an error and lets the guards run.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::identity::api_keys::hash_key;
use portcullis::kernel::{self, Counters, PinLayout};
use portcullis_tests::mmdb_writer::MmdbBuilder;
use portcullis_tests::pki::TestPki;
use rustls::pki_types::ServerName;
use rustls::{ProtocolVersion, RootCertStore};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_rustls::TlsConnector;

mod tokens;

/// The demo's own pin root, so it never touches a real installation's pins.
const PIN_ROOT: &str = "/sys/fs/bpf/portcullis-demo";

/// The temporary directory (config, database, log) starts with this.
const TEMP_PREFIX: &str = "portcullis-demo-";

const NS_CLIENT: &str = "pcdemo-client";
const NS_GATEWAY: &str = "pcdemo-gateway";
const NS_BACKEND: &str = "pcdemo-backend";

/// Veth ends (at most 15 bytes): client <-> gateway, where XDP sits, and gateway <-> backend.
const IF_CLIENT: &str = "pcd-client";
const IF_GW_CLIENT: &str = "pcd-gw-client";
const IF_GW_BACKEND: &str = "pcd-gw-backend";
const IF_BACKEND: &str = "pcd-backend";

const GW_CLIENT_V4: &str = "198.18.0.1";
const GW_CLIENT_V6: &str = "2001:db8:ffff::1";
const GW_BACKEND_V4: &str = "10.20.0.1";
const GW_BACKEND_V6: &str = "fd00:20::1";
const BACKEND_V4: &str = "10.20.0.2";
const BACKEND_V6: &str = "fd00:20::2";
const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;

/// The proxy's admin endpoint, on the loopback of the gateway namespace.
const ADMIN: &str = "127.0.0.1:9901";
/// The name on the gateway's certificate, which clients ask for by SNI and in the request.
const SERVER_NAME: &str = "gateway.demo";
const LISTENER_V4: &str = "public-v4";
const LISTENER_V6: &str = "public-v6";
const POOL: &str = "demo-backend";
const ROUTE: &str = "api";
const ROUTE_PATH: &str = "/api";
const TOKEN_ROUTE: &str = "orders";
const TOKEN_PATH: &str = "/orders";
const CHECKOUT_PATH: &str = "/checkout";
/// The JSON Schema the demo's /checkout route validates orders against.
const ORDER_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["item", "quantity"],
  "properties": {
    "item": { "type": "string", "minLength": 1 },
    "quantity": { "type": "integer", "minimum": 1, "maximum": 100 }
  },
  "additionalProperties": false
}"#;
/// Forwarding headers a client writes about itself; the proxy must believe neither.
const SPOOFED_XFF: &str = "203.0.113.7";
const SPOOFED_ID: &str = "chosen-by-the-client";
/// The whole HTTPS exchange, handshake included, once connected.
const HTTPS_TIMEOUT: Duration = Duration::from_secs(5);
/// What the listeners send by default (`max_age = "365d"`).
const HSTS: &str = "max-age=31536000";

/// Short, so each dropped connection costs the demo one second.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BAN_TTL: Duration = Duration::from_secs(3);

const DENY_SET: &str = "abusers";
const COUNTER_NO_RULE: &str = "pass/no-rule";
const COUNTER_ALLOW: &str = "pass/allow";
const COUNTER_DENY: &str = "drop/deny:abusers";
const COUNTER_GEO: &str = "drop/geo:SE";
const COUNTER_BAN: &str = "drop/ban:manual";
const COUNTER_AUTH_BAN: &str = "drop/ban:auth-failure";

/// Route `limited` needs an API key and allows each key bursts of 5, then one request every 2 s.
const LIMITED_ROUTE: &str = "limited";
const LIMITED_PATH: &str = "/limited";
const RATE_LIMIT: &str = "per-key";
const RATE_BURST: u32 = 5;
/// The key the demo's partner application holds; the key file has only its hash.
const DEMO_KEY: &str = "demo-partner-key-4f7c1e";
const DEMO_KEY_ID: &str = "partner";
/// `[abuse]`: this many failed authentications within a minute ban the client for `ABUSE_BAN`.
const AUTH_THRESHOLD: usize = 5;
const ABUSE_BAN: Duration = Duration::from_secs(3);

/// A source address in the client namespace and who it stands for.
struct Client {
    addr: &'static str,
    about: &'static str,
}

const fn client(addr: &'static str, about: &'static str) -> Client {
    Client { addr, about }
}

const ORDINARY: Client = client("100.64.0.10", "an ordinary client");
const ORDINARY_V6: Client = client("2001:db8:1::10", "an ordinary IPv6 client");
const IN_GB: Client = client("81.2.69.142", "a client in GB");
const IN_SE: Client = client("89.160.20.112", "a client in SE");
const MANAGEMENT: Client = client("89.160.20.200", "the management host, in SE");
const DENIED: Client = client("192.0.2.10", "a client in the denied range");
/// Its own address, so the ban it earns leaves the other clients' steps alone.
const GUESSER: Client = client("100.64.0.66", "a client guessing API keys");
#[rustfmt::skip]
const CLIENTS: [&Client; 7] =
    [&ORDINARY, &ORDINARY_V6, &IN_GB, &IN_SE, &MANAGEMENT, &DENIED, &GUESSER];

/// Runs the walkthrough with the `portcullis` binary at `bin`.
pub fn run(bin: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads XDP programs: run it as root");
    }
    let _lock = single_instance()?;
    interrupt::install();
    remove_leftovers()?;
    let started = Instant::now();
    let mut demo = Demo {
        bin: bin.to_path_buf(),
        checks: Checks::default(),
        subject: String::new(),
    };
    let result = demo.walk_through();
    // The guards inside walk_through have removed everything by now, also on error.
    let (passed, failed) = (demo.checks.passed, &demo.checks.failed);
    println!();
    result?;
    println!(
        "{} of {} checks as expected, in {:.1} s.",
        passed,
        passed + failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "the demo saw unexpected outcomes:\n  - {}",
            failed.join("\n  - ")
        );
    }
    Ok(())
}

struct Demo {
    bin: PathBuf,
    checks: Checks,
    /// What the facts [`verify`](Self::verify) checks are about, for the summary of failures.
    subject: String,
}

impl Demo {
    /// The steps in order. The guards are locals here so they drop (in reverse order: the
    /// process, the pins, the backend, the namespaces, the files) however this returns.
    fn walk_through(&mut self) -> anyhow::Result<()> {
        println!("Portcullis demo: the XDP layer drops denied, geo-blocked and banned clients");
        println!("before they reach the network stack; the proxy terminates TLS for the rest and");
        println!("forwards their requests to the backend. Everything below runs in network");
        println!("namespaces this demo creates and removes again.");

        heading("1. Topology");
        let dir = tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir()?;
        let topology = Topology::create()?;
        let backend = Backend::start()?;
        print_topology();

        heading("2. Configuration");
        // A CA of its own: the gateway's certificate chains to it, the clients trust only it.
        let pki = TestPki::new("demo");
        let issuer = tokens::Issuer::new()?;
        let config = write_config(dir.path(), &pki, &issuer)?;
        self.check_config(&config)?;
        // Before the start, so the pins go even if the process dies half-way through loading.
        let pins = Pins;
        let mut gateway = Gateway::start(&self.bin, &config, &dir.path().join("portcullis.log"))?;
        gateway.wait_attached()?;

        heading("3. Traffic from the clients to the backend");
        println!(
            "  Each client sends GET / through the gateway. XDP judges the source of every packet"
        );
        println!("  arriving on {IF_GW_CLIENT}: allow list, then bans, deny sets, countries.");
        self.allowed_and_denied()?;
        self.geo_blocking()?;
        self.ban_and_expiry()?;
        println!();
        self.must(&["stats", "--pin-root", PIN_ROOT])?;

        heading("4. HTTPS through the proxy");
        self.through_the_proxy(&pki.roots(), &mut gateway)?;

        heading("5. Bearer tokens and roles");
        self.tokens(&pki.roots(), &issuer, &mut gateway)?;

        heading("6. Request validation");
        self.validation(&pki.roots())?;

        heading("7. Rate limits and abuse bans");
        self.limits_and_bans(&pki.roots(), &mut gateway)?;

        heading("8. The admin endpoint");
        self.admin_endpoint()?;

        heading("9. Protection survives the process");
        println!("  The program, its maps and the XDP link are pinned in bpffs ({PIN_ROOT}),");
        println!(
            "  so they outlive `portcullis run`: a crash or a restart does not open the gate."
        );
        self.survives_the_process(&mut gateway)?;
        self.detach()?;

        heading("10. Clean-up");
        drop(gateway);
        drop(pins);
        drop(backend);
        println!("  backend server stopped");
        drop(topology);
        drop(dir);
        self.nothing_left_behind();
        Ok(())
    }

    fn check_config(&mut self, config: &Path) -> anyhow::Result<()> {
        println!("  {}:", config.display());
        for line in std::fs::read_to_string(config)?.lines() {
            println!("  | {line}");
        }
        println!();
        let ok = self.show(&["check", "-c", &config.display().to_string()])?;
        self.checks
            .record(ok, "`portcullis check` accepts the demo config");
        if !ok {
            bail!("the demo config was refused");
        }
        Ok(())
    }

    fn allowed_and_denied(&mut self) -> anyhow::Result<()> {
        self.answered(&ORDINARY, "no rule matches it", COUNTER_NO_RULE)?;
        self.answered(
            &ORDINARY_V6,
            "IPv6 is filtered too; no rule matches it",
            COUNTER_NO_RULE,
        )?;
        self.dropped(
            &DENIED,
            "deny set `abusers` holds 192.0.2.0/24",
            COUNTER_DENY,
        )
    }

    fn geo_blocking(&mut self) -> anyhow::Result<()> {
        self.answered(&IN_GB, "GB is not blocked", COUNTER_NO_RULE)?;
        self.dropped(&IN_SE, "geo-blocked: SE", COUNTER_GEO)?;
        self.answered(
            &MANAGEMENT,
            "the allow list comes before geo-blocking",
            COUNTER_ALLOW,
        )
    }

    fn ban_and_expiry(&mut self) -> anyhow::Result<()> {
        println!();
        let banned_at = Instant::now();
        let ttl = format!("{}s", BAN_TTL.as_secs());
        let reason = ["--reason", "manual", "--pin-root", PIN_ROOT];
        self.must(&[&["ban", "add", ORDINARY.addr, "--ttl", &ttl][..], &reason].concat())?;
        self.must(&["ban", "list", "--pin-root", PIN_ROOT])?;
        self.dropped(&ORDINARY, "banned for a few seconds", COUNTER_BAN)?;

        // The program compares each ban's expiry with the clock itself, so the ban stops
        // applying at its deadline even before the daemon's sweep removes the entry.
        println!();
        println!("  waiting for the ban to expire...");
        let expiry = BAN_TTL + Duration::from_millis(300);
        interrupt::pause(expiry.saturating_sub(banned_at.elapsed()))?;
        self.answered(&ORDINARY, "the ban has expired", COUNTER_NO_RULE)
    }

    /// HTTPS from the clients to the proxy on the gateway, which forwards `/api` to the backend.
    fn through_the_proxy(
        &mut self,
        roots: &Arc<RootCertStore>,
        gateway: &mut Gateway,
    ) -> anyhow::Result<()> {
        println!(
            "  The gateway also terminates TLS, on {GW_CLIENT_V4}:{HTTPS_PORT} and [{GW_CLIENT_V6}]:{HTTPS_PORT}, and"
        );
        println!(
            "  forwards https://{SERVER_NAME}{ROUTE_PATH}/... to the backend (route `{ROUTE}`, pool `{POOL}`)."
        );
        println!("  The clients trust only the demo CA, ask for {SERVER_NAME} by SNI and offer");
        println!("  ALPN h2 and http/1.1, like a browser. The backend answers with the forwarding");
        println!("  headers it received.");

        // The client claims another address and picks its own request id. It is no trusted
        // proxy, so the proxy believes neither: the backend must see the real client and the
        // proxy's own id.
        let spoofed = [
            ("x-forwarded-for", SPOOFED_XFF),
            ("x-request-id", SPOOFED_ID),
        ];
        if let Some(reply) = self.https(&ORDINARY, &Method::GET, "/api/hello", &spoofed, roots)? {
            self.proxied(&ORDINARY, &reply, true);
        }
        if let Some(reply) = self.https(&ORDINARY_V6, &Method::GET, "/api/hello", &[], roots)? {
            self.proxied(&ORDINARY_V6, &reply, false);
        }
        if let Some(reply) = self.https(&ORDINARY, &Method::GET, "/wp-login.php", &[], roots)? {
            self.not_found(&reply);
        }
        self.handshake_dropped(
            &IN_SE,
            "geo-blocked: SE; the proxy never sees it",
            COUNTER_GEO,
        )?;

        println!();
        println!("  The gateway's access log, one JSON line per request:");
        for line in gateway.new_log_lines() {
            println!("  | {line}");
        }
        Ok(())
    }

    /// Tokens on `/orders`: a reader's token reads (its subject reaches the backend as
    /// X-User-Id), no token is 401 with a Bearer challenge, and the reader's POST is 403.
    fn tokens(
        &mut self,
        roots: &Arc<RootCertStore>,
        issuer: &tokens::Issuer,
        gateway: &mut Gateway,
    ) -> anyhow::Result<()> {
        println!(
            "  Route `{TOKEN_ROUTE}` ({TOKEN_PATH}) needs a bearer token from `demo-idp`: role API.Read"
        );
        println!("  or API.Write to read, API.Write to write. The demo's identity provider signs");
        println!("  tokens (ES256, RFC 9068) with the key whose public half is in idp-jwks.json.");
        let reader = issuer.token("reporting-app", &["API.Read"])?;
        let bearer = format!("Bearer {reader}");
        let path = format!("{TOKEN_PATH}/42");

        if let Some(reply) = self.https(
            &ORDINARY,
            &Method::GET,
            &path,
            &[("authorization", &bearer)],
            roots,
        )? {
            let from_backend = reply.body.starts_with("hello from the backend");
            self.verify(
                reply.status == StatusCode::OK && from_backend,
                "a reader's GET",
                "200 OK from the backend",
                &reply.status.to_string(),
            );
            let user = echoed(&reply.body, "x-user-id");
            self.verify(
                user == Some("reporting-app"),
                "x-user-id at the backend",
                "reporting-app (the token's sub)",
                user.unwrap_or("none"),
            );
        }
        if let Some(reply) = self.https(&ORDINARY, &Method::GET, &path, &[], roots)? {
            let challenge = reply.header(header::WWW_AUTHENTICATE.as_str());
            self.verify(
                reply.status == StatusCode::UNAUTHORIZED
                    && challenge.is_some_and(|c| c.starts_with("Bearer")),
                "no token",
                "401 with WWW-Authenticate: Bearer",
                &format!("{} {}", reply.status, challenge.unwrap_or("(no challenge)")),
            );
        }
        if let Some(reply) = self.https(
            &ORDINARY,
            &Method::POST,
            &path,
            &[("authorization", &bearer)],
            roots,
        )? {
            let challenge = reply.header(header::WWW_AUTHENTICATE.as_str());
            self.verify(
                reply.status == StatusCode::FORBIDDEN
                    && challenge.is_some_and(|c| c.contains("insufficient_scope")),
                "a reader's POST",
                "403 with error=\"insufficient_scope\"",
                &format!("{} {}", reply.status, challenge.unwrap_or("(no challenge)")),
            );
        }
        println!();
        println!("  The access log names the rule that refused, never the token:");
        for line in gateway.new_log_lines() {
            println!("  | {line}");
        }
        Ok(())
    }

    /// Route `limited`: a burst past the key's rate limit is answered 429 with the budget
    /// headers; a client failing authentication again and again is banned in the kernel, its
    /// packets are dropped until the ban expires, and then it is served again.
    fn limits_and_bans(
        &mut self,
        roots: &Arc<RootCertStore>,
        gateway: &mut Gateway,
    ) -> anyhow::Result<()> {
        println!(
            "  Route `{LIMITED_ROUTE}` ({LIMITED_PATH}) needs an API key (header Ocp-Apim-Subscription-Key);"
        );
        println!(
            "  rate limit `{RATE_LIMIT}` allows each key bursts of {RATE_BURST}, then one request every 2 s."
        );
        println!(
            "  [abuse] bans a client in the kernel for {} s after {AUTH_THRESHOLD} failed authentications",
            ABUSE_BAN.as_secs()
        );
        println!("  within 60 s.");
        self.rate_limited(roots)?;
        self.abuse_ban(roots)?;
        println!();
        println!("  The gateway's security events and refusals in its log:");
        for line in gateway
            .new_log_lines()
            .into_iter()
            .filter(|l| l.contains("abuse_ban") || l.contains("\"status\":429"))
        {
            println!("  | {line}");
        }
        Ok(())
    }

    /// A burst of requests with one key: the first `RATE_BURST` pass, the rest get 429.
    fn rate_limited(&mut self, roots: &Arc<RootCertStore>) -> anyhow::Result<()> {
        let path = format!("{LIMITED_PATH}/report");
        let sent = RATE_BURST + 2;
        println!();
        println!(
            "  {} ({}): {sent} x GET https://{SERVER_NAME}{path} at once, with the key of `{DEMO_KEY_ID}`",
            ORDINARY.addr, ORDINARY.about
        );
        self.subject = format!("{}: a burst of {sent} with one key: ", ORDINARY.addr);
        let key = [("ocp-apim-subscription-key", DEMO_KEY)];
        let mut statuses = Vec::new();
        let mut refused = None;
        for i in 1..=sent {
            let Some(reply) = self.https_quiet(&ORDINARY, &Method::GET, &path, &key, roots)? else {
                println!("    {i}: no answer");
                statuses.push("none".to_string());
                continue;
            };
            println!(
                "    {i}: < {}   RateLimit: {}",
                reply.status,
                reply.header("ratelimit").unwrap_or("(none)")
            );
            statuses.push(reply.status.as_u16().to_string());
            if reply.status == StatusCode::TOO_MANY_REQUESTS && refused.is_none() {
                refused = Some(reply);
            }
        }
        let expected: Vec<String> = (1..=sent)
            .map(|i| if i <= RATE_BURST { "200" } else { "429" }.to_string())
            .collect();
        self.verify(
            statuses == expected,
            "statuses",
            &expected.join(" "),
            &statuses.join(" "),
        );
        let Some(reply) = refused else {
            return Ok(());
        };
        println!();
        println!("    the first 429:");
        for name in [
            header::RETRY_AFTER.as_str(),
            "ratelimit-policy",
            "ratelimit",
            header::CONTENT_TYPE.as_str(),
        ] {
            println!("    < {name}: {}", reply.header(name).unwrap_or("(none)"));
        }
        println!("    <");
        for line in reply.pretty_body().lines() {
            println!("    | {line}");
        }
        // One request every 2 s: the next is admitted in at most 2 s, rounded up to seconds.
        let retry = reply.header(header::RETRY_AFTER.as_str());
        self.verify(
            retry
                .and_then(|r| r.parse::<u32>().ok())
                .is_some_and(|r| (1..=2).contains(&r)),
            "retry-after",
            "1 or 2 (seconds until the next request is admitted)",
            retry.unwrap_or("none"),
        );
        let policy = reply.header("ratelimit-policy");
        let wanted = format!("\"{RATE_LIMIT}\";q={RATE_BURST};w=10");
        self.verify(
            policy == Some(wanted.as_str()),
            "ratelimit-policy",
            &wanted,
            policy.unwrap_or("none"),
        );
        let budget = reply.header("ratelimit");
        let prefix = format!("\"{RATE_LIMIT}\";r=0;t=");
        self.verify(
            budget.is_some_and(|b| b.starts_with(&prefix)),
            "ratelimit",
            &format!("{prefix}<seconds>"),
            budget.unwrap_or("none"),
        );
        Ok(())
    }

    /// Made-up keys from [`GUESSER`] until the threshold: the ban reaches the kernel map, the
    /// next SYN is dropped, `ban list` names the reason, and after the ban access returns.
    fn abuse_ban(&mut self, roots: &Arc<RootCertStore>) -> anyhow::Result<()> {
        let path = format!("{LIMITED_PATH}/report");
        println!();
        println!(
            "  {} ({}): GET https://{SERVER_NAME}{path} with {AUTH_THRESHOLD} made-up keys",
            GUESSER.addr, GUESSER.about
        );
        self.subject = format!("{}: made-up keys: ", GUESSER.addr);
        let mut statuses = Vec::new();
        let mut last_answer = Instant::now();
        for i in 1..=AUTH_THRESHOLD {
            let guess = format!("guess-{i:04}");
            let key = [("ocp-apim-subscription-key", guess.as_str())];
            let reply = self.https_quiet(&GUESSER, &Method::GET, &path, &key, roots)?;
            last_answer = Instant::now();
            let status = reply.map_or("none".to_string(), |r| r.status.as_u16().to_string());
            println!("    {i}: > ocp-apim-subscription-key: {guess}   < {status}");
            statuses.push(status);
        }
        let expected = vec!["401".to_string(); AUTH_THRESHOLD];
        self.verify(
            statuses == expected,
            "statuses",
            &expected.join(" "),
            &statuses.join(" "),
        );

        // The ban is decided on the request path and written to the map by another thread.
        let src: IpAddr = GUESSER.addr.parse()?;
        let bans = kernel::Bans::open(&PinLayout::new(Path::new(PIN_ROOT)))?;
        let reason = loop {
            let found = bans.lookup(src)?;
            if found.is_some() || last_answer.elapsed() > Duration::from_secs(1) {
                break found;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let banned_at = Instant::now();
        let in_map = last_answer.elapsed();
        let got = match reason {
            Some(r) => format!(
                "{}, {:.2} ms after the last 401 arrived",
                r.name(),
                in_map.as_secs_f64() * 1000.0
            ),
            None => "no ban within 1 s".to_string(),
        };
        self.verify(
            reason == Some(kernel::BanReason::AuthFailure),
            "kernel ban map",
            "a ban with reason auth-failure within 1 s",
            &got,
        );
        self.handshake_dropped(
            &GUESSER,
            "banned for failing authentication",
            COUNTER_AUTH_BAN,
        )?;

        println!();
        let (_, listed) = self.show_output(&["ban", "list", "--pin-root", PIN_ROOT])?;
        self.subject = "`portcullis ban list`: ".to_string();
        let line = listed.lines().find(|l| l.contains(GUESSER.addr));
        self.verify(
            line.is_some_and(|l| l.contains("auth-failure")),
            &format!("the entry for {}", GUESSER.addr),
            "reason auth-failure",
            line.map_or("no entry", str::trim),
        );

        println!();
        println!("  waiting for the ban to expire...");
        let expiry = ABUSE_BAN + Duration::from_millis(300);
        interrupt::pause(expiry.saturating_sub(banned_at.elapsed()))?;
        // With the right key now: the key's budget has refilled since the burst (one every
        // 2 s), and route `api` stays out of it (step 7 counts that route's answers).
        let key = [("ocp-apim-subscription-key", DEMO_KEY)];
        if let Some(reply) = self.https(&GUESSER, &Method::GET, &path, &key, roots)? {
            let from_backend = reply.body.starts_with("hello from the backend");
            self.verify(
                reply.status == StatusCode::OK && from_backend,
                "after the ban",
                "200 OK from the backend (the ban has expired)",
                &reply.status.to_string(),
            );
        }
        Ok(())
    }

    /// One HTTPS request like [`https`](Self::https) without printing the exchange; `None`
    /// when the connect timed out, an error when the exchange failed.
    fn https_quiet(
        &mut self,
        client: &Client,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
        roots: &Arc<RootCertStore>,
    ) -> anyhow::Result<Option<HttpsReply>> {
        interrupt::check()?;
        let src: IpAddr = client.addr.parse()?;
        let dst = proxy_address(src);
        let roots = Arc::clone(roots);
        in_netns(NS_CLIENT, move || {
            https_request(src, dst, method, path, headers, None, roots)
        })?
    }

    /// Route `/checkout` validates orders against a JSON Schema: a valid order reaches the
    /// backend, an invalid one is refused with 400 naming the field, never echoing the value.
    fn validation(&mut self, roots: &Arc<RootCertStore>) -> anyhow::Result<()> {
        println!(
            "  Route `checkout` ({CHECKOUT_PATH}) accepts POST with a JSON order that matches"
        );
        println!("  order.schema.json: an item and a quantity from 1 to 100, nothing else.");
        let json = [("content-type", "application/json")];
        let good = r#"{"item":"lantern","quantity":2}"#;
        if let Some(reply) = self.https_with_body(
            &ORDINARY,
            &Method::POST,
            CHECKOUT_PATH,
            &json,
            Some(good),
            roots,
        )? {
            let from_backend = reply.body.starts_with("hello from the backend");
            self.verify(
                reply.status == StatusCode::OK && from_backend,
                "a valid order",
                "200 OK from the backend",
                &reply.status.to_string(),
            );
        }
        let bad = r#"{"item":"lantern","quantity":"lots-secret-value"}"#;
        if let Some(reply) = self.https_with_body(
            &ORDINARY,
            &Method::POST,
            CHECKOUT_PATH,
            &json,
            Some(bad),
            roots,
        )? {
            let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
            let named = problem["failures"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x["location"] == "/quantity"));
            self.verify(
                reply.status == StatusCode::BAD_REQUEST
                    && problem["code"] == "validation_failed"
                    && named,
                "an order with a quantity that is not a number",
                "400 validation_failed naming /quantity",
                &format!("{} {}", reply.status, problem["code"]),
            );
            self.verify(
                !reply.body.contains("lots-secret-value"),
                "the refused value",
                "never echoed in the problem body",
                if reply.body.contains("lots-secret-value") {
                    "echoed"
                } else {
                    "not echoed"
                },
            );
        }
        Ok(())
    }

    /// `GET https://gateway.demo<path>` from `client` to the proxy, with `headers` added; prints
    /// the exchange like `curl -v`. `None` (and a failed check) when nothing usable came back.
    fn https(
        &mut self,
        client: &Client,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
        roots: &Arc<RootCertStore>,
    ) -> anyhow::Result<Option<HttpsReply>> {
        self.https_with_body(client, method, path, headers, None, roots)
    }

    /// [`Demo::https`] with a request body.
    fn https_with_body(
        &mut self,
        client: &Client,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        roots: &Arc<RootCertStore>,
    ) -> anyhow::Result<Option<HttpsReply>> {
        interrupt::check()?;
        let src: IpAddr = client.addr.parse()?;
        let dst = proxy_address(src);
        let roots = Arc::clone(roots);
        let started = Instant::now();
        let result = in_netns(NS_CLIENT, move || {
            https_request(src, dst, method, path, headers, body, roots)
        })?;
        let took = started.elapsed();

        println!();
        println!(
            "  {} ({}): {method} https://{SERVER_NAME}{path}, connecting to {dst}",
            client.addr, client.about
        );
        self.subject = format!("{}: {method} https://{SERVER_NAME}{path}: ", client.addr);
        let reply = match result {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                self.verify(
                    false,
                    "the connection",
                    "established",
                    "no answer; the connect timed out",
                );
                return Ok(None);
            }
            Err(e) => {
                self.verify(false, "the exchange", "a response", &format!("{e:#}"));
                return Ok(None);
            }
        };
        println!(
            "    * {}, ALPN {}, certificate for {SERVER_NAME} verified against the demo CA",
            reply.tls, reply.alpn
        );
        println!("    > {method} {path} {}", http_version(reply.version));
        for (name, value) in headers {
            println!("    > {name}: {}", shorten(value));
        }
        println!(
            "    < {} {} (in {} ms)",
            http_version(reply.version),
            reply.status,
            took.as_millis()
        );
        for name in [
            header::STRICT_TRANSPORT_SECURITY.as_str(),
            header::WWW_AUTHENTICATE.as_str(),
            "x-request-id",
            header::CONTENT_TYPE.as_str(),
        ] {
            if let Some(value) = reply.header(name) {
                println!("    < {name}: {value}");
            }
        }
        println!("    <");
        for line in reply.pretty_body().lines() {
            println!("    | {line}");
        }
        Ok(Some(reply))
    }

    /// Checks a request the proxy forwarded to the backend for `client`. With `spoofed`, the
    /// client had sent its own X-Forwarded-For and X-Request-Id.
    fn proxied(&mut self, client: &Client, reply: &HttpsReply, spoofed: bool) {
        let tls = format!("{}, ALPN {}", reply.tls, reply.alpn);
        self.verify(tls == "TLS 1.3, ALPN h2", "TLS", "TLS 1.3, ALPN h2", &tls);
        let from_backend = reply.body.starts_with("hello from the backend");
        let status = format!(
            "{}{}",
            reply.status,
            if from_backend {
                " from the backend"
            } else {
                ""
            }
        );
        self.verify(
            reply.status == StatusCode::OK && from_backend,
            "status",
            "200 OK from the backend",
            &status,
        );
        let hsts = reply.header(header::STRICT_TRANSPORT_SECURITY.as_str());
        self.verify(
            hsts == Some(HSTS),
            "strict-transport-security",
            HSTS,
            hsts.unwrap_or("none"),
        );
        let xff = echoed(&reply.body, "x-forwarded-for");
        let expected = if spoofed {
            format!("{}, the real client (not {SPOOFED_XFF})", client.addr)
        } else {
            format!("{}, the real client", client.addr)
        };
        self.verify(
            xff == Some(client.addr),
            "x-forwarded-for at the backend",
            &expected,
            xff.unwrap_or("none"),
        );
        let id = reply.header("x-request-id");
        let at_backend = echoed(&reply.body, "x-request-id");
        let fresh = id.is_some_and(|id| id != SPOOFED_ID && !id.is_empty());
        let got = match (id, at_backend) {
            (Some(a), Some(b)) if a == b => format!("{a} at both"),
            (a, b) => format!(
                "{} in the response, {} at the backend",
                a.unwrap_or("none"),
                b.unwrap_or("none")
            ),
        };
        let expected = if spoofed {
            format!("the proxy's own (not {SPOOFED_ID}), the same at the backend")
        } else {
            "the proxy's own, the same at the backend".to_string()
        };
        self.verify(fresh && id == at_backend, "x-request-id", &expected, &got);
    }

    /// Checks the answer to a path no route matches: a problem document from the proxy itself.
    fn not_found(&mut self, reply: &HttpsReply) {
        let content_type = reply.header(header::CONTENT_TYPE.as_str());
        let got = format!("{} {}", reply.status, content_type.unwrap_or("(no type)"));
        self.verify(
            reply.status == StatusCode::NOT_FOUND
                && content_type == Some("application/problem+json"),
            "answer",
            "404 Not Found application/problem+json",
            &got,
        );
        let problem: Option<serde_json::Value> = serde_json::from_str(&reply.body).ok();
        let in_body = problem
            .as_ref()
            .and_then(|p| p.get("request_id"))
            .and_then(serde_json::Value::as_str);
        let id = reply.header("x-request-id");
        self.verify(
            in_body.is_some() && in_body == id,
            "request_id in the body",
            "the response's x-request-id",
            &format!(
                "{} (header {})",
                in_body.unwrap_or("none"),
                id.unwrap_or("none")
            ),
        );
    }

    /// The admin endpoint, fetched from inside the gateway namespace.
    fn admin_endpoint(&mut self) -> anyhow::Result<()> {
        println!("  /live, /ready, /metrics, bans and reload on {ADMIN}: loopback in the gateway");
        println!("  namespace, so no client can reach it.");
        println!();
        self.subject = "admin endpoint: ".to_string();
        let ready = admin_get("/ready", "")?;
        let (ok, got) = match &ready {
            Outcome::Answered { status, body } => (
                status.starts_with("HTTP/1.1 200 ") && body.trim() == "ready",
                format!("{status} {:?}", body.trim()),
            ),
            other => (false, other.describe(Duration::ZERO)),
        };
        self.verify(ok, "/ready", "HTTP/1.1 200 OK \"ready\"", &got);

        println!();
        let wanted = [
            "portcullis_requests_total",
            "portcullis_kernel_packets_total{verdict=\"drop\"",
        ];
        let metrics = admin_get(
            "/metrics",
            r#" | grep -E '^portcullis_(requests_total|kernel_packets_total\{verdict="drop")' | sort"#,
        )?;
        let text = match &metrics {
            Outcome::Answered { status, body } if status.starts_with("HTTP/1.1 200 ") => body,
            Outcome::Answered { status, .. } => {
                self.verify(false, "/metrics", "HTTP/1.1 200 OK", status);
                return Ok(());
            }
            other => {
                let got = other.describe(Duration::ZERO);
                self.verify(false, "/metrics", "HTTP/1.1 200 OK", &got);
                return Ok(());
            }
        };
        // Sorted: the exposition's order within a family is not stable.
        let mut shown: Vec<&str> = text
            .lines()
            .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
            .collect();
        shown.sort_unstable();
        for line in shown {
            println!("    {line}");
        }
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or("none")
                .to_string()
        };
        let ok_2xx = value(&format!(
            "portcullis_requests_total{{route=\"{ROUTE}\",status_class=\"2xx\"}}"
        ));
        self.verify(
            ok_2xx == "2",
            &format!("2xx on route `{ROUTE}`"),
            "2 (IPv4 and IPv6)",
            &ok_2xx,
        );
        let unrouted = value("portcullis_requests_total{route=\"-\",status_class=\"4xx\"}");
        self.verify(
            unrouted == "1",
            "4xx without a route",
            "1 (the 404)",
            &unrouted,
        );
        let geo = value("portcullis_kernel_packets_total{verdict=\"drop\",reason=\"geo:SE\"}");
        let pinned = read_counter(COUNTER_GEO)?.to_string();
        self.verify(
            geo == pinned,
            "kernel drops for geo:SE",
            &format!("{pinned}, as `portcullis stats` reads them"),
            &geo,
        );
        Ok(())
    }

    /// Prints and records one checked fact.
    fn verify(&mut self, ok: bool, what: &str, expected: &str, got: &str) {
        println!("    {} {what}: expected {expected}; got {got}", mark(ok));
        let subject = &self.subject;
        self.checks.record(
            ok,
            &format!("{subject}{what}: expected {expected}, got {got}"),
        );
    }

    fn survives_the_process(&mut self, gateway: &mut Gateway) -> anyhow::Result<()> {
        println!("  $ kill -TERM {}", gateway.child.id());
        let status = gateway.stop()?;
        for line in gateway.new_log_lines() {
            println!("  | {line}");
        }
        println!("  portcullis exited: {status}");
        self.checks
            .record(status.success(), "portcullis exits cleanly on SIGTERM");
        println!();
        self.must(&["stats", "--pin-root", PIN_ROOT])?;
        let layout = PinLayout::new(Path::new(PIN_ROOT));
        let attached = !kernel::attachments(&layout)?.is_empty();
        self.checks
            .record(attached, "the XDP link stays pinned after the process ends");
        self.dropped(&DENIED, "the pinned filter still enforces", COUNTER_DENY)?;
        self.answered(&IN_GB, "no rule matches it", COUNTER_NO_RULE)
    }

    fn detach(&mut self) -> anyhow::Result<()> {
        println!();
        self.must(&["detach", "--pin-root", PIN_ROOT])?;
        let xdp_gone = xdp_attached(NS_GATEWAY, IF_GW_CLIENT) == Some(false);
        let gone = xdp_gone && !Path::new(PIN_ROOT).exists();
        self.checks
            .record(gone, "`portcullis detach` removes the filter and its pins");
        self.probe(&DENIED, Expect::Answered("no filter any more"), None)
    }

    fn nothing_left_behind(&mut self) {
        let left: Vec<&str> = [NS_CLIENT, NS_GATEWAY, NS_BACKEND]
            .into_iter()
            .filter(|ns| netns_path(ns).exists())
            .chain(Path::new(PIN_ROOT).exists().then_some(PIN_ROOT))
            .collect();
        if left.is_empty() {
            println!("  namespaces {NS_CLIENT}, {NS_GATEWAY}, {NS_BACKEND} removed; nothing left");
        } else {
            println!("  still present: {}", left.join(", "));
        }
        self.checks
            .record(left.is_empty(), "the demo leaves nothing behind");
    }

    fn answered(
        &mut self,
        client: &Client,
        why: &'static str,
        counter: &str,
    ) -> anyhow::Result<()> {
        self.probe(client, Expect::Answered(why), Some(counter))
    }

    fn dropped(&mut self, client: &Client, why: &'static str, counter: &str) -> anyhow::Result<()> {
        self.probe(client, Expect::Dropped(why), Some(counter))
    }

    /// Requests `GET /` from the backend with `client`'s address as the source, and checks the
    /// outcome and that `counter` (the kernel's reason for its verdict) went up.
    fn probe(
        &mut self,
        client: &Client,
        expect: Expect,
        counter: Option<&str>,
    ) -> anyhow::Result<()> {
        let src: IpAddr = client.addr.parse()?;
        let dst = backend_address(src);
        let action = format!("GET http://{dst}/");
        self.judge(client, &action, expect, counter, move || request(src, dst))
    }

    /// Opens a TCP connection to the proxy from `client`, which XDP should drop before the
    /// handshake completes, and checks that `counter` went up.
    fn handshake_dropped(
        &mut self,
        client: &Client,
        why: &'static str,
        counter: &str,
    ) -> anyhow::Result<()> {
        let src: IpAddr = client.addr.parse()?;
        let dst = proxy_address(src);
        let action = format!("TCP connect to the proxy, {dst}");
        let attempt = move || match connect(src, dst) {
            Ok(None) => Outcome::NoAnswer,
            Ok(Some(_)) => Outcome::Connected,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.judge(
            client,
            &action,
            Expect::Dropped(why),
            Some(counter),
            attempt,
        )
    }

    /// Runs `attempt` in the client namespace; checks its outcome and that `counter` went up.
    fn judge(
        &mut self,
        client: &Client,
        action: &str,
        expect: Expect,
        counter: Option<&str>,
        attempt: impl FnOnce() -> Outcome + Send,
    ) -> anyhow::Result<()> {
        interrupt::check()?;
        let before = counter.map(read_counter).transpose()?;
        let started = Instant::now();
        let outcome = in_netns(NS_CLIENT, attempt)?;
        let took = started.elapsed();
        let after = counter.map(read_counter).transpose()?;
        let ok = expect.met_by(&outcome) && before.zip(after).is_none_or(|(b, a)| a > b);

        let who = format!("{} ({})", client.addr, client.about);
        println!();
        println!("  {} {who}: {action}", mark(ok));
        println!("         expected: {}", expect.describe());
        println!("         got:      {}", outcome.describe(took));
        if let (Some(name), Some(before), Some(after)) = (counter, before, after) {
            println!("         counter {name}: {before} -> {after} packets");
        }
        self.checks
            .record(ok, &format!("{who}: expected {}", expect.describe()));
        Ok(())
    }

    /// Runs a `portcullis` command and prints it and its output; returns whether it succeeded.
    fn show(&self, args: &[&str]) -> anyhow::Result<bool> {
        Ok(self.show_output(args)?.0)
    }

    /// [`show`](Self::show), also returning what the command printed on stdout.
    fn show_output(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        println!("  $ portcullis {}", args.join(" "));
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        for line in stdout.lines().chain(stderr.lines()) {
            println!("    {line}");
        }
        Ok((out.status.success(), stdout.into_owned()))
    }

    /// [`show`](Self::show) for a command the demo cannot go on without.
    fn must(&self, args: &[&str]) -> anyhow::Result<()> {
        if !self.show(args)? {
            bail!("`portcullis {}` failed", args.join(" "));
        }
        Ok(())
    }
}

fn heading(title: &str) {
    println!();
    println!("== {title}");
}

fn mark(ok: bool) -> &'static str {
    if ok { "[ OK ]" } else { "[FAIL]" }
}

fn print_topology() {
    println!("  {NS_CLIENT}     client addresses (one namespace speaks for all of them):");
    for c in CLIENTS {
        println!("    {:<16} {}", c.addr, c.about);
    }
    println!("      | veth {IF_CLIENT} <-> {IF_GW_CLIENT}   (Portcullis attaches XDP here)");
    println!(
        "  {NS_GATEWAY}    {GW_CLIENT_V4}, {GW_CLIENT_V6}; routes between clients and backend,"
    );
    println!("                    and proxies HTTPS on port {HTTPS_PORT} (step 4)");
    println!("      | veth {IF_GW_BACKEND} <-> {IF_BACKEND}");
    println!(
        "  {NS_BACKEND}    HTTP server on {BACKEND_V4}:{HTTP_PORT} and [{BACKEND_V6}]:{HTTP_PORT}"
    );
}

/// Which outcome a probe expects, and why.
#[derive(Clone, Copy)]
enum Expect {
    Answered(&'static str),
    Dropped(&'static str),
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Expect::Answered(why) => format!("answered with 200 ({why})"),
            Expect::Dropped(why) => format!("dropped by XDP, so the connect times out ({why})"),
        }
    }

    fn met_by(self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Expect::Answered(_), Outcome::Answered { status, .. }) => {
                status.starts_with("HTTP/1.1 200 ")
            }
            (Expect::Dropped(_), Outcome::NoAnswer) => true,
            _ => false,
        }
    }
}

/// What a request got.
enum Outcome {
    Answered {
        status: String,
        body: String,
    },
    /// The connect timed out: nothing came back.
    NoAnswer,
    /// The TCP handshake completed (and nothing more was tried).
    Connected,
    Failed(String),
}

impl Outcome {
    fn describe(&self, took: Duration) -> String {
        match self {
            Outcome::Answered { status, body } => {
                format!("{status} {:?} in {} ms", body.trim(), took.as_millis())
            }
            Outcome::NoAnswer => format!(
                "no answer; connect timed out after {:.1} s",
                took.as_secs_f64()
            ),
            Outcome::Connected => format!("the TCP handshake completed in {} ms", took.as_millis()),
            Outcome::Failed(e) => format!("error: {e}"),
        }
    }
}

/// A TCP connection from `src` to `dst`, made in the calling thread's namespace; `None` when
/// the connect timed out.
fn connect(src: IpAddr, dst: SocketAddr) -> io::Result<Option<TcpStream>> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    // std's TcpStream cannot choose its source address; the client's identity is its source.
    socket.bind(&SocketAddr::new(src, 0).into())?;
    match socket.connect_timeout(&dst.into(), CONNECT_TIMEOUT) {
        Ok(()) => Ok(Some(TcpStream::from(socket))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `GET /` from the backend over a TCP connection made from `src` (run inside the client netns).
fn request(src: IpAddr, dst: SocketAddr) -> Outcome {
    get(src, dst, "backend", "/")
}

/// One plain HTTP/1.1 `GET path` over a new TCP connection from `src` to `dst`.
fn get(src: IpAddr, dst: SocketAddr, host: &str, path: &str) -> Outcome {
    let attempt = || -> io::Result<Option<String>> {
        let Some(mut stream) = connect(src, dst)? else {
            return Ok(None);
        };
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(Some(response))
    };
    match attempt() {
        Ok(None) => Outcome::NoAnswer,
        Ok(Some(response)) => {
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            Outcome::Answered {
                status: head.lines().next().unwrap_or("").to_string(),
                body: body.to_string(),
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// `GET http://ADMIN<path>` from inside the gateway namespace; prints the body (`shown` is
/// the shell filter the printed command claims, for /metrics).
fn admin_get(path: &str, shown: &str) -> anyhow::Result<Outcome> {
    interrupt::check()?;
    println!("  $ nsenter --net=/var/run/netns/{NS_GATEWAY} curl -s http://{ADMIN}{path}{shown}");
    let dst: SocketAddr = ADMIN.parse()?;
    let outcome = in_netns(NS_GATEWAY, move || get(dst.ip(), dst, ADMIN, path))?;
    if let (Outcome::Answered { body, .. }, "") = (&outcome, shown) {
        for line in body.lines() {
            println!("    {line}");
        }
    }
    Ok(outcome)
}

/// What the demo's HTTPS client got back.
struct HttpsReply {
    /// The negotiated protocol version, as `TLS 1.3`.
    tls: String,
    /// The negotiated ALPN protocol, or `none`.
    alpn: String,
    version: Version,
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl HttpsReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, with a JSON one pretty-printed.
    fn pretty_body(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| self.body.clone())
    }
}

/// One HTTPS `GET https://gateway.demo<path>` from `src` to the proxy at `dst` (run inside the
/// client namespace), verifying the certificate against `roots` only. `None` when the connect
/// timed out.
fn https_request(
    src: IpAddr,
    dst: SocketAddr,
    method: &Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    roots: Arc<RootCertStore>,
) -> anyhow::Result<Option<HttpsReply>> {
    let Some(tcp) = connect(src, dst)? else {
        return Ok(None);
    };
    // A runtime on this thread: every socket stays in this thread's namespace.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(
            HTTPS_TIMEOUT,
            https_exchange(tcp, method, path, headers, body, roots),
        )
        .await
        .map_err(|_| anyhow!("no response within {} s", HTTPS_TIMEOUT.as_secs()))?
        .map(Some)
    })
}

/// The TLS handshake (SNI gateway.demo, ALPN h2 then http/1.1), one request, the whole response.
async fn https_exchange(
    tcp: TcpStream,
    method: &Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    roots: Arc<RootCertStore>,
) -> anyhow::Result<HttpsReply> {
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Both versions offered, as a browser would: the server's choice is what the demo shows.
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await
        .context("TLS handshake")?;
    let session = tls.get_ref().1;
    let tls_version = match session.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        other => format!("{other:?}"),
    };
    let alpn = session
        .alpn_protocol()
        .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
    let h2 = alpn == "h2";

    // h2 carries the host in the request's authority, HTTP/1.1 in a Host header.
    let mut request = if h2 {
        Request::builder()
            .method(method)
            .uri(format!("https://{SERVER_NAME}{path}"))
    } else {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, SERVER_NAME)
    };
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_str(value)?);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?;
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(HttpsReply {
        tls: tls_version,
        alpn,
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A long header value (a token) cut for display: the demo shows its shape, not all of it.
fn shorten(value: &str) -> String {
    if value.len() <= 60 {
        return value.to_string();
    }
    let cut = (0..=48)
        .rev()
        .find(|i| value.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}...({} bytes)", &value[..cut], value.len())
}

/// `HTTP/2`, as curl writes it, or `HTTP/1.1`.
fn http_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/?",
    }
}

/// The value of a `name: value` line in the backend's answer (see [`answer`]).
fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// The proxy's listener in the family of `src`.
fn proxy_address(src: IpAddr) -> SocketAddr {
    let ip = if src.is_ipv4() {
        GW_CLIENT_V4
    } else {
        GW_CLIENT_V6
    };
    SocketAddr::new(ip.parse().expect("a constant address"), HTTPS_PORT)
}

fn backend_address(src: IpAddr) -> SocketAddr {
    let ip = if src.is_ipv4() {
        BACKEND_V4
    } else {
        BACKEND_V6
    };
    SocketAddr::new(ip.parse().expect("a constant address"), HTTP_PORT)
}

fn read_counter(name: &str) -> anyhow::Result<u64> {
    Ok(Counters::open(&PinLayout::new(Path::new(PIN_ROOT)))?
        .get(name)?
        .packets)
}

/// Tallies the checks; a failed one is remembered for the summary and the exit status.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn record(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what.to_string());
        }
    }
}

/// Writes the country database, the CA certificate, the gateway's certificate and key, and the
/// config into `dir`; returns the config's path.
fn write_config(dir: &Path, pki: &TestPki, issuer: &tokens::Issuer) -> anyhow::Result<PathBuf> {
    // Networks as in MaxMind's test data, so the addresses match what the docs quote.
    let mut db = MmdbBuilder::new(6, "GeoIP2-Country").alias_ipv4_mapped(true);
    db.insert("81.2.69.0/24".parse()?, "GB");
    db.insert("89.160.20.0/24".parse()?, "SE");
    db.insert("2001:218::/32".parse()?, "JP");
    db.write_to(&dir.join("countries.mmdb"))
        .context("writing the country database")?;
    // ca.crt is what a client would be given (`curl --cacert`); the demo's client holds it in
    // memory. The certificate names the host and both of the gateway's client-facing addresses.
    pki.write_ca(dir);
    pki.write_server(dir, "gateway", &[SERVER_NAME, GW_CLIENT_V4, GW_CLIENT_V6]);
    std::fs::write(dir.join("idp-jwks.json"), issuer.jwks()).context("writing the JWKS")?;
    std::fs::write(dir.join("order.schema.json"), ORDER_SCHEMA).context("writing the schema")?;
    // The key file holds hashes only; the client holds the key itself.
    std::fs::write(
        dir.join("keys.toml"),
        format!(
            "[[keys]]\nid = \"{DEMO_KEY_ID}\"\nowner = \"the demo's partner application\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key(DEMO_KEY)
        ),
    )
    .context("writing the key file")?;

    let config = format!(
        r#"# Written by `cargo xtask demo`.
[kernel]
interfaces = ["{IF_GW_CLIENT}"]
attach_mode = "auto"
pin_root = "{PIN_ROOT}"
ban_sweep_interval = "1s"   # the program ignores expired bans; the sweep removes them

[allow]
# The management host always passes, whatever the rules below say.
cidrs = ["{management}"]

[[deny]]
name = "{DENY_SET}"
cidrs = ["192.0.2.0/24"]

[geo]
database = "countries.mmdb"   # GB 81.2.69.0/24, SE 89.160.20.0/24, JP 2001:218::/32
block = ["SE"]
unknown = "pass"

[log]
format = "json"

# The proxy: TLS on the gateway's client-facing addresses, /api to the backend.
[admin]
listen = "{ADMIN}"   # loopback of the gateway namespace

[[listeners]]
name = "{LISTENER_V4}"
bind = "{GW_CLIENT_V4}:{HTTPS_PORT}"
protocol = "https"

[listeners.tls]
# Issued by the demo CA (ca.crt) for {SERVER_NAME}, {GW_CLIENT_V4} and {GW_CLIENT_V6}.
certificates = [{{ cert = "gateway.crt", key = "gateway.key" }}]

[[listeners]]
name = "{LISTENER_V6}"
bind = "[{GW_CLIENT_V6}]:{HTTPS_PORT}"
protocol = "https"

[listeners.tls]
certificates = [{{ cert = "gateway.crt", key = "gateway.key" }}]

[[pools]]
name = "{POOL}"
endpoints = ["{BACKEND_V4}:{HTTP_PORT}"]

[[routes]]
name = "{ROUTE}"
hosts = ["{SERVER_NAME}"]
path = "{ROUTE_PATH}"   # and everything below it; any other path is 404
pool = "{POOL}"

# Bearer tokens signed by the demo identity provider, whose public key is in idp-jwks.json
# (a real deployment names its OpenID issuer and the keys are discovered).
[[token_providers]]
name = "demo-idp"
issuer = "{issuer}"
audiences = ["{audience}"]
jwks_file = "idp-jwks.json"

# /orders: role API.Read or API.Write for every method, API.Write for POST, PUT and DELETE.
# The backend learns the caller from X-User-Id and never sees the token.
[[routes]]
name = "{TOKEN_ROUTE}"
hosts = ["{SERVER_NAME}"]
path = "{TOKEN_PATH}"
pool = "{POOL}"

[routes.token]
provider = "demo-idp"

[[routes.token.rules]]
[[routes.token.rules.require]]
claim = "roles"
any = ["API.Read", "API.Write"]

[[routes.token.rules]]
methods = ["POST", "PUT", "DELETE"]
[[routes.token.rules.require]]
claim = "roles"
any = ["API.Write"]

[[routes.token.claim_headers]]
header = "X-User-Id"
claims = ["sub"]

# /checkout: orders are validated against order.schema.json before they reach the backend.
[[routes]]
name = "checkout"
hosts = ["{SERVER_NAME}"]
path = "{CHECKOUT_PATH}"
methods = ["POST"]
pool = "{POOL}"

[routes.validation]
schema = "order.schema.json"
content_types = ["application/json"]

# API keys: keys.toml holds the SHA-256 of each key (`portcullis key hash`), never the key.
[api_keys]
file = "keys.toml"

# /limited: an API key, and a rate limit per key.
[[routes]]
name = "{LIMITED_ROUTE}"
hosts = ["{SERVER_NAME}"]
path = "{LIMITED_PATH}"
pool = "{POOL}"
api_key = true

[proxy.limits]
headers_on_success = true   # the budget headers on every answer, not only on refusals

[[proxy.limits.rate]]
name = "{RATE_LIMIT}"
by = ["api_key"]
routes = ["{LIMITED_ROUTE}"]
requests = {RATE_BURST}
per = "10s"                 # one request every 2 s ...
burst = {RATE_BURST}                   # ... after a burst of {RATE_BURST}

# Failed authentications (wrong keys, bad tokens) from one client: a short kernel ban.
[abuse]
[[abuse.rules]]
kind = "auth_failure"
threshold = {AUTH_THRESHOLD}
window = "60s"
ban = "{abuse_ban}s"
escalation = "none"
"#,
        management = MANAGEMENT.addr,
        issuer = tokens::ISSUER,
        audience = tokens::AUDIENCE,
        abuse_ban = ABUSE_BAN.as_secs(),
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, config).context("writing the config")?;
    Ok(path)
}

/// Holds an abstract Unix socket for the demo's lifetime: a second demo would share its
/// namespace names and pin root, so it must not start (and the kernel frees the name on exit).
fn single_instance() -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"portcullis-demo")?;
    std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => anyhow!("another `cargo xtask demo` is running"),
        _ => anyhow!("taking the demo lock: {e}"),
    })
}

/// Removes what a demo killed with SIGKILL could not (we hold the lock, so none is running).
fn remove_leftovers() -> anyhow::Result<()> {
    for ns in [NS_CLIENT, NS_GATEWAY, NS_BACKEND] {
        if netns_path(ns).exists() {
            println!("note: removing namespace {ns} left by an interrupted demo");
            cmd("ip", &["netns", "del", ns])?;
        }
    }
    if Path::new(PIN_ROOT).exists() {
        println!("note: removing pins under {PIN_ROOT} left by an interrupted demo");
        drop(Pins);
    }
    // Only real directories with the demo's prefix owned by root (as the demo runs), never
    // what a symlink in a world-writable directory points at (metadata() does not follow it).
    for entry in std::fs::read_dir(std::env::temp_dir())?.flatten() {
        let ours = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == 0);
        if ours {
            println!(
                "note: removing {} left by an interrupted demo",
                entry.path().display()
            );
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Runs a command; its stdout, or an error with its stderr.
fn cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> args...`
fn ip(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    cmd("ip", &full)
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

/// Moves the calling thread into namespace `ns` (setns affects only this thread).
fn enter_netns(ns: &str) -> io::Result<()> {
    let file = File::open(netns_path(ns))?;
    // SAFETY: setns with a valid namespace fd; it changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `ns`, so the sockets it makes live there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            enter_netns(ns).with_context(|| format!("entering namespace {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("a thread in namespace {ns} panicked"))?
    })
}

/// Sets sysctls inside `ns` (`/proc/sys/net` shows the namespace of the process reading it).
fn sysctl(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
    cmd(
        "ip",
        &[&["netns", "exec", ns, "sysctl", "-qw"][..], settings].concat(),
    )?;
    Ok(())
}

/// Whether `dev` in `ns` has an XDP program (`None` if the device is gone).
fn xdp_attached(ns: &str, dev: &str) -> Option<bool> {
    let text = ip(ns, &["link", "show", "dev", dev]).ok()?;
    Some(text.split_whitespace().any(|w| w.starts_with("xdp")))
}

/// The three namespaces, deleted on drop (which also removes the veths inside them).
struct Topology {
    namespaces: Vec<&'static str>,
}

impl Topology {
    fn create() -> anyhow::Result<Self> {
        // Pushed one by one, so a failure half-way still deletes what was made.
        let mut topology = Self {
            namespaces: Vec::new(),
        };
        for ns in [NS_CLIENT, NS_GATEWAY, NS_BACKEND] {
            cmd("ip", &["netns", "add", ns])?;
            topology.namespaces.push(ns);
            ip(ns, &["link", "set", "lo", "up"])?;
            // Without duplicate address detection every address is usable at once; with it,
            // IPv6 through the gateway only works after the link-local addresses settle (~2 s).
            sysctl(
                ns,
                &[
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        }
        wire_clients()?;
        wire_backend()?;
        // The gateway routes the clients' plain requests to the backend; the proxy's requests
        // to the backend are its own connections and need no forwarding.
        sysctl(
            NS_GATEWAY,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        Ok(topology)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = cmd("ip", &["netns", "del", ns]) {
                eprintln!("cleaning up: {e:#}");
            }
        }
    }
}

/// Client namespace <-> gateway: every client address on one veth, routed via the gateway.
fn wire_clients() -> anyhow::Result<()> {
    veth(IF_CLIENT, NS_CLIENT, IF_GW_CLIENT, NS_GATEWAY)?;
    add_address(NS_GATEWAY, IF_GW_CLIENT, GW_CLIENT_V4)?;
    add_address(NS_GATEWAY, IF_GW_CLIENT, GW_CLIENT_V6)?;
    for c in CLIENTS {
        add_address(NS_CLIENT, IF_CLIENT, c.addr)?;
        ip(NS_GATEWAY, &["route", "add", c.addr, "dev", IF_GW_CLIENT])?;
    }
    for gw in [GW_CLIENT_V4, GW_CLIENT_V6] {
        ip(NS_CLIENT, &["route", "add", gw, "dev", IF_CLIENT])?;
        ip(
            NS_CLIENT,
            &["route", "add", default_of(gw), "via", gw, "dev", IF_CLIENT],
        )?;
    }
    // Static neighbours both ways: ARP and NDP replies carry the client's address, and the
    // filter drops some of those, which must not make the allowed clients unreachable.
    let gw_mac = mac(NS_GATEWAY, IF_GW_CLIENT)?;
    let client_mac = mac(NS_CLIENT, IF_CLIENT)?;
    for gw in [GW_CLIENT_V4, GW_CLIENT_V6] {
        ip(
            NS_CLIENT,
            &[
                "neigh",
                "replace",
                gw,
                "lladdr",
                &gw_mac,
                "dev",
                IF_CLIENT,
                "nud",
                "permanent",
            ],
        )?;
    }
    for c in CLIENTS {
        ip(
            NS_GATEWAY,
            &[
                "neigh",
                "replace",
                c.addr,
                "lladdr",
                &client_mac,
                "dev",
                IF_GW_CLIENT,
                "nud",
                "permanent",
            ],
        )?;
    }
    Ok(())
}

/// Gateway <-> backend: one small subnet per family, the backend's default route via the gateway.
fn wire_backend() -> anyhow::Result<()> {
    veth(IF_GW_BACKEND, NS_GATEWAY, IF_BACKEND, NS_BACKEND)?;
    for (ns, dev, addr) in [
        (NS_GATEWAY, IF_GW_BACKEND, format!("{GW_BACKEND_V4}/24")),
        (NS_GATEWAY, IF_GW_BACKEND, format!("{GW_BACKEND_V6}/64")),
        (NS_BACKEND, IF_BACKEND, format!("{BACKEND_V4}/24")),
        (NS_BACKEND, IF_BACKEND, format!("{BACKEND_V6}/64")),
    ] {
        add_address(ns, dev, &addr)?;
    }
    for gw in [GW_BACKEND_V4, GW_BACKEND_V6] {
        ip(NS_BACKEND, &["route", "add", default_of(gw), "via", gw])?;
    }
    Ok(())
}

/// A veth pair created directly inside two namespaces, both ends up.
fn veth(a: &str, a_ns: &str, b: &str, b_ns: &str) -> anyhow::Result<()> {
    cmd(
        "ip",
        &[
            "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
        ],
    )?;
    ip(a_ns, &["link", "set", a, "up"])?;
    ip(b_ns, &["link", "set", b, "up"])?;
    Ok(())
}

/// Adds an address; a bare one is a host address (/32 or /128).
fn add_address(ns: &str, dev: &str, addr: &str) -> anyhow::Result<()> {
    ip(ns, &["addr", "add", addr, "dev", dev])?;
    Ok(())
}

/// `default` in the family of `addr` (`ip route add default` alone means IPv4).
fn default_of(addr: &str) -> &'static str {
    if addr.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    }
}

/// The MAC address of `dev` in `ns`, from `ip -br link`: `name state mac flags`.
fn mac(ns: &str, dev: &str) -> anyhow::Result<String> {
    let text = ip(ns, &["-br", "link", "show", "dev", dev])?;
    text.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no MAC address for {dev} in `{text}`"))
}

/// The backend: a tiny HTTP server on a thread inside the backend namespace, stopped on drop.
struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let listener = enter_netns(NS_BACKEND)
                .and_then(|()| TcpListener::bind(("::", HTTP_PORT)))
                // Non-blocking, so the loop notices the stop flag.
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            match listener {
                Ok(l) => {
                    let _ = ready.send(Ok(()));
                    serve(&l, &flag);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
        let backend = Self {
            stop,
            thread: Some(thread),
        };
        bound
            .recv()?
            .context("starting the backend's HTTP server")?;
        Ok(backend)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = answer(stream, peer);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads the request head and answers 200 with the address the backend saw (routed, not
/// translated: the real client; proxied: the gateway) and, one per line, the forwarding headers
/// it received (a proxied request has them, a routed one none).
fn answer(mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let mut body = format!("hello from the backend, {}\n", peer.ip().to_canonical());
    let head = String::from_utf8_lossy(&head);
    let fields: Vec<(String, &str)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    for wanted in ECHOED {
        for (_, value) in fields.iter().filter(|(name, _)| name == wanted) {
            let _ = writeln!(body, "{wanted}: {value}");
        }
    }
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Request headers the backend echoes: the ones the proxy sets.
const ECHOED: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "x-request-id",
    "x-user-id",
];

/// Removes everything under the demo's pin root on drop (detaching the XDP link first).
struct Pins;

impl Drop for Pins {
    fn drop(&mut self) {
        if !Path::new(PIN_ROOT).exists() {
            return;
        }
        if let Err(e) = kernel::teardown(Path::new(PIN_ROOT)) {
            eprintln!("cleaning up {PIN_ROOT}: {e}");
        }
        let _ = std::fs::remove_dir_all(PIN_ROOT);
    }
}

/// The `portcullis run` process in the gateway namespace; stopped (by its pid) on drop.
struct Gateway {
    child: Child,
    log: PathBuf,
    log_lines_shown: usize,
}

impl Gateway {
    fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        // Not `ip netns exec`: it also remounts /sys for the namespace, which hides the host's
        // bpffs at /sys/fs/bpf, so the pins would not be where `portcullis stats` looks. Joining
        // only the network namespace (like `nsenter --net=`) keeps the mounts.
        let netns = File::open(netns_path(NS_GATEWAY)).context("opening the gateway namespace")?;
        let netns_fd = netns.as_raw_fd();
        let log_file = File::create(log).context("creating the gateway log")?;
        let mut command = Command::new(bin);
        command
            .args(["run", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Its own process group: Ctrl-C reaches only the demo, which then stops it in order.
            .process_group(0);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Should the demo itself be killed outright, the gateway goes too.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        drop(netns);
        Ok(Self {
            child,
            log: log.to_path_buf(),
            log_lines_shown: 0,
        })
    }

    /// Starting and attaching take a moment: poll the pins until the link shows up.
    fn wait_attached(&mut self) -> anyhow::Result<()> {
        println!();
        println!(
            "  $ nsenter --net=/var/run/netns/{NS_GATEWAY} portcullis run -c portcullis.toml &"
        );
        let layout = PinLayout::new(Path::new(PIN_ROOT));
        let deadline = Instant::now() + Duration::from_secs(20);
        let attached = loop {
            interrupt::check()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "portcullis exited ({status}) before attaching; its log:\n{}",
                    self.log_text()
                );
            }
            if let Some(a) = kernel::attachments(&layout)?
                .into_iter()
                .find(|a| a.interface == IF_GW_CLIENT)
            {
                break a;
            }
            if Instant::now() > deadline {
                bail!(
                    "portcullis did not attach within 20 s; its log:\n{}",
                    self.log_text()
                );
            }
            interrupt::pause(Duration::from_millis(100))?;
        };
        // The JSON log lines are what an operator's collector would receive.
        for line in self.new_log_lines() {
            println!("  | {line}");
        }
        println!(
            "  portcullis (pid {}) attached XDP to {} in {} mode",
            self.child.id(),
            attached.interface,
            attached.mode.as_str()
        );
        Ok(())
    }

    /// SIGTERM (the graceful stop), then SIGKILL if it has not exited within 5 s.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill with our own child's pid; it is not reaped yet, so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines not shown yet.
    fn new_log_lines(&mut self) -> Vec<String> {
        let lines: Vec<String> = self
            .log_text()
            .lines()
            .skip(self.log_lines_shown)
            .map(str::to_string)
            .collect();
        self.log_lines_shown += lines.len();
        lines
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping portcullis (pid {}): {e:#}", self.child.id());
        }
    }
}

/// Ctrl-C (and SIGTERM, SIGHUP) only raise a flag; the demo checks it between steps and returns
/// an error, so every guard still runs. Waits are short or sliced, so it stops promptly.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        }
    }

    pub fn check() -> anyhow::Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted; everything the demo created has been removed");
        }
        Ok(())
    }

    /// Sleeps for `d`, waking early on an interrupt.
    pub fn pause(d: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            check()?;
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        check()
    }
}
