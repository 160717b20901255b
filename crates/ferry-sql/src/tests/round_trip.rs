//! parse → print → parse gives an equal value, for every statement form.

use super::round_trip;

const CREATE_PEERS: &[&str] = &[
    "CREATE PEER pg FROM POSTGRES WITH (host = 'localhost', port = 5432, user = 'postgres', \
     password = 'secret', database = 'app')",
    "create peer if not exists Ch from clickhouse with (host='ch', port=9000, secure=false)",
    "CREATE PEER \"My Peer\" FROM PostgreS",
    "CREATE PEER p FROM POSTGRES WITH (password = 'it''s', note = '')",
    "CREATE PEER p FROM POSTGRES WITH (a = -1, b = 0.5, c = +7, d = 1e6, e = - 2.5e-3, f = 1_000)",
    "CREATE PEER p FROM POSTGRES WITH (ssl = TRUE, verify = False, mode = Require, q = \"MiXed\")",
    "CREATE PEER p FROM POSTGRES WITH (x = \"true\", y = \"with space\", z = \"a\"\"b\", w = on)",
    "CREATE PEER p FROM POSTGRES WITH (\"Odd Name\" = 1, \"UPPER\" = 2)",
    "CREATE PEER p FROM POSTGRES WITH (s = E'line\\nbreak', t = $$dollar 'quoted'$$, \
     u = $tag$x$y$tag$)",
    "CREATE PEER p FROM POSTGRES WITH (s = 'multi\nline', t = 'back\\slash', u = 'ünïcødé')",
    "CREATE PEER \"select\" FROM POSTGRES",
    "CREATE PEER if FROM POSTGRES",
    "CREATE PEER IF NOT EXISTS if FROM POSTGRES",
    "CREATE PEER \"a\"\"quote\" FROM CLICKHOUSE",
    "CREATE PEER café FROM CLICKHOUSE",
    "CREATE PEER \"\u{e9}t\u{c9}\" FROM CLICKHOUSE",
];

const DROPS_AND_OTHERS: &[&str] = &[
    "DROP PEER p",
    "drop peer if exists P",
    "DROP PEER \"P\"",
    "DROP PEER if",
    "DROP MIRROR m",
    "DROP MIRROR IF EXISTS \"Mirror One\"",
    "PAUSE MIRROR m",
    "resume mirror M",
    "RESYNC MIRROR \"m\"",
    "PAUSE MIRROR \"table\"",
];

const CREATE_MIRRORS: &[&str] = &[
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (public.orders:orders)",
    "CREATE MIRROR IF NOT EXISTS m FROM pg TO ch
     WITH TABLE MAPPING (
       public.orders:orders,
       public.users:analytics.users,
       { from: public.events, to: events, exclude: [payload_raw, \"Other Col\"] }
     )
     WITH (do_initial_copy = true, initial_copy_only = false,
           snapshot_num_rows_per_partition = 500000, publication_name = 'pub',
           replication_slot_name = 'slot', sync_interval = 1, max_batch_size = 100000)",
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ({exclude: [a], to: t, from: s})",
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ({from: s.t, to: d.t, exclude: []})",
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ({to: \"T\", from: \"S\".\"T\"})",
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (\"My Schema\".\"My Table\" : \"Dest\")",
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (Public . Orders : Orders)",
    "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (\"order\":\"user\")",
    "CREATE MIRROR m FROM pg TO ch WITH SCHEMA MAPPING (public:analytics, sales:sales_dw)",
    "CREATE MIRROR m FROM pg TO ch WITH SCHEMA MAPPING (\"Sales\":\"SalesDW\") \
     WITH (do_initial_copy = true)",
    "create mirror \"M\" from \"PG\" to \"CH\" with schema mapping (a:b)",
];

const QUERY_MIRRORS: &[&str] = &[
    "CREATE MIRROR IF NOT EXISTS m FROM src TO dst FOR
     $$ SELECT * FROM public.events WHERE updated_at BETWEEN {{.start}} AND {{.end}} $$
     WITH (destination_table_name = 'events', watermark_column = 'updated_at',
           watermark_table_name = 'public.events', mode = 'upsert', unique_key_columns = 'id',
           parallelism = 4, refresh_interval = 10, num_rows_per_partition = 100000,
           initial_copy_only = false, setup_watermark_table_on_destination = true)",
    "create mirror q from s to d for $t$select 'a$$b' from t$t$",
    "CREATE MIRROR q FROM s TO d FOR $q$SELECT '$$' || x || '$' FROM t$q$",
    "CREATE MIRROR q FROM s TO d FOR $x$SELECT 1 AS \"$q$\"$x$ WITH (a = 1)",
    "CREATE MIRROR q FROM s TO d FOR 'SELECT ''quoted'' ending in $'",
    "EXECUTE MIRROR q",
    "execute mirror \"Q\"",
];

const PLAIN_SQL: &[&str] = &[
    "SELECT 1",
    "SELECT * FROM peers WHERE name = 'it''s' ORDER BY created_at DESC LIMIT 10",
    "SHOW server_version",
    "SET search_path TO public",
    "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT)",
    "DROP TABLE IF EXISTS t",
    "CREATE INDEX ON t (name)",
    "SELECT \"Peer\".name FROM \"Peer\"",
    "BEGIN",
    "COMMIT",
    "EXPLAIN SELECT 1",
    "INSERT INTO t (a, b) VALUES (1, 'x'), (2, $$y$$)",
    "UPDATE t SET a = 1 WHERE b = E'x\\ny'",
    "SELECT 'pause mirror m', $$CREATE PEER$$ -- CREATE PEER",
];

fn check_all(inputs: &[&str]) {
    for sql in inputs {
        assert_eq!(round_trip(sql).len(), 1, "{sql:?}");
    }
}

#[test]
fn create_peer() {
    check_all(CREATE_PEERS);
}

#[test]
fn drop_pause_resume_resync() {
    check_all(DROPS_AND_OTHERS);
}

#[test]
fn create_mirror() {
    check_all(CREATE_MIRRORS);
}

#[test]
fn query_mirrors() {
    check_all(QUERY_MIRRORS);
    let s = &round_trip("CREATE MIRROR m FROM s TO d FOR $$SELECT 1$$")[0];
    assert_eq!(
        s.to_string(),
        "CREATE MIRROR m FROM s TO d FOR $$SELECT 1$$"
    );
}

#[test]
fn plain_sql() {
    check_all(PLAIN_SQL);
}

#[test]
fn everything_at_once() {
    let all: Vec<&str> = [
        CREATE_PEERS,
        DROPS_AND_OTHERS,
        CREATE_MIRRORS,
        QUERY_MIRRORS,
        PLAIN_SQL,
    ]
    .concat();
    let joined = all.join(";\n-- next\n");
    assert_eq!(round_trip(&joined).len(), all.len());
}

#[test]
fn canonical_forms() {
    let cases = [
        (
            "create peer IF not EXISTS P from postgres with (Host='h', PORT = 5432)",
            "CREATE PEER IF NOT EXISTS p FROM POSTGRES WITH (host = 'h', port = 5432)",
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (a = - 1, b = +2, c = \"x\", d = \"X\", e = TRUE)",
            "CREATE PEER p FROM POSTGRES WITH (a = -1, b = 2, c = x, d = \"X\", e = true)",
        ),
        (
            "CREATE PEER p FROM POSTGRES WITH (s = E'it\\'s', t = $$a'b$$)",
            "CREATE PEER p FROM POSTGRES WITH (s = 'it''s', t = 'a''b')",
        ),
        (
            "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ( public.a : a , \
             {to:b, from:public.b} , {from: c, to: c, exclude: [x, \"Y\"]} )",
            "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (public.a:a, public.b:b, \
             {from: c, to: c, exclude: [x, \"Y\"]})",
        ),
        (
            "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING ({from: a, to: b, exclude: []})",
            "CREATE MIRROR m FROM pg TO ch WITH TABLE MAPPING (a:b)",
        ),
        ("drop mirror if exists M", "DROP MIRROR IF EXISTS m"),
        ("DROP PEER \"p\"", "DROP PEER \"p\""),
    ];
    for (input, canonical) in cases {
        let statements = round_trip(input);
        assert_eq!(statements[0].to_string(), canonical, "{input:?}");
    }
}
