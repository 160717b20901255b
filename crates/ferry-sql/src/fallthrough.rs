//! Statements that are not Ferry's: handed to sqlparser's PostgreSQL dialect,
//! and the allow-list that decides what Ferry does with them.
//!
//! The statement's tokens are passed as they are, so sqlparser's locations are
//! already those of the whole input. Its errors end in `at Line: L, Column: C`
//! when it knows where; that is turned into a character offset and the
//! message into PostgreSQL's wording, keeping sqlparser's "expected …".
//!
//! # What a client may run ([`pass_through`])
//!
//! A statement that is not Ferry's runs against the catalog database only if its
//! shape reads and nothing else: a query (`SELECT`, `VALUES`, `WITH …`
//! without a data-modifying part, `SELECT INTO` or a locking clause), `SHOW`, or
//! `EXPLAIN` of such a query without `ANALYZE`. Transaction control, `SET`,
//! `RESET` and `DISCARD` are answered by Ferry itself and change nothing: every
//! catalog statement runs in a read-only transaction of its own, with fixed
//! settings. Everything else is refused: writes with `25006`, anything else with
//! `0A000`.
//!
//! A query may still call functions. Those that change the server's state, or
//! run SQL given as text (which would escape this check), are refused by name
//! with `42501`, wherever a name is followed by `(`, whatever schema qualifies it:
//! see [`DENIED_FUNCTIONS`]. Names in the schema `ferry` (Ferry's own tables) are
//! refused the same way, and so are Unicode-escaped identifiers (`U&"…"`), whose
//! value the token does not show. This check works on tokens, not on the syntax
//! tree, so that no position a call can take in the grammar escapes it.
//!
//! The server runs what passes as a role that can read the public views and
//! nothing else; this list is the first of the two fences, not the only one.

use sqlparser::ast::{
    DescribeAlias, Query, Set, SetExpr, Statement as SqlStatement, TransactionAccessMode,
    TransactionMode,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, Tokenizer};

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
    // A list of alternatives is sqlparser's grammar for every dialect it knows (ICEBERG,
    // CONNECTOR, STAGE …), not what Ferry or PostgreSQL accept: say only where the error is,
    // as PostgreSQL does.
    if expected.starts_with("one of ") || expected.contains(", ") {
        return ParseError::new(near, position);
    }
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

/// What Ferry does with a statement that is not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassThrough {
    /// Run it against the catalog database, read-only.
    Catalog,
    /// Answer it without touching the catalog, with this command tag.
    Local(&'static str),
}

/// Why a statement may not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A write to the catalog (SQLSTATE `25006`, read_only_sql_transaction).
    ReadOnly,
    /// Something a Ferry login may not do (`42501`, insufficient_privilege).
    Privilege,
    /// A statement Ferry does not run (`0A000`, feature_not_supported).
    Unsupported,
}

impl RefusalKind {
    /// The SQLSTATE PostgreSQL uses for this kind of refusal.
    pub fn sqlstate(self) -> &'static str {
        match self {
            RefusalKind::ReadOnly => "25006",
            RefusalKind::Privilege => "42501",
            RefusalKind::Unsupported => "0A000",
        }
    }
}

/// A statement the allow-list refuses, with a message and hint for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// What kind of refusal.
    pub kind: RefusalKind,
    /// PostgreSQL-style message.
    pub message: String,
    /// What the user can do instead.
    pub hint: Option<String>,
}

impl Refusal {
    fn new(kind: RefusalKind, message: String, hint: &str) -> Self {
        Refusal {
            kind,
            message,
            hint: Some(hint.to_owned()),
        }
    }
}

const READ_HINT: &str =
    "Through Ferry, SQL may read the catalog views (peers, mirror_status, mirror_tables, \
     cdc_batches) and the system catalogs: SELECT, VALUES, SHOW and EXPLAIN.";
const WRITE_HINT: &str =
    "The catalog changes only through Ferry's own statements (CREATE PEER, CREATE MIRROR, …).";

/// Functions refused by name (or by the prefix before `*`): they change the server's
/// state (locks, slots, backends, configuration, WAL, statistics, sequences, large
/// objects, notifications, files) or run SQL passed to them as text.
pub const DENIED_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_advisory_*",
    "pg_try_advisory_*",
    "pg_notify",
    "nextval",
    "setval",
    "lo_*",
    "loread",
    "lowrite",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_log_backend_memory_contexts",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_promote",
    "pg_wal_replay_*",
    "pg_backup_*",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_create_*",
    "pg_drop_*",
    "pg_copy_*",
    "pg_replication_*",
    "pg_logical_*",
    "pg_stat_reset*",
    "pg_read_*",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "pg_import_system_collations",
    "pg_export_snapshot",
    "txid_current",
    "pg_current_xact_id",
    "query_to_xml*",
    "cursor_to_xml*",
    "ts_stat",
    "ts_rewrite",
    "dblink*",
];

fn is_denied_function(name: &str) -> bool {
    DENIED_FUNCTIONS
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        })
}

/// Decides what to do with a statement that is not Ferry's: `text` is the statement as
/// written (one statement), `statement` what sqlparser made of it.
pub fn pass_through(statement: &SqlStatement, text: &str) -> Result<PassThrough, Refusal> {
    let kind = shape(statement, text)?;
    if kind == PassThrough::Catalog {
        check_names(text)?;
    }
    Ok(kind)
}

/// The allow-list of statement shapes.
fn shape(statement: &SqlStatement, text: &str) -> Result<PassThrough, Refusal> {
    use PassThrough::{Catalog, Local};
    Ok(match statement {
        SqlStatement::Query(q) => {
            check_query(q)?;
            Catalog
        }
        SqlStatement::ShowVariable { .. } => Catalog,
        SqlStatement::Explain {
            describe_alias: DescribeAlias::Explain,
            analyze,
            statement,
            options,
            ..
        } => {
            let analyzes = *analyze
                || options.iter().flatten().any(|o| {
                    let name = o.name.value.to_ascii_lowercase();
                    (name == "analyze" || name == "analyse")
                        && !o.arg.as_ref().is_some_and(|a| {
                            let a = a.to_string().to_ascii_lowercase();
                            a == "false" || a == "off" || a == "0"
                        })
                });
            if analyzes {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    "EXPLAIN ANALYZE is not supported through Ferry: it runs the statement".into(),
                    "Use EXPLAIN without ANALYZE.",
                ));
            }
            match statement.as_ref() {
                SqlStatement::Query(q) => check_query(q)?,
                inner => {
                    return match shape(inner, "")? {
                        Catalog => Ok(Catalog),
                        Local(_) => Err(unsupported("EXPLAIN of this statement".into())),
                    }
                }
            }
            Catalog
        }
        SqlStatement::StartTransaction { .. } => Local("BEGIN"),
        SqlStatement::Commit { .. } => Local("COMMIT"),
        SqlStatement::Rollback { .. } => Local("ROLLBACK"),
        SqlStatement::Savepoint { .. } => Local("SAVEPOINT"),
        SqlStatement::ReleaseSavepoint { .. } => Local("RELEASE"),
        SqlStatement::Discard { .. } => Local("DISCARD ALL"),
        SqlStatement::Set(set) => check_set(set)?,
        SqlStatement::Insert(_) => return Err(write_refusal("INSERT")),
        SqlStatement::Update { .. } => return Err(write_refusal("UPDATE")),
        SqlStatement::Delete(_) => return Err(write_refusal("DELETE")),
        SqlStatement::Merge { .. } => return Err(write_refusal("MERGE")),
        _ => {
            let name = command_name(text);
            let first = name.split(' ').next().unwrap_or_default();
            const WRITES: &[&str] = &[
                "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "CREATE", "ALTER", "DROP",
                "GRANT", "REVOKE", "COMMENT", "REINDEX", "CLUSTER", "VACUUM", "ANALYZE", "ANALYSE",
                "REFRESH", "SECURITY", "IMPORT", "REASSIGN",
            ];
            return Err(if WRITES.contains(&first) {
                write_refusal(&name)
            } else {
                unsupported(name)
            });
        }
    })
}

fn write_refusal(name: &str) -> Refusal {
    Refusal::new(
        RefusalKind::ReadOnly,
        format!("cannot execute {name} in a read-only transaction"),
        WRITE_HINT,
    )
}

fn unsupported(name: String) -> Refusal {
    let name = if name.is_empty() {
        "this statement".to_owned()
    } else {
        name
    };
    Refusal::new(
        RefusalKind::Unsupported,
        format!("{name} is not supported through Ferry"),
        READ_HINT,
    )
}

/// `SET` changes nothing (each catalog statement runs with fixed settings) and is
/// answered as PostgreSQL would, except what would change who runs the SQL or make the
/// transaction writable.
fn check_set(set: &Set) -> Result<PassThrough, Refusal> {
    let denied_role = |name: &str| {
        Refusal::new(
            RefusalKind::Privilege,
            format!("permission denied to set {name}"),
            "Statements through Ferry run as Ferry's read-only role.",
        )
    };
    match set {
        Set::SetRole { .. } => Err(denied_role("role")),
        Set::SingleAssignment { variable, .. } => {
            let name = variable.to_string().to_ascii_lowercase();
            let name = name.trim_matches('"');
            if name == "role" || name.contains("authorization") {
                return Err(denied_role("session authorization"));
            }
            if name == "transaction_read_only" || name == "default_transaction_read_only" {
                return Err(read_write_refusal());
            }
            Ok(PassThrough::Local("SET"))
        }
        Set::SetTransaction { modes, .. } => {
            if modes.contains(&TransactionMode::AccessMode(
                TransactionAccessMode::ReadWrite,
            )) {
                return Err(read_write_refusal());
            }
            Ok(PassThrough::Local("SET"))
        }
        _ => Ok(PassThrough::Local("SET")),
    }
}

fn read_write_refusal() -> Refusal {
    Refusal::new(
        RefusalKind::ReadOnly,
        "cannot set transaction read-write mode: the catalog is read-only through Ferry".into(),
        WRITE_HINT,
    )
}

/// A query reads only: no data-modifying `WITH`, no `SELECT INTO`, no row locks.
fn check_query(q: &Query) -> Result<(), Refusal> {
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            check_query(&cte.query)?;
        }
    }
    if !q.locks.is_empty() {
        return Err(write_refusal("SELECT FOR UPDATE/SHARE"));
    }
    check_set_expr(&q.body)
}

fn check_set_expr(body: &SetExpr) -> Result<(), Refusal> {
    match body {
        SetExpr::Select(s) if s.into.is_some() => Err(write_refusal("SELECT INTO")),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => Ok(()),
        SetExpr::Query(q) => check_query(q),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left)?;
            check_set_expr(right)
        }
        SetExpr::Insert(_) => Err(write_refusal("INSERT")),
        SetExpr::Update(_) => Err(write_refusal("UPDATE")),
        SetExpr::Delete(_) => Err(write_refusal("DELETE")),
        SetExpr::Merge(_) => Err(write_refusal("MERGE")),
    }
}

/// Walks the tokens: a denied function name before `(`, a name in the schema `ferry`,
/// or a Unicode-escaped identifier refuses the statement.
fn check_names(text: &str) -> Result<(), Refusal> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text).tokenize().map_err(|e| {
        Refusal::new(
            RefusalKind::Unsupported,
            format!("statement could not be checked: {}", e.message),
            READ_HINT,
        )
    })?;
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    for (i, token) in significant.iter().enumerate() {
        let Token::Word(w) = token else { continue };
        let next = significant.get(i + 1);
        // Quoted names are compared without case too: refusing more is safe.
        let name = w.value.to_ascii_lowercase();
        if next == Some(&&Token::LParen) && is_denied_function(&name) {
            return Err(Refusal::new(
                RefusalKind::Privilege,
                format!("permission denied for function {name}"),
                "Through Ferry, functions that change the server's state or run SQL given \
                 as text are refused.",
            ));
        }
        if next == Some(&&Token::Period) && name == "ferry" {
            return Err(Refusal::new(
                RefusalKind::Privilege,
                "permission denied for schema ferry".into(),
                "Ferry's own tables are not readable through Ferry: read the views peers, \
                 mirror_status, mirror_tables and cdc_batches.",
            ));
        }
        if w.quote_style.is_none()
            && name == "u"
            && next == Some(&&Token::Ampersand)
            && matches!(significant.get(i + 2), Some(Token::Word(q)) if q.quote_style.is_some())
        {
            return Err(Refusal::new(
                RefusalKind::Unsupported,
                "Unicode-escaped identifiers (U&\"…\") are not supported through Ferry".into(),
                "Write the identifier without escapes.",
            ));
        }
    }
    Ok(())
}

/// The statement's command as PostgreSQL names it in messages: its first word, or its
/// first two for `CREATE`, `ALTER` and `DROP` (`CREATE TABLE`), in upper case.
fn command_name(text: &str) -> String {
    let mut words = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase);
    let Some(first) = words.next() else {
        return String::new();
    };
    if matches!(first.as_str(), "CREATE" | "ALTER" | "DROP") {
        let mut second = words.next();
        if second.as_deref() == Some("OR") {
            second = words.nth(1);
        }
        if let Some(second) = second {
            return format!("{first} {second}");
        }
    }
    first
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
