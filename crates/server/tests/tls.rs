//! HTTPS and WSS served directly (`--tls-cert`/`--tls-key`): a real server with
//! a self-signed certificate, real TLS clients (rustls with ring).

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use common::{ADMIN_PASSWORD, WAIT};
use sigmavault_server::config::Config;

struct TlsServer {
    server: sigmavault_server::RunningServer,
    connector: TlsConnector,
    _dir: tempfile::TempDir,
}

async fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    let mut config = Config {
        port: 0,
        data_dir: dir.path().join("data"),
        environment: "test".into(),
        ..Config::default()
    };
    common::test_security(&mut config);
    config.security.tls_cert = Some(cert_path);
    config.security.tls_key = Some(key_path);
    let server = sigmavault_server::start(config).await.expect("TLS server starts");
    TlsServer {
        server,
        connector: connector(cert.der().clone()),
        _dir: dir,
    }
}

fn connector(trusted: CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

impl TlsServer {
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        self.connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake")
    }

    /// One HTTP/1.1 request over TLS; returns the head and the body.
    async fn request(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (String, String) {
        let mut tls = self.tls().await;
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost:{}\r\n{auth}content-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.server.addr.port(),
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, tls.read_to_end(&mut raw))
            .await
            .expect("response in time")
            .ok();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_owned(), body.to_owned())
    }
}

#[tokio::test]
async fn https_and_wss_with_a_token_and_plain_http_is_refused() {
    let srv = tls_server().await;

    // HTTPS: login, the security headers including HSTS.
    let body = format!(r#"{{"username":"admin","password":"{ADMIN_PASSWORD}"}}"#);
    let (head, reply) = srv.request("POST", "/api/v1/auth/login", None, &body).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("strict-transport-security: max-age="), "{head}");
    assert!(lower.contains("x-content-type-options: nosniff"), "{head}");
    // The body may be chunked; the token is a JWT of base64url characters and dots.
    let token = reply
        .split("\"access_token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("access token in the login reply")
        .to_owned();
    let (head, _) = srv.request("GET", "/api/v1/auth/me", Some(&token), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = srv.request("GET", "/api/v1/auth/me", None, "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // WSS with the token: welcome arrives.
    let url = format!("wss://localhost:{}/ws", srv.server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(common::ws_request(&url, &token), srv.tls().await)
        .await
        .expect("wss upgrade");
    let first = tokio::time::timeout(WAIT, ws.next()).await.expect("welcome in time");
    let welcome: Value = serde_json::from_str(first.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");

    // Plain HTTP on the TLS port gets no HTTP answer, and the server keeps serving.
    let mut plain = TcpStream::connect(srv.server.addr).await.unwrap();
    plain
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plain HTTP must not be served"
    );
    let (head, _) = srv.request("GET", "/api/v1/health", None, "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    drop(ws);
    srv.server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_unusable_certificate_stops_the_start_with_its_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing.crt");
    let key = dir.path().join("missing.key");
    let mut config = Config {
        port: 0,
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    common::test_security(&mut config);
    config.security.tls_cert = Some(cert.clone());
    config.security.tls_key = Some(key);
    let err = match sigmavault_server::start(config).await {
        Ok(_) => panic!("started without a certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&cert.display().to_string()), "{err}");
}
