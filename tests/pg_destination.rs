//! What only a PostgreSQL destination does: user-defined types recreated from the source's
//! definitions, tables identical to the source's in a full ordered dump after a load and a
//! stream of every kind of change, tables without a key kept as multisets, what `CREATE
//! MIRROR` checks on the destination (privileges, extensions, types and tables in the way),
//! and the position it keeps there.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use bytes::BytesMut;
use ferry_e2e::{scalar, setup, sqlstate, wait_for_state, Dest, Kind};
use ferry_testkit::{random_name, PgServer, TempPgDatabase};
use futures::StreamExt;
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(180);

const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.posint AS int4 NOT NULL CHECK (VALUE > 0);
CREATE DOMAIN app.email AS citext CHECK (VALUE ~ '@');
CREATE TYPE app.pair AS (a int, b text, m app.mood, tags text[], d app.posint);
CREATE TYPE app.span AS RANGE (subtype = float8);
CREATE TABLE app.kinds (
    id int8 PRIMARY KEY,
    m app.mood, ms app.mood[], p app.pair, ps app.pair[], d app.posint, ds app.posint[],
    e app.email, r app.span, rs app.span[], mr app.span_multirange, h hstore, hs hstore[],
    j jsonb, n numeric(12, 3), c text COLLATE "C", big text
);
ALTER TABLE app.kinds ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE app.dups (a int, b text);
ALTER TABLE app.dups REPLICA IDENTITY FULL;
CREATE TABLE app.by_index (id int NOT NULL, v text);
CREATE UNIQUE INDEX by_index_id ON app.by_index (id);
ALTER TABLE app.by_index REPLICA IDENTITY USING INDEX by_index_id;
"#;

const ROWS: &str = r#"
INSERT INTO app.kinds
SELECT g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::app.mood, ARRAY['ok', NULL, 'happy']::app.mood[],
       ROW(g, 'b' || g, 'sad', ARRAY['x', NULL], g)::app.pair,
       ARRAY[ROW(1, NULL, 'happy', '{}', 2)::app.pair, NULL],
       g, ARRAY[g, g + 1]::app.posint[], 'U' || g || '@Example.org',
       app.span(g, g + 0.5), ARRAY[app.span(1, 2), 'empty']::app.span[],
       app.span_multirange(app.span(1, 2), app.span(3, 4)),
       'k=>v, n=>NULL', ARRAY['a=>1'::hstore, NULL], ('{"g": ' || g || '}')::jsonb,
       g / 7.0, 'c' || g, CASE WHEN g % 5 = 0 THEN repeat(md5(g::text), 400) END
FROM generate_series(1, 500) g;
INSERT INTO app.dups SELECT g % 50, CASE WHEN g % 7 = 0 THEN NULL ELSE 'v' || g % 50 END
FROM generate_series(1, 300) g;
INSERT INTO app.by_index SELECT g, 'v' || g FROM generate_series(1, 100) g;
"#;

/// Changes of every kind: a key moved, TOASTed values left alone, arrays and composites of
/// user types rewritten, one of several identical rows deleted or updated, a TRUNCATE.
const CHANGES: &str = r#"
UPDATE app.kinds SET m = 'happy', ps = ARRAY[ROW(9, 'nine', 'ok', ARRAY['y'], 9)::app.pair] WHERE id % 3 = 0;
UPDATE app.kinds SET id = id + 1000 WHERE id BETWEEN 5 AND 25;
UPDATE app.kinds SET n = -n, e = 'X@y.z' WHERE id % 10 = 5;
DELETE FROM app.kinds WHERE id % 11 = 0;
INSERT INTO app.kinds (id, d, big) VALUES (5000, 7, repeat('q', 9000)), (5001, 8, NULL);
DELETE FROM app.dups WHERE ctid IN (SELECT min(ctid) FROM app.dups WHERE a < 10 GROUP BY a);
UPDATE app.dups SET b = 'changed' WHERE ctid IN (SELECT max(ctid) FROM app.dups WHERE a BETWEEN 10 AND 14 GROUP BY a);
INSERT INTO app.dups VALUES (1, NULL), (1, NULL), (2, 'v2');
UPDATE app.by_index SET id = id + 100, v = 'moved' WHERE id <= 10;
BEGIN;
TRUNCATE app.by_index;
INSERT INTO app.by_index SELECT g, 'after' FROM generate_series(1, 5) g;
COMMIT;
"#;

/// A full dump of a table's rows, in the order of their text.
async fn dump(client: &Client, table: &str) -> Vec<u8> {
    let sql = format!("COPY (SELECT * FROM {table} x ORDER BY x::text COLLATE \"C\") TO STDOUT");
    let stream = client.copy_out(sql.as_str()).await.unwrap();
    futures::pin_mut!(stream);
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out.to_vec()
}

/// The user-defined types of schema `app`, with what defines them.
const TYPES: &str = r#"
SELECT string_agg(format('%s %s [%s] [%s] [%s] [%s]', t.typname, t.typtype,
         (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
         (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
            FROM pg_attribute WHERE attrelid = t.typrelid AND attnum > 0),
         format_type(nullif(t.typbasetype, 0), t.typtypmod) || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END,
         (SELECT string_agg(pg_get_constraintdef(c.oid), ',') FROM pg_constraint c WHERE c.contypid = t.oid)),
       E'\n' ORDER BY t.typname)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'app' AND t.typtype IN ('e', 'c', 'd', 'r', 'm')
  AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
"#;

/// Waits until every table of `app` dumps the same on both sides.
async fn identical(ferry: &Client, src: &Client, dst: &Client, step: &str) {
    let started = std::time::Instant::now();
    loop {
        let mut differing = Vec::new();
        for t in ["app.kinds", "app.dups", "app.by_index"] {
            let (a, b) = (dump(src, t).await, dump(dst, t).await);
            if a != b {
                differing.push(format!("{t} ({} bytes vs {})", a.len(), b.len()));
            }
        }
        if differing.is_empty() {
            println!("{step}: identical after {:?}", started.elapsed());
            return;
        }
        ferry_e2e::assert_not_failed(ferry, step).await;
        assert!(
            started.elapsed() < TIMEOUT,
            "{step}: tables differ: {differing:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn pg_to_pg_tables_are_identical_in_a_full_ordered_dump() {
    let s = setup(Kind::Postgres).await;
    s.src.batch_execute(SCHEMA).await.unwrap();
    s.src.batch_execute(ROWS).await.unwrap();
    let dst = s.dest.pg().connect().await;
    dst.batch_execute("CREATE EXTENSION citext; CREATE EXTENSION hstore; CREATE SCHEMA app")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR same FROM src TO dst WITH SCHEMA MAPPING (app:app)
             WITH (do_initial_copy = true, snapshot_num_rows_per_partition = 1000)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "same", "running", TIMEOUT).await;
    identical(&s.client, &s.src, &dst, "load").await;
    let types: String = s.src.query_one(TYPES, &[]).await.unwrap().get(0);
    assert_eq!(
        dst.query_one(TYPES, &[]).await.unwrap().get::<_, String>(0),
        types,
        "the destination's types"
    );
    println!("types:\n{types}");

    s.src.batch_execute(CHANGES).await.unwrap();
    identical(&s.client, &s.src, &dst, "changes").await;

    // The position is kept with the data, per mirror, and goes with the mirror.
    let kept: i64 = scalar(
        &dst,
        "SELECT count(*) FROM _ferry.positions WHERE mirror = 'same'",
    )
    .await;
    assert_eq!(kept, 1);
    s.client.batch_execute("DROP MIRROR same").await.unwrap();
    let kept: i64 = scalar(&dst, "SELECT count(*) FROM _ferry.positions").await;
    assert_eq!(kept, 0);
    s.ferry.stop().await;
}

/// A role of the test's own on the shared server, dropped (after the databases it owns
/// things in) when the value is.
struct TempRole {
    name: String,
}

impl Drop for TempRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = PgServer::from_env().connect("postgres").await;
                let _ = admin
                    .batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
                    .await;
            })
        })
        .join();
    }
}

/// What `CREATE MIRROR` checks on a PostgreSQL destination, each refusal creating nothing:
/// the role's missing privileges (all of them, with the GRANTs), a missing extension, a type
/// of the same name that differs, a table in the way; then the same mirror once fixed.
#[tokio::test]
async fn create_mirror_says_what_the_destination_lacks() {
    let s = setup(Kind::Postgres).await;
    let role = TempRole {
        name: random_name("ferry_dst_role"),
    };
    let pg = PgServer::from_env();
    let dest: TempPgDatabase = pg.temp_database("ferry_limited").await;
    let admin = dest.connect().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{r}\" LOGIN PASSWORD 'pw';
             REVOKE TEMPORARY ON DATABASE \"{d}\" FROM PUBLIC;",
            r = role.name,
            d = dest.name
        ))
        .await
        .unwrap();
    s.client
        .batch_execute(&format!(
            "CREATE PEER limited FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = 'pw', database = '{}')",
            pg.host, pg.port, role.name, dest.name
        ))
        .await
        .unwrap();
    s.src
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS hstore;
             CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE t (id int PRIMARY KEY, m mood, h hstore);
             INSERT INTO t VALUES (1, 'ok', 'a=>1'), (2, NULL, NULL);",
        )
        .await
        .unwrap();
    let create = "CREATE MIRROR m FROM src TO limited WITH TABLE MAPPING (t:t)
                  WITH (do_initial_copy = true, initial_copy_only = true)";
    let refused = |sql: &'static str| {
        let client = &s.client;
        async move {
            let e = client.batch_execute(sql).await.expect_err(sql);
            let db = e.as_db_error().cloned().unwrap_or_else(|| panic!("{e}"));
            println!("{}: {} ({:?})", db.code().code(), db.message(), db.hint());
            db
        }
    };

    // The extension first: it is a type check, before privileges are totalled.
    let e = refused(create).await;
    assert_eq!(e.code().code(), "42704");
    assert!(e.message().contains("hstore"), "{e:?}");
    assert!(e.hint().unwrap_or("").contains("CREATE EXTENSION"), "{e:?}");
    admin
        .batch_execute("CREATE EXTENSION hstore")
        .await
        .unwrap();

    // Every missing privilege at once.
    let e = refused(create).await;
    assert_eq!(e.code().code(), "42501");
    let hint = e.hint().unwrap_or("").to_owned();
    for grant in [
        "GRANT TEMPORARY ON DATABASE",
        "GRANT CREATE ON DATABASE",
        "GRANT USAGE, CREATE ON SCHEMA \"public\"",
    ] {
        assert!(hint.contains(grant), "{grant} missing from {hint}");
    }
    admin
        .batch_execute(&format!(
            "GRANT TEMPORARY, CREATE ON DATABASE \"{d}\" TO \"{r}\";
             GRANT USAGE, CREATE ON SCHEMA public TO \"{r}\";",
            r = role.name,
            d = dest.name
        ))
        .await
        .unwrap();

    // A type of that name that is not the source's.
    admin
        .batch_execute("CREATE TYPE mood AS ENUM ('sad')")
        .await
        .unwrap();
    let e = refused(create).await;
    assert_eq!(e.code().code(), "42804");
    assert!(e.message().contains("'ok', 'happy'"), "{e:?}");
    admin.batch_execute("DROP TYPE mood").await.unwrap();

    // A table in the way, with rows; compatible otherwise, so a mirror without a load may
    // use it.
    admin
        .batch_execute(&format!(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'extra');
             CREATE TABLE t (id int PRIMARY KEY, m mood, h hstore, note text DEFAULT 'mine');
             INSERT INTO t VALUES (7, 'extra', NULL);
             ALTER TABLE t OWNER TO \"{r}\"; ALTER TYPE mood OWNER TO \"{r}\";",
            r = role.name
        ))
        .await
        .unwrap();
    let e = refused(create).await;
    assert_eq!(e.code().code(), "55000");
    assert!(
        e.hint().unwrap_or("").contains("do_initial_copy = false"),
        "{e:?}"
    );
    // Nothing was created by the refusals.
    let mirrors: i64 = scalar(&s.client, "SELECT count(*) FROM mirror_status").await;
    assert_eq!(mirrors, 0);
    let ferry_schema: i64 = scalar(
        &admin,
        "SELECT count(*) FROM pg_namespace WHERE nspname = '_ferry'",
    )
    .await;
    assert_eq!(ferry_schema, 0);

    // Emptied, the table is used as it is: its extra column keeps its default.
    admin.batch_execute("TRUNCATE t").await.unwrap();
    s.client.batch_execute(create).await.unwrap();
    wait_for_state(&s.client, "m", "completed", TIMEOUT).await;
    let rows: Vec<String> = admin
        .query(
            "SELECT concat_ws('|', id, m, h, note) FROM t ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["1|ok|\"a\"=>\"1\"|mine", "2|mine"]);
    s.ferry.stop().await;
    drop(admin);
    drop(dest);
    drop(role);
}

/// `primary_key_during_load`: the destination table has its key from the start, and the load
/// still ends with every row.
#[tokio::test]
async fn the_key_can_be_kept_during_the_load() {
    let s = setup(Kind::Postgres).await;
    s.src
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR k FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, initial_copy_only = true, primary_key_during_load = true,
                   snapshot_num_rows_per_partition = 2000)",
        )
        .await
        .unwrap();
    let dst = s.dest.pg().connect().await;
    // The table has its key as soon as it exists.
    let keyed: i64 = scalar(
        &dst,
        "SELECT count(*) FROM pg_index WHERE indrelid = 'public.t'::regclass AND indisprimary",
    )
    .await;
    assert_eq!(keyed, 1);
    wait_for_state(&s.client, "k", "completed", TIMEOUT).await;
    let view = ferry_e2e::View::new("t", &ferry_e2e::vals(&["id", "v"]), "id");
    ferry_e2e::converge(&s.client, &s.src, &s.dest, &view, "loaded").await;
    assert!(matches!(s.dest, Dest::Postgres(_)));
    let e = s
        .client
        .batch_execute("CREATE MIRROR bad FROM src TO dst WITH TABLE MAPPING (t:t2) WITH (do_initial_copy = true, primary_key_during_load = 1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{e}");
    s.ferry.stop().await;
}
