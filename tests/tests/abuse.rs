//! Abuse bans end to end: `portcullis run` in a gateway namespace with XDP on its veth, a client
//! namespace sending requests with bad API keys. The client's address goes into the kernel ban
//! map within milliseconds, its next SYNs are dropped by XDP (counted as `drop/ban:auth-failure`)
//! while other sources are still served, and access returns when the ban expires. A spoofed
//! `X-Forwarded-For` never gets its address banned; behind a trusted proxy, the header address
//! is banned in userspace only and the proxy itself never. An operator's network ban through
//! the admin endpoint (`portcullis ban add --admin`) goes into the kernel map and is dropped by
//! XDP until `ban rm --admin` lifts it; one that would reach a trusted proxy is refused.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use portcullis::kernel::{BanReason, Bans, Counters, PinLayout};
use portcullis_tests::daemon::Daemon;
use portcullis_tests::netns::{GATEWAY_V4, Link, Netns};
use portcullis_tests::pins::PinRoot;
use portcullis_tests::{portcullis_bin, require_privileges};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client talking to the gateway directly.
const CLIENT: &str = "100.64.0.10";
/// A trusted L7 proxy in front of the gateway.
const PROXY: &str = "100.64.0.20";
const LISTEN_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9901;
const THRESHOLD: usize = 5;
const BAN: Duration = Duration::from_secs(3);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One HTTP/1.1 exchange from `src` (an address of `ns`) to `dst`: the status, or `None` when
/// no connection could be made within `timeout` (a dropped SYN).
fn exchange(
    ns: &Netns,
    src: Option<IpAddr>,
    dst: SocketAddr,
    request: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let request = request.to_owned();
    ns.enter(move || exchange_here(src, dst, &request, timeout))
}

/// [`exchange`] from the calling thread's namespace. A connection that is accepted and then
/// closed without an answer (a userspace refusal at accept) gives `Some((0, ""))`.
fn exchange_here(
    src: Option<IpAddr>,
    dst: SocketAddr,
    request: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(src) = src {
            socket.bind(SocketAddr::new(src, 0)).expect("bind source");
        }
        let mut stream = tokio::time::timeout(timeout, socket.connect(dst))
            .await
            .ok()?
            .ok()?;
        // The write may fail when the gateway already closed the connection.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        Some((status, text))
    })
}

fn with_key(key: &str, xff: Option<&str>) -> String {
    let xff = xff.map_or(String::new(), |a| format!("x-forwarded-for: {a}\r\n"));
    format!(
        "GET /v1/items HTTP/1.1\r\nhost: api.test\r\nocp-apim-subscription-key: {key}\r\n{xff}connection: close\r\n\r\n"
    )
}

fn gateway_addr() -> SocketAddr {
    SocketAddr::new(ip(GATEWAY_V4), LISTEN_PORT)
}

fn admin(link: &Link, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    exchange(
        &link.gateway,
        None,
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
        &request,
        Duration::from_secs(1),
    )
}

fn kernel_ban(pins: &Path, addr: &str) -> Option<BanReason> {
    Bans::open(&PinLayout::new(pins))
        .ok()?
        .lookup(ip(addr))
        .ok()
        .flatten()
}

fn ban_drops(pins: &Path) -> u64 {
    Counters::open(&PinLayout::new(pins))
        .and_then(|c| c.get("drop/ban:auth-failure"))
        .map_or(0, |r| r.packets)
}

/// The config: `kernel` is the `[kernel]` section, the listener binds `bind`, `proxy` is the
/// one trusted proxy.
fn write_config(
    dir: &Path,
    kernel: &str,
    bind: SocketAddr,
    admin: u16,
    proxy: &str,
) -> std::path::PathBuf {
    let key_hash = {
        let digest = ring::digest::digest(&ring::digest::SHA256, b"the-good-key");
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    std::fs::write(
        dir.join("keys.toml"),
        format!("[[keys]]\nid = \"good\"\nowner = \"tests\"\nprimary = \"{key_hash}\"\nscope = \"all\"\n"),
    )
    .unwrap();
    let cfg = dir.join("portcullis.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"{kernel}

[admin]
listen = "127.0.0.1:{admin}"

[log]
format = "json"

[trusted_proxies]
proxies = ["{proxy}/32"]

[[listeners]]
name = "web"
bind = "{bind}"
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
threshold = {THRESHOLD}
window = "60s"
ban = "{ban}s"
escalation = "none"
"#,
            ban = BAN.as_secs(),
        ),
    )
    .unwrap();
    cfg
}

fn wait_for(what: &str, gateway: &Daemon, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out waiting for {what}; gateway log:\n{}",
        gateway.log_text()
    );
}

/// A gateway with XDP on the gateway end of a veth pair whose client side holds CLIENT and
/// PROXY, ready. Fields drop in order: the gateway first, then the namespaces, then the pins.
struct KernelGateway {
    gateway: Daemon,
    _dir: tempfile::TempDir,
    link: Link,
    pins: PinRoot,
}

impl KernelGateway {
    /// `kernel_extra`: more `[kernel]` keys, one per line.
    fn start(kernel_extra: &str) -> Self {
        let pins = PinRoot::new();
        let link = Link::new(&[CLIENT, PROXY]);
        let dir = tempfile::tempdir().unwrap();
        let kernel = format!(
            "[kernel]\ninterfaces = [\"{}\"]\npin_root = \"{}\"\n{kernel_extra}",
            link.gateway_if,
            pins.path().display()
        );
        let cfg = write_config(
            dir.path(),
            &kernel,
            SocketAddr::from(([0, 0, 0, 0], LISTEN_PORT)),
            ADMIN_PORT,
            PROXY,
        );
        let gateway = Daemon::spawn(link.gateway.command(portcullis_bin()), &cfg);
        wait_for("readiness", &gateway, || {
            admin(&link, "/ready").is_some_and(|(s, _)| s == 200)
        });
        Self {
            gateway,
            _dir: dir,
            link,
            pins,
        }
    }
}

#[test]
fn bad_keys_get_the_client_dropped_by_xdp_until_the_ban_expires() {
    if !require_privileges("bad_keys_get_the_client_dropped_by_xdp_until_the_ban_expires") {
        return;
    }
    let setup = KernelGateway::start("ban_sweep_interval = \"1s\"");
    let (pins, link, gateway) = (&setup.pins, &setup.link, &setup.gateway);

    // Behind the trusted proxy: the header address is banned in userspace, never in the
    // kernel, and the proxy itself is never banned.
    let behind = "203.0.113.88";
    for i in 0..THRESHOLD {
        let got = exchange(
            &link.client,
            Some(ip(PROXY)),
            gateway_addr(),
            &with_key("wrong", Some(behind)),
            Duration::from_secs(2),
        );
        assert_eq!(got.map(|g| g.0), Some(401), "request {i}");
    }
    wait_for("the userspace ban", gateway, || {
        admin(link, "/bans").is_some_and(|(_, b)| b.contains(behind))
    });
    let (_, bans) = admin(link, "/bans").unwrap();
    assert!(bans.contains("\"enforced\":\"userspace\""), "{bans}");
    assert!(bans.contains("auth-failure"), "{bans}");
    assert_eq!(kernel_ban(pins.path(), behind), None);
    assert_eq!(
        kernel_ban(pins.path(), PROXY),
        None,
        "a trusted proxy is never banned"
    );
    let got = exchange(
        &link.client,
        Some(ip(PROXY)),
        gateway_addr(),
        &with_key("wrong", Some(behind)),
        Duration::from_secs(2),
    );
    assert_eq!(
        got.map(|g| g.0),
        Some(403),
        "the banned header address is refused"
    );
    let got = exchange(
        &link.client,
        Some(ip(PROXY)),
        gateway_addr(),
        &with_key("wrong", Some("203.0.113.99")),
        Duration::from_secs(2),
    );
    assert_eq!(
        got.map(|g| g.0),
        Some(401),
        "others behind the proxy are served"
    );

    // Directly, with a spoofed X-Forwarded-For (the client is not a trusted proxy): the peer
    // is what is counted and banned, in the kernel.
    let spoofed = "198.51.100.66";
    let mut last = Instant::now();
    for i in 0..THRESHOLD {
        let got = exchange(
            &link.client,
            Some(ip(CLIENT)),
            gateway_addr(),
            &with_key("wrong", Some(spoofed)),
            Duration::from_secs(2),
        );
        last = Instant::now();
        assert_eq!(got.map(|g| g.0), Some(401), "request {i}");
    }
    let deadline = last + Duration::from_secs(2);
    let mut banned_after = None;
    while Instant::now() < deadline {
        if kernel_ban(pins.path(), CLIENT) == Some(BanReason::AuthFailure) {
            banned_after = Some(last.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let banned_after = banned_after.unwrap_or_else(|| {
        panic!(
            "no kernel ban for {CLIENT}; gateway log:\n{}",
            gateway.log_text()
        )
    });
    eprintln!("kernel ban visible {banned_after:?} after the offending response");
    assert!(
        banned_after < Duration::from_millis(500),
        "{banned_after:?}"
    );
    assert_eq!(
        kernel_ban(pins.path(), spoofed),
        None,
        "the spoofed address is never banned"
    );
    let (_, bans) = admin(link, "/bans").unwrap();
    assert!(!bans.contains(spoofed), "{bans}");
    assert!(bans.contains("\"enforced\":\"kernel\""), "{bans}");
    assert_eq!(
        bans.matches(&format!("\"{CLIENT}/32\"")).count(),
        1,
        "{bans}"
    );

    // Its next SYNs are dropped by XDP, and counted; another source is still served.
    let drops_before = ban_drops(pins.path());
    let got = exchange(
        &link.client,
        Some(ip(CLIENT)),
        gateway_addr(),
        &with_key("the-good-key", None),
        Duration::from_millis(1000),
    );
    assert!(got.is_none(), "a banned client must not connect: {got:?}");
    assert!(
        ban_drops(pins.path()) > drops_before,
        "XDP counts the dropped SYNs"
    );
    let got = exchange(
        &link.client,
        Some(ip(PROXY)),
        gateway_addr(),
        &with_key("wrong", Some("203.0.113.99")),
        Duration::from_secs(2),
    );
    assert_eq!(got.map(|g| g.0), Some(401), "other sources are unaffected");

    let (_, metrics) = admin(link, "/metrics").unwrap();
    assert!(
        metrics.contains("portcullis_abuse_bans_total{rule=\"auth_failure\",action=\"kernel\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("portcullis_abuse_bans_total{rule=\"auth_failure\",action=\"userspace\"} 1"),
        "{metrics}"
    );
    let log = gateway.log_text();
    let written = log
        .lines()
        .find(|l| l.contains("\"abuse_ban_in_kernel\""))
        .unwrap_or_else(|| panic!("no kernel ban event in:\n{log}"));
    eprintln!("security event: {written}");
    assert!(log.contains("portcullis::security"), "{log}");
    assert!(!log.contains("the-good-key"), "no key in the log");

    // The ban expires: access returns (the gateway answers; the backend does not exist).
    std::thread::sleep(
        (last + BAN + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    );
    let mut answered = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while answered.is_none() && Instant::now() < deadline {
        answered = exchange(
            &link.client,
            Some(ip(CLIENT)),
            gateway_addr(),
            &with_key("the-good-key", None),
            Duration::from_millis(500),
        );
    }
    let (status, _) = answered.unwrap_or_else(|| {
        panic!(
            "access did not return after the ban; log:\n{}",
            gateway.log_text()
        )
    });
    assert_eq!(status, 502, "a good key passes; the backend is absent");
    assert_eq!(kernel_ban(pins.path(), CLIENT), None);
    // The userspace ban expired too.
    let got = exchange(
        &link.client,
        Some(ip(PROXY)),
        gateway_addr(),
        &with_key("wrong", Some(behind)),
        Duration::from_secs(2),
    );
    assert_eq!(got.map(|g| g.0), Some(401), "the userspace ban expired");
}

/// `portcullis ban add|list|rm --admin` with the kernel layer on: a network containing the
/// client goes into the kernel map (its SYNs dropped by XDP), is listed as a kernel ban, and is
/// lifted from the map by `ban rm --admin`; a network that holds the trusted proxy is refused.
#[test]
fn manual_network_ban_through_the_admin_endpoint_is_a_kernel_ban() {
    if !require_privileges("manual_network_ban_through_the_admin_endpoint_is_a_kernel_ban") {
        return;
    }
    let setup = KernelGateway::start("");
    let (pins, link, gateway) = (&setup.pins, &setup.link, &setup.gateway);
    let cli = |args: &[&str]| {
        link.gateway
            .command(portcullis_bin())
            .args(args)
            .args(["--admin", &format!("127.0.0.1:{ADMIN_PORT}")])
            .output()
            .expect("run portcullis ban")
    };
    let send = || {
        exchange(
            &link.client,
            Some(ip(CLIENT)),
            gateway_addr(),
            &with_key("wrong", None),
            Duration::from_millis(1000),
        )
        .map(|g| g.0)
    };
    assert_eq!(send(), Some(401));

    // 100.64.0.0/24 holds the trusted proxy: refused, nothing written.
    let out = cli(&["ban", "add", "100.64.0.0/24"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("409") && stderr.contains("trusted proxies"),
        "{stderr}"
    );
    assert_eq!(kernel_ban(pins.path(), PROXY), None);

    // 100.64.0.8/29 holds the client only.
    let out = cli(&["ban", "add", "100.64.0.8/29", "--ttl", "1m"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("(kernel)"), "{stdout}");
    assert_eq!(kernel_ban(pins.path(), CLIENT), Some(BanReason::Manual));
    assert_eq!(send(), None, "XDP drops the banned network's SYNs");
    let out = cli(&["ban", "list", "--json"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("\"100.64.0.8/29\""), "{listed}");
    assert!(listed.contains("\"enforced\":\"kernel\""), "{listed}");
    assert!(!listed.contains("\"enforced\":\"userspace\""), "{listed}");

    let out = cli(&["ban", "rm", "100.64.0.8/29"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(kernel)"),
        "{out:?}"
    );
    assert_eq!(kernel_ban(pins.path(), CLIENT), None);
    assert_eq!(send(), Some(401), "served again:\n{}", gateway.log_text());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// With the kernel layer off (no privileges needed), every ban is a userspace ban: the banned
/// peer's connections are closed at accept, a spoofed header is never banned, and the address
/// behind a trusted proxy is refused with 403 while the proxy is served.
#[test]
fn without_the_kernel_every_ban_is_a_userspace_ban() {
    let (listen, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[kernel]\nenabled = false",
        SocketAddr::from(([127, 0, 0, 1], listen)),
        admin_port,
        "127.0.0.2",
    );
    let gateway = Daemon::start(&cfg);
    let target = SocketAddr::from(([127, 0, 0, 1], listen));
    let admin = |path: &str| {
        exchange_here(
            None,
            SocketAddr::from(([127, 0, 0, 1], admin_port)),
            &format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"),
            Duration::from_secs(1),
        )
    };
    wait_for("readiness", &gateway, || {
        admin("/ready").is_some_and(|(s, _)| s == 200)
    });
    let send = |src: &str, xff: Option<&str>| {
        exchange_here(
            Some(ip(src)),
            target,
            &with_key("wrong", xff),
            Duration::from_secs(2),
        )
        .map_or(0, |(s, _)| s)
    };

    // Behind the trusted proxy 127.0.0.2: the header address is banned, the proxy is not.
    for i in 0..THRESHOLD {
        assert_eq!(send("127.0.0.2", Some("203.0.113.88")), 401, "request {i}");
    }
    assert_eq!(send("127.0.0.2", Some("203.0.113.88")), 403);
    assert_eq!(send("127.0.0.2", Some("203.0.113.99")), 401);
    assert_eq!(
        send("127.0.0.2", None),
        401,
        "the proxy itself is not banned"
    );

    // 127.0.0.3 is not trusted: its spoofed header is ignored, the peer is banned, and its
    // next connection is closed before a byte is read.
    for i in 0..THRESHOLD {
        assert_eq!(send("127.0.0.3", Some("198.51.100.66")), 401, "request {i}");
    }
    assert_eq!(send("127.0.0.3", None), 0, "closed at accept");
    let (_, bans) = admin("/bans").unwrap();
    assert!(bans.contains("127.0.0.3/32"), "{bans}");
    assert!(bans.contains("203.0.113.88/32"), "{bans}");
    assert!(!bans.contains("198.51.100.66"), "{bans}");
    assert!(!bans.contains("127.0.0.2/"), "{bans}");
    assert!(!bans.contains("\"kernel\""), "{bans}");
    let log = gateway.log_text();
    assert!(log.contains("\"abuse_ban\""), "{log}");
    assert!(log.contains("\"enforcement\":\"userspace\""), "{log}");

    // `portcullis ban list --admin` shows them, with reason and where they are enforced.
    let out = std::process::Command::new(portcullis_bin())
        .args(["ban", "list", "--admin", &format!("127.0.0.1:{admin_port}")])
        .output()
        .expect("portcullis ban list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    let line = listed
        .lines()
        .find(|l| l.starts_with("127.0.0.3/32"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("auth-failure") && line.contains("userspace"),
        "{line}"
    );

    // Both expire with their ban.
    std::thread::sleep(BAN + Duration::from_millis(300));
    assert_eq!(send("127.0.0.3", None), 401);
    assert_eq!(send("127.0.0.2", Some("203.0.113.88")), 401);
}
