//! One client session: the pgwire handlers for the simple and extended query protocols.
//!
//! Both protocols go the same way: parse (`ferry-sql`) → analyse ([`crate::analyze`]) →
//! execute. Ferry's statements change the catalog and the peers; every other statement is
//! read-only SQL on the catalog database ([`crate::catalog_sql`]).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::PgWireBackendMessage;
use tracing::debug;

use crate::analyze::{analyze, Command};
use crate::catalog_sql::{fields, CatalogSession};
use crate::error::{code, ClientError};
use crate::{execute, Shared};

/// A statement prepared with the extended protocol.
#[derive(Clone)]
pub enum Prepared {
    /// One of Ferry's statements, or transaction control.
    Command(Arc<Command>),
    /// SQL for the catalog, prepared on the session's catalog connection.
    Catalog {
        text: Arc<str>,
        statement: tokio_postgres::Statement,
    },
}

/// The state of one client connection.
pub struct Session {
    shared: Arc<Shared>,
    sql: Arc<CatalogSession>,
    parser: Arc<SessionParser>,
}

impl Session {
    pub fn new(shared: Arc<Shared>) -> Self {
        let sql = Arc::new(CatalogSession::new(shared.catalog.clone()));
        Session {
            shared,
            parser: Arc::new(SessionParser { sql: sql.clone() }),
            sql,
        }
    }

    async fn run<C>(&self, client: &mut C, command: &Command) -> Result<Response, ClientError>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
    {
        self.shared.metrics.statement(command);
        let outcome = match command {
            Command::CreatePeer {
                name,
                if_not_exists,
                config,
            } => execute::create_peer(&self.shared.catalog, name, *if_not_exists, config).await?,
            Command::DropPeer { name, if_exists } => {
                execute::drop_peer(&self.shared.catalog, name, *if_exists).await?
            }
            Command::CreateMirror {
                name,
                if_not_exists,
                source,
                destination,
                spec,
            } => {
                execute::create_mirror(
                    &self.shared.catalog,
                    &self.shared.engine,
                    name,
                    *if_not_exists,
                    source,
                    destination,
                    spec.clone(),
                )
                .await?
            }
            Command::DropMirror { name, if_exists } => {
                execute::drop_mirror(&self.shared.engine, name, *if_exists).await?
            }
            Command::PauseMirror { name } => {
                execute::pause_mirror(&self.shared.engine, name).await?
            }
            Command::ResumeMirror { name } => {
                execute::resume_mirror(&self.shared.engine, name).await?
            }
            Command::Catalog { text, offset } => return self.sql.run_text(text, *offset).await,
            Command::Local { tag } => return Ok(Response::Execution(Tag::new(tag))),
            Command::ResyncMirror { name } => {
                execute::resync_mirror(&self.shared.engine, name).await?
            }
        };
        if let Some(notice) = outcome.notice {
            let info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), notice);
            // A client that went away will fail on the response too; nothing to do here.
            let _ = client
                .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                    info,
                )))
                .await;
        }
        Ok(Response::Execution(Tag::new(outcome.tag)))
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parsed = ferry_sql::parse_spanned(query).map_err(ClientError::from)?;
        let mut responses = Vec::with_capacity(parsed.len());
        for p in &parsed {
            let result = match analyze(p) {
                Ok(command) => self.run(client, &command).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => responses.push(r),
                Err(e) => {
                    debug!(sqlstate = %e.sqlstate, error = %e.message, "statement failed");
                    // As in PostgreSQL, an error ends the rest of the query string.
                    if responses.is_empty() {
                        return Err(e.into_pgwire());
                    }
                    responses.push(Response::Error(Box::new(e.into_info())));
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

/// Parses statements for the extended protocol.
pub struct SessionParser {
    sql: Arc<CatalogSession>,
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
        let parsed = ferry_sql::parse_spanned(sql).map_err(ClientError::from)?;
        let p = match parsed.as_slice() {
            [] => return Ok(None),
            [p] => p,
            [_, second, ..] => {
                return Err(ClientError::new(
                    code::SYNTAX_ERROR,
                    "cannot insert multiple commands into a prepared statement",
                )
                .with_position(second.offset + 1)
                .into())
            }
        };
        Ok(Some(match analyze(p)? {
            Command::Catalog { text, offset } => {
                let statement = self.sql.prepare(&text, offset).await?;
                Prepared::Catalog {
                    text: text.into(),
                    statement,
                }
            }
            command => Prepared::Command(Arc::new(command)),
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match stmt {
            Prepared::Catalog { statement, .. } => statement.params().to_vec(),
            Prepared::Command(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match stmt {
            Prepared::Catalog { statement, .. } => {
                fields(statement, format.unwrap_or(&Format::UnifiedBinary))
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
        let result = match &portal.statement.statement {
            Prepared::Command(command) => self.run(client, command).await,
            Prepared::Catalog { text, statement } => {
                self.shared.metrics.statement(&Command::Catalog {
                    text: String::new(),
                    offset: 0,
                });
                self.sql
                    .run_portal(
                        text,
                        statement,
                        &portal.parameters,
                        &portal.parameter_format,
                        &portal.result_column_format,
                    )
                    .await
            }
        };
        result.map_err(ClientError::into_pgwire)
    }
}

/// The handlers pgwire asks for, made anew for each connection.
pub struct Handlers {
    pub session: Arc<Session>,
    pub startup: Arc<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}
