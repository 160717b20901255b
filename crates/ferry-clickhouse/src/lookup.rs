//! Reading back what a table holds for some keys, as the RowBinary an insert would carry.
//!
//! The streaming path needs this for UPDATEs that leave a TOASTed column alone: the change
//! does not carry the value, and the value it must keep is the one ClickHouse holds for the
//! row from before the change. Values come back exactly as they are stored, encoded by
//! ClickHouse itself with `formatRow('RowBinary', column)`, and go into the next insert
//! byte for byte, so no type needs a decoder and nothing can be blurred on the way.
//!
//! The keys travel inside the query as RowBinary too, each with its bound, read by the
//! `format()` table function into their own column types, so `(key) IN (…)` uses the table's
//! primary key index. A table holds every version of a row until a merge collapses them; for
//! each key the newest row with a version below the key's bound is taken (the row as it was
//! before the change being written: the bound is the change's own version), else, when merges
//! have left only later versions (rows already written by a run that crashed before
//! confirming them, which carry the same values), the newest row; a key whose row so taken is
//! a deletion has no values to give and is left out of the answer.

use std::collections::HashMap;

use ferry_core::ident::{ch_ident, ch_qualified};
use ferry_core::{ColumnSchema, Value};

use crate::connect::DestinationError;
use crate::rowbinary::encode;
use crate::table::{ClickHouse, WriteError};
use crate::types::clickhouse_type;

/// Bytes of encoded keys sent in one query (each byte may become four in the literal).
const KEYS_PER_QUERY_BYTES: usize = 1 << 20;
/// Room for the literal: ClickHouse's default `max_query_size` is 256 KiB.
const MAX_QUERY_SIZE: usize = 8 << 20;

/// Per key (its RowBinary), the RowBinary of each asked-for column.
type StoredValues = HashMap<Vec<u8>, Vec<Vec<u8>>>;

impl ClickHouse {
    /// The values of `columns` that `database.table` holds for each of `keys` (values of
    /// `key_columns`, in order, each with its bound), taken from the newest row older than the
    /// bound (see the module doc): per key, in the order of `keys`, the RowBinary of each
    /// column, or `None` when the table has no live row for it. A key is asked for once.
    /// The columns whose type was chosen in place of the mapped one (`converted`) are read
    /// back cast to the mapped type, the type inserts send.
    pub async fn stored_values(
        &self,
        database: &str,
        table: &str,
        key_columns: &[ColumnSchema],
        columns: &[ColumnSchema],
        converted: &[bool],
        keys: &[(Vec<Value>, u64)],
    ) -> Result<Vec<Option<Vec<Vec<u8>>>>, WriteError> {
        let mut found = StoredValues::new();
        let mut encoded_keys = Vec::with_capacity(keys.len());
        let mut chunk = Vec::new();
        for (key, bound) in keys {
            let start = chunk.len();
            for (i, (c, v)) in key_columns.iter().zip(key).enumerate() {
                encode(&c.kind, c.nullable, v, &mut chunk)
                    .map_err(|source| WriteError::Encode { column: i, source })?;
            }
            encoded_keys.push(chunk[start..].to_vec());
            chunk.extend_from_slice(&bound.to_le_bytes());
            if chunk.len() >= KEYS_PER_QUERY_BYTES {
                self.stored_chunk(
                    database,
                    table,
                    key_columns,
                    columns,
                    converted,
                    &chunk,
                    &mut found,
                )
                .await?;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            self.stored_chunk(
                database,
                table,
                key_columns,
                columns,
                converted,
                &chunk,
                &mut found,
            )
            .await?;
        }
        Ok(encoded_keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    #[allow(clippy::too_many_arguments)]
    async fn stored_chunk(
        &self,
        database: &str,
        table: &str,
        key_columns: &[ColumnSchema],
        columns: &[ColumnSchema],
        converted: &[bool],
        encoded_keys: &[u8],
        found: &mut StoredValues,
    ) -> Result<(), WriteError> {
        let names: Vec<String> = key_columns.iter().map(|c| ch_ident(&c.name)).collect();
        let keys: Vec<String> = names.iter().map(|n| format!("t.{n}")).collect();
        let keys = keys.join(", ");
        let mut structure: Vec<String> = key_columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    ch_ident(&c.name),
                    clickhouse_type(&c.kind, c.nullable)
                )
            })
            .collect();
        structure.push("_ferry_bound UInt64".into());
        let version = format!("t.{}", ch_ident(&self.meta().version));
        let deleted = format!("t.{}", ch_ident(&self.meta().is_deleted));
        let before = "b._ferry_bound";
        // The newest row below the key's bound, else the newest row: of a column `x`.
        let newest = |x: &str| {
            format!(
                "if(countIf({version} < {before}) > 0, \
                    argMaxIf({x}, {version}, {version} < {before}), argMax({x}, {version}))"
            )
        };
        let values: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let column = format!("t.{}", ch_ident(&c.name));
                let column = if converted.get(i).copied().unwrap_or(false) {
                    format!(
                        "CAST({column}, {})",
                        ferry_core::ident::ch_literal(&clickhouse_type(&c.kind, c.nullable))
                    )
                } else {
                    column
                };
                newest(&format!("formatRow('RowBinary', {column})"))
            })
            .collect();
        let data = format!(
            "format(RowBinary, {}, {})",
            literal(structure.join(", ").as_bytes()),
            literal(encoded_keys)
        );
        // A row whose newest version is a deletion has no values to give (a deletion row
        // holds stand-ins): such keys are left out, like keys never written.
        let sql = format!(
            "SELECT formatRow('RowBinary', {keys}), {values} \
             FROM {table} AS t INNER JOIN {data} AS b USING ({using}) \
             WHERE ({plain}) IN (SELECT {plain} FROM {data}) \
             GROUP BY {keys}, b._ferry_bound HAVING {gone} = 0",
            values = values.join(", "),
            table = ch_qualified(database, table),
            using = names.join(", "),
            plain = names.join(", "),
            gone = newest(&deleted),
        );
        let bytes = self
            .client()
            .query(&sql)
            .with_setting("max_query_size", MAX_QUERY_SIZE.to_string())
            .fetch_bytes("RowBinary")
            .map_err(|e| self.err(e))?
            .collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let key = take_string(&mut rest).ok_or_else(|| malformed(table))?;
            let mut row = Vec::with_capacity(columns.len());
            for _ in columns {
                row.push(take_string(&mut rest).ok_or_else(|| malformed(table))?);
            }
            found.insert(key, row);
        }
        Ok(())
    }
}

/// One row of a table without a key, as [`ClickHouse::stored_rows`] finds it.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub hash: u64,
    pub id: u64,
    /// Its newest version, and whether that version deletes it.
    pub version: u64,
    pub deleted: bool,
    /// Its values, as RowBinary of the table's columns.
    pub content: Vec<u8>,
}

/// Hashes looked up in one query.
const HASHES_PER_QUERY: usize = 10_000;

impl ClickHouse {
    /// Every row of a table without a key whose values hash to one of `hashes`, with its
    /// newest version (see [`crate::identity`]).
    pub async fn stored_rows(
        &self,
        database: &str,
        table: &str,
        columns: &[ColumnSchema],
        hashes: &[u64],
    ) -> Result<Vec<StoredRow>, WriteError> {
        use crate::identity::{ROW_HASH_COLUMN, ROW_ID_COLUMN};
        let list: Vec<String> = columns.iter().map(|c| ch_ident(&c.name)).collect();
        let (h, id, v, d) = (
            ch_ident(ROW_HASH_COLUMN),
            ch_ident(ROW_ID_COLUMN),
            ch_ident(&self.meta().version),
            ch_ident(&self.meta().is_deleted),
        );
        let mut found = Vec::new();
        for chunk in hashes.chunks(HASHES_PER_QUERY) {
            let wanted: Vec<String> = chunk.iter().map(|x| (*x as i64).to_string()).collect();
            let sql = format!(
                "SELECT {h}, {id}, max({v}), argMax({d}, {v}), argMax(formatRow('RowBinary', {cols}), {v}) \
                 FROM {table} WHERE {h} IN ({wanted}) GROUP BY {h}, {id}",
                cols = list.join(", "),
                table = ch_qualified(database, table),
                wanted = wanted.join(", "),
            );
            let bytes = self
                .client()
                .query(&sql)
                .with_setting("max_query_size", MAX_QUERY_SIZE.to_string())
                .fetch_bytes("RowBinary")
                .map_err(|e| self.err(e))?
                .collect()
                .await
                .map_err(|e| self.err(e))?;
            let mut rest: &[u8] = &bytes;
            let bad = || malformed(table);
            while !rest.is_empty() {
                let hash = take_fixed::<8>(&mut rest).ok_or_else(bad)?;
                let row_id = take_fixed::<8>(&mut rest).ok_or_else(bad)?;
                let version = take_fixed::<8>(&mut rest).ok_or_else(bad)?;
                let deleted = take_fixed::<1>(&mut rest).ok_or_else(bad)?;
                let content = take_string(&mut rest).ok_or_else(bad)?;
                found.push(StoredRow {
                    hash: u64::from_le_bytes(hash),
                    id: u64::from_le_bytes(row_id),
                    version: u64::from_le_bytes(version),
                    deleted: deleted[0] != 0,
                    content,
                });
            }
        }
        Ok(found)
    }
}

/// Takes `N` bytes off the front of `buf`.
fn take_fixed<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

fn malformed(table: &str) -> WriteError {
    WriteError::Destination(DestinationError {
        kind: ferry_core::ErrorKind::Internal,
        code: None,
        message: format!("ClickHouse answered a look-up in {table} with malformed RowBinary"),
        hint: None,
        source: None,
    })
}

/// A ClickHouse string literal of any bytes: letters and digits as they are, everything else
/// as `\xHH` (so no quote, backslash or `?` placeholder of the client survives unescaped).
fn literal(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2 + 2);
    s.push('\'');
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02X}"));
        }
    }
    s.push('\'');
    s
}

/// Takes one RowBinary `String` (LEB128 length, bytes) off the front of `buf`.
fn take_string(buf: &mut &[u8]) -> Option<Vec<u8>> {
    let mut len = 0u64;
    let mut shift = 0;
    loop {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let len = usize::try_from(len).ok()?;
    if buf.len() < len {
        return None;
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    Some(s.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_all_but_letters_and_digits() {
        assert_eq!(literal(b"ab1"), "'ab1'");
        assert_eq!(literal(b"'\\?\x00 "), "'\\x27\\x5C\\x3F\\x00\\x20'");
    }

    #[test]
    fn strings_are_taken_in_turn() {
        let mut long = vec![0x81, 0x01];
        long.extend(std::iter::repeat_n(b'x', 129));
        let mut buf: &[u8] = &[&[2u8, b'h', b'i', 0][..], &long[..]].concat();
        assert_eq!(take_string(&mut buf).unwrap(), b"hi");
        assert_eq!(take_string(&mut buf).unwrap(), b"");
        assert_eq!(take_string(&mut buf).unwrap().len(), 129);
        assert!(buf.is_empty());
        let mut short: &[u8] = &[5, b'a'];
        assert_eq!(take_string(&mut short), None);
    }
}
