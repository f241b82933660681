//! A real OpenID provider for tests: `node tests/oidc/provider.js` (oidc-provider 9 from npm,
//! see `tests/oidc/README.md`), owned by a guard that kills it on drop.
//!
//! Everything here is blocking std I/O on purpose: the harness must not depend on the code under
//! test, and a test may call it from any thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The resource (`aud`) of every access token the provider issues.
pub const RESOURCE: &str = "https://api.portcullis.test";
/// Client whose access tokens are RS256, with `roles: ["API.Read"]`.
pub const RS256_CLIENT: &str = "rs256-client";
/// Client whose access tokens are ES256, with `roles: ["API.Read", "API.Write"]`.
pub const ES256_CLIENT: &str = "es256-client";

fn project_dir() -> PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/oidc").into()
}

/// Whether the provider can run (`node` on the PATH, `tests/oidc/node_modules` installed by
/// `xtask/setup.sh`). Otherwise says so and returns `false`, or panics when
/// `PORTCULLIS_REQUIRE_PRIVILEGED=1` or `CI` is set, so CI never skips silently.
pub fn available(test: &str) -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let modules = project_dir().join("node_modules/oidc-provider").exists();
    if node && modules {
        return true;
    }
    let why = if node {
        "tests/oidc/node_modules is missing (run xtask/setup.sh)"
    } else {
        "node is not installed"
    };
    if std::env::var("PORTCULLIS_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
        || std::env::var_os("CI").is_some()
    {
        panic!("{test} needs the test OpenID provider: {why}");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// The running provider; killed on drop.
#[derive(Debug)]
pub struct OidcProvider {
    child: Option<Child>,
    issuer: String,
    port: u16,
}

impl OidcProvider {
    /// Starts the provider on a port it picks.
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts the provider on `port` (0: any) and waits for its READY line.
    pub fn start_on(port: u16) -> Self {
        let mut child = Command::new("node")
            .arg(project_dir().join("provider.js"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // oidc-provider's start-up warnings (Node 20, in-memory adapter) are expected noise.
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node tests/oidc/provider.js");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // A thread reads the READY line so the wait can time out; it then keeps draining
        // stdout until the process ends, so the provider never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(line)) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("test OpenID provider did not print READY: {other:?}");
            }
        };
        let issuer = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected provider output {line:?}"))
            .to_owned();
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in issuer {issuer:?}"));
        OidcProvider {
            child: Some(child),
            issuer,
            port,
        }
    }

    /// The issuer, `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An access token for `client` (client_credentials, scope `api:read`).
    pub fn token(&self, client: &str) -> String {
        let secret = client.replace("-client", "-secret");
        let form = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={secret}&scope=api%3Aread"
        );
        let body = self.post("/token", &form);
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("token response is not JSON ({e})"));
        json["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {json}"))
            .to_owned()
    }

    /// Rotates the signing keys (`POST /test/rotate`); returns the new `kid`s. Tokens issued
    /// from now on use them.
    pub fn rotate(&self) -> Vec<String> {
        let body = self.post("/test/rotate", "");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("rotate answer JSON");
        json["kids"]
            .as_array()
            .expect("kids array")
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect()
    }

    /// Kills the provider now (the guard's drop does the same).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill signals this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A form POST over HTTP/1.1 with `Connection: close`; returns the body of a 200 answer.
    fn post(&self, path: &str, form: &str) -> Vec<u8> {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the provider");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            self.port,
            form.len()
        );
        stream.write_all(request.as_bytes()).expect("send request");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read answer");
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP answer has a header block");
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "{path} answered {head}\n{}",
            String::from_utf8_lossy(&answer[split + 4..])
        );
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "chunked answers are not expected from {path}"
        );
        answer[split + 4..].to_vec()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.kill();
    }
}
