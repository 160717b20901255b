//! Errors as a PostgreSQL client sees them.
//!
//! Every failure that reaches a client is a [`ClientError`]: a real SQLSTATE, a message a
//! person can act on, and a hint where one helps. Library errors are converted here, in one
//! place, from their [`ErrorKind`] and whatever code the server behind them answered with.

use ferry_catalog::CatalogError;
use ferry_clickhouse::connect::DestinationError;
use ferry_core::peer::OptionError;
use ferry_core::ErrorKind;
use ferry_postgres::connect::SourceError;
use pgwire::error::{ErrorInfo, PgWireError};

/// An error to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the query text.
    pub position: Option<usize>,
}

/// SQLSTATEs Ferry uses by name.
pub mod code {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
}

impl ClientError {
    pub fn new(sqlstate: &str, message: impl Into<String>) -> Self {
        ClientError {
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_position(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }

    /// The default SQLSTATE for an error kind, where nothing more specific is known.
    pub fn code_for_kind(kind: ErrorKind) -> &'static str {
        match kind {
            ErrorKind::Transient => code::CONNECTION_EXCEPTION,
            ErrorKind::InvalidInput => code::INVALID_PARAMETER_VALUE,
            ErrorKind::Permission => code::INSUFFICIENT_PRIVILEGE,
            ErrorKind::NotFound => code::UNDEFINED_OBJECT,
            ErrorKind::AlreadyExists => code::DUPLICATE_OBJECT,
            ErrorKind::Unsupported => code::FEATURE_NOT_SUPPORTED,
            ErrorKind::Misconfigured => "55000",
            ErrorKind::Internal => code::INTERNAL_ERROR,
        }
    }

    /// The pgwire error carrying this one.
    pub fn into_pgwire(self) -> PgWireError {
        PgWireError::UserError(Box::new(self.into_info()))
    }

    /// The error fields.
    pub fn into_info(self) -> ErrorInfo {
        let mut info = ErrorInfo::new("ERROR".to_owned(), self.sqlstate, self.message);
        info.detail = self.detail;
        info.hint = self.hint;
        info.position = self.position.map(|p| p.to_string());
        info
    }
}

impl From<ClientError> for PgWireError {
    fn from(e: ClientError) -> Self {
        e.into_pgwire()
    }
}

impl From<CatalogError> for ClientError {
    fn from(e: CatalogError) -> Self {
        let sqlstate = e
            .sqlstate()
            .map(str::to_owned)
            .unwrap_or_else(|| Self::code_for_kind(e.kind()).to_owned());
        ClientError::new(&sqlstate, e.to_string())
    }
}

impl From<SourceError> for ClientError {
    fn from(e: SourceError) -> Self {
        let mut c = ClientError::new(&e.sqlstate, e.message);
        c.hint = e.hint;
        c
    }
}

impl From<DestinationError> for ClientError {
    fn from(e: DestinationError) -> Self {
        let mut c = ClientError::new(e.sqlstate(), e.message.clone());
        c.hint = e.hint;
        c
    }
}

impl From<OptionError> for ClientError {
    fn from(e: OptionError) -> Self {
        let sqlstate = match &e {
            OptionError::Unknown { .. }
            | OptionError::Missing { .. }
            | OptionError::Duplicate { .. } => code::SYNTAX_ERROR,
            OptionError::WrongType { .. } => code::INVALID_PARAMETER_VALUE,
        };
        let hint = e.hint();
        let mut c = ClientError::new(sqlstate, e.to_string());
        c.hint = hint;
        c
    }
}

impl From<ferry_sql::ParseError> for ClientError {
    fn from(e: ferry_sql::ParseError) -> Self {
        ClientError::new(code::SYNTAX_ERROR, e.message).with_position(e.position)
    }
}

/// Wraps an error from tokio-postgres talking to the catalog for the client, keeping the
/// server's SQLSTATE and moving its position by `offset` characters (the statement's place
/// in the client's query text).
pub fn from_catalog_query(e: tokio_postgres::Error, offset: usize) -> ClientError {
    match e.as_db_error() {
        Some(db) => {
            let mut c = ClientError::new(db.code().code(), db.message());
            c.detail = db.detail().map(str::to_owned);
            c.hint = db.hint().map(str::to_owned);
            if let Some(tokio_postgres::error::ErrorPosition::Original(p)) = db.position() {
                c.position = Some(*p as usize + offset);
            }
            c
        }
        None => ClientError::new(code::CONNECTION_EXCEPTION, format!("catalog database: {e}")),
    }
}
