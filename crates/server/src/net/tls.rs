//! TLS termination, so the server can speak HTTPS/WSS itself instead of behind a proxy.
//!
//! Why rustls with the `ring` provider: no C library to build or link (no OpenSSL, and
//! no aws-lc with its cmake/C toolchain), which keeps the NAS build a plain `cargo
//! build`. The provider is handed to the config builder explicitly, so no process-wide
//! default provider has to be installed.
//!
//! ALPN advertises only `http/1.1`: the server speaks HTTP/1.1 only, and WebSocket
//! upgrades need it. A client offering `h2` as well gets `http/1.1`.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, InconsistentKeys, ServerConfig, crypto::ring};

/// Why the certificate or key could not be used. Messages name the file and say what is wrong
/// (missing file, no certificate in the PEM, no private key, key does not match certificate, ...).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be opened or read (missing, unreadable, a directory, ...).
    #[error("cannot read TLS {what} file {}: {reason}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: io::Error,
    },
    /// The file has a broken PEM section.
    #[error("TLS {what} file {} is not valid PEM: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section (an empty chain is refused).
    #[error(
        "TLS certificate file {} contains no PEM certificate (expected a `-----BEGIN CERTIFICATE-----` block)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    /// The key file holds no usable private key section.
    #[error(
        "TLS key file {} contains no PEM private key (expected `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`; encrypted keys are not supported)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    /// The key is valid but belongs to another certificate.
    #[error("TLS private key {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the certificate/key pair for another reason (e.g. unsupported key type).
    #[error("TLS certificate {} with key {} cannot be used: {reason}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    /// The crypto provider does not support the protocol versions (not expected with ring).
    #[error("TLS setup failed: {0}")]
    Provider(rustls::Error),
}

/// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) into an acceptor.
/// ALPN: advertise only "http/1.1" (the server is HTTP/1.1 only; WebSocket upgrades need it).
///
/// The chain is every `CERTIFICATE` block of `cert`, leaf first; other blocks are skipped, so
/// one combined PEM file may be given as both `cert` and `key`. A key file readable by group
/// or others is logged as a warning but still used.
pub fn load_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let (cert_pem, _) = read_file("certificate", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| TlsError::Pem {
            what: "certificate",
            path: cert.to_owned(),
            reason,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }

    let (key_pem, key_meta) = read_file("key", key)?;
    warn_if_exposed(key, &key_meta);
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|reason| match reason {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: key.to_owned() },
        reason => TlsError::Pem {
            what: "key",
            path: key.to_owned(),
            reason,
        },
    })?;

    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|reason| match reason {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            reason => TlsError::Rejected {
                cert: cert.to_owned(),
                key: key.to_owned(),
                reason,
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads a whole file, with its metadata taken from the same open handle.
fn read_file(what: &'static str, path: &Path) -> Result<(Vec<u8>, Metadata), TlsError> {
    let fail = |reason| TlsError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok((bytes, meta))
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path, meta: &Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{:04o}", mode & 0o7777),
            "TLS private key is readable by group or others; `chmod 600` it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path, _meta: &Metadata) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types::ServerName};

    /// Writes a fresh self-signed pair for localhost/127.0.0.1 as `<name>.crt`/`<name>.key`.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(sans).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
        set_mode(&key_path, 0o600);
        (cert_path, key_path, cert.der().clone())
    }

    fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = (path, mode);
    }

    /// `unwrap_err` needs `TlsAcceptor: Debug`, which it is not.
    fn load_err(cert: &Path, key: &Path) -> TlsError {
        match load_acceptor(cert, key) {
            Ok(_) => panic!(
                "{} / {} loaded but should have been refused",
                cert.display(),
                key.display()
            ),
            Err(err) => err,
        }
    }

    #[test]
    fn loads_self_signed_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "server");
        load_acceptor(&cert, &key).unwrap();
    }

    #[test]
    fn group_readable_key_is_still_used() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "server");
        set_mode(&key, 0o644);
        load_acceptor(&cert, &key).unwrap();
    }

    #[test]
    fn missing_cert_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key, _) = write_pair(dir.path(), "server");
        let missing = dir.path().join("nope.crt");
        let err = load_err(&missing, &key);
        assert!(
            matches!(&err, TlsError::Read { reason, .. } if reason.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("nope.crt"), "{err}");
    }

    #[test]
    fn cert_file_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key, _) = write_pair(dir.path(), "server");
        // A key where the certificate should be: no CERTIFICATE block at all.
        let err = load_err(&key, &key);
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("server.key"), "{err}");
    }

    #[test]
    fn key_file_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = write_pair(dir.path(), "server");
        let err = load_err(&cert, &cert);
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = write_pair(dir.path(), "server");
        let (_, other_key, _) = write_pair(dir.path(), "other");
        let err = load_err(&cert, &other_key);
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn handshake_negotiates_http11() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der) = write_pair(dir.path(), "server");
        let acceptor = load_acceptor(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let mut request = [0u8; 1024];
            let n = tls.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET / HTTP/1.1\r\n"));
            let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
            tls.write_all(response).await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Offer h2 first: the server must still pick http/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));

        let client = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            tls.read_to_end(&mut response).await.unwrap();
            response
        };
        let response = tokio::time::timeout(Duration::from_secs(10), client).await.unwrap();
        assert!(
            response.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&response)
        );
        assert!(response.ends_with(b"\r\n\r\nok"));
        server.await.unwrap();
    }
}
