//! The engine's [`Destination`] contract, kept by PostgreSQL's means.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::destination::{
    Apply, Capabilities, Destination, Load, QueryDestination, TableSpec, TableToken, TargetName,
    Wire,
};
use ferry_core::ident::{pg_ident, pg_qualified};
use ferry_core::peer::PostgresConfig;
use ferry_core::{ColumnSchema, Error, ErrorKind, Lsn};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::apply::PgApply;
use crate::db::{table_oid, Db, MirrorId};
use crate::ddl::{
    add_key_sql, column_type, create_table_sql, create_types, has_key_index, key_names,
    remove_duplicate_keys,
};
use crate::load::{RangeSink, RangeTarget};
use crate::recode::Recode;
use crate::state::{self, Loaded};

/// The longest name PostgreSQL keeps whole (`NAMEDATALEN - 1`).
const MAX_NAME_BYTES: usize = 63;

/// How a mirror wants its PostgreSQL destination to behave.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// The mirror loads its tables (`do_initial_copy`): a table that exists must be empty.
    pub initial_load: bool,
    /// Create the primary key with the table rather than after the load.
    pub key_during_load: bool,
}

/// A PostgreSQL peer as the destination of one mirror.
pub struct PgDestination {
    pub(crate) db: Db,
    pub(crate) mirror: MirrorId,
    options: PgOptions,
    /// Ferry's own tables exist.
    state_ready: OnceCell<()>,
    /// Per destination table (by OID), how its columns' values are rewritten.
    recode: Mutex<HashMap<u32, Option<Arc<Vec<Recode>>>>>,
}

impl PgDestination {
    pub fn new(cfg: &PostgresConfig, mirror: MirrorId, options: PgOptions) -> PgDestination {
        PgDestination {
            db: Db { cfg: cfg.clone() },
            mirror,
            options,
            state_ready: OnceCell::new(),
            recode: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn ensure_state(&self, client: &tokio_postgres::Client) -> Result<(), Error> {
        self.state_ready
            .get_or_try_init(|| state::ensure(&self.db, client))
            .await
            .map(|_| ())
    }

    /// The rewriting of table `oid`'s columns (in `columns`' order); `None` when none needs it.
    pub(crate) async fn recode_for(
        &self,
        client: &tokio_postgres::Client,
        oid: u32,
        columns: &[ColumnSchema],
    ) -> Result<Option<Arc<Vec<Recode>>>, Error> {
        if let Some(r) = self.lock_recode().get(&oid) {
            return Ok(r.clone());
        }
        let types = ferry_postgres::types::exact_types(client, &self.db.cfg, oid).await?;
        let mut plans = Vec::with_capacity(columns.len());
        for c in columns {
            let ty = types.get(&c.name).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "42703",
                    format!(
                        "column \"{}\" does not exist in the destination table",
                        c.name
                    ),
                )
            })?;
            plans.push(Recode::plan(ty));
        }
        let plan = (!plans.iter().all(Recode::is_keep)).then(|| Arc::new(plans));
        self.lock_recode().insert(oid, plan.clone());
        Ok(plan)
    }

    /// Creates `into` with the table's columns (and its key, if `with_key`), and the types
    /// they use, in one transaction, unless a table of that name exists; `true` if it did.
    pub(crate) async fn create_unless_there(
        &self,
        client: &tokio_postgres::Client,
        table: &TableSpec,
        into: &TargetName,
        with_key: bool,
    ) -> Result<bool, Error> {
        if table_oid(&self.db, client, into).await?.is_some() {
            return Ok(false);
        }
        // PostgreSQL would cut a longer name and create a table of another name.
        if into.table.len() > MAX_NAME_BYTES {
            return Err(Error::invalid(
                "42622",
                format!(
                    "table name \"{}\" is longer than PostgreSQL's {MAX_NAME_BYTES} bytes",
                    into.table
                ),
            )
            .with_hint("Give the destination table a shorter name."));
        }
        client.batch_execute("BEGIN").await.map_err(self.db.err())?;
        let result = async {
            for c in &table.columns {
                create_types(&self.db, client, column_type(table, c)?).await?;
            }
            let sql = create_table_sql(table, into, with_key)?;
            client.batch_execute(&sql).await.map_err(self.db.err())?;
            client.batch_execute("COMMIT").await.map_err(self.db.err())
        }
        .await;
        if let Err(e) = result {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        Ok(true)
    }

    fn lock_recode(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Option<Arc<Vec<Recode>>>>> {
        self.recode.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn table_missing(name: &TargetName) -> Error {
        Error::new(
            ErrorKind::NotFound,
            "42P01",
            format!("destination table {name} does not exist"),
        )
    }
}

#[async_trait]
impl Destination for PgDestination {
    fn describe(&self) -> String {
        format!(
            "PostgreSQL at {}:{} (database {})",
            self.db.cfg.host, self.db.cfg.port, self.db.cfg.database
        )
    }

    fn default_namespace(&self) -> &str {
        "public"
    }

    fn wire(&self) -> Wire {
        Wire::Native
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            stores_position: true,
        }
    }

    async fn check(&self, tables: &[TableSpec]) -> Result<(), Error> {
        let client = self.db.connect("ferry setup").await?;
        crate::check::check(&self.db, &client, tables, self.options.initial_load).await
    }

    async fn create_table(
        &self,
        table: &TableSpec,
        into: &TargetName,
    ) -> Result<TableToken, Error> {
        let client = self.db.connect("ferry setup").await?;
        self.ensure_state(&client).await?;
        if self
            .create_unless_there(&client, table, into, self.options.key_during_load)
            .await?
        {
            info!(table = %table.source, destination = %into, "destination table created");
        }
        table_oid(&self.db, &client, into)
            .await?
            .map(|oid| TableToken(oid.to_string()))
            .ok_or_else(|| Error::internal(format!("table {into} vanished after it was created")))
    }

    async fn table_token(&self, name: &TargetName) -> Result<Option<TableToken>, Error> {
        let client = self.db.connect("ferry setup").await?;
        Ok(table_oid(&self.db, &client, name)
            .await?
            .map(|oid| TableToken(oid.to_string())))
    }

    async fn drop_table(&self, name: &TargetName) -> Result<(), Error> {
        let client = self.db.connect("ferry setup").await?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}",
                pg_qualified(&name.namespace, &name.table)
            ))
            .await
            .map_err(self.db.err())
    }

    /// In one transaction: the live table is dropped and the fresh one takes its name (and
    /// its key's name). A crash before the commit leaves both as they were; after it, the
    /// live name carries the fresh table's OID, and a second call does nothing.
    async fn swap_in(
        &self,
        table: &TableSpec,
        fresh: &TargetName,
        token: &TableToken,
    ) -> Result<(), Error> {
        let client = self.db.connect("ferry resync").await?;
        let live = &table.target;
        let live_oid = table_oid(&self.db, &client, live).await?;
        if live_oid.map(|o| o.to_string()).as_ref() == Some(&token.0) {
            return Ok(());
        }
        let fresh_oid = table_oid(&self.db, &client, fresh)
            .await?
            .ok_or_else(|| Self::table_missing(fresh))?;
        if fresh_oid.to_string() != token.0 {
            return Err(Error::new(
                ErrorKind::Misconfigured,
                "55000",
                format!("table {fresh} is not the one the resync loaded"),
            )
            .with_hint("RESYNC MIRROR loads it again."));
        }
        let key_name: Option<String> = client
            .query_opt(
                "SELECT conname::text FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND contype = 'p'",
                &[&fresh_oid],
            )
            .await
            .map_err(self.db.err())?
            .map(|r| r.get(0));
        let want_key = format!("{}_pkey", live.table);
        let mut sql = vec![
            "BEGIN".to_owned(),
            format!(
                "DROP TABLE IF EXISTS {}",
                pg_qualified(&live.namespace, &live.table)
            ),
            format!(
                "ALTER TABLE {} RENAME TO {}",
                pg_qualified(&fresh.namespace, &fresh.table),
                pg_ident(&live.table)
            ),
        ];
        if let Some(k) = key_name.filter(|k| *k != want_key && want_key.len() < 64) {
            sql.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                pg_qualified(&live.namespace, &live.table),
                pg_ident(&k),
                pg_ident(&want_key)
            ));
        }
        sql.push("COMMIT".to_owned());
        if let Err(e) = client.batch_execute(&sql.join("; ")).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(self.db.err()(e));
        }
        self.lock_recode().clear();
        info!(table = %table.source, destination = %live, "resynced table swapped in");
        Ok(())
    }

    async fn load(&self, table: &TableSpec, into: &TargetName, range: i32) -> Result<Load, Error> {
        let client = self.db.connect("ferry load").await?;
        self.ensure_state(&client).await?;
        let oid = table_oid(&self.db, &client, into)
            .await?
            .ok_or_else(|| Self::table_missing(into))?;
        if let Some(rows) =
            state::loaded(&self.db, &client, &self.mirror, oid, Loaded::Range(range)).await?
        {
            return Ok(Load::Done { rows });
        }
        let recode = self.recode_for(&client, oid, &table.columns).await?;
        drop(client);
        let names: Vec<String> = table.columns.iter().map(|c| pg_ident(&c.name)).collect();
        let target = RangeTarget {
            mirror: self.mirror.clone(),
            table_oid: oid,
            record: Loaded::Range(range),
            before: None,
            copy_sql: format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                pg_qualified(&into.namespace, &into.table),
                names.join(", ")
            ),
            after: None,
            recode,
        };
        let sink = RangeSink::open(self.db.clone(), target, table.columns.len()).await?;
        Ok(Load::Sink(Box::new(sink)))
    }

    /// Builds the primary key (unless it was there during the load) and forgets the table's
    /// ranges (autovacuum analyses the new table soon after). A key that finds duplicates (rows that moved between ranges
    /// read in different snapshots) keeps one row of each and is built again.
    async fn finish_load(&self, table: &TableSpec, into: &TargetName) -> Result<(), Error> {
        let client = self.db.connect("ferry load").await?;
        self.ensure_state(&client).await?;
        let oid = table_oid(&self.db, &client, into)
            .await?
            .ok_or_else(|| Self::table_missing(into))?;
        let keys = key_names(table);
        client
            .batch_execute("SET maintenance_work_mem = '512MB'; SET lock_timeout = 0")
            .await
            .map_err(self.db.err())?;
        let mut deduplicated = false;
        let started = std::time::Instant::now();
        loop {
            client.batch_execute("BEGIN").await.map_err(self.db.err())?;
            let result = async {
                if !keys.is_empty() && !has_key_index(&self.db, &client, oid, &keys).await? {
                    client
                        .batch_execute(&add_key_sql(into, &keys))
                        .await
                        .map_err(self.db.err())?;
                }
                state::forget_ranges(&self.db, &client, &self.mirror, oid).await?;
                client.batch_execute("COMMIT").await.map_err(self.db.err())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    if e.sqlstate != "23505" || deduplicated {
                        return Err(e.context(format!("building the primary key of {into}")));
                    }
                    let removed = remove_duplicate_keys(&self.db, &client, into, &keys).await?;
                    warn!(table = %table.source, removed, "rows read twice by the load (they moved between ranges read in different snapshots) were removed");
                    deduplicated = true;
                }
            }
        }
        info!(table = %table.source, secs = started.elapsed().as_secs_f64(), "load finished: primary key built");
        Ok(())
    }

    /// Creates the types the new columns use. The columns themselves are added by the apply
    /// connection, in the transaction of the first rows that carry them (see
    /// [`crate::apply`]): that connection may hold the table's locks mid-batch.
    async fn add_columns(&self, table: &TableSpec, added: &[ColumnSchema]) -> Result<(), Error> {
        let client = self.db.connect("ferry schema change").await?;
        for c in added {
            create_types(&self.db, &client, column_type(table, c)?).await?;
        }
        Ok(())
    }

    async fn begin_apply(&self) -> Result<Box<dyn Apply>, Error> {
        Ok(Box::new(
            PgApply::connect(self.db.clone(), self.mirror.clone()).await?,
        ))
    }

    async fn position(&self) -> Result<Option<Lsn>, Error> {
        let client = self.db.connect("ferry position").await?;
        let exists: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass('_ferry.positions') IS NOT NULL",
                &[],
            )
            .await
            .map_err(self.db.err())?
            .get(0);
        if !exists {
            return Ok(None);
        }
        state::position(&self.db, &client, &self.mirror).await
    }

    /// Removes the mirror's position and range records. A destination that cannot be reached
    /// keeps them (they name the mirror's catalog id, which no later mirror has) and is
    /// logged, so that a mirror whose destination is gone can still be dropped.
    async fn forget(&self) -> Result<(), Error> {
        let result = async {
            let client = self.db.connect("ferry cleanup").await?;
            state::forget(&self.db, &client, &self.mirror).await
        }
        .await;
        if let Err(e) = result {
            warn!(mirror = %self.mirror.name, error = %e, "could not remove the mirror's position from the destination");
        }
        Ok(())
    }

    /// Query mirrors: see [`crate::qrep`].
    fn query(&self) -> Option<&dyn QueryDestination> {
        Some(self)
    }
}
