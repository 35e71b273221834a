//! TLS for the alert channels (https webhooks, SMTP with STARTTLS or
//! implicit TLS): a rustls client that trusts the certificates of one PEM
//! file — the system bundle unless a channel names its own — and a stream
//! that is plain or TLS. Uses the workspace's rustls with ring, the same
//! stack as the gRPC listener; no OpenSSL.

use std::io;
use std::path::Path;
use std::sync::Arc;

use sonde_core::pem::PemKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A client configuration trusting the CA certificates in `ca_file`. The
/// error is one line naming the file.
pub fn client_config(ca_file: &str) -> Result<Arc<ClientConfig>, String> {
    let pem = sonde_core::pem::read(Path::new(ca_file), PemKind::Certificates)?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{ca_file}: {e}"))?;
        // A bundle may hold certificates webpki cannot use as anchors;
        // the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("{ca_file}: no usable CA certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Connects to `host:port`.
    pub async fn connect(host: &str, port: u16) -> io::Result<Stream> {
        Ok(Stream::Plain(TcpStream::connect((host, port)).await?))
    }

    /// Upgrades a plain connection to TLS, checking the server's
    /// certificate against `config`'s roots and `host` (a DNS name or an
    /// IP address).
    pub async fn start_tls(self, config: Arc<ClientConfig>, host: &str) -> io::Result<Stream> {
        let Stream::Plain(tcp) = self else {
            return Err(io::Error::other("TLS is already on"));
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{host}` is not a valid TLS server name"),
            )
        })?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => s.write_all(bytes).await,
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Tls(s) => s.flush().await,
        }
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// Closes the write side (TLS: sends close_notify).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}

/// Test certificates made with the `openssl` command: a CA, and a server
/// certificate it signed for `127.0.0.1` and `localhost`.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;

    use tokio_rustls::rustls::{self, ServerConfig};
    use tokio_rustls::TlsAcceptor;

    pub struct TestPki {
        // Holds the files until the test ends.
        pub _dir: tempfile::TempDir,
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (apt install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pki() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Sonde test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        );
        TestPki {
            ca: d.join("ca.pem"),
            cert: d.join("leaf.pem"),
            key: d.join("leaf.key"),
            _dir: dir,
        }
    }

    impl TestPki {
        pub fn acceptor(&self) -> TlsAcceptor {
            let certs = rustls_pemfile::certs(&mut std::fs::read(&self.cert).unwrap().as_slice())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls_pemfile::private_key(&mut std::fs::read(&self.key).unwrap().as_slice())
                    .unwrap()
                    .unwrap();
            let config = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            TlsAcceptor::from(Arc::new(config))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files() {
        let pki = testing::pki();
        assert!(client_config(pki.ca.to_str().unwrap()).is_ok());
        let e = client_config(pki.key.to_str().unwrap()).unwrap_err();
        assert!(e.contains("private key"), "{e}");
        let e = client_config("/nonexistent/ca.pem").unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[tokio::test]
    async fn verifies_the_server_certificate() {
        let pki = testing::pki();
        let acceptor = pki.acceptor();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let a = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut t) = a.accept(s).await {
                        let _ = t.write_all(b"hi").await;
                        let _ = t.shutdown().await;
                    }
                });
            }
        });
        let good = client_config(pki.ca.to_str().unwrap()).unwrap();
        let mut s = Stream::connect("127.0.0.1", port)
            .await
            .unwrap()
            .start_tls(Arc::clone(&good), "127.0.0.1")
            .await
            .unwrap();
        let mut buf = [0u8; 2];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
        // Another CA: the handshake fails.
        let other = testing::pki();
        let bad = client_config(other.ca.to_str().unwrap()).unwrap();
        let e = Stream::connect("127.0.0.1", port)
            .await
            .unwrap()
            .start_tls(bad, "127.0.0.1")
            .await
            .err()
            .expect("an unknown CA is refused");
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
        // The right CA but the wrong name.
        let e = Stream::connect("127.0.0.1", port)
            .await
            .unwrap()
            .start_tls(good, "example.com")
            .await
            .err()
            .expect("a name mismatch is refused");
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    }
}
