//! Streaming changes into every destination against the real servers: inserts, updates (with
//! unchanged TOAST values and key changes), deletes, TRUNCATE, rolled-back transactions and an
//! added column all end with the destination's current state equal to the source's.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{
    converge, on_every_destination, setup, vals, wait_for_state, Col, Dest, Kind, Setup, View,
};

const TIMEOUT: Duration = Duration::from_secs(120);

on_every_destination!(changes_stream_into_the_destination);
on_every_destination!(tables_created_in_a_mapped_schema_join_the_mirror);
on_every_destination!(a_transaction_over_several_tables_arrives_whole);
on_every_destination!(unchanged_toast_values_are_never_made_up);

async fn changes_stream_into_the_destination(kind: Kind) {
    let Setup {
        ferry,
        client,
        source: _source,
        dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, name text, qty int, doc text);
         ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO t SELECT g, 'n' || g, g, repeat(md5(g::text), 400) FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute("CREATE MIRROR live FROM src TO dst WITH TABLE MAPPING (t:t) WITH (do_initial_copy = true)")
        .await
        .unwrap();
    wait_for_state(&client, "live", "running", TIMEOUT).await;
    let cols = [
        Col::Val("id"),
        Col::Val("name"),
        Col::Val("qty"),
        Col::Md5("doc"),
    ];
    let view = View::new("t", &cols, "id");
    converge(&client, &src, &dest, &view, "initial load").await;

    // Inserts, updates that leave the 12 kB TOASTed column alone, key changes, deletes, and a
    // transaction that is rolled back.
    src.batch_execute("INSERT INTO t SELECT g, 'n' || g, g, repeat('y', 9000) || g FROM generate_series(101, 200) g")
        .await
        .unwrap();
    src.batch_execute("UPDATE t SET qty = qty * 10 WHERE id % 2 = 0")
        .await
        .unwrap();
    src.batch_execute("UPDATE t SET id = id + 1000 WHERE id BETWEEN 1 AND 10")
        .await
        .unwrap();
    src.batch_execute("DELETE FROM t WHERE id % 5 = 0")
        .await
        .unwrap();
    src.batch_execute(
        "BEGIN; UPDATE t SET name = NULL WHERE id > 150; DELETE FROM t WHERE id < 50; ROLLBACK",
    )
    .await
    .unwrap();
    src.batch_execute(
        "BEGIN; UPDATE t SET name = 'twice' WHERE id = 11; UPDATE t SET qty = -1 WHERE id = 11; COMMIT",
    )
    .await
    .unwrap();
    converge(&client, &src, &dest, &view, "inserts, updates, deletes").await;

    // TRUNCATE empties the destination; rows after it arrive.
    src.batch_execute("TRUNCATE t; INSERT INTO t VALUES (1, 'after', 1, 'small')")
        .await
        .unwrap();
    converge(&client, &src, &dest, &view, "truncate").await;

    // A column added at the source is added to the destination before rows carrying it.
    src.batch_execute(
        "ALTER TABLE t ADD COLUMN extra int; INSERT INTO t VALUES (2, 'x', 2, 'd', 42)",
    )
    .await
    .unwrap();
    src.batch_execute("UPDATE t SET extra = 7 WHERE id = 1")
        .await
        .unwrap();
    let cols = [
        Col::Val("id"),
        Col::Val("name"),
        Col::Val("qty"),
        Col::Md5("doc"),
        Col::Val("extra"),
    ];
    converge(
        &client,
        &src,
        &dest,
        &View::new("t", &cols, "id"),
        "added column",
    )
    .await;

    // The catalog shows what was applied, and the position moved. The catalog is written
    // right after the destination acknowledged a batch, so the last batch may still be on
    // its way.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = client
            .query_one(
                "SELECT confirmed_lsn::text, rows_inserted, rows_updated, rows_deleted,
                        (SELECT count(*) FROM cdc_batches WHERE mirror = 'live')
                 FROM mirror_status WHERE mirror = 'live'",
                &[],
            )
            .await
            .unwrap();
        let confirmed: Option<String> = r.get(0);
        let (ins, upd, del, batches): (i64, i64, i64, i64) =
            (r.get(1), r.get(2), r.get(3), r.get(4));
        if confirmed.is_some() && ins >= 102 && upd >= 60 && del >= 20 && batches >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "catalog figures: {confirmed:?} {ins} {upd} {del} {batches}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slot_lsn: String = src
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(slot_lsn, "0/0");
    ferry.stop().await;
}

async fn tables_created_in_a_mapped_schema_join_the_mirror(kind: Kind) {
    let Setup {
        ferry,
        client,
        source: _source,
        dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE SCHEMA app; CREATE TABLE app.a (id int PRIMARY KEY); INSERT INTO app.a VALUES (1)",
    )
    .await
    .unwrap();
    client
        .batch_execute(&format!(
            "CREATE MIRROR apps FROM src TO dst WITH SCHEMA MAPPING (app:{}) WITH (do_initial_copy = true)",
            dest.namespace()
        ))
        .await
        .unwrap();
    wait_for_state(&client, "apps", "running", TIMEOUT).await;

    // A new table, and one created and filled in the same transaction.
    src.batch_execute("CREATE TABLE app.b (id int PRIMARY KEY, v text); INSERT INTO app.b SELECT g, 'v' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    src.batch_execute(
        "BEGIN; CREATE TABLE app.c (id int PRIMARY KEY); INSERT INTO app.c VALUES (1), (2); COMMIT",
    )
    .await
    .unwrap();
    src.batch_execute(
        "UPDATE app.b SET v = 'changed' WHERE id <= 5; DELETE FROM app.b WHERE id > 40",
    )
    .await
    .unwrap();
    let b_cols = vals(&["id", "v"]);
    let b = View::new("app.b", &b_cols, "id").into_table("b");
    converge(&client, &src, &dest, &b, "new table b").await;
    let c_cols = vals(&["id"]);
    let c = View::new("app.c", &c_cols, "id").into_table("c");
    converge(&client, &src, &dest, &c, "new table c").await;
    let tables: Vec<String> = client
        .query("SELECT source_table FROM mirror_tables WHERE mirror = 'apps' AND state = 'done' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["app.a", "app.b", "app.c"]);
    ferry.stop().await;
}

async fn a_transaction_over_several_tables_arrives_whole(kind: Kind) {
    let Setup {
        ferry,
        client,
        source: _source,
        dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
         CREATE TABLE transfers (id bigserial PRIMARY KEY, from_id int, to_id int, amount int);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR bank FROM src TO dst WITH TABLE MAPPING (accounts:accounts, transfers:transfers)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "bank", "running", TIMEOUT).await;
    // Each transaction moves money and records it: the tables only agree when whole
    // transactions are applied.
    for i in 0..50 {
        let (a, b, amount) = (i % 20 + 1, (i * 7) % 20 + 1, i + 1);
        src.batch_execute(&format!(
            "BEGIN;
             UPDATE accounts SET balance = balance - {amount} WHERE id = {a};
             UPDATE accounts SET balance = balance + {amount} WHERE id = {b};
             INSERT INTO transfers (from_id, to_id, amount) VALUES ({a}, {b}, {amount});
             COMMIT;"
        ))
        .await
        .unwrap();
    }
    let accounts = vals(&["id", "balance"]);
    let transfers = vals(&["id", "from_id", "to_id", "amount"]);
    // Whenever both tables are read at one moment, the money adds up: no transaction is seen
    // half applied.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let balances = dest.rows("accounts", &accounts, "id").await;
        let total: i64 = balances
            .iter()
            .map(|r| r.split('|').nth(1).unwrap().parse::<i64>().unwrap())
            .sum();
        assert!(
            balances.is_empty() || total == 20 * 1000,
            "money was created or lost: {total}"
        );
        if dest.count("transfers").await == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "the transfers did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converge(
        &client,
        &src,
        &dest,
        &View::new("accounts", &accounts, "id"),
        "accounts",
    )
    .await;
    converge(
        &client,
        &src,
        &dest,
        &View::new("transfers", &transfers, "id"),
        "transfers",
    )
    .await;
    ferry.stop().await;
}

/// Updates that leave a TOASTed value alone never write a made-up value: the value comes from
/// the row's previous change or the destination's row (under the old key when the key
/// moved), even when the row is deleted at the source before the update is applied. In
/// ClickHouse every version of every row is checked, not only the current one.
async fn unchanged_toast_values_are_never_made_up(kind: Kind) {
    let Setup {
        ferry,
        client,
        dest,
        src,
        // Kept to the end: dropping it drops the source database.
        source: _source,
    } = setup(kind).await;
    // `doc` is a function of `tag` alone, which never changes: any version of a row whose
    // doc does not match its tag holds a made-up value.
    src.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, tag int8 NOT NULL, n int8 NOT NULL, doc text NOT NULL);
         ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO t SELECT g, g, 0, repeat(md5(g::text), 400) FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, sync_interval = 1, max_batch_size = 3)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "m", "running", TIMEOUT).await;
    if let Dest::ClickHouse(d) = &dest {
        // Keep every version written from here on, for the check at the end.
        d.client()
            .query("SYSTEM STOP MERGES t")
            .execute()
            .await
            .unwrap();
    }
    // While paused, the changes wait in the slot and arrive together on resume, written three
    // at a time: the updates of rows deleted later are written while the source no longer
    // has them, and some changes of a row share a write, some do not.
    client.batch_execute("PAUSE MIRROR m").await.unwrap();
    src.batch_execute(
        "UPDATE t SET n = n + 1 WHERE id <= 50;                 -- plain updates
         UPDATE t SET n = n + 1 WHERE id <= 20;                 -- the same rows again
         DELETE FROM t WHERE id <= 10;                          -- gone before the resume
         UPDATE t SET id = id + 1000 WHERE id BETWEEN 51 AND 70; -- moved keys
         UPDATE t SET n = n + 5 WHERE id BETWEEN 1051 AND 1060;  -- and updated there
         UPDATE t SET id = id - 1000 + 2000 WHERE id BETWEEN 1051 AND 1055;
         DELETE FROM t WHERE id BETWEEN 2051 AND 2052;",
    )
    .await
    .unwrap();
    client.batch_execute("RESUME MIRROR m").await.unwrap();
    let cols = [
        Col::Val("id"),
        Col::Val("tag"),
        Col::Val("n"),
        Col::Md5("doc"),
    ];
    converge(
        &client,
        &src,
        &dest,
        &View::new("t", &cols, "id"),
        "after the resume",
    )
    .await;

    if let Dest::ClickHouse(d) = &dest {
        let (versions, wrong): (u64, u64) = d
            .client()
            .query(
                "SELECT count(), countIf(doc != repeat(lower(hex(MD5(toString(tag)))), 400))
                 FROM t WHERE _ferry_is_deleted = 0 AND _ferry_version > 0",
            )
            .fetch_one()
            .await
            .unwrap();
        println!("{versions} streamed row versions checked");
        // Each insert keeps one version per key (ClickHouse collapses versions within an
        // insert), so at least one per updated key: 50 plain, 20 moved, 5 moved again.
        assert!(versions >= 50 + 20 + 5, "{versions}");
        assert_eq!(wrong, 0, "row versions with a made-up doc");
    }
    ferry.stop().await;
}
