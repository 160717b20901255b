//! Query mirrors end to end: the daemon in-process, real PostgreSQL and ClickHouse.
//!
//! Each test makes its own source and destination databases. Runs are awaited by polling the
//! catalog (`mirror_status.last_watermark`, `qrep_runs`), never by sleeping a fixed time.

use std::time::{Duration, Instant};

use ferry_clickhouse::ClickHouseDestination;
use ferry_core::destination::{
    Destination, Load, MirrorContext, QueryPartition, QueryTable, TargetName, VersionSource,
};
use ferry_core::peer::ClickhouseConfig;
use ferry_core::qrep::QueryMode;
use ferry_core::{ColumnSchema, ValueKind};
use ferry_e2e::{
    clickhouse_row_bytes, expected_rows, setup, sqlstate, wait_for_state, ChServer, Kind, Setup,
    ALL_TYPES_ROWS, ALL_TYPES_TABLE,
};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A ClickHouse destination for the test server's database `db`, as a mirror builds it.
fn clickhouse(db: &str) -> ClickHouseDestination {
    let ch = ChServer::from_env();
    let cfg = ClickhouseConfig {
        host: ch.host.clone(),
        port: ch.http_port,
        user: "default".into(),
        password: String::new(),
        database: db.to_owned(),
        disable_tls: true,
        ssl_root_cert: None,
        compression: None,
    };
    let context = MirrorContext {
        mirror: "t".into(),
        unrepresentable: Default::default(),
        layouts: Default::default(),
        meta_columns: Default::default(),
    };
    ClickHouseDestination::new(&cfg, context).unwrap()
}

/// A binary COPY stream of `(id int8, note text)` rows.
fn copy_stream(rows: &[(i64, &str)]) -> bytes::Bytes {
    use ferry_core::binary_copy::write;
    let mut out = Vec::new();
    write::header(&mut out, 0, &[]);
    for (id, note) in rows {
        let id = id.to_be_bytes();
        write::tuple(&mut out, [Some(&id[..]), Some(note.as_bytes())]);
    }
    write::trailer(&mut out);
    out.into()
}

/// Polls until `mirror_status.last_watermark` of `mirror` is `watermark`; panics on a failed
/// mirror or after [`TIMEOUT`].
async fn wait_watermark(client: &Client, mirror: &str, watermark: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = client
            .query_one(
                "SELECT state, coalesce(last_watermark, ''), coalesce(last_error, '')
                 FROM mirror_status WHERE mirror = $1",
                &[&mirror],
            )
            .await
            .expect("mirror_status");
        let (state, w, err): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if w == watermark {
            return;
        }
        assert_ne!(state, "failed", "mirror {mirror} failed: {err}");
        assert!(
            Instant::now() < deadline,
            "mirror {mirror} did not reach watermark {watermark} (at {w:?}, {state})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One value from ClickHouse, as text.
async fn ch_text(s: &Setup, sql: &str) -> String {
    let sql = sql.replace("{db}", &format!("`{}`", s.dest.ch().name));
    let mut cursor = s
        .dest
        .ch()
        .client()
        .query(&sql)
        .fetch_bytes("TSV")
        .expect("ClickHouse query");
    let bytes = cursor.collect().await.expect("ClickHouse result");
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .trim_end()
        .to_owned()
}

/// One value from the source, as text.
async fn pg_text(s: &Setup, sql: &str) -> String {
    let r = s.src.query_one(sql, &[]).await.expect("source query");
    r.get::<_, Option<String>>(0).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_of_a_keyless_table_by_an_integer_watermark() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE events (seq bigint NOT NULL, kind text, amount numeric(12, 2));
             INSERT INTO events SELECT g, 'k' || (g % 7), g * 1.25 FROM generate_series(1, 1000) g;
             INSERT INTO events SELECT g, 'dup', 1 FROM generate_series(1, 3) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR ev FROM src TO dst FOR
             $$SELECT seq, kind, amount FROM public.events WHERE seq BETWEEN {{.start}} AND {{.end}}$$
             WITH (destination_table_name = 'events', watermark_column = 'seq',
                   watermark_table_name = 'public.events', mode = 'append', parallelism = 3,
                   num_rows_per_partition = 100, refresh_interval = 1)",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "ev", "1000").await;
    let fingerprint =
        "SELECT count(*)::text || ' ' || sum(seq)::text || ' ' || trim_scale(sum(amount))::text FROM events";
    assert_eq!(
        ch_text(&s, "SELECT toString(count()) || ' ' || toString(sum(seq)) || ' ' || toString(sum(amount)) FROM {db}.events").await,
        pg_text(&s, fingerprint).await
    );
    // New rows (and rows whose values change but whose watermark does not) between runs.
    s.src
        .batch_execute(
            "INSERT INTO events SELECT g, 'late', 2 FROM generate_series(1001, 1250) g;
             UPDATE events SET kind = 'changed' WHERE seq <= 10;",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "ev", "1250").await;
    assert_eq!(
        ch_text(&s, "SELECT toString(count()) FROM {db}.events").await,
        "1253"
    );
    assert_eq!(
        ch_text(
            &s,
            "SELECT toString(count()) FROM {db}.events WHERE kind = 'late'"
        )
        .await,
        "250"
    );
    let runs: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM qrep_runs WHERE mirror = 'ev' AND state = 'done'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(runs >= 2, "{runs} runs");
    s.client.batch_execute("DROP MIRROR ev").await.unwrap();
    let e = s
        .client
        .batch_execute("EXECUTE MIRROR ev")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upsert_by_a_timestamp_keeps_the_newest_row_of_every_key() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE items (id int4 PRIMARY KEY, name text, price numeric(10, 2),
                                 updated_at timestamptz NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g, g, '2024-01-01'::timestamptz + g * interval '1 second'
               FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR it FROM src TO dst FOR
             $$ SELECT * FROM public.items WHERE updated_at BETWEEN {{.start}} AND {{.end}} $$
             WITH (destination_table_name = 'items', watermark_column = 'updated_at',
                   watermark_table_name = 'public.items', mode = 'upsert', unique_key_columns = 'id',
                   parallelism = 2, num_rows_per_partition = 60, refresh_interval = 1,
                   setup_watermark_table_on_destination = true)",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "it", "2024-01-01 00:08:20+00").await;
    let names = ["id", "name", "price", "updated_at"];
    let expected = expected_rows(&s.source, "items", "id").await;
    assert_eq!(
        clickhouse_row_bytes(s.dest.ch(), "items", &names, "id").await,
        expected.rows_bytes
    );
    // Updates (which move the watermark) and inserts between runs.
    s.src
        .batch_execute(
            "UPDATE items SET price = price * 10, updated_at = '2024-02-01'
               WHERE id % 50 = 0;
             INSERT INTO items VALUES (1000, 'new', 1.5, '2024-02-01 00:00:01');",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "it", "2024-02-01 00:00:01+00").await;
    let expected = expected_rows(&s.source, "items", "id").await;
    assert_eq!(expected.rows, 501);
    assert_eq!(
        clickhouse_row_bytes(s.dest.ch(), "items", &names, "id").await,
        expected.rows_bytes
    );
    // EXECUTE MIRROR runs it now: with nothing new, the watermark stays.
    s.client.batch_execute("EXECUTE MIRROR it").await.unwrap();
    let status = s
        .client
        .query_one(
            "SELECT kind, last_watermark, rows_last_run, next_run_at IS NOT NULL
             FROM mirror_status WHERE mirror = 'it'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status.get::<_, String>(0), "query");
    assert_eq!(status.get::<_, String>(1), "2024-02-01 00:00:01+00");
    assert!(status.get::<_, bool>(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_type_arrives_exactly_through_a_query() {
    let s = setup(Kind::ClickHouse).await;
    s.src.batch_execute(ALL_TYPES_TABLE).await.unwrap();
    s.src.batch_execute(ALL_TYPES_ROWS).await.unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR ty FROM src TO dst FOR
             $$SELECT * FROM all_types WHERE id BETWEEN {{.start}} AND {{.end}}$$
             WITH (destination_table_name = 'all_types', watermark_column = 'id',
                   watermark_table_name = 'all_types', num_rows_per_partition = 1,
                   mode = 'upsert', unique_key_columns = 'id', initial_copy_only = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "ty", "completed", TIMEOUT).await;
    let expected = expected_rows(&s.source, "all_types", "id").await;
    let names: Vec<&str> = expected.columns.iter().map(|c| c.name.as_str()).collect();
    let got = clickhouse_row_bytes(s.dest.ch(), "all_types", &names, "id").await;
    assert_eq!(got.len(), expected.rows_bytes.len());
    assert!(got == expected.rows_bytes, "the rows differ");
    // Four partitions of one row each.
    let p: i64 = s
        .client
        .query_one("SELECT partitions FROM qrep_runs WHERE mirror = 'ty'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xmin_follows_inserts_and_updates_of_a_table_without_a_usable_column() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE accounts (id int8 PRIMARY KEY, owner text, balance int8);
             INSERT INTO accounts SELECT g, 'o' || g, g * 100 FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    s.src
        .batch_execute("VACUUM ANALYZE accounts")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR ac FROM src TO dst FOR $$SELECT id, owner, balance FROM accounts a$$
             WITH (destination_table_name = 'accounts', watermark_column = 'xmin',
                   watermark_table_name = 'accounts', mode = 'upsert', unique_key_columns = 'id',
                   num_rows_per_partition = 700, parallelism = 2, refresh_interval = 1)",
        )
        .await
        .unwrap();
    let names = ["id", "owner", "balance"];
    let deadline = Instant::now() + TIMEOUT;
    for round in 0..3 {
        if round > 0 {
            s.src
                .batch_execute(&format!(
                    "UPDATE accounts SET balance = balance + {round} WHERE id % 7 = {round};
                     INSERT INTO accounts SELECT g, 'r{round}', 0 FROM generate_series({0}, {1}) g;",
                    3000 + round * 100,
                    3000 + round * 100 + 49
                ))
                .await
                .unwrap();
        }
        let expected = expected_rows(&s.source, "accounts", "id").await;
        loop {
            if clickhouse_row_bytes(s.dest.ch(), "accounts", &names, "id").await
                == expected.rows_bytes
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: ClickHouse never matched"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Each run's range is of transaction ids, cut by CTID blocks.
    let w: String = s
        .client
        .query_one(
            "SELECT last_watermark FROM mirror_status WHERE mirror = 'ac'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(w.parse::<u64>().is_ok(), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_lands_as_one_table() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE customers (id int4 PRIMARY KEY, name text NOT NULL);
             CREATE TABLE orders (id int8 PRIMARY KEY, customer int4 REFERENCES customers,
                                  total numeric(12, 2), placed_at timestamp NOT NULL);
             INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 20) g;
             INSERT INTO orders SELECT g, 1 + g % 20, g / 4.0, '2024-03-01'::timestamp + g * interval '1 minute'
               FROM generate_series(1, 400) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR oj FROM src TO dst FOR $$
               SELECT o.id, c.name AS customer_name, o.total, o.placed_at
               FROM orders o JOIN customers c ON c.id = o.customer
               WHERE o.placed_at BETWEEN {{.start}} AND {{.end}} AND o.total > 1
             $$ WITH (destination_table_name = 'order_lines', watermark_column = 'placed_at',
                      watermark_table_name = 'orders', mode = 'upsert', unique_key_columns = 'id',
                      refresh_interval = 1, num_rows_per_partition = 100)",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "oj", "2024-03-01 06:40:00").await;
    let q =
        "SELECT count(*)::text || ' ' || sum(o.id)::text || ' ' || trim_scale(sum(o.total))::text
             FROM orders o JOIN customers c ON c.id = o.customer WHERE o.total > 1";
    assert_eq!(
        ch_text(&s, "SELECT toString(count()) || ' ' || toString(sum(id)) || ' ' || toString(sum(total)) FROM {db}.order_lines FINAL").await,
        pg_text(&s, q).await
    );
    assert_eq!(
        ch_text(
            &s,
            "SELECT customer_name FROM {db}.order_lines FINAL WHERE id = 21"
        )
        .await,
        "c2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite_replaces_the_table_at_once() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE prices (sku int4 PRIMARY KEY, price int8);
             INSERT INTO prices SELECT g, g FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let create = |name: &str| {
        format!(
            "CREATE MIRROR {name} FROM src TO dst FOR $$SELECT sku, price FROM prices$$
             WITH (destination_table_name = 'prices', mode = 'overwrite', initial_copy_only = true)"
        )
    };
    s.client.batch_execute(&create("ow1")).await.unwrap();
    wait_for_state(&s.client, "ow1", "completed", TIMEOUT).await;
    assert_eq!(
        ch_text(
            &s,
            "SELECT toString(count()) || ' ' || toString(sum(price)) FROM {db}.prices"
        )
        .await,
        "20000 200010000"
    );
    // The table stays after DROP; a second overwrite replaces its contents.
    s.client.batch_execute("DROP MIRROR ow1").await.unwrap();
    s.src
        .batch_execute("DELETE FROM prices WHERE sku > 15000; UPDATE prices SET price = price * 2;")
        .await
        .unwrap();
    s.client.batch_execute(&create("ow2")).await.unwrap();
    // Until the swap the old contents show, whole; then the new ones; never an empty table.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = ch_text(
            &s,
            "SELECT toString(count()) || ' ' || toString(sum(price)) FROM {db}.prices",
        )
        .await;
        if seen == "15000 225015000" {
            break;
        }
        assert_eq!(
            seen, "20000 200010000",
            "a state between old and new showed"
        );
        assert!(Instant::now() < deadline, "the overwrite never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_state(&s.client, "ow2", "completed", TIMEOUT).await;
    assert_eq!(
        ch_text(&s, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name LIKE '%ferry_overwrite'").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watermark_lag_picks_up_a_late_commit() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE feed (id int8 PRIMARY KEY, at timestamptz NOT NULL, note text);
             INSERT INTO feed VALUES (1, '2024-05-01 10:00:00+00', 'first');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR fd FROM src TO dst FOR
             $$SELECT * FROM feed WHERE at BETWEEN {{.start}} AND {{.end}}$$
             WITH (destination_table_name = 'feed', watermark_column = 'at', mode = 'upsert',
                   unique_key_columns = 'id', refresh_interval = 1, watermark_lag = 600)",
        )
        .await
        .unwrap();
    // (watermark_table_name left out: the table the query reads.)
    wait_watermark(&s.client, "fd", "2024-05-01 10:00:00+00").await;
    // A transaction stamps its row early and commits late: meanwhile a later row commits and
    // the watermark passes the early stamp.
    let late = s.source.connect().await;
    late.batch_execute("BEGIN; INSERT INTO feed VALUES (2, '2024-05-01 10:01:00+00', 'late');")
        .await
        .unwrap();
    s.src
        .batch_execute("INSERT INTO feed VALUES (3, '2024-05-01 10:05:00+00', 'third')")
        .await
        .unwrap();
    wait_watermark(&s.client, "fd", "2024-05-01 10:05:00+00").await;
    late.batch_execute("COMMIT").await.unwrap();
    // Within the lag: the next runs read it.
    let deadline = Instant::now() + TIMEOUT;
    while ch_text(
        &s,
        "SELECT toString(count()) FROM {db}.feed FINAL WHERE note = 'late'",
    )
    .await
        != "1"
    {
        assert!(Instant::now() < deadline, "the late row never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ch_text(&s, "SELECT toString(count()) FROM {db}.feed FINAL").await,
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_execute() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE log (n int8 NOT NULL);
             INSERT INTO log SELECT generate_series(1, 10);",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR lg FROM src TO dst FOR $$SELECT n FROM log WHERE n BETWEEN {{.start}} AND {{.end}}$$
             WITH (destination_table_name = 'log', watermark_column = 'n', watermark_table_name = 'log',
                   refresh_interval = 3600)",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "lg", "10").await;
    s.src
        .batch_execute("INSERT INTO log SELECT generate_series(11, 20)")
        .await
        .unwrap();
    // The next run is an hour away: EXECUTE MIRROR brings it now.
    s.client.batch_execute("EXECUTE MIRROR lg").await.unwrap();
    wait_watermark(&s.client, "lg", "20").await;
    s.client.batch_execute("PAUSE MIRROR lg").await.unwrap();
    let e = s
        .client
        .batch_execute("EXECUTE MIRROR lg")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    s.src
        .batch_execute("INSERT INTO log SELECT generate_series(21, 25)")
        .await
        .unwrap();
    s.client.batch_execute("RESUME MIRROR lg").await.unwrap();
    s.client.batch_execute("EXECUTE MIRROR lg").await.unwrap();
    wait_watermark(&s.client, "lg", "25").await;
    assert_eq!(
        ch_text(
            &s,
            "SELECT toString(count()) || ' ' || toString(sum(n)) FROM {db}.log"
        )
        .await,
        "25 325"
    );
    for (sql, state) in [
        ("RESYNC MIRROR lg", "0A000"),
        ("RESYNC MIRROR lg TABLE log", "0A000"),
    ] {
        let e = s.client.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), state, "{sql}");
    }
}

/// A crash after ClickHouse took a partition's insert but before the catalog recorded it: the
/// next attempt (reading again, seeing fewer rows by then) replaces what the first left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_written_again_replaces_what_an_earlier_attempt_left() {
    let db = ChServer::from_env().temp_database("ferry_qpart").await;
    let d = clickhouse(&db.name);
    let q = d.query().expect("ClickHouse holds query mirrors");
    let column = |name: &str, kind, nullable| ColumnSchema {
        name: name.into(),
        type_oid: 0,
        type_name: String::new(),
        kind,
        nullable,
        key_position: None,
        pg_type: None,
    };
    let table = QueryTable {
        id: 0,
        target: TargetName::new(db.name.clone(), "t"),
        columns: vec![
            column("id", ValueKind::Int64, false),
            column("note", ValueKind::Text, true),
        ],
        mode: QueryMode::Append,
        version: VersionSource::Run,
    };
    q.check_query_table(&table, true).await.unwrap();
    q.create_query_table(&table, &table.target).await.unwrap();
    let open = |partition: i32, attempt: i32| {
        let (q, table) = (q, &table);
        async move {
            let p = QueryPartition {
                run: 7,
                partition,
                attempt,
                version: 0,
            };
            match q.load_partition(table, &table.target, &p).await.unwrap() {
                Load::Sink(sink) => sink,
                Load::Done { .. } => panic!("ClickHouse recognises no partition"),
            }
        }
    };
    let write = |partition: i32, attempt: i32, rows: Vec<(i64, &'static str)>| async move {
        let mut sink = open(partition, attempt).await;
        sink.write(copy_stream(&rows)).await.unwrap();
        sink.finish().await.unwrap().rows
    };
    assert_eq!(
        write(0, 0, vec![(1, "a"), (2, "b"), (3, "c"), (4, "d")]).await,
        4
    );
    assert_eq!(write(1, 0, vec![(10, "x"), (11, "y")]).await, 2);
    // Attempt 1 of partition 0: by now row 4 has left its range, row 2 changed. While it
    // writes, an insert of the interrupted attempt 0 lands late.
    let mut retry = open(0, 1).await;
    retry
        .write(copy_stream(&[(1, "a"), (2, "B"), (3, "c")]))
        .await
        .unwrap();
    assert_eq!(write(0, 0, vec![(4, "late")]).await, 1);
    assert_eq!(retry.finish().await.unwrap().rows, 3);
    let sql = format!(
        "SELECT toString(count()) || ' ' || toString(sum(id)) || ' ' || arrayStringConcat(arraySort(groupArray(note)), '')
         FROM `{}`.t",
        db.name
    );
    let mut cursor = db.client().query(&sql).fetch_bytes("TSV").unwrap();
    let got = String::from_utf8(cursor.collect().await.unwrap().to_vec()).unwrap();
    assert_eq!(got.trim_end(), "5 27 Bacxy");
}
