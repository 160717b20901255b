//! Source schema changes never lose rows, and mirrors change while they run (ALTER MIRROR),
//! against every destination: tables moved, attached or added into a mirror's scope bring the
//! rows they had; added columns show their defaults; a publication that misses a table is
//! refused; ALTER MIRROR adds, drops and changes while rows are written, and survives a
//! kill -9 in the middle.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use ferry_e2e::{
    converge, on_every_destination, scalar, setup, sqlstate, vals, wait_for_state,
    wait_table_state, Kind, Setup, TestFerry, View, Workload,
};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);

on_every_destination!(tables_entering_a_mapped_schema_bring_their_rows);
on_every_destination!(a_mapped_schema_left_without_tables_still_takes_new_ones);
on_every_destination!(attached_and_detached_partitions_are_followed);
on_every_destination!(a_mirrored_table_attached_as_a_partition_joins_its_parent);
on_every_destination!(added_columns_show_their_defaults);
on_every_destination!(a_publication_that_misses_a_table_is_refused);
on_every_destination!(alter_mirror_adds_drops_and_sets_while_rows_are_written);

async fn tables_entering_a_mapped_schema_bring_their_rows(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE SCHEMA mapped; CREATE SCHEMA other;
             CREATE TABLE mapped.a (id int PRIMARY KEY, v text);
             INSERT INTO mapped.a SELECT g, 'a' || g FROM generate_series(1, 10) g;
             CREATE TABLE other.t (id int PRIMARY KEY, v text);
             INSERT INTO other.t SELECT g, 't' || g FROM generate_series(1, 101) g;
             CREATE TABLE other.nokey (v text);
             INSERT INTO other.nokey VALUES ('only');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(&format!(
            "CREATE MIRROR moved FROM src TO dst WITH SCHEMA MAPPING (mapped:{})
             WITH (do_initial_copy = true)",
            s.dest.namespace()
        ))
        .await
        .unwrap();
    wait_for_state(&s.client, "moved", "running", TIMEOUT).await;

    // Moved in with its 101 rows, and not changed afterwards: all of them arrive.
    s.src
        .batch_execute("ALTER TABLE other.t SET SCHEMA mapped")
        .await
        .unwrap();
    wait_table_state(&s.client, "mapped.t", "done").await;
    let view = View::new("mapped.t", &vals(&["id", "v"]), "id").into_table("t");
    converge(&s.client, &s.src, &s.dest, &view, "moved in").await;

    // A table without a key fails with a hint; fixed, RESYNC … TABLE brings its row.
    s.src
        .batch_execute("ALTER TABLE other.nokey SET SCHEMA mapped")
        .await
        .unwrap();
    let error = wait_table_state(&s.client, "mapped.nokey", "failed").await;
    assert!(error.contains("REPLICA IDENTITY FULL"), "{error}");
    s.src
        .batch_execute("ALTER TABLE mapped.nokey ADD PRIMARY KEY (v)")
        .await
        .unwrap();
    s.client
        .batch_execute("RESYNC MIRROR moved TABLE mapped.nokey")
        .await
        .unwrap();
    wait_table_state(&s.client, "mapped.nokey", "done").await;
    let view = View::new("mapped.nokey", &vals(&["v"]), "v").into_table("nokey");
    converge(&s.client, &s.src, &s.dest, &view, "fixed and loaded").await;
    s.ferry.stop().await;
}

/// Every table of a mapped schema dropped: a table moved in afterwards (without a change to
/// announce it) still joins.
async fn a_mapped_schema_left_without_tables_still_takes_new_ones(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE SCHEMA mapped; CREATE SCHEMA other;
             CREATE TABLE mapped.a (id int PRIMARY KEY, v text);
             CREATE TABLE other.t (id int PRIMARY KEY, v text);
             INSERT INTO other.t SELECT g, 't' || g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(&format!(
            "CREATE MIRROR emptied FROM src TO dst WITH SCHEMA MAPPING (mapped:{})
             WITH (do_initial_copy = true)",
            s.dest.namespace()
        ))
        .await
        .unwrap();
    wait_for_state(&s.client, "emptied", "running", TIMEOUT).await;
    s.src.batch_execute("DROP TABLE mapped.a").await.unwrap();
    wait_table_state(&s.client, "mapped.a", "dropped").await;
    s.src
        .batch_execute("ALTER TABLE other.t SET SCHEMA mapped")
        .await
        .unwrap();
    wait_table_state(&s.client, "mapped.t", "done").await;
    let view = View::new("mapped.t", &vals(&["id", "v"]), "id").into_table("t");
    converge(&s.client, &s.src, &s.dest, &view, "moved in").await;
    s.ferry.stop().await;
}

/// A table partitioned by list with one partition of 20 rows, and a table of 10 rows that
/// fits as its second partition.
const PARTITIONS: &str =
    "CREATE TABLE parent (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
     CREATE TABLE p1 PARTITION OF parent FOR VALUES IN (1);
     INSERT INTO parent SELECT g, 1, 'one' FROM generate_series(1, 20) g;
     CREATE TABLE p2 (id int, part int, v text, PRIMARY KEY (id, part));
     INSERT INTO p2 SELECT g, 2, 'two' FROM generate_series(1, 10) g;";

async fn attached_and_detached_partitions_are_followed(kind: Kind) {
    let s = setup(kind).await;
    s.src.batch_execute(PARTITIONS).await.unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR parts FROM src TO dst WITH TABLE MAPPING (parent:parent)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "parts", "running", TIMEOUT).await;
    let view = View::new("parent", &vals(&["id", "part", "v"]), "part, id");
    converge(&s.client, &s.src, &s.dest, &view, "load").await;

    // Attached with its 10 rows: they arrive, and later changes to them too.
    s.src
        .batch_execute("ALTER TABLE parent ATTACH PARTITION p2 FOR VALUES IN (2)")
        .await
        .unwrap();
    converge(&s.client, &s.src, &s.dest, &view, "attached").await;
    s.src
        .batch_execute("UPDATE parent SET v = 'changed' WHERE part = 2 AND id <= 3")
        .await
        .unwrap();
    converge(&s.client, &s.src, &s.dest, &view, "attached, then changed").await;

    // Detached: its rows leave the table, as they left it at the source.
    s.src
        .batch_execute("ALTER TABLE parent DETACH PARTITION p1")
        .await
        .unwrap();
    converge(&s.client, &s.src, &s.dest, &view, "detached").await;
    s.ferry.stop().await;
}

/// A table the mirror copies on its own, attached as a partition of another table it copies:
/// its rows arrive through the partitioned table, and it is `dropped`, not failed.
async fn a_mirrored_table_attached_as_a_partition_joins_its_parent(kind: Kind) {
    let s = setup(kind).await;
    s.src.batch_execute(PARTITIONS).await.unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR parts FROM src TO dst WITH TABLE MAPPING (parent:parent, p2:p2)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "parts", "running", TIMEOUT).await;
    s.src
        .batch_execute(
            "ALTER TABLE parent ATTACH PARTITION p2 FOR VALUES IN (2);
             UPDATE parent SET v = 'changed' WHERE part = 2 AND id <= 3;",
        )
        .await
        .unwrap();
    let reason = wait_table_state(&s.client, "public.p2", "dropped").await;
    assert!(
        reason.contains("now a partition of public.parent"),
        "{reason}"
    );
    let view = View::new("parent", &vals(&["id", "part", "v"]), "part, id");
    converge(&s.client, &s.src, &s.dest, &view, "attached").await;
    let (state, _) = ferry_e2e::mirror_state(&s.client, "parts").await;
    assert_eq!(state, "running");
    s.ferry.stop().await;
}

async fn added_columns_show_their_defaults(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR cols FROM src TO dst WITH TABLE MAPPING (t:t) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "cols", "running", TIMEOUT).await;
    converge(
        &s.client,
        &s.src,
        &s.dest,
        &View::new("t", &vals(&["id", "v"]), "id"),
        "load",
    )
    .await;
    // A constant default: the rows there before show it, as PostgreSQL shows it.
    s.src
        .batch_execute(
            "ALTER TABLE t ADD COLUMN note text DEFAULT 'dflt';
             INSERT INTO t VALUES (51, 'new', 'given');",
        )
        .await
        .unwrap();
    let view = View::new("t", &vals(&["id", "v", "note"]), "id");
    converge(&s.client, &s.src, &s.dest, &view, "constant default").await;
    // A volatile default: every row has its own value, which arrives too.
    s.src
        .batch_execute(
            "ALTER TABLE t ADD COLUMN r int DEFAULT (random() * 1000000)::int;
             UPDATE t SET v = 'touched' WHERE id = 1;",
        )
        .await
        .unwrap();
    let view = View::new("t", &vals(&["id", "v", "note", "r"]), "id");
    converge(&s.client, &s.src, &s.dest, &view, "volatile default").await;
    s.ferry.stop().await;
}

async fn a_publication_that_misses_a_table_is_refused(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
             CREATE PUBLICATION mine FOR TABLE a;",
        )
        .await
        .unwrap();
    let e = s
        .client
        .batch_execute(
            "CREATE MIRROR pubs FROM src TO dst WITH TABLE MAPPING (a:a, b:b)
             WITH (do_initial_copy = true, publication_name = 'mine')",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("public.b") && !message.contains("public.a"),
        "{message}"
    );
    let mirrors: i64 = scalar(&s.client, "SELECT count(*) FROM mirror_status").await;
    assert_eq!(mirrors, 0);

    // Covered, it runs; a table taken out of the publication later fails with a hint.
    s.src
        .batch_execute("ALTER PUBLICATION mine ADD TABLE b")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR pubs FROM src TO dst WITH TABLE MAPPING (a:a, b:b)
             WITH (do_initial_copy = true, publication_name = 'mine')",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "pubs", "running", TIMEOUT).await;
    s.src
        .batch_execute("ALTER PUBLICATION mine DROP TABLE b")
        .await
        .unwrap();
    let error = wait_table_state(&s.client, "public.b", "failed").await;
    assert!(error.contains("no longer publishes"), "{error}");
    s.ferry.stop().await;
}

/// Writes to `a`, `b` and `c` until stopped, one transaction per round.
fn workload(client: Client) -> Workload {
    Workload::start(client, true, |i| {
        format!(
            "BEGIN;
             INSERT INTO a VALUES ({id}, 'w{i}');
             INSERT INTO b VALUES ({id}, 'w{i}');
             INSERT INTO c VALUES ({id}, 'w{i}');
             UPDATE c SET v = v || 'u' WHERE id = {u};
             DELETE FROM b WHERE id = {u};
             COMMIT;",
            id = 10_000 + i,
            u = i % 500 + 1,
        )
    })
}

async fn alter_mirror_adds_drops_and_sets_while_rows_are_written(kind: Kind) {
    let Setup {
        ferry,
        client,
        source,
        dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, v text);
         CREATE TABLE c (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 500) g;
         INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 500) g;
         INSERT INTO c SELECT g, 'c' || g FROM generate_series(1, 3000) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR alt FROM src TO dst WITH TABLE MAPPING (a:a, b:b) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "alt", "running", TIMEOUT).await;
    let writer = workload(source.connect().await);
    writer.wait_rounds(20).await;

    // SET: the change shows in the mirror's options and its history.
    client
        .batch_execute("ALTER MIRROR alt SET (sync_interval = 2, max_batch_size = 500)")
        .await
        .unwrap();
    let options: String = client
        .query_one(
            "SELECT options::text FROM mirrors WHERE mirror = 'alt'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(options.contains("\"sync_interval_secs\": 2"), "{options}");
    let e = client
        .batch_execute("ALTER MIRROR alt SET (replication_slot_name = 'other')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    let e = client
        .batch_execute("ALTER MIRROR alt ADD TABLE MAPPING (a:a2)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42710", "{e:?}");

    // ADD, and kill -9 while the added table loads: after the restart it is before or after
    // the change, and ends exact.
    client
        .batch_execute("ALTER MIRROR alt ADD TABLE MAPPING (c:c)")
        .await
        .unwrap();
    writer.wait_rounds(5).await;
    let catalog = ferry.kill();
    let ferry = TestFerry::restart(catalog).await;
    let client = ferry.connect().await;
    wait_table_state(&client, "public.c", "done").await;
    writer.wait_rounds(20).await;

    // DROP: b stops being replicated; its destination table keeps what it had.
    client
        .batch_execute("ALTER MIRROR alt DROP TABLE MAPPING (b)")
        .await
        .unwrap();
    let kept = dest.count("b").await;
    writer.wait_rounds(20).await;
    writer.stop().await;
    for table in ["a", "c"] {
        let view = View::new(table, &vals(&["id", "v"]), "id");
        converge(&client, &src, &dest, &view, table).await;
    }
    assert_eq!(dest.count("b").await, kept);
    let changes: Vec<String> = client
        .query(
            "SELECT change FROM mirror_changes WHERE mirror = 'alt' ORDER BY changed_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        changes[1].starts_with("ADD TABLE MAPPING") && changes[2].starts_with("DROP"),
        "{changes:?}"
    );
    ferry.stop().await;
}
