//! Streamed changes of a table without a key, applied as to a multiset (see
//! [`crate::identity`] for the design and why it is exact under replay).
//!
//! The changes are gone over in order, with the rows they may remove known up front: every
//! row ClickHouse holds with the values of a removed row (one query, by hash), plus the rows
//! inserted earlier in the same changes. An insertion writes a row whose id is its LSN; a
//! removal writes, for the row it picks, a deletion with the removed values.

use std::collections::HashMap;

use ferry_core::change::{ChangeKind, Field, Op, Row, TableChanges};
use ferry_core::destination::Substitution;
use ferry_core::ident::ch_qualified;
use ferry_core::{ColumnSchema, Error, ErrorKind, Value};

use crate::apply::{value_of, ClickHouseApply, Failure};
use crate::identity::{self, pick_for_removal, Stored};
use crate::load::column_error;
use crate::rowbinary::encode_with_policy;
use crate::table::WriteError;
use crate::unrepresentable::Substitutions;

/// A row's values as ClickHouse holds them (RowBinary), with their hash.
type Content = (u64, Vec<u8>);

impl ClickHouseApply {
    /// Writes the changes of a table without a key; returns the rows written.
    pub(crate) async fn write_multiset(
        &self,
        tc: &TableChanges,
    ) -> Result<(u64, Vec<Substitution>), Failure> {
        let spec = &tc.table;
        if tc.columns.len() != spec.columns.len() {
            // Rows are told apart by all their values: a change without some of them cannot
            // name a row.
            return Err(Failure::Table(
                Error::new(
                    ErrorKind::Unsupported,
                    "0A000",
                    format!(
                        "table {} has no key and its changes no longer carry all its columns",
                        spec.source
                    ),
                )
                .with_hint(format!(
                    "RESYNC MIRROR … TABLE {} loads it again with its current columns.",
                    spec.source
                )),
            ));
        }
        let columns: Vec<ColumnSchema> = spec.columns.clone();
        let stored_columns = identity::storage_columns(&columns);

        // The values of every row a change removes, and what ClickHouse holds with them.
        let mut removed: Vec<Option<Content>> = Vec::with_capacity(tc.ops().len());
        for op in tc.ops() {
            removed.push(match op {
                Op::Row(c) => match c.old {
                    Some(old) => Some(self.content(&columns, &tc.tuple(old))?),
                    None => None,
                },
                Op::Truncate { .. } => None,
            });
        }
        let mut hashes: Vec<u64> = removed.iter().flatten().map(|(h, _)| *h).collect();
        hashes.sort_unstable();
        hashes.dedup();
        let (db, table) = (&spec.target.namespace, &spec.target.table);
        let mut rows: HashMap<Content, Vec<Stored>> = HashMap::new();
        if !hashes.is_empty() {
            for r in self
                .ch
                .stored_rows(db, table, &columns, &hashes)
                .await
                .map_err(Failure::from)?
            {
                rows.entry((r.hash, r.content)).or_default().push(Stored {
                    id: r.id,
                    deleted_at: r.deleted.then_some(r.version),
                });
            }
        }

        let mut insert = self.insert(db, table, &stored_columns);
        let mut substituted = Substitutions::new(stored_columns.len());
        let mut written = 0u64;
        let mut values: Vec<Value> = Vec::with_capacity(stored_columns.len());
        for (i, op) in tc.ops().iter().enumerate() {
            let change = match op {
                Op::Truncate { .. } => {
                    let done =
                        std::mem::replace(&mut insert, self.insert(db, table, &stored_columns));
                    substituted.merge(done.substitutions());
                    written += done.finish().await?;
                    self.ch
                        .execute(&format!("TRUNCATE TABLE {}", ch_qualified(db, table)))
                        .await?;
                    rows.clear();
                    continue;
                }
                Op::Row(c) => c,
            };
            let lsn = change.lsn.0;
            if let (Some(old), Some(content)) = (change.old, &removed[i]) {
                let candidates = rows.entry(content.clone()).or_default();
                let Some(id) = pick_for_removal(candidates, lsn) else {
                    return Err(Failure::Table(
                        Error::new(
                            ErrorKind::Misconfigured,
                            "XX001",
                            format!(
                                "a row removed from table {} at the source is not in ClickHouse",
                                spec.source
                            ),
                        )
                        .with_hint(format!(
                            "Rows were removed from {} in ClickHouse; RESYNC MIRROR … TABLE {} loads the table again.",
                            spec.target, spec.source
                        )),
                    ));
                };
                if let Some(r) = candidates.iter_mut().find(|r| r.id == id) {
                    r.deleted_at = Some(lsn);
                }
                row_values(&columns, &tc.tuple(old), content.0, id, &mut values)?;
                insert
                    .push(&values, lsn, true)
                    .await
                    .map_err(|e| Failure::Table(column_error(&stored_columns, e)))?;
            }
            if change.kind == ChangeKind::Delete {
                continue;
            }
            let Some(new) = change.new else { continue };
            let new = tc.tuple(new);
            let content = self.content(&columns, &new)?;
            row_values(&columns, &new, content.0, lsn, &mut values)?;
            insert
                .push(&values, lsn, false)
                .await
                .map_err(|e| Failure::Table(column_error(&stored_columns, e)))?;
            let ids = rows.entry(content).or_default();
            if !ids.iter().any(|r| r.id == lsn) {
                ids.push(Stored {
                    id: lsn,
                    deleted_at: None,
                });
            }
        }
        substituted.merge(insert.substitutions());
        written += insert.finish().await?;
        Ok((
            written,
            crate::load::summarise(spec.id, &columns, &substituted),
        ))
    }

    /// A row's values as ClickHouse would hold them, and their hash.
    fn content(&self, columns: &[ColumnSchema], row: &Row<'_>) -> Result<Content, Failure> {
        let mut fields: Vec<Option<&[u8]>> = Vec::with_capacity(row.len());
        let mut bytes = Vec::new();
        for (s, c) in columns.iter().enumerate() {
            let field = row.get(s);
            fields.push(match field {
                Field::Value(b) => Some(b),
                Field::Null => None,
                Field::Unchanged => {
                    return Err(Failure::Table(Error::internal(
                        "an unchanged TOAST value in a row of a table without a key",
                    )))
                }
            });
            let value = value_of(c, field)?.unwrap_or(Value::Null);
            encode_with_policy(&c.kind, c.nullable, &value, self.policy(), &mut bytes).map_err(
                |source| {
                    Failure::Table(column_error(
                        columns,
                        WriteError::Encode { column: s, source },
                    ))
                },
            )?;
        }
        Ok((identity::row_hash(fields), bytes))
    }
}

/// A row's values followed by its identity columns.
fn row_values(
    columns: &[ColumnSchema],
    row: &Row<'_>,
    hash: u64,
    id: u64,
    values: &mut Vec<Value>,
) -> Result<(), Failure> {
    values.clear();
    for (s, c) in columns.iter().enumerate() {
        values.push(value_of(c, row.get(s))?.unwrap_or(Value::Null));
    }
    values.push(Value::Int64(hash as i64));
    values.push(Value::Int64(id as i64));
    Ok(())
}
