//! Initial loads at scale and in their shapes, against the real PostgreSQL and every
//! destination: five million pgbench-like rows value for value, a partitioned table read
//! through its leaves, a schema mapping, a load paused and resumed half-way, and mappings
//! that exclude columns or write into another namespace.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_e2e::{
    converge, on_every_destination, scalar, setup, source_digests, sqlstate, vals, wait_for_state,
    Col, Kind, TestFerry, View,
};
use ferry_testkit::random_name;
use tokio_postgres::Client;

const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

on_every_destination!(five_million_rows_load_exactly);
on_every_destination!(partitioned_table_loads_through_its_leaves);
on_every_destination!(schema_mapping_copies_every_table);
on_every_destination!(pause_and_resume_finish_the_load);
on_every_destination!(exclude_and_rename_columns_mapping);
on_every_destination!(daemon_killed_during_the_load_finishes_it_exactly);

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

async fn five_million_rows_load_exactly(kind: Kind) {
    const ROWS: i64 = 5_000_000;
    const BUCKET: i64 = 100_000;
    let s = setup(kind).await;
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
    let cols = vals(&["aid", "bid", "abalance", "filler"]);
    let expected = source_digests(&s.src, "pgbench_accounts", &cols, "aid", BUCKET).await;
    let actual = s
        .dest
        .digests("pgbench_accounts", &cols, "aid", BUCKET)
        .await;
    assert_eq!(expected.len(), 50);
    assert_eq!(expected.iter().map(|e| e.1).sum::<i64>(), ROWS);
    assert_eq!(actual.len(), expected.len(), "buckets");
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e, "bucket {} (aids from {})", e.0, e.0 * BUCKET);
    }
    s.ferry.stop().await;
}

async fn partitioned_table_loads_through_its_leaves(kind: Kind) {
    let s = setup(kind).await;
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
    let filled: i64 = scalar(&s.src, "SELECT count(DISTINCT tableoid) FROM readings").await;
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
    assert_eq!(s.dest.tables(s.dest.namespace()).await, ["readings"]);
    let cols = [
        Col::Val("id"),
        Col::Val("region"),
        Col::Num("value"),
        Col::Val("note"),
    ];
    let view = View::new("readings", &cols, "id");
    converge(&s.client, &s.src, &s.dest, &view, "partitioned").await;
    assert_eq!(s.dest.count("readings").await, 11001);

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

async fn schema_mapping_copies_every_table(kind: Kind) {
    let s = setup(kind).await;
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
    // A mapping's namespace must exist: a typo is an error that names it, and nothing is made.
    let sales = random_name("ferry_sales");
    let create = format!(
        "CREATE MIRROR sales FROM src TO dst WITH SCHEMA MAPPING (sales:{sales})
         WITH (do_initial_copy = true, initial_copy_only = true, snapshot_num_tables_in_parallel = 2)"
    );
    let e = s.client.batch_execute(&create).await.unwrap_err();
    let missing = match kind {
        Kind::ClickHouse => "3D000",
        Kind::Postgres => "3F000",
    };
    assert_eq!(sqlstate(&e), missing, "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains(&sales), "{message}");
    assert!(s.dest.tables(&sales).await.is_empty());
    s.dest.create_namespace(&sales).await;

    s.client.batch_execute(&create).await.unwrap();
    wait_for_state(&s.client, "sales", "completed", LOAD_TIMEOUT).await;

    // Exactly the schema's tables, in the mapping's namespace, the empty one included.
    assert_eq!(
        s.dest.tables(&sales).await,
        ["audit", "order_lines", "refunds"]
    );
    assert!(s.dest.tables(s.dest.namespace()).await.is_empty());
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
        assert_eq!(t.1, format!("{sales}.{}", &t.0["sales.".len()..]));
        assert!(t.3 == t.4 && t.4 >= 1, "partitions of {}: {t:?}", t.0);
    }

    let lines = vals(&["order_id", "line_no", "sku", "qty"]);
    let order_lines = format!("{sales}.order_lines");
    let view = View::new("sales.order_lines", &lines, "order_id, line_no").into_table(&order_lines);
    converge(&s.client, &s.src, &s.dest, &view, "order_lines").await;
    assert_eq!(s.dest.count(&order_lines).await, 3000);
    let audit_cols = [Col::Ts("at"), Col::Val("actor"), Col::Val("detail")];
    let audit = format!("{sales}.audit");
    let view = View::new("sales.audit", &audit_cols, "at, actor").into_table(&audit);
    converge(&s.client, &s.src, &s.dest, &view, "audit").await;
    assert_eq!(s.dest.count(&audit).await, 500);

    let refunds = format!("{sales}.refunds");
    assert_eq!(s.dest.stored_rows(&refunds).await, 0);
    assert_eq!(s.dest.columns(&refunds).await, ["id", "amount"]);
    s.dest.drop_namespace(&sales).await;
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

async fn pause_and_resume_finish_the_load(kind: Kind) {
    const ROWS: i64 = 300_000;
    let s = setup(kind).await;
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
    // A write whose last bytes were sent before the pause may still commit (its partition is
    // not marked done, so the resume writes it again, into the same rows): count what is
    // stored once none is running.
    s.dest.wait_load_writes_ended().await;
    let stored = s.dest.stored_rows("ledger").await;
    // …and nothing more arrives: a worker still running would finish a 5000-row partition in
    // well under the second watched here.
    let quiet = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet {
        assert_eq!(partition_counts(&catalog, "ledger").await.0, done);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.dest.stored_rows("ledger").await, stored);
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
    let copied: i64 = scalar(
        &s.client,
        "SELECT rows_copied FROM mirror_tables WHERE mirror = 'ledger'",
    )
    .await;
    assert_eq!(copied, ROWS);

    // The destination's current state equals the source.
    let cols = [
        Col::Val("id"),
        Col::Val("grp"),
        Col::Val("note"),
        Col::Num("amount"),
    ];
    let want = source_digests(&s.src, "ledger", &cols, "id", 10_000).await;
    assert_eq!(s.dest.digests("ledger", &cols, "id", 10_000).await, want);
    assert_eq!(want.iter().map(|b| b.1).sum::<i64>(), ROWS);

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

async fn exclude_and_rename_columns_mapping(kind: Kind) {
    let s = setup(kind).await;
    let other = random_name("ferry_other");
    s.dest.create_namespace(&other).await;
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
               WITH TABLE MAPPING ({{ from: public.events, to: ev, exclude: [payload_raw] }}, public.users:{other}.users)
               WITH (do_initial_copy = true, initial_copy_only = true)"
        ))
        .await
        .unwrap();
    wait_for_state(&s.client, "shaped", "completed", LOAD_TIMEOUT).await;

    // Each table where its mapping said, and nowhere else.
    assert_eq!(s.dest.tables(s.dest.namespace()).await, ["ev"]);
    assert_eq!(s.dest.tables(&other).await, ["users"]);
    let destinations = pg_lines(
        &s.client,
        "SELECT source_table || ' ' || destination_table || ' ' || state FROM mirror_tables
         WHERE mirror = 'shaped' ORDER BY 1",
    )
    .await;
    assert_eq!(
        destinations,
        [
            format!("public.events {}.ev done", s.dest.namespace()),
            format!("public.users {other}.users done")
        ]
    );

    // The excluded column is not there; the others are, in the source's order.
    assert_eq!(s.dest.columns("ev").await, ["id", "kind", "payload", "at"]);
    let cols = [
        Col::Val("id"),
        Col::Val("kind"),
        Col::Val("payload"),
        Col::TsTz("at"),
    ];
    let view = View::new("events", &cols, "id").into_table("ev");
    converge(&s.client, &s.src, &s.dest, &view, "events").await;
    assert_eq!(s.dest.count("ev").await, 2000);

    let users = format!("{other}.users");
    let cols = vals(&["id", "email", "name"]);
    let view = View::new("users", &cols, "id").into_table(&users);
    converge(&s.client, &s.src, &s.dest, &view, "users").await;
    assert_eq!(s.dest.count(&users).await, 300);
    s.dest.drop_namespace(&other).await;
    s.ferry.stop().await;
}

/// The daemon killed as `kill -9` would, twice, in the middle of an initial load of a table
/// with a key and one without: the restarted daemon finishes the load, and every row is there
/// once (a range loaded twice would show in the table without a key).
async fn daemon_killed_during_the_load_finishes_it_exactly(kind: Kind) {
    const ROWS: i64 = 200_000;
    let s = setup(kind).await;
    s.src
        .batch_execute(&format!(
            "CREATE TABLE keyed (id int8 PRIMARY KEY, note text NOT NULL);
             INSERT INTO keyed SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;
             CREATE TABLE keyless (a int8 NOT NULL, b text);
             ALTER TABLE keyless REPLICA IDENTITY FULL;
             INSERT INTO keyless SELECT g, CASE WHEN g % 9 = 0 THEN NULL ELSE md5(g::text) END
               FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    s.src
        .batch_execute("VACUUM ANALYZE keyed, keyless")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR killed FROM src TO dst WITH TABLE MAPPING (keyed:keyed, keyless:keyless)
             WITH (do_initial_copy = true, snapshot_num_rows_per_partition = 4000,
                   snapshot_max_parallel_workers = 2, snapshot_num_tables_in_parallel = 2)",
        )
        .await
        .unwrap();
    let mut ferry = s.ferry;
    let mut client = s.client;
    for round in 1..=2 {
        // Kill once some more ranges are done.
        let catalog = ferry.catalog().await;
        let deadline = Instant::now() + LOAD_TIMEOUT;
        loop {
            let (done, total) = partition_counts(&catalog, "killed").await;
            if done >= 4 * round {
                assert!(done < total, "the load ended before the kill");
                break;
            }
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop((client, catalog));
        let catalog_db = ferry.kill();
        eprintln!("daemon_killed_during_the_load: killed in round {round}");
        ferry = TestFerry::restart(catalog_db).await;
        client = ferry.connect().await;
    }
    wait_for_state(&client, "killed", "running", LOAD_TIMEOUT).await;
    let view = View::new("keyed", &vals(&["id", "note"]), "id");
    converge(&client, &s.src, &s.dest, &view, "keyed").await;
    let view = View::new("keyless", &vals(&["a", "b"]), "a, b");
    converge(&client, &s.src, &s.dest, &view, "keyless").await;
    if kind == Kind::Postgres {
        // ClickHouse may store a range twice (identical rows collapse); PostgreSQL may not.
        assert_eq!(s.dest.stored_rows("keyless").await, ROWS);
    }
    ferry.stop().await;
}
