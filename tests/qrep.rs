//! Query mirrors end to end: the daemon in-process, real PostgreSQL and ClickHouse.
//!
//! Each test makes its own source and destination databases. Runs are awaited by polling the
//! catalog (`mirror_status.last_watermark`, `qrep_runs`), never by sleeping a fixed time.

use std::time::{Duration, Instant};

use ferry_e2e::{setup, sqlstate, Setup};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(90);

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
    let sql = sql.replace("{db}", &format!("`{}`", s.dest.name));
    let mut cursor = s
        .dest
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
    let s = setup().await;
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
