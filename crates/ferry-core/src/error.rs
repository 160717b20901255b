//! Error kinds and the retry policy.
//!
//! Every error that can stop a mirror says which [`ErrorKind`] it is. The engine asks
//! [`ErrorKind::is_retryable`] and nothing else when it decides whether to try again: a
//! transient error (a connection dropped, a server restarting, a timeout) is retried with
//! [`Backoff`]; any other kind is definite and is recorded on the table or mirror for a person
//! to act on.

use std::time::Duration;

/// An error as it crosses a boundary between Ferry's parts: a kind that decides retries, the
/// SQLSTATE a client is shown when it answers a statement, a message a person can act on
/// (never a value of a row, never a secret) and, where it helps, a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub sqlstate: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, sqlstate: &str, message: impl Into<String>) -> Error {
        Error {
            kind,
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Puts `context` before the message ("table public.t: …").
    pub fn context(mut self, context: impl std::fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Wrong input from a user: never retried.
    pub fn invalid(sqlstate: &str, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidInput, sqlstate, message)
    }

    /// A bug or a broken invariant.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, "XX000", message)
    }

    /// A network failure or a server restarting: tried again.
    pub fn transient(sqlstate: &str, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Transient, sqlstate, message)
    }
}

impl From<crate::canonical::DecodeError> for Error {
    fn from(e: crate::canonical::DecodeError) -> Self {
        Error::new(e.kind(), "22P03", e.to_string())
    }
}

/// What kind of failure an error is, which decides what Ferry does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A network failure or a server that is restarting or overloaded: retry.
    Transient,
    /// The user's input is wrong (bad option, unknown table): report it, never retry.
    InvalidInput,
    /// Credentials were refused or privileges are missing.
    Permission,
    /// Something named does not exist (peer, mirror, table, database).
    NotFound,
    /// Something named exists already.
    AlreadyExists,
    /// A value or type that Ferry cannot carry without loss.
    Unsupported,
    /// The source or destination is in a state Ferry cannot work with (e.g. `wal_level`).
    Misconfigured,
    /// A bug or a broken invariant: report it, never retry.
    Internal,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if simply tried again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }
}

/// What to do about a SQLSTATE a PostgreSQL server answered with: the one classifier of
/// PostgreSQL's errors, for the source (ordinary and replication connections), the catalog and
/// PostgreSQL destinations alike.
pub fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        c if c.starts_with("28") || c == "42501" => ErrorKind::Permission,
        "3D000" | "42P01" | "42704" | "3F000" => ErrorKind::NotFound,
        // duplicate_object: the slot or publication exists already.
        "42710" => ErrorKind::AlreadyExists,
        // object_in_use: the slot is held by another walsender, typically one that has not
        // noticed yet that its client went away.
        "55006" => ErrorKind::Transient,
        // object_not_in_prerequisite_state (wal_level, a slot of another database or one that
        // lost its WAL) and configuration_limit_exceeded (max_replication_slots).
        "55000" | "53400" => ErrorKind::Misconfigured,
        "22023" => ErrorKind::InvalidInput,
        // unique_violation (a row stored twice), foreign_key_violation (a row still in use).
        "23505" => ErrorKind::AlreadyExists,
        "23503" => ErrorKind::InvalidInput,
        // connection exceptions, operator intervention (shutdown, cancel), too many
        // connections, serialization failures and deadlocks.
        c if c.starts_with("08")
            || c.starts_with("57P")
            || c == "53300"
            || c == "57014"
            || c == "40001"
            || c == "40P01" =>
        {
            ErrorKind::Transient
        }
        _ => ErrorKind::Internal,
    }
}

/// Exponential backoff with a ceiling, for transient errors.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles on every [`Backoff::next_delay`] up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { next: initial, max }
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_is_retried() {
        assert!(ErrorKind::Transient.is_retryable());
        for k in [
            ErrorKind::InvalidInput,
            ErrorKind::Permission,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Unsupported,
            ErrorKind::Misconfigured,
            ErrorKind::Internal,
        ] {
            assert!(!k.is_retryable(), "{k:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
    }
}
