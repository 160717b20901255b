//! Initial loads at scale and in their shapes, against the real PostgreSQL and ClickHouse:
//! five million pgbench-like rows value for value, a partitioned table read through its
//! leaves, a schema mapping, a load paused and resumed half-way, and mappings that exclude
//! columns or write into another ClickHouse database.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_e2e::{setup, sqlstate, wait_for_state};
use ferry_testkit::{random_name, ChServer, TempChDatabase};
use tokio_postgres::Client;

const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// The first column of every row of a PostgreSQL query, as text.
async fn pg_lines(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every row of a ClickHouse query returning one String column.
async fn ch_lines(client: &clickhouse::Client, sql: &str) -> Vec<String> {
    client
        .query(sql)
        .fetch_all::<String>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The tables of a ClickHouse database, by name.
async fn ch_tables(database: &str) -> Vec<String> {
    ChServer::from_env()
        .client()
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(database)
        .fetch_all::<String>()
        .await
        .unwrap()
}

/// Rows in a ClickHouse table as stored, before any merge or `FINAL`.
async fn ch_stored_rows(dest: &TempChDatabase, table: &str) -> u64 {
    dest.client()
        .query(&format!("SELECT count() FROM `{table}`"))
        .fetch_one()
        .await
        .unwrap()
}

/// (done, total) partitions of a mirror's initial load, read from the catalog.
async fn partition_counts(catalog: &Client, mirror: &str) -> (i64, i64) {
    let r = catalog
        .query_one(
            "SELECT count(*) FILTER (WHERE p.state = 'done'), count(*)
             FROM ferry.mirror_partition p
             JOIN ferry.mirror_table t ON t.id = p.table_id
             JOIN ferry.mirrors m ON m.id = t.mirror_id
             WHERE m.name = $1",
            &[&mirror],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// The state of a mirror as `mirror_status` shows it.
async fn mirror_state(client: &Client, mirror: &str) -> String {
    client
        .query_one(
            "SELECT state FROM mirror_status WHERE mirror = $1",
            &[&mirror],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn five_million_rows_load_exactly() {
    const ROWS: i64 = 5_000_000;
    const BUCKET: i64 = 100_000;
    let s = setup().await;
    let generating = Instant::now();
    // pgbench_accounts' shape; the key is added after the rows, as pgbench does, which is
    // faster than maintaining the index row by row. A third of the fillers are shorter than
    // 84 characters, so char(n)'s trailing padding has to arrive too.
    s.src
        .batch_execute(&format!(
            "CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84));
             INSERT INTO pgbench_accounts
               SELECT g, g / {BUCKET} + 1, ((g::int8 * 7919) % 20011 - 10005)::int,
                      CASE WHEN g % 3 = 0 THEN md5(g::text) ELSE lpad(md5(g::text), 84) END
               FROM generate_series(0, {ROWS} - 1) g;
             ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid);"
        ))
        .await
        .unwrap();
    s.src
        .batch_execute("VACUUM ANALYZE pgbench_accounts")
        .await
        .unwrap();
    eprintln!(
        "five_million_rows_load_exactly: generated {ROWS} rows in {:.1}s",
        generating.elapsed().as_secs_f64()
    );

    let loading = Instant::now();
    s.client
        .batch_execute(
            "CREATE MIRROR accounts FROM src TO dst
               WITH TABLE MAPPING (public.pgbench_accounts:pgbench_accounts)
               WITH (do_initial_copy = true, initial_copy_only = true,
                     snapshot_num_rows_per_partition = 500000, snapshot_max_parallel_workers = 4)",
        )
        .await
        .unwrap();
    // A debug build on two cores; allow a lot.
    wait_for_state(
        &s.client,
        "accounts",
        "completed",
        Duration::from_secs(15 * 60),
    )
    .await;
    let took = loading.elapsed().as_secs_f64();
    eprintln!(
        "five_million_rows_load_exactly: loaded {ROWS} rows in {took:.1}s ({:.0} rows/s)",
        ROWS as f64 / took
    );

    // What the catalog says.
    let t = s
        .client
        .query_one(
            "SELECT state, partitions_done, partitions_total, rows_copied
             FROM mirror_tables WHERE mirror = 'accounts'",
            &[],
        )
        .await
        .unwrap();
    let (state, done, total, copied): (String, i64, i64, i64) =
        (t.get(0), t.get(1), t.get(2), t.get(3));
    assert_eq!(state, "done");
    assert_eq!(done, total, "every partition is done");
    assert!(
        total >= 10,
        "5M rows at 500k a partition: {total} partitions"
    );
    assert_eq!(copied, ROWS);
    let m = s
        .client
        .query_one(
            "SELECT percent::float8, rows_per_second::float8, tables_done, tables_total
             FROM mirror_status WHERE mirror = 'accounts'",
            &[],
        )
        .await
        .unwrap();
    let (percent, rate): (Option<f64>, Option<f64>) = (m.get(0), m.get(1));
    assert_eq!(percent, Some(100.0));
    assert!(rate.is_some_and(|r| r > 0.0), "rows_per_second {rate:?}");
    assert_eq!((m.get::<_, i64>(2), m.get::<_, i64>(3)), (1, 1));
    eprintln!(
        "five_million_rows_load_exactly: {total} partitions; mirror_status says {} rows/s",
        rate.unwrap_or_default()
    );
    // Each partition counts the rows it inserted: ranges that overlapped or missed blocks
    // would not add up to the table.
    let per_partition: i64 = s
        .ferry
        .catalog()
        .await
        .query_one(
            "SELECT sum(rows_copied)::int8 FROM ferry.mirror_partition",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(per_partition, ROWS);

    // Value for value, without pulling the rows into the test: an MD5 of every 100k rows'
    // text on each side.
    let expected: Vec<(i64, i64, String)> = s
        .src
        .query(
            &format!(
                "SELECT (aid / {BUCKET})::int8, count(*),
                        md5(string_agg(format('%s,%s,%s,%s', aid, bid, abalance, filler), E'\\n' ORDER BY aid))
                 FROM pgbench_accounts GROUP BY 1 ORDER BY 1"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let actual: Vec<(i64, u64, String)> = s
        .dest
        .client()
        .query(&format!(
            "SELECT toInt64(intDiv(aid, {BUCKET})) AS bucket, count(),
                    lower(hex(MD5(arrayStringConcat(arrayMap(x -> x.2, arraySort(x -> x.1,
                      groupArray((aid, concat(toString(aid), ',', toString(bid), ',', toString(abalance), ',', filler))))),
                      '\\n'))))
             FROM pgbench_accounts FINAL WHERE _ferry_is_deleted = 0
             GROUP BY bucket ORDER BY bucket"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(expected.len(), 50);
    assert_eq!(expected.iter().map(|e| e.1).sum::<i64>(), ROWS);
    let actual: Vec<(i64, i64, String)> = actual
        .into_iter()
        .map(|(b, n, d)| (b, n as i64, d))
        .collect();
    assert_eq!(actual.len(), expected.len(), "buckets");
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e, "bucket {} (aids from {})", e.0, e.0 * BUCKET);
    }
    s.ferry.stop().await;
}

#[tokio::test]
async fn partitioned_table_loads_through_its_leaves() {
    let s = setup().await;
    // Three range partitions, the last one hash-partitioned in two: four leaves.
    s.src
        .batch_execute(
            "CREATE TABLE readings (id int PRIMARY KEY, region text NOT NULL, value numeric(8, 2), note text)
               PARTITION BY RANGE (id);
             CREATE TABLE readings_low PARTITION OF readings FOR VALUES FROM (MINVALUE) TO (3000);
             CREATE TABLE readings_mid PARTITION OF readings FOR VALUES FROM (3000) TO (6000);
             CREATE TABLE readings_high PARTITION OF readings FOR VALUES FROM (6000) TO (MAXVALUE)
               PARTITION BY HASH (id);
             CREATE TABLE readings_high_0 PARTITION OF readings_high FOR VALUES WITH (MODULUS 2, REMAINDER 0);
             CREATE TABLE readings_high_1 PARTITION OF readings_high FOR VALUES WITH (MODULUS 2, REMAINDER 1);
             INSERT INTO readings
               SELECT g, (ARRAY['north', 'south', 'east', 'west'])[(g + 4000) % 4 + 1], (g * 37 % 100000) / 100.0 - 250,
                      CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END
               FROM generate_series(-2000, 9000) g;
             ANALYZE readings;",
        )
        .await
        .unwrap();
    let leaves: BTreeSet<u32> = s
        .src
        .query(
            "SELECT relid::oid FROM pg_partition_tree('readings') WHERE isleaf",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(leaves.len(), 4);
    let filled: i64 = s
        .src
        .query_one("SELECT count(DISTINCT tableoid) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(filled, 4, "every leaf holds rows");

    s.client
        .batch_execute(
            "CREATE MIRROR parts FROM src TO dst WITH TABLE MAPPING (public.readings:readings)
             WITH (do_initial_copy = true, initial_copy_only = true,
                   snapshot_num_rows_per_partition = 1000, snapshot_max_parallel_workers = 3)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "parts", "completed", LOAD_TIMEOUT).await;

    // One destination table, holding every leaf's rows.
    assert_eq!(ch_tables(&s.dest.name).await, ["readings"]);
    let expected = pg_lines(
        &s.src,
        "SELECT format('%s|%s|%s|%s', id, region, coalesce(trim_scale(value)::text, '~'), coalesce(note, '~'))
         FROM readings ORDER BY id",
    )
    .await;
    let actual = ch_lines(
        &s.dest.client(),
        "SELECT concat(toString(id), '|', region, '|', ifNull(toString(value), '~'), '|', ifNull(note, '~'))
         FROM readings FINAL WHERE _ferry_is_deleted = 0 ORDER BY id",
    )
    .await;
    assert_eq!(expected.len(), 11001);
    assert_eq!(actual, expected);

    // The ranges were cut in the leaves, which hold the rows, never in the parents.
    let relations: Vec<String> = pg_lines(
        &s.ferry.catalog().await,
        "SELECT DISTINCT relation FROM ferry.mirror_partition ORDER BY 1",
    )
    .await;
    let mut read = BTreeSet::new();
    for r in &relations {
        let oid: u32 = s
            .src
            .query_one("SELECT $1::text::regclass::oid", &[r])
            .await
            .unwrap_or_else(|e| panic!("relation {r}: {e}"))
            .get(0);
        read.insert(oid);
    }
    assert_eq!(read, leaves, "relations read: {relations:?}");
    let (done, total) = partition_counts(&s.ferry.catalog().await, "parts").await;
    assert_eq!(done, total);
    assert!(
        total > 4,
        "leaves of 1500 to 5000 rows at 1000 a range: {total}"
    );
    s.ferry.stop().await;
}

#[tokio::test]
async fn schema_mapping_copies_every_table() {
    let s = setup().await;
    s.src
        .batch_execute(
            "CREATE SCHEMA sales;
             CREATE TABLE sales.order_lines (order_id int, line_no int2, sku text NOT NULL, qty int NOT NULL,
                                             PRIMARY KEY (order_id, line_no));
             INSERT INTO sales.order_lines
               SELECT o, l, 'sku-' || (o * l % 113), o % 9 + l FROM generate_series(1, 1000) o, generate_series(1, 3) l;
             CREATE TABLE sales.audit (at timestamp NOT NULL, actor text NOT NULL, detail text);
             ALTER TABLE sales.audit REPLICA IDENTITY FULL;
             INSERT INTO sales.audit
               SELECT timestamp '2024-01-01' + g * interval '1 second 123457 microseconds', 'user' || g % 13,
                      CASE WHEN g % 5 = 0 THEN NULL ELSE 'did ' || g END
               FROM generate_series(1, 500) g;
             CREATE TABLE sales.refunds (id int PRIMARY KEY, amount numeric(10, 2));
             CREATE TABLE public.elsewhere (id int PRIMARY KEY);
             INSERT INTO public.elsewhere VALUES (1);
             ANALYZE;",
        )
        .await
        .unwrap();
    // A mapping's database must exist: a typo is an error that names it, and nothing is made.
    let sales = TempChDatabase {
        server: ChServer::from_env(),
        name: random_name("ferry_sales"),
    };
    let create = format!(
        "CREATE MIRROR sales FROM src TO dst WITH SCHEMA MAPPING (sales:{})
         WITH (do_initial_copy = true, initial_copy_only = true, snapshot_num_tables_in_parallel = 2)",
        sales.name
    );
    let e = s.client.batch_execute(&create).await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains(&sales.name), "{message}");
    let count = |sql: &'static str, name: String| async move {
        ChServer::from_env()
            .client()
            .query(sql)
            .bind(name)
            .fetch_one::<u64>()
            .await
            .unwrap()
    };
    assert_eq!(
        count(
            "SELECT count() FROM system.databases WHERE name = ?",
            sales.name.clone()
        )
        .await,
        0
    );
    ChServer::from_env()
        .client()
        .query(&format!(
            "CREATE DATABASE {}",
            ferry_core::ident::ch_ident(&sales.name)
        ))
        .execute()
        .await
        .unwrap();

    s.client.batch_execute(&create).await.unwrap();
    wait_for_state(&s.client, "sales", "completed", LOAD_TIMEOUT).await;

    // Exactly the schema's tables, in the mapping's database, the empty one included.
    assert_eq!(
        ch_tables(&sales.name).await,
        ["audit", "order_lines", "refunds"]
    );
    assert!(ch_tables(&s.dest.name).await.is_empty());
    let tables: Vec<(String, String, String, i64, i64, i64)> = s
        .client
        .query(
            "SELECT source_table, destination_table, state, partitions_done, partitions_total, rows_copied
             FROM mirror_tables WHERE mirror = 'sales' ORDER BY source_table",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let names: Vec<(&str, &str, i64)> = tables
        .iter()
        .map(|t| (t.0.as_str(), t.2.as_str(), t.5))
        .collect();
    assert_eq!(
        names,
        [
            ("sales.audit", "done", 500),
            ("sales.order_lines", "done", 3000),
            ("sales.refunds", "done", 0)
        ]
    );
    for t in &tables {
        assert_eq!(t.1, format!("{}.{}", sales.name, &t.0["sales.".len()..]));
        assert!(t.3 == t.4 && t.4 >= 1, "partitions of {}: {t:?}", t.0);
    }

    let ch = sales.client();
    let expected = pg_lines(
        &s.src,
        "SELECT format('%s|%s|%s|%s', order_id, line_no, sku, qty) FROM sales.order_lines ORDER BY order_id, line_no",
    )
    .await;
    let actual = ch_lines(
        &ch,
        "SELECT concat(toString(order_id), '|', toString(line_no), '|', sku, '|', toString(qty))
         FROM order_lines FINAL WHERE _ferry_is_deleted = 0 ORDER BY order_id, line_no",
    )
    .await;
    assert_eq!(expected.len(), 3000);
    assert_eq!(actual, expected);

    let expected = pg_lines(
        &s.src,
        "SELECT format('%s|%s|%s', to_char(at, 'YYYY-MM-DD HH24:MI:SS.US'), actor, coalesce(detail, '~'))
         FROM sales.audit ORDER BY at, actor",
    )
    .await;
    let actual = ch_lines(
        &ch,
        "SELECT concat(toString(at), '|', actor, '|', ifNull(detail, '~'))
         FROM audit FINAL WHERE _ferry_is_deleted = 0 ORDER BY at, actor",
    )
    .await;
    assert_eq!(expected.len(), 500);
    assert_eq!(actual, expected);

    assert_eq!(ch_stored_rows(&sales, "refunds").await, 0);
    let columns = ch_lines(
        &ChServer::from_env().client(),
        &format!(
            "SELECT name FROM system.columns WHERE database = '{}' AND table = 'refunds' ORDER BY position",
            sales.name
        ),
    )
    .await;
    assert_eq!(
        columns,
        [
            "id",
            "amount",
            "_ferry_version",
            "_ferry_is_deleted",
            "_ferry_synced_at"
        ]
    );
    s.ferry.stop().await;
}

/// (partition_no, finished_at, snapshot) of a mirror's partitions done.
async fn done_partitions(catalog: &Client) -> Vec<(i32, String, Option<String>)> {
    catalog
        .query(
            "SELECT partition_no, finished_at::text, snapshot FROM ferry.mirror_partition
             WHERE state = 'done' ORDER BY partition_no",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn pause_and_resume_finish_the_load() {
    const ROWS: i64 = 300_000;
    let s = setup().await;
    s.src
        .batch_execute(&format!(
            "CREATE TABLE ledger (id int8 PRIMARY KEY, grp int4 NOT NULL, note text, amount numeric(12, 2));
             INSERT INTO ledger SELECT g, g % 97, CASE WHEN g % 10 = 0 THEN NULL ELSE md5(g::text) END, g / 7.0
               FROM generate_series(1, {ROWS}) g;
             CREATE TABLE tiny (id int PRIMARY KEY);
             INSERT INTO tiny VALUES (1), (2);"
        ))
        .await
        .unwrap();
    s.src.batch_execute("VACUUM ANALYZE ledger").await.unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR ledger FROM src TO dst WITH TABLE MAPPING (public.ledger:ledger)
             WITH (do_initial_copy = true, initial_copy_only = true,
                   snapshot_num_rows_per_partition = 5000, snapshot_max_parallel_workers = 1)",
        )
        .await
        .unwrap();

    // Pause once some, but not all, partitions are done.
    let catalog = s.ferry.catalog().await;
    let deadline = Instant::now() + LOAD_TIMEOUT;
    while partition_counts(&catalog, "ledger").await.0 < 3 {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.client.batch_execute("PAUSE MIRROR ledger").await.unwrap();
    assert_eq!(mirror_state(&s.client, "ledger").await, "paused");
    let (done, total) = partition_counts(&catalog, "ledger").await;
    assert!(total >= 50, "expected many partitions, got {total}");
    assert!(done < total, "the load finished before the pause");
    eprintln!("pause_and_resume_finish_the_load: paused with {done} of {total} partitions done");

    // The pause ended the snapshot reads at the source…
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let readers: i64 = s
            .src
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'ferry snapshot'",
                &[&s.source.name],
            )
            .await
            .unwrap()
            .get(0);
        if readers == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{readers} snapshot readers still connected after the pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An insert whose last bytes were sent before the pause still commits in ClickHouse
    // (its partition is not marked done, so the resume writes it again, into the same rows):
    // count what is stored once none is running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: u64 = s
            .dest
            .client()
            .query(
                "SELECT count() FROM system.processes
                 WHERE query_kind = 'Insert' AND current_database = ?",
            )
            .bind(&s.dest.name)
            .fetch_one()
            .await
            .unwrap();
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{running} inserts still running after the pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = ch_stored_rows(&s.dest, "ledger").await;
    // …and nothing more arrives: a worker still running would finish a 5000-row partition in
    // well under the second watched here.
    let quiet = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet {
        assert_eq!(partition_counts(&catalog, "ledger").await.0, done);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ch_stored_rows(&s.dest, "ledger").await, stored);
    assert_eq!(mirror_state(&s.client, "ledger").await, "paused");
    let before = done_partitions(&catalog).await;
    assert_eq!(before.len() as i64, done);
    assert!(before.iter().all(|p| p.2.is_some()), "{before:?}");

    s.client
        .batch_execute("RESUME MIRROR ledger")
        .await
        .unwrap();
    wait_for_state(&s.client, "ledger", "completed", LOAD_TIMEOUT).await;

    // The partitions done before the pause were not copied again; the others were read after
    // the resume, in fresh snapshots (the exported one ended with the pause).
    let after = done_partitions(&catalog).await;
    assert_eq!(after.len() as i64, total);
    for p in &before {
        let again = after.iter().find(|a| a.0 == p.0).unwrap();
        assert_eq!(again, p, "partition {} was copied again", p.0);
    }
    assert!(
        after
            .iter()
            .filter(|a| !before.iter().any(|b| b.0 == a.0))
            .all(|p| p.2.is_none()),
        "{after:?}"
    );
    let copied: i64 = s
        .client
        .query_one(
            "SELECT rows_copied FROM mirror_tables WHERE mirror = 'ledger'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, ROWS);

    // ClickHouse's current state equals the source.
    let ch = s.dest.client();
    let (count, sum_id, sum_grp, nulls): (u64, i64, i64, u64) = ch
        .query("SELECT count(), sum(id), sum(grp), countIf(note IS NULL) FROM ledger FINAL WHERE _ferry_is_deleted = 0")
        .fetch_one()
        .await
        .unwrap();
    let r = s
        .src
        .query_one("SELECT count(*), sum(id)::int8, sum(grp)::int8, count(*) FILTER (WHERE note IS NULL) FROM ledger", &[])
        .await
        .unwrap();
    assert_eq!(
        (count as i64, sum_id, sum_grp, nulls as i64),
        (r.get(0), r.get(1), r.get(2), r.get(3))
    );
    let ch_digest: String = ch
        .query(
            "SELECT lower(hex(MD5(arrayStringConcat(arrayMap(x -> x.2, arraySort(x -> x.1,
               groupArray((id, concat(toString(id), ',', toString(grp), ',', ifNull(note, '~'), ',', toString(amount)))))), '\n'))))
             FROM ledger FINAL WHERE _ferry_is_deleted = 0",
        )
        .fetch_one()
        .await
        .unwrap();
    let pg_digest: String = s
        .src
        .query_one(
            "SELECT md5(string_agg(id || ',' || grp || ',' || coalesce(note, '~') || ',' || trim_scale(amount), E'\n' ORDER BY id)) FROM ledger",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ch_digest, pg_digest);

    // PAUSE and RESUME only where they make sense.
    let e = s
        .client
        .batch_execute("PAUSE MIRROR ledger")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    s.client
        .batch_execute(
            "CREATE MIRROR live FROM src TO dst WITH TABLE MAPPING (public.tiny:tiny)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "live", "running", LOAD_TIMEOUT).await;
    let e = s
        .client
        .batch_execute("RESUME MIRROR live")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    for sql in ["PAUSE MIRROR nope", "RESUME MIRROR nope"] {
        let e = s.client.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42704", "{sql}: {e:?}");
    }
    s.client.batch_execute("DROP MIRROR live").await.unwrap();
    s.ferry.stop().await;
}

#[tokio::test]
async fn exclude_and_rename_columns_mapping() {
    let s = setup().await;
    let other = ChServer::from_env().temp_database("ferry_other").await;
    s.src
        .batch_execute(
            "CREATE TABLE events (id int8 PRIMARY KEY, kind text NOT NULL, payload jsonb, payload_raw bytea,
                                  at timestamptz NOT NULL);
             INSERT INTO events
               SELECT g, 'kind' || g % 5, CASE WHEN g % 11 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'tag', 't' || g % 3) END,
                      decode(md5(g::text), 'hex'), timestamptz '2024-03-01 00:00:00+00' + g * interval '1.5 seconds'
               FROM generate_series(1, 2000) g;
             CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, name text);
             INSERT INTO users SELECT g, 'u' || g || '@example.com', CASE WHEN g % 4 = 0 THEN NULL ELSE 'User ' || g END
               FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(&format!(
            "CREATE MIRROR shaped FROM src TO dst
               WITH TABLE MAPPING ({{ from: public.events, to: ev, exclude: [payload_raw] }}, public.users:{}.users)
               WITH (do_initial_copy = true, initial_copy_only = true)",
            other.name
        ))
        .await
        .unwrap();
    wait_for_state(&s.client, "shaped", "completed", LOAD_TIMEOUT).await;

    // Each table where its mapping said, and nowhere else.
    assert_eq!(ch_tables(&s.dest.name).await, ["ev"]);
    assert_eq!(ch_tables(&other.name).await, ["users"]);
    let destinations = pg_lines(
        &s.client,
        "SELECT source_table || ' ' || destination_table || ' ' || state FROM mirror_tables
         WHERE mirror = 'shaped' ORDER BY 1",
    )
    .await;
    assert_eq!(
        destinations,
        [
            format!("public.events {}.ev done", s.dest.name),
            format!("public.users {}.users done", other.name)
        ]
    );

    // The excluded column is not there; the others are, in the source's order.
    let columns = ch_lines(
        &ChServer::from_env().client(),
        &format!(
            "SELECT name FROM system.columns WHERE database = '{}' AND table = 'ev' ORDER BY position",
            s.dest.name
        ),
    )
    .await;
    assert_eq!(
        columns,
        [
            "id",
            "kind",
            "payload",
            "at",
            "_ferry_version",
            "_ferry_is_deleted",
            "_ferry_synced_at"
        ]
    );
    let expected = pg_lines(
        &s.src,
        "SELECT format('%s|%s|%s|%s', id, kind, coalesce(payload::text, '~'),
                       to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'))
         FROM events ORDER BY id",
    )
    .await;
    let actual = ch_lines(
        &s.dest.client(),
        "SELECT concat(toString(id), '|', kind, '|', ifNull(payload, '~'), '|', toString(at))
         FROM ev FINAL WHERE _ferry_is_deleted = 0 ORDER BY id",
    )
    .await;
    assert_eq!(expected.len(), 2000);
    assert_eq!(actual, expected);

    let expected = pg_lines(
        &s.src,
        "SELECT format('%s|%s|%s', id, email, coalesce(name, '~')) FROM users ORDER BY id",
    )
    .await;
    let actual = ch_lines(
        &other.client(),
        "SELECT concat(toString(id), '|', email, '|', ifNull(name, '~'))
         FROM users FINAL WHERE _ferry_is_deleted = 0 ORDER BY id",
    )
    .await;
    assert_eq!(expected.len(), 300);
    assert_eq!(actual, expected);
    s.ferry.stop().await;
}
