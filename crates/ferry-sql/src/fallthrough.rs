//! Statements that are not Ferry's: handed to sqlparser's PostgreSQL dialect.
//!
//! The statement's tokens are passed as they are, so sqlparser's locations are
//! already those of the whole input. Its errors end in `at Line: L, Column: C`
//! when it knows where; that is turned into a character offset and the
//! message into PostgreSQL's wording, keeping sqlparser's "expected …".

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token};

use crate::ast::Statement;
use crate::error::ParseError;
use crate::lexer::{lower_first, Chunk, Source};

/// Parses one statement that is not Ferry's.
pub(crate) fn parse_sql_statement(
    source: &Source<'_>,
    chunk: &Chunk,
) -> Result<Statement, ParseError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(chunk.tokens.clone());
    let statement = parser
        .parse_statement()
        .map_err(|e| convert_error(source, chunk, e))?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        let position = source
            .position(next.span.start)
            .unwrap_or(chunk.end.position());
        return Err(ParseError::new(
            source.syntax_error_near(next.span.start, next.span.end),
            position,
        ));
    }
    Ok(Statement::Sql(Box::new(statement)))
}

fn convert_error(source: &Source<'_>, chunk: &Chunk, error: ParserError) -> ParseError {
    let statement_start = chunk
        .significant()
        .next()
        .and_then(|t| source.position(t.span.start))
        .unwrap_or(chunk.end.position());
    let message = match error {
        ParserError::RecursionLimitExceeded => {
            return ParseError::new("statement is nested too deeply", statement_start)
        }
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
    };
    let (text, location) = split_location(&message);
    let token = location.and_then(|loc| chunk.tokens.iter().find(|t| t.span.start == loc));
    let position = location.and_then(|loc| source.position(loc));

    let Some((expected, found)) = text
        .strip_prefix("Expected: ")
        .and_then(|rest| rest.split_once(", found: "))
    else {
        return ParseError::new(lower_first(text), position.unwrap_or(statement_start));
    };
    let (near, position) = match (token, position) {
        (Some(token), Some(position)) => (
            source.syntax_error_near(token.span.start, token.span.end),
            position,
        ),
        // sqlparser's end-of-tokens marker has no location.
        (None, None) if found == "EOF" => (chunk.end.syntax_error(), chunk.end.position()),
        (_, position) => (
            format!("syntax error at or near \"{found}\""),
            position.unwrap_or(statement_start),
        ),
    };
    ParseError::new(format!("{near}: expected {expected}"), position)
}

/// Splits sqlparser's ` at Line: L, Column: C` suffix off a message.
fn split_location(message: &str) -> (&str, Option<Location>) {
    let parsed = message.rsplit_once(" at Line: ").and_then(|(head, tail)| {
        let (line, column) = tail.split_once(", Column: ")?;
        let location = Location::new(line.parse().ok()?, column.parse().ok()?);
        Some((head, location))
    });
    match parsed {
        Some((head, location)) => (head, Some(location)),
        None => (message, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_location_reads_the_suffix() {
        assert_eq!(
            split_location("Expected: x, found: y at Line: 2, Column: 15"),
            ("Expected: x, found: y", Some(Location::new(2, 15)))
        );
        assert_eq!(split_location("no location"), ("no location", None));
        assert_eq!(
            split_location("odd at Line: two, Column: 1"),
            ("odd at Line: two, Column: 1", None)
        );
    }
}
