//! Tokens, their positions, and the split into statements.
//!
//! sqlparser's tokenizer reports a line and a column per token, counting
//! columns in characters and lines at `\n` only. [`Source`] turns these into
//! the 1-based character offsets PostgreSQL reports, and back into byte ranges
//! to quote a token's original text in a message.
//!
//! Both conversions take constant time (a character's byte offset is found
//! from the nearest of a checkpoint kept every [`STRIDE`] characters), so that
//! a long input of many statements on one line is split and quoted in time
//! linear in its length.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, TokenizerError};

use crate::error::ParseError;

/// Characters between two byte-offset checkpoints.
const STRIDE: usize = 64;

/// The whole input, indexed by line.
pub(crate) struct Source<'a> {
    sql: &'a str,
    /// For each line, the character offset of its first character.
    lines: Vec<usize>,
    /// The byte offset of every `STRIDE`th character.
    checkpoints: Vec<usize>,
    /// Number of characters in the input.
    char_len: usize,
}

impl<'a> Source<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        let mut lines = vec![0];
        let mut checkpoints = Vec::with_capacity(sql.len() / STRIDE + 1);
        let mut char_len = 0;
        for (byte, c) in sql.char_indices() {
            if char_len % STRIDE == 0 {
                checkpoints.push(byte);
            }
            char_len += 1;
            if c == '\n' {
                lines.push(char_len);
            }
        }
        Self {
            sql,
            lines,
            checkpoints,
            char_len,
        }
    }

    /// The position just past the last character: where "end of input" is.
    pub(crate) fn end_position(&self) -> usize {
        self.char_len + 1
    }

    /// The 1-based character offset of a location; `None` for sqlparser's
    /// "unknown" location (line 0).
    pub(crate) fn position(&self, loc: Location) -> Option<usize> {
        let line = self.line(loc)?;
        let column = usize::try_from(loc.column).ok()?.max(1);
        Some((line + column).min(self.end_position()))
    }

    /// The byte offset of a location, clamped to the input.
    pub(crate) fn byte_offset(&self, loc: Location) -> usize {
        let Some(line) = self.line(loc) else {
            return self.sql.len();
        };
        let column = usize::try_from(loc.column).unwrap_or(usize::MAX).max(1);
        self.byte_of_char(line.saturating_add(column - 1))
    }

    /// The byte offset of the character with this 0-based index; the input's length past
    /// its end.
    fn byte_of_char(&self, index: usize) -> usize {
        let checkpoint = index / STRIDE;
        let Some(&start) = self.checkpoints.get(checkpoint) else {
            return self.sql.len();
        };
        self.sql[start..]
            .char_indices()
            .nth(index - checkpoint * STRIDE)
            .map_or(self.sql.len(), |(offset, _)| start + offset)
    }

    /// The character offset of the first character of a location's line.
    fn line(&self, loc: Location) -> Option<usize> {
        let index = usize::try_from(loc.line).ok()?.checked_sub(1)?;
        self.lines.get(index).copied()
    }

    /// The text of the input between two locations, as the user wrote it.
    pub(crate) fn text(&self, start: Location, end: Location) -> &'a str {
        let from = self.byte_offset(start);
        let to = self.byte_offset(end).max(from);
        &self.sql[from..to]
    }

    /// PostgreSQL's message for an unexpected token, quoting it as written.
    pub(crate) fn syntax_error_near(&self, start: Location, end: Location) -> String {
        format!("syntax error at or near \"{}\"", self.text(start, end))
    }
}

/// How a statement ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// At a `;`, at this position.
    Semicolon(usize),
    /// At the end of the input, whose end position is this.
    Input(usize),
}

impl End {
    pub(crate) fn position(self) -> usize {
        match self {
            End::Semicolon(p) | End::Input(p) => p,
        }
    }

    /// PostgreSQL's wording for a syntax error at this point.
    pub(crate) fn syntax_error(self) -> String {
        match self {
            End::Semicolon(_) => "syntax error at or near \";\"".to_owned(),
            End::Input(_) => "syntax error at end of input".to_owned(),
        }
    }
}

/// The tokens of one statement (whitespace and comments included, the `;`
/// excluded) and how it ends.
pub(crate) struct Chunk {
    pub(crate) tokens: Vec<TokenWithSpan>,
    pub(crate) end: End,
}

impl Chunk {
    /// The tokens that are not whitespace or comments.
    pub(crate) fn significant(&self) -> impl Iterator<Item = &TokenWithSpan> {
        self.tokens
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
    }
}

/// Tokenizes the whole input and splits it at every `;` token. A `;` inside
/// a string, quoted identifier, comment or dollar-quoted body is part of that
/// token, so every `;` token separates statements, as in PostgreSQL's
/// grammar. Statements with no tokens but whitespace and comments are dropped.
pub(crate) fn split(source: &Source<'_>) -> Result<Vec<Chunk>, ParseError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, source.sql)
        .tokenize_with_location()
        .map_err(|e| tokenizer_error(source, &e))?;

    let mut chunks = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        if token.token == Token::SemiColon {
            let end = End::Semicolon(
                source
                    .position(token.span.start)
                    .unwrap_or(source.end_position()),
            );
            chunks.push(Chunk {
                tokens: std::mem::take(&mut current),
                end,
            });
        } else {
            current.push(token);
        }
    }
    chunks.push(Chunk {
        tokens: current,
        end: End::Input(source.end_position()),
    });
    chunks.retain(|c| c.significant().next().is_some());
    Ok(chunks)
}

/// Words PostgreSQL uses for the tokenizer errors a user is likely to meet.
fn tokenizer_error(source: &Source<'_>, e: &TokenizerError) -> ParseError {
    let message = if e.message.starts_with("Unterminated") && e.message.contains("string literal") {
        "unterminated quoted string".to_owned()
    } else if e.message.starts_with("Expected close delimiter '\"'") {
        "unterminated quoted identifier".to_owned()
    } else if e.message.contains("multi-line comment") {
        "unterminated /* comment".to_owned()
    } else if e.message.contains("dollar-quoted") {
        "unterminated dollar-quoted string".to_owned()
    } else {
        lower_first(e.message.trim_end_matches('.'))
    };
    let position = source.position(e.location).unwrap_or(source.end_position());
    ParseError::new(message, position)
}

/// `"Expected: x"` → `"expected: x"`; sqlparser capitalises, PostgreSQL not.
pub(crate) fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_and_lines() {
        let src = Source::new("é\nab\r\ncd");
        assert_eq!(src.position(Location::new(1, 1)), Some(1));
        assert_eq!(src.position(Location::new(2, 2)), Some(4));
        assert_eq!(src.position(Location::new(3, 1)), Some(7));
        assert_eq!(src.position(Location::new(0, 0)), None);
        assert_eq!(src.text(Location::new(1, 1), Location::new(2, 2)), "é\na");
        assert_eq!(src.end_position(), 9);
        // Out-of-range locations clamp instead of panicking.
        assert_eq!(src.position(Location::new(9, 9)), None);
        assert_eq!(src.text(Location::new(3, 2), Location::new(3, 99)), "d");
    }

    #[test]
    fn byte_offsets_agree_with_walking_the_characters() {
        let sql: String = (0..500)
            .map(|i| if i % 7 == 0 { 'é' } else { 'a' })
            .collect();
        let sql = format!("{sql}\n{sql}");
        let src = Source::new(&sql);
        for (line, line_start) in [(1u64, 0usize), (2, 501)] {
            for column in [1u64, 2, 63, 64, 65, 128, 129, 499, 500, 501] {
                let index = line_start + column as usize - 1;
                let walked = sql.char_indices().nth(index).map_or(sql.len(), |(b, _)| b);
                assert_eq!(
                    src.byte_offset(Location::new(line, column)),
                    walked,
                    "{line}:{column}"
                );
            }
        }
    }
}
