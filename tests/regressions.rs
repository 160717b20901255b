//! Regressions: a resumed initial_copy_only load reconciled by the slot's changes, and the
//! progress of a completed load.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{
    converge, on_every_destination, scalar, setup, vals, wait_for_state, Dest, Kind, Setup, View,
};

on_every_destination!(initial_copy_only_resumed_load_matches_the_source);
on_every_destination!(a_completed_mirror_is_at_100_percent);

/// An initial_copy_only load paused half-way (a restart does the same) while the source
/// changes: after RESUME the pending ranges are read in fresh snapshots and the done ones are
/// not read again, so rows deleted during the pause, and rows whose new version moved into a
/// done range, are only right once the slot's changes since the load began are applied, which
/// the mirror does before it completes.
async fn initial_copy_only_resumed_load_matches_the_source(kind: Kind) {
    let Setup {
        ferry,
        client,
        source: _source,
        dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, note text NOT NULL);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000000) g;",
    )
    .await
    .unwrap();
    src.batch_execute("VACUUM ANALYZE t").await.unwrap();
    client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (public.t:t)
             WITH (do_initial_copy = true, initial_copy_only = true,
                   snapshot_num_rows_per_partition = 5000, snapshot_max_parallel_workers = 1)",
        )
        .await
        .unwrap();
    let catalog = ferry.catalog().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = scalar(
            &catalog,
            "SELECT count(*) FROM ferry.mirror_partition WHERE state = 'done' AND partition_no = 0",
        )
        .await;
        if done == 1 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.batch_execute("PAUSE MIRROR m").await.unwrap();
    // While paused: rows of the first (done) range get new versions at the end of the table,
    // in the last, open-ended range (fillfactor 10 keeps them off the full pages): the resumed
    // load reads them there again, so the destination receives them twice (a PostgreSQL
    // destination builds its key after the load, and must keep one of each).
    src.batch_execute(
        "ALTER TABLE t SET (fillfactor = 10);
         UPDATE t SET note = 'grown ' || note WHERE id BETWEEN 3001 AND 3100;
         ALTER TABLE t RESET (fillfactor);",
    )
    .await
    .unwrap();
    // Then free the first range's pages, and grow rows of the last (pending) range so that
    // their new versions move into that free space.
    src.batch_execute("DELETE FROM t WHERE id <= 2000")
        .await
        .unwrap();
    src.batch_execute("VACUUM (INDEX_CLEANUP ON) t")
        .await
        .unwrap();
    src.batch_execute("UPDATE t SET note = 'moved ' || repeat('x', 1000) WHERE id > 999000")
        .await
        .unwrap();
    let first_end: i64 = scalar(
        &catalog,
        "SELECT end_block FROM ferry.mirror_partition WHERE partition_no = 0",
    )
    .await;
    let moved: i64 = src
        .query_one(
            &format!(
                "SELECT count(*) FROM t WHERE id > 999000 AND (ctid::text::point)[0] < {first_end}"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("{moved} updated rows now live in blocks < {first_end} (partition 0, done before the pause)");
    let last_start: i64 = scalar(
        &catalog,
        "SELECT start_block FROM ferry.mirror_partition WHERE end_block IS NULL",
    )
    .await;
    let twice: i64 = src
        .query_one(
            &format!(
                "SELECT count(*) FROM t WHERE id BETWEEN 3001 AND 3100 AND (ctid::text::point)[0] >= {last_start}"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 100, "rows of partition 0 now in the last range");
    client.batch_execute("RESUME MIRROR m").await.unwrap();
    wait_for_state(&client, "m", "completed", Duration::from_secs(300)).await;

    let view = View::new("t", &vals(&["id", "note"]), "id");
    converge(&client, &src, &dest, &view, "resumed load").await;
    if let Dest::Postgres(d) = &dest {
        let keyed: i64 = d
            .connect()
            .await
            .query_one(
                "SELECT count(*) FROM pg_index WHERE indrelid = 'public.t'::regclass AND indisprimary",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(keyed, 1, "the key was built");
    }
    ferry.stop().await;
}

/// A completed mirror shows 100 percent even when the planner's estimate was stale (rows
/// deleted after the last ANALYZE).
async fn a_completed_mirror_is_at_100_percent(kind: Kind) {
    let Setup {
        ferry,
        client,
        source: _source,
        dest: _dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE TABLE shrink (id int PRIMARY KEY); INSERT INTO shrink SELECT generate_series(1, 10000);
         ANALYZE shrink; DELETE FROM shrink WHERE id > 2000;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (public.shrink:shrink)
             WITH (do_initial_copy = true, initial_copy_only = true)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "m", "completed", Duration::from_secs(120)).await;
    let r = client
        .query_one("SELECT percent::float8, rows_copied::int8, rows_estimated::int8 FROM mirror_status WHERE mirror = 'm'", &[])
        .await
        .unwrap();
    let (percent, copied, estimated): (Option<f64>, i64, i64) = (r.get(0), r.get(1), r.get(2));
    println!("completed: percent {percent:?}, rows_copied {copied}, rows_estimated {estimated}");
    assert_eq!(percent, Some(100.0));
    ferry.stop().await;
}
