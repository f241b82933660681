//! Cluster mode end to end: two (or three) `portcullis run` processes in userspace-only mode
//! (`[kernel] enabled = false`, no privileges needed) on loopback, sharing one real
//! `redis-server`: a shared rate limit holds in total across both gateways, a ban decided on
//! one is enforced by the other within a second and by a gateway started later, and when Redis
//! goes away each gateway follows its mode (`open`: local limits; `closed`: 503
//! `cluster_unavailable`) until Redis is back. An operator's ban of a network through one
//! gateway's admin endpoint (`portcullis ban add --admin`) is enforced by the other, and its
//! removal lifts it there too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::daemon::{Daemon, http_raw, loopback_head};
use portcullis_tests::portcullis_bin;
use portcullis_tests::redis::{Redis, redis_server};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running gateway (its log collected, killed on drop) and the ports it serves.
struct Gateway {
    daemon: Daemon,
    listen: u16,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with `extra` appended to a config of one route to `backend`.
    fn start(backend: SocketAddr, redis: &str, extra: &str) -> Self {
        let (listen, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("portcullis.toml");
        let head = loopback_head(listen, admin, backend);
        std::fs::write(
            &cfg,
            format!(
                r#"{head}
[[routes]]
name = "app"
path = "/v1"
pool = "app"

[cluster]
redis = "{redis}"
timeout = "200ms"
reconnect_backoff = "50ms"
reconnect_backoff_max = "200ms"
{extra}
"#
            ),
        )
        .unwrap();
        let gw = Self {
            daemon: Daemon::start(&cfg),
            listen,
            admin,
            _dir: dir,
        };
        let admin = gw.admin;
        wait_for("gateway readiness", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", admin)).is_ok() && get(admin, "/ready").0 == 200
        });
        gw
    }

    fn metrics(&self) -> String {
        get(self.admin, "/metrics").1
    }

    fn log(&self) -> String {
        self.daemon.log().join("\n")
    }
}

/// One GET over a fresh connection: (status, body); status 0 when the gateway closed the
/// connection without an answer (a userspace ban may do that).
fn get(port: u16, path: &str) -> (u16, String) {
    http_raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"),
    )
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Sends requests from `threads` threads per port for `duration`; returns the statuses seen
/// and the time from the first request to the last answer.
fn hammer(ports: &[u16], threads: usize, duration: Duration) -> (Vec<u16>, Duration) {
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for &port in ports {
            for _ in 0..threads {
                let statuses = statuses.clone();
                let sent = sent.clone();
                scope.spawn(move || {
                    // Bounded: the deadline, and a cap on requests in case answers are instant.
                    while started.elapsed() < duration
                        && sent.fetch_add(1, Ordering::Relaxed) < 100_000
                    {
                        let (status, _) = get(port, "/v1/x");
                        statuses.lock().unwrap().push(status);
                    }
                });
            }
        }
    });
    let elapsed = started.elapsed();
    let statuses = statuses.lock().unwrap().clone();
    (statuses, elapsed)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

const SHARED_LIMIT: &str = r#"
[proxy.limits]

[[proxy.limits.rate]]
name = "shared"
by = ["ip"]
requests = 50
per = "1s"
burst = 5

# The hammering below draws hundreds of 429s from loopback, which the default rules would ban.
[abuse]
enabled = false
"#;

/// (a) 50/s with bursts of 5, hammered through both gateways for about 3 s: the total
/// admitted is `50 x T + 5` within 5 %, although each gateway alone would admit that much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_rate_limit_holds_across_two_gateways() {
    if redis_server().is_none() {
        return;
    }
    let backend = Backend::start("app", Proto::Http1).await;
    let addr = backend.addr;
    tokio::task::spawn_blocking(move || {
        let redis = Redis::start();
        let a = Gateway::start(addr, &redis.address(), SHARED_LIMIT);
        let b = Gateway::start(addr, &redis.address(), SHARED_LIMIT);
        let (statuses, elapsed) = hammer(&[a.listen, b.listen], 3, Duration::from_secs(3));
        let ok = count(&statuses, 200);
        let limited = count(&statuses, 429);
        assert_eq!(
            ok + limited,
            statuses.len(),
            "only 200 and 429: {statuses:?}"
        );
        let expected = 50.0 * elapsed.as_secs_f64() + 5.0;
        let error = (ok as f64 - expected).abs() / expected;
        assert!(
            error <= 0.05,
            "{ok} admitted in {elapsed:?} (expected {expected:.0}), {limited} refused"
        );
        // Each gateway admitted part of it: the budget really was shared.
        assert!(
            limited > ok,
            "the hammering exceeded the limit: {ok} vs {limited}"
        );
        // A reload that leaves `[cluster]` alone keeps the store: no second connection.
        let mut s = TcpStream::connect(("127.0.0.1", a.admin)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /reload HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert_eq!(
            a.log().matches("cluster store connected").count(),
            1,
            "{}",
            a.log()
        );
        for g in [&a, &b] {
            assert!(
                g.metrics()
                    .contains("portcullis_cluster_calls_total{op=\"rate\",result=\"ok\"}"),
                "{}",
                g.metrics()
            );
        }
    })
    .await
    .unwrap();
}

const BAN_RULES: &str = r#"
[proxy.limits]

[[proxy.limits.rate]]
name = "tight"
by = ["ip"]
requests = 1
per = "10s"
burst = 1

[abuse]
[[abuse.rules]]
kind = "rate_limit"
threshold = 5
window = "10s"
ban = "30s"
escalation = "none"
"#;

/// (b) A ban decided on gateway A (loopback drew five 429s there) is enforced by gateway B
/// within a second, in userspace since the kernel layer is off. (d) A gateway started after
/// the ban was published refuses the client too: it reads the current bans at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_reach_every_gateway_and_later_ones() {
    if redis_server().is_none() {
        return;
    }
    let backend = Backend::start("app", Proto::Http1).await;
    let addr = backend.addr;
    tokio::task::spawn_blocking(move || {
        let redis = Redis::start();
        let a = Gateway::start(addr, &redis.address(), BAN_RULES);
        let b = Gateway::start(addr, &redis.address(), BAN_RULES);
        // Before: B forwards (the one request of the shared budget) and answers.
        assert_eq!(get(b.listen, "/v1/x").0, 200);

        // A: the budget is spent, so each request is a 429 until the fifth bans loopback.
        let mut banned_at = None;
        for _ in 0..20 {
            let (status, _) = get(a.listen, "/v1/x");
            if status == 403 || status == 0 {
                banned_at = Some(Instant::now());
                break;
            }
            assert_eq!(status, 429);
        }
        let banned_at = banned_at.expect("gateway A banned the client");

        // B: a refusal that is not the 429 of the rate limit, within a second.
        let mut refused = false;
        while banned_at.elapsed() < Duration::from_secs(1) {
            let (status, _) = get(b.listen, "/v1/x");
            if status == 403 || status == 0 {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            refused,
            "gateway B did not apply the ban within a second:\n{}",
            b.log()
        );
        assert!(b.log().contains("shared ban applied"), "{}", b.log());

        // C, started later, refuses the client from the start.
        let c = Gateway::start(addr, &redis.address(), BAN_RULES);
        let mut c_refused = false;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            let (status, _) = get(c.listen, "/v1/x");
            if status == 403 || status == 0 {
                c_refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            c_refused,
            "a later gateway ignores the current bans:\n{}",
            c.log()
        );
        drop(a);
    })
    .await
    .unwrap();
}

fn outage_limits(mode: &str) -> String {
    format!(
        r#"rate_limits = "{mode}"

[proxy.limits]

[[proxy.limits.rate]]
name = "shared"
by = ["ip"]
requests = 20
per = "1s"
burst = 5

[abuse]
enabled = false
"#
    )
}

/// (c) Redis stopped: the `open` gateway keeps serving within its local limit, the `closed`
/// one answers 503 `cluster_unavailable`; Redis restarted on the same port: the shared limit
/// decides again on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_each_mode() {
    if redis_server().is_none() {
        return;
    }
    let backend = Backend::start("app", Proto::Http1).await;
    let addr = backend.addr;
    tokio::task::spawn_blocking(move || {
        let mut redis = Redis::start();
        let open = Gateway::start(addr, &redis.address(), &outage_limits("open"));
        let closed = Gateway::start(addr, &redis.address(), &outage_limits("closed"));
        assert_eq!(get(closed.listen, "/v1/x").0, 200);

        redis.stop();
        // The closed gateway refuses as soon as the store cannot answer.
        // Polled slower than the local limit (20/s), so the answers come from the store.
        let mut body = String::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let (status, text) = get(closed.listen, "/v1/x");
            if status == 503 {
                body = text;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            body.contains("\"code\":\"cluster_unavailable\""),
            "no 503: {body}"
        );

        // The open gateway: served, and held to its local limit (20/s, burst 5).
        std::thread::sleep(Duration::from_secs(1));
        let (statuses, elapsed) = hammer(&[open.listen], 2, Duration::from_secs(1));
        let ok = count(&statuses, 200);
        assert!(ok > 0, "the open gateway served nothing: {statuses:?}");
        let bound = 20.0 * elapsed.as_secs_f64() + 5.0;
        assert!(
            ok as f64 <= bound * 1.05,
            "{ok} admitted in {elapsed:?}, local limit allows {bound:.0}"
        );
        assert!(count(&statuses, 429) > 0, "the local limit refused nothing");
        assert!(
            open.metrics()
                .contains("portcullis_cluster_fallbacks_total{op=\"rate_limits\",result=\"open\"}"),
            "{}",
            open.metrics()
        );

        // Redis back on the same port: the closed gateway serves again, through the store.
        redis.restart();
        wait_for(
            "the closed gateway to serve again",
            Duration::from_secs(10),
            || get(closed.listen, "/v1/x").0 == 200,
        );
        // Shared again: the two gateways together stay within one budget.
        std::thread::sleep(Duration::from_secs(1));
        let (statuses, elapsed) = hammer(&[open.listen, closed.listen], 2, Duration::from_secs(2));
        let ok = count(&statuses, 200);
        let bound = 20.0 * elapsed.as_secs_f64() + 5.0;
        assert_eq!(count(&statuses, 503), 0, "{statuses:?}");
        assert!(
            ok as f64 <= bound * 1.05,
            "{ok} admitted in {elapsed:?} by both, the shared limit allows {bound:.0}"
        );
    })
    .await
    .unwrap();
}

/// `portcullis ban add|rm --admin` on gateway A with a network prefix (loopback's /8, and an
/// IPv6 /64): gateway B refuses the client within a second (in userspace, its kernel layer is
/// off) and lists both; `ban rm` on A lifts them on B within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_prefix_bans_reach_every_gateway_and_are_lifted() {
    if redis_server().is_none() {
        return;
    }
    let backend = Backend::start("app", Proto::Http1).await;
    let addr = backend.addr;
    tokio::task::spawn_blocking(move || {
        let redis = Redis::start();
        let a = Gateway::start(addr, &redis.address(), "");
        let b = Gateway::start(addr, &redis.address(), "");
        assert_eq!(get(b.listen, "/v1/x").0, 200);
        let cli = |gw: &Gateway, args: &[&str]| {
            let out = std::process::Command::new(portcullis_bin())
                .args(args)
                .args(["--admin", &format!("127.0.0.1:{}", gw.admin)])
                .output()
                .expect("run portcullis ban");
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let refused = |port: u16| matches!(get(port, "/v1/x").0, 0 | 403);

        let said = cli(&a, &["ban", "add", "127.0.0.0/8", "--ttl", "5m"]);
        assert!(said.contains("banned 127.0.0.0/8 for 5m"), "{said}");
        let banned_at = Instant::now();
        assert!(refused(a.listen), "A enforces its own ban");
        let said = cli(&a, &["ban", "add", "2001:db8:7::/64", "--ttl", "5m"]);
        assert!(said.contains("userspace"), "{said}");
        let mut on_b = false;
        while banned_at.elapsed() < Duration::from_secs(1) {
            if refused(b.listen) {
                on_b = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            on_b,
            "gateway B did not apply the prefix ban within a second:\n{}",
            b.log()
        );
        wait_for("both bans listed on B", Duration::from_secs(1), || {
            let bans = get(b.admin, "/bans").1;
            bans.contains("\"127.0.0.0/8\"") && bans.contains("\"2001:db8:7::/64\"")
        });
        let bans = get(b.admin, "/bans").1;
        assert!(bans.contains("\"enforced\":\"userspace\""), "{bans}");
        assert!(bans.contains("\"reason\":\"manual\""), "{bans}");

        let said = cli(&a, &["ban", "rm", "127.0.0.0/8"]);
        assert!(said.contains("cluster"), "{said}");
        let lifted_at = Instant::now();
        let mut served = false;
        while lifted_at.elapsed() < Duration::from_secs(1) {
            if get(b.listen, "/v1/x").0 == 200 {
                served = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(served, "gateway B kept the lifted ban:\n{}", b.log());
        assert_eq!(get(a.listen, "/v1/x").0, 200, "lifted on A too");
        let said = cli(&a, &["ban", "rm", "2001:db8:7::/64"]);
        assert!(said.contains("unbanned"), "{said}");
        wait_for("the IPv6 ban lifted on B", Duration::from_secs(1), || {
            !get(b.admin, "/bans").1.contains("2001:db8:7::")
        });
    })
    .await
    .unwrap();
}
