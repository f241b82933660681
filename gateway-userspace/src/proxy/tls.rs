//! The TLS phase: builds the rustls configuration a TLS listener serves with (protocol versions,
//! cipher suites, key-exchange groups, certificate choice by SNI, ALPN) and the client
//! configuration used for TLS to backends.
//!
//! Not here: accepting connections and the handshake timeout (the listener), the HSTS header
//! (added by the response phase from [`TlsConfig::hsts`]), loading PEM files (the config
//! loader), and client-certificate rules (mTLS, which plugs in at [`client_verifier`]).
//!
//! The policy follows Mozilla's Server Side TLS guidelines, "intermediate" profile (v5.7, the
//! version sslyze checks against): <https://wiki.mozilla.org/Security/Server_Side_TLS>. rustls
//! implements neither TLS 1.0/1.1, CBC or RC4 suites, static-RSA key exchange, compression nor
//! renegotiation, so those parts of the profile hold by construction; this module picks the
//! order and the subset.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoClientAuth, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use x509_parser::extensions::GeneralName;

use crate::config::{TlsConfig, TlsVersion, UpstreamTls};

/// Cipher suites, in the server's order of preference.
///
/// Mozilla intermediate order: TLS 1.3 suites first (RFC 8446 §9.1 makes AES-128-GCM the one
/// every client must support), then the TLS 1.2 suites that have both forward secrecy (ECDHE)
/// and an AEAD cipher, AES-128 before AES-256 before ChaCha20, ECDSA before RSA at each step.
/// Mozilla's DHE-RSA suites are left out on purpose: rustls does not implement finite-field DHE,
/// and every client of the intermediate profile's list speaks ECDHE.
pub static CIPHER_SUITES: [SupportedCipherSuite; 9] = [
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Key-exchange groups, in preference order: Mozilla intermediate's `X25519:prime256v1:secp384r1`.
/// X25519 first because it is fast and has no point-validation pitfalls (RFC 7748).
pub static KX_GROUPS: [&dyn SupportedKxGroup; 3] =
    [kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];

/// Both versions, newest first. Anything older than TLS 1.2 is not implemented by rustls at all
/// (RFC 8996 deprecates TLS 1.0 and 1.1).
static TLS12_AND_13: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

/// Why a TLS listener's configuration cannot be built. Each variant names the certificate (its
/// position in the listener's list and, when known, its file) so `portcullis check` can point
/// at the culprit.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS listener needs at least one certificate: without one there is nothing to serve.
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    /// The certificate chain is empty: there is no end-entity certificate to present.
    #[error("{certificate}: the certificate chain is empty")]
    EmptyChain {
        /// Which certificate (`certificates[i]`, with its file when known).
        certificate: String,
    },
    /// The end-entity certificate is not DER X.509 we can read (needed for its names).
    #[error("{certificate}: cannot parse the end-entity certificate: {reason}")]
    BadCertificate {
        /// Which certificate (`certificates[i]`, with its file when known).
        certificate: String,
        /// What the X.509 parser said.
        reason: String,
    },
    /// The private key does not belong to the end-entity certificate, so every handshake with
    /// it would fail at the client.
    #[error("{certificate}: the private key does not match the certificate: {source}")]
    KeyMismatch {
        /// Which certificate (`certificates[i]`, with its file when known).
        certificate: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The client-certificate verifier cannot be built (CA bundle or CRLs rustls refuses).
    #[error("client certificates: {0}")]
    ClientVerifier(String),
    /// An ALPN protocol name is empty or longer than 255 bytes (RFC 7301 §3.1 limits).
    #[error("ALPN protocol {protocol:?} must be 1 to 255 bytes long")]
    InvalidAlpn {
        /// The name, lossily decoded for the message.
        protocol: String,
    },
    /// rustls refused the configuration (for example no cipher suite for a version, or the
    /// session-ticket key could not be generated).
    #[error("TLS configuration rejected by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every TLS context here uses: *ring*, restricted to [`CIPHER_SUITES`] and
/// [`KX_GROUPS`]. The config loader uses it too, to load private keys.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: KX_GROUPS.to_vec(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// The server configuration of a TLS listener.
///
/// - Versions: TLS 1.3 and 1.2, or 1.3 only with `min_version = Tls13`.
/// - Suites and groups: [`CIPHER_SUITES`] and [`KX_GROUPS`], chosen in the server's order
///   (`ignore_client_order`), as the mission asks; with only AEAD + forward-secret suites
///   enabled, whichever side chooses, the result is a suite Mozilla rates as good.
/// - Certificates: by SNI, see [`SniResolver`].
/// - ALPN: the configured list in server preference order; a client that offers ALPN but none
///   of ours gets a `no_application_protocol` alert (RFC 7301 §3.2).
/// - Resumption: rustls's in-memory session cache plus stateless tickets whose keys rotate
///   every 6 hours (a ticket key that never changes would void forward secrecy; that is why
///   Mozilla's nginx template turns tickets off, and rotation is the other fix).
/// - No 0-RTT data: early data can be replayed (RFC 8446 §8) and an API gateway cannot know
///   which requests are safe to replay.
/// - Client certificates per [`TlsConfig::client_certs`]: see [`client_verifier`].
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    for protocol in &tls.alpn {
        if protocol.is_empty() || protocol.len() > 255 {
            return Err(TlsError::InvalidAlpn {
                protocol: String::from_utf8_lossy(protocol).into_owned(),
            });
        }
    }
    let resolver = SniResolver::build(&tls.certificates, |i| {
        certificate_label(
            i,
            tls.certificate_files.get(i).map(|(cert, _)| cert.as_path()),
        )
    })?;

    let versions: &[&SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &TLS12_AND_13,
        TlsVersion::Tls13 => &TLS13_ONLY,
    };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(client_verifier(tls)?)
        .with_cert_resolver(Arc::new(resolver));
    config.ignore_client_order = true;
    config.alpn_protocols = tls.alpn.clone();
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Who may present a client certificate: nobody is asked without `client_certs` (or with mode
/// `none`); otherwise a webpki verifier over the listener's CA bundles and CRLs, built anew for
/// every config generation so reloaded bundles and CRLs apply to new handshakes.
fn client_verifier(tls: &TlsConfig) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let Some(c) = &tls.client_certs else {
        return Ok(Arc::new(NoClientAuth));
    };
    let verifier = crate::identity::mtls::client_verifier_with(
        c.mode,
        c.roots.clone(),
        c.crls.clone(),
        c.revocation,
    )
    .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
    Ok(verifier.unwrap_or_else(|| Arc::new(NoClientAuth)))
}

/// The client configuration for TLS to a backend pool.
///
/// Backend certificates are always verified against `tls.roots` (the pool's `[pools.tls] ca`),
/// including the name: the caller passes the pool's `server_name`, or the endpoint host, as the
/// `ServerName` when connecting. There is deliberately no way to turn verification off. With
/// `None` the root store is empty, so every handshake fails: a pool without TLS settings must
/// not be reached over TLS by accident, and failing closed is the safe reading.
///
/// Versions TLS 1.3 and 1.2, the same suites and groups as the listeners; `alpn` in preference
/// order (for example `[b"h2"]` for an h2 pool, `[b"http/1.1"]` for HTTP/1.1).
pub fn upstream_client_config(tls: Option<&UpstreamTls>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let roots = tls
        .map(|t| Arc::clone(&t.roots))
        .unwrap_or_else(|| Arc::new(RootCertStore::empty()));
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&TLS12_AND_13)
        // Cannot fail: the provider is the fixed one above, which has suites for both versions
        // (the unit test `upstream_config_builds` pins this).
        .expect("the built-in provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    // The gateway's certificate for backends that require mTLS. The pair was checked when the
    // config loaded, so a refusal here cannot happen; it would fall back to no certificate and
    // the backend's handshake refusal would say so.
    let identity = tls.and_then(|t| t.client_identity.as_ref());
    let mut config = match identity {
        Some(id) => config
            .clone()
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .unwrap_or_else(|_| config.with_no_client_auth()),
        None => config.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn certificate_label(index: usize, file: Option<&Path>) -> String {
    match file {
        Some(file) => format!("certificates[{index}] ({})", file.display()),
        None => format!("certificates[{index}]"),
    }
}

/// Chooses the certificate for a handshake from the client's SNI name.
///
/// Rules, in order:
/// 1. a certificate with a DNS SAN equal to the name;
/// 2. a certificate with a wildcard SAN `*.suffix` where the name is exactly one label followed
///    by `.suffix` (RFC 6125 §6.4.3: the wildcard covers one whole left-most label, so
///    `*.example.com` matches `x.example.com`, not `example.com` nor `a.b.example.com`);
/// 3. otherwise (no SNI, an IP address, or an unknown name) the first certificate.
///
/// Names compare case-insensitively (DNS names are, RFC 4343) and a trailing dot is ignored.
/// Only DNS SANs count; the subject CN is ignored, as browsers and the CA/Browser Forum
/// baseline requirements do. When several certificates match at the same step (an ECDSA and an
/// RSA certificate for one name), the first whose key can sign with a scheme the client offers
/// wins, so old RSA-only clients still get the RSA one.
///
/// The name tables are built once, when the listener's configuration is compiled: a handshake
/// costs a hash lookup or two, never a certificate parse.
#[derive(Debug)]
pub struct SniResolver {
    certificates: Vec<Arc<CertifiedKey>>,
    /// Lower-case DNS name -> indexes of the certificates naming it, in config order.
    exact: HashMap<String, Vec<usize>>,
    /// Lower-case suffix after `*.` -> indexes of the certificates with that wildcard.
    wildcard: HashMap<String, Vec<usize>>,
}

impl SniResolver {
    /// Reads the DNS SANs of every certificate. `certificates` must not be empty; the first is
    /// the default.
    pub fn new(certificates: &[Arc<CertifiedKey>]) -> Result<Self, TlsError> {
        Self::build(certificates, |i| certificate_label(i, None))
    }

    fn build(
        certificates: &[Arc<CertifiedKey>],
        label: impl Fn(usize) -> String,
    ) -> Result<Self, TlsError> {
        if certificates.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, key) in certificates.iter().enumerate() {
            let leaf = key.cert.first().ok_or_else(|| TlsError::EmptyChain {
                certificate: label(index),
            })?;
            match key.keys_match() {
                // A key type rustls cannot compare (a custom signer) is not proof of mismatch.
                Ok(())
                | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
                Err(source) => {
                    return Err(TlsError::KeyMismatch {
                        certificate: label(index),
                        source,
                    });
                }
            }
            let names = dns_names(leaf).map_err(|reason| TlsError::BadCertificate {
                certificate: label(index),
                reason,
            })?;
            for name in names {
                let name = normalize(&name).into_owned();
                let (table, key) = match name.strip_prefix("*.") {
                    // `*.com`-style wildcards are refused by every browser and CA (CA/B BR
                    // 3.2.2.6); treat them as matching nothing rather than everything.
                    Some(suffix) if suffix.contains('.') && !suffix.contains('*') => {
                        (&mut wildcard, suffix.to_owned())
                    }
                    Some(_) => continue,
                    // Partial wildcards (`f*.example.com`) are deprecated by RFC 6125 §7.2
                    // and never matched; as an exact name they can match no valid SNI.
                    None if name.contains('*') => continue,
                    None => (&mut exact, name),
                };
                let indexes = table.entry(key).or_default();
                if !indexes.contains(&index) {
                    indexes.push(index);
                }
            }
        }
        Ok(Self {
            certificates: certificates.to_vec(),
            exact,
            wildcard,
        })
    }

    /// The certificate for a client that sent `server_name` (SNI) and accepts `schemes`.
    pub fn select(
        &self,
        server_name: Option<&str>,
        schemes: &[SignatureScheme],
    ) -> Option<&Arc<CertifiedKey>> {
        let default = self.certificates.first();
        let Some(name) = server_name else {
            return default;
        };
        let name = normalize(name);
        let exact = self
            .exact
            .get(name.as_ref())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let wildcard = name
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut candidates = exact.iter().chain(wildcard);
        let first = candidates.clone().next();
        let usable = candidates.find(|&&i| {
            self.certificates
                .get(i)
                .is_some_and(|c| c.key.choose_scheme(schemes).is_some())
        });
        match usable.or(first) {
            Some(&i) => self.certificates.get(i),
            None => default,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name(), client_hello.signature_schemes())
            .cloned()
    }
}

/// Lower case without a trailing dot; borrows in the common case (already normal).
fn normalize(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

/// The DNS names in the certificate's subjectAltName extension (none if it has none).
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    fn certified(names: &[&str]) -> Arc<CertifiedKey> {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        Arc::new(CertifiedKey::from_der(chain, der, &crypto_provider()).expect("certified key"))
    }

    fn tls_config(certificates: Vec<Arc<CertifiedKey>>) -> TlsConfig {
        TlsConfig {
            client_certs: None,
            certificates,
            certificate_files: Vec::new(),
            min_version: TlsVersion::Tls12,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            hsts: None,
        }
    }

    #[test]
    fn resolver_picks_by_sni() {
        let certs = vec![
            certified(&["api.example.com"]),
            certified(&["*.example.com"]),
            certified(&["other.test"]),
        ];
        let resolver = SniResolver::new(&certs).expect("resolver");
        let schemes = [SignatureScheme::ECDSA_NISTP256_SHA256];
        let pick = |sni: Option<&str>| {
            let chosen = resolver.select(sni, &schemes).expect("a certificate");
            certs
                .iter()
                .position(|c| Arc::ptr_eq(c, chosen))
                .expect("one of ours")
        };
        assert_eq!(pick(Some("api.example.com")), 0, "exact beats wildcard");
        assert_eq!(
            pick(Some("API.Example.COM.")),
            0,
            "case and trailing dot ignored"
        );
        assert_eq!(pick(Some("x.example.com")), 1, "wildcard, one label");
        assert_eq!(
            pick(Some("a.b.example.com")),
            0,
            "wildcard covers one label only"
        );
        assert_eq!(
            pick(Some("example.com")),
            0,
            "wildcard does not cover the parent"
        );
        assert_eq!(pick(Some("OTHER.TEST")), 2, "case-insensitive exact");
        assert_eq!(pick(Some("unknown.test")), 0, "unknown name: default");
        assert_eq!(pick(None), 0, "no SNI: default");
    }

    #[test]
    fn resolver_prefers_a_key_the_client_can_use() {
        let p256 = certified(&["dual.test"]);
        let ed = {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
            let cert = CertificateParams::new(vec!["dual.test".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            Arc::new(
                CertifiedKey::from_der(vec![cert.der().clone()], der, &crypto_provider())
                    .expect("certified key"),
            )
        };
        let certs = vec![p256.clone(), ed.clone()];
        let resolver = SniResolver::new(&certs).expect("resolver");
        let chosen = resolver.select(Some("dual.test"), &[SignatureScheme::ED25519]);
        assert!(chosen.is_some_and(|c| Arc::ptr_eq(c, &ed)));
        let chosen = resolver.select(Some("dual.test"), &[SignatureScheme::ECDSA_NISTP256_SHA256]);
        assert!(chosen.is_some_and(|c| Arc::ptr_eq(c, &p256)));
        // Nothing usable: still the first match, and the handshake fails with a clear alert.
        let chosen = resolver.select(Some("dual.test"), &[SignatureScheme::RSA_PSS_SHA256]);
        assert!(chosen.is_some_and(|c| Arc::ptr_eq(c, &p256)));
    }

    #[test]
    fn server_config_policy() {
        let config = server_config(&tls_config(vec![certified(&["a.test"])])).expect("config");
        assert!(config.ignore_client_order);
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(config.max_early_data_size, 0);
        let suites: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(suites.len(), 9);
    }

    #[test]
    fn server_config_errors() {
        assert!(matches!(
            server_config(&tls_config(Vec::new())),
            Err(TlsError::NoCertificates)
        ));
        let mut bad_alpn = tls_config(vec![certified(&["a.test"])]);
        bad_alpn.alpn.push(Vec::new());
        assert!(matches!(
            server_config(&bad_alpn),
            Err(TlsError::InvalidAlpn { .. })
        ));

        // The key of one certificate with the chain of another.
        let a = certified(&["a.test"]);
        let b = certified(&["b.test"]);
        let mixed = Arc::new(CertifiedKey::new(a.cert.clone(), b.key.clone()));
        let mut config = tls_config(vec![mixed]);
        config.certificate_files = vec![("a.pem".into(), "b.key".into())];
        let err = server_config(&config).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }));
        assert!(err.to_string().contains("certificates[0] (a.pem)"), "{err}");

        let empty = Arc::new(CertifiedKey::new(Vec::new(), a.key.clone()));
        assert!(matches!(
            server_config(&tls_config(vec![empty])),
            Err(TlsError::EmptyChain { .. })
        ));
    }

    #[test]
    fn errors_format_well() {
        let errors = [
            TlsError::NoCertificates,
            TlsError::EmptyChain {
                certificate: "certificates[1]".into(),
            },
            TlsError::BadCertificate {
                certificate: "certificates[0] (x.pem)".into(),
                reason: "bad DER".into(),
            },
            TlsError::InvalidAlpn {
                protocol: String::new(),
            },
            TlsError::Rustls(rustls::Error::General("x".into())),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.ends_with('.'), "{text}");
        }
    }

    #[test]
    fn upstream_config_builds() {
        let config = upstream_client_config(None, &[b"h2"]);
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let roots = Arc::new(RootCertStore::empty());
        let upstream = UpstreamTls {
            roots,
            ca_file: "ca.pem".into(),
            server_name: None,
            client_identity: None,
        };
        let config = upstream_client_config(Some(&upstream), &[]);
        assert!(config.alpn_protocols.is_empty());
    }
}
