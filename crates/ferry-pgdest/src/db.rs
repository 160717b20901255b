//! Connections to the destination, and the small look-ups every part needs.

use ferry_core::destination::TargetName;
use ferry_core::peer::PostgresConfig;
use ferry_core::Error;
use ferry_postgres::connect::{connect, SourceError};
use tokio_postgres::Client;

/// The mirror a destination is built for. The id is the mirror's in the catalog; it is not
/// known yet while `CREATE MIRROR` checks and creates tables (which need none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorId {
    pub name: String,
    pub id: Option<i64>,
}

/// The destination server of one mirror.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub cfg: PostgresConfig,
}

impl Db {
    /// A new connection, with Ferry's session settings and the peer's TLS settings.
    pub async fn connect(&self, application_name: &str) -> Result<Client, Error> {
        Ok(connect(&self.cfg, application_name).await?)
    }

    /// Turns a server's error into Ferry's, keeping its SQLSTATE.
    pub fn err(&self) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        move |e| SourceError::from_pg(&self.cfg, e).into()
    }
}

/// The OID of a table (ordinary or partitioned), if there is one.
pub(crate) async fn table_oid(
    db: &Db,
    client: &Client,
    name: &TargetName,
) -> Result<Option<u32>, Error> {
    let row = client
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&name.namespace, &name.table],
        )
        .await
        .map_err(db.err())?;
    Ok(row.map(|r| r.get(0)))
}

/// The server's version number (`server_version_num`).
pub(crate) async fn server_version(db: &Db, client: &Client) -> Result<i32, Error> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(db.err())?
        .get(0))
}
