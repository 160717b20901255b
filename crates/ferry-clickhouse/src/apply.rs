//! Streamed changes into ClickHouse: every change becomes a row of the destination table.
//!
//! # Versions
//!
//! A change is written as a row with `_ferry_version` set to the LSN of the change's own WAL
//! record. A row's changes reach the WAL in the order they commit (a writer holds the row's
//! lock until it commits) and a change's LSN is the same every time the WAL is decoded, so the
//! newest change of each row wins in `ReplacingMergeTree`, and replaying WAL after a crash
//! writes exactly the rows written before, which collapse into them. Rows of the initial load
//! have version 0, below every change.
//!
//! A deletion is a row with the key and `_ferry_is_deleted = 1`; its other columns hold what
//! the change carried, else NULL or the type's zero. An update that moves a row to a new key
//! deletes the old key the same way. `TRUNCATE` empties the table when the changes reach it:
//! the rows before it are written first.
//!
//! # Unchanged TOAST values
//!
//! An UPDATE that leaves a large (TOASTed) column alone does not carry its value, and the
//! engine fills in what an earlier change of the same row in the batch carried. What is left
//! comes from the row's earlier change in these changes when there is one (whose own value may
//! have come from further back: the changes are resolved in order), else from ClickHouse: the
//! newest version of the row older than the change, under the old key when the update moved
//! the row ([`crate::lookup`]); the bytes ClickHouse returns go into the insert as they are. A row ClickHouse holds no live version of (someone
//! deleted it there) cannot be completed: its table fails with a hint to resync it, rather
//! than a value being made up.

use std::collections::HashMap;

use async_trait::async_trait;
use ferry_core::change::{ChangeKind, Field, Op, Row, RowChange, TableChanges};
use ferry_core::destination::{Apply, ApplyError, Summary};
use ferry_core::ident::ch_qualified;
use ferry_core::layout::Layouts;
use ferry_core::TableName;
use ferry_core::{canonical, ColumnSchema, Error, ErrorKind, Lsn, Numeric, Value, ValueKind};
use futures::StreamExt;

use crate::connect::DestinationError;
use crate::load::column_error;
use crate::table::{ClickHouse, RowInsert, WriteError};
use crate::transcode::{Field as TField, Transcoder};
use crate::unrepresentable::UnrepresentablePolicy;

/// Bytes of rows gathered before they are sent as one chunk of an insert.
const SEND_BYTES: usize = 1 << 20;
/// Rows a table's changes wrote, and the values replaced in them.
type Written = (u64, Vec<ferry_core::destination::Substitution>);

/// Tables whose changes are inserted at the same time.
const TABLES_AT_ONCE: usize = 4;

/// Applying changes to one ClickHouse.
pub struct ClickHouseApply {
    pub(crate) ch: ClickHouse,
    policy: UnrepresentablePolicy,
    /// The mirror's tables' layouts: a column whose type was chosen is converted on insert.
    layouts: Layouts,
}

impl ClickHouseApply {
    pub(crate) fn new(
        ch: ClickHouse,
        policy: UnrepresentablePolicy,
        layouts: Layouts,
    ) -> ClickHouseApply {
        ClickHouseApply {
            ch,
            policy,
            layouts,
        }
    }

    pub(crate) fn policy(&self) -> UnrepresentablePolicy {
        self.policy
    }

    pub(crate) fn insert(&self, db: &str, table: &str, columns: &[ColumnSchema]) -> RowInsert {
        self.insert_converting(db, table, columns, false)
    }

    /// [`ClickHouseApply::insert`] whose rows ClickHouse converts to the column types chosen
    /// in place of the mapped ones when `converts`.
    fn insert_converting(
        &self,
        db: &str,
        table: &str,
        columns: &[ColumnSchema],
        converts: bool,
    ) -> RowInsert {
        self.ch
            .insert_for(db, table, columns, false, converts)
            .with_policy(self.policy)
    }

    /// Per column of `columns`, whether its type was chosen in place of the mapped one.
    fn converted(&self, table: &TableName, columns: &[ColumnSchema]) -> Vec<bool> {
        let chosen = self.layouts.of(table).column_types;
        columns
            .iter()
            .map(|c| chosen.iter().any(|(n, _)| *n == c.name))
            .collect()
    }
}

#[async_trait]
impl Apply for ClickHouseApply {
    /// The tables' inserts run side by side (a few at a time): a table's changes are in one
    /// entry, in order, and no order holds between tables, so a batch over several tables
    /// takes as long as its largest insert rather than their sum.
    async fn write(&mut self, changes: Vec<TableChanges>) -> Result<Summary, ApplyError> {
        type Insert<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Written, ApplyError>> + Send + 'a>,
        >;
        let this = &*self;
        let inserts: Vec<Insert<'_>> = changes
            .iter()
            .map(|tc| -> Insert<'_> {
                Box::pin(async move {
                    this.write_table(tc)
                        .await
                        .map_err(|e| attribute(tc.table.id, e))
                })
            })
            .collect();
        let mut inserts = futures::stream::iter(inserts).buffer_unordered(TABLES_AT_ONCE);
        let mut summary = Summary::default();
        while let Some(done) = inserts.next().await {
            let (rows, substitutions) = done?;
            summary.rows += rows;
            summary.substitutions.extend(substitutions);
        }
        Ok(summary)
    }

    /// Every insert was acknowledged by ClickHouse when `write` returned.
    async fn commit(&mut self, _position: Lsn) -> Result<(), ApplyError> {
        Ok(())
    }
}

/// Whether an error concerns the table alone (a value it cannot hold, its table or a column
/// gone in ClickHouse) or the destination as a whole.
fn attribute(table: i64, e: Failure) -> ApplyError {
    match e {
        Failure::Table(e) => ApplyError::for_table(table, e),
        Failure::Destination(d) => {
            // UNKNOWN_TABLE, NO_SUCH_COLUMN_IN_TABLE, UNKNOWN_IDENTIFIER, THERE_IS_NO_COLUMN
            let table_gone = matches!(d.code, Some(60) | Some(16) | Some(47) | Some(8));
            let e = Error::from(d);
            if table_gone {
                ApplyError::for_table(table, e)
            } else {
                ApplyError::from(e)
            }
        }
    }
}

pub(crate) enum Failure {
    Table(Error),
    Destination(DestinationError),
}

impl From<DestinationError> for Failure {
    fn from(e: DestinationError) -> Self {
        Failure::Destination(e)
    }
}

impl From<WriteError> for Failure {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Destination(d) => Failure::Destination(d),
            other => Failure::Table(other.into()),
        }
    }
}

/// A column's value for a row that marks a deletion, where the change carries none.
pub(crate) fn placeholder(kind: &ValueKind, nullable: bool) -> Value {
    if nullable {
        return Value::Null;
    }
    match kind {
        ValueKind::Bool => Value::Bool(false),
        ValueKind::Int16 => Value::Int16(0),
        ValueKind::Int32 => Value::Int32(0),
        ValueKind::Int64 => Value::Int64(0),
        ValueKind::UInt32 => Value::UInt32(0),
        ValueKind::Float32 => Value::Float32(0.0),
        ValueKind::Float64 => Value::Float64(0.0),
        ValueKind::Decimal { .. } => Value::Numeric(Numeric::Finite("0".into())),
        ValueKind::Text => Value::Text(String::new()),
        ValueKind::Bytes => Value::Bytes(Vec::new()),
        ValueKind::Uuid => Value::Uuid([0; 16]),
        ValueKind::Date => Value::Date(0),
        ValueKind::Timestamp => Value::Timestamp(0),
        ValueKind::TimestampTz => Value::TimestampTz(0),
        ValueKind::Array { .. } => Value::Array {
            dims: Vec::new(),
            elements: Vec::new(),
        },
    }
}

/// The value of a field as written, `None` for an unchanged one.
pub(crate) fn value_of(column: &ColumnSchema, field: Field<'_>) -> Result<Option<Value>, Failure> {
    Ok(match field {
        Field::Null => Some(Value::Null),
        Field::Unchanged => None,
        Field::Value(raw) => Some(canonical::decode(&column.kind, raw).map_err(|e| {
            Failure::Table(Error::from(e).context(format!("column \"{}\"", column.name)))
        })?),
    })
}

/// Where each row's unchanged values come from.
#[derive(Default)]
struct Sources {
    /// Op index → the earlier op (in these changes) of the same row, whose values it takes.
    earlier: HashMap<usize, usize>,
    /// Ops whose values later ops take.
    kept: std::collections::HashSet<usize>,
    /// Op index → per row slot, the RowBinary ClickHouse holds.
    stored: HashMap<usize, Vec<(usize, Vec<u8>)>>,
}

impl ClickHouseApply {
    /// Writes one table's changes; returns the rows written.
    async fn write_table(&self, tc: &TableChanges) -> Result<Written, Failure> {
        let spec = &tc.table;
        if crate::identity::keyless(&spec.columns) {
            return self.write_multiset(tc).await;
        }
        let columns: Vec<ColumnSchema> = tc
            .columns
            .iter()
            .map(|&i| spec.columns[i].clone())
            .collect();
        let keyed = columns.iter().any(|c| c.key_position.is_some());
        // Positions (within the rows) of the columns that identify a row.
        let key_slots: Vec<usize> = {
            let mut k: Vec<usize> = (0..columns.len())
                .filter(|&s| !keyed || columns[s].key_position.is_some())
                .collect();
            k.sort_by_key(|&s| columns[s].key_position);
            k
        };
        let sources = self.unchanged_sources(tc, &columns, &key_slots).await?;
        let (db, table) = (&spec.target.namespace, &spec.target.table);
        // Every field goes straight from its canonical bytes into RowBinary: no value per cell.
        let mut transcoder = Transcoder::new(&columns, self.policy)
            .map_err(|e| Failure::Table(Error::new(e.kind(), "22000", e.to_string())))?;
        // What a deletion row holds where the change carries no value.
        let mut stand_ins: Vec<Vec<u8>> = Vec::with_capacity(columns.len());
        for (s, c) in columns.iter().enumerate() {
            let mut b = Vec::new();
            crate::rowbinary::encode(
                &c.kind,
                c.nullable,
                &placeholder(&c.kind, c.nullable),
                &mut b,
            )
            .map_err(|source| {
                Failure::Table(column_error(
                    &columns,
                    WriteError::Encode { column: s, source },
                ))
            })?;
            stand_ins.push(b);
        }
        let converts = self.converted(&spec.source, &columns).contains(&true);
        // Columns the table is sorted by beyond its key: a row moves when one changes, and a
        // deletion must carry them (ClickHouse keeps one row per ORDER BY value).
        let extras = sort_extras(&self.layouts.of(&spec.source), &columns);
        let mut moved_slots = key_slots.clone();
        moved_slots.extend(&extras);
        let mut insert = self.insert_converting(db, table, &columns, converts);
        let mut buf: Vec<u8> = Vec::with_capacity(SEND_BYTES + (64 << 10));
        let mut pending = 0u64;
        let mut written = 0u64;
        // The RowBinary of each column of the ops later ops take values from.
        let mut kept: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
        let transcode = |e: crate::transcode::TranscodeError| {
            Failure::Table(Error::new(e.kind(), "22000", e.to_string()))
        };
        for (i, op) in tc.ops().iter().enumerate() {
            let change = match op {
                Op::Truncate { .. } => {
                    // The rows before the TRUNCATE land first.
                    if pending > 0 {
                        insert
                            .send_encoded(std::mem::take(&mut buf), pending)
                            .await?;
                        pending = 0;
                    }
                    let done = std::mem::replace(
                        &mut insert,
                        self.insert_converting(db, table, &columns, converts),
                    );
                    written += done.finish().await?;
                    self.ch
                        .execute(&format!("TRUNCATE TABLE {}", ch_qualified(db, table)))
                        .await?;
                    continue;
                }
                Op::Row(c) => c,
            };
            let version = change.lsn.0;
            if let Some(old) = change.old {
                let old = tc.tuple(old);
                if change.kind == ChangeKind::Delete
                    || key_moved(change, &old, tc, &moved_slots, keyed)
                {
                    if !extras.is_empty() && !change.old_is_full {
                        return Err(Failure::Table(sorted_beyond_key(spec, &columns, &extras)));
                    }
                    let fields = (0..columns.len()).map(|s| match old.get(s) {
                        Field::Value(b) => TField::Binary(b),
                        Field::Null if columns[s].nullable => TField::Null,
                        _ => TField::Encoded(&stand_ins[s]),
                    });
                    transcoder
                        .append_row(fields, version, true, &mut buf)
                        .map_err(transcode)?;
                    pending += 1;
                }
            }
            let Some(new) = change.new else { continue };
            let new = tc.tuple(new);
            if !new.has_unchanged() && !sources.kept.contains(&i) {
                // Every value is in the change: straight from the arena, nothing gathered.
                let fields = (0..columns.len()).map(|s| match new.get(s) {
                    Field::Value(b) => TField::Binary(b),
                    _ => TField::Null,
                });
                transcoder
                    .append_row(fields, version, false, &mut buf)
                    .map_err(transcode)?;
            } else {
                let mut fields: Vec<TField<'_>> = Vec::with_capacity(columns.len());
                for s in 0..columns.len() {
                    fields.push(match new.get(s) {
                        Field::Value(b) => TField::Binary(b),
                        Field::Null => TField::Null,
                        Field::Unchanged => {
                            let bytes: &[u8] = match sources.earlier.get(&i) {
                                Some(j) => kept.get(j).map(|cols| cols[s].as_slice()),
                                None => sources
                                    .stored
                                    .get(&i)
                                    .and_then(|cols| cols.iter().find(|(slot, _)| *slot == s))
                                    .map(|(_, b)| b.as_slice()),
                            }
                            .ok_or_else(|| {
                                Failure::Table(Error::internal(
                                    "an unchanged value was not looked up",
                                ))
                            })?;
                            TField::Encoded(bytes)
                        }
                    });
                }
                let mut keep = None;
                if sources.kept.contains(&i) {
                    // Later changes of the row take this row's values, column by column.
                    let mut cols = Vec::with_capacity(columns.len());
                    for (s, f) in fields.iter().enumerate() {
                        let mut one = Vec::new();
                        match f {
                            TField::Encoded(b) => one.extend_from_slice(b),
                            other => {
                                let mut t =
                                    Transcoder::new(std::slice::from_ref(&columns[s]), self.policy)
                                        .map_err(transcode)?;
                                t.append_row([*other], 0, false, &mut one)
                                    .map_err(transcode)?;
                                // Only the column's bytes: the version and deletion marker go.
                                one.truncate(one.len() - 9);
                            }
                        }
                        cols.push(one);
                    }
                    keep = Some(cols);
                }
                transcoder
                    .append_row(fields, version, false, &mut buf)
                    .map_err(transcode)?;
                if let Some(cols) = keep {
                    kept.insert(i, cols);
                }
            }
            pending += 1;
            if buf.len() >= SEND_BYTES {
                insert
                    .send_encoded(std::mem::take(&mut buf), pending)
                    .await?;
                buf.reserve(SEND_BYTES + (64 << 10));
                pending = 0;
            }
        }
        if pending > 0 {
            insert.send_encoded(buf, pending).await?;
        }
        written += insert.finish().await?;
        let substituted = transcoder.substitutions().clone();
        tracing::debug!(table = %spec.source, destination = %format!("{db}.{table}"), rows = written, "changes written");
        Ok((
            written,
            crate::load::summarise(spec.id, &columns, &substituted),
        ))
    }

    /// Decides, in order, where each row's unchanged values come from: the row's latest
    /// earlier change in `tc`, else ClickHouse, which is asked once for all such rows.
    async fn unchanged_sources(
        &self,
        tc: &TableChanges,
        columns: &[ColumnSchema],
        key_slots: &[usize],
    ) -> Result<Sources, Failure> {
        let mut sources = Sources::default();
        let unchanged = tc.ops().iter().any(|op| match op {
            Op::Row(c) => c.new.is_some_and(|n| tc.tuple(n).has_unchanged()),
            Op::Truncate { .. } => false,
        });
        if !unchanged {
            // The common case: every change carries all its values.
            return Ok(sources);
        }
        // Key (canonical bytes) → the op that last wrote a live row under it.
        let mut live: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut needy: Vec<(usize, Vec<Value>, u64, Vec<usize>)> = Vec::new();
        let key_bytes = |row: &Row<'_>| row.fields_bytes(key_slots.iter().copied());
        for (i, op) in tc.ops().iter().enumerate() {
            let change = match op {
                Op::Truncate { .. } => {
                    live.clear();
                    continue;
                }
                Op::Row(c) => c,
            };
            let old_key = change.old.map(|o| key_bytes(&tc.tuple(o)));
            let Some(new) = change.new else {
                if let Some(k) = old_key {
                    live.remove(&k);
                }
                continue;
            };
            let new_row = tc.tuple(new);
            let new_key = key_bytes(&new_row);
            if new_row.has_unchanged() {
                // The row's earlier values are under its old key when the update moved it.
                let moved = change.old.is_some() && !change.old_is_full;
                let from = if moved { old_key.clone() } else { None };
                let from = from.unwrap_or_else(|| new_key.clone());
                match live.get(&from) {
                    Some(&j) => {
                        sources.earlier.insert(i, j);
                        sources.kept.insert(j);
                    }
                    None => {
                        let key_row = match change.old {
                            Some(old) if moved => tc.tuple(old),
                            _ => new_row,
                        };
                        let mut key = Vec::with_capacity(key_slots.len());
                        for &s in key_slots {
                            key.push(value_of(&columns[s], key_row.get(s))?.ok_or_else(|| {
                                Failure::Table(Error::internal(
                                    "a key column is an unchanged TOAST value",
                                ))
                            })?);
                        }
                        let slots: Vec<usize> = (0..columns.len())
                            .filter(|&s| new_row.get(s) == Field::Unchanged)
                            .collect();
                        needy.push((i, key, change.lsn.0, slots));
                    }
                }
            }
            if let Some(k) = old_key {
                live.remove(&k);
            }
            live.insert(new_key, i);
        }
        if needy.is_empty() {
            return Ok(sources);
        }
        if !columns.iter().any(|c| c.key_position.is_some()) {
            // REPLICA IDENTITY FULL sends every value; nothing is ever unchanged there.
            return Err(Failure::Table(Error::internal(
                "unchanged TOAST value in a table without a key",
            )));
        }
        let mut value_slots: Vec<usize> = needy
            .iter()
            .flat_map(|(_, _, _, s)| s.iter().copied())
            .collect();
        value_slots.sort_unstable();
        value_slots.dedup();
        let key_columns: Vec<ColumnSchema> =
            key_slots.iter().map(|&s| columns[s].clone()).collect();
        let value_columns: Vec<ColumnSchema> =
            value_slots.iter().map(|&s| columns[s].clone()).collect();
        let keys: Vec<(Vec<Value>, u64)> =
            needy.iter().map(|(_, k, b, _)| (k.clone(), *b)).collect();
        let spec = &tc.table;
        let converted = self.converted(&spec.source, &value_columns);
        let found = self
            .ch
            .stored_values(
                &spec.target.namespace,
                &spec.target.table,
                &key_columns,
                &value_columns,
                &converted,
                &keys,
            )
            .await?;
        for ((i, _, _, slots), found) in needy.into_iter().zip(found) {
            let Some(mut found) = found else {
                return Err(Failure::Table(
                    Error::new(
                        ErrorKind::Misconfigured,
                        "XX001",
                        format!(
                            "an update of table {} left a large value unchanged, and ClickHouse holds no earlier version of the row to take it from",
                            spec.source
                        ),
                    )
                    .with_hint(format!(
                        "Rows were removed from {} in ClickHouse; RESYNC MIRROR … TABLE {} reloads the table.",
                        spec.target, spec.source
                    )),
                ));
            };
            let mut cols = Vec::with_capacity(slots.len());
            for s in slots {
                let n = value_slots
                    .binary_search(&s)
                    .map_err(|_| Failure::Table(Error::internal("looked-up column missing")))?;
                cols.push((s, std::mem::take(&mut found[n])));
            }
            sources.stored.insert(i, cols);
        }
        Ok(sources)
    }
}

/// The positions in `columns` of the columns `layout` sorts by that are not key columns.
fn sort_extras(layout: &ferry_core::layout::TableLayout, columns: &[ColumnSchema]) -> Vec<usize> {
    let Some(order) = &layout.order_by else {
        return Vec::new();
    };
    order
        .iter()
        .filter_map(|n| {
            columns
                .iter()
                .position(|c| &c.name == n)
                .or_else(|| columns.iter().position(|c| c.name.eq_ignore_ascii_case(n)))
        })
        .filter(|&s| columns[s].key_position.is_none())
        .collect()
}

fn sorted_beyond_key(
    spec: &ferry_core::destination::TableSpec,
    columns: &[ColumnSchema],
    extras: &[usize],
) -> Error {
    let names: Vec<&str> = extras.iter().map(|&s| columns[s].name.as_str()).collect();
    Error::new(
        ErrorKind::Misconfigured,
        "55000",
        format!(
            "table {} is sorted by {} beyond its key (order_by), and a deletion or key change arrived without the row's old values of them",
            spec.source,
            names.join(", ")
        ),
    )
    .with_hint(format!(
        "Run ALTER TABLE {} REPLICA IDENTITY FULL at the source, then RESYNC MIRROR … TABLE {}.",
        spec.source.quoted(),
        spec.source
    ))
}

/// Whether an update moved the row: its key (for a table without a key, any column) differs
/// between the old and the new row; `key_slots` holds too the columns the table is sorted by
/// beyond its key.
fn key_moved(
    change: &RowChange,
    old: &Row<'_>,
    tc: &TableChanges,
    key_slots: &[usize],
    keyed: bool,
) -> bool {
    let Some(new) = change.new else { return true };
    let new = tc.tuple(new);
    if !change.old_is_full {
        // pgoutput sends the old key only when the key changed.
        return true;
    }
    let slots: Vec<usize> = if keyed {
        key_slots.to_vec()
    } else {
        (0..new.len()).collect()
    };
    slots.iter().any(|&s| {
        let (a, b) = (old.get(s), new.get(s));
        // An unchanged value in the new row is the old one.
        b != Field::Unchanged && a != b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fit_their_kind() {
        for kind in [
            ValueKind::Int32,
            ValueKind::Text,
            ValueKind::Uuid,
            ValueKind::Decimal {
                precision: 10,
                scale: 2,
            },
        ] {
            let mut out = Vec::new();
            crate::rowbinary::encode(&kind, false, &placeholder(&kind, false), &mut out).unwrap();
            assert!(!out.is_empty());
        }
        assert_eq!(placeholder(&ValueKind::Int32, true), Value::Null);
    }
}
