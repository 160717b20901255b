//! Tests through the public entry point, [`parse`](crate::parse).

mod errors;
mod generated;
mod passthrough;
mod round_trip;
mod statements;

use crate::{parse, ParseError, Statement};

/// Parses input that must hold exactly one statement.
fn parse_one(sql: &str) -> Statement {
    let mut statements = parse(sql).unwrap_or_else(|e| panic!("{sql:?}: {e:?}"));
    assert_eq!(statements.len(), 1, "{sql:?}");
    statements.remove(0)
}

/// Parses `sql`, which must fail.
fn parse_err(sql: &str) -> ParseError {
    match parse(sql) {
        Ok(statements) => panic!("{sql:?} parsed: {statements:?}"),
        Err(e) => e,
    }
}

/// Checks parse → print → parse for every statement of `sql`, and that the
/// printed form is a fixed point. Returns the statements.
fn round_trip(sql: &str) -> Vec<Statement> {
    let statements = parse(sql).unwrap_or_else(|e| panic!("{sql:?}: {e:?}"));
    for statement in &statements {
        let printed = statement.to_string();
        let again = parse_one(&printed);
        assert_eq!(&again, statement, "{sql:?} printed as {printed:?}");
        assert_eq!(again.to_string(), printed, "printing is not stable");
    }
    statements
}
