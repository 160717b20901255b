//! What a Ferry login could do through the catalog pass-through before, tried again with a
//! mirror running: each attempt gets its SQLSTATE, and afterwards nothing happened — no file
//! written, no slot made or dropped, no backend terminated, no lock held — and the mirror
//! still streams.

use std::time::{Duration, Instant};

use ferry_e2e::{scalar, setup, sqlstate, wait_for_state, Kind};
use ferry_testkit::random_name;

const TIMEOUT: Duration = Duration::from_secs(60);

/// When the catalog database's statistics were last reset.
async fn stats_reset(catalog: &tokio_postgres::Client) -> String {
    catalog
        .query_one(
            "SELECT coalesce(stats_reset::text, '') FROM pg_stat_database \
             WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_pass_through_reads_views_and_nothing_more() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (public.t:t) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "m", "running", TIMEOUT).await;
    let slot: String = s
        .client
        .query_one(
            "SELECT slot_name FROM mirror_status WHERE mirror = 'm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let catalog = s.ferry.catalog().await;
    let server = s.source.connect().await;
    let before_reset = stats_reset(&catalog).await;

    let program_out = std::env::temp_dir().join(random_name("ferry-attack-program"));
    let copy_out = std::env::temp_dir().join(random_name("ferry-attack-copy"));
    let new_slot = random_name("ferry_attack");
    let lock_key = 0x4645_5252_595f_4d47_i64; // the migration lock
    let attacks = [
        (
            format!(
                "COPY (SELECT 1) TO PROGRAM 'id > {}'",
                program_out.display()
            ),
            "0A000",
        ),
        (
            format!("COPY ferry.peers TO '{}'", copy_out.display()),
            "0A000",
        ),
        ("COPY ferry.peers TO STDOUT".to_owned(), "0A000"),
        ("SELECT pg_read_file('/etc/hostname')".to_owned(), "42501"),
        ("SELECT pg_ls_dir('.')".to_owned(), "42501"),
        ("SELECT rolpassword FROM pg_authid".to_owned(), "42501"),
        (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                .to_owned(),
            "42501",
        ),
        ("SELECT pg_reload_conf()".to_owned(), "42501"),
        ("SELECT pg_switch_wal()".to_owned(), "42501"),
        ("SELECT pg_stat_reset()".to_owned(), "42501"),
        (
            format!("SELECT pg_create_logical_replication_slot('{new_slot}', 'pgoutput')"),
            "42501",
        ),
        (
            format!("SELECT pg_drop_replication_slot('{slot}')"),
            "42501",
        ),
        (format!("SELECT pg_advisory_lock({lock_key})"), "42501"),
        ("SELECT * FROM ferry.peers".to_owned(), "42501"),
        ("SELECT value FROM ferry.settings".to_owned(), "42501"),
        (
            "SELECT set_config('role', 'postgres', true), pg_read_file('/etc/hostname')".to_owned(),
            "42501",
        ),
        ("SET ROLE postgres".to_owned(), "42501"),
        (
            "SELECT * FROM query_to_xml('SELECT pg_drop_replication_slot(''x'')', true, true, '')"
                .to_owned(),
            "42501",
        ),
        ("SELECT nextval('ferry.peers_id_seq')".to_owned(), "42501"),
        ("SELECT lo_import('/etc/hostname')".to_owned(), "42501"),
        ("DELETE FROM peers".to_owned(), "25006"),
        ("DROP VIEW mirror_status".to_owned(), "25006"),
        (
            "WITH d AS (DELETE FROM ferry.mirrors RETURNING 1) SELECT * FROM d".to_owned(),
            "25006",
        ),
        ("LISTEN x".to_owned(), "0A000"),
    ];
    for (sql, code) in &attacks {
        let simple = s.client.simple_query(sql).await.err();
        let extended = s.client.query(sql.as_str(), &[]).await.err();
        for (protocol, e) in [("simple", simple), ("extended", extended)] {
            let e = e.unwrap_or_else(|| panic!("{protocol}: {sql} ran"));
            assert_eq!(sqlstate(&e), *code, "{protocol}: {sql}: {e:?}");
        }
    }

    // Nothing happened.
    assert!(
        !program_out.exists() && !copy_out.exists(),
        "a file was written"
    );
    let slots: Vec<String> = server
        .query("SELECT slot_name FROM pg_replication_slots ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        slots.contains(&slot),
        "the mirror's slot is gone: {slots:?}"
    );
    assert!(!slots.contains(&new_slot), "a slot was made");
    let locked: bool = catalog
        .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key])
        .await
        .unwrap()
        .get(0);
    assert!(locked, "the migration lock is held");
    catalog
        .query_one("SELECT pg_advisory_unlock($1)", &[&lock_key])
        .await
        .unwrap();
    assert_eq!(stats_reset(&catalog).await, before_reset);
    let peers: i64 = scalar(&catalog, "SELECT count(*) FROM ferry.peers").await;
    assert_eq!(peers, 2);

    // What a login may do still works: the views, psql's \d, the system catalogs.
    let rows = s
        .client
        .simple_query(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
             ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'v' \
             AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1",
        )
        .await
        .unwrap();
    let views: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    for view in ["cdc_batches", "mirror_status", "mirror_tables", "peers"] {
        assert!(views.iter().any(|v| v == view), "{views:?}");
        s.client
            .simple_query(&format!("SELECT * FROM {view}"))
            .await
            .unwrap();
    }

    // And the mirror streams on: a new row arrives.
    s.src
        .batch_execute("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    let ch = s.dest.ch().client();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n: u64 = ch
            .query("SELECT count() FROM t FINAL WHERE _ferry_is_deleted = 0")
            .fetch_one()
            .await
            .unwrap();
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the change did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_state(&s.client, "m", "running", TIMEOUT).await;
    s.client.batch_execute("DROP MIRROR m").await.unwrap();
    s.ferry.stop().await;
}
