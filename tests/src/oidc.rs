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
        Self::launch(port, None)
    }

    /// Starts the provider with access tokens that live `ttl_secs` seconds.
    pub fn start_with_token_ttl(ttl_secs: u64) -> Self {
        Self::launch(0, Some(ttl_secs))
    }

    fn launch(port: u16, token_ttl: Option<u64>) -> Self {
        let mut command = Command::new("node");
        if let Some(ttl) = token_ttl {
            command.env("OIDC_ACCESS_TOKEN_TTL", ttl.to_string());
        }
        let mut child = command
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

    /// The published keys with their private halves (`GET /test/keys`), newest generation first
    /// (the first RSA and the first EC key are the ones the provider signs with).
    pub fn keys(&self) -> Vec<ProviderKey> {
        let body = self.request("GET", "/test/keys", "");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("keys answer JSON");
        json["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| {
                let text = |name: &str| k[name].as_str().map(str::to_owned);
                ProviderKey {
                    jwk: k["jwk"].clone(),
                    pkcs8: hex(&text("pkcs8").expect("pkcs8")),
                    spki_pem: text("spki_pem").expect("spki_pem"),
                    spki_der: hex(&text("spki_der").expect("spki_der")),
                    pkcs1_pem: text("pkcs1_pem"),
                }
            })
            .collect()
    }

    /// The JWKS document exactly as the provider serves it (`GET /jwks`). Counts as a fetch in
    /// [`OidcProvider::jwks_count`].
    pub fn jwks(&self) -> Vec<u8> {
        self.request("GET", "/jwks", "")
    }

    /// How many JWKS requests the provider has served so far (`GET /test/jwks-count`).
    pub fn jwks_count(&self) -> u64 {
        let body = self.request("GET", "/test/jwks-count", "");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("count answer JSON");
        json["count"].as_u64().expect("count number")
    }

    /// How many token requests the provider has answered (`GET /test/token-count`).
    pub fn token_count(&self) -> u64 {
        let body = self.request("GET", "/test/token-count", "");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("count answer JSON");
        json["count"].as_u64().expect("count number")
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
        self.request("POST", path, form)
    }

    /// One HTTP/1.1 exchange with `Connection: close`; returns the body of a 200 answer.
    fn request(&self, method: &str, path: &str, form: &str) -> Vec<u8> {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the provider");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
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

/// One of the provider's signing keys, private half included (`GET /test/keys`). No `Debug`:
/// a failing assertion must not print private keys.
#[derive(Clone)]
pub struct ProviderKey {
    /// The private JWK (`kid`, `alg`, `use` as published).
    pub jwk: serde_json::Value,
    /// The private key as PKCS#8 DER (what `ring` loads).
    pub pkcs8: Vec<u8>,
    /// The public key as SubjectPublicKeyInfo PEM.
    pub spki_pem: String,
    /// The public key as SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// The RSA public key as PKCS#1 PEM (RSA keys only).
    pub pkcs1_pem: Option<String>,
}

impl ProviderKey {
    /// The `kid`.
    pub fn kid(&self) -> &str {
        self.jwk["kid"].as_str().expect("kid")
    }

    /// `RSA` or `EC`.
    pub fn kty(&self) -> &str {
        self.jwk["kty"].as_str().expect("kty")
    }

    /// The public JWK as published (private members removed).
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = self.jwk.clone();
        if let Some(map) = jwk.as_object_mut() {
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                map.remove(private);
            }
        }
        jwk
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.kill();
    }
}
