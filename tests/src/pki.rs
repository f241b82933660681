//! A test PKI generated with rcgen on every run: a root CA, server and client certificates and
//! CRLs, as PEM files in a caller's directory and as in-memory rustls types. Nothing is checked
//! in, so nothing expires (style item 17).
//!
//! Leaf certificates live 90 days (Mozilla's recommended lifespan; sslyze's intermediate check
//! refuses more than 366) and start a day in the past, so a slightly skewed clock still accepts
//! them. Keys are ECDSA P-256 by default; P-384 and Ed25519 on request. RSA is not offered:
//! rcgen's *ring* backend cannot generate RSA keys (only its aws-lc-rs backend can, and that
//! needs cmake).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::RootCertStore;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The key algorithm of a generated certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256: what Mozilla's "modern" and "intermediate" profiles prefer.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519 (RFC 8410): accepted by rustls, not by most browsers.
    Ed25519,
}

impl KeyKind {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A certificate issued by a [`TestPki`], with its private key.
pub struct Leaf {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Its serial number, for CRLs.
    pub serial: u64,
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key as PEM (`PRIVATE KEY`, PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The chain a server presents: the leaf alone (the root is the trust anchor and is not
    /// sent, RFC 8446 §4.4.2 allows omitting it).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    /// Certificate and key as rustls loads them, for a server config or a client identity.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        let key = PrivateKeyDer::Pkcs8(self.key.clone_key());
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(
            CertifiedKey::from_der(self.chain(), key, &provider)
                .expect("a generated key loads into rustls"),
        )
    }

    /// The private key as rustls's key type.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        write_file(&cert_path, self.cert_pem.as_bytes(), 0o644);
        write_file(&key_path, self.key_pem.as_bytes(), 0o600);
        (cert_path, key_path)
    }
}

/// A root CA and what it issues. Each `TestPki` is a separate trust domain: certificates from
/// one do not verify against another's roots.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl TestPki {
    /// A new root CA (ECDSA P-256) named `Portcullis Test CA <name>`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Portcullis Test CA {name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Portcullis tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = at(SystemTime::now() - DAY);
        params.not_after = at(SystemTime::now() + 365 * DAY);
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        Self {
            ca,
            name: name.to_owned(),
        }
    }

    /// The CA certificate, DER.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        self.ca.der()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .expect("the generated CA is a valid trust anchor");
        Arc::new(roots)
    }

    /// A server certificate (ECDSA P-256) for `sans`: DNS names, or IP addresses written as
    /// such (`127.0.0.1`, `::1`).
    pub fn server(&self, sans: &[&str]) -> Leaf {
        self.server_with(sans, KeyKind::EcdsaP256)
    }

    /// A server certificate with the given key algorithm.
    pub fn server_with(&self, sans: &[&str], kind: KeyKind) -> Leaf {
        let (mut params, serial) =
            self.leaf_params(sans, sans.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue((params, serial), kind)
    }

    /// A client certificate (ECDSA P-256, clientAuth) with subject CN `common_name` and
    /// optional SANs (DNS names, IP addresses, or `spiffe://`/`urn:`-style URIs are not
    /// supported here: only what `CertificateParams::new` parses).
    pub fn client(&self, common_name: &str, sans: &[&str]) -> Leaf {
        self.client_with(common_name, sans, KeyKind::EcdsaP256)
    }

    /// A client certificate (ECDSA P-256, clientAuth) whose only SAN is the URI `uri` (a
    /// SPIFFE ID, say).
    pub fn client_uri(&self, common_name: &str, uri: &str) -> Leaf {
        let (mut params, serial) = self.leaf_params(&[], common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![rcgen::SanType::URI(
            uri.try_into().expect("an IA5 string URI"),
        )];
        self.issue((params, serial), KeyKind::EcdsaP256)
    }

    /// A client certificate with the given key algorithm.
    pub fn client_with(&self, common_name: &str, sans: &[&str], kind: KeyKind) -> Leaf {
        let (mut params, serial) = self.leaf_params(sans, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue((params, serial), kind)
    }

    /// A CRL from this CA revoking `revoked` (reason keyCompromise), valid for 7 days.
    pub fn crl(&self, revoked: &[&Leaf]) -> CertificateRevocationListDer<'static> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: at(now - DAY),
            next_update: at(now + 7 * DAY),
            crl_number: SerialNumber::from(next_serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| RevokedCertParams {
                    serial_number: SerialNumber::from(leaf.serial),
                    revocation_time: at(now - DAY),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.ca).expect("CRL").der().clone()
    }

    /// Writes the CA certificate to `<dir>/ca.crt`; returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.crt");
        write_file(&path, self.ca.pem().as_bytes(), 0o644);
        path
    }

    /// Issues a server certificate for `sans` and writes `<name>.crt` / `<name>.key` into
    /// `dir`; returns (certificate path, key path).
    pub fn write_server(&self, dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.server(sans).write(dir, name)
    }

    /// Issues a client certificate and writes `<name>.crt` / `<name>.key` into `dir`.
    pub fn write_client(&self, dir: &Path, name: &str, common_name: &str) -> (PathBuf, PathBuf) {
        self.client(common_name, &[]).write(dir, name)
    }

    /// Parameters common to every leaf, and the serial number they carry.
    fn leaf_params(&self, sans: &[&str], common_name: &str) -> (CertificateParams, u64) {
        let serial = next_serial();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("valid SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.distinguished_name.push(
            DnType::OrganizationName,
            format!("Portcullis tests ({})", self.name),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = at(SystemTime::now() - DAY);
        params.not_after = at(SystemTime::now() + 89 * DAY);
        (params, serial)
    }

    fn issue(&self, (params, serial): (CertificateParams, u64), kind: KeyKind) -> Leaf {
        let key = KeyPair::generate_for(kind.algorithm()).expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Unique, positive serial numbers (RFC 5280 §4.1.2.2), different across CAs too, which keeps
/// CRL tests honest.
fn next_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn at(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// SHA-256 of `data`, computed independently of the code under test (rustls's ring provider).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite.tls13().expect("tls13 suite").common.hash_provider;
    hash.hash(data).as_ref().to_vec()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_verify_against_their_ca_only() {
        let pki = TestPki::new("a");
        let other = TestPki::new("b");
        let leaf = pki.server(&["localhost", "127.0.0.1"]);
        let _ = leaf.certified_key();
        let verify = |roots: Arc<RootCertStore>| {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .expect("verifier");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                &leaf.cert,
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        assert!(verify(pki.roots()).is_ok());
        assert!(verify(other.roots()).is_err());
    }

    #[test]
    fn every_kind_loads_and_files_are_written() {
        let pki = TestPki::new("kinds");
        for kind in [KeyKind::EcdsaP256, KeyKind::EcdsaP384, KeyKind::Ed25519] {
            let _ = pki.server_with(&["k.test"], kind).certified_key();
        }
        let client = pki.client("alice", &[]);
        let _ = client.certified_key();
        let _ = pki.crl(&[&client]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki.write_ca(dir.path());
        let (cert, key) = pki.write_server(dir.path(), "srv", &["localhost"]);
        for p in [&ca, &cert, &key] {
            let text = std::fs::read_to_string(p).expect("read");
            assert!(text.starts_with("-----BEGIN "), "{}", p.display());
        }
    }
}
