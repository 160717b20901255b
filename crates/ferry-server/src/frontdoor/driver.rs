//! A session after login: one task reads, the session's loop answers.
//!
//! The reader task reads the client's messages one at a time through [`super::wire`]
//! (size limits, exact parsing) and hands them over one by one; it also notices at once
//! when the client hangs up, even while a statement runs. The loop takes each message and
//! runs it — simple queries in [`crate::session::Session::simple_query`], the extended
//! protocol through pgwire's handlers — while watching for four things that stop it:
//!
//! - a **cancel request** for this session: the statement is dropped (a catalog query is
//!   cancelled on the server) and the client gets `57014`; the session goes on;
//! - the **client hanging up**: the statement is dropped and the session ends;
//! - the daemon **shutting down**: the same, after a FATAL `57P01`;
//! - **idleness** (nothing received for `idle_timeout`): FATAL `57P05`.
//!
//! Before pgwire sees a Bind, its counts are checked against the statement (pgwire would
//! index past them); prepared statements and portals a session keeps are bounded in number
//! and size.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use pgwire::api::auth::StartupHandler;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, DefaultClient, NoopHandler, PgWireConnectionState,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::Bind;
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_util::codec::Framed;
use tracing::debug;

use super::startup::StartupParams;
use super::wire::{self, error, fatal_info, Incoming, MessageLimits};
use super::{send, Io, Output};
use crate::error::code;
use crate::session::{Prepared, Session};
use crate::Shared;

/// Named prepared statements a session may keep, and the bytes of their texts.
const MAX_STATEMENTS: usize = 256;
const MAX_STATEMENT_BYTES: usize = 16 << 20;
/// Named portals a session may keep.
const MAX_PORTALS: usize = 8;

/// What a session starts with.
pub(crate) struct Start {
    pub peer: SocketAddr,
    pub tls: bool,
    pub params: StartupParams,
    pub shared: Arc<Shared>,
    pub stop: watch::Receiver<bool>,
    /// The session's place among `max_sessions`, held until it ends.
    pub _slot: OwnedSemaphorePermit,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The startup handler pgwire is given: never called, since login is over.
struct LoggedIn;

#[async_trait::async_trait]
impl StartupHandler for LoggedIn {
    async fn on_startup<C>(&self, _: &mut C, _: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(())
    }
}

/// What waiting for the next message gave.
enum Waited {
    Message(Box<Option<Incoming>>),
    Stopping,
    Idle,
}

/// How a running message ended.
enum Ended {
    Done(PgWireResult<()>),
    Cancelled,
    ClientGone,
    Stopping,
}

pub(crate) async fn run(io: Box<dyn Io>, start: Start) {
    let Start {
        peer,
        tls,
        params,
        shared,
        mut stop,
        _slot,
    } = start;
    let front = &shared.front;
    let registration = front.registry.register();
    let (read, write) = tokio::io::split(io);
    let mut out = Output(write);

    let mut status = vec![
        (
            "server_version",
            format!(
                "{} (Ferry {})",
                shared.catalog.server_version(),
                env!("CARGO_PKG_VERSION")
            ),
        ),
        ("server_encoding", "UTF8".into()),
        ("client_encoding", "UTF8".into()),
        ("DateStyle", "ISO, MDY".into()),
        ("IntervalStyle", "postgres".into()),
        ("TimeZone", "UTC".into()),
        ("integer_datetimes", "on".into()),
        ("standard_conforming_strings", "on".into()),
        ("is_superuser", "off".into()),
        ("default_transaction_read_only", "on".into()),
        ("in_hot_standby", "off".into()),
        ("session_authorization", params.user.clone()),
    ];
    if let Some(app) = &params.application_name {
        status.push(("application_name", app.clone()));
    }
    let mut hello = vec![PgWireBackendMessage::Authentication(Authentication::Ok)];
    hello.extend(status.into_iter().map(|(k, v)| {
        PgWireBackendMessage::ParameterStatus(ParameterStatus::new(k.to_owned(), v))
    }));
    hello.push(PgWireBackendMessage::BackendKeyData(BackendKeyData::new(
        registration.pid,
        SecretKey::I32(registration.secret),
    )));
    hello.push(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
        TransactionStatus::Idle,
    )));
    if send(&mut out, hello).await.is_err() {
        return;
    }

    // The reader: messages one at a time; `gone` once the client has hung up.
    let limits = MessageLimits {
        statement: front.limits.max_statement,
        other: front.limits.max_startup_message,
    };
    let (tx, mut rx) = mpsc::channel::<Incoming>(1);
    let (gone_tx, mut gone) = watch::channel(false);
    let mut reader = AbortOnDrop(tokio::spawn(async move {
        let mut read = read;
        while let Ok(Some(message)) = wire::read_message(&mut read, limits).await {
            let last = matches!(message, Incoming::Fatal(_));
            if tx.send(message).await.is_err() {
                return;
            }
            if last {
                // After a violation the session ends on it; what else comes is read and
                // dropped, so that closing does not reset the connection before the client
                // has read the error.
                drain(&mut read).await;
                return;
            }
        }
        let _ = gone_tx.send(true);
    }));

    let mut client_info = DefaultClient::new(peer, tls);
    client_info.set_protocol_version(ProtocolVersion::PROTOCOL3_0);
    client_info.set_pid_and_secret_key(registration.pid, SecretKey::I32(registration.secret));
    client_info
        .metadata_mut()
        .insert("user".into(), params.user.clone());
    if let Some(db) = &params.database {
        client_info
            .metadata_mut()
            .insert("database".into(), db.clone());
    }
    client_info.set_state(PgWireConnectionState::ReadyForQuery);
    let mut framed = Framed::new(out, PgWireMessageServerCodec::new(client_info));

    let session = Arc::new(Session::new(shared.clone(), registration.control.clone()));
    let startup = Arc::new(LoggedIn);
    let noop = Arc::new(NoopHandler);
    let mut kept = Kept::default();
    let mut cancels = registration.control.subscribe();
    let idle = front.limits.idle_timeout;

    loop {
        let next = tokio::select! {
            m = rx.recv() => Waited::Message(Box::new(m)),
            _ = until_true(&mut stop) => Waited::Stopping,
            _ = sleep_or_never(idle) => Waited::Idle,
        };
        let next = match next {
            Waited::Message(m) => match *m {
                Some(m) => m,
                None => break,
            },
            Waited::Stopping => {
                shutting_down(&mut framed).await;
                break;
            }
            Waited::Idle => {
                fatal(
                    &mut framed,
                    code::IDLE_SESSION_TIMEOUT,
                    "terminating connection due to idle-session timeout",
                )
                .await;
                break;
            }
        };
        let message = match next {
            Incoming::Message(PgWireFrontendMessage::Terminate(_)) => break,
            Incoming::Message(m) => m,
            Incoming::Error { info, extended } => {
                if report(&mut framed, info, extended).await.is_err() {
                    break;
                }
                continue;
            }
            Incoming::Fatal(info) => {
                shared.metrics.protocol_violation();
                debug!(%peer, error = %info.message, "protocol violation");
                let _ = send(
                    framed.get_mut(),
                    [PgWireBackendMessage::ErrorResponse((*info).into())],
                )
                .await;
                break;
            }
        };
        let extended = message.is_extended_query();
        if let Err(info) = kept.admit(&message, &framed) {
            if report(&mut framed, info, extended).await.is_err() {
                break;
            }
            continue;
        }
        // What the message names, to forget it if pgwire does not store it after all.
        let named = match &message {
            PgWireFrontendMessage::Parse(p) => p.name.clone().map(|n| (b'S', n)),
            PgWireFrontendMessage::Bind(b) => b.portal_name.clone().map(|n| (b'P', n)),
            _ => None,
        };
        cancels.borrow_and_update();
        let ended = {
            let work = async {
                match message {
                    // After an error in the extended protocol everything up to Sync is
                    // skipped, a simple query too, as PostgreSQL does.
                    PgWireFrontendMessage::Query(_)
                        if matches!(framed.state(), PgWireConnectionState::AwaitingSync) =>
                    {
                        Ok(())
                    }
                    PgWireFrontendMessage::Query(q) => {
                        session.simple_query(&mut framed, q.query).await
                    }
                    other => {
                        process_message(
                            other,
                            &mut framed,
                            startup.clone(),
                            noop.clone(),
                            session.clone(),
                            noop.clone(),
                            noop.clone(),
                        )
                        .await
                    }
                }
            };
            tokio::select! {
                r = work => Ended::Done(r),
                _ = cancels.changed() => Ended::Cancelled,
                _ = until_true(&mut gone) => Ended::ClientGone,
                _ = until_true(&mut stop) => Ended::Stopping,
            }
        };
        if let Some((kind, name)) = named {
            kept.forget_unless_stored(kind, &name, &framed);
        }
        let result = match ended {
            Ended::Done(Ok(())) => Ok(()),
            Ended::Done(Err(PgWireError::IoError(_))) | Ended::ClientGone => break,
            Ended::Done(Err(e)) => {
                let fatal = e.is_fatal();
                let r = process_error(&mut framed, e, extended).await;
                if fatal {
                    break;
                }
                r
            }
            Ended::Cancelled => {
                debug!(%peer, "statement cancelled");
                report(
                    &mut framed,
                    Box::new(error(
                        code::QUERY_CANCELED,
                        "canceling statement due to user request".into(),
                    )),
                    extended,
                )
                .await
            }
            Ended::Stopping => {
                shutting_down(&mut framed).await;
                break;
            }
        };
        if result.is_err() {
            break;
        }
    }
    // A lingering close: the end of output first, then a moment for the client to read
    // what was sent and hang up, rather than a reset that could discard a last error.
    let _ = framed.get_mut().shutdown().await;
    let _ = tokio::time::timeout(LINGER, &mut reader.0).await;
}

/// How long a closing connection waits for its client to hang up.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads and drops what a client still sends, up to a bound, until it hangs up.
pub(crate) async fn drain<R: tokio::io::AsyncRead + Unpin + ?Sized>(read: &mut R) {
    let mut scratch = [0u8; 8192];
    let mut left = 1usize << 20;
    while left > 0 {
        match read.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Completes when the value turns true; never, if its sender is gone without that.
async fn until_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_or_never(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

type Client = crate::frontdoor::Client;

/// Sends an ERROR (then ReadyForQuery, or skips to Sync after an extended message).
async fn report(framed: &mut Client, info: Box<ErrorInfo>, extended: bool) -> std::io::Result<()> {
    process_error(framed, PgWireError::UserError(info), extended).await
}

/// PostgreSQL's words to sessions when the server stops.
async fn shutting_down(framed: &mut Client) {
    fatal(
        framed,
        code::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
    .await
}

async fn fatal(framed: &mut Client, sqlstate: &str, message: &str) {
    let info = fatal_info(sqlstate, message.to_owned());
    let _ = send(
        framed.get_mut(),
        [PgWireBackendMessage::ErrorResponse(info.into())],
    )
    .await;
}

/// The named statements and portals a session keeps, with the bytes of their texts.
#[derive(Default)]
struct Kept {
    statements: HashMap<String, usize>,
    portals: HashSet<String>,
}

impl Kept {
    /// Drops a name pgwire did not store (its Parse or Bind failed).
    fn forget_unless_stored(&mut self, kind: u8, name: &str, framed: &Client) {
        let store = framed.portal_store();
        if kind == b'S' && store.get_statement(name).is_none() {
            self.statements.remove(name);
        }
        if kind == b'P' && store.get_portal(name).is_none() {
            self.portals.remove(name);
        }
    }

    /// Whether the message may go on to pgwire: a Bind must match its statement, and
    /// named statements and portals are bounded. Records what it lets through.
    fn admit(
        &mut self,
        message: &PgWireFrontendMessage,
        framed: &Client,
    ) -> Result<(), Box<ErrorInfo>> {
        match message {
            PgWireFrontendMessage::Parse(p) => {
                if let Some(name) = &p.name {
                    let replaced = self.statements.get(name).copied();
                    if replaced.is_none() && self.statements.len() >= MAX_STATEMENTS {
                        return Err(too_many("prepared statements", MAX_STATEMENTS));
                    }
                    let bytes: usize = self.statements.values().sum::<usize>()
                        - replaced.unwrap_or(0)
                        + p.query.len();
                    if bytes > MAX_STATEMENT_BYTES {
                        return Err(too_many("prepared statements' text", MAX_STATEMENT_BYTES));
                    }
                    self.statements.insert(name.clone(), p.query.len());
                }
            }
            PgWireFrontendMessage::Bind(b) => {
                check_bind(b, framed)?;
                if let Some(name) = &b.portal_name {
                    if !self.portals.contains(name) && self.portals.len() >= MAX_PORTALS {
                        return Err(too_many("portals", MAX_PORTALS));
                    }
                    self.portals.insert(name.clone());
                }
            }
            PgWireFrontendMessage::Close(c) => {
                if let Some(name) = &c.name {
                    match c.target_type {
                        b'S' => {
                            self.statements.remove(name);
                        }
                        _ => {
                            self.portals.remove(name);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn too_many(what: &str, max: usize) -> Box<ErrorInfo> {
    let mut e = error(
        code::PROGRAM_LIMIT_EXCEEDED,
        format!("too many named {what}: a session may keep {max}"),
    );
    e.hint = Some(format!("Close {what} that are no longer needed."));
    Box::new(e)
}

/// PostgreSQL's checks of a Bind against its statement.
fn check_bind(b: &Bind, framed: &Client) -> Result<(), Box<ErrorInfo>> {
    let name = b
        .statement_name
        .as_deref()
        .unwrap_or(pgwire::api::DEFAULT_NAME);
    let Some(Entry::Value(stored)) = framed.portal_store().get_statement(name) else {
        return Ok(());
    };
    let prepared: &Prepared = &stored.statement;
    let shown = b.statement_name.as_deref().unwrap_or("");
    let violation = |message: String| Box::new(error(code::PROTOCOL_VIOLATION, message));
    let (params, columns) = (prepared.parameters(), prepared.columns());
    if b.parameters.len() != params {
        return Err(violation(format!(
            "bind message supplies {} parameters, but prepared statement \"{shown}\" requires {params}",
            b.parameters.len()
        )));
    }
    let formats = b.parameter_format_codes.len();
    if formats > 1 && formats != params {
        return Err(violation(format!(
            "bind message has {formats} parameter formats but {params} parameters"
        )));
    }
    let results = b.result_column_format_codes.len();
    if results > 1 && results != columns {
        return Err(violation(format!(
            "bind message has {results} result formats but query has {columns} columns"
        )));
    }
    Ok(())
}
