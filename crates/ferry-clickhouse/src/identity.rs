//! Tables without a key: PostgreSQL's multiset semantics in ClickHouse.
//!
//! A table with `REPLICA IDENTITY FULL` and no key may hold identical rows, and a change names
//! a row only by its values: `DELETE` of one of two identical rows deletes one. ClickHouse
//! keeps these rows apart by two columns of Ferry's own:
//!
//! | column | meaning |
//! |---|---|
//! | `_ferry_row_hash` | a 64-bit hash of the row's values (their canonical bytes), for finding rows by value |
//! | `_ferry_row_id` | which of the rows with these values it is: unique per row ever written |
//!
//! The table is a `ReplacingMergeTree(_ferry_version, _ferry_is_deleted)` ordered by
//! `(_ferry_row_hash, _ferry_row_id)`, so its current state is, as for a keyed table,
//! `SELECT … FROM t FINAL WHERE _ferry_is_deleted = 0`.
//!
//! # Row identities
//!
//! - A row of the initial load has the id `2^62 + (range << 32) + its position in the range`,
//!   and "was inserted" at version 0. (A range is read in one snapshot: a table without a key
//!   whose load lost the mirror's snapshot is loaded again whole, never range by range.)
//! - A row inserted by a change (an INSERT, or the new row of an UPDATE) has the id of the
//!   change's LSN, which is unique, and was inserted then.
//! - A change that removes a row (a DELETE, or the old row of an UPDATE) at LSN `L` marks one
//!   row with those values deleted, at version `L`: the smallest id among the rows with those
//!   values that were there at `L` (inserted before `L`, not deleted before `L`).
//!
//! Every id's history is its insertion (known from the id itself) and at most one deletion
//! (its newest version, if deleted), so it survives ClickHouse's merges: whatever was merged
//! away, the rows there at `L` can be told from what is left. That makes replaying WAL after a
//! crash exact: a deletion replayed finds the same candidates — rows deleted later by changes
//! written before the crash still count as there at `L` — and so picks the same row, and the
//! insertions write the same ids again.
//!
//! Values are compared exactly (the RowBinary ClickHouse holds against the change's), never by
//! the hash alone.

use ferry_core::{ColumnSchema, ValueKind};

/// The hash of a row's values.
pub const ROW_HASH_COLUMN: &str = "_ferry_row_hash";
/// Which of the rows with the same values a row is.
pub const ROW_ID_COLUMN: &str = "_ferry_row_id";

/// Ids of rows of the initial load have this bit set.
const LOAD_ID: u64 = 1 << 62;

/// The columns a table holds in ClickHouse: its own, and for a table without a key the two
/// identity columns (as `Int64`s: the hash and the id reinterpreted).
pub fn storage_columns(columns: &[ColumnSchema]) -> Vec<ColumnSchema> {
    let mut all = columns.to_vec();
    if !columns.iter().any(|c| c.key_position.is_some()) {
        for name in [ROW_HASH_COLUMN, ROW_ID_COLUMN] {
            all.push(ColumnSchema {
                name: name.to_owned(),
                type_oid: 20,
                type_name: "bigint".into(),
                kind: ValueKind::Int64,
                nullable: false,
                key_position: None,
                pg_type: None,
            });
        }
    }
    all
}

/// Whether a table has no key (and so identity columns).
pub fn keyless(columns: &[ColumnSchema]) -> bool {
    !columns.iter().any(|c| c.key_position.is_some())
}

/// The id of the `index`th row of range `range` of the initial load.
pub fn load_row_id(range: i32, index: u64) -> u64 {
    LOAD_ID | ((u64::from(range as u32) & 0x3FFF_FFFF) << 32) | (index & 0xFFFF_FFFF)
}

/// When a row with this id was inserted: 0 for the initial load, else its change's LSN.
pub fn inserted_at(id: u64) -> u64 {
    if id & LOAD_ID != 0 {
        0
    } else {
        id
    }
}

/// Hashes a row's fields (`None` for NULL) in their canonical bytes: FNV-1a over each field's
/// length and bytes. Stable across versions and machines, as the stored hashes require.
pub fn row_hash<'a>(fields: impl IntoIterator<Item = Option<&'a [u8]>>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for f in fields {
        match f {
            None => eat(&u32::MAX.to_le_bytes()),
            Some(b) => {
                eat(&(b.len() as u32).to_le_bytes());
                eat(b);
            }
        }
    }
    h
}

/// A row with given values as ClickHouse holds it: its id and when it was deleted, if it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: u64,
    pub deleted_at: Option<u64>,
}

/// The row a removal at `lsn` deletes among `rows` (all rows with the values removed): the
/// smallest id of those there at `lsn` (see the module doc).
pub fn pick_for_removal(rows: &[Stored], lsn: u64) -> Option<u64> {
    rows.iter()
        .filter(|r| inserted_at(r.id) < lsn && r.deleted_at.is_none_or(|d| d >= lsn))
        .map(|r| r.id)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_hashes() {
        assert_eq!(inserted_at(load_row_id(3, 7)), 0);
        assert_ne!(load_row_id(3, 7), load_row_id(7, 3));
        assert_eq!(inserted_at(0x1_0000_0040), 0x1_0000_0040);
        let a = row_hash([Some(&b"x"[..]), None]);
        assert_eq!(a, row_hash([Some(&b"x"[..]), None]));
        assert_ne!(a, row_hash([None, Some(&b"x"[..])]));
        assert_ne!(
            row_hash([Some(&b"ab"[..]), Some(&b""[..])]),
            row_hash([Some(&b"a"[..]), Some(&b"b"[..])])
        );
    }

    #[test]
    fn removal_is_the_same_on_replay() {
        let load = load_row_id(0, 0);
        let load2 = load_row_id(0, 1);
        // First run: two identical rows from the load, one inserted at 100.
        let mut rows = vec![
            Stored {
                id: load,
                deleted_at: None,
            },
            Stored {
                id: load2,
                deleted_at: None,
            },
            Stored {
                id: 100,
                deleted_at: None,
            },
        ];
        // Removals at 200 and 300 pick the load's rows, smallest id first.
        let a = pick_for_removal(&rows, 200).unwrap();
        assert_eq!(a, 100.min(load));
        rows.iter_mut().find(|r| r.id == a).unwrap().deleted_at = Some(200);
        let b = pick_for_removal(&rows, 300).unwrap();
        rows.iter_mut().find(|r| r.id == b).unwrap().deleted_at = Some(300);
        // Replayed from before 200, with both deletions already stored: the same picks.
        assert_eq!(pick_for_removal(&rows, 200), Some(a));
        // (the replay of 200 marks a again; then 300)
        assert_eq!(pick_for_removal(&rows, 300), Some(b));
        // A row inserted after the removal is not a candidate; nor one deleted before it.
        assert_eq!(
            pick_for_removal(
                &[Stored {
                    id: 500,
                    deleted_at: None
                }],
                400
            ),
            None
        );
        assert_eq!(
            pick_for_removal(
                &[Stored {
                    id: 10,
                    deleted_at: Some(300)
                }],
                400
            ),
            None
        );
    }
}
