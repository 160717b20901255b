//! Query mirrors end to end: the daemon in-process, real PostgreSQL, and every destination.
//!
//! Each scenario makes its own source and destination databases and runs against ClickHouse
//! and PostgreSQL ([`on_every_destination!`]); rows are read back through [`Dest`] and compared
//! with the source's by the one comparer. Runs are awaited by polling the catalog
//! (`mirror_status.last_watermark`, `qrep_runs`) or the destination, never by sleeping a fixed
//! time. How one partition is loaded again after an interrupted attempt is tested against each
//! destination's own sink at the end.

use std::time::{Duration, Instant};

use ferry_e2e::{
    converge, converge_exactly, on_every_destination, scalar, setup, sqlstate, vals,
    wait_for_state, Col, Dest, Kind, TestFerry, View, ALL_TYPES_EXTENSIONS, ALL_TYPES_ROWS,
    ALL_TYPES_TABLE,
};
use tokio_postgres::Client;

#[path = "qrep/sinks.rs"]
mod sinks;

const TIMEOUT: Duration = Duration::from_secs(120);

on_every_destination!(append_of_a_keyless_table_by_an_integer_watermark);
on_every_destination!(upsert_by_a_timestamp_keeps_the_newest_row_of_every_key);
on_every_destination!(every_type_arrives_exactly_through_a_query);
on_every_destination!(xmin_follows_inserts_and_updates);
on_every_destination!(a_join_lands_as_one_table);
on_every_destination!(overwrite_replaces_the_table_at_once);
on_every_destination!(watermark_lag_picks_up_a_late_commit);
on_every_destination!(pause_resume_and_execute);
on_every_destination!(daemon_killed_mid_run_finishes_it_without_a_row_twice);

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

/// The runs and partitions a PostgreSQL destination records for query mirrors.
async fn recorded_partitions(dest: &Dest) -> (i64, i64) {
    let r = dest
        .pg()
        .connect()
        .await
        .query_one(
            "SELECT count(DISTINCT run), count(*) FROM _ferry.loaded_partitions",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Append mode over a table without a key (identical rows kept), with rows inserted, and rows
/// changed without moving the watermark, between runs.
async fn append_of_a_keyless_table_by_an_integer_watermark(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE events (seq bigint NOT NULL, kind text, amount numeric(12, 2));
             INSERT INTO events SELECT g, 'k' || (g % 7), g * 1.25 FROM generate_series(1, 1000) g;
             INSERT INTO events SELECT g, 'dup', 1 FROM generate_series(1, 3) g;
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
    let cols = [Col::Val("seq"), Col::Val("kind"), Col::Num("amount")];
    let order = "seq, kind, amount";
    converge(
        &s.client,
        &s.src,
        &s.dest,
        &View::new("events", &cols, order),
        "first run",
    )
    .await;
    // New rows, and rows whose values change but whose watermark does not (append never
    // reads those again): what the destination must hold is kept beside the source's table.
    s.src
        .batch_execute(
            "CREATE TABLE seen AS TABLE events;
             INSERT INTO events SELECT g, 'late', 2 FROM generate_series(1001, 1250) g;
             UPDATE events SET kind = 'changed' WHERE seq <= 10;
             INSERT INTO seen SELECT * FROM events WHERE seq > 1000;",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "ev", "1250").await;
    let view = View::new("seen", &cols, order).into_table("events");
    converge(&s.client, &s.src, &s.dest, &view, "second run").await;
    assert_eq!(s.dest.stored_rows("events").await, 1256);
    let runs: i64 = scalar(
        &s.client,
        "SELECT count(*) FROM qrep_runs WHERE mirror = 'ev' AND state = 'done'",
    )
    .await;
    assert!(runs >= 2, "{runs} runs");
    if kind == Kind::Postgres {
        // Only the last run's partitions are kept, and nothing once the mirror is dropped.
        assert_eq!(recorded_partitions(&s.dest).await.0, 1);
    }
    s.client.batch_execute("DROP MIRROR ev").await.unwrap();
    let e = s
        .client
        .batch_execute("EXECUTE MIRROR ev")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    if kind == Kind::Postgres {
        assert_eq!(recorded_partitions(&s.dest).await, (0, 0));
    }
    s.ferry.stop().await;
}

/// Upsert by a timestamp: updates (which move the watermark) and inserts between runs; the
/// destination holds the newest row of every key, value for value.
async fn upsert_by_a_timestamp_keeps_the_newest_row_of_every_key(kind: Kind) {
    let s = setup(kind).await;
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
    converge_exactly(&s.client, &s.source, &s.dest, "items", "id", "first run").await;
    s.src
        .batch_execute(
            "UPDATE items SET price = price * 10, updated_at = '2024-02-01'
               WHERE id % 50 = 0;
             INSERT INTO items VALUES (1000, 'new', 1.5, '2024-02-01 00:00:01');",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "it", "2024-02-01 00:00:01+00").await;
    converge_exactly(&s.client, &s.source, &s.dest, "items", "id", "second run").await;
    assert_eq!(s.dest.count("items").await, 501);
    if let Dest::Postgres(d) = &s.dest {
        let key: String = d
            .connect()
            .await
            .query_one(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = 'items'::regclass AND contype = 'p'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(key, "PRIMARY KEY (id)");
    }
    // EXECUTE MIRROR runs it now: with nothing new, the watermark stays.
    s.client.batch_execute("EXECUTE MIRROR it").await.unwrap();
    let status = s
        .client
        .query_one(
            "SELECT kind, last_watermark, rows_last_run, next_run_at IS NOT NULL,
                    wal_held_bytes IS NULL AND slot_lag_bytes IS NULL AND lag_bytes IS NULL
             FROM mirror_status WHERE mirror = 'it'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status.get::<_, String>(0), "query");
    assert_eq!(status.get::<_, String>(1), "2024-02-01 00:00:01+00");
    assert!(status.get::<_, bool>(3));
    // No slot: its figures are unknown, not 0.
    assert!(status.get::<_, bool>(4));
    s.ferry.stop().await;
}

/// Every type, through a query, value for value; in PostgreSQL with the source's exact types,
/// NOT NULL and the unique key as primary key.
async fn every_type_arrives_exactly_through_a_query(kind: Kind) {
    let s = setup(kind).await;
    s.dest.install_extensions(&ALL_TYPES_EXTENSIONS).await;
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
    converge_exactly(&s.client, &s.source, &s.dest, "all_types", "id", "query").await;
    if let Dest::Postgres(d) = &s.dest {
        let shape = "SELECT string_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull), ', ' ORDER BY attnum)
                     || ' key ' || (SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'all_types'::regclass AND contype = 'p')
                     FROM pg_attribute WHERE attrelid = 'all_types'::regclass AND attnum > 0 AND NOT attisdropped";
        let want: String = s.src.query_one(shape, &[]).await.unwrap().get(0);
        let got: String = d
            .connect()
            .await
            .query_one(shape, &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, want);
    }
    // Four partitions of one row each.
    let p: i64 = scalar(
        &s.client,
        "SELECT partitions FROM qrep_runs WHERE mirror = 'ty'",
    )
    .await;
    assert_eq!(p, 4);
    s.ferry.stop().await;
}

/// `watermark_column = 'xmin'`: inserts and updates between runs of a table without a usable
/// column.
async fn xmin_follows_inserts_and_updates(kind: Kind) {
    let s = setup(kind).await;
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
        let step = format!("round {round}");
        converge_exactly(&s.client, &s.source, &s.dest, "accounts", "id", &step).await;
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
    s.ferry.stop().await;
}

/// A join lands as one table, and orders placed between runs join it.
async fn a_join_lands_as_one_table(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE customers (id int4 PRIMARY KEY, name text NOT NULL);
             CREATE TABLE orders (id int8 PRIMARY KEY, customer int4 REFERENCES customers,
                                  total numeric(12, 2), placed_at timestamp NOT NULL);
             INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 20) g;
             INSERT INTO orders SELECT g, 1 + g % 20, g / 4.0, '2024-03-01'::timestamp + g * interval '1 minute'
               FROM generate_series(1, 400) g;
             CREATE VIEW joined AS
               SELECT o.id, c.name AS customer_name, o.total, o.placed_at
               FROM orders o JOIN customers c ON c.id = o.customer WHERE o.total > 1;",
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
    let cols = [
        Col::Val("id"),
        Col::Val("customer_name"),
        Col::Num("total"),
        Col::Ts("placed_at"),
    ];
    let view = View::new("joined", &cols, "id").into_table("order_lines");
    converge(&s.client, &s.src, &s.dest, &view, "first run").await;
    s.src
        .batch_execute(
            "INSERT INTO orders SELECT g, 1 + g % 20, g, '2024-03-02'::timestamp + g * interval '1 second'
               FROM generate_series(401, 430) g;",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "oj", "2024-03-02 00:07:10").await;
    converge(&s.client, &s.src, &s.dest, &view, "second run").await;
    assert_eq!(s.dest.count("order_lines").await, 426);
    s.ferry.stop().await;
}

/// Overwrite: a second mirror's result replaces the table's contents at once; readers see the
/// old contents whole, then the new ones, never an empty or half-loaded table.
async fn overwrite_replaces_the_table_at_once(kind: Kind) {
    let s = setup(kind).await;
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
             WITH (destination_table_name = 'prices', mode = 'overwrite', initial_copy_only = true,
                   num_rows_per_partition = 5000)"
        )
    };
    s.client.batch_execute(&create("ow1")).await.unwrap();
    wait_for_state(&s.client, "ow1", "completed", TIMEOUT).await;
    let old = Some((20000, 200_010_000));
    assert_eq!(s.dest.count_and_sum("prices", "price").await, old);
    // The table stays after DROP; a second overwrite replaces its contents.
    s.client.batch_execute("DROP MIRROR ow1").await.unwrap();
    s.src
        .batch_execute("DELETE FROM prices WHERE sku > 15000; UPDATE prices SET price = price * 2;")
        .await
        .unwrap();
    s.client.batch_execute(&create("ow2")).await.unwrap();
    let new = Some((15000, 225_015_000));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = s.dest.count_and_sum("prices", "price").await;
        if seen == new {
            break;
        }
        assert_eq!(seen, old, "a state between old and new showed");
        assert!(Instant::now() < deadline, "the overwrite never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_state(&s.client, "ow2", "completed", TIMEOUT).await;
    let namespace = s.dest.namespace().to_owned();
    let tables = s.dest.tables(&namespace).await;
    assert_eq!(tables, vec!["prices".to_owned()]);
    s.ferry.stop().await;
}

/// A transaction that stamps its row early and commits after a run read past the stamp is
/// read by a later run, within `watermark_lag`.
async fn watermark_lag_picks_up_a_late_commit(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE feed (id int8 PRIMARY KEY, at timestamptz NOT NULL, note text);
             INSERT INTO feed VALUES (1, '2024-05-01 10:00:00+00', 'first');",
        )
        .await
        .unwrap();
    // (watermark_table_name left out: the table the query reads.)
    s.client
        .batch_execute(
            "CREATE MIRROR fd FROM src TO dst FOR
             $$SELECT * FROM feed WHERE at BETWEEN {{.start}} AND {{.end}}$$
             WITH (destination_table_name = 'feed', watermark_column = 'at', mode = 'upsert',
                   unique_key_columns = 'id', refresh_interval = 1, watermark_lag = 600)",
        )
        .await
        .unwrap();
    wait_watermark(&s.client, "fd", "2024-05-01 10:00:00+00").await;
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
    let view = View::new("feed", &vals(&["id", "note"]), "id");
    converge(&s.client, &s.src, &s.dest, &view, "late commit").await;
    assert_eq!(s.dest.count("feed").await, 3);
    s.ferry.stop().await;
}

async fn pause_resume_and_execute(kind: Kind) {
    let s = setup(kind).await;
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
    assert_eq!(s.dest.count_and_sum("log", "n").await, Some((25, 325)));
    for (sql, state) in [
        ("RESYNC MIRROR lg", "0A000"),
        ("RESYNC MIRROR lg TABLE log", "0A000"),
    ] {
        let e = s.client.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), state, "{sql}");
    }
    s.ferry.stop().await;
}

/// (partition, finished_at, attempts) of the done partitions of the mirror's first run.
async fn done_partitions(catalog: &Client) -> Vec<(i32, String, i32)> {
    catalog
        .query(
            "SELECT p.partition_no, p.finished_at::text, p.attempts FROM ferry.qrep_partition p
             JOIN ferry.qrep_run r ON r.id = p.run_id
             WHERE r.run_no = 1 AND p.state = 'done' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The daemon killed as `kill -9` would in the middle of a run (append mode, a table without
/// a key): after a restart the run is finished, copying only the partitions not done, with no
/// row twice; the watermark moved only once the run was whole.
async fn daemon_killed_mid_run_finishes_it_without_a_row_twice(kind: Kind) {
    const ROWS: i64 = 60_000;
    let s = setup(kind).await;
    s.src
        .batch_execute(&format!(
            "CREATE TABLE big (seq int8 NOT NULL, grp int4, note text);
             INSERT INTO big SELECT g, g % 97, md5(g::text) FROM generate_series(1, {ROWS}) g;
             INSERT INTO big SELECT g, -1, 'again' FROM generate_series(1, 100) g;
             ANALYZE big;"
        ))
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR big FROM src TO dst FOR
               $$SELECT seq, grp, note FROM big WHERE seq BETWEEN {{.start}} AND {{.end}}$$
               WITH (destination_table_name = 'big', watermark_column = 'seq', watermark_table_name = 'big',
                     num_rows_per_partition = 2000, parallelism = 2, refresh_interval = 1)",
        )
        .await
        .unwrap();
    let catalog = s.ferry.catalog().await;
    let deadline = Instant::now() + TIMEOUT;
    let total = loop {
        let r = catalog
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FROM ferry.qrep_partition",
                &[],
            )
            .await
            .unwrap();
        let (done, total): (i64, i64) = (r.get(0), r.get(1));
        if done >= 3 {
            break total;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(s.client);
    let catalog_db = s.ferry.kill();
    let catalog = catalog_db.connect().await;
    let before = done_partitions(&catalog).await;
    assert!(total >= 20, "expected many partitions, got {total}");
    assert!(
        before.len() < total as usize,
        "the run finished before the kill"
    );
    let watermark: Option<i64> = catalog
        .query_one("SELECT watermark FROM ferry.qrep_mirror", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        watermark, None,
        "the watermark moved before the run was whole"
    );

    let ferry = TestFerry::restart(catalog_db).await;
    let client = ferry.connect().await;
    wait_watermark(&client, "big", &ROWS.to_string()).await;
    let catalog = ferry.catalog().await;
    let after = done_partitions(&catalog).await;
    assert_eq!(after.len(), total as usize);
    for p in &before {
        let again = after.iter().find(|a| a.0 == p.0).unwrap();
        assert_eq!(again, p, "partition {} was copied again", p.0);
    }
    let view = View::new("big", &vals(&["seq", "grp", "note"]), "seq, grp, note");
    converge(&client, &s.src, &s.dest, &view, "after the kill").await;
    assert_eq!(s.dest.stored_rows("big").await, ROWS + 100);
    ferry.stop().await;
}
