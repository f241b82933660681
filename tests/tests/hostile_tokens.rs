//! Hostile tokens through the running proxy, against a real OpenID provider (`oidc-provider`
//! from npm, `tests/oidc/provider.js`) and a real backend. The test mints tokens with the
//! provider's own private keys (`GET /test/keys`), so a refusal is about the attack and not about
//! a bad signature by accident: the control tokens minted the same way are accepted.
//!
//! Also the provider's life cycle as the proxy sees it: key rotation picked up through the
//! unknown-`kid` refetch within a second, a flood of random `kid`s costing a bounded number of
//! JWKS fetches, cached keys serving while the provider is down, and a provider that is down at
//! start-up keeping the gateway unready (`/ready` 503, tokens refused) until it comes up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::config::{ProxyConfig, RouteAuth, RouteToken};
use portcullis::identity::authz::{ClaimRequirement, MethodRule, RoutePolicy, TokenSource};
use portcullis::identity::oidc::OidcConfig;
use portcullis::metrics::Metrics;
use portcullis::proxy::Proxy;
use portcullis_tests::backend::{Backend, Proto};
use portcullis_tests::daemon::Daemon;
use portcullis_tests::oidc::{self, OidcProvider, ProviderKey, RESOURCE, RS256_CLIENT};
use portcullis_tests::proxy_config::{discovered_provider, no_rules, orders_route};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};

/// The smallest `unknown_kid_interval` the config accepts.
const KID_INTERVAL: Duration = Duration::from_secs(1);

// ---- minting -------------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A private key of the provider (or an attacker's), able to sign.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer {
    fn from_provider(key: &ProviderKey) -> Self {
        match key.kty() {
            "RSA" => Signer::Rsa(RsaKeyPair::from_pkcs8(&key.pkcs8).expect("provider RSA key")),
            "EC" => Signer::ec(&key.pkcs8),
            other => panic!("unexpected key type {other}"),
        }
    }

    fn ec(pkcs8: &[u8]) -> Self {
        Signer::Ec(
            EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &SystemRandom::new(),
            )
            .expect("P-256 key"),
        )
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .expect("RSA sign");
                sig
            }
            Signer::Ec(k) => k.sign(&rng, input).expect("ECDSA sign").as_ref().to_vec(),
        }
    }
}

/// `header.payload.signature`, the signature over the first two segments as written.
fn signed(signer: &Signer, header: &str, payload: &str) -> String {
    let input = format!("{header}.{payload}");
    format!("{input}.{}", b64(&signer.sign(input.as_bytes())))
}

fn mint(signer: &Signer, header: &Value, claims: &Value) -> String {
    signed(signer, &b64_json(header), &b64_json(claims))
}

fn hmac(alg: &str, secret: &[u8], header: &Value, claims: &Value) -> String {
    let algorithm = match alg {
        "HS256" => ring::hmac::HMAC_SHA256,
        "HS384" => ring::hmac::HMAC_SHA384,
        _ => ring::hmac::HMAC_SHA512,
    };
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let tag = ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

fn header(alg: &str, kid: Option<&str>) -> Value {
    let mut h = json!({ "alg": alg, "typ": "at+jwt" });
    if let Some(kid) = kid {
        h["kid"] = kid.into();
    }
    h
}

/// Claims the route accepts: right issuer and audience, valid now, a role the route requires.
fn claims(issuer: &str) -> Value {
    let t = now();
    json!({
        "iss": issuer,
        "aud": RESOURCE,
        "sub": "hostile-tokens",
        "client_id": RS256_CLIENT,
        "roles": ["API.Read"],
        "iat": t,
        "exp": t + 600,
    })
}

fn with(mut v: Value, changes: &[(&str, Value)]) -> Value {
    for (k, x) in changes {
        v[*k] = x.clone();
    }
    v
}

/// The provider's signing keys of the newest generation: (RSA, EC).
fn current_keys(provider: &OidcProvider) -> (ProviderKey, ProviderKey) {
    let keys = provider.keys();
    let rsa = keys.iter().find(|k| k.kty() == "RSA").expect("an RSA key");
    let ec = keys.iter().find(|k| k.kty() == "EC").expect("an EC key");
    (rsa.clone(), ec.clone())
}

/// A P-256 key pair the provider never heard of, and its public JWK.
fn attacker_key(kid: &str) -> (Signer, Value) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let signer = Signer::ec(pkcs8.as_ref());
    let Signer::Ec(pair) = &signer else {
        unreachable!()
    };
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    });
    (signer, jwk)
}

// ---- the attacker's key server (for jku / x5u) ----------------------------------------------

/// A loopback HTTP server that serves the attacker's JWKS to anyone and counts the requests:
/// a `jku` or `x5u` the gateway followed would show up here.
struct KeyServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl KeyServer {
    fn start(jwks: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let body = jwks.to_string();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 4096];
                        let _ = stream.read(&mut buf);
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        KeyServer { addr, hits, stop }
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---- the proxy under test -------------------------------------------------------------------

/// Any valid token with API.Read or API.Write passes.
fn route_token() -> RouteToken {
    RouteToken {
        provider: 0,
        sources: vec![TokenSource::Bearer],
        policy: RoutePolicy {
            rules: vec![MethodRule {
                methods: vec![],
                requirements: vec![ClaimRequirement::any_of(
                    "roles",
                    &["API.Read", "API.Write"],
                )],
            }],
        },
        claim_headers: vec![],
        forward_authorization: false,
    }
}

fn proxy_config(issuer: &str, backend: &Backend) -> ProxyConfig {
    let auth = RouteAuth {
        token: Some(route_token()),
        ..Default::default()
    };
    let oidc = OidcConfig {
        unknown_kid_interval: KID_INTERVAL,
        // Every refusal below must come from validation, not from a cached verdict.
        token_cache_entries: 0,
        ..OidcConfig::new(issuer)
    };
    ProxyConfig {
        token_providers: vec![discovered_provider(issuer, RESOURCE, oidc)],
        ..orders_route(backend, auth)
    }
}

/// Provider, backend and proxy, with the provider's keys loaded.
struct Rig {
    provider: Option<OidcProvider>,
    backend: Backend,
    _proxy: Proxy,
    addr: SocketAddr,
    issuer: String,
}

impl Rig {
    async fn start() -> Self {
        let provider = tokio::task::spawn_blocking(OidcProvider::start)
            .await
            .unwrap();
        let issuer = provider.issuer().to_string();
        let backend = Backend::start("orders", Proto::Http1).await;
        let backstop = no_rules();
        let proxy = Proxy::start(
            &proxy_config(&issuer, &backend),
            backstop,
            Metrics::new(None),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proxy.ready() {
            assert!(
                Instant::now() < deadline,
                "the provider's keys never loaded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr = proxy.local_addrs()[0].1;
        Rig {
            provider: Some(provider),
            backend,
            _proxy: proxy,
            addr,
            issuer,
        }
    }

    /// Runs a blocking provider call off the runtime's worker threads.
    async fn with_provider<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&OidcProvider) -> T + Send + 'static,
    ) -> T {
        let provider = self.provider.take().expect("provider running");
        let (provider, out) = tokio::task::spawn_blocking(move || {
            let out = f(&provider);
            (provider, out)
        })
        .await
        .unwrap();
        self.provider = Some(provider);
        out
    }
}

struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
}

async fn get(addr: SocketAddr, token: &str) -> Reply {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}/orders/1"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(request).await.expect("proxy answers");
    let status = resp.status();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let _ = resp.into_body().collect().await;
    Reply {
        status,
        www_authenticate,
    }
}

fn is_invalid_token(r: &Reply) -> bool {
    r.status == StatusCode::UNAUTHORIZED
        && r.www_authenticate
            .as_deref()
            .is_some_and(|w| w.starts_with("Bearer ") && w.contains("error=\"invalid_token\""))
}

// ---- the hostile tokens ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused_before_the_backend() {
    if !oidc::available("hostile_tokens_are_refused_before_the_backend") {
        return;
    }
    let mut rig = Rig::start().await;
    let ((rsa_key, ec_key), jwks, issued) = rig
        .with_provider(|p| (current_keys(p), p.jwks(), p.token(RS256_CLIENT)))
        .await;
    let (rsa_kid, ec_kid) = (rsa_key.kid().to_owned(), ec_key.kid().to_owned());
    let rsa = Signer::from_provider(&rsa_key);
    let ec = Signer::from_provider(&ec_key);
    let iss = rig.issuer.clone();
    let good = claims(&iss);

    // Controls: minted exactly like the hostile tokens below, with the provider's keys, and a
    // token the provider itself issued. If these fail, the refusals below prove nothing.
    let controls = [
        (
            "RS256 minted",
            mint(&rsa, &header("RS256", Some(&rsa_kid)), &good),
        ),
        (
            "ES256 minted",
            mint(&ec, &header("ES256", Some(&ec_kid)), &good),
        ),
        ("issued by the provider", issued.clone()),
    ];
    for (name, token) in &controls {
        let r = get(rig.addr, token).await;
        assert_eq!(r.status, StatusCode::OK, "control {name}");
    }
    let served = rig.backend.served();
    assert_eq!(served, controls.len());

    let mut hostile: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| hostile.push((name.to_owned(), token));

    // alg none in every spelling, with and without kid, with an empty signature, a real RSA
    // signature over the same input, and no signature segment at all.
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [None, Some(rsa_kid.as_str())] {
            let h = b64_json(&header(alg, kid));
            let p = b64_json(&good);
            add(
                &format!("alg {alg} kid {kid:?}, empty signature"),
                format!("{h}.{p}."),
            );
            add(
                &format!("alg {alg} kid {kid:?}, no signature segment"),
                format!("{h}.{p}"),
            );
            add(
                &format!("alg {alg} kid {kid:?}, RSA signature"),
                signed(&rsa, &h, &p),
            );
        }
    }

    // HMAC with the provider's public key as the secret, in every form it is published or
    // commonly converted to.
    let rsa_public_jwk = rsa_key.public_jwk().to_string();
    let ec_public_jwk = ec_key.public_jwk().to_string();
    let pem = rsa_key.spki_pem.clone();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("RSA SPKI PEM", pem.clone().into_bytes()),
        (
            "RSA SPKI PEM without newline",
            pem.trim_end().as_bytes().to_vec(),
        ),
        (
            "RSA PKCS#1 PEM",
            rsa_key.pkcs1_pem.clone().unwrap().into_bytes(),
        ),
        ("RSA SPKI DER", rsa_key.spki_der.clone()),
        ("RSA JWK JSON", rsa_public_jwk.into_bytes()),
        ("EC SPKI PEM", ec_key.spki_pem.clone().into_bytes()),
        ("EC JWK JSON", ec_public_jwk.into_bytes()),
        ("the JWKS document as served", jwks.clone()),
    ];
    for alg in ["HS256", "HS384", "HS512"] {
        for (what, secret) in &secrets {
            for kid in [Some(rsa_kid.as_str()), Some(ec_kid.as_str()), None] {
                add(
                    &format!("{alg} with {what}, kid {kid:?}"),
                    hmac(alg, secret, &header(alg, kid), &good),
                );
            }
        }
    }

    // Keys from the token: an attacker key that really signed the token, embedded or pointed to.
    let (attacker, attacker_jwk) = attacker_key("attacker");
    let key_server = KeyServer::start(json!({ "keys": [attacker_jwk.clone()] }));
    let jku = format!("http://{}/jwks.json", key_server.addr);
    let x5u = format!("http://{}/cert.pem", key_server.addr);
    for kid in [None, Some("attacker"), Some(ec_kid.as_str())] {
        let base = header("ES256", kid);
        add(
            &format!("embedded jwk, kid {kid:?}"),
            mint(
                &attacker,
                &with(base.clone(), &[("jwk", attacker_jwk.clone())]),
                &good,
            ),
        );
        add(
            &format!("jku, kid {kid:?}"),
            mint(
                &attacker,
                &with(base.clone(), &[("jku", jku.clone().into())]),
                &good,
            ),
        );
        add(
            &format!("x5u, kid {kid:?}"),
            mint(
                &attacker,
                &with(base.clone(), &[("x5u", x5u.clone().into())]),
                &good,
            ),
        );
    }
    // x5c: a self-signed certificate of the attacker's own key.
    let cert_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["attacker.example".into()])
        .unwrap()
        .self_signed(&cert_key)
        .unwrap();
    let cert_signer = Signer::ec(&cert_key.serialize_der());
    let x5c = json!([base64::engine::general_purpose::STANDARD.encode(cert.der())]);
    add(
        "x5c self-signed",
        mint(
            &cert_signer,
            &with(header("ES256", None), &[("x5c", x5c)]),
            &good,
        ),
    );
    // The attacker's key signing with the provider's kid, and under its own unknown kid.
    add(
        "attacker key, provider kid",
        mint(&attacker, &header("ES256", Some(&ec_kid)), &good),
    );
    add(
        "attacker key, own kid",
        mint(&attacker, &header("ES256", Some("attacker")), &good),
    );

    // kid injection: path traversal, SQL, a very long kid (under the size limit), control
    // characters, a kid of the other key type (RSA signature under the EC key's kid and the
    // reverse), and the two kids glued together.
    let long_kid = "k".repeat(4000);
    for kid in [
        "../../etc/passwd",
        "../../../../../../dev/null",
        "' OR 1=1 --",
        "\" OR \"\"=\"",
        long_kid.as_str(),
        "\u{0}",
        "*",
        "",
    ] {
        add(
            &format!("kid injection {:?}", &kid[..kid.len().min(20)]),
            mint(&rsa, &header("RS256", Some(kid)), &good),
        );
    }
    add(
        "RS256 under the EC key's kid",
        mint(&rsa, &header("RS256", Some(&ec_kid)), &good),
    );
    add(
        "ES256 under the RSA key's kid",
        mint(&ec, &header("ES256", Some(&rsa_kid)), &good),
    );
    add(
        "ES256 signature with alg RS256 under the EC kid",
        signed(
            &ec,
            &b64_json(&header("RS256", Some(&ec_kid))),
            &b64_json(&good),
        ),
    );
    add(
        "kid array",
        mint(
            &rsa,
            &with(header("RS256", None), &[("kid", json!([rsa_kid]))]),
            &good,
        ),
    );

    // ES256 with r = s = 0 (CVE-2022-21449), and r = s = n (the curve order).
    let h = b64_json(&header("ES256", Some(&ec_kid)));
    let p = b64_json(&good);
    add("ES256 r = s = 0", format!("{h}.{p}.{}", b64(&[0u8; 64])));
    let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    add(
        "ES256 r = s = n",
        format!("{h}.{p}.{}", b64(&[n.clone(), n].concat())),
    );
    add("ES256 signature of one byte", format!("{h}.{p}.AA"));

    // Segments: too few, too many, empty ones.
    let valid = mint(&rsa, &header("RS256", Some(&rsa_kid)), &good);
    let parts: Vec<&str> = valid.split('.').collect();
    let (vh, vp, vs) = (parts[0], parts[1], parts[2]);
    add("two segments", format!("{vh}.{vp}"));
    add("four segments", format!("{valid}.{vs}"));
    add("four segments, last empty", format!("{valid}."));
    add("empty payload (signed)", signed(&rsa, vh, ""));
    add("empty payload", format!("{vh}..{vs}"));
    add("empty signature", format!("{vh}.{vp}."));
    add("empty header", format!(".{vp}.{vs}"));
    add("all empty", "..".into());
    add(
        "nested: a whole token as the payload",
        signed(&rsa, vh, &b64(valid.as_bytes())),
    );

    // base64 that is not strict base64url: padding at the end (RFC 6750 allows `=` there, so
    // it reaches validation), the standard alphabet (`+` and `/`).
    add("signature padded with =", format!("{valid}="));
    add("signature padded with ==", format!("{valid}=="));
    let std_sig = base64::engine::general_purpose::STANDARD_NO_PAD.encode(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(vs)
            .unwrap(),
    );
    assert!(
        std_sig.contains(['+', '/']),
        "the RSA signature has no byte that encodes differently; mint again"
    );
    add(
        "signature in the standard alphabet",
        format!("{vh}.{vp}.{std_sig}"),
    );
    // A payload whose encoding differs between the alphabets, signed as sent.
    let odd = with(good.clone(), &[("pad", "\u{3ff}\u{3fe}~~~?>>>".into())]);
    let std_payload = base64::engine::general_purpose::STANDARD_NO_PAD.encode(odd.to_string());
    assert!(std_payload.contains(['+', '/']), "{std_payload}");
    add(
        "payload in the standard alphabet, signed",
        signed(&rsa, vh, &std_payload),
    );
    let padded_payload = base64::engine::general_purpose::URL_SAFE.encode(good.to_string());
    if padded_payload.ends_with('=') {
        // Only the last segment may carry `=` past the Bearer syntax; sign over it anyway.
        add(
            "padded payload as the last signed segment",
            format!("{vh}.{padded_payload}"),
        );
    }

    // Claims: time claims as strings, expired, not yet valid, issued in the future, no exp,
    // wrong audience or issuer.
    let t = now();
    let rs = |c: Value| mint(&rsa, &header("RS256", Some(&rsa_kid)), &c);
    add(
        "exp as a string",
        rs(with(good.clone(), &[("exp", (t + 600).to_string().into())])),
    );
    add(
        "nbf as a string",
        rs(with(good.clone(), &[("nbf", t.to_string().into())])),
    );
    add(
        "iat as a string",
        rs(with(good.clone(), &[("iat", t.to_string().into())])),
    );
    add(
        "exp as an array",
        rs(with(good.clone(), &[("exp", json!([t + 600]))])),
    );
    add("exp null", rs(with(good.clone(), &[("exp", Value::Null)])));
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    add("no exp", rs(no_exp));
    add(
        "expired",
        rs(with(good.clone(), &[("exp", (t - 3600).into())])),
    );
    add(
        "expired beyond the leeway",
        rs(with(good.clone(), &[("exp", (t - 61).into())])),
    );
    add(
        "not yet valid",
        rs(with(good.clone(), &[("nbf", (t + 3600).into())])),
    );
    add(
        "issued in the future",
        rs(with(good.clone(), &[("iat", (t + 3600).into())])),
    );
    add(
        "wrong audience",
        rs(with(
            good.clone(),
            &[("aud", "https://other.example".into())],
        )),
    );
    add(
        "audience array with a non-string",
        rs(with(good.clone(), &[("aud", json!([RESOURCE, 1]))])),
    );
    add(
        "empty audience array",
        rs(with(good.clone(), &[("aud", json!([]))])),
    );
    add("no audience", {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("aud");
        rs(c)
    });
    add(
        "wrong issuer",
        rs(with(
            good.clone(),
            &[("iss", "https://evil.example".into())],
        )),
    );
    add(
        "issuer with a trailing slash",
        rs(with(good.clone(), &[("iss", format!("{iss}/").into())])),
    );
    add(
        "issuer in another case",
        rs(with(good.clone(), &[("iss", iss.to_uppercase().into())])),
    );
    add("no issuer", {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("iss");
        rs(c)
    });
    add(
        "wrong typ",
        mint(
            &rsa,
            &with(header("RS256", Some(&rsa_kid)), &[("typ", "JWT".into())]),
            &good,
        ),
    );
    // Duplicate members: the later `exp` or `alg` must not win.
    let dup_payload = format!(
        "{{\"iss\":\"{iss}\",\"aud\":\"{RESOURCE}\",\"roles\":[\"API.Read\"],\"exp\":{},\"exp\":{}}}",
        t - 3600,
        t + 600
    );
    add(
        "duplicate exp",
        signed(&rsa, vh, &b64(dup_payload.as_bytes())),
    );
    let dup_header =
        format!("{{\"alg\":\"none\",\"alg\":\"RS256\",\"kid\":\"{rsa_kid}\",\"typ\":\"at+jwt\"}}");
    add(
        "duplicate alg",
        signed(&rsa, &b64(dup_header.as_bytes()), vp),
    );

    // Oversized: a correct token, only longer than the provider's 8 KiB maximum.
    let big = rs(with(good.clone(), &[("pad", "x".repeat(9 * 1024).into())]));
    assert!(big.len() > 8 * 1024);
    add("over the maximum size", big);

    // crit: unknown extensions, and b64 = false (RFC 7797).
    add(
        "crit unknown",
        mint(
            &rsa,
            &with(
                header("RS256", Some(&rsa_kid)),
                &[("crit", json!(["x-unknown"])), ("x-unknown", true.into())],
            ),
            &good,
        ),
    );
    add(
        "crit exp",
        mint(
            &rsa,
            &with(
                header("RS256", Some(&rsa_kid)),
                &[("crit", json!(["exp"])), ("exp", (t + 600).into())],
            ),
            &good,
        ),
    );
    add(
        "crit b64 false",
        mint(
            &rsa,
            &with(
                header("RS256", Some(&rsa_kid)),
                &[("crit", json!(["b64"])), ("b64", false.into())],
            ),
            &good,
        ),
    );
    add(
        "crit empty",
        mint(
            &rsa,
            &with(header("RS256", Some(&rsa_kid)), &[("crit", json!([]))]),
            &good,
        ),
    );

    // Not JSON, not an object.
    add("header not JSON", signed(&rsa, &b64(b"{alg:RS256}"), vp));
    add("header an array", signed(&rsa, &b64(b"[\"RS256\"]"), vp));
    add("payload an array", signed(&rsa, vh, &b64(b"[1]")));
    add(
        "alg lower case",
        mint(&rsa, &header("rs256", Some(&rsa_kid)), &good),
    );
    add(
        "alg with a space",
        mint(&rsa, &header("RS256 ", Some(&rsa_kid)), &good),
    );
    add(
        "alg PS256 over a PKCS#1 signature",
        mint(&rsa, &header("PS256", Some(&rsa_kid)), &good),
    );

    eprintln!("{} hostile tokens", hostile.len());
    let mut failures = Vec::new();
    for (name, token) in &hostile {
        let r = get(rig.addr, token).await;
        if !is_invalid_token(&r) {
            failures.push(format!("{name}: {} {:?}", r.status, r.www_authenticate));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile tokens were not refused as invalid_token:\n{}",
        failures.len(),
        hostile.len(),
        failures.join("\n")
    );

    // Bytes that RFC 6750's b64token does not allow (a space inside, `=` before the end) never
    // reach signature checks: the token is malformed, 401 invalid_token (RFC 6750 section 3.1).
    // The rule in the access log says where it failed (`token_source:MalformedBearer`).
    let malformed = [
        (
            "space inside a segment",
            format!("{vh}.{} {}.{vs}", &vp[..10], &vp[10..]),
        ),
        ("space between segments", format!("{vh}. {vp}.{vs}")),
        ("padding in the header segment", format!("{vh}=.{vp}.{vs}")),
        (
            "padding in the payload segment",
            format!("{vh}.{vp}==.{vs}"),
        ),
    ];
    for (name, token) in &malformed {
        let r = get(rig.addr, token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            r.www_authenticate
                .as_deref()
                .is_some_and(|w| w.contains("error=\"invalid_token\"")),
            "{name}: {:?}",
            r.www_authenticate
        );
    }

    assert_eq!(
        rig.backend.served(),
        served,
        "no hostile token reached the backend"
    );
    assert_eq!(
        key_server.hits.load(Ordering::Relaxed),
        0,
        "the gateway fetched a key from a token's jku or x5u"
    );
    // Still serving: the refusals changed nothing.
    assert_eq!(get(rig.addr, &controls[0].1).await.status, StatusCode::OK);
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

// ---- the provider's life cycle --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_within_a_second() {
    if !oidc::available("rotated_keys_are_picked_up_within_a_second") {
        return;
    }
    let mut rig = Rig::start().await;
    let old = rig.with_provider(|p| p.token(RS256_CLIENT)).await;
    assert_eq!(get(rig.addr, &old).await.status, StatusCode::OK);

    // Rotate: the new keys sign from now on; the proxy has never seen their kids.
    let (kids, (rsa_key, ec_key), issued) = rig
        .with_provider(|p| (p.rotate(), current_keys(p), p.token(RS256_CLIENT)))
        .await;
    assert!(kids.contains(&rsa_key.kid().to_owned()), "{kids:?}");
    let good = claims(&rig.issuer);
    let minted = mint(
        &Signer::from_provider(&ec_key),
        &header("ES256", Some(ec_key.kid())),
        &good,
    );
    let started = Instant::now();
    for token in [&issued, &minted] {
        let r = get(rig.addr, token).await;
        assert_eq!(r.status, StatusCode::OK, "a token with a new kid");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the new keys took {:?}",
        started.elapsed()
    );
    // The previous generation is still published, so its tokens still pass.
    assert_eq!(get(rig.addr, &old).await.status, StatusCode::OK);

    // A second rotation right away: the refetch is rate-limited to one per interval, so the
    // new kid may be refused at first, and is accepted once the interval has passed, without a
    // restart.
    let (rsa_key, issued) = rig
        .with_provider(|p| {
            p.rotate();
            (current_keys(p).0, p.token(RS256_CLIENT))
        })
        .await;
    let started = Instant::now();
    let deadline = started + KID_INTERVAL + Duration::from_secs(1);
    loop {
        let r = get(rig.addr, &issued).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(is_invalid_token(&r), "{}", r.status);
        assert!(
            Instant::now() < deadline,
            "the second rotation was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let minted = mint(
        &Signer::from_provider(&rsa_key),
        &header("RS256", Some(rsa_key.kid())),
        &claims(&rig.issuer),
    );
    assert_eq!(get(rig.addr, &minted).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kid_flood_costs_a_bounded_number_of_fetches() {
    if !oidc::available("random_kid_flood_costs_a_bounded_number_of_fetches") {
        return;
    }
    let mut rig = Rig::start().await;
    let ((rsa_key, _), before) = rig
        .with_provider(|p| (current_keys(p), p.jwks_count()))
        .await;
    let rsa = Arc::new(Signer::from_provider(&rsa_key));
    let good = claims(&rig.issuer);

    // 200 tokens, each signed by the real key under a kid nobody has, 20 at a time.
    let started = Instant::now();
    let mut refused = 0;
    for round in 0..10 {
        let mut batch = Vec::new();
        for i in 0..20 {
            let token = mint(
                &rsa,
                &header(
                    "RS256",
                    Some(&format!("random-{round}-{i}-{:x}", rand_u64())),
                ),
                &good,
            );
            let addr = rig.addr;
            batch.push(tokio::spawn(async move { get(addr, &token).await }));
        }
        for task in batch {
            let r = task.await.unwrap();
            assert!(is_invalid_token(&r), "{}", r.status);
            refused += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(refused, 200);
    let after = rig.with_provider(|p| p.jwks_count()).await;
    // One refetch per interval at most, plus the one the first unknown kid may start at once.
    let bound = elapsed.as_secs() / KID_INTERVAL.as_secs() + 1;
    let fetches = after - before;
    assert!(
        fetches <= bound,
        "{fetches} JWKS fetches for 200 random kids in {elapsed:?} (bound {bound})"
    );
    assert!(fetches >= 1, "an unknown kid triggers a refetch");
    eprintln!("{fetches} JWKS fetches for 200 random kids in {elapsed:?}");
    assert_eq!(rig.backend.served(), 0);

    // The real key still works after the flood.
    let valid = mint(&rsa, &header("RS256", Some(rsa_key.kid())), &good);
    assert_eq!(get(rig.addr, &valid).await.status, StatusCode::OK);
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_serve_while_the_provider_is_down() {
    if !oidc::available("cached_keys_serve_while_the_provider_is_down") {
        return;
    }
    let mut rig = Rig::start().await;
    let ((rsa_key, ec_key), issued) = rig
        .with_provider(|p| (current_keys(p), p.token(RS256_CLIENT)))
        .await;
    let good = claims(&rig.issuer);
    let rsa = Signer::from_provider(&rsa_key);
    let minted = mint(&rsa, &header("RS256", Some(rsa_key.kid())), &good);
    let minted_ec = mint(
        &Signer::from_provider(&ec_key),
        &header("ES256", Some(ec_key.kid())),
        &good,
    );

    let mut provider = rig.provider.take().unwrap();
    tokio::task::spawn_blocking(move || provider.kill())
        .await
        .unwrap();

    for token in [&issued, &minted, &minted_ec] {
        assert_eq!(get(rig.addr, token).await.status, StatusCode::OK);
    }
    // An unknown kid now makes a refetch that fails: still a clean 401, and the cached keys
    // keep serving afterwards.
    let unknown = mint(&rsa, &header("RS256", Some("gone")), &good);
    assert!(is_invalid_token(&get(rig.addr, &unknown).await));
    assert_eq!(get(rig.addr, &minted).await.status, StatusCode::OK);
    assert_eq!(rig.backend.served(), 4);
}

// ---- a provider down at start-up, through `portcullis run` --------------------------------------

/// (status, body) of one HTTP/1.1 request with `Connection: close`; status 0 when nothing
/// answers.
fn http(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: test\r\n{auth}connection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_at_start_up_then_up() {
    if !oidc::available("provider_down_at_start_up_then_up") {
        return;
    }
    let backend = Backend::start("orders", Proto::Http1).await;
    let (listen, admin, idp) = (oidc::free_port(), oidc::free_port(), oidc::free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[kernel]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
bind = "127.0.0.1:{listen}"
protocol = "http"
http_mode = "serve"

[[pools]]
name = "orders"
endpoints = ["{backend}"]

[[token_providers]]
name = "idp"
issuer = "http://127.0.0.1:{idp}"
audiences = ["{RESOURCE}"]
require_typ = "at+jwt"
unknown_kid_interval = "1s"

[[routes]]
name = "orders"
path = "/orders"
pool = "orders"

[routes.token]
provider = "idp"

[log]
format = "json"
"#,
            backend = backend.addr
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&cfg);

    // The admin endpoint comes up, but the gateway is not ready: it has no keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let (status, _) = tokio::task::spawn_blocking(move || http(admin, "/ready", None))
            .await
            .unwrap();
        if status != 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the admin endpoint never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready, 503, "ready without the provider's keys");

    // A token is refused as invalid_token, and the access log names the reason.
    let (attacker, _) = attacker_key("any");
    let token = mint(
        &attacker,
        &header("ES256", Some("any")),
        &claims(&format!("http://127.0.0.1:{idp}")),
    );
    let t = token.clone();
    let (status, answer) = tokio::task::spawn_blocking(move || http(listen, "/orders/1", Some(&t)))
        .await
        .unwrap();
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"portcullis\", error=\"invalid_token\""),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        if let Some(l) = daemon
            .log()
            .into_iter()
            .find(|l| l.contains("portcullis::access"))
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: Value = serde_json::from_str(&line).expect("a JSON access log line");
    assert_eq!(v["status"], 401, "{line}");
    assert_eq!(v["rule"], "token:provider_not_ready", "{line}");
    assert!(!line.contains(&token), "the token is never logged");
    assert_eq!(backend.served(), 0);

    // The provider comes up on the configured port: the retry timer (5 s, not configurable)
    // loads the keys, the gateway becomes ready and tokens pass.
    let provider = tokio::task::spawn_blocking(move || OidcProvider::start_on(idp))
        .await
        .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let (status, _) = tokio::task::spawn_blocking(move || http(admin, "/ready", None))
            .await
            .unwrap();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "not ready 10 s after the provider came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready {:?} after the provider came up", started.elapsed());
    let (provider, issued) = tokio::task::spawn_blocking(move || {
        let t = provider.token(RS256_CLIENT);
        (provider, t)
    })
    .await
    .unwrap();
    let (status, answer) =
        tokio::task::spawn_blocking(move || http(listen, "/orders/1", Some(&issued)))
            .await
            .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(backend.served(), 1);
    drop(provider);
    drop(daemon);
}
