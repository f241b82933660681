//! `cargo xtask bench auth`: what identity costs in the request path, Portcullis against Envoy.
//!
//! One run, one machine, one backend, one load generator:
//!
//! 1. **Throughput and latency per scenario.** Requests per second and p99 through each proxy
//!    (TLS 1.3, HTTP/1.1 keep-alive) to the same backend: no authentication (baseline), an
//!    RS256 and an ES256 bearer token repeated, a new RS256 and ES256 token on every request
//!    (pre-minted, each with its own `jti`, so no verified-token cache can help), an API key,
//!    client certificates (mTLS) on keep-alive connections, and a new TLS connection per
//!    request with and without a client certificate (where mTLS costs: the handshake). Envoy
//!    validates tokens with its `jwt_authn` filter (its verified-token cache switched on) and
//!    keys with `api_key_auth`.
//! 2. **The provider.** RSA-2048 and P-256 signing keys generated here; discovery and the JWKS
//!    served by an in-process server on 127.0.0.1 that both proxies fetch from.
//! 3. **One validation, in process**: `portcullis::identity::jwt::validate` on tokens it has
//!    never seen (RS256, ES256), mean over many iterations.
//!
//! The load generator is the one below (hyper over rustls) for every row, because oha cannot
//! change a header per request; using it for all rows keeps them comparable. Each measurement
//! is a short warm-up on the same connections, then a fixed time (or, for new tokens, until
//! that run's share of the pre-minted tokens is spent); every measurement is taken three times,
//! interleaved, and the median reported.
//!
//! Everything listens on and sends to 127.0.0.1 only. Every loop is bounded in time and count.
//! Every process started here is owned by a guard that stops it by pid on drop, so an error
//! cleans up too; the temporary directory (configs, certificates, keys, logs) goes with it.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use portcullis::identity::api_keys::{generate_key, hash_key};
use portcullis::identity::jwt::{self, ValidationPolicy};
use portcullis::identity::oidc::{OidcConfig, OidcProvider};
use portcullis::identity::validator::TokenValidator;
use portcullis_tests::pki::{Leaf, TestPki};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio_rustls::TlsConnector;

use crate::bench_util::{
    Handler, LoopbackServer, Proc, Sample, envoy_binary, free_ports, install_tools, loadavg,
    loopback, median, versions,
};

/// Connections of the load generator, each with one request in flight.
const CONNECTIONS: usize = 64;
/// Threads of the load generator's runtime, and worker threads of each proxy (Portcullis'
/// runtime has two workers; Envoy `--concurrency`).
const WORKERS: usize = 2;
pub(crate) const WARM_UP: Duration = Duration::from_millis(500);
pub(crate) const MEASURE: Duration = Duration::from_secs(3);
/// Each measurement is repeated and the median reported: the two cores are shared.
const RUNS: usize = 3;
/// New tokens per run and algorithm; each run spends its own share, so a proxy never sees a
/// token twice. A run ends early when its share is spent.
const FRESH_PER_RUN: usize = 20_000;
/// One request that takes longer than this counts as an error and its connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Validations per algorithm for the in-process cost.
const VERIFY_ITERATIONS: usize = 10_000;
/// Cache hits timed (each well under a microsecond, so many more).
const CACHE_HIT_ITERATIONS: usize = 1_000_000;
const AUDIENCE: &str = "api://bench";
const API_KEY_HEADER: &str = "ocp-apim-subscription-key";
/// How long the proxies get to load the provider's keys before the checks fail.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Baseline,
    Rs256Same,
    Es256Same,
    Rs256Fresh,
    Es256Fresh,
    ApiKey,
    Mtls,
    TlsHandshake,
    MtlsHandshake,
}

const SCENARIOS: [Scenario; 9] = [
    Scenario::Baseline,
    Scenario::Rs256Same,
    Scenario::Es256Same,
    Scenario::Rs256Fresh,
    Scenario::Es256Fresh,
    Scenario::ApiKey,
    Scenario::Mtls,
    Scenario::TlsHandshake,
    Scenario::MtlsHandshake,
];

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Baseline => "no auth (baseline)",
            Scenario::Rs256Same => "RS256 token, same every request",
            Scenario::Es256Same => "ES256 token, same every request",
            Scenario::Rs256Fresh => "RS256 token, new every request",
            Scenario::Es256Fresh => "ES256 token, new every request",
            Scenario::ApiKey => "API key (header)",
            Scenario::Mtls => "mTLS, keep-alive",
            Scenario::TlsHandshake => "TLS, new connection per request (no client cert)",
            Scenario::MtlsHandshake => "mTLS, new connection per request",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Scenario::Rs256Same
            | Scenario::Es256Same
            | Scenario::Rs256Fresh
            | Scenario::Es256Fresh => "/jwt",
            Scenario::ApiKey => "/key",
            Scenario::Baseline
            | Scenario::Mtls
            | Scenario::TlsHandshake
            | Scenario::MtlsHandshake => "/none",
        }
    }

    fn mtls(self) -> bool {
        matches!(self, Scenario::Mtls | Scenario::MtlsHandshake)
    }

    fn new_connections(self) -> bool {
        matches!(self, Scenario::TlsHandshake | Scenario::MtlsHandshake)
    }

    /// The header that carries the credential, if the scenario sends one.
    fn header(self) -> Option<HeaderName> {
        match self {
            Scenario::Rs256Same
            | Scenario::Es256Same
            | Scenario::Rs256Fresh
            | Scenario::Es256Fresh => Some(header::AUTHORIZATION),
            Scenario::ApiKey => Some(HeaderName::from_static(API_KEY_HEADER)),
            _ => None,
        }
    }
}

/// The credentials every scenario sends, as header values.
struct Credentials {
    rs_same: HeaderValue,
    es_same: HeaderValue,
    rs_fresh: Arc<[HeaderValue]>,
    es_fresh: Arc<[HeaderValue]>,
    api_key: HeaderValue,
}

/// Where a request's header value comes from.
#[derive(Clone)]
pub(crate) enum Values {
    None,
    Same(HeaderValue),
    /// `pool[start..end]`, each value once, in order.
    Pool {
        pool: Arc<[HeaderValue]>,
        start: usize,
        end: usize,
    },
}

impl Credentials {
    /// What the warm-up sends, and what the measurement of `run` sends.
    fn values(&self, s: Scenario, run: usize) -> (Values, Values) {
        let fresh = |pool: &Arc<[HeaderValue]>| Values::Pool {
            pool: pool.clone(),
            start: run * FRESH_PER_RUN,
            end: ((run + 1) * FRESH_PER_RUN).min(pool.len()),
        };
        match s {
            Scenario::Rs256Same => (
                Values::Same(self.rs_same.clone()),
                Values::Same(self.rs_same.clone()),
            ),
            Scenario::Es256Same => (
                Values::Same(self.es_same.clone()),
                Values::Same(self.es_same.clone()),
            ),
            // The warm-up repeats one token so that it spends none of the new ones.
            Scenario::Rs256Fresh => (Values::Same(self.rs_same.clone()), fresh(&self.rs_fresh)),
            Scenario::Es256Fresh => (Values::Same(self.es_same.clone()), fresh(&self.es_fresh)),
            Scenario::ApiKey => (
                Values::Same(self.api_key.clone()),
                Values::Same(self.api_key.clone()),
            ),
            _ => (Values::None, Values::None),
        }
    }

    /// One valid value for the scenario, for the checks before the load.
    fn sample(&self, s: Scenario) -> Option<HeaderValue> {
        match s {
            Scenario::Rs256Same | Scenario::Rs256Fresh => Some(self.rs_same.clone()),
            Scenario::Es256Same | Scenario::Es256Fresh => Some(self.es_same.clone()),
            Scenario::ApiKey => Some(self.api_key.clone()),
            _ => None,
        }
    }
}

/// A proxy under test: where its listeners are. `mtls` is the reason when it has none.
struct Target {
    name: &'static str,
    main: SocketAddr,
    mtls: Result<SocketAddr, String>,
}

/// The runs of one scenario against one target, or why it was not measured.
type Cell = Result<Vec<Sample>, String>;

// ---------------------------------------------------------------------------------------------
// Entry

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    install_tools()?;
    let portcullis_bin = crate::build_portcullis()?;
    let envoy_bin = envoy_binary()?;

    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-auth")
        .tempdir()?;
    let pki = TestPki::new("bench-auth");
    let (cert, key) = pki.write_server(dir.path(), "server", &["localhost", "127.0.0.1"]);
    // A separate CA for clients, as in a real deployment: the server's CA must not vouch for
    // client identities.
    let client_pki = TestPki::new("bench-auth-clients");
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca, client_pki.ca_pem())?;
    let client = client_pki.client("bench-client", &[]);

    println!("generating the provider's RSA-2048 and P-256 signing keys");
    let signing = SigningKeys::generate()?;
    let (provider, issuer, jwks_fetches) = start_provider(&signing.jwks)?;

    // The proxies first, so that a configuration either refuses fails before the minutes of
    // minting; they idle meanwhile.
    let api_key = generate_key();
    let backend = LoopbackServer::backend()?;
    let ports = free_ports(6)?;
    let files = Files {
        dir: dir.path(),
        cert: &cert,
        key: &key,
        client_ca: &client_ca,
    };
    let (mut portcullis, portcullis_mtls) = start_portcullis(
        &portcullis_bin,
        &files,
        [ports[0], ports[1], ports[2]],
        backend.addr,
        &issuer,
        &api_key,
    )?;
    let mut envoy = start_envoy(
        &envoy_bin,
        &files,
        [ports[3], ports[4], ports[5]],
        backend.addr,
        provider.addr,
        &issuer,
        &api_key,
    )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let fresh = FRESH_PER_RUN * RUNS;
    let minting = Instant::now();
    let rs_fresh = mint_pool(&signing, Alg::Rs256, &issuer, now, fresh)?;
    let es_fresh = mint_pool(&signing, Alg::Es256, &issuer, now, fresh)?;
    println!(
        "minted {fresh} RS256 and {fresh} ES256 tokens in {:.1} s",
        minting.elapsed().as_secs_f64()
    );
    let rng = SystemRandom::new();
    let rs_same = signing.mint(Alg::Rs256, &claims(&issuer, "same-rs", now), &rng)?;
    let es_same = signing.mint(Alg::Es256, &claims(&issuer, "same-es", now), &rng)?;

    // In process before any load, while the proxies idle.
    let per_validation = per_validation(&signing.jwks, &issuer, &rs_fresh, &es_fresh)?;
    for row in &per_validation {
        println!("{}: {}", row.what, row.figure());
    }

    let bearer = |t: &str| HeaderValue::from_str(&format!("Bearer {t}"));
    let credentials = Credentials {
        rs_same: bearer(&rs_same)?,
        es_same: bearer(&es_same)?,
        rs_fresh: rs_fresh
            .iter()
            .map(|t| bearer(t))
            .collect::<Result<Vec<_>, _>>()?
            .into(),
        es_fresh: es_fresh
            .iter()
            .map(|t| bearer(t))
            .collect::<Result<Vec<_>, _>>()?
            .into(),
        api_key: HeaderValue::from_str(&api_key)?,
    };
    drop((rs_fresh, es_fresh));

    let mut versions = versions(&portcullis_bin, &envoy_bin, false)?;
    let targets = [
        Target {
            name: "Portcullis",
            main: loopback(ports[0]),
            mtls: portcullis_mtls.map(|()| loopback(ports[1])),
        },
        Target {
            name: "Envoy",
            main: loopback(ports[3]),
            mtls: Ok(loopback(ports[4])),
        },
    ];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    let tls_plain = client_tls(pki.roots(), None)?;
    let tls_client = client_tls(pki.roots(), Some(&client))?;
    let connectors = Connectors {
        plain: tls_plain,
        client: tls_client,
    };
    runtime.block_on(check_all(&targets, &connectors, &credentials))?;

    let load_before = loadavg();
    let mut cells: Vec<Vec<Cell>> = SCENARIOS
        .iter()
        .map(|&s| {
            targets
                .iter()
                .map(|t| match (&t.mtls, s.mtls()) {
                    (Err(why), true) => Err(why.clone()),
                    _ => Ok(Vec::new()),
                })
                .collect()
        })
        .collect();
    for run in 0..RUNS {
        for (si, &scenario) in SCENARIOS.iter().enumerate() {
            // Who goes first alternates from run to run, so that drift on the shared cores
            // does not always favour the same proxy.
            let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for ti in order {
                let target = &targets[ti];
                let Ok(samples) = &mut cells[si][ti] else {
                    continue;
                };
                portcullis.check_running()?;
                envoy.check_running()?;
                let (warm, measure) = credentials.values(scenario, run);
                let spec = Arc::new(Spec::new(target, scenario, &connectors)?);
                let s = runtime.block_on(load(spec, warm, measure));
                println!(
                    "run {}/{RUNS} {:<11} {:<50} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                    run + 1,
                    target.name,
                    scenario.label(),
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors
                );
                samples.push(s);
            }
        }
    }
    let load_after = loadavg();
    portcullis.check_running()?;
    envoy.check_running()?;
    drop(runtime);
    drop(envoy);
    drop(portcullis);

    versions.push((
        "load average (1, 5, 15 min) before / after the load runs",
        format!("{load_before} / {load_after}"),
    ));
    versions.push((
        "JWKS fetches from the provider during the run (both proxies)",
        jwks_fetches.load(Ordering::Relaxed).to_string(),
    ));
    versions.push((
        "whole benchmark (after the build)",
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    drop(provider);
    let report = report(&targets, &cells, &per_validation, &versions)?;
    let out = crate::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("auth.md"), &report)?;
    println!("\n{report}\nwritten to target/bench/auth.md");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The provider: keys, tokens, discovery and JWKS

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    fn kid(self) -> &'static str {
        match self {
            Alg::Rs256 => "bench-rsa",
            Alg::Es256 => "bench-ec",
        }
    }
}

/// The provider's signing keys and the JWKS that publishes their public halves.
struct SigningKeys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    jwks: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKeys {
    fn generate() -> anyhow::Result<Self> {
        use rsa::pkcs8::EncodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        // ring signs fast but cannot generate RSA keys; the rsa crate makes the key once.
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)?;
        let der = rsa_key.to_pkcs8_der()?;
        let rsa = RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|e| anyhow!("RSA key: {e}"))?;
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| anyhow!("P-256 key"))?;
        let ec = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("P-256 key: {e}"))?;
        // Uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = ec.public_key().as_ref();
        if point.len() != 65 {
            bail!("unexpected P-256 public key length {}", point.len());
        }
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": Alg::Rs256.kid(), "use": "sig", "alg": "RS256",
             "n": b64(&rsa_key.n().to_bytes_be()), "e": b64(&rsa_key.e().to_bytes_be())},
            {"kty": "EC", "kid": Alg::Es256.kid(), "use": "sig", "alg": "ES256", "crv": "P-256",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        ]})
        .to_string();
        Ok(Self { rsa, ec, jwks })
    }

    fn mint(
        &self,
        alg: Alg,
        claims: &serde_json::Value,
        rng: &SystemRandom,
    ) -> anyhow::Result<String> {
        let head = json!({"alg": alg.name(), "kid": alg.kid(), "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(head.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match alg {
            Alg::Rs256 => {
                let mut out = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(&sig::RSA_PKCS1_SHA256, rng, input.as_bytes(), &mut out)
                    .map_err(|_| anyhow!("RS256 signing failed"))?;
                out
            }
            Alg::Es256 => self
                .ec
                .sign(rng, input.as_bytes())
                .map_err(|_| anyhow!("ES256 signing failed"))?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", b64(&signature)))
    }
}

/// The claims of every token: valid for an hour from `now`, `jti` makes each one distinct.
fn claims(issuer: &str, jti: &str, now: u64) -> serde_json::Value {
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("user-{jti}"),
        "roles": ["API.Read"],
        "iat": now,
        "exp": now + 3600,
        "jti": jti,
    })
}

/// `n` distinct tokens, minted on every core (RSA signing is the slow part of the set-up).
fn mint_pool(
    keys: &SigningKeys,
    alg: Alg,
    issuer: &str,
    now: u64,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<Vec<String>> {
                    let rng = SystemRandom::new();
                    (t * per..((t + 1) * per).min(n))
                        .map(|i| {
                            let jti = format!("{}-{i}", alg.name());
                            keys.mint(alg, &claims(issuer, &jti, now), &rng)
                        })
                        .collect()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow!("minting thread panicked"))??);
        }
        Ok(all)
    })
}

/// Discovery and the JWKS on 127.0.0.1, counting JWKS fetches (they should be a handful: a
/// proxy that fetched per request would show here). Returns the server, the issuer URL and
/// the counter.
fn start_provider(jwks: &str) -> anyhow::Result<(LoopbackServer, String, Arc<AtomicU64>)> {
    // The issuer contains the port, known only once the server is bound.
    let issuer_cell: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let fetches = Arc::new(AtomicU64::new(0));
    let jwks = Bytes::from(jwks.to_owned());
    let handler: Arc<Handler> = {
        let issuer_cell = issuer_cell.clone();
        let fetches = fetches.clone();
        Arc::new(move |req: &Request<Incoming>| {
            let json = |body: Bytes| {
                let mut r = Response::new(Full::new(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=3600"),
                );
                r
            };
            let issuer = issuer_cell.get().map_or("", String::as_str);
            match req.uri().path() {
                "/.well-known/openid-configuration" => json(Bytes::from(
                    json!({
                        "issuer": issuer,
                        "jwks_uri": format!("{issuer}/jwks"),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    })
                    .to_string(),
                )),
                "/jwks" => {
                    fetches.fetch_add(1, Ordering::Relaxed);
                    json(jwks.clone())
                }
                _ => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
            }
        })
    };
    let server = LoopbackServer::start("bench-provider", handler)?;
    let issuer = format!("http://{}", server.addr);
    issuer_cell
        .set(issuer.clone())
        .map_err(|_| anyhow!("issuer set twice"))?;
    Ok((server, issuer, fetches))
}

// ---------------------------------------------------------------------------------------------
// One validation, in process

struct VerifyRow {
    what: String,
    iterations: usize,
    /// Mean per operation; `None` when not measured (see `note`).
    ns: Option<f64>,
    target: &'static str,
    note: String,
}

impl VerifyRow {
    fn figure(&self) -> String {
        match self.ns {
            Some(ns) => format!(
                "{ns:.0} ns per operation over {} iterations",
                self.iterations
            ),
            None => self.note.clone(),
        }
    }
}

/// `jwt::validate` against the provider's key set, each call on a token it has never seen
/// (the whole check: parsing, signature, claims); then the same through the provider's
/// validator and its verified-token cache (misses, then hits). Each timed over many calls;
/// every call must succeed.
fn per_validation(
    jwks: &str,
    issuer: &str,
    rs: &[String],
    es: &[String],
) -> anyhow::Result<Vec<VerifyRow>> {
    let keys = jwt::parse_jwks(jwks.as_bytes())?;
    let policy = ValidationPolicy::new(issuer, vec![AUDIENCE.into()]);
    let mut rows = Vec::new();
    for (alg, tokens) in [("RS256", rs), ("ES256", es)] {
        let n = VERIFY_ITERATIONS.min(tokens.len());
        // The last tokens of the pool warm the code path without being timed.
        for t in tokens.iter().rev().take(200) {
            jwt::validate(t, &keys, &policy, SystemTime::now())?;
        }
        let now = SystemTime::now();
        let start = Instant::now();
        let mut ok = 0usize;
        for t in &tokens[..n] {
            if jwt::validate(std::hint::black_box(t), &keys, &policy, now).is_ok() {
                ok += 1;
            }
        }
        let elapsed = start.elapsed();
        if ok != n {
            bail!("{alg}: {} of {n} tokens failed validation", n - ok);
        }
        rows.push(VerifyRow {
            what: format!("cold verify, {alg} (`jwt::validate`, a token never seen)"),
            iterations: n,
            ns: Some(elapsed.as_nanos() as f64 / n as f64),
            target: "-",
            note: String::new(),
        });
    }
    // The entry point the proxy calls: the provider's keys (installed directly, no network),
    // its policy and its verified-token cache.
    let provider = OidcProvider::new(OidcConfig::new(issuer))?;
    provider.install_jwks(jwks.as_bytes())?;
    let validator = TokenValidator::new(provider, policy);
    for (alg, tokens) in [("RS256", rs), ("ES256", es)] {
        let n = VERIFY_ITERATIONS.min(tokens.len());
        let now = SystemTime::now();
        let start = Instant::now();
        let mut ok = 0usize;
        for t in &tokens[..n] {
            if validator
                .validate_cached(std::hint::black_box(t), now)
                .is_ok()
            {
                ok += 1;
            }
        }
        let elapsed = start.elapsed();
        if ok != n {
            bail!("{alg} through the cache: {} of {n} tokens failed", n - ok);
        }
        rows.push(VerifyRow {
            what: format!(
                "cache miss, {alg} (`TokenValidator::validate_cached`, a token never seen: \
                 hash, verify, insert)"
            ),
            iterations: n,
            ns: Some(elapsed.as_nanos() as f64 / n as f64),
            target: "-",
            note: String::new(),
        });
    }
    // A few tokens, each verified and cached once before the clock starts (the miss loops
    // above have filled the cache with other tokens, so these may have been evicted).
    let hits = &rs[..16.min(rs.len())];
    let now = SystemTime::now();
    for t in hits {
        validator.validate_cached(t, now)?;
    }
    let start = Instant::now();
    let mut ok = 0usize;
    for i in 0..CACHE_HIT_ITERATIONS {
        let t = &hits[i % hits.len()];
        if validator
            .validate_cached(std::hint::black_box(t), now)
            .is_ok()
        {
            ok += 1;
        }
    }
    let elapsed = start.elapsed();
    if ok != CACHE_HIT_ITERATIONS {
        bail!("cache hits: {} calls failed", CACHE_HIT_ITERATIONS - ok);
    }
    let stats = validator.cache_stats();
    rows.push(VerifyRow {
        what: format!(
            "cache hit, RS256 (`validate_cached`, {} tokens verified before, in turn)",
            hits.len()
        ),
        iterations: CACHE_HIT_ITERATIONS,
        ns: Some(elapsed.as_nanos() as f64 / CACHE_HIT_ITERATIONS as f64),
        target: "< 1 µs",
        note: format!("cache stats after the loops: {stats:?}"),
    });
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// The proxies

/// Files both proxies use.
struct Files<'a> {
    dir: &'a Path,
    cert: &'a Path,
    key: &'a Path,
    client_ca: &'a Path,
}

/// Portcullis with a TLS listener (ports[0]) and, if this build accepts it, a second one that
/// requires client certificates (ports[1]); admin on ports[2]. Routes: `/none` (nothing
/// required), `/jwt` (a token from the provider), `/key` (an API key from a hashed key file).
/// Returns the process and whether the mTLS listener is in (else why not).
fn start_portcullis(
    bin: &Path,
    f: &Files,
    ports: [u16; 3],
    backend: SocketAddr,
    issuer: &str,
    api_key: &str,
) -> anyhow::Result<(Proc, Result<(), String>)> {
    let keys_file = f.dir.join("api-keys.toml");
    std::fs::write(
        &keys_file,
        format!(
            "[[keys]]\nid = \"bench-client\"\nowner = \"benchmark\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key(api_key)
        ),
    )?;
    let listener = |name: &str, port: u16| {
        format!(
            r#"
[[listeners]]
name = "{name}"
bind = "127.0.0.1:{port}"
protocol = "https"

[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]
alpn = ["h2", "http/1.1"]
"#,
            cert = f.cert.display(),
            key = f.key.display(),
        )
    };
    let mtls_listener = format!(
        r#"{}
[listeners.client_certs]
mode = "required"
ca = ["{}"]
crls = []
"#,
        listener("mtls", ports[1]),
        f.client_ca.display()
    );
    let rest = format!(
        r#"
[[pools]]
name = "backend"
endpoints = ["{backend}"]
protocol = "http1"

[[token_providers]]
name = "idp"
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256", "ES256"]

[api_keys]
file = "{keys}"
header = "Ocp-Apim-Subscription-Key"

[[routes]]
name = "none"
path = "/none"
pool = "backend"

[[routes]]
name = "jwt"
path = "/jwt"
pool = "backend"

[routes.token]
provider = "idp"

[[routes]]
name = "key"
path = "/key"
pool = "backend"
api_key = true
"#,
        keys = keys_file.display(),
    );
    let head = format!(
        r#"[kernel]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[proxy]
drain_timeout = "2s"

[log]
level = "warn"
"#,
        admin = ports[2]
    );
    let path = f.dir.join("portcullis.toml");
    let with_mtls = format!("{head}{}{mtls_listener}{rest}", listener("bench", ports[0]));
    std::fs::write(&path, &with_mtls)?;
    // A build without client-certificate listeners refuses the whole file: measure the other
    // rows without it and say why in the table.
    let check = Command::new(bin)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .context("running portcullis check")?;
    let mtls = if check.status.success() {
        println!("portcullis accepts `[listeners.client_certs]`: the mTLS rows are measured");
        Ok(())
    } else {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let first = text
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_else(|| text.lines().next().unwrap_or(""))
            .trim()
            .to_owned();
        println!(
            "skipping Portcullis mTLS rows: `portcullis check` refuses `[listeners.client_certs]`: {first}"
        );
        std::fs::write(
            &path,
            format!("{head}{}{rest}", listener("bench", ports[0])),
        )?;
        Err(format!(
            "skipped: this build refuses `[listeners.client_certs]` ({first})"
        ))
    };
    let mut proc = Proc::spawn(
        "portcullis",
        Command::new(bin).arg("run").arg("-c").arg(&path),
        f.dir.join("portcullis.log"),
    )?;
    proc.wait_ready(loopback(ports[2]), "/ready")?;
    Ok((proc, mtls))
}

/// Envoy with the same two listeners (ports[0], and ports[1] requiring client certificates
/// from the same CA), admin on ports[2]; `jwt_authn` on `/jwt` with the same provider (its
/// remote JWKS fetched at start-up, its verified-token cache on), `api_key_auth` on `/key`.
fn start_envoy(
    bin: &Path,
    f: &Files,
    ports: [u16; 3],
    backend: SocketAddr,
    provider: SocketAddr,
    issuer: &str,
    api_key: &str,
) -> anyhow::Result<Proc> {
    let tls = |client_ca: Option<&Path>| {
        let validation = client_ca.map_or_else(String::new, |ca| {
            format!(
                r#"
            validation_context:
              trusted_ca: {{ filename: "{}" }}"#,
                ca.display()
            )
        });
        let require = if client_ca.is_some() {
            "\n          require_client_certificate: true"
        } else {
            ""
        };
        format!(
            r#"
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext{require}
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }}
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}{validation}"#,
            cert = f.cert.display(),
            key = f.key.display(),
        )
    };
    let config = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {main} }} }}
    filter_chains:{main_tls}
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
              - match: {{ prefix: "/key" }}
                route: {{ cluster: backend }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.api_key_auth:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: "{issuer}"
                  audiences: ["{AUDIENCE}"]
                  forward: false
                  remote_jwks:
                    http_uri:
                      uri: "{issuer}/jwks"
                      cluster: provider
                      timeout: 5s
                    cache_duration: 3600s
                    async_fetch: {{ fast_listener: false }}
                  jwt_cache_config: {{ jwt_cache_size: 1000 }}
              rules:
              - match: {{ prefix: "/jwt" }}
                requires: {{ provider_name: idp }}
          - name: envoy.filters.http.api_key_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials:
              - key: "{api_key}"
                client: bench-client
              key_sources:
              - header: "{API_KEY_HEADER}"
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: mtls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {mtls} }} }}
    filter_chains:{mtls_tls}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mtls
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
  - name: provider
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: provider
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: {pip}, port_value: {pport} }} }}
"#,
        admin = ports[2],
        main = ports[0],
        mtls = ports[1],
        main_tls = tls(None),
        mtls_tls = tls(Some(f.client_ca)),
        bip = backend.ip(),
        bport = backend.port(),
        pip = provider.ip(),
        pport = provider.port(),
    );
    let path = f.dir.join("envoy.yaml");
    std::fs::write(&path, config)?;
    let mut proc = Proc::spawn(
        "envoy",
        Command::new(bin)
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", &WORKERS.to_string()])
            .args(["--log-level", "warn", "--disable-hot-restart"]),
        f.dir.join("envoy.log"),
    )?;
    // Envoy's /ready turns 200 once its listeners are up, which with `fast_listener: false`
    // is after the first JWKS fetch.
    proc.wait_ready(loopback(ports[2]), "/ready")?;
    Ok(proc)
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// TLS client configurations: without and with the client certificate.
struct Connectors {
    plain: TlsConnector,
    client: TlsConnector,
}

/// TLS 1.3, ALPN http/1.1, the test CA as the only root; no session resumption, so that every
/// new connection is a full handshake (and, with mTLS, a full client-certificate check), as
/// distinct clients would make.
pub(crate) fn client_tls(
    roots: Arc<RootCertStore>,
    identity: Option<&Leaf>,
) -> anyhow::Result<TlsConnector> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder.with_client_auth_cert(leaf.chain(), leaf.private_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What every request of one measurement goes to.
pub(crate) struct Spec {
    pub(crate) addr: SocketAddr,
    pub(crate) path: &'static str,
    pub(crate) tls: TlsConnector,
    pub(crate) header: Option<HeaderName>,
    pub(crate) new_connections: bool,
}

impl Spec {
    fn new(target: &Target, s: Scenario, c: &Connectors) -> anyhow::Result<Self> {
        let addr = if s.mtls() {
            target.mtls.clone().map_err(|e| anyhow!(e))?
        } else {
            target.main
        };
        Ok(Self {
            addr,
            path: s.path(),
            tls: if s.mtls() {
                c.client.clone()
            } else {
                c.plain.clone()
            },
            header: s.header(),
            new_connections: s.new_connections(),
        })
    }
}

/// The schedule of one measurement, shared by its connections.
struct Plan {
    warm: Values,
    measure: Values,
    measure_from: Instant,
    until: Instant,
    /// Next index into a pool.
    next: AtomicUsize,
}

enum Pick {
    Value(Option<HeaderValue>),
    Exhausted,
}

impl Plan {
    fn pick(&self, measuring: bool) -> Pick {
        match if measuring { &self.measure } else { &self.warm } {
            Values::None => Pick::Value(None),
            Values::Same(v) => Pick::Value(Some(v.clone())),
            Values::Pool { pool, start, end } => {
                let i = start + self.next.fetch_add(1, Ordering::Relaxed);
                if i < *end {
                    Pick::Value(pool.get(i).cloned())
                } else {
                    Pick::Exhausted
                }
            }
        }
    }
}

/// What one connection counted while measuring.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    last: Option<Instant>,
}

/// CONNECTIONS concurrent clients, each one request at a time: WARM_UP on the same
/// connections, then MEASURE (or until the pool share is spent). Requests in flight at the
/// deadline are waited for and counted.
pub(crate) async fn load(spec: Arc<Spec>, warm: Values, measure: Values) -> Sample {
    let now = Instant::now();
    let plan = Arc::new(Plan {
        warm,
        measure,
        measure_from: now + WARM_UP,
        until: now + WARM_UP + MEASURE,
        next: AtomicUsize::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        tasks.spawn(client(spec.clone(), plan.clone()));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut last = plan.measure_from;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(t) => {
                latencies.extend(t.latencies_us);
                errors += t.errors;
                if let Some(l) = t.last {
                    last = last.max(l);
                }
            }
            Err(_) => errors += 1,
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i]) / 1000.0
    };
    let secs = last.duration_since(plan.measure_from).as_secs_f64();
    Sample {
        rps: if secs > 0.0 {
            latencies.len() as f64 / secs
        } else {
            0.0
        },
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

async fn client(spec: Arc<Spec>, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        let started = Instant::now();
        if started >= plan.until {
            break;
        }
        let measuring = started >= plan.measure_from;
        let value = match plan.pick(measuring) {
            Pick::Value(v) => v,
            Pick::Exhausted => break,
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, request(&spec, &mut conn, value)).await;
        let ok = matches!(result, Ok(Ok(StatusCode::OK)));
        if !matches!(result, Ok(Ok(_))) {
            conn = None;
        }
        if measuring {
            let done = Instant::now();
            if ok {
                let us = done.duration_since(started).as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            } else {
                tally.errors += 1;
            }
            tally.last = Some(done);
        }
        if !ok {
            // A refusing or failing target must not turn this loop into a busy spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

/// One request on the connection (opened first if there is none, or always for new-connection
/// scenarios); returns the status after reading the whole body.
async fn request(
    spec: &Spec,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    value: Option<HeaderValue>,
) -> anyhow::Result<StatusCode> {
    let mut sender = match conn.take() {
        Some(s) if !spec.new_connections => s,
        _ => connect(spec.addr, &spec.tls, spec.new_connections).await?,
    };
    sender.ready().await?;
    let mut req = Request::get(spec.path).header(header::HOST, "localhost");
    if let (Some(name), Some(v)) = (&spec.header, value) {
        req = req.header(name, v);
    }
    if spec.new_connections {
        req = req.header(header::CONNECTION, "close");
    }
    let response = sender.send_request(req.body(Empty::new())?).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if !spec.new_connections {
        *conn = Some(sender);
    }
    Ok(status)
}

/// A TLS connection with an HTTP/1.1 client on it. `short_lived` connections close with a
/// reset instead of lingering in TIME_WAIT: tens of thousands of them within a minute would
/// otherwise exhaust the ephemeral ports.
async fn connect(
    addr: SocketAddr,
    tls: &TlsConnector,
    short_lived: bool,
) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if short_lived {
        socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO))?;
    }
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let stream = tls.connect(name, tcp).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when the sender is dropped or the server closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Before any load: every scenario answers 200 with its credential, and the protected ones
/// refuse a request without it (so the rows measure enforcement, not a pass-through). Waits up
/// to READY_TIMEOUT for the proxies to load the provider's keys.
async fn check_all(targets: &[Target], c: &Connectors, creds: &Credentials) -> anyhow::Result<()> {
    for target in targets {
        for s in SCENARIOS {
            let Ok(spec) = Spec::new(target, s, c) else {
                continue;
            };
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let mut conn = None;
                match request(&spec, &mut conn, creds.sample(s)).await {
                    Ok(StatusCode::OK) => break,
                    other if Instant::now() >= deadline => bail!(
                        "{} `{}`: expected 200, got {:?}",
                        target.name,
                        s.label(),
                        other.map_err(|e| e.to_string())
                    ),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            let refused = if s.mtls() {
                // The same request without a client certificate must not get through.
                let plain = Spec {
                    tls: c.plain.clone(),
                    ..Spec::new(target, s, c)?
                };
                !matches!(request(&plain, &mut None, None).await, Ok(StatusCode::OK))
            } else if spec.header.is_some() {
                !matches!(request(&spec, &mut None, None).await, Ok(StatusCode::OK))
            } else {
                true
            };
            if !refused {
                bail!(
                    "{} `{}`: a request without the credential was let through",
                    target.name,
                    s.label()
                );
            }
        }
        println!(
            "{}: every scenario answers 200 with its credential and refuses without",
            target.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

fn report(
    targets: &[Target],
    cells: &[Vec<Cell>],
    verify: &[VerifyRow],
    versions: &[(&'static str, String)],
) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "## Identity: requests per second and p99 per scenario (median of {RUNS} runs)\n"
    )?;
    writeln!(
        r,
        "{CONNECTIONS} connections, one request in flight on each, TLS 1.3, HTTP/1.1; {} ms \
         warm-up on the same connections, then {} s per run (new-token rows: until the run's \
         {FRESH_PER_RUN} tokens are spent, if sooner). All processes share the machine's cores.\n",
        WARM_UP.as_millis(),
        MEASURE.as_secs()
    )?;
    writeln!(
        r,
        "| scenario | {p} req/s | {p} p99 (ms) | {e} req/s | {e} p99 (ms) | ratio (req/s) | target: ahead of Envoy | errors ({p} / {e}) | req/s of each run ({p}; {e}) |",
        p = targets[0].name,
        e = targets[1].name
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---|---|---|")?;
    let mut notes = Vec::new();
    for (si, s) in SCENARIOS.iter().enumerate() {
        let fig = |c: &Cell| match c {
            Ok(runs) if !runs.is_empty() => (
                format!("{:.0}", median(runs, |x| x.rps)),
                format!("{:.2}", median(runs, |x| x.p99_ms)),
                runs.iter().map(|x| x.errors).sum::<u64>().to_string(),
            ),
            Ok(_) => ("-".into(), "-".into(), "-".into()),
            Err(_) => ("skipped".into(), "-".into(), "-".into()),
        };
        let (p, e) = (&cells[si][0], &cells[si][1]);
        let (prps, pp99, perr) = fig(p);
        let (erps, ep99, eerr) = fig(e);
        let (ratio, met) = match (p, e) {
            (Ok(pr), Ok(er)) if !pr.is_empty() && !er.is_empty() => {
                let (a, b) = (median(pr, |x| x.rps), median(er, |x| x.rps));
                (
                    format!("{:.2}", a / b),
                    if a > b { "met" } else { "NOT met" }.to_owned(),
                )
            }
            _ => ("-".into(), "-".into()),
        };
        if let Err(why) = p {
            notes.push(format!("- {} for {}: {why}", s.label(), targets[0].name));
        }
        let each = |c: &Cell| match c {
            Ok(runs) => runs
                .iter()
                .map(|x| format!("{:.0}", x.rps))
                .collect::<Vec<_>>()
                .join(", "),
            Err(_) => "-".into(),
        };
        writeln!(
            r,
            "| {} | {prps} | {pp99} | {erps} | {ep99} | {ratio} | {met} | {perr} / {eerr} | {}; {} |",
            s.label(),
            each(p),
            each(e)
        )?;
    }
    writeln!(r)?;
    writeln!(
        r,
        "- Tokens: Portcullis `[[token_providers]]` + `[routes.token]` (its verified-token \
         cache at the default size); Envoy `jwt_authn` with `remote_jwks` from the same \
         provider and its verified-token cache on (`jwt_cache_config`, 1000 entries; it is off \
         by default). Same checks on both: signature, `iss`, `aud`, `exp`; no claims rules. \
         New-token rows: every request carries a token neither proxy has seen, so no cache \
         helps and each request pays one signature verification."
    )?;
    writeln!(
        r,
        "- API key: Portcullis `[api_keys]` with a key file holding the key's SHA-256 hash; \
         Envoy's closest equivalent, the `api_key_auth` filter, holds the key itself in its \
         config (no hashed store). Both read the `Ocp-Apim-Subscription-Key` header."
    )?;
    writeln!(
        r,
        "- mTLS: a second listener requiring a client certificate from a separate client CA. \
         On keep-alive connections the certificate is checked once per connection, so that row \
         is the steady state; the new-connection rows (no session resumption, `Connection: \
         close`) show the handshake cost with and without a client certificate."
    )?;
    for n in &notes {
        writeln!(r, "{n}")?;
    }

    writeln!(r, "\n## Identity: one validation, in process\n")?;
    writeln!(
        r,
        "| operation | iterations | mean per operation (ns) | target |"
    )?;
    writeln!(r, "|---|---:|---:|---|")?;
    for v in verify {
        match v.ns {
            Some(ns) => {
                let target = if v.target == "< 1 µs" {
                    let met = if ns < 1000.0 { "met" } else { "NOT met" };
                    format!("{}: {met}", v.target)
                } else {
                    v.target.to_owned()
                };
                writeln!(
                    r,
                    "| {} | {} | {:.0} | {target} |",
                    v.what, v.iterations, ns
                )?;
            }
            None => writeln!(r, "| {} | - | {} | {} |", v.what, v.note, v.target)?,
        }
    }
    for v in verify
        .iter()
        .filter(|v| v.ns.is_some() && !v.note.is_empty())
    {
        writeln!(r, "\n- {}: {}", v.what, v.note)?;
    }
    writeln!(r, "\n## Identity: versions, machine and load\n")?;
    for (what, v) in versions {
        writeln!(r, "- {what}: {v}")?;
    }
    Ok(r)
}
