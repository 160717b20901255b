//! The catalog against the real PostgreSQL.

use ferry_catalog::{Catalog, SecretKey};
use ferry_core::peer::{OptionValue, PeerConfig, PeerKind};
use ferry_testkit::PgServer;

const KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
const OTHER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn key(hex: &str) -> SecretKey {
    SecretKey::from_hex(hex).unwrap()
}

/// The catalog schema as PostgreSQL describes it: every column of every table and view.
async fn schema_fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT table_schema || '.' || table_name || '.' || column_name || ':' || data_type
             FROM information_schema.columns WHERE table_schema IN ('ferry', 'public')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migrations_apply_once_and_rerun_is_a_no_op() {
    let db = PgServer::from_env().temp_database("ferry_cat").await;
    let (_, first) = Catalog::open(&db.url(), key(KEY)).await.unwrap();
    assert!(!first.applied.is_empty());
    assert!(first.already.is_empty());

    let client = db.connect().await;
    let before = schema_fingerprint(&client).await;
    assert!(
        before.iter().any(|c| c.starts_with("public.peers.options")),
        "{before:?}"
    );
    let applied_at: Vec<String> = client
        .query(
            "SELECT version || '@' || applied_at::text FROM ferry.schema_migrations ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let (_, second) = Catalog::open(&db.url(), key(KEY)).await.unwrap();
    assert!(
        second.applied.is_empty(),
        "second run applied {:?}",
        second.applied
    );
    assert_eq!(second.already, first.applied);
    assert_eq!(schema_fingerprint(&client).await, before);
    let applied_again: Vec<String> = client
        .query(
            "SELECT version || '@' || applied_at::text FROM ferry.schema_migrations ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied_at, applied_again);
}

#[tokio::test]
async fn concurrent_starts_apply_each_migration_once() {
    let db = PgServer::from_env().temp_database("ferry_cat").await;
    let url = db.url();
    let (a, b) = tokio::join!(Catalog::open(&url, key(KEY)), Catalog::open(&url, key(KEY)));
    let (a, b) = (a.unwrap().1, b.unwrap().1);
    let mut applied = [a.applied, b.applied].concat();
    applied.sort_unstable();
    let expected: Vec<i32> = ferry_catalog::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(applied, expected);
}

#[tokio::test]
async fn wrong_key_is_refused_at_open() {
    let db = PgServer::from_env().temp_database("ferry_cat").await;
    Catalog::open(&db.url(), key(KEY)).await.unwrap();
    let err = Catalog::open(&db.url(), key(OTHER_KEY))
        .await
        .err()
        .expect("wrong key must fail");
    assert!(err.to_string().contains("secret key"), "{err}");
}

#[tokio::test]
async fn peer_password_is_sealed_and_masked() {
    let db = PgServer::from_env().temp_database("ferry_cat").await;
    let (catalog, _) = Catalog::open(&db.url(), key(KEY)).await.unwrap();
    let options: Vec<(String, OptionValue)> = [
        ("host", OptionValue::String("localhost".into())),
        ("user", OptionValue::String("u".into())),
        ("password", OptionValue::String("s3cret-pw".into())),
        ("database", OptionValue::String("d".into())),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    let config = PeerConfig::from_options(PeerKind::Postgres, &options).unwrap();
    assert!(catalog.insert_peer("src", &config).await.unwrap());
    assert!(
        !catalog.insert_peer("src", &config).await.unwrap(),
        "duplicate must not insert"
    );

    let stored = catalog.peer("src").await.unwrap().unwrap();
    assert_eq!(stored.config, config);

    let client = db.connect().await;
    let raw: String = client
        .query_one(
            "SELECT row_to_json(p)::text FROM ferry.peers p WHERE name = 'src'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!raw.contains("s3cret-pw"), "{raw}");
    let shown: String = client
        .query_one(
            "SELECT options::text FROM public.peers WHERE name = 'src'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        shown.contains("********") && !shown.contains("s3cret"),
        "{shown}"
    );

    assert!(catalog.delete_peer("src").await.unwrap());
    assert!(!catalog.delete_peer("src").await.unwrap());
    assert!(catalog.peer("src").await.unwrap().is_none());
}
