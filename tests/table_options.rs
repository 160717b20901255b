//! Control over the ClickHouse tables: ORDER BY, PARTITION BY, SETTINGS and column types per
//! table and as mirror defaults, PeerDB's soft_delete and column names; each checked before
//! anything is created.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{setup, sqlstate, wait_for_state, Kind, Setup};

const TIMEOUT: Duration = Duration::from_secs(120);

/// One string column of a ClickHouse query's single row.
async fn ch_text(s: &Setup, sql: &str) -> String {
    s.dest
        .ch()
        .client()
        .query(sql)
        .fetch_one::<String>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// ClickHouse's rows of a query as text lines, polled until they equal `want`.
async fn converge(s: &Setup, sql: &str, want: &[&str]) {
    let started = Instant::now();
    loop {
        let got: Vec<String> = match s.dest.ch().client().query(sql).fetch_all::<String>().await {
            Ok(rows) => rows,
            Err(e) => vec![e.to_string()],
        };
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{sql}\n got {got:#?}\nwant {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_take_their_layout_and_peerdb_column_names() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE ev (id int8 PRIMARY KEY, tenant int4 NOT NULL,
                              created_at timestamptz NOT NULL, amount numeric(12, 2), note text);
             ALTER TABLE ev REPLICA IDENTITY FULL;
             ALTER TABLE ev ALTER COLUMN note SET STORAGE EXTERNAL;
             INSERT INTO ev SELECT g, g % 3, timestamptz '2024-01-15 00:00:00+00' + g * interval '20 days',
                                   g * 1.25, CASE WHEN g = 1 THEN repeat(md5('x'), 200) ELSE 'n' || g END
             FROM generate_series(1, 20) g;
             CREATE TABLE plain (id int8 PRIMARY KEY, v text);
             INSERT INTO plain VALUES (1, 'one');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (
                 {from: ev, to: ev, order_by: [tenant, id], partition_by: 'toYYYYMM(created_at)',
                  settings: 'min_bytes_for_wide_part = 0',
                  column_types: {amount: 'Float64', note: 'LowCardinality(String)'}},
                 plain:plain)
             WITH (do_initial_copy = true, soft_delete = true,
                   soft_delete_col_name = '_PEERDB_IS_DELETED', synced_at_col_name = '_PEERDB_SYNCED_AT',
                   partition_by = 'toYYYYMM(_PEERDB_SYNCED_AT)', table_settings = 'index_granularity = 4096')",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "m", "running", TIMEOUT).await;

    // The DDL: the table's own layout over the mirror's defaults.
    let db = &s.dest.ch().name;
    let table = |t: &str, what: &str| {
        format!("SELECT {what} FROM system.tables WHERE database = '{db}' AND name = '{t}'")
    };
    let ev_engine = ch_text(&s, &table("ev", "engine_full")).await;
    println!("ev: {ev_engine}");
    assert!(
        ev_engine.starts_with("ReplacingMergeTree(_ferry_version) "),
        "{ev_engine}"
    );
    assert!(
        ev_engine.contains("index_granularity = 4096")
            && ev_engine.contains("min_bytes_for_wide_part = 0"),
        "{ev_engine}"
    );
    assert_eq!(
        ch_text(&s, &table("ev", "partition_key")).await,
        "toYYYYMM(created_at)"
    );
    let sorting = |k: String| k.trim_matches(['(', ')']).to_owned();
    assert_eq!(
        sorting(ch_text(&s, &table("ev", "sorting_key")).await),
        "tenant, id"
    );
    assert_eq!(
        ch_text(&s, &table("plain", "partition_key")).await,
        "toYYYYMM(_PEERDB_SYNCED_AT)"
    );
    assert_eq!(
        sorting(ch_text(&s, &table("plain", "sorting_key")).await),
        "id"
    );
    let columns: Vec<String> = s
        .dest
        .ch()
        .client()
        .query(&format!(
            "SELECT concat(name, ' ', type) FROM system.columns
             WHERE database = '{db}' AND table = 'ev' ORDER BY position"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        columns,
        [
            "id Int64",
            "tenant Int32",
            "created_at DateTime64(6, 'UTC')",
            "amount Nullable(Float64)",
            "note LowCardinality(Nullable(String))",
            "_ferry_version UInt64",
            "_PEERDB_IS_DELETED UInt8",
            "_PEERDB_SYNCED_AT DateTime64(9)",
        ]
    );

    // Changes: a value converted, a row that moves to another tenant, a deletion kept
    // visible with its flag, and an update that leaves the TOASTed note alone.
    s.src
        .batch_execute(
            "UPDATE ev SET amount = 7.5 WHERE id = 2;
             UPDATE ev SET tenant = 9 WHERE id = 3;
             DELETE FROM ev WHERE id = 4;
             UPDATE ev SET amount = 0.25 WHERE id = 1;
             INSERT INTO ev VALUES (100, 1, '2025-06-01', 1.01, 'new');",
        )
        .await
        .unwrap();
    converge(
        &s,
        "SELECT concat(toString(id), ' ', toString(tenant), ' ', toString(assumeNotNull(amount)), ' ',
                       toString(length(ifNull(note, ''))), ' ', toString(_PEERDB_IS_DELETED))
         FROM ev FINAL WHERE id IN (1, 2, 3, 4, 5, 100) ORDER BY id, _PEERDB_IS_DELETED",
        &[
            "1 1 0.25 6400 0",
            "2 2 7.5 2 0",
            // The row moved: its new place, and its old one marked deleted.
            "3 9 3.75 2 0",
            "3 0 3.75 2 1",
            // Deleted, and still there under FINAL with the flag set (soft_delete).
            "4 1 5 2 1",
            "5 2 6.25 2 0",
            "100 1 1.01 3 0",
        ],
    )
    .await;
    // Each partition holds one month of created_at.
    let partitions = ch_text(
        &s,
        &format!(
            "SELECT toString(count(DISTINCT partition)) FROM system.parts
             WHERE database = '{db}' AND table = 'ev' AND active"
        ),
    )
    .await;
    assert!(
        partitions.parse::<u32>().unwrap() > 5,
        "{partitions} partitions"
    );
    s.client.batch_execute("DROP MIRROR m").await.unwrap();
    s.ferry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layouts_are_checked_before_anything_is_created() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE ev (id int8 PRIMARY KEY, tenant int4 NOT NULL, amount numeric(12, 2),
                              created_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE clash (id int8 PRIMARY KEY, _peerdb_is_deleted int4);",
        )
        .await
        .unwrap();
    let mapping = |entry: &str, options: &str| {
        format!(
            "CREATE MIRROR bad FROM src TO dst WITH TABLE MAPPING ({{from: ev, to: ev{entry}}})
             WITH (do_initial_copy = true{options})"
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            mapping(", order_by: [tenant]", ""),
            "22023",
            "must contain every key column (id missing)",
        ),
        (
            mapping(", order_by: [tenant, nope, id]", ""),
            "22023",
            "no column \"nope\"",
        ),
        (mapping(", order_by: [id, id]", ""), "22023", "given twice"),
        (
            mapping(", order_by: [tenant, id]", ""),
            "55000",
            "beyond its key, which deletions carry only with REPLICA IDENTITY FULL",
        ),
        (
            mapping(", partition_by: 'toYYYYMM(created_at'", ""),
            "22023",
            "partition_by of table public.ev",
        ),
        (
            mapping(", partition_by: 'nosuch(created_at)'", ""),
            "22023",
            "nosuch",
        ),
        (
            mapping(", partition_by: 'toYYYYMM(missing)'", ""),
            "22023",
            "\"missing\" is not a column",
        ),
        (
            mapping(", partition_by: 'created_at) SETTINGS x = 1 --'", ""),
            "22023",
            "partition_by of table public.ev",
        ),
        (
            mapping(", settings: 'index_granularityy = 5'", ""),
            "22023",
            "not a MergeTree setting",
        ),
        (
            mapping(", settings: 'a = 1; DROP'", ""),
            "22023",
            "settings of the mapping",
        ),
        (
            mapping(", column_types: {amount: 'UUID'}", ""),
            "22023",
            "cannot convert column \"amount\"",
        ),
        (
            mapping(", column_types: {amount: 'Bogus'}", ""),
            "22023",
            "cannot convert column \"amount\"",
        ),
        (
            mapping(", column_types: {id: 'String'}", ""),
            "22023",
            "is a key column",
        ),
        (
            mapping(", column_types: {nope: 'String'}", ""),
            "42703",
            "no column \"nope\"",
        ),
        (
            mapping(", column_types: {amount: 'Float64) ENGINE = Log --'}", ""),
            "22023",
            "the type of \"amount\"",
        ),
        (
            mapping("", ", table_settings = 'x'"),
            "22023",
            "table_settings",
        ),
        (mapping("", ", order_by = 'id, '"), "22023", "order_by"),
        (
            mapping("", ", soft_delete = 'yes'"),
            "22023",
            "true or false",
        ),
        (
            mapping("", ", soft_delete_col_name = '_ferry_version'"),
            "42701",
            "must differ",
        ),
        (
            "CREATE MIRROR bad FROM src TO dst WITH TABLE MAPPING (clash:clash)
             WITH (do_initial_copy = true, soft_delete_col_name = '_peerdb_is_deleted')"
                .into(),
            "42939",
            "Ferry's own columns",
        ),
    ];
    for (sql, code, text) in &cases {
        let e = s
            .client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("should fail: {sql}"));
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        println!("{code} {message}");
        assert_eq!(sqlstate(&e), *code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message:?} lacks {text:?}");
    }
    // Nothing was created: no mirror, no ClickHouse table.
    let mirrors = s
        .client
        .query("SELECT count(*) FROM mirror_status", &[])
        .await
        .unwrap()[0]
        .get::<_, i64>(0);
    assert_eq!(mirrors, 0);
    let tables: u64 = s
        .dest
        .ch()
        .client()
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase()")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(tables, 0);
    s.ferry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_destination_refuses_clickhouse_layouts() {
    let s = setup(Kind::Postgres).await;
    s.src
        .batch_execute("CREATE TABLE ev (id int8 PRIMARY KEY, tenant int4 NOT NULL)")
        .await
        .unwrap();
    for (entry, options) in [
        (", order_by: [tenant, id]", ""),
        ("", ", soft_delete = true"),
        ("", ", partition_by = 'tenant'"),
    ] {
        let sql = format!(
            "CREATE MIRROR bad FROM src TO dst WITH TABLE MAPPING ({{from: ev, to: ev{entry}}})
             WITH (do_initial_copy = true{options})"
        );
        let e = s
            .client
            .batch_execute(&sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("should fail: {sql}"));
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert_eq!(sqlstate(&e), "22023", "{sql}: {message}");
        assert!(
            message.contains("PostgreSQL destination"),
            "{sql}: {message:?}"
        );
    }
    assert!(s.dest.tables("public").await.is_empty());
    s.ferry.stop().await;
}
