//! TLS policy tests: the server configuration every Portcullis TLS listener serves with
//! (`portcullis::proxy::tls::server_config`; the proxy listener uses exactly this function) and
//! the client configuration for TLS to backends (`upstream_client_config`).
//!
//! A tiny server stands in for the listener: tokio-rustls with `server_config`, answering one
//! fixed HTTP/1.1 response, on 127.0.0.1:0. Real rustls clients talk to it with chosen versions,
//! suites, SNI names and ALPN lists; sslyze (installed by `xtask/setup.sh`) checks it against
//! Mozilla's "intermediate" configuration. Certificates come from the generated test PKI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::{TlsConfig, TlsVersion, UpstreamTls};
use portcullis::proxy::tls::{server_config, upstream_client_config};
use portcullis_tests::pki::TestPki;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const STEP: Duration = Duration::from_secs(10);
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

fn listener_tls(certificates: Vec<Arc<CertifiedKey>>, min_version: TlsVersion) -> TlsConfig {
    TlsConfig {
        certificates,
        certificate_files: Vec::new(),
        min_version,
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        hsts: None,
        client_certs: None,
    }
}

/// Serves `config` on 127.0.0.1:0 until the test's runtime ends: per connection, the TLS
/// handshake, the request head, the fixed response, close_notify.
async fn serve(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Handshake failures are what several tests expect: the client reports them.
                let Ok(Ok(mut tls)) = timeout(STEP, acceptor.accept(tcp)).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match timeout(STEP, tls.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = tls.write_all(RESPONSE).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// What a client saw of a completed exchange.
#[derive(Debug)]
struct Seen {
    version: ProtocolVersion,
    suite: CipherSuite,
    alpn: Option<Vec<u8>>,
    leaf: CertificateDer<'static>,
    response: String,
}

/// Connects with `config` to `addr` as `name` (a DNS name is sent as SNI; an IP address is
/// not, RFC 6066 §3) and does one request.
async fn exchange(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<Seen, String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = timeout(STEP, TlsConnector::from(config).connect(server_name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let mut seen = Seen {
        version: conn.protocol_version().ok_or("no version")?,
        suite: conn.negotiated_cipher_suite().ok_or("no suite")?.suite(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        leaf: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no peer certificate")?
            .clone()
            .into_owned(),
        response: String::new(),
    };
    tls.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    timeout(STEP, tls.read_to_string(&mut seen.response))
        .await
        .map_err(|_| "response timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(seen)
}

/// A rustls client trusting `roots`, limited to `versions` and `suites` (in the client's
/// preference order), offering `alpn`.
fn client(
    roots: Arc<RootCertStore>,
    versions: &[&'static SupportedProtocolVersion],
    suites: &[SupportedCipherSuite],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::ring::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("client versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn all_suites() -> Vec<SupportedCipherSuite> {
    rustls::crypto::ring::ALL_CIPHER_SUITES.to_vec()
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn tls13_and_tls12_complete_a_request() {
    let pki = TestPki::new("versions");
    let leaf = pki.server(&["api.test"]);
    let tls = listener_tls(vec![leaf.certified_key()], TlsVersion::Tls12);
    let addr = serve(server_config(&tls).expect("server config")).await;

    for (versions, expected) in [
        (ONLY_13, ProtocolVersion::TLSv1_3),
        (ONLY_12, ProtocolVersion::TLSv1_2),
        (BOTH, ProtocolVersion::TLSv1_3),
    ] {
        let config = client(pki.roots(), versions, &all_suites(), H1);
        let seen = exchange(addr, config, "api.test").await.expect("handshake");
        assert_eq!(seen.version, expected);
        assert!(
            seen.response.starts_with("HTTP/1.1 200 OK"),
            "{}",
            seen.response
        );
        assert!(seen.response.ends_with("ok\n"), "{}", seen.response);
    }
}

#[tokio::test]
async fn min_version_13_refuses_a_tls12_only_client() {
    let pki = TestPki::new("min13");
    let leaf = pki.server(&["api.test"]);
    let tls = listener_tls(vec![leaf.certified_key()], TlsVersion::Tls13);
    let addr = serve(server_config(&tls).expect("server config")).await;

    let only12 = client(pki.roots(), ONLY_12, &all_suites(), H1);
    let err = exchange(addr, only12, "api.test")
        .await
        .expect_err("TLS 1.2 refused");
    assert!(err.contains("ProtocolVersion"), "unexpected error: {err}");

    let both = client(pki.roots(), BOTH, &all_suites(), H1);
    let seen = exchange(addr, both, "api.test")
        .await
        .expect("TLS 1.3 accepted");
    assert_eq!(seen.version, ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let pki = TestPki::new("sni");
    // The first certificate is the default; it also names 127.0.0.1 so a client connecting by
    // address (which sends no SNI) can verify it.
    let api = pki.server(&["api.example.com", "127.0.0.1"]);
    let wildcard = pki.server(&["*.example.com"]);
    let other = pki.server(&["other.test"]);
    let tls = listener_tls(
        vec![
            api.certified_key(),
            wildcard.certified_key(),
            other.certified_key(),
        ],
        TlsVersion::Tls12,
    );
    let addr = serve(server_config(&tls).expect("server config")).await;

    for (name, expected, why) in [
        ("api.example.com", &api, "exact name beats the wildcard"),
        ("x.example.com", &wildcard, "wildcard covers one label"),
        ("OTHER.TEST", &other, "names compare case-insensitively"),
        ("127.0.0.1", &api, "no SNI: the first certificate"),
    ] {
        for versions in [ONLY_13, ONLY_12] {
            let config = client(pki.roots(), versions, &all_suites(), H1);
            let seen = exchange(addr, config, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(seen.leaf == expected.cert, "{name} ({versions:?}): {why}");
        }
    }

    // A name no certificate covers gets the default one, which the client then rightly refuses.
    let config = client(pki.roots(), BOTH, &all_suites(), H1);
    let err = exchange(addr, config, "a.b.example.com")
        .await
        .expect_err("name mismatch");
    assert!(
        err.contains("not valid for name"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn alpn_prefers_h2_and_falls_back_to_http11() {
    let pki = TestPki::new("alpn");
    let leaf = pki.server(&["api.test"]);
    let tls = listener_tls(vec![leaf.certified_key()], TlsVersion::Tls12);
    let addr = serve(server_config(&tls).expect("server config")).await;

    for (offer, expected) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], Some(b"h2".to_vec())),
        // The server's order wins over the client's (RFC 7301 §3.2: the server selects).
        (&[b"http/1.1".as_slice(), b"h2"][..], Some(b"h2".to_vec())),
        (&[b"http/1.1".as_slice()][..], Some(b"http/1.1".to_vec())),
        (&[][..], None),
    ] {
        for versions in [ONLY_13, ONLY_12] {
            let config = client(pki.roots(), versions, &all_suites(), offer);
            let seen = exchange(addr, config, "api.test").await.expect("handshake");
            assert_eq!(seen.alpn, expected, "offer {offer:?}, {versions:?}");
        }
    }

    // Offering only protocols we do not speak ends the handshake (no_application_protocol).
    let config = client(pki.roots(), BOTH, &all_suites(), &[b"spdy/3"]);
    let err = exchange(addr, config, "api.test")
        .await
        .expect_err("no common protocol");
    assert!(
        err.contains("NoApplicationProtocol"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn server_cipher_order_wins() {
    let pki = TestPki::new("order");
    let leaf = pki.server(&["api.test"]);
    let tls = listener_tls(vec![leaf.certified_key()], TlsVersion::Tls12);
    let addr = serve(server_config(&tls).expect("server config")).await;

    // Clients that prefer ChaCha20, then AES-256, then AES-128: the server picks AES-128-GCM,
    // first in its (Mozilla intermediate) order.
    let tls12 = [
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    let config = client(pki.roots(), ONLY_12, &tls12, H1);
    let seen = exchange(addr, config, "api.test").await.expect("handshake");
    assert_eq!(
        seen.suite,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );

    let tls13 = [
        suites::TLS13_CHACHA20_POLY1305_SHA256,
        suites::TLS13_AES_256_GCM_SHA384,
        suites::TLS13_AES_128_GCM_SHA256,
    ];
    let config = client(pki.roots(), ONLY_13, &tls13, H1);
    let seen = exchange(addr, config, "api.test").await.expect("handshake");
    assert_eq!(seen.suite, CipherSuite::TLS13_AES_128_GCM_SHA256);

    // A client that has only ChaCha20 still gets it: the order ranks, it does not exclude.
    let config = client(pki.roots(), ONLY_12, &tls12[..1], H1);
    let seen = exchange(addr, config, "api.test").await.expect("handshake");
    assert_eq!(
        seen.suite,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
}

#[tokio::test]
async fn upstream_client_verifies_the_backend_ca() {
    let pki = TestPki::new("backends");
    let stranger = TestPki::new("stranger");
    let good = pki.server(&["backend.test"]);
    let bad = stranger.server(&["backend.test"]);
    let good_addr = serve(
        server_config(&listener_tls(vec![good.certified_key()], TlsVersion::Tls12))
            .expect("server config"),
    )
    .await;
    let bad_addr = serve(
        server_config(&listener_tls(vec![bad.certified_key()], TlsVersion::Tls12))
            .expect("server config"),
    )
    .await;

    let upstream = UpstreamTls {
        roots: pki.roots(),
        ca_file: PathBuf::from("ca.crt"),
        server_name: Some("backend.test".into()),
        client_identity: None,
    };
    let config = upstream_client_config(Some(&upstream), &[b"h2", b"http/1.1"]);

    let seen = exchange(good_addr, config.clone(), "backend.test")
        .await
        .expect("backend chaining to the configured CA");
    assert_eq!(seen.alpn.as_deref(), Some(b"h2".as_slice()));
    assert!(seen.response.starts_with("HTTP/1.1 200 OK"));

    let err = exchange(bad_addr, config.clone(), "backend.test")
        .await
        .expect_err("backend from another CA");
    assert!(err.contains("UnknownIssuer"), "unexpected error: {err}");

    let err = exchange(good_addr, config, "elsewhere.test")
        .await
        .expect_err("right CA, wrong name");
    assert!(
        err.contains("not valid for name"),
        "unexpected error: {err}"
    );

    // No TLS settings: no trust anchors, so nothing verifies (fail closed).
    let none = upstream_client_config(None, &[]);
    let err = exchange(good_addr, none, "backend.test")
        .await
        .expect_err("no roots");
    assert!(err.contains("UnknownIssuer"), "unexpected error: {err}");
}

/// `PORTCULLIS_SSLYZE`, or the venv `xtask/setup.sh` makes under `target/`.
fn sslyze() -> Option<PathBuf> {
    let path = std::env::var_os("PORTCULLIS_SSLYZE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/venv/bin/sslyze").into()
        });
    if path.exists() {
        return Some(path);
    }
    let required = std::env::var("PORTCULLIS_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
        || std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    if required {
        panic!(
            "sslyze not found at {} (run xtask/setup.sh)",
            path.display()
        );
    }
    eprintln!(
        "skipping the sslyze check: {} not found (run xtask/setup.sh)",
        path.display()
    );
    None
}

/// The proxy's TLS listener (a real `Proxy` with an https listener, not a stand-in) passes
/// sslyze's Mozilla "intermediate" check (sslyze exits 1 on any deviation). The CA is handed
/// to sslyze so certificate path validation, part of the check, can succeed; an ECDSA P-256
/// certificate for localhost and 127.0.0.1 that lives 90 days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslyze_mozilla_intermediate() {
    let Some(sslyze) = sslyze() else {
        return;
    };
    let pki = TestPki::new("sslyze");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki.write_ca(dir.path());
    let leaf = pki.server(&["localhost", "127.0.0.1"]);
    let mut tls = listener_tls(vec![leaf.certified_key()], TlsVersion::Tls12);
    tls.hsts = Some(portcullis::config::Hsts {
        max_age: std::time::Duration::from_secs(365 * 86_400),
        include_subdomains: false,
        preload: false,
    });
    let cfg = portcullis::config::ProxyConfig {
        listeners: vec![portcullis::config::ListenerConfig {
            name: "public".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            kind: portcullis::config::ListenerKind::Https(tls),
            proxy_protocol: false,
            max_connections: 100,
            handshake_timeout: std::time::Duration::from_secs(5),
            header_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(30),
        }],
        trusted: Default::default(),
        routes: vec![],
        pools: vec![],
        token_providers: vec![],
        api_keys: None,
        drain_timeout: std::time::Duration::from_secs(1),
    };
    let backstop = portcullis::proxy::backstop::Backstop::new(
        Arc::new(portcullis::rules::table::compile(&Default::default()).unwrap()),
        None,
    );
    let proxy =
        portcullis::proxy::Proxy::start(&cfg, backstop, portcullis::metrics::Metrics::new(None))
            .await
            .expect("start the proxy");
    let addr = proxy.local_addrs()[0].1;

    // `host:port{ip}`: SNI and certificate name `localhost`, connection to our loopback address.
    let target = format!("localhost:{}{{{}}}", addr.port(), addr.ip());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&sslyze)
            .arg("--mozilla_config=intermediate")
            .arg(format!("--certinfo_ca_file={}", ca.display()))
            .arg(&target)
            .output()
    })
    .await
    .expect("join")
    .expect("running sslyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The compliance section, for the test log (`--nocapture`) and for failures.
    let summary = stdout
        .find("COMPLIANCE AGAINST")
        .map_or(stdout.as_ref(), |i| &stdout[i..]);
    eprintln!("{summary}");
    assert!(
        output.status.success(),
        "sslyze exited with {}:\n{stdout}\n{stderr}",
        output.status
    );
    assert!(summary.contains("OK - Compliant"), "{stdout}");
}
