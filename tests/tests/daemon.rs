//! `portcullis run` in userspace-only mode (`[kernel] enabled = false`, no privileges needed):
//! the admin endpoint (`/live`, `/ready`, `/metrics`, `POST /reload`), reloads by admin call
//! and by a change of the config file, a broken config refused with the old one serving, the
//! JSON access log (one line per request, no query string, no secrets), and a graceful drain
//! that lets an in-flight request finish on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::daemon::{Daemon, http_raw, loopback_head, wait_for};
use portcullis_tests::portcullis_bin;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(path: &Path, listen: u16, admin: u16, backend: SocketAddr, route_path: &str) {
    std::fs::write(
        path,
        format!(
            r#"[kernel]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[proxy]
drain_timeout = "5s"

[[listeners]]
name = "web"
bind = "127.0.0.1:{listen}"
protocol = "http"
http_mode = "serve"

[[pools]]
name = "app"
endpoints = ["{backend}"]

[[routes]]
name = "app"
path = "{route_path}"
pool = "app"

[log]
format = "json"
"#
        ),
    )
    .unwrap();
}

/// A minimal HTTP/1.1 exchange: returns (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    http_raw(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ),
    )
}

fn ready(admin: u16) -> bool {
    TcpStream::connect(("127.0.0.1", admin)).is_ok() && http(admin, "GET", "/ready").0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_reloads_access_log_and_drain() {
    let backend = Backend::start("app", Proto::Http1).await;
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    write_config(&cfg, listen, admin, backend.addr, "/v1");
    let mut daemon = Daemon::start(&cfg);
    tokio::task::spawn_blocking(move || wait_for("readiness", || ready(admin)))
        .await
        .unwrap();

    let (status, _) =
        tokio::task::spawn_blocking(move || http(listen, "GET", "/v1/items?api_key=s3cret"))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(http(admin, "GET", "/live").0, 200);
    let (_, metrics) = http(admin, "GET", "/metrics");
    assert!(
        metrics.contains("portcullis_requests_total{route=\"app\",status_class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_request_duration_seconds_bucket"),
        "latency histograms"
    );

    // The access log: one JSON line with the decision, never the query string.
    wait_for("the access log line", || {
        daemon
            .log()
            .iter()
            .any(|l| l.contains("portcullis::access"))
    });
    let line = daemon
        .log()
        .into_iter()
        .find(|l| l.contains("portcullis::access"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON access log line");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "app");
    assert_eq!(v["path"], "/v1/items");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert!(v["request_id"].as_str().is_some_and(|s| s.len() == 32));
    assert!(
        !line.contains("s3cret"),
        "no query string, no secret in the log"
    );

    // A broken config is refused by the admin reload; the old one keeps serving.
    std::fs::write(&cfg, "[kernel]\nenabled = false\n[[routes]]\nname = 1\n").unwrap();
    let (status, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("refused"), "{body}");
    assert_eq!(http(listen, "GET", "/v1/x").0, 200);

    // A good config applies through the admin call...
    write_config(&cfg, listen, admin, backend.addr, "/v2");
    let (status, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(listen, "GET", "/v1/x").0, 404);
    assert_eq!(http(listen, "GET", "/v2/x").0, 200);
    // ...and through a change of the file (polled and debounced).
    write_config(&cfg, listen, admin, backend.addr, "/v3");
    tokio::task::spawn_blocking(move || {
        wait_for("the file-change reload", || {
            http(listen, "GET", "/v3/x").0 == 200
        })
    })
    .await
    .unwrap();
    let (_, metrics) = http(admin, "GET", "/metrics");
    assert!(
        metrics.contains("portcullis_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
    );

    // Graceful drain: a request in flight when SIGTERM arrives still completes.
    let in_flight = tokio::task::spawn_blocking(move || http(listen, "GET", "/v3/delay/700"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        in_flight.await.unwrap().0,
        200,
        "the in-flight request finished during the drain"
    );
}

/// `sha256:<hex>` of a key, the form the key file stores.
fn key_hash(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn write_keys(path: &Path, keys: &[(&str, &str)]) {
    let mut text = String::new();
    for (id, key) in keys {
        text.push_str(&format!(
            "[[keys]]\nid = \"{id}\"\nowner = \"tests\"\nprimary = \"{}\"\nscope = \"all\"\n\n",
            key_hash(key)
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The status of a GET carrying an API key in the default header.
fn with_key(port: u16, key: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/x HTTP/1.1\r\nhost: test\r\nocp-apim-subscription-key: {key}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The API key file is watched like the config file: rewriting it applies the new keys without
/// SIGHUP, a broken rewrite is refused (logged) with the old keys serving, and the next good
/// rewrite applies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_file_change_reloads() {
    let backend = Backend::start("app", Proto::Http1).await;
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    let keys = dir.path().join("keys.toml");
    // Random keys: the log must never show them, which a fixed string could pass by luck.
    let random = |tag: &str| {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
        format!(
            "{tag}{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    };
    let (old_key, new_key) = (random("old"), random("new"));
    write_keys(&keys, &[("client", &old_key)]);
    std::fs::write(
        &cfg,
        format!(
            r#"{head}
[api_keys]
file = "keys.toml"

[[routes]]
name = "app"
path = "/v1"
pool = "app"
api_key = true

# This test polls with a removed key until the new file applies: dozens of refusals from
# loopback, which the default abuse rules would rightly ban.
[abuse]
enabled = false

[log]
format = "json"
"#,
            head = loopback_head(listen, admin, backend.addr)
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&cfg);
    tokio::task::spawn_blocking(move || wait_for("readiness", || ready(admin)))
        .await
        .unwrap();
    let (old, new) = (old_key.clone(), new_key.clone());
    tokio::task::spawn_blocking(move || {
        assert_eq!(with_key(listen, &old), 200);
        assert_eq!(with_key(listen, &new), 401);

        // Same id, another key: the file keeps its length, only its content changes.
        write_keys(&keys, &[("client", &new)]);
        wait_for("the new key after the key file changed", || {
            with_key(listen, &new) == 200
        });
        assert_eq!(with_key(listen, &old), 401, "the removed key is refused");

        // A broken key file: refused, the keys in force keep working.
        std::fs::write(
            &keys,
            "[[keys]]\nid = \"client\"\nprimary = \"not a hash\"\n",
        )
        .unwrap();
        wait_for("the broken key file's reload to be refused", || {
            http(admin, "GET", "/metrics")
                .1
                .contains("portcullis_reloads_total{result=\"error\"} 1")
        });
        assert_eq!(with_key(listen, &new), 200);
        assert_eq!(with_key(listen, &old), 401);

        // Fixed again: applied, although the config file never changed.
        write_keys(&keys, &[("client", &old), ("second", &new)]);
        wait_for("the repaired key file", || with_key(listen, &old) == 200);
        assert_eq!(with_key(listen, &new), 200);
    })
    .await
    .unwrap();

    let log = daemon.log().join("\n");
    let refused = daemon
        .log()
        .into_iter()
        .find(|l| l.contains("reload refused"))
        .expect("the refused reload is logged");
    assert!(refused.contains("keys.toml"), "{refused}");
    assert!(refused.contains("file change"), "{refused}");
    assert!(
        log.contains("watched file changed"),
        "the trigger is logged"
    );
    assert!(
        !log.contains(&old_key) && !log.contains(&new_key),
        "no key in the log"
    );
    let (_, metrics) = http(admin, "GET", "/metrics");
    assert!(
        metrics.contains("portcullis_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
}

/// `portcullis limits show KEY` asks the running gateway's admin endpoint and reports what the
/// key has left of each limit and quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_show_reports_a_keys_remaining_budget() {
    let backend = Backend::start("app", Proto::Http1).await;
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    let key = "limits-show-test-key-0123456789";
    write_keys(&dir.path().join("keys.toml"), &[("acme", key)]);
    std::fs::write(
        &cfg,
        format!(
            r#"{head}
[api_keys]
file = "keys.toml"

[proxy.limits]

[[proxy.limits.rate]]
name = "per-minute"
by = ["api_key"]
requests = 10
per = "1m"

[[proxy.limits.quota]]
name = "daily"
by = ["api_key"]
period = "day"
calls = 100

[[routes]]
name = "app"
path = "/v1"
pool = "app"
api_key = true
"#,
            head = loopback_head(listen, admin, backend.addr)
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&cfg);
    let admin_addr = format!("127.0.0.1:{admin}");
    let output = tokio::task::spawn_blocking(move || {
        wait_for("readiness", || ready(admin));
        for _ in 0..3 {
            assert_eq!(with_key(listen, key), 200);
        }
        Command::new(portcullis_bin())
            .args(["limits", "show", "acme", "--admin", &admin_addr, "--json"])
            .output()
            .expect("run portcullis limits show")
    })
    .await
    .unwrap();
    drop(daemon);
    assert!(output.status.success(), "{output:?}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let rows = rows.as_array().expect("an array");
    let text = serde_json::to_string(rows).unwrap();
    assert!(!text.contains(key), "the key itself is never shown");
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.to_string().contains(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
            .clone()
    };
    let rate = find("per-minute");
    let quota = find("daily");
    assert_eq!(rate["remaining"], 7, "{rate}");
    assert_eq!(quota["calls_remaining"], 97, "{quota}");
    assert_eq!(quota["calls_used"], 3, "{quota}");
}

/// One request with a body to the admin endpoint: (status, body).
fn admin_send(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    http_raw(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// `portcullis ban add|list|rm --admin` against a gateway without the kernel program: the ban
/// is a userspace one and refuses the client (closed at accept, or 403) until it is removed;
/// an allow-listed address, or a network that contains one, is refused with 409; a body that
/// is not a ban request gets 400, an oversized one 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_add_list_rm_through_the_admin_endpoint() {
    let backend = Backend::start("app", Proto::Http1).await;
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    write_config(&cfg, listen, admin, backend.addr, "/v1");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[allow]\ncidrs = [\"127.0.0.2/32\"]\n");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&cfg);
    tokio::task::spawn_blocking(move || {
        wait_for("readiness", || ready(admin));
        let admin_addr = format!("127.0.0.1:{admin}");
        let cli = |args: &[&str]| {
            Command::new(portcullis_bin())
                .args(args)
                .args(["--admin", &admin_addr])
                .output()
                .expect("run portcullis ban")
        };
        assert_eq!(http(listen, "GET", "/v1/x").0, 200);

        let out = cli(&["ban", "add", "127.0.0.1", "--ttl", "10m"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.contains("banned 127.0.0.1/32 for 10m") && stdout.contains("userspace"),
            "{stdout}"
        );
        let status = http(listen, "GET", "/v1/x").0;
        assert!(status == 0 || status == 403, "the banned client got {status}");

        let out = cli(&["ban", "list"]);
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        let line = listed
            .lines()
            .find(|l| l.starts_with("127.0.0.1/32"))
            .unwrap_or_else(|| panic!("{listed}"));
        assert!(line.contains("manual") && line.contains("userspace"), "{line}");

        // A network ban (IPv6 /64): listed as given.
        let out = cli(&["ban", "add", "2001:db8:1::/64", "--reason", "validation"]);
        assert!(out.status.success(), "{out:?}");
        let out = cli(&["ban", "list", "--json"]);
        let bans: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let v6 = bans
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["prefix"] == "2001:db8:1::/64")
            .unwrap_or_else(|| panic!("{bans}"));
        assert_eq!(v6["reason"], "validation");
        assert!(v6["remaining_secs"].is_null(), "until removed: {v6}");

        // Protected addresses are refused, as the abuse detector refuses them.
        for protected in ["127.0.0.2", "127.0.0.0/24"] {
            let out = cli(&["ban", "add", protected]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{protected} was banned");
            assert!(
                stderr.contains("409") && stderr.contains("allow"),
                "{protected}: {stderr}"
            );
        }
        // Bad requests never reach the engine.
        for (body, status) in [
            ("{not json", 400),
            ("{\"prefix\": \"10.0.0.1/8\"}", 400),
            ("{\"prefix\": \"192.0.2.1\", \"ttl_secs\": 0}", 400),
            ("{\"prefix\": \"192.0.2.1\", \"reason\": \"grudge\"}", 400),
            ("{\"prefix\": \"0.0.0.0/0\"}", 400),
            ("{\"prefix\": \"192.0.2.1\", \"extra\": 1}", 400),
        ] {
            let (got, text) = admin_send(admin, "POST", "/bans", body);
            assert_eq!(got, status, "{body}: {text}");
        }
        // An announced body over the limit is refused before it is read.
        let huge = "POST /bans HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: 100000\r\n\r\n";
        assert_eq!(http_raw(admin, huge).0, 413);

        let out = cli(&["ban", "rm", "127.0.0.1"]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("unbanned 127.0.0.1/32 (userspace)"),
            "{out:?}"
        );
        assert_eq!(http(listen, "GET", "/v1/x").0, 200, "served again");
        let out = cli(&["ban", "rm", "127.0.0.1"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("was not banned"),
            "{out:?}"
        );
        // `?addr=` is still understood.
        let (status, _) = admin_send(admin, "DELETE", "/bans?addr=2001:db8:1::/64", "");
        assert_eq!(status, 200);
        let (_, listed) = http(admin, "GET", "/bans");
        assert_eq!(listed.trim(), "[]");
    })
    .await
    .unwrap();
    let log = daemon.log().join("\n");
    assert!(log.contains("\"manual_ban\""), "{log}");
    assert!(log.contains("\"abuse_ban_refused\""), "{log}");
}
