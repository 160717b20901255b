//! Cutting a table into physical CTID block ranges for a parallel initial load.
//!
//! A heap table's rows live in numbered 8 kB blocks; `ctid >= '(a,0)' AND ctid < '(b,0)'`
//! selects the rows of blocks `a..b`, and PostgreSQL (14+) reads exactly those blocks with a
//! TID range scan. Ranges are sized from the planner's statistics (`relpages`, `reltuples`)
//! to hold about `rows_per_partition` rows each. The statistics may be stale and the table may
//! grow while it is read, so the last range has no end: rows in blocks past the estimate are
//! still read, by it. Every block belongs to exactly one range, so every row visible in the
//! snapshot is read exactly once.

use std::fmt;

/// A range of heap blocks, `start..end`; `end = None` reaches to the end of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl BlockRange {
    /// The `WHERE` condition selecting the range's rows.
    pub fn predicate(&self) -> String {
        match self.end {
            Some(end) => format!(
                "ctid >= '({},0)'::tid AND ctid < '({end},0)'::tid",
                self.start
            ),
            None if self.start == 0 => "true".to_owned(),
            None => format!("ctid >= '({},0)'::tid", self.start),
        }
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end {
            Some(end) => write!(f, "blocks {}..{end}", self.start),
            None => write!(f, "blocks {}..", self.start),
        }
    }
}

/// Largest block number a TID can hold, plus one.
const MAX_BLOCKS: u64 = 1 << 32;

/// Cuts `pages` blocks holding about `tuples` rows into ranges of about `rows_per_partition`
/// rows each. Never returns an empty list; the last range is open-ended.
pub fn plan(pages: u64, tuples: f64, rows_per_partition: u64) -> Vec<BlockRange> {
    let rows_per_partition = rows_per_partition.max(1);
    if pages == 0 || !tuples.is_finite() || tuples <= rows_per_partition as f64 {
        return vec![BlockRange {
            start: 0,
            end: None,
        }];
    }
    let rows_per_page = (tuples / pages as f64).max(1.0 / 1024.0);
    let pages_per_range =
        ((rows_per_partition as f64 / rows_per_page).ceil() as u64).clamp(1, MAX_BLOCKS);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start + pages_per_range < pages {
        ranges.push(BlockRange {
            start,
            end: Some(start + pages_per_range),
        });
        start += pages_per_range;
    }
    ranges.push(BlockRange { start, end: None });
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_unknown_tables_are_one_open_range() {
        for (pages, tuples) in [(0, 0.0), (10, 100.0), (10, -1.0), (5, f64::NAN)] {
            assert_eq!(
                plan(pages, tuples, 1000),
                vec![BlockRange {
                    start: 0,
                    end: None
                }]
            );
        }
    }

    #[test]
    fn ranges_tile_the_table_and_end_open() {
        // 5M rows in 81968 pages (pgbench_accounts at scale 50), 500k rows a range.
        let ranges = plan(81_968, 5_000_000.0, 500_000);
        assert_eq!(ranges.len(), 10);
        assert_eq!(ranges[0].start, 0);
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start), "ranges must touch");
        }
        assert_eq!(ranges.last().unwrap().end, None);
        let per = ranges[0].end.unwrap();
        assert!((8190..=8200).contains(&per), "{per}");
    }

    #[test]
    fn predicates() {
        assert_eq!(
            BlockRange {
                start: 0,
                end: None
            }
            .predicate(),
            "true"
        );
        assert_eq!(
            BlockRange {
                start: 3,
                end: Some(9)
            }
            .predicate(),
            "ctid >= '(3,0)'::tid AND ctid < '(9,0)'::tid"
        );
        assert_eq!(
            BlockRange {
                start: 9,
                end: None
            }
            .predicate(),
            "ctid >= '(9,0)'::tid"
        );
    }
}
