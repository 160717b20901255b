//! Every way a query mirror can be wrong is named at `CREATE MIRROR`, with its SQLSTATE, and
//! creates nothing.

use ferry_e2e::{scalar, setup, sqlstate, Kind};

/// `WITH (…)` of a valid mirror over `t`, with `extra` options appended.
fn mirror(name: &str, query: &str, options: &str) -> String {
    format!("CREATE MIRROR {name} FROM src TO dst FOR $${query}$$ WITH ({options})")
}

const OK_OPTIONS: &str =
    "destination_table_name = 't', watermark_column = 'id', watermark_table_name = 'public.t'";
const OK_QUERY: &str = "SELECT * FROM t WHERE id BETWEEN {{.start}} AND {{.end}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_wrong_query_mirror_is_refused_by_name() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE t (id int8 PRIMARY KEY, note text, at timestamptz, v int4);
             INSERT INTO t VALUES (1, 'a', now(), 1);",
        )
        .await
        .unwrap();
    let db = &s.dest.ch().name;
    s.dest
        .ch()
        .client()
        .query(&format!(
            "CREATE TABLE `{db}`.plain (id Int64, note Nullable(String)) ENGINE = MergeTree ORDER BY id"
        ))
        .execute()
        .await
        .unwrap();
    s.dest
        .ch()
        .client()
        .query(&format!(
            "CREATE TABLE `{db}`.wrong_type (id String, note Nullable(String), at Nullable(DateTime64(6, 'UTC')),
               v Nullable(Int32), _ferry_run Int64, _ferry_partition Int32, _ferry_row Int64,
               _ferry_version UInt64, _ferry_is_deleted UInt8)
             ENGINE = ReplacingMergeTree(_ferry_version) ORDER BY (_ferry_run, _ferry_partition, _ferry_row)"
        ))
        .execute()
        .await
        .unwrap();
    let cases: Vec<(String, &str, &str)> = vec![
        // The options.
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, mode = 'overwrite'")), "22023", "initial_copy_only"),
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, mode = 'upsert'")), "42601", "unique_key_columns"),
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, colour = 'red'")), "42601", "colour"),
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, parallelism = 0")), "22023", "parallelism"),
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, watermark_lag = 5")), "22023", "upsert"),
        (mirror("m", "SELECT * FROM t JOIN t u USING (id) WHERE t.id BETWEEN {{.start}} AND {{.end}}", "destination_table_name = 't', watermark_column = 'id'"), "42601", "watermark_table_name"),
        (mirror("m", OK_QUERY, "watermark_column = 'id', watermark_table_name = 't'"), "42601", "destination_table_name"),
        // The query, against the options.
        (mirror("m", "SELECT * FROM t WHERE id >= {{.start}}", OK_OPTIONS), "22023", "{{.end}}"),
        (mirror("m", "SELECT * FROM t WHERE id > $1", OK_OPTIONS), "42601", "parameter"),
        (mirror("m", "SELECT 1; SELECT * FROM t WHERE id BETWEEN {{.start}} AND {{.end}}", OK_OPTIONS), "42601", "more than one statement"),
        (mirror("m", "SELECT * FROM t WHERE id BETWEEN {{.first}} AND {{.end}}", OK_OPTIONS), "42601", "braces"),
        (mirror("m", "SELECT * FROM t WHERE v BETWEEN {{.start}} AND {{.end}}", "destination_table_name = 't', watermark_column = 'id', watermark_table_name = 'public.t'"), "22023", "watermark column id"),
        (mirror("m", "SELECT * FROM u WHERE id BETWEEN {{.start}} AND {{.end}}", OK_OPTIONS), "22023", "watermark table public.t"),
        (mirror("m", "SELECT * FROM t WHERE id > {{.start}}", "destination_table_name = 't', initial_copy_only = true"), "22023", "no watermark_column"),
        (mirror("m", "SELECT * FROM t WHERE xmin > {{.start}}", "destination_table_name = 't', watermark_column = 'xmin', watermark_table_name = 't'"), "22023", "xmin"),
        (mirror("m", "SELECT t.* FROM t JOIN t u USING (id)", "destination_table_name = 't', watermark_column = 'xmin', watermark_table_name = 't'"), "0A000", "one table"),
        (mirror("m", "SELECT * FROM other", "destination_table_name = 't', watermark_column = 'xmin', watermark_table_name = 't'"), "22023", "watermark_table_name is public.t"),
        // The source.
        (mirror("m", "SELECT * FROM nope WHERE id BETWEEN {{.start}} AND {{.end}}", "destination_table_name = 't', watermark_column = 'id', watermark_table_name = 'nope'"), "42P01", "watermark table public.nope"),
        (mirror("m", "SELECT * FROM t WHERE idx BETWEEN {{.start}} AND {{.end}}", "destination_table_name = 't', watermark_column = 'idx', watermark_table_name = 't'"), "42703", "idx"),
        (mirror("m", "SELECT * FROM t WHERE note BETWEEN {{.start}} AND {{.end}}", "destination_table_name = 't', watermark_column = 'note', watermark_table_name = 't'"), "42804", "text"),
        (mirror("m", "SELECT * FRM t WHERE id BETWEEN {{.start}} AND {{.end}}", OK_OPTIONS), "42601", "the query"),
        (mirror("m", "SELECT * FROM t, missing WHERE id BETWEEN {{.start}} AND {{.end}}", OK_OPTIONS), "42P01", "missing"),
        (mirror("m", "DELETE FROM t WHERE id BETWEEN {{.start}} AND {{.end}} RETURNING *", OK_OPTIONS), "42601", "the query"),
        (mirror("m", "SELECT id, note AS id FROM t WHERE id BETWEEN {{.start}} AND {{.end}}", OK_OPTIONS), "42701", "more than one column"),
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, mode = 'upsert', unique_key_columns = 'id, nope'")), "42703", "nope"),
        // The destination.
        (mirror("m", "SELECT id, 1 AS _ferry_version FROM t WHERE id BETWEEN {{.start}} AND {{.end}}", OK_OPTIONS), "42939", "_ferry_version"),
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, setup_watermark_table_on_destination = false")), "42P01", "does not exist"),
        (mirror("m", OK_QUERY, "destination_table_name = 'wrong_type', watermark_column = 'id', watermark_table_name = 't'"), "42804", "column \"id\""),
        (mirror("m", "SELECT id, note FROM t WHERE id BETWEEN {{.start}} AND {{.end}}", "destination_table_name = 'plain', watermark_column = 'id', watermark_table_name = 't'"), "42703", "_ferry_run"),
        (mirror("m", OK_QUERY, "destination_table_name = 'no_such_db.t', watermark_column = 'id', watermark_table_name = 't'"), "3D000", "no_such_db"),
        ("CREATE MIRROR m FROM nobody TO dst FOR $$SELECT 1$$ WITH (destination_table_name = 't', initial_copy_only = true)".into(), "42704", "nobody"),
        ("CREATE MIRROR m FROM dst TO dst FOR $$SELECT 1$$ WITH (destination_table_name = 't', initial_copy_only = true)".into(), "42809", "POSTGRES"),
    ];
    for (sql, state, says) in &cases {
        let e = s
            .client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted: {sql}"));
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert_eq!(&sqlstate(&e), state, "{sql}: {message}");
        assert!(message.contains(says), "{sql}: {message}");
    }
    // Nothing was created.
    let mirrors: i64 = scalar(&s.client, "SELECT count(*) FROM mirror_status").await;
    assert_eq!(mirrors, 0);
    let tables = s
        .dest
        .ch()
        .client()
        .query(&format!(
            "SELECT count() FROM system.tables WHERE database = '{db}'"
        ))
        .fetch_one::<u64>()
        .await
        .unwrap();
    assert_eq!(tables, 2);

    // A name taken, and statements for the other kind of mirror.
    s.client
        .batch_execute(&mirror("q", OK_QUERY, OK_OPTIONS))
        .await
        .unwrap();
    let e = s
        .client
        .batch_execute(&mirror("q", OK_QUERY, OK_OPTIONS))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42710");
    s.client
        .batch_execute(&mirror("IF NOT EXISTS q", OK_QUERY, OK_OPTIONS))
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR c FROM src TO dst WITH TABLE MAPPING (t:t_cdc) WITH (do_initial_copy = false)",
        )
        .await
        .unwrap();
    let e = s
        .client
        .batch_execute("EXECUTE MIRROR c")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42809");
    s.client
        .batch_execute("DROP MIRROR c; DROP MIRROR q")
        .await
        .unwrap();
}

/// A PostgreSQL destination table that cannot take the query's result is refused by name, with
/// the SQLSTATE ClickHouse's would get; a table that fits is used as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_destination_table_that_cannot_take_the_result_is_refused() {
    let s = setup(Kind::Postgres).await;
    s.src
        .batch_execute(
            "CREATE TABLE t (id int8 PRIMARY KEY, note varchar(20), at timestamptz, v int4);
             INSERT INTO t VALUES (1, 'a', now(), 1);",
        )
        .await
        .unwrap();
    let dest = s.dest.pg().connect().await;
    dest.batch_execute(
        "CREATE TABLE wrong_type (id text, note varchar(20), at timestamptz, v int4);
         CREATE TABLE short (id int8, note varchar(20));
         CREATE TABLE no_key (id int8, note varchar(20), at timestamptz, v int4);
         CREATE TABLE extra (id int8, note varchar(20), at timestamptz, v int4, must text NOT NULL);
         CREATE TABLE fits (id int8 PRIMARY KEY, note varchar(20), at timestamptz, v int4,
                            mine text DEFAULT 'x');",
    )
    .await
    .unwrap();
    let upsert = "mode = 'upsert', unique_key_columns = 'id'";
    let cases: Vec<(String, &str, &str)> = vec![
        (mirror("m", OK_QUERY, &format!("{OK_OPTIONS}, setup_watermark_table_on_destination = false")), "42P01", "does not exist"),
        (mirror("m", OK_QUERY, "destination_table_name = 'wrong_type', watermark_column = 'id', watermark_table_name = 't'"), "42804", "column \"id\" of destination table public.wrong_type is text; the query's values are bigint"),
        (mirror("m", OK_QUERY, "destination_table_name = 'short', watermark_column = 'id', watermark_table_name = 't'"), "42703", "no column \"at\""),
        (mirror("m", OK_QUERY, &format!("destination_table_name = 'no_key', watermark_column = 'id', watermark_table_name = 't', {upsert}")), "42P16", "primary key or unique index on (id)"),
        (mirror("m", OK_QUERY, "destination_table_name = 'extra', watermark_column = 'id', watermark_table_name = 't'"), "42P16", "\"must\""),
        (mirror("m", OK_QUERY, "destination_table_name = 'no_such_schema.t', watermark_column = 'id', watermark_table_name = 't'"), "3F000", "no_such_schema"),
    ];
    for (sql, state, says) in &cases {
        let e = s
            .client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted: {sql}"));
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert_eq!(&sqlstate(&e), state, "{sql}: {message}");
        assert!(message.contains(says), "{sql}: {message}");
    }
    assert_eq!(
        s.dest.tables("public").await,
        ["extra", "fits", "no_key", "short", "wrong_type"]
    );
    // A table that fits (its own column has a default) takes the result in every mode.
    for (name, mode) in [("a", ""), ("u", upsert)] {
        let options =
            format!("destination_table_name = 'fits', watermark_column = 'id', watermark_table_name = 't', {mode}");
        s.client
            .batch_execute(&mirror(name, OK_QUERY, options.trim_end_matches(", ")))
            .await
            .unwrap();
        s.client
            .batch_execute(&format!("DROP MIRROR {name}"))
            .await
            .unwrap();
    }
    s.ferry.stop().await;
}
