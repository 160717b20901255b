//! Unchanged TOAST values: finding the value an UPDATE did not carry.
//!
//! An UPDATE that leaves a large (TOASTed) column alone sends the 'u' marker instead of the
//! value (unless the table has REPLICA IDENTITY FULL). The value to write is the row's value
//! from before the change, found in this order:
//!
//! 1. an earlier change of the same row in the batch ([`Streamer::push`] takes it there);
//! 2. ClickHouse: the newest version of the row written before the batch
//!    ([`Destination::stored_values`]), under the old key when the update moved the row. The
//!    bytes ClickHouse returns go into the insert as they are. Changes of the same row later
//!    in the batch that leave the column alone too take the same value;
//! 3. only for a row ClickHouse holds no live version of (which the initial load and the
//!    ordered batches rule out, short of someone deleting rows in ClickHouse): the source, by
//!    key. The source may have moved on; its value is then that of a later change, which
//!    follows in the stream, so the row still ends in the source's state.
//!
//! Ferry never writes an empty or default value for an unchanged column; if all three fail
//! the row is gone at the source too, and a deletion follows in the stream.

use std::collections::HashMap;

use ferry_core::ident::pg_ident;
use ferry_core::{ColumnSchema, Value};
use ferry_postgres::connect::{connect, SourceError};
use ferry_postgres::types::decode_text;
use tracing::debug;

use super::{value_text, Streamer};
use crate::FlowError;

impl Streamer {
    /// Fills in the unchanged values of table `t`'s rows in the batch that no earlier change
    /// in the batch carried.
    pub(super) async fn resolve_unchanged(&mut self, t: usize) -> Result<(), FlowError> {
        let Some(tb) = self.batch.tables.get(&t) else {
            return Ok(());
        };
        // Rows that start a chain: the others take their values from an earlier row.
        let roots: Vec<usize> = (0..tb.rows.len())
            .filter(|&i| !tb.rows[i].unresolved.is_empty() && tb.rows[i].depends_on.is_none())
            .collect();
        if roots.is_empty() {
            return Ok(());
        }
        let target = &self.targets[t];
        let key_slots: Vec<usize> = tb
            .active
            .iter()
            .enumerate()
            .filter(|(_, &c)| target.columns[c].key_position.is_some())
            .map(|(s, _)| s)
            .collect();
        if key_slots.is_empty() {
            // REPLICA IDENTITY FULL sends every value; nothing is ever unchanged there.
            return Err(FlowError::internal(
                "unchanged TOAST value in a table without a key",
            ));
        }
        let column = |slot: usize| -> ColumnSchema { target.columns[tb.active[slot]].clone() };
        let key_columns: Vec<ColumnSchema> = key_slots.iter().map(|&s| column(s)).collect();
        let mut value_slots: Vec<usize> = roots
            .iter()
            .flat_map(|&i| tb.rows[i].unresolved.iter().copied())
            .collect();
        value_slots.sort_unstable();
        value_slots.dedup();
        let value_columns: Vec<ColumnSchema> = value_slots.iter().map(|&s| column(s)).collect();
        // The key each root's earlier values are stored under.
        let lookup: Vec<Vec<Value>> = roots
            .iter()
            .map(|&i| {
                let from = tb.rows[i].moved_from.unwrap_or(i);
                key_slots
                    .iter()
                    .map(|&s| tb.rows[from].values[s].clone())
                    .collect()
            })
            .collect();
        let before = tb.rows.iter().map(|r| r.version).min().unwrap_or(0);
        let stored = self
            .ctx
            .destination
            .stored_values(
                &target.row.destination_database,
                &target.row.destination_table,
                &key_columns,
                &value_columns,
                &lookup,
                before,
            )
            .await?;

        let tb = self
            .batch
            .tables
            .get_mut(&t)
            .ok_or_else(|| FlowError::internal("batch table missing"))?;
        let mut missing = Vec::new();
        for (&i, found) in roots.iter().zip(stored) {
            let Some(mut found) = found else {
                missing.push(i);
                continue;
            };
            let row = &mut tb.rows[i];
            for slot in std::mem::take(&mut row.unresolved) {
                let n = value_slots
                    .binary_search(&slot)
                    .map_err(|_| FlowError::internal("looked-up column missing"))?;
                row.encoded.push((slot, std::mem::take(&mut found[n])));
            }
        }
        if !missing.is_empty() {
            self.resolve_from_source(t, missing, &key_slots).await?;
        }

        // Later changes of the same rows take what their chain's first row found.
        let tb = self
            .batch
            .tables
            .get_mut(&t)
            .ok_or_else(|| FlowError::internal("batch table missing"))?;
        for i in 0..tb.rows.len() {
            let Some(p) = tb.rows[i].depends_on else {
                continue;
            };
            let unresolved = std::mem::take(&mut tb.rows[i].unresolved);
            let mut still = Vec::new();
            for slot in unresolved {
                let earlier = &tb.rows[p];
                if let Some((_, bytes)) = earlier.encoded.iter().find(|(s, _)| *s == slot) {
                    let bytes = bytes.clone();
                    tb.rows[i].encoded.push((slot, bytes));
                } else if !earlier.unresolved.contains(&slot) {
                    let value = earlier.values[slot].clone();
                    tb.rows[i].values[slot] = value;
                } else {
                    still.push(slot);
                }
            }
            tb.rows[i].encoded.sort_unstable_by_key(|(s, _)| *s);
            tb.rows[i].unresolved = still;
        }
        Ok(())
    }

    /// The last resort, for rows ClickHouse holds no live version of: reads their unchanged
    /// values from the source, by their current key.
    async fn resolve_from_source(
        &mut self,
        t: usize,
        needy: Vec<usize>,
        key_slots: &[usize],
    ) -> Result<(), FlowError> {
        let Some(tb) = self.batch.tables.get(&t) else {
            return Ok(());
        };
        let target = &self.targets[t];
        let client = connect(&self.ctx.source, "ferry toast lookup").await?;
        client
            .batch_execute(
                crate::snapshot::SESSION_SETTINGS
                    .replace("SET LOCAL", "SET")
                    .as_str(),
            )
            .await
            .map_err(|e| SourceError::from_pg(&self.ctx.source, e))?;
        // Every column of the table as text, for the rows with these keys.
        let select: Vec<String> = tb
            .active
            .iter()
            .map(|&c| {
                let q = pg_ident(&target.columns[c].name);
                format!("CASE WHEN num_nulls({q}) = 0 THEN format('%s', {q}) END")
            })
            .collect();
        let key_text: Vec<String> = key_slots
            .iter()
            .map(|&s| {
                let q = pg_ident(&target.columns[tb.active[s]].name);
                format!("format('%s', {q})")
            })
            .collect();
        let params: Vec<Vec<String>> = key_slots
            .iter()
            .map(|&s| {
                needy
                    .iter()
                    .map(|&i| value_text(&tb.rows[i].values[s]))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let unnest_args: Vec<String> = (1..=key_slots.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let sql = format!(
            "SELECT concat_ws(E'\\x01', {}) AS k, {} FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))",
            key_text.join(", "),
            select.join(", "),
            target.row.source.quoted(),
            key_text.join(", "),
            unnest_args.join(", ")
        );
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client
            .query(&sql, &refs)
            .await
            .map_err(|e| SourceError::from_pg(&self.ctx.source, e))?;
        let mut found: HashMap<String, &tokio_postgres::Row> = HashMap::new();
        for r in &rows {
            found.insert(r.get::<_, String>(0), r);
        }
        let columns = self.targets[t].columns.clone();
        let tb = self
            .batch
            .tables
            .get_mut(&t)
            .ok_or_else(|| FlowError::internal("batch table missing"))?;
        let mut missing = 0usize;
        for i in needy {
            let key = key_slots
                .iter()
                .map(|&s| value_text(&tb.rows[i].values[s]))
                .collect::<Result<Vec<_>, _>>()?
                .join("\u{1}");
            let Some(r) = found.get(&key) else {
                // Gone at the source since: a later change in the stream deletes it here too.
                missing += 1;
                continue;
            };
            let active = tb.active.clone();
            let row = &mut tb.rows[i];
            for &slot in &row.unresolved {
                let col = &columns[active[slot]];
                let text: Option<String> = r.get(slot + 1);
                row.values[slot] = match text {
                    None => Value::Null,
                    Some(s) => decode_text(&col.kind, &s)
                        .map_err(|e| FlowError::new(e.kind(), "22P02", e.to_string()))?,
                };
            }
            row.unresolved.clear();
        }
        if missing > 0 {
            debug!(
                rows = missing,
                "rows with unchanged TOAST values are gone at the source; a later delete follows"
            );
        }
        Ok(())
    }
}
