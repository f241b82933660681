//! The cluster store against a real `redis-server` each test starts for itself on a loopback
//! port: shared GCRA rate limits, quota counters per period, ban propagation, behaviour when
//! Redis stops, hangs or loses its scripts, and AUTH.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis::cluster::{
    BanEvent, CallError, Cluster, ClusterConfig, ClusterMetrics, FailMode, NewBan, PasswordSource,
    Period, QuotaPolicy, QuotaUse, RateLimit,
};
use portcullis::kernel::BanReason;
use portcullis::rules::Prefix;
use portcullis_tests::redis::{Redis, redis_server};

fn redis() -> Redis {
    assert!(
        redis_server().is_some(),
        "these tests need redis-server (Debian package; `xtask/setup.sh` installs it)"
    );
    Redis::start()
}

/// Generous timeouts: two debug-built gateways and Redis share two cores here.
fn config(redis: &Redis) -> ClusterConfig {
    let mut c = ClusterConfig::new(redis.address());
    c.timeout = Duration::from_millis(500);
    c.reconnect_backoff = Duration::from_millis(50);
    c.reconnect_backoff_max = Duration::from_millis(300);
    c
}

async fn gateway(config: ClusterConfig) -> (Cluster, ClusterMetrics) {
    let metrics = ClusterMetrics::default();
    let cluster = Cluster::start(config, metrics.clone());
    assert!(
        cluster.wait_connected(Duration::from_secs(5)).await,
        "not connected to the test Redis"
    );
    (cluster, metrics)
}

fn limit(key: &str, rate: u64, per: Duration, burst: u64) -> RateLimit {
    RateLimit {
        key: key.into(),
        rate: NonZeroU64::new(rate).expect("rate"),
        per,
        burst: NonZeroU64::new(burst).expect("burst"),
        cost: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_rate_budget() {
    let redis = redis();
    let (a, metrics_a) = gateway(config(&redis)).await;
    let (b, _) = gateway(config(&redis)).await;
    let allowed = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let rate = limit("route:r:ip:192.0.2.1", 100, Duration::from_secs(1), 10);

    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for cluster in [a.clone(), b.clone()] {
        for _ in 0..3 {
            let (cluster, allowed, denied, rate) = (
                cluster.clone(),
                allowed.clone(),
                denied.clone(),
                rate.clone(),
            );
            tasks.push(tokio::spawn(async move {
                // Bounded: at most a few thousand calls per task over two seconds.
                for _ in 0..100_000 {
                    if started.elapsed() >= run_for {
                        break;
                    }
                    let d = cluster
                        .check_rates(std::slice::from_ref(&rate))
                        .await
                        .expect("Redis answers");
                    if d.allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(d.retry_after() > Duration::ZERO);
                        assert!(d.retry_after() <= Duration::from_millis(10));
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("hammering task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = allowed.load(Ordering::Relaxed) as f64;
    let expected = 100.0 * elapsed + 10.0;
    eprintln!(
        "allowed {allowed} of {} in {elapsed:.3}s, expected {expected:.1}",
        allowed + denied.load(Ordering::Relaxed) as f64
    );
    assert!(
        denied.load(Ordering::Relaxed) > 100,
        "the clients must have asked for more than the budget"
    );
    assert!(
        (allowed - expected).abs() <= expected * 0.05,
        "allowed {allowed}, expected {expected:.1} within 5%"
    );
    assert!(metrics_a.count("rate", "ok") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_enforced_and_several_limits_are_all_or_nothing() {
    let redis = redis();
    let (gw, _) = gateway(config(&redis)).await;
    // One per second, ten at once: the eleventh within the same instant is refused.
    let slow = limit("burst", 1, Duration::from_secs(1), 10);
    let mut admitted = 0;
    for i in 0..15 {
        let d = gw
            .check_rates(std::slice::from_ref(&slow))
            .await
            .expect("answer");
        if d.allowed {
            admitted += 1;
            assert_eq!(d.limits[0].remaining + i, 9, "remaining after request {i}");
        } else {
            let retry = d.limits[0].retry_after;
            assert!(retry > Duration::from_millis(900) && retry <= Duration::from_secs(1));
            assert_eq!(d.limits[0].remaining, 0);
        }
    }
    assert_eq!(admitted, 10);

    // A wide limit and a narrow one: the narrow one refuses the second request, and the wide
    // one is not charged for it.
    let wide = limit("wide", 1000, Duration::from_secs(1), 100);
    let narrow = limit("narrow", 1, Duration::from_secs(60), 1);
    let first = gw
        .check_rates(&[wide.clone(), narrow.clone()])
        .await
        .expect("answer");
    assert!(first.allowed);
    assert_eq!(first.limits[0].remaining, 99);
    let second = gw
        .check_rates(&[wide.clone(), narrow.clone()])
        .await
        .expect("answer");
    assert!(!second.allowed);
    assert!(second.limits[0].allowed && !second.limits[1].allowed);
    assert!(second.limits[0].remaining >= 99, "{second:?}");
    assert!(second.retry_after() > Duration::from_secs(59));
    let only_wide = gw.check_rates(&[wide]).await.expect("answer");
    assert!(only_wide.allowed);
    assert!(only_wide.limits[0].remaining >= 98, "{only_wide:?}");

    // The state expires once the bucket is full again.
    let ttl = redis.command(&["PTTL", "portcullis:rl:narrow"]);
    let ttl: i64 = ttl
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("PTTL integer");
    assert!(ttl > 59_000 && ttl <= 60_001, "PTTL {ttl}");
}

fn quota(key: &str, period: Period, calls: u64, bytes: u64) -> QuotaUse {
    QuotaUse {
        key: key.into(),
        period,
        calls,
        bytes,
        max_calls: Some(5),
        max_bytes: Some(10_000),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_accumulate_and_start_again_each_period() {
    let redis = redis();
    let (a, _) = gateway(config(&redis)).await;
    let (b, _) = gateway(config(&redis)).await;
    let window = Period::Window(Duration::from_secs(2));
    // Start early in a window so the accumulation below happens within one.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("now");
    let into = now.as_millis() % 2000;
    if into > 1200 {
        tokio::time::sleep(Duration::from_millis(2050 - into as u64)).await;
    }

    let first = a
        .add_quotas(&[quota("k1", window, 2, 300)], QuotaPolicy::Refuse)
        .await
        .expect("answer");
    let second = b
        .add_quotas(&[quota("k1", window, 1, 200)], QuotaPolicy::Refuse)
        .await
        .expect("answer");
    assert!(first.within && second.within);
    let usage = second.quotas[0];
    assert_eq!((usage.calls, usage.bytes, usage.over), (3, 500, false));
    assert_eq!(unix(usage.period_end) - unix(usage.period_start), 2);
    assert_eq!(unix(usage.period_start) % 2, 0);

    // Three more calls would make six of five: refused, and nothing counted.
    let refused = a
        .add_quotas(&[quota("k1", window, 3, 0)], QuotaPolicy::Refuse)
        .await
        .expect("answer");
    assert!(!refused.within);
    assert_eq!((refused.quotas[0].calls, refused.quotas[0].over), (3, true));
    // Counted anyway when measuring after the fact.
    let counted = a
        .add_quotas(&[quota("k1", window, 3, 0)], QuotaPolicy::Count)
        .await
        .expect("answer");
    assert!(!counted.within);
    assert_eq!((counted.quotas[0].calls, counted.quotas[0].over), (6, true));

    // The counters' key expires a minute after the period ends.
    let key = format!("portcullis:q:k1:{}", unix(usage.period_start));
    let ttl = redis.command(&["TTL", &key]);
    let ttl: i64 = ttl
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("TTL integer");
    assert!((58..=62).contains(&ttl), "TTL {ttl} of {key}");

    // The next period starts from zero.
    let wait = usage
        .period_end
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let next = b
        .add_quotas(&[quota("k1", window, 1, 10)], QuotaPolicy::Refuse)
        .await
        .expect("answer");
    assert!(next.within);
    assert_eq!((next.quotas[0].calls, next.quotas[0].bytes), (1, 10));
    assert!(next.quotas[0].period_start >= usage.period_end);

    // Calendar periods, by the server's clock (this machine's, within a second).
    let d = a
        .add_quotas(
            &[
                quota("h", Period::Hour, 1, 0),
                quota("d", Period::Day, 1, 0),
                quota("m", Period::Month, 1, 0),
            ],
            QuotaPolicy::Count,
        )
        .await
        .expect("answer");
    let (h, day, m) = (d.quotas[0], d.quotas[1], d.quotas[2]);
    assert_eq!(unix(h.period_start) % 3600, 0);
    assert_eq!(unix(h.period_end) - unix(h.period_start), 3600);
    assert_eq!(unix(day.period_start) % 86400, 0);
    assert_eq!(unix(day.period_end) - unix(day.period_start), 86400);
    let start = time::OffsetDateTime::from_unix_timestamp(unix(m.period_start) as i64)
        .expect("month start");
    let end =
        time::OffsetDateTime::from_unix_timestamp(unix(m.period_end) as i64).expect("month end");
    let today = time::OffsetDateTime::now_utc();
    assert_eq!((start.day(), start.hour(), start.minute()), (1, 0, 0));
    assert_eq!((start.year(), start.month()), (today.year(), today.month()));
    assert_eq!((end.day(), end.hour()), (1, 0));
    assert_eq!(end.month(), today.month().next());
    assert!(m.period_start <= SystemTime::now() && SystemTime::now() < m.period_end);
}

async fn next_event(sub: &mut portcullis::cluster::BanSubscription, within: Duration) -> BanEvent {
    tokio::time::timeout(within, sub.next())
        .await
        .expect("a ban event in time")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_reach_every_gateway_and_later_ones_get_the_current_bans() {
    let redis = redis();
    let (a, _) = gateway(config(&redis)).await;
    let (b, _) = gateway(config(&redis)).await;
    let mut sub = b.subscribe_bans();
    assert_eq!(
        next_event(&mut sub, Duration::from_secs(5)).await,
        BanEvent::Snapshot(Vec::new())
    );

    let prefix: Prefix = "203.0.113.7/32".parse().expect("prefix");
    let sent = Instant::now();
    let published = a
        .publish_ban(&NewBan {
            prefix,
            reason: BanReason::RateLimit,
            ttl: Duration::from_secs(60),
            evidence: "429 x 500 in 10s on /orders".into(),
        })
        .await
        .expect("published");
    let BanEvent::Banned(got) = next_event(&mut sub, Duration::from_secs(1)).await else {
        panic!("expected a ban");
    };
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(got, published);
    assert_eq!(got.prefix, prefix);
    assert_eq!(got.reason, BanReason::RateLimit);
    assert_eq!(got.origin, a.instance_id());
    assert_ne!(a.instance_id(), b.instance_id());
    assert_eq!(got.remaining, Duration::from_secs(60));
    assert_eq!(got.evidence, "429 x 500 in 10s on /orders");

    // A second ban, and one that expires almost at once.
    let range: Prefix = "2001:db8:bad::/48".parse().expect("prefix");
    a.publish_ban(&NewBan {
        prefix: range,
        reason: BanReason::AuthFailure,
        ttl: Duration::from_secs(600),
        evidence: "x".repeat(5000),
    })
    .await
    .expect("published");
    let short: Prefix = "198.51.100.0/24".parse().expect("prefix");
    a.publish_ban(&NewBan {
        prefix: short,
        reason: BanReason::Manual,
        ttl: Duration::from_millis(200),
        evidence: String::new(),
    })
    .await
    .expect("published");
    for _ in 0..2 {
        assert!(matches!(
            next_event(&mut sub, Duration::from_secs(1)).await,
            BanEvent::Banned(_)
        ));
    }

    // Unban reaches the other gateway too.
    assert!(a.unban(&prefix).await.expect("unbanned"));
    assert!(!a.unban(&prefix).await.expect("answer"), "already gone");
    assert_eq!(
        next_event(&mut sub, Duration::from_secs(1)).await,
        BanEvent::Unbanned {
            prefix,
            origin: a.instance_id().to_owned()
        }
    );

    // A gateway started later lists the bans in force: not the unbanned, not the expired.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, _) = gateway(config(&redis)).await;
    let current = c.current_bans().await.expect("listed");
    assert_eq!(current.len(), 1, "{current:?}");
    assert_eq!(current[0].prefix, range);
    assert_eq!(current[0].reason, BanReason::AuthFailure);
    assert_eq!(current[0].evidence.len(), 1024, "evidence is capped");
    assert!(current[0].remaining > Duration::from_secs(590));
    let mut late = c.subscribe_bans();
    let BanEvent::Snapshot(snapshot) = next_event(&mut late, Duration::from_secs(5)).await else {
        panic!("a subscription starts with a snapshot");
    };
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].prefix, range);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_gives_unavailable_fast_and_reconnection_follows() {
    let mut redis = redis();
    let mut cfg = config(&redis);
    cfg.timeout = Duration::from_millis(100);
    cfg.rate_limits = FailMode::Closed;
    let (gw, metrics) = gateway(cfg).await;
    let mut sub = gw.subscribe_bans();
    assert!(matches!(
        next_event(&mut sub, Duration::from_secs(5)).await,
        BanEvent::Snapshot(_)
    ));
    let rate = [limit("outage", 1000, Duration::from_secs(1), 1000)];
    assert!(gw.check_rates(&rate).await.expect("answer").allowed);

    // Killed: every call answers Unavailable within the timeout, none hangs.
    redis.stop();
    for _ in 0..20 {
        let started = Instant::now();
        let e = gw.check_rates(&rate).await.expect_err("Redis is down");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "took {:?}",
            started.elapsed()
        );
        assert!(e.refuses(), "rate_limits = closed");
        assert!(
            matches!(e.cause, CallError::NotConnected | CallError::Lost(_)),
            "{e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gw.is_connected());
    assert_eq!(metrics.connected.get(), 0);
    let unavailable = metrics.count("rate", "unavailable") + metrics.count("rate", "error");
    assert!(unavailable >= 20, "{unavailable}");

    // Back on the same port: calls succeed again, and the subscription is renewed.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if gw.check_rates(&rate).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.reconnects.get() >= 1);
    assert_eq!(metrics.connected.get(), 1);
    assert_eq!(
        next_event(&mut sub, Duration::from_secs(10)).await,
        BanEvent::Snapshot(Vec::new()),
        "a renewed subscription starts with a snapshot (empty: the restarted Redis kept nothing)"
    );

    // Frozen: the connection stays open but nothing answers; calls time out on time.
    redis.pause();
    for _ in 0..5 {
        let started = Instant::now();
        let e = gw.check_rates(&rate).await.expect_err("Redis is frozen");
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "took {took:?} with a 100 ms timeout"
        );
        assert!(
            matches!(
                e.cause,
                CallError::Timeout | CallError::NotConnected | CallError::Lost(_)
            ),
            "{e}"
        );
    }
    assert!(metrics.count("rate", "timeout") >= 1);
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.check_rates(&rate).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no answer within 10 s of resuming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_redis_are_sent_again() {
    let redis = redis();
    let (gw, metrics) = gateway(config(&redis)).await;
    let rate = [limit("flush", 100, Duration::from_secs(1), 10)];
    assert!(gw.check_rates(&rate).await.expect("answer").allowed);
    assert!(redis.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    let d = gw
        .check_rates(&rate)
        .await
        .expect("answer after SCRIPT FLUSH");
    assert!(d.allowed);
    assert_eq!(
        d.limits[0].remaining, 8,
        "the state survived, only the script was lost"
    );
    let quota = [quota("flush", Period::Day, 1, 1)];
    assert!(redis.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    assert!(gw.add_quotas(&quota, QuotaPolicy::Count).await.is_ok());
    assert!(redis.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    assert!(gw.current_bans().await.is_ok());
    assert_eq!(metrics.count("rate", "error"), 0);
    assert_eq!(metrics.count("rate", "ok"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_redis_needs_the_password() {
    let redis = Redis::start_with(&["--requirepass", "correct horse"]);
    let file = redis.dir().join("password");

    std::fs::write(&file, "wrong\n").expect("write");
    let mut cfg = config(&redis);
    cfg.password = Some(PasswordSource {
        env: None,
        file: Some(file.clone()),
    });
    let metrics = ClusterMetrics::default();
    let refused = Cluster::start(cfg.clone(), metrics.clone());
    assert!(!refused.wait_connected(Duration::from_millis(800)).await);
    assert!(metrics.connection_errors.get() >= 1);
    let e = refused
        .check_rates(&[limit("auth", 1, Duration::from_secs(1), 1)])
        .await
        .expect_err("not authenticated");
    assert_eq!(e.cause, CallError::NotConnected);
    assert!(!e.refuses(), "rate_limits defaults to open");

    // The file is read at each connect: fixing it is enough.
    std::fs::write(&file, "correct horse\n").expect("write");
    assert!(refused.wait_connected(Duration::from_secs(5)).await);
    assert!(
        refused
            .check_rates(&[limit("auth", 1, Duration::from_secs(1), 1)])
            .await
            .is_ok()
    );
}

/// TLS to Redis (`[cluster.tls]`): a Redis serving TLS only and requiring client certificates.
/// The gateway connects when it trusts the server's CA and presents its certificate; it does
/// not with another CA, without a certificate, or in plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_verifies_the_server_and_presents_the_gateway_certificate() {
    use portcullis::cluster::ClusterTls;
    use portcullis::config::{ClientIdentity, UpstreamTls};
    use portcullis_tests::pki::TestPki;

    assert!(redis_server().is_some(), "needs redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new("redis-tls");
    let (cert, key) = pki.write_server(dir.path(), "redis", &["localhost", "127.0.0.1"]);
    let ca = pki.write_ca(dir.path());
    let redis = Redis::start_tls(&cert, &key, &ca);
    let gateway_cert = pki.client("gateway", &[]);
    let identity = ClientIdentity {
        chain: gateway_cert.chain(),
        key: Arc::new(gateway_cert.private_key()),
        cert_file: dir.path().join("unused.crt"),
        key_file: dir.path().join("unused.key"),
    };
    let tls = |roots: Arc<rustls::RootCertStore>, identity: Option<ClientIdentity>| {
        let mut c = config(&redis);
        c.connect_timeout = Duration::from_millis(500);
        c.tls = Some(ClusterTls(UpstreamTls {
            roots,
            ca_file: ca.clone(),
            server_name: None,
            client_identity: identity,
        }));
        c
    };

    // Trusted server, certificate presented: connected, and the store answers.
    let (store, _) = gateway(tls(pki.roots(), Some(identity.clone()))).await;
    let answered = store
        .check_rates(&[limit("tls", 10, Duration::from_secs(1), 10)])
        .await;
    assert!(answered.is_ok(), "{answered:?}");

    // Each of these is refused, and the store reports Redis unreachable (mode open).
    let other_ca = TestPki::new("not-redis");
    let refused = [
        ("another CA", tls(other_ca.roots(), Some(identity.clone()))),
        ("no client certificate", tls(pki.roots(), None)),
        ("plain TCP", config(&redis)),
    ];
    for (what, cfg) in refused {
        let metrics = ClusterMetrics::default();
        let store = Cluster::start(cfg, metrics.clone());
        assert!(
            !store.wait_connected(Duration::from_millis(800)).await,
            "{what}: connected"
        );
        assert!(metrics.connection_errors.get() >= 1, "{what}");
        let e = store
            .check_rates(&[limit("tls", 10, Duration::from_secs(1), 10)])
            .await
            .expect_err("not connected");
        assert_eq!(e.cause, CallError::NotConnected, "{what}");
    }
}
