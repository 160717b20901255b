//! The migration runner.
//!
//! Migrations are the SQL files in the repository's `migrations/` folder, embedded in the
//! binary and applied in order at start. The whole run holds a session advisory lock, so two
//! daemons starting at once apply each migration once; each migration runs in its own
//! transaction together with the row that records it in `ferry.schema_migrations`, so a
//! failed migration leaves nothing behind.
//! A recorded migration whose text has since changed is an error: the catalog and the binary
//! disagree about what the schema is.

use ring::digest::{digest, SHA256};
use tokio_postgres::Client;
use tracing::info;

use crate::CatalogError;

/// One embedded migration.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog",
        sql: include_str!("../../../migrations/0001_catalog.sql"),
    },
    Migration {
        version: 2,
        name: "mirrors",
        sql: include_str!("../../../migrations/0002_mirrors.sql"),
    },
    Migration {
        version: 3,
        name: "resync",
        sql: include_str!("../../../migrations/0003_resync.sql"),
    },
    Migration {
        version: 4,
        name: "streaming",
        sql: include_str!("../../../migrations/0004_streaming.sql"),
    },
    Migration {
        version: 5,
        name: "lag",
        sql: include_str!("../../../migrations/0005_lag.sql"),
    },
    Migration {
        version: 7,
        name: "tables",
        sql: include_str!("../../../migrations/0007_tables.sql"),
    },
];

/// Arbitrary key of the advisory lock that serialises migration runs.
const LOCK_KEY: i64 = 0x4645_5252_595f_4d47; // "FERRY_MG"

/// What a run of [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// Versions that were there already.
    pub already: Vec<i32>,
}

fn checksum(sql: &str) -> String {
    hex::encode(digest(&SHA256, sql.as_bytes()))
}

/// Brings the catalog database to the current schema. Running it again is a no-op.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, CatalogError> {
    migrate_with(client, MIGRATIONS).await
}

/// [`migrate`] with an explicit list, for tests.
pub async fn migrate_with(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<MigrationReport, CatalogError> {
    // IF NOT EXISTS notices are noise in the daemon's log.
    client
        .batch_execute("SET client_min_messages = warning")
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = run_locked(client, migrations).await;
    // If the unlock fails the connection is gone, and the lock with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn run_locked(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<MigrationReport, CatalogError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS ferry;
             CREATE TABLE IF NOT EXISTS ferry.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
    let mut report = MigrationReport {
        applied: Vec::new(),
        already: Vec::new(),
    };
    for m in migrations {
        let tx = client.transaction().await?;
        let sum = checksum(m.sql);
        let row = tx
            .query_opt(
                "SELECT checksum FROM ferry.schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?;
        if let Some(row) = row {
            let recorded: String = row.get(0);
            if recorded != sum {
                return Err(CatalogError::Corrupt(format!(
                    "migration {} ({}) was applied with different contents",
                    m.version, m.name
                )));
            }
            report.already.push(m.version);
            continue;
        }
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO ferry.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await?;
        tx.commit().await?;
        info!(
            version = m.version,
            name = m.name,
            "applied catalog migration"
        );
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_checksums_stable() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert_eq!(checksum("x"), checksum("x"));
        assert_ne!(checksum("x"), checksum("y"));
    }
}
