//! The engine's errors: a kind that decides retries, a message, a hint, and the SQLSTATE a
//! client is shown when the error answers a statement.

use ferry_catalog::CatalogError;
use ferry_clickhouse::connect::DestinationError;
use ferry_clickhouse::table::WriteError;
use ferry_core::ErrorKind;
use ferry_postgres::connect::SourceError;
use ferry_postgres::copy::CopyError;

/// An error of the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FlowError {
    pub kind: ErrorKind,
    pub sqlstate: String,
    pub message: String,
    pub hint: Option<String>,
}

impl FlowError {
    pub fn new(kind: ErrorKind, sqlstate: &str, message: impl Into<String>) -> FlowError {
        FlowError {
            kind,
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> FlowError {
        self.hint = Some(hint.into());
        self
    }

    /// Puts `context` before the message ("table public.t: …").
    pub fn context(mut self, context: impl std::fmt::Display) -> FlowError {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn invalid(sqlstate: &str, message: impl Into<String>) -> FlowError {
        FlowError::new(ErrorKind::InvalidInput, sqlstate, message)
    }

    pub fn internal(message: impl Into<String>) -> FlowError {
        FlowError::new(ErrorKind::Internal, "XX000", message)
    }
}

impl From<SourceError> for FlowError {
    fn from(e: SourceError) -> Self {
        FlowError {
            kind: e.kind,
            sqlstate: e.sqlstate,
            message: e.message,
            hint: e.hint,
        }
    }
}

impl From<DestinationError> for FlowError {
    fn from(e: DestinationError) -> Self {
        let sqlstate = e.sqlstate().to_owned();
        FlowError {
            kind: e.kind,
            sqlstate,
            message: e.message,
            hint: e.hint,
        }
    }
}

impl From<CatalogError> for FlowError {
    fn from(e: CatalogError) -> Self {
        let sqlstate = e.sqlstate().unwrap_or("XX000").to_owned();
        FlowError {
            kind: e.kind(),
            sqlstate,
            message: e.to_string(),
            hint: None,
        }
    }
}

impl From<CopyError> for FlowError {
    fn from(e: CopyError) -> Self {
        FlowError::new(e.kind(), "XX000", format!("reading the COPY stream: {e}"))
    }
}

impl From<WriteError> for FlowError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Destination(d) => d.into(),
            WriteError::Encode { source, .. } => {
                FlowError::new(source.kind(), "22000", e_to_string(&source))
            }
        }
    }
}

fn e_to_string(e: &dyn std::error::Error) -> String {
    e.to_string()
}
