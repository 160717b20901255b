//! The one error type of the crate.

/// A statement could not be parsed.
///
/// `position` is PostgreSQL's error field `P`: a 1-based offset, counted in
/// characters (not bytes), into the whole query string that was passed to
/// [`parse`](crate::parse), so that psql can point at the offending token.
/// An error at the end of the input points one past its last character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// A message in PostgreSQL's style, e.g. `syntax error at or near "FOO"`.
    pub message: String,
    /// 1-based character offset into the whole input.
    pub position: usize,
}

impl ParseError {
    /// Builds an error from a message and a 1-based character offset.
    pub fn new(message: impl Into<String>, position: usize) -> Self {
        Self {
            message: message.into(),
            position,
        }
    }
}
