use ferry_core::ErrorKind;

/// An error from the catalog, with the kind that decides whether it is retried.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog database could not be reached or answered with an error.
    #[error("catalog database: {message}")]
    Database {
        kind: ErrorKind,
        message: String,
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// The catalog holds something this version of Ferry cannot read.
    #[error("catalog is inconsistent: {0}")]
    Corrupt(String),
    /// The secret key does not open what the catalog holds, or sealing failed.
    #[error("{0}")]
    Secret(String),
    /// Another daemon holds the catalog's lease ([`crate::Lease`]).
    #[error("another Ferry daemon is running on this catalog: {holder}")]
    LeaseHeld { holder: String },
}

impl CatalogError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::Database { kind, .. } => *kind,
            CatalogError::Corrupt(_) => ErrorKind::Internal,
            CatalogError::Secret(_) => ErrorKind::Misconfigured,
            CatalogError::LeaseHeld { .. } => ErrorKind::AlreadyExists,
        }
    }

    /// The SQLSTATE the database answered with, if it answered with one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CatalogError::Database {
                source: Some(e), ..
            } => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for CatalogError {
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = match e.code() {
            None => ErrorKind::Transient,
            Some(c) => ferry_core::error::kind_of_sqlstate(c.code()),
        };
        let message = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        };
        CatalogError::Database {
            kind,
            message,
            source: Some(e),
        }
    }
}

impl From<CatalogError> for ferry_core::Error {
    fn from(e: CatalogError) -> Self {
        ferry_core::Error {
            kind: e.kind(),
            sqlstate: e.sqlstate().unwrap_or("XX000").to_owned(),
            message: e.to_string(),
            hint: None,
        }
    }
}
