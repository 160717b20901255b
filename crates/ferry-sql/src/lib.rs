//! Ferry's SQL: the statements users type in psql, parsed into typed commands.
//!
//! [`parse`] is pure: text in, [`Statement`]s out, no I/O. Ferry's own
//! statements, recognised by their first words, become typed values; every
//! other statement is parsed by sqlparser's PostgreSQL dialect and returned as
//! [`Statement::Sql`]. The syntax is PeerDB's:
//!
//! ```text
//! CREATE PEER [IF NOT EXISTS] name FROM { POSTGRES | CLICKHOUSE } [WITH (option, …)]
//! DROP PEER [IF EXISTS] name
//!
//! CREATE MIRROR [IF NOT EXISTS] name FROM source_peer TO destination_peer
//!     WITH TABLE MAPPING (table_entry, …)  |  WITH SCHEMA MAPPING (schema:schema, …)
//!     [WITH (option, …)]
//! CREATE MIRROR [IF NOT EXISTS] name FROM source_peer TO destination_peer
//!     FOR $$query$$ [WITH (option, …)]      a query mirror; the query: see [`query`]
//! DROP MIRROR [IF EXISTS] name
//! PAUSE MIRROR name
//! RESUME MIRROR name
//! RESYNC MIRROR name [TABLE table_name, …]
//! EXECUTE MIRROR name                       a query mirror's next run, now
//! RESET { name | ALL }        PostgreSQL's, which sqlparser does not read
//!
//! table_entry := table_name ':' table_name
//!              | '{' key ':' value, … '}'      keys: from, to (required), exclude: [column, …]
//! table_name  := [schema '.'] table
//! option      := name '=' { 'string' | number | TRUE | FALSE | word }
//! ```
//!
//! Lexical rules are PostgreSQL's: keywords in any case; unquoted names folded
//! to lower case, `"Quoted Names"` kept as written (`""` for a quote inside);
//! reserved words such as `user` or `order` must be quoted to serve as names;
//! strings are `'…'` with `''` for a quote, or `E'…'`, `$$…$$`; numbers keep
//! their text (`5432`, `-1`, `0.5`); `--` and `/* */` comments anywhere.
//! Lists are comma separated, at least one entry, no trailing comma, and an
//! option name may appear once per `WITH` list. What options mean, which are
//! required and whether a `schema` defaults to `public` are left to the server.
//!
//! The input is split into statements at every `;` token (a `;` inside a
//! string, quoted name, comment or `$$` body is not one) and empty statements
//! are skipped. As in PostgreSQL, one syntax error fails the whole input.
//! Errors carry PostgreSQL's `P` position: a 1-based character offset into
//! the whole input, pointing at the offending token or one past the end.
//!
//! Every typed statement prints, through `Display`, canonical SQL that parses
//! back to an equal value.

#![warn(missing_docs)]

mod ast;
mod error;
mod fallthrough;
mod ident;
mod lexer;
mod parser;
pub mod query;

#[cfg(test)]
mod tests;

pub use ast::{
    AlterMirror, AlterMirrorAction, CreateMirror, CreatePeer, CreateQueryMirror, DropMirror,
    DropPeer, Ident, Mapping, MappingOption, MappingValue, MirrorName, OptionValue, PeerType,
    QualifiedName, Reset, ResyncMirror, SchemaMapping, SqlOption, Statement, TableMapping,
};
pub use error::ParseError;
pub use fallthrough::{pass_through, PassThrough, Refusal, RefusalKind, DENIED_FUNCTIONS};

/// Parses `sql`, which may hold several statements separated by `;`.
///
/// Empty input, or input of only comments and semicolons, gives an empty vec.
pub fn parse(sql: &str) -> Result<Vec<Statement>, ParseError> {
    Ok(parse_spanned(sql)?
        .into_iter()
        .map(|p| p.statement)
        .collect())
}

/// A statement with the text it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    /// The statement.
    pub statement: Statement,
    /// The statement's text as written, without the `;` and the white space around it.
    pub text: &'a str,
    /// Characters of the input before `text`: add it to a position within `text` to get a
    /// position in the whole input.
    pub offset: usize,
}

/// Like [`parse`], keeping each statement's original text, so that a statement that is
/// passed on to PostgreSQL is sent exactly as the user wrote it.
pub fn parse_spanned(sql: &str) -> Result<Vec<Parsed<'_>>, ParseError> {
    parse_each(sql, |parsed| parsed)
}

/// Parses `sql` and hands each statement to `f` as soon as it is parsed, keeping only what
/// `f` returns: a long input of many statements never holds all their syntax trees at once.
/// As with [`parse`], a syntax error anywhere fails the whole input.
pub fn parse_each<'a, T>(
    sql: &'a str,
    mut f: impl FnMut(Parsed<'a>) -> T,
) -> Result<Vec<T>, ParseError> {
    let source = lexer::Source::new(sql);
    let chunks = lexer::split(&source)?;
    let mut out = Vec::with_capacity(chunks.len());
    // Each statement's tokens are dropped once it is parsed.
    for chunk in chunks {
        let statement = if parser::is_ferry_statement(&chunk) {
            parser::parse_ferry_statement(&source, &chunk)?
        } else {
            fallthrough::parse_sql_statement(&source, &chunk)?
        };
        let mut significant = chunk.significant();
        let (text, offset) = match (significant.next(), chunk.significant().last()) {
            (Some(first), Some(last)) => (
                source.text(first.span.start, last.span.end),
                source.position(first.span.start).map_or(0, |p| p - 1),
            ),
            _ => ("", 0),
        };
        out.push(f(Parsed {
            statement,
            text,
            offset,
        }));
    }
    Ok(out)
}
