//! Certificates from a test authority, and a TLS front for a server that speaks only plain
//! TCP (the ClickHouse of these tests cannot serve HTTPS itself; in production a TLS
//! terminator in front of ClickHouse is common too).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A root authority, a server certificate it issued for the name `localhost` only (so
/// connecting to `127.0.0.1` fails a host-name check), and a second, unrelated authority.
pub struct TestCertificates {
    dir: PathBuf,
}

impl TestCertificates {
    /// Issues the certificates with the `openssl` command into `dir`.
    pub fn issue(dir: &Path) -> TestCertificates {
        std::fs::create_dir_all(dir).expect("create the certificate directory");
        let openssl = |what: &str, args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("run openssl ({what}): {e}"));
            assert!(
                out.status.success(),
                "openssl {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (key, cert, subject) in [
            ("root.key", "root.crt", "/CN=ferry test root"),
            ("other.key", "other.crt", "/CN=ferry unrelated root"),
        ] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", key, "-out", cert, "-days", "3", "-subj", subject]);
            openssl("root", &args);
        }
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", "server.key", "-out", "server.csr"]);
        args.extend(["-subj", "/CN=localhost"]);
        openssl("server request", &args);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        )
        .expect("write the certificate extensions");
        openssl(
            "server certificate",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "3",
                "-extfile",
                "server.ext",
            ],
        );
        TestCertificates {
            dir: dir.to_owned(),
        }
    }

    /// The certificates [`TestCertificates::issue`] wrote into `dir` earlier.
    pub fn issued_in(dir: &Path) -> TestCertificates {
        TestCertificates {
            dir: dir.to_owned(),
        }
    }

    /// The PEM file of the authority that issued the server certificate.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// The PEM file of an authority that issued nothing here.
    pub fn unrelated_root(&self) -> PathBuf {
        self.dir.join("other.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

/// Accepts TLS on a loopback port of its own and passes the plain bytes on to `upstream`;
/// stops when dropped.
pub struct TlsProxy {
    pub port: u16,
    task: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(certs: &TestCertificates, upstream: (String, u16)) -> TlsProxy {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.server_cert())
                .and_then(|it| it.collect::<Result<_, _>>())
                .expect("read the server certificate");
        let key = PrivateKeyDer::from_pem_file(certs.server_key()).expect("read the server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the server certificate and key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A client that fails the handshake (the point of some tests) just goes.
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy { port, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
