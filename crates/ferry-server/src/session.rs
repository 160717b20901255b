//! One client session: what a statement does, for both query protocols.
//!
//! Both protocols go the same way: parse (`ferry-sql`, on the blocking pool, since a
//! statement may be a megabyte long) → analyse ([`crate::analyze`]) → execute. Ferry's
//! statements change the catalog and the peers; statements the parser's allow-list passed
//! run as the reader role on the catalog database ([`crate::catalog_sql`]); the rest are
//! answered by Ferry itself.
//!
//! The simple protocol is answered here statement by statement, each result streamed as it
//! comes; all catalog statements of one query string share one read-only transaction and
//! one deadline (the statement timeout), as PostgreSQL runs a query string as one
//! transaction. The extended protocol goes through pgwire's handlers below.
//!
//! Statements that change mirrors run on a task of their own and cannot be cancelled: the
//! engine undoes a half-done setup only when a step fails, not when it is interrupted. A
//! client that goes away leaves them to finish; its other work stops with it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{send_execution_response, ExtendedQueryHandler};
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::{
    EmptyQueryResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::PgWireBackendMessage;
use tokio::time::Instant;
use tracing::debug;

use crate::analyze::{analyze, Command};
use crate::catalog_sql::{self, fields, Described, Stop};
use crate::error::{code, ClientError};
use crate::execute::{self, Outcome};
use crate::frontdoor::registry::Control;
use crate::frontdoor::Client;
use crate::Shared;

/// A statement prepared with the extended protocol.
#[derive(Clone)]
pub enum Prepared {
    /// One of Ferry's statements, or one answered locally.
    Command(Arc<Command>),
    /// SQL for the catalog, with the types preparing it gave.
    Catalog {
        text: Arc<str>,
        offset: usize,
        described: Described,
    },
}

impl Prepared {
    /// How many parameters a Bind must supply.
    pub fn parameters(&self) -> usize {
        match self {
            Prepared::Catalog { described, .. } => described.params.len(),
            Prepared::Command(_) => 0,
        }
    }

    /// How many columns its result has.
    pub fn columns(&self) -> usize {
        match self {
            Prepared::Catalog { described, .. } => described.columns.len(),
            Prepared::Command(_) => 0,
        }
    }
}

/// The state of one client connection.
pub struct Session {
    shared: Arc<Shared>,
    control: Arc<Control>,
    parser: Arc<SessionParser>,
}

/// Parses a query string on the blocking pool: what each statement is, or the syntax error
/// that fails the whole string. Parsing takes time and memory in proportion to the text (a
/// megabyte of statements holds some tens of megabytes of tokens for a moment), so only as
/// many strings are parsed at once as there are CPUs; the others wait their turn.
async fn plan(query: String) -> Result<Vec<Result<Command, ClientError>>, ClientError> {
    static PARSING: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let parsing = PARSING.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cpus.max(2)))
    });
    let turn = parsing
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ClientError::new(code::INTERNAL_ERROR, format!("parsing failed: {e}")))?;
    // The turn goes with the work: a parse whose client went on runs to its end, counted.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        ferry_sql::parse_each(&query, |parsed| analyze(&parsed)).map_err(ClientError::from)
    })
    .await
    .map_err(|e| ClientError::new(code::INTERNAL_ERROR, format!("parsing failed: {e}")))?
}

fn statement_timeout() -> ClientError {
    ClientError::new(
        code::QUERY_CANCELED,
        "canceling statement due to statement timeout",
    )
}

impl Session {
    pub fn new(shared: Arc<Shared>, control: Arc<Control>) -> Self {
        Session {
            parser: Arc::new(SessionParser {
                shared: shared.clone(),
            }),
            shared,
            control,
        }
    }

    /// Runs one of Ferry's statements, or answers a local one. Not for catalog SQL.
    async fn run(&self, command: &Command) -> Result<Outcome, ClientError> {
        self.shared.metrics.statement(command);
        let catalog = self.shared.catalog.clone();
        let engine = self.shared.engine.clone();
        Ok(match command.clone() {
            Command::CreatePeer {
                name,
                if_not_exists,
                config,
            } => execute::create_peer(&catalog, &name, if_not_exists, &config).await?,
            Command::DropPeer { name, if_exists } => {
                execute::drop_peer(&catalog, &name, if_exists).await?
            }
            Command::CreateMirror {
                name,
                if_not_exists,
                source,
                destination,
                spec,
            } => {
                self.shielded(async move {
                    execute::create_mirror(
                        &catalog,
                        &engine,
                        &name,
                        if_not_exists,
                        &source,
                        &destination,
                        spec,
                    )
                    .await
                })
                .await?
            }
            Command::CreateQueryMirror {
                name,
                if_not_exists,
                source,
                destination,
                spec,
            } => {
                self.shielded(async move {
                    execute::create_query_mirror(
                        &catalog,
                        &engine,
                        &name,
                        if_not_exists,
                        &source,
                        &destination,
                        spec,
                    )
                    .await
                })
                .await?
            }
            Command::ExecuteMirror { name } => {
                self.shielded(async move { execute::execute_mirror(&engine, &name).await })
                    .await?
            }
            Command::DropMirror { name, if_exists } => {
                self.shielded(async move { execute::drop_mirror(&engine, &name, if_exists).await })
                    .await?
            }
            Command::PauseMirror { name } => {
                self.shielded(async move { execute::pause_mirror(&engine, &name).await })
                    .await?
            }
            Command::ResumeMirror { name } => {
                self.shielded(async move { execute::resume_mirror(&engine, &name).await })
                    .await?
            }
            Command::AlterMirror { name, change } => {
                self.shielded(async move { execute::alter_mirror(&engine, &name, change).await })
                    .await?
            }
            Command::ResyncMirror { name, tables } => {
                self.shielded(async move { execute::resync_mirror(&engine, &name, &tables).await })
                    .await?
            }
            Command::Local { tag } => Outcome::done(tag),
            Command::Catalog { .. } => {
                return Err(ClientError::new(
                    code::INTERNAL_ERROR,
                    "catalog SQL reached the statement runner",
                ))
            }
        })
    }

    /// Runs a statement that changes mirrors on a task of its own, to its end: neither a
    /// cancel nor the client going away interrupts it.
    async fn shielded(
        &self,
        work: impl std::future::Future<Output = Result<Outcome, ClientError>> + Send + 'static,
    ) -> Result<Outcome, ClientError> {
        let _shield = self.control.shield();
        tokio::spawn(work).await.map_err(|e| {
            ClientError::new(
                code::INTERNAL_ERROR,
                format!("the statement's task failed: {e}"),
            )
        })?
    }

    /// Answers a simple query: each statement's result, then ReadyForQuery. Errors for the
    /// client are sent; only a failure of the connection itself is returned.
    pub async fn simple_query(&self, out: &mut Client, query: String) -> PgWireResult<()> {
        let result = self.simple_statements(out, query).await;
        match result {
            Ok(()) => {}
            Err(Stop::Client(e)) => {
                debug!(sqlstate = %e.sqlstate, error = %e.message, "statement failed");
                out.feed(PgWireBackendMessage::ErrorResponse(e.into_info().into()))
                    .await?;
            }
            Err(Stop::Io(e)) => return Err(e),
        }
        out.send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
            TransactionStatus::Idle,
        )))
        .await?;
        Ok(())
    }

    async fn simple_statements(&self, out: &mut Client, query: String) -> Result<(), Stop> {
        let commands = plan(query).await?;
        if commands.is_empty() {
            out.feed(PgWireBackendMessage::EmptyQueryResponse(
                EmptyQueryResponse::new(),
            ))
            .await
            .map_err(Stop::io)?;
            return Ok(());
        }
        let pool = &self.shared.reader;
        let deadline = Instant::now() + pool.settings().statement_timeout;
        let mut tx = None;
        for command in commands {
            let command = command?;
            if let Command::Catalog { text, offset } = &command {
                self.shared.metrics.statement(&command);
                if tx.is_none() {
                    tx = Some(begin(pool).await?);
                }
                let Some(t) = &tx else { continue };
                match tokio::time::timeout_at(
                    deadline,
                    catalog_sql::run_simple(t, text, *offset, out),
                )
                .await
                {
                    Ok(r) => r?,
                    // Dropping the transaction cancels what it runs.
                    Err(_) => return Err(statement_timeout().into()),
                }
                continue;
            }
            // Ferry's statements do not hold a catalog connection while they run.
            if let Some(t) = tx.take() {
                t.finish().await;
            }
            let outcome = self.run(&command).await?;
            send_outcome(out, outcome).await.map_err(Stop::Io)?;
        }
        if let Some(t) = tx {
            t.finish().await;
        }
        Ok(())
    }
}

async fn begin(
    pool: &ferry_catalog::ReaderPool,
) -> Result<ferry_catalog::ReadTransaction, ClientError> {
    pool.begin().await.map_err(|e| match e {
        ferry_catalog::ReaderError::Busy { .. } => {
            ClientError::new(code::INSUFFICIENT_RESOURCES, e.to_string()).with_hint(
                "Try again shortly; the daemon's --catalog-pool-size sets how many there are.",
            )
        }
        ferry_catalog::ReaderError::Catalog(e) => ClientError::from(e),
    })
}

/// The notice, if any, and the command tag of a statement Ferry ran.
async fn send_outcome<C>(out: &mut C, outcome: Outcome) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if let Some(notice) = outcome.notice {
        let info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), notice);
        out.feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
            info,
        )))
        .await?;
    }
    send_execution_response(out, Tag::new(outcome.tag)).await
}

/// Parses statements for the extended protocol.
pub struct SessionParser {
    shared: Arc<Shared>,
}

#[async_trait]
impl QueryParser for SessionParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut commands = plan(sql.to_owned()).await?;
        let command = match commands.len() {
            0 => return Ok(None),
            1 => commands.remove(0)?,
            _ => {
                return Err(ClientError::new(
                    code::SYNTAX_ERROR,
                    "cannot insert multiple commands into a prepared statement",
                )
                .into())
            }
        };
        Ok(Some(match command {
            Command::Catalog { text, offset } => {
                let tx = begin(&self.shared.reader).await?;
                let described = catalog_sql::describe(&tx, &text, offset).await;
                tx.finish().await;
                Prepared::Catalog {
                    text: text.into(),
                    offset,
                    described: described?,
                }
            }
            command => Prepared::Command(Arc::new(command)),
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match stmt {
            Prepared::Catalog { described, .. } => described.params.clone(),
            Prepared::Command(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match stmt {
            Prepared::Catalog { described, .. } => {
                fields(&described.columns, format.unwrap_or(&Format::UnifiedBinary))
                    .as_ref()
                    .clone()
            }
            Prepared::Command(_) => Vec::new(),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = Prepared;
    type QueryParser = SessionParser;

    fn query_parser(&self) -> Arc<SessionParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &portal.statement.statement {
            Prepared::Command(command) => {
                let outcome = self.run(command).await?;
                if let Some(notice) = outcome.notice {
                    let info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), notice);
                    client
                        .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                            info,
                        )))
                        .await?;
                }
                Ok(Response::Execution(Tag::new(outcome.tag)))
            }
            Prepared::Catalog {
                text, described, ..
            } => {
                self.shared.metrics.statement(&Command::Catalog {
                    text: String::new(),
                    offset: 0,
                });
                let pool = &self.shared.reader;
                let tx = begin(pool).await?;
                let result = tokio::time::timeout(
                    pool.settings().statement_timeout,
                    catalog_sql::run_portal(
                        &tx,
                        text,
                        described,
                        &portal.parameters,
                        &portal.parameter_format,
                        &portal.result_column_format,
                    ),
                )
                .await;
                match result {
                    Ok(r) => {
                        tx.finish().await;
                        Ok(r?)
                    }
                    // Dropping the transaction cancels what it runs.
                    Err(_) => Err(statement_timeout().into()),
                }
            }
        }
    }
}
