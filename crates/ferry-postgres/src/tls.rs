//! Opening the TCP stream to a source, with TLS negotiated as `sslmode` asks.
//!
//! Every source connection (ordinary ones through tokio-postgres, and the replication
//! connection and COPY sessions Ferry speaks the protocol on itself) starts here, so TLS is negotiated, checked and reported in
//! one place. The protocol: after connecting, the client sends SSLRequest; the server answers
//! one byte, `S` (go ahead with the TLS handshake) or `N` (no TLS here). Only then does the
//! startup message follow, inside TLS or not. What each `sslmode` accepts:
//!
//! | sslmode       | server says `N`   | certificate check                               |
//! |---------------|-------------------|-------------------------------------------------|
//! | `disable`     | (no SSLRequest)   | none                                            |
//! | `allow`       | (no SSLRequest)   | none; TLS only when the server refuses plain ([`allow_fallback`]) |
//! | `prefer`      | continue in plain | none (encryption against passive listeners)     |
//! | `require`     | refuse            | none                                            |
//! | `verify-ca`   | refuse            | chain to a root in `sslrootcert`                 |
//! | `verify-full` | refuse            | chain, and the certificate names `host`         |
//!
//! Without a check the handshake's signatures are still verified, so the session key is bound
//! to the certificate presented; it is the certificate's identity that goes unchecked, exactly
//! as with libpq. Unix-domain sockets never use TLS (libpq ignores `sslmode` there too).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use ferry_core::peer::{PostgresConfig, SslMode};
use ferry_core::ErrorKind;
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::connect::SourceError;

/// A connection to a source: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A Unix-domain socket in a socket directory (never TLS, as with libpq).
    Unix(UnixStream),
}

impl Stream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to `cfg.host:cfg.port` (every address the name resolves to, in turn) and
/// negotiates TLS as `cfg.ssl_mode` asks; a socket directory as `host` (`/…`) connects to
/// its Unix socket `.s.PGSQL.<port>`, in plain.
pub async fn open(cfg: &PostgresConfig) -> Result<Stream, SourceError> {
    let peer = format!("{}:{}", cfg.host, cfg.port);
    // Settle the TLS settings first: a missing root file is the user's to fix, not the network's.
    // A root file that was named must be readable whatever the mode: naming one that cannot
    // be used is a mistake to report, not to ignore until the mode changes.
    if let Some(root) = cfg.ssl_root_cert.as_deref() {
        if root != ferry_core::peer::SYSTEM_ROOT_CERTS {
            ferry_core::tls::root_store(Some(root)).map_err(|e| config_error(cfg, e))?;
        }
    }
    if cfg.host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{}", cfg.host.trim_end_matches('/'), cfg.port);
        let socket = UnixStream::connect(&path).await.map_err(|e| SourceError {
            kind: ErrorKind::Transient,
            sqlstate: "08001".into(),
            message: format!("could not connect to PostgreSQL at {path}: {e}"),
            hint: Some("Check that the server is running and that host and port are right.".into()),
            source: None,
        })?;
        return Ok(Stream::Unix(socket));
    }
    let tls = match cfg.ssl_mode {
        SslMode::Disable | SslMode::Allow => None,
        mode => Some((client_config(cfg)?, server_name(cfg)?, mode)),
    };
    let mut tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| SourceError {
            kind: ErrorKind::Transient,
            sqlstate: "08001".into(),
            message: format!("could not connect to PostgreSQL at {peer}: {e}"),
            hint: Some("Check that the server is running and that host and port are right.".into()),
            source: None,
        })?;
    // Status updates and small queries should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let Some((config, name, mode)) = tls else {
        return Ok(Stream::Plain(tcp));
    };

    let io_failure = |e: io::Error| SourceError {
        kind: ErrorKind::Transient,
        sqlstate: "08006".into(),
        message: format!("connection to PostgreSQL at {peer} failed while negotiating TLS: {e}"),
        hint: None,
        source: None,
    };
    let mut request = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_failure)?;
    // Exactly one byte: anything after an `S` already belongs to the TLS handshake.
    match tcp.read_u8().await.map_err(io_failure)? {
        b'S' => {}
        b'N' if mode == SslMode::Prefer => return Ok(Stream::Plain(tcp)),
        b'N' => {
            return Err(SourceError {
                kind: ErrorKind::Misconfigured,
                sqlstate: "08001".into(),
                message: format!(
                    "PostgreSQL at {peer} does not support TLS, and sslmode is {mode}"
                ),
                hint: Some(
                    "Turn on ssl in the server's postgresql.conf, or choose sslmode = prefer \
                     or disable for this peer."
                        .into(),
                ),
                source: None,
            })
        }
        other => {
            return Err(SourceError {
                kind: ErrorKind::Misconfigured,
                sqlstate: "08P01".into(),
                message: format!(
                    "PostgreSQL at {peer} answered the TLS request with {:?} instead of S or N",
                    other as char
                ),
                hint: Some("Check that host and port point at a PostgreSQL server.".into()),
                source: None,
            })
        }
    }
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(name, tcp).await {
        Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
        Err(e) => Err(handshake_error(cfg, &peer, e)),
    }
}

/// For `sslmode = allow`, the settings of the second attempt: TLS without a certificate check,
/// once the server refused the plain connection ([`refused_in_plain`]). `None` for other modes.
pub fn allow_fallback(cfg: &PostgresConfig) -> Option<PostgresConfig> {
    (cfg.ssl_mode == SslMode::Allow).then(|| PostgresConfig {
        ssl_mode: SslMode::Require,
        ..cfg.clone()
    })
}

/// Whether the server refused a connection at authorisation (SQLSTATE class 28: `pg_hba.conf`
/// has no entry for a plain connection, say), which TLS may change.
pub fn refused_in_plain(sqlstate: &str) -> bool {
    sqlstate.starts_with("28")
}

/// Describes a failed handshake; a certificate that fails its check is for a person to fix.
fn handshake_error(cfg: &PostgresConfig, peer: &str, e: io::Error) -> SourceError {
    let (kind, hint) = match ferry_core::tls::find_rustls_error(&e) {
        Some(tls) => (
            ErrorKind::Misconfigured,
            ferry_core::tls::certificate_hint(
                tls,
                &cfg.host,
                cfg.ssl_root_cert.as_deref().unwrap_or("the trusted roots"),
                ", or use sslmode = verify-ca to check only its issuer",
            ),
        ),
        None => (ErrorKind::Transient, None),
    };
    SourceError {
        kind,
        sqlstate: "08001".into(),
        message: format!("TLS handshake with PostgreSQL at {peer} failed: {e}"),
        hint,
        source: None,
    }
}

/// The name the certificate is checked against (`verify-full`), and sent as SNI.
fn server_name(cfg: &PostgresConfig) -> Result<ServerName<'static>, SourceError> {
    let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| config_error(cfg, format!("{e}")))
}

fn config_error(cfg: &PostgresConfig, message: String) -> SourceError {
    SourceError {
        kind: ErrorKind::InvalidInput,
        sqlstate: "22023".into(),
        message: format!(
            "TLS settings for PostgreSQL at {}:{}: {message}",
            cfg.host, cfg.port
        ),
        hint: None,
        source: None,
    }
}

/// The rustls settings for `cfg.ssl_mode`: which certificates count as good.
fn client_config(cfg: &PostgresConfig) -> Result<Arc<ClientConfig>, SourceError> {
    let provider = ferry_core::tls::crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = if cfg.ssl_mode.verifies() {
        let roots = ferry_core::tls::root_store(cfg.ssl_root_cert.as_deref())
            .map_err(|e| config_error(cfg, e))?;
        let roots = Arc::new(roots);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| config_error(cfg, e.to_string()))?;
        if cfg.ssl_mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(IssuerOnly(webpki))
        }
    } else {
        Arc::new(Unchecked(provider.signature_verification_algorithms))
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(cfg, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `verify-ca`: the chain must lead to a trusted root; the name in it is not compared.
#[derive(Debug)]
struct IssuerOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IssuerOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name, so a name error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: any certificate, but the handshake must be signed by its key.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
