//! Error messages and their exact positions.

use super::parse_err;
use crate::ParseError;

/// Asserts the message and that the position points at `at`, the first
/// occurrence of that text in `sql` (or, for `None`, one past the end).
fn check(sql: &str, message: &str, at: Option<&str>) {
    let error = parse_err(sql);
    let position = match at {
        Some(at) => {
            let byte = sql
                .find(at)
                .unwrap_or_else(|| panic!("{at:?} not in {sql:?}"));
            sql[..byte].chars().count() + 1
        }
        None => sql.chars().count() + 1,
    };
    assert_eq!(error, ParseError::new(message, position), "{sql:?}");
}

#[test]
fn ferry_syntax_errors() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "CREATE MIRROR m FROM pg TO ch FOR SELECT 1",
            "syntax error at or near \"SELECT\": expected the query as a dollar-quoted string \
             after FOR ($$SELECT …$$)",
            Some("SELECT"),
        ),
        (
            "CREATE MIRROR m FROM pg TO ch FOR $$SELECT 1$$ WITH",
            "syntax error at end of input: expected ( after WITH",
            None,
        ),
        (
            "EXECUTE MIRROR m now",
            "syntax error at or near \"now\": expected end of statement",
            Some("now"),
        ),
        (
            "CREATE MIRROR m FROM pg INTO ch WITH TABLE MAPPING (a:b)",
            "syntax error at or near \"INTO\": expected TO after source peer name",
            Some("INTO"),
        ),
        (
            "CREATE MIRROR m FROM pg TO ch",
            "syntax error at end of input: expected WITH TABLE MAPPING or WITH SCHEMA MAPPING \
             after destination peer name",
            None,
        ),
        (
            "CREATE MIRROR m FROM pg TO ch WITH FOO MAPPING (a:b)",
            "syntax error at or near \"FOO\": expected TABLE MAPPING or SCHEMA MAPPING after WITH",
            Some("FOO"),
        ),
        (
            "CREATE PEER p FROM",
            "syntax error at end of input: expected peer type POSTGRES or CLICKHOUSE",
            None,
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (host 'x')",
            "syntax error at or near \"'x'\": expected = after option name host",
            Some("'x'"),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH ()",
            "syntax error at or near \")\": expected option name",
            Some(")"),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (a = 1,)",
            "syntax error at or near \")\": trailing comma is not allowed",
            Some(")"),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (a = 1 b = 2)",
            "syntax error at or near \"b\": expected , or )",
            Some("b ="),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (a = -x)",
            "syntax error at or near \"x\": expected a number",
            Some("x)"),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (a = (1))",
            "syntax error at or near \"(\": expected a string, number, boolean or name as option \
             value",
            Some("(1"),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (host = 'h') extra",
            "syntax error at or near \"extra\": expected end of statement",
            Some("extra"),
        ),
        (
            "CREATE PEER FROM POSTGRES",
            "syntax error at or near \"FROM\": \"from\" is a reserved word; quote it to use it \
             as a name",
            Some("FROM"),
        ),
        (
            "DROP PEER IF EXISTS",
            "syntax error at end of input: expected peer name",
            None,
        ),
        (
            "PAUSE m",
            "syntax error at or near \"m\": expected MIRROR",
            Some("m"),
        ),
        (
            "CREATE PEER p FROM POSTGRES; RESUME MIRROR",
            "syntax error at end of input: expected mirror name",
            None,
        ),
        (
            "RESUME MIRROR ; SELECT 1",
            "syntax error at or near \";\": expected mirror name",
            Some(";"),
        ),
        (
            "DROP PEER \"\"",
            "zero-length delimited identifier at or near \"\"\"\"",
            Some("\"\""),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (\"\" = 1)",
            "zero-length delimited identifier at or near \"\"\"\"",
            Some("\"\""),
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (a = \"\")",
            "zero-length delimited identifier at or near \"\"\"\"",
            Some("\"\""),
        ),
    ];
    for (sql, message, at) in cases {
        check(sql, message, *at);
    }
}

#[test]
fn mapping_errors() {
    let prefix = "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ";
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "(a:b, c:d,)",
            "syntax error at or near \")\": trailing comma is not allowed",
            Some(")"),
        ),
        (
            "()",
            "syntax error at or near \")\": expected source table name",
            Some(")"),
        ),
        (
            "(a b)",
            "syntax error at or near \"b\": expected : after source table name",
            Some("b)"),
        ),
        (
            "(a:)",
            "syntax error at or near \")\": expected destination table name",
            Some(")"),
        ),
        (
            "(a.b.c:d)",
            "syntax error at or near \".\": expected : after source table name",
            Some(".c"),
        ),
        (
            "(a:b",
            "syntax error at end of input: expected , or )",
            None,
        ),
        (
            "({from: a, to: b, tag: x})",
            "unknown key \"tag\" in table mapping; expected from, to, exclude, order_by, partition_by, settings or column_types",
            Some("tag"),
        ),
        (
            "(x:y, {from: a, exclude: [c]})",
            "table mapping is missing \"to\"",
            Some("{"),
        ),
        ("({to: a})", "table mapping is missing \"from\"", Some("{")),
        (
            "({from: a, From: b, to: c})",
            "duplicate key \"from\" in table mapping",
            Some("From"),
        ),
        (
            "({from: a, to: b, exclude: [x,]})",
            "syntax error at or near \"]\": trailing comma is not allowed",
            Some("]"),
        ),
        (
            "({from: a, to: b,})",
            "syntax error at or near \"}\": trailing comma is not allowed",
            Some("}"),
        ),
        (
            "({})",
            "syntax error at or near \"}\": expected from, to, exclude, order_by, partition_by, settings or column_types",
            Some("}"),
        ),
        (
            "({from a, to: b})",
            "syntax error at or near \"a\": expected : after from",
            Some("a,"),
        ),
        (
            "({from: a, to: b, exclude: c})",
            "syntax error at or near \"c\": expected [ before the excluded columns",
            Some("c}"),
        ),
        (
            "(public.order:orders)",
            "syntax error at or near \"order\": \"order\" is a reserved word; quote it to use it \
             as a name",
            Some("order:"),
        ),
    ];
    for (tail, message, at) in cases {
        check(&format!("{prefix}{tail}"), message, *at);
    }
    check(
        "CREATE MIRROR m FROM pg TO ch WITH SCHEMA MAPPING (a:b,)",
        "syntax error at or near \")\": trailing comma is not allowed",
        Some(")"),
    );
    check(
        "CREATE MIRROR m FROM pg TO ch WITH SCHEMA MAPPING (a.b:c)",
        "syntax error at or near \".\": expected : after source schema name",
        Some("."),
    );
}

#[test]
fn unknown_peer_type() {
    check(
        "CREATE PEER p FROM MYSQL WITH (host = 'h')",
        "unknown peer type \"MYSQL\"; supported: POSTGRES, CLICKHOUSE",
        Some("MYSQL"),
    );
    check(
        "CREATE PEER \"日本\" FROM Ünknown",
        "unknown peer type \"Ünknown\"; supported: POSTGRES, CLICKHOUSE",
        Some("Ünknown"),
    );
    check(
        "CREATE PEER p FROM 5",
        "syntax error at or near \"5\": expected peer type POSTGRES or CLICKHOUSE",
        Some("5"),
    );
}

#[test]
fn duplicate_options() {
    check(
        "CREATE PEER p FROM POSTGRES WITH (port = 1, host = 'h', PORT = 2)",
        "duplicate option \"port\"",
        Some("PORT"),
    );
    check(
        "CREATE MIRROR m FROM a TO b WITH SCHEMA MAPPING (s:t) WITH (x = 1, \"x\" = 2)",
        "duplicate option \"x\"",
        Some("\"x\""),
    );
}

#[test]
fn positions_are_characters_not_bytes() {
    // "ü" and "日本" are multi-byte; the position counts characters.
    let sql = "SELECT 'üü 日本';\n-- ĉomment ö\nCREATE MIRROR m FROM pg INTO ch";
    let error = parse_err(sql);
    assert_eq!(error.position, 54);
    assert_eq!(sql.chars().nth(error.position - 1), Some('I'));
    check(
        sql,
        "syntax error at or near \"INTO\": expected TO after source peer name",
        Some("INTO"),
    );
}

#[test]
fn positions_with_crlf_and_tabs() {
    let sql = "SELECT 1;\r\n\tDROP PEER p;\r\n\t\tDROP MIRROR IF EXISTS m zzz";
    check(
        sql,
        "syntax error at or near \"zzz\": expected end of statement",
        Some("zzz"),
    );
    assert_eq!(parse_err(sql).position, sql.chars().count() - 2);
}

#[test]
fn error_in_a_later_statement_fails_the_whole_input() {
    check(
        "SELECT 1; DROP PEER p; CREATE PEER q FROM ORACLE",
        "unknown peer type \"ORACLE\"; supported: POSTGRES, CLICKHOUSE",
        Some("ORACLE"),
    );
}

#[test]
fn fall_through_errors() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "SELEC 1",
            "syntax error at or near \"SELEC\": expected an SQL statement",
            Some("SELEC"),
        ),
        (
            "SELECT 1; SELEC 1",
            "syntax error at or near \"SELEC\": expected an SQL statement",
            Some("SELEC 1"),
        ),
        (
            "SELECT (1",
            "syntax error at end of input: expected )",
            None,
        ),
        (
            "SELECT (1; SELECT 2",
            "syntax error at or near \";\": expected )",
            Some(";"),
        ),
        ("SELECT 1 2", "syntax error at or near \"2\"", Some("2")),
        (
            "SELECT 'ä';\n  SELECT * FROM t WHERE )",
            "syntax error at or near \")\": expected an expression",
            Some(")"),
        ),
        (
            "SELECT 'ä' FROM \"Tab\" \"X\" \"Y\"",
            "syntax error at or near \"\"Y\"\"",
            Some("\"Y\""),
        ),
    ];
    for (sql, message, at) in cases {
        check(sql, message, *at);
    }
}

#[test]
fn tokenizer_errors() {
    check(
        "SELECT 1; SELECT 'unterminated",
        "unterminated quoted string",
        Some("'unterminated"),
    );
    check(
        "DROP PEER \"unterminated",
        "unterminated quoted identifier",
        Some("\"unterminated"),
    );
    check("SELECT 1 /* open", "unterminated /* comment", None);
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let sql = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
    let error = parse_err(&sql);
    assert!(error.message.contains("nested too deeply"), "{error:?}");
    assert_eq!(error.position, 1);
}

#[test]
fn sqlparser_keyword_lists_are_not_shown() {
    // sqlparser's lists of alternatives name other dialects' objects (ICEBERG, CONNECTOR,
    // STAGE …): PostgreSQL says only where the error is.
    for (sql, at) in [
        ("ALTER WIDGET w SET (a = 1)", "WIDGET"),
        ("ALTER FOO x", "FOO"),
        ("DROP THING x", "THING"),
    ] {
        check(sql, &format!("syntax error at or near \"{at}\""), Some(at));
    }
}
