//! The front door: everything between a TCP connection and a session's statements.
//!
//! A connection goes through these steps, each bounded:
//!
//! 1. **Opening** ([`startup`]): the first packets, read by Ferry itself — SSLRequest
//!    (answered `S` and a TLS handshake when a certificate is configured, `N` otherwise),
//!    GSSENCRequest (`N`), CancelRequest (handed to the [`registry`], then the connection
//!    closes), or the startup packet. Before login every message may be at most
//!    `max_startup_message` bytes.
//! 2. **Admission**: at most `max_sessions` connections past the startup packet (the next
//!    gets `53300`), and none from an address refused for failed logins ([`throttle`]).
//! 3. **Login** ([`login`]): SCRAM-SHA-256 ([`scram`]). Opening, admission and login
//!    together must finish within `auth_timeout`.
//! 4. **Session** ([`driver`]): the client gets its cancel key (a process id and secret of
//!    its own) and the session runs; every later message is read, size-checked and parsed
//!    by [`wire`] before pgwire or the session sees it.
//!
//! Anything malformed ends the connection with PostgreSQL's error for it (`08P01`); nothing
//! a client sends can panic the task serving it.

pub mod driver;
pub mod login;
pub mod registry;
pub mod scram;
pub mod startup;
pub mod throttle;
pub mod tls;
pub mod wire;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pgwire::error::ErrorInfo;
use pgwire::messages::PgWireBackendMessage;
use pgwire::tokio::server::PgWireMessageServerCodec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use crate::error::code;
use crate::session::Prepared;
use crate::Shared;

use self::registry::Registry;
use self::scram::Credentials;
use self::throttle::Throttle;

/// The limits of the front door; every one has a flag of the `ferry` binary.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sessions at once, counted from the startup packet on.
    pub max_sessions: usize,
    /// The largest message before login, in bytes.
    pub max_startup_message: usize,
    /// The largest `Query`, `Parse` or `Bind` message, in bytes.
    pub max_statement: usize,
    /// Opening and login must be done within this.
    pub auth_timeout: Duration,
    /// A session that sends nothing for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Failed logins from one address before it is refused for `auth_lockout`.
    pub auth_failures: u32,
    pub auth_lockout: Duration,
    /// How long open sessions get to end after shutdown is asked for.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 100,
            max_startup_message: 8 << 10,
            max_statement: 1 << 20,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            auth_failures: 10,
            auth_lockout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What the front door shares between connections.
pub struct FrontDoor {
    pub(crate) credentials: Credentials,
    pub(crate) limits: Limits,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) throttle: Throttle,
    pub(crate) registry: Registry,
    pub(crate) slots: Arc<Semaphore>,
}

impl FrontDoor {
    pub fn new(user: &str, password: &str, limits: Limits, tls: Option<TlsAcceptor>) -> Self {
        FrontDoor {
            credentials: Credentials::new(user, password),
            throttle: Throttle::new(limits.auth_failures, limits.auth_lockout),
            registry: Registry::new(),
            slots: Arc::new(Semaphore::new(limits.max_sessions.max(1))),
            tls,
            limits,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl Limits {
    /// Connections open at once, logged in or not: twice the sessions, and some room. Beyond
    /// it a connection is closed as soon as it is accepted.
    pub fn max_connections(&self) -> usize {
        self.max_sessions.max(1) * 2 + 16
    }
}

/// A client's byte stream, in plain text or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// The writing half of a session's stream, as pgwire's `Framed` wants it. The reading
/// half belongs to the session's reader task: pgwire never reads from this one.
pub struct Output(WriteHalf<Box<dyn Io>>);

impl AsyncRead for Output {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A session's connection as the handlers see it.
pub type Client = Framed<Output, PgWireMessageServerCodec<Prepared>>;

/// Writes backend messages and flushes them.
pub(crate) async fn send<W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    messages: impl IntoIterator<Item = PgWireBackendMessage>,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    for m in messages {
        m.encode(&mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    }
    io.write_all(&buf).await?;
    io.flush().await
}

/// Sends a FATAL error; the caller then closes the connection.
pub(crate) async fn send_fatal<W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    sqlstate: &str,
    message: String,
) {
    let info = ErrorInfo::new("FATAL".to_owned(), sqlstate.to_owned(), message);
    // The client may be gone already; the connection ends either way.
    let _ = send(io, [PgWireBackendMessage::ErrorResponse(info.into())]).await;
}

/// Closes a connection the server ends before login: the end of output, then what the
/// client still sends is read and dropped for a moment, so that the error it was sent is not
/// lost to a reset.
async fn linger(io: &mut Box<dyn Io>) {
    let _ = io.shutdown().await;
    let _ = tokio::time::timeout(driver::LINGER, driver::drain(io)).await;
}

/// Serves one TCP connection from accept to close.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let front = &shared.front;
    let deadline = tokio::time::Instant::now() + front.limits.auth_timeout;
    let opened =
        tokio::time::timeout_at(deadline, startup::open(tcp, front, &shared.metrics)).await;
    let (mut io, tls, params) = match opened {
        // No startup packet in time: closed without a word, as PostgreSQL does.
        Err(_) => return debug!(%peer, "no startup packet in time"),
        Ok(Err(e)) => return debug!(%peer, error = %e, "connection ended before login"),
        Ok(Ok(startup::Opening::Closed(Some(mut io)))) => return linger(&mut io).await,
        Ok(Ok(startup::Opening::Closed(None))) => return,
        Ok(Ok(startup::Opening::Startup { io, tls, params })) => (io, tls, params),
    };

    let Ok(slot) = front.slots.clone().try_acquire_owned() else {
        shared.metrics.refused("too_many_sessions");
        warn!(%peer, max_sessions = front.limits.max_sessions, "refusing a session: too many open");
        send_fatal(
            &mut io,
            code::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".into(),
        )
        .await;
        return linger(&mut io).await;
    };
    if let Some(left) = front.throttle.locked(peer.ip()) {
        shared.metrics.refused("failed_logins");
        send_fatal(
            &mut io,
            code::TOO_MANY_CONNECTIONS,
            format!(
                "too many failed logins from {}; try again in {} s",
                peer.ip(),
                left.as_secs() + 1
            ),
        )
        .await;
        return linger(&mut io).await;
    }
    let user = params.user.clone();
    let login = tokio::time::timeout_at(
        deadline,
        login::login(&mut io, front, &shared.metrics, &user, peer),
    )
    .await;
    match login {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return linger(&mut io).await,
        Ok(Err(e)) => return debug!(%peer, error = %e, "connection ended during login"),
        Err(_) => {
            send_fatal(
                &mut io,
                code::QUERY_CANCELED,
                "canceling authentication due to timeout".into(),
            )
            .await;
            return linger(&mut io).await;
        }
    }
    info!(%peer, user = %user, tls, "session started");
    driver::run(
        io,
        driver::Start {
            peer,
            tls,
            params,
            shared: shared.clone(),
            stop,
            _slot: slot,
        },
    )
    .await;
    debug!(%peer, "session ended");
}
