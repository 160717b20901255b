//! The migration runner.
//!
//! Migrations are the SQL files in the repository's `migrations/` folder, embedded in the
//! binary and applied in order at start. The whole run holds a session advisory lock, so two
//! daemons starting at once apply each migration once; each migration runs in its own
//! transaction together with the row that records it in `ferry.schema_migrations`, so a
//! failed migration leaves nothing behind.
//! A recorded migration whose text has since changed is an error: the catalog and the binary
//! disagree about what the schema is.
//!
//! # The reader role
//!
//! After the migrations, still under the lock, [`prepare_reader`] makes sure of the role
//! that clients' SQL runs as (see [`crate::reader`]): it exists (created `NOLOGIN` when
//! missing, which takes `CREATEROLE` once), has no power beyond reading (not a superuser,
//! cannot log in, create roles or databases, replicate or bypass row security, and is a
//! member of no role), the catalog user may take it (`SET ROLE`), and it may `SELECT` from
//! every view in the schema `public` — granted on every run, so a view a later migration
//! adds or recreates is readable without that migration saying so — and from nothing in
//! the schema `ferry`. Anything missing that the catalog user may not fix stops the daemon
//! at start, with the statement an administrator can run instead.

use ferry_core::ident::{pg_ident, pg_qualified};
use ferry_core::ErrorKind;
use ring::digest::{digest, SHA256};
use tokio_postgres::Client;
use tracing::info;

use crate::CatalogError;

/// The reader role's name unless the daemon is told otherwise.
pub const DEFAULT_READER_ROLE: &str = "ferry_reader";

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
        version: 6,
        name: "frontdoor",
        sql: include_str!("../../../migrations/0006_frontdoor.sql"),
    },
    Migration {
        version: 7,
        name: "tables",
        sql: include_str!("../../../migrations/0007_tables.sql"),
    },
    Migration {
        version: 8,
        name: "qrep",
        sql: include_str!("../../../migrations/0008_qrep.sql"),
    },
    Migration {
        version: 9,
        name: "observability",
        sql: include_str!("../../../migrations/0009_observability.sql"),
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

/// Brings the catalog database to the current schema and prepares the reader role
/// ([`prepare_reader`]). Running it again changes nothing.
pub async fn migrate(
    client: &mut Client,
    reader_role: &str,
) -> Result<MigrationReport, CatalogError> {
    locked(client, async |client| {
        let report = run_locked(client, MIGRATIONS).await?;
        prepare_reader(client, reader_role).await?;
        Ok(report)
    })
    .await
}

/// The migrations of an explicit list, without the reader role, for tests.
pub async fn migrate_with(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<MigrationReport, CatalogError> {
    locked(client, async |client| run_locked(client, migrations).await).await
}

/// Runs `f` holding the advisory lock that serialises migration runs.
async fn locked<T>(
    client: &mut Client,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    // IF NOT EXISTS notices are noise in the daemon's log.
    client
        .batch_execute("SET client_min_messages = warning")
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = f(client).await;
    // If the unlock fails the connection is gone, and the lock with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

/// Makes `role` ready to run clients' SQL: see the module doc. Roles belong to the whole
/// cluster, so another daemon may be creating or granting the same role at this moment
/// for a catalog of its own: a step that loses such a race is tried again.
pub async fn prepare_reader(client: &Client, role: &str) -> Result<(), CatalogError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ensure_role(client, role).await {
            Err(e) if attempt < 5 && is_race(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            other => break other?,
        }
    }
    grant_views(client, role).await
}

/// Errors of two sessions creating or granting the same role at once.
fn is_race(e: &CatalogError) -> bool {
    matches!(
        e.sqlstate(),
        Some("42710" | "23505" | "XX000" | "40001" | "40P01")
    )
}

async fn ensure_role(client: &Client, role: &str) -> Result<(), CatalogError> {
    let user: String = client.query_one("SELECT current_user", &[]).await?.get(0);
    let role_sql = pg_ident(role);
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some();
    if !exists {
        match client
            .batch_execute(&format!("CREATE ROLE {role_sql} NOLOGIN"))
            .await
        {
            Ok(()) => info!(role, "created the role clients' SQL runs as"),
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
                return Err(misconfigured(format!(
                    "the role \"{role}\" that clients' SQL runs as does not exist, and the catalog \
                     user \"{user}\" may not create it. Create it once as a superuser: \
                     CREATE ROLE {role_sql} NOLOGIN; GRANT {role_sql} TO {user_sql}; \
                     or give \"{user}\" CREATEROLE",
                    user_sql = pg_ident(&user),
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }

    let powers = client
        .query_one(
            "SELECT r.rolsuper, r.rolcanlogin, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                    r.rolbypassrls,
                    EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid)
             FROM pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await?;
    let names = [
        "is a superuser",
        "may log in",
        "may create roles",
        "may create databases",
        "may replicate",
        "bypasses row security",
        "is a member of other roles",
    ];
    let extra: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| powers.get::<_, bool>(*i))
        .map(|(_, n)| *n)
        .collect();
    if !extra.is_empty() {
        return Err(misconfigured(format!(
            "the role \"{role}\" that clients' SQL runs as {}; Ferry gives it no more than \
             reading its views. Use a role of its own (--catalog-reader-role), or take these \
             powers from it (ALTER ROLE {role_sql} NOSUPERUSER NOLOGIN NOCREATEROLE NOCREATEDB \
             NOREPLICATION NOBYPASSRLS, and REVOKE its memberships)",
            extra.join(", ")
        )));
    }

    let member: bool = client
        .query_one(
            "SELECT pg_has_role(current_user, $1::name, 'MEMBER')",
            &[&role],
        )
        .await?
        .get(0);
    if !member {
        if let Err(e) = client
            .batch_execute(&format!("GRANT {role_sql} TO CURRENT_USER"))
            .await
        {
            if e.code().map(|c| c.code()) != Some("42501") {
                return Err(e.into());
            }
        }
    }
    // Whether SET ROLE works is what counts (PostgreSQL 16 can grant membership without it).
    let check = client
        .batch_execute(&format!("BEGIN; SET LOCAL ROLE {role_sql}"))
        .await;
    let _ = client.batch_execute("ROLLBACK").await;
    if let Err(e) = check {
        if e.code().map(|c| c.code()) == Some("42501") {
            return Err(misconfigured(format!(
                "the catalog user \"{user}\" may not take the role \"{role}\" that clients' SQL \
                 runs as. As a superuser: GRANT {role_sql} TO {}",
                pg_ident(&user)
            )));
        }
        return Err(e.into());
    }
    Ok(())
}

/// SELECT on every view in `public`, nothing in `ferry`.
async fn grant_views(client: &Client, role: &str) -> Result<(), CatalogError> {
    let role_sql = pg_ident(role);
    let views = client
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'v' ORDER BY 1",
            &[],
        )
        .await?;
    let mut sql = format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA ferry FROM {role_sql};
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA ferry FROM {role_sql};
         REVOKE ALL ON SCHEMA ferry FROM {role_sql};"
    );
    for view in &views {
        let name: String = view.get(0);
        sql.push_str(&format!(
            "GRANT SELECT ON {} TO {role_sql};",
            pg_qualified("public", &name)
        ));
    }
    client.batch_execute(&sql).await?;
    Ok(())
}

fn misconfigured(message: String) -> CatalogError {
    CatalogError::Database {
        kind: ErrorKind::Misconfigured,
        message,
        source: None,
    }
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
