//! The allow-list for statements that are not Ferry's ([`pass_through`]).

use crate::{parse_spanned, pass_through, PassThrough, RefusalKind, Statement};

/// What the allow-list says about the one statement in `sql`.
fn check(sql: &str) -> Result<PassThrough, RefusalKind> {
    let parsed = parse_spanned(sql).unwrap_or_else(|e| panic!("{sql:?}: {e:?}"));
    assert_eq!(parsed.len(), 1, "{sql:?}");
    let Statement::Sql(statement) = &parsed[0].statement else {
        panic!("{sql:?} is Ferry's own");
    };
    pass_through(statement, parsed[0].text).map_err(|r| r.kind)
}

#[test]
fn reads_run_on_the_catalog() {
    for sql in [
        "SELECT * FROM mirror_status",
        "select name, options->>'host' from peers where type = 'postgres' order by 1 limit 3",
        "VALUES (1, 'a'), (2, 'b')",
        "WITH m AS (SELECT * FROM mirror_tables) SELECT count(*) FROM m",
        "SELECT 1 UNION ALL (SELECT 2 EXCEPT SELECT 3)",
        "SHOW search_path",
        "SHOW ALL",
        "EXPLAIN SELECT * FROM cdc_batches",
        "EXPLAIN (FORMAT JSON, VERBOSE) SELECT 1",
        "EXPLAIN (ANALYZE false) SELECT 1",
        "SELECT pg_sleep(0.1)",
        // What psql's \d and tab completion send.
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname OPERATOR(pg_catalog.~) '^(peers)$' COLLATE pg_catalog.default \
         AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3",
        "SELECT pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c \
         WHERE c.relkind IN ('r', 'v') AND substring(pg_catalog.quote_ident(c.relname),1,3)='mir' LIMIT 1000",
        "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a",
        // Strings and comments that only look like calls stay strings and comments.
        "SELECT 'set_config(1)', $$pg_advisory_lock(1)$$ /* ferry.peers */ -- lo_import(
",
        "SELECT 'ferry.peers' AS set_config",
    ] {
        assert_eq!(check(sql), Ok(PassThrough::Catalog), "{sql}");
    }
}

#[test]
fn session_statements_are_answered_locally() {
    for (sql, tag) in [
        ("BEGIN", "BEGIN"),
        ("START TRANSACTION READ WRITE", "BEGIN"),
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT a", "SAVEPOINT"),
        ("ROLLBACK TO SAVEPOINT a", "ROLLBACK"),
        ("RELEASE SAVEPOINT a", "RELEASE"),
        ("SET search_path = public", "SET"),
        ("SET SESSION statement_timeout TO 0", "SET"),
        ("SET TIME ZONE 'UTC'", "SET"),
        ("SET extra_float_digits = 3", "SET"),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET"),
        ("DISCARD ALL", "DISCARD ALL"),
    ] {
        assert_eq!(check(sql), Ok(PassThrough::Local(tag)), "{sql}");
    }
}

#[test]
fn writes_are_refused_as_read_only() {
    for sql in [
        "INSERT INTO ferry.peers (name) VALUES ('x')",
        "UPDATE peers SET name = 'x'",
        "DELETE FROM ferry.schema_migrations",
        "TRUNCATE ferry.settings",
        "CREATE TABLE public.t (a int)",
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        "DROP VIEW peers",
        "ALTER ROLE ferry_reader SUPERUSER",
        "GRANT ALL ON peers TO PUBLIC",
        "WITH d AS (DELETE FROM ferry.peers RETURNING *) SELECT * FROM d",
        "SELECT * INTO TEMP t FROM peers",
        "SELECT * FROM peers FOR UPDATE",
        "SELECT * FROM peers FOR SHARE",
        "SET TRANSACTION READ WRITE",
        "SET default_transaction_read_only = off",
        "VACUUM",
        "COMMENT ON TABLE peers IS 'x'",
    ] {
        assert_eq!(check(sql), Err(RefusalKind::ReadOnly), "{sql}");
    }
}

#[test]
fn other_statements_are_unsupported() {
    for sql in [
        "COPY (SELECT 1) TO PROGRAM 'id > /tmp/x'",
        "COPY ferry.peers TO '/tmp/f'",
        "COPY ferry.peers TO STDOUT",
        "LISTEN x",
        "NOTIFY x",
        "CALL p()",
        "PREPARE s AS SELECT 1",
        "EXECUTE s",
        "DECLARE c CURSOR FOR SELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
        "EXPLAIN (ANALYZE) SELECT 1",
        "EXPLAIN (analyse on, costs off) SELECT 1",
        "DESCRIBE peers",
    ] {
        assert_eq!(check(sql), Err(RefusalKind::Unsupported), "{sql}");
    }
}

#[test]
fn state_changing_functions_and_ferry_tables_are_refused() {
    for sql in [
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT pg_ls_dir('.')",
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity",
        "SELECT pg_reload_conf()",
        "SELECT pg_switch_wal()",
        "SELECT pg_stat_reset()",
        "SELECT pg_create_logical_replication_slot('x', 'pgoutput')",
        "SELECT pg_drop_replication_slot('ferry_slot')",
        "SELECT pg_advisory_lock(5064924165437853511)",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT \"set_config\"('role', 'postgres', true)",
        "SELECT PG_CATALOG . SET_CONFIG /* split */ ('role', 'postgres', true)",
        "SELECT nextval('s')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_notify('c', 'x')",
        "SELECT * FROM query_to_xml('select pg_advisory_lock(1)', true, true, '')",
        "SELECT 1 FROM ts_stat('select 1')",
        "SELECT * FROM ferry.peers",
        "SELECT secret FROM \"ferry\".peers",
        "SELECT * FROM (SELECT 1) a, ferry.settings",
        "EXPLAIN SELECT * FROM ferry.peers",
        "WITH x AS (SELECT set_config('role', 'postgres', false)) SELECT * FROM x",
        "SELECT (SELECT pg_advisory_lock(1))",
    ] {
        assert_eq!(check(sql), Err(RefusalKind::Privilege), "{sql}");
    }
    // Session authorization by any spelling.
    for sql in [
        "SET ROLE postgres",
        "SET LOCAL ROLE postgres",
        "SET role = 'postgres'",
        "SET session_authorization = postgres",
    ] {
        assert_eq!(check(sql), Err(RefusalKind::Privilege), "{sql}");
    }
}

#[test]
fn unicode_escaped_identifiers_are_refused() {
    assert_eq!(
        check("SELECT U&\"set\\005fconfig\"('role', 'postgres', true)"),
        Err(RefusalKind::Unsupported)
    );
    // A Unicode string literal is a value, not a name.
    assert_eq!(
        check("SELECT U&'d\\0061t\\+000061'"),
        Ok(PassThrough::Catalog)
    );
}

#[test]
fn reset_parses_and_prints() {
    for (sql, printed) in [
        ("RESET ALL", "RESET all"),
        ("reset search_path", "RESET search_path"),
        ("RESET myext.Level", "RESET myext.level"),
        ("RESET SESSION AUTHORIZATION", "RESET session authorization"),
        ("RESET \"Odd\"", "RESET \"Odd\""),
    ] {
        let statements = crate::tests::round_trip(sql);
        assert_eq!(statements[0].to_string(), printed);
        assert!(matches!(statements[0], Statement::Reset(_)));
    }
    for sql in ["RESET", "RESET a.", "RESET 1", "RESET a b = c"] {
        crate::tests::parse_err(sql);
    }
}
