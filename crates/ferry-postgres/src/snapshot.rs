//! Reading a table's rows for the initial load: one CTID range under one snapshot, as a
//! binary COPY stream.
//!
//! A reader opens its own connection and a `REPEATABLE READ READ ONLY` transaction, and
//! imports the mirror's exported snapshot when it is still alive (`SET TRANSACTION SNAPSHOT`,
//! which must be the transaction's first statement); otherwise the transaction takes a fresh
//! snapshot of its own (see the engine's load module for why that stays correct). The range is
//! read with `COPY (SELECT … FROM ONLY relation WHERE ctid …) TO STDOUT (FORMAT binary)`: the
//! rows come as the server sends them, unparsed, for the destination to take as they are, many
//! rows to a chunk ([`crate::session`] reads the stream on the raw protocol).

use ferry_core::destination::Wire;
use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::peer::PostgresConfig;
use ferry_core::ErrorKind;

use crate::connect::SourceError;
use crate::ctid::BlockRange;
use crate::session::{CopyOut, Session};
use crate::source::SourceTable;

/// One transaction reading ranges of the initial load.
pub struct RangeReader {
    session: Session,
}

impl RangeReader {
    /// Connects and starts the transaction, in `snapshot` when given.
    pub async fn open(
        cfg: &PostgresConfig,
        snapshot: Option<&str>,
    ) -> Result<RangeReader, SourceError> {
        let mut session = Session::connect(cfg, "ferry snapshot").await?;
        session
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        if let Some(s) = snapshot {
            session
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", pg_literal(s)))
                .await?;
        }
        Ok(RangeReader { session })
    }

    /// The rows of `relation` (quoted) in `range`, as the binary COPY stream of `select` (a
    /// SELECT list from [`select_list`]), in chunks of many rows each.
    pub async fn copy(
        &mut self,
        select: &str,
        relation: &str,
        range: &BlockRange,
    ) -> Result<CopyOut<'_>, SourceError> {
        let sql = format!(
            "COPY (SELECT {select} FROM ONLY {relation} WHERE {}) TO STDOUT (FORMAT binary)",
            range.predicate()
        );
        self.session.copy_out(&sql).await
    }

    /// The reading transaction's session (a query mirror's partition sets its bounds in it
    /// before it copies).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Ends the transaction and the session.
    pub async fn close(mut self) -> Result<(), SourceError> {
        self.session.batch_execute("COMMIT").await?;
        self.session.close().await
    }
}

/// The SELECT list that reads `names` (columns of `table`) in the form `wire` asks for: with
/// the casts their kinds need for the canonical form, or as they are for the native one.
pub fn select_list(
    table: &SourceTable,
    names: &[String],
    wire: Wire,
) -> Result<String, SourceError> {
    let mut parts = Vec::with_capacity(names.len());
    for n in names {
        let idx = table
            .columns
            .iter()
            .position(|c| &c.name == n)
            .ok_or_else(|| SourceError {
                kind: ErrorKind::Unsupported,
                sqlstate: "42703".into(),
                message: format!("column \"{n}\" of table {} no longer exists", table.name),
                hint: Some(format!(
                    "RESYNC MIRROR … TABLE {} reloads the table with its new shape.",
                    table.name
                )),
                source: None,
            })?;
        let q = pg_ident(n);
        parts.push(match wire {
            Wire::Canonical => table.mappings[idx].select_expr(&q),
            Wire::Native => q,
        });
    }
    Ok(parts.join(", "))
}
