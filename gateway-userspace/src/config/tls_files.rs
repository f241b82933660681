//! The PEM files the config names: a listener's certificate chains and private keys, a pool's CA
//! bundle. Read with a size cap, parsed with rustls-pki-types, and checked the way rustls would
//! at a handshake (the key loads, the key matches the certificate), so a bad file fails `check`
//! rather than the first client. It does not choose certificates by SNI; the TLS module does.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Far above any real chain or CA bundle (Mozilla's roots are about 250 KB); stops a wrong
/// path (a log file, a device) from being read whole.
const MAX_PEM_BYTES: u64 = 16 << 20;

/// Why a PEM file named by the config cannot be used. Messages name the file, never its
/// contents: a key file's bytes must not reach a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsFileError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    /// A directory, device or FIFO.
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// Larger than any certificate file should be.
    #[error("{} is larger than {} MiB", path.display(), MAX_PEM_BYTES >> 20)]
    TooLarge { path: PathBuf },
    /// The PEM structure is broken.
    #[error("{}: invalid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    /// No `CERTIFICATE` section.
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    /// No private key section (PKCS#8, PKCS#1 or SEC1); `encrypted` when the only key found is
    /// an encrypted PKCS#8 one, which needs a passphrase the gateway does not have.
    #[error(
        "{}: no private key found{}",
        path.display(),
        if *encrypted { " (encrypted keys are not supported; decrypt it first)" } else { "" }
    )]
    NoKey { path: PathBuf, encrypted: bool },
    /// A key rustls's crypto provider cannot sign with.
    #[error("{}: unsupported private key: {reason}", path.display())]
    UnsupportedKey { path: PathBuf, reason: String },
    /// A certificate that does not parse as X.509.
    #[error("{}: invalid certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    /// The key is not the one the certificate was issued for.
    #[error("key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// A CA bundle entry that cannot be a trust anchor.
    #[error("{}: certificate {index} is not a usable CA certificate: {reason}", path.display())]
    BadCaCertificate {
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        reason: String,
    },
    /// No `X509 CRL` section in a PEM file, or a DER file that is not a CRL.
    #[error("{}: no certificate revocation list found (expected PEM `X509 CRL` sections or one DER CRL)", path.display())]
    NoCrl { path: PathBuf },
}

/// Reads a whole PEM file, refusing what cannot be one.
fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let read_error = |e: std::io::Error| TlsFileError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(TlsFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// pki-types' messages print raw lines as byte arrays; these say what is wrong instead.
fn pem_error(path: &Path, e: &pem::Error) -> TlsFileError {
    let reason = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".to_owned(),
        pem::Error::Base64Decode(e) => format!("bad base64 ({e})"),
        other => other.to_string(),
    };
    TlsFileError::Pem {
        path: path.to_path_buf(),
        reason,
    }
}

/// Every certificate in the file, in order (for a chain: the leaf first).
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in the file.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsFileError::NoKey {
            path: path.to_path_buf(),
            encrypted: bytes
                .windows(b"ENCRYPTED PRIVATE KEY".len())
                .any(|w| w == b"ENCRYPTED PRIVATE KEY"),
        },
        other => pem_error(path, &other),
    })
}

/// Which of a certificate/key pair an error is about, so it is located at the entry naming
/// that file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PairFile {
    Cert,
    Key,
}

/// A chain and its key, ready for rustls: the key loaded by the ring provider and checked to
/// belong to the leaf certificate.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    cert_path: &Path,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, (PairFile, TlsFileError)> {
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            let e = TlsFileError::UnsupportedKey {
                path: key_path.to_path_buf(),
                reason: e.to_string(),
            };
            (PairFile::Key, e)
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot say what its public half is; rustls accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err((
            PairFile::Key,
            TlsFileError::KeyMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            },
        )),
        Err(e) => Err((
            PairFile::Cert,
            TlsFileError::BadCertificate {
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            },
        )),
    }
}

/// Every certificate revocation list in a file: PEM (`-----BEGIN X509 CRL-----`, any number)
/// or a single DER CRL, as CAs publish them at their distribution points. Only the framing is
/// checked here; the client verifier parses the lists when it is built and reports what it
/// cannot use.
pub(crate) fn crls(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateRevocationListDer<'static>>, TlsFileError> {
    use rustls_pki_types::CertificateRevocationListDer;
    let bytes = read(path)?;
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let lists = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(path, &e))?;
        if lists.is_empty() {
            return Err(TlsFileError::NoCrl {
                path: path.to_path_buf(),
            });
        }
        return Ok(lists);
    }
    // DER: a CRL is one SEQUENCE (tag 0x30) filling the file.
    if bytes.first() != Some(&0x30) {
        return Err(TlsFileError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}

/// A CA bundle as trust anchors: every certificate in it must be usable.
pub(crate) fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certificates(path)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| TlsFileError::BadCaCertificate {
                path: path.to_path_buf(),
                index: i + 1,
                reason: e.to_string(),
            })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_formats() {
        let p = || PathBuf::from("certs/api.pem");
        let cases = [
            (
                TlsFileError::Read {
                    path: p(),
                    reason: "denied".into(),
                },
                "cannot read certs/api.pem: denied",
            ),
            (
                TlsFileError::NotAFile { path: p() },
                "certs/api.pem is not a regular file",
            ),
            (
                TlsFileError::TooLarge { path: p() },
                "certs/api.pem is larger than 16 MiB",
            ),
            (
                TlsFileError::Pem {
                    path: p(),
                    reason: "a malformed BEGIN line".into(),
                },
                "certs/api.pem: invalid PEM: a malformed BEGIN line",
            ),
            (
                TlsFileError::NoCertificate { path: p() },
                "certs/api.pem: no certificate found",
            ),
            (
                TlsFileError::NoKey {
                    path: p(),
                    encrypted: false,
                },
                "certs/api.pem: no private key found",
            ),
            (
                TlsFileError::NoKey {
                    path: p(),
                    encrypted: true,
                },
                "certs/api.pem: no private key found (encrypted keys are not supported; decrypt \
                 it first)",
            ),
            (
                TlsFileError::UnsupportedKey {
                    path: p(),
                    reason: "bad".into(),
                },
                "certs/api.pem: unsupported private key: bad",
            ),
            (
                TlsFileError::BadCertificate {
                    path: p(),
                    reason: "bad".into(),
                },
                "certs/api.pem: invalid certificate: bad",
            ),
            (
                TlsFileError::KeyMismatch {
                    key: "k.pem".into(),
                    cert: p(),
                },
                "key k.pem does not match certificate certs/api.pem",
            ),
            (
                TlsFileError::BadCaCertificate {
                    path: p(),
                    index: 2,
                    reason: "bad".into(),
                },
                "certs/api.pem: certificate 2 is not a usable CA certificate: bad",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn what_is_not_a_pem_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            certificates(dir.path()),
            Err(TlsFileError::NotAFile {
                path: dir.path().to_path_buf()
            })
        );
        let big = dir.path().join("big.pem");
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(MAX_PEM_BYTES + 1))
            .expect("sparse file");
        assert_eq!(
            certificates(&big),
            Err(TlsFileError::TooLarge { path: big.clone() })
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert!(
            matches!(certificates(&garbage), Err(TlsFileError::Pem { reason, .. }) if reason.starts_with("bad base64")),
        );
        // Well-formed PEM around bytes that are not a certificate: refused when the pair is
        // checked, at the certificate.
        let not_der = dir.path().join("not-der.pem");
        std::fs::write(
            &not_der,
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let rcgen::CertifiedKey { signing_key, .. } =
            rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).expect("cert");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, signing_key.serialize_pem()).expect("write");
        let chain = certificates(&not_der).expect("PEM parses");
        let key = private_key(&key_file).expect("key parses");
        let Err((which, e)) = certified_key(chain, &not_der, key, &key_file) else {
            panic!("garbage certificate accepted");
        };
        assert_eq!(which, PairFile::Cert);
        assert!(matches!(e, TlsFileError::BadCertificate { .. }), "{e}");
        // A garbage key of a known PEM type: refused by the provider, at the key.
        let bad_key = dir.path().join("bad-key.pem");
        std::fs::write(
            &bad_key,
            "-----BEGIN PRIVATE KEY-----\nAAECAw==\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let chain = certificates(&not_der).expect("PEM parses");
        let key = private_key(&bad_key).expect("PEM parses");
        let Err((which, e)) = certified_key(chain, &not_der, key, &bad_key) else {
            panic!("garbage key accepted");
        };
        assert_eq!(which, PairFile::Key);
        assert!(matches!(e, TlsFileError::UnsupportedKey { .. }), "{e}");
        // A CA bundle entry that is not a certificate.
        assert!(matches!(
            root_store(&not_der),
            Err(TlsFileError::BadCaCertificate { index: 1, .. })
        ));
    }
}
