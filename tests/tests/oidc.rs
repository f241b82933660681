//! The OIDC provider client (`portcullis::identity::oidc`) against a real OpenID provider
//! (oidc-provider 9 from npm, `tests/oidc`): discovery, JWKS caching, key rotation, the
//! unknown-`kid` refetch limits, and behaviour while the provider is down. Also the provider
//! features around it: static keys (a JWKS file or inline), the start-up policy, the
//! verified-token cache (hits, key rotation) and what a reload keeps.
//!
//! Skipped with a message when Node or `tests/oidc/node_modules` is missing, unless
//! `PORTCULLIS_REQUIRE_PRIVILEGED=1` or `CI` is set (then it fails).

use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis::identity::jwt::{Algorithm, JwtError, ValidationPolicy};
use portcullis::identity::oidc::{OidcConfig, OidcError, OidcProvider as Client, Readiness};
use portcullis_tests::oidc::{self, ES256_CLIENT, OidcProvider, RESOURCE, RS256_CLIENT};

fn policy(issuer: &str) -> ValidationPolicy {
    let mut p = ValidationPolicy::new(issuer, vec![RESOURCE.to_owned()]);
    p.require_typ = Some("at+jwt".to_owned());
    p
}

async fn loaded_client(provider: &OidcProvider) -> Client {
    let client = Client::new(OidcConfig::new(provider.issuer())).expect("loopback issuer");
    assert_eq!(client.readiness(), Readiness::NotReady);
    client.refresh().await.expect("discovery and JWKS");
    assert_eq!(client.readiness(), Readiness::Ready);
    client
}

/// `token` with its header replaced (payload kept, signature garbage).
fn forge(token: &str, header: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1).expect("three segments");
    format!(
        "{}.{payload}.{}",
        b64.encode(header.to_string()),
        b64.encode([7u8; 64])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_validate_with_discovered_keys() {
    if !oidc::available("oidc rs256/es256") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    assert_eq!(client.keys().len(), 2);
    for (name, alg, roles) in [
        (RS256_CLIENT, Algorithm::RS256, vec!["API.Read"]),
        (
            ES256_CLIENT,
            Algorithm::ES256,
            vec!["API.Read", "API.Write"],
        ),
    ] {
        let token = provider.token(name);
        let claims = client
            .validate(&token, &policy(provider.issuer()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(claims.header().alg, alg);
        assert_eq!(claims.client_id(), Some(name));
        assert_eq!(claims.audiences(), vec![RESOURCE]);
        let got: Vec<&str> = claims
            .get("roles")
            .and_then(|r| r.as_array())
            .map_or_else(Vec::new, |a| a.iter().filter_map(|v| v.as_str()).collect());
        assert_eq!(got, roles);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_and_issuer_are_refused() {
    if !oidc::available("oidc wrong audience") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let token = provider.token(RS256_CLIENT);
    let mut p = policy(provider.issuer());
    p.audiences = vec!["https://other.portcullis.test".to_owned()];
    assert_eq!(
        client.validate(&token, &p).await.unwrap_err(),
        OidcError::Jwt(JwtError::WrongAudience)
    );
    // A configured issuer that differs from the discovered one (here by a trailing slash) is
    // refused at discovery.
    let slash = Client::new(OidcConfig::new(format!("{}/", provider.issuer()))).unwrap();
    assert!(matches!(
        slash.refresh().await,
        Err(OidcError::IssuerMismatch { .. })
    ));
    assert_eq!(slash.readiness(), Readiness::NotReady);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_fetched_on_unknown_kid() {
    if !oidc::available("oidc rotation") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let before = client.fetch_count();
    let old = provider.token(RS256_CLIENT);
    let kids = provider.rotate();
    let token = provider.token(RS256_CLIENT);
    let started = Instant::now();
    let claims = client
        .validate(&token, &policy(provider.issuer()))
        .await
        .expect("token signed with the rotated key");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        kids.iter()
            .any(|k| claims.header().kid.as_deref() == Some(k))
    );
    assert_eq!(client.fetch_count(), before + 1);
    // The previous generation is still published, so older tokens keep validating.
    client
        .validate(&old, &policy(provider.issuer()))
        .await
        .expect("token signed with the previous key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kids_refetch_at_most_once_per_window() {
    if !oidc::available("oidc random kids") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let before = client.fetch_count();
    let token = provider.token(RS256_CLIENT);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let forged = forge(
            &token,
            &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": format!("random-{i}")}),
        );
        let (client, policy) = (client.clone(), policy(provider.issuer()));
        tasks.spawn(async move { client.validate(&forged, &policy).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(
            result.expect("task"),
            Err(OidcError::Jwt(JwtError::UnknownKid))
        );
    }
    // A second burst inside the same 10 s window fetches nothing more.
    for i in 0..16 {
        let forged = forge(
            &token,
            &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": format!("again-{i}")}),
        );
        assert_eq!(
            client.validate(&forged, &policy(provider.issuer())).await,
            Err(OidcError::Jwt(JwtError::UnknownKid))
        );
    }
    let fetched = client.fetch_count() - before;
    assert!(fetched <= 1, "{fetched} JWKS fetches for random kids");
    // Known kid with a garbage signature: refused without any fetch.
    let kid = client.keys().keys()[0].kid().map(str::to_owned);
    let forged = forge(
        &token,
        &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}),
    );
    assert_eq!(
        client.validate(&forged, &policy(provider.issuer())).await,
        Err(OidcError::Jwt(JwtError::BadSignature))
    );
    assert_eq!(client.fetch_count() - before, fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_serve_while_provider_is_down() {
    if !oidc::available("oidc provider down") {
        return;
    }
    let mut provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let token = provider.token(ES256_CLIENT);
    let issuer = provider.issuer().to_owned();
    provider.kill();
    assert!(client.refresh().await.is_err(), "provider is gone");
    assert_eq!(client.readiness(), Readiness::Ready);
    client
        .validate(&token, &policy(&issuer))
        .await
        .expect("cached keys still validate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_provider_comes_up() {
    if !oidc::available("oidc start-up while down") {
        return;
    }
    let port = oidc::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let mut config = OidcConfig::new(&issuer);
    config.retry_interval = Duration::from_millis(100);
    let client = Client::new(config).unwrap();
    let timer = client.spawn_refresh();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.readiness(), Readiness::NotReady);
    assert_eq!(
        client.validate("a.b.c", &policy(&issuer)).await,
        Err(OidcError::NotReady)
    );

    let provider = OidcProvider::start_on(port);
    assert_eq!(provider.issuer(), issuer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.readiness() == Readiness::NotReady {
        assert!(Instant::now() < deadline, "still not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = provider.token(RS256_CLIENT);
    client
        .validate(&token, &policy(&issuer))
        .await
        .expect("valid once keys loaded");
    timer.abort();
}

// ---------------------------------------------------------------------------------------------
// Static keys, start-up policy, verified-token cache, reloads.

use std::path::Path;
use std::sync::Arc;

use portcullis::config::{Config, RouteToken};
use portcullis::identity::authz::{RoutePolicy, TokenSource};
use portcullis::identity::validator::TokenValidator;
use portcullis::proxy::identity::{TokenProvider, authenticate, providers};
use rcgen::SigningKey as _;

/// An Ed25519 key and its public JWK.
struct EdKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl EdKey {
    fn new(kid: &str) -> Self {
        EdKey {
            kid: kid.to_owned(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key"),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig",
            "alg": "EdDSA", "x": b64.encode(self.pair.public_key_raw())})
    }

    /// An access token for `issuer` and audience `api`, valid for five minutes.
    fn token(&self, issuer: &str, sub: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid});
        let claims = serde_json::json!({"iss": issuer, "aud": "api", "sub": sub,
            "iat": now, "exp": now + 300});
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let sig = self.pair.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", b64.encode(sig))
    }
}

fn jwks(keys: &[&EdKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn load_config(dir: &Path, text: &str) -> Result<Config, String> {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).expect("write config");
    portcullis::config::load(&path).map_err(|e| e.to_string())
}

fn provider_section(name: &str, issuer: &str, extra: &str) -> String {
    format!(
        "[[token_providers]]\nname = \"{name}\"\nissuer = \"{issuer}\"\naudiences = [\"api\"]\n{extra}\n"
    )
}

/// A route requiring a bearer token from provider `index`.
fn requirement(index: usize) -> RouteToken {
    RouteToken {
        provider: index,
        sources: vec![TokenSource::Bearer],
        policy: RoutePolicy { rules: vec![] },
        claim_headers: vec![],
        forward_authorization: false,
    }
}

/// The access-log rule `authenticate` decides for `token`, or `ok`.
async fn rule(providers: &[Arc<TokenProvider>], index: usize, token: &str) -> String {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    match authenticate(
        &requirement(index),
        providers,
        &http::Method::GET,
        &headers,
        None,
    )
    .await
    {
        Ok(_) => "ok".to_owned(),
        Err(refusal) => refusal.rule,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_jwks_file_and_inline_keys_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file_key, inline_key) = (EdKey::new("file-1"), EdKey::new("inline-1"));
    std::fs::write(dir.path().join("keys.json"), jwks(&[&file_key])).expect("write");
    let config = format!(
        "[kernel]\nenabled = false\n{}{}",
        provider_section(
            "files",
            "https://files.example",
            "jwks_file = \"keys.json\""
        ),
        provider_section(
            "inline",
            "https://inline.example",
            &format!("jwks = '{}'", jwks(&[&inline_key]))
        ),
    );
    let cfg = load_config(dir.path(), &config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.proxy.token_providers[0].jwks_file.as_deref(),
        Some(dir.path().join("keys.json").as_path())
    );
    let running = providers(&cfg.proxy, &[]).expect("providers");
    assert!(
        running.iter().all(|p| p.ready()),
        "static keys are ready at once"
    );

    let from_file = file_key.token("https://files.example", "alice");
    let inline = inline_key.token("https://inline.example", "bob");
    let claims = running[0].validate(&from_file).await.expect("file key");
    assert_eq!(claims.subject(), Some("alice"));
    assert_eq!(rule(&running, 0, &from_file).await, "ok");
    assert_eq!(rule(&running, 1, &inline).await, "ok");
    // Each provider has its own keys and issuer.
    assert_eq!(rule(&running, 0, &inline).await, "token:unknown_kid");
    let foreign = file_key.token("https://inline.example", "mallory");
    assert_eq!(rule(&running, 1, &foreign).await, "token:unknown_kid");

    // The second and third uses of `from_file` were cache hits, visible in the metrics.
    let stats = running[0].validator.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 1));
    let text = portcullis::metrics::Metrics::new(None).render();
    assert!(
        text.contains("portcullis_token_cache_hits_total{provider=\"files\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("portcullis_token_cache_entries{provider=\"files\"} 1"),
        "{text}"
    );

    // A JWKS file the key hygiene refuses is a config error located in the file.
    std::fs::write(
        dir.path().join("keys.json"),
        "{\"keys\": [\n  {\"kty\": \"RSA\", \"kid\": \"r\", \"n\": \"AQAB\", \"e\": \"AQAB\", \"d\": \"AQAB\"}\n]}\n",
    )
    .expect("write");
    let err = load_config(dir.path(), &config).unwrap_err();
    assert_eq!(
        err,
        format!(
            "{}:2:3: error: invalid JWKS: no usable signature verification key: key #1 (kid `r`) \
             is not usable: the JWK carries private key material",
            dir.path().join("keys.json").display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_policy_decides_readiness_while_the_provider_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on this port: discovery fails, keys never load.
    let issuer = format!("http://127.0.0.1:{}", oidc::free_port());
    let config = format!(
        "[kernel]\nenabled = false\n{}{}",
        provider_section("waits", &issuer, ""),
        provider_section("serves", &issuer, "startup = \"serve\""),
    );
    let cfg = load_config(dir.path(), &config).unwrap_or_else(|e| panic!("{e}"));
    let running = providers(&cfg.proxy, &[]).expect("providers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!running[0].ready(), "wait_for_keys: not ready without keys");
    assert!(running[1].ready(), "serve: ready without keys");
    let token = EdKey::new("k").token(&issuer, "alice");
    for index in [0, 1] {
        assert_eq!(
            rule(&running, index, &token).await,
            "token:provider_not_ready",
            "provider {index}: tokens are refused until keys load"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_die_with_their_key_at_the_real_provider() {
    if !oidc::available("oidc token cache rotation") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let validator = TokenValidator::new(client.clone(), policy(provider.issuer()));
    let old = provider.token(RS256_CLIENT);
    let first = validator.validate(&old).await.expect("valid");
    let second = validator.validate(&old).await.expect("cached");
    assert!(
        Arc::ptr_eq(&first, &second),
        "a hit returns the cached claims"
    );
    assert_eq!(validator.cache_stats().hits, 1);

    // One rotation: the old key is still published, the entry stays a hit.
    provider.rotate();
    client.refresh().await.expect("refresh");
    validator.validate(&old).await.expect("still cached");
    assert_eq!(validator.cache_stats().hits, 2);

    // A second rotation drops the old key: the entry goes with it.
    provider.rotate();
    client.refresh().await.expect("refresh");
    assert_eq!(
        validator.validate(&old).await.unwrap_err(),
        OidcError::Jwt(JwtError::UnknownKid)
    );
    let stats = validator.cache_stats();
    assert_eq!((stats.hits, stats.entries), (2, 0));
    let fresh = provider.token(ES256_CLIENT);
    validator.validate(&fresh).await.expect("current key");
    validator.validate(&fresh).await.expect("cached");
    assert_eq!(validator.cache_stats().hits, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_a_warm_provider_only_when_nothing_relevant_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = |name: &str| {
        rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .expect("certificate")
            .cert
            .pem()
    };
    std::fs::write(dir.path().join("ca.pem"), ca("idp.example")).expect("write");
    let key = EdKey::new("k1");
    std::fs::write(dir.path().join("keys.json"), jwks(&[&key])).expect("write");
    let text = |discovered_extra: &str| {
        format!(
            "[kernel]\nenabled = false\n{}{}",
            provider_section(
                "discovered",
                "https://idp.example",
                &format!("ca = \"ca.pem\"\n{discovered_extra}")
            ),
            provider_section(
                "static",
                "https://static.example",
                "jwks_file = \"keys.json\""
            ),
        )
    };
    let reload = |previous: &[Arc<TokenProvider>], extra: &str| {
        let cfg = load_config(dir.path(), &text(extra)).unwrap_or_else(|e| panic!("{e}"));
        providers(&cfg.proxy, previous).expect("providers")
    };
    let kept = |a: &[Arc<TokenProvider>], b: &[Arc<TokenProvider>]| {
        [Arc::ptr_eq(&a[0], &b[0]), Arc::ptr_eq(&a[1], &b[1])]
    };

    let v1 = reload(&[], "");
    let token = key.token("https://static.example", "alice");
    v1[1].validate(&token).await.expect("valid");
    v1[1].validate(&token).await.expect("hit");

    // Nothing changed: both kept, with their warm caches.
    let v2 = reload(&v1, "");
    assert_eq!(kept(&v1, &v2), [true, true]);
    // The JWKS file's contents changed: the static provider is rebuilt; its counters carry on.
    std::fs::write(
        dir.path().join("keys.json"),
        jwks(&[&key, &EdKey::new("k2")]),
    )
    .expect("write");
    let v3 = reload(&v2, "");
    assert_eq!(kept(&v2, &v3), [true, false]);
    assert!(Arc::ptr_eq(
        v2[1].validator.cache().counters(),
        v3[1].validator.cache().counters()
    ));
    assert_eq!(v3[1].validator.cache_stats().hits, 1);
    assert_eq!(v3[1].validator.cache_stats().entries, 0, "a new cache");
    // The CA bundle's contents changed (same file name).
    std::fs::write(dir.path().join("ca.pem"), ca("other.example")).expect("write");
    let v4 = reload(&v3, "");
    assert_eq!(kept(&v3, &v4), [false, true]);
    // Refresh, start-up policy and cache bound each rebuild the provider.
    for extra in [
        "jwks_refresh = \"10m\"",
        "startup = \"serve\"",
        "token_cache_entries = 5",
    ] {
        let changed = reload(&v4, extra);
        assert_eq!(kept(&v4, &changed), [false, true], "{extra}");
    }
    let v5 = reload(&v4, "");
    assert_eq!(kept(&v4, &v5), [true, true]);
}
