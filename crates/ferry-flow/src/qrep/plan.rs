//! Cutting a run into partitions (see the module doc of [`crate::qrep`]).

use ferry_core::qrep::{Bounds, Watermark, WatermarkKind, XidRange};
use ferry_postgres::ctid;

/// Cuts the watermark values `first..=last`, which `rows` rows have, into contiguous ranges of
/// about `rows_per_partition` rows each, evenly by value (no range empty of values, every value
/// in exactly one range). Values are discrete (integers, days, microseconds), so inclusive
/// ranges meet without a gap or an overlap.
pub fn value_partitions(
    kind: WatermarkKind,
    first: i64,
    last: i64,
    rows: i64,
    rows_per_partition: u64,
) -> Vec<Bounds> {
    if last < first {
        return Vec::new();
    }
    let span = i128::from(last) - i128::from(first) + 1;
    let per = i128::from(rows_per_partition.max(1));
    let wanted = (i128::from(rows.max(1)) + per - 1) / per;
    let n = wanted.clamp(1, span.min(1 << 20));
    (0..n)
        .map(|i| {
            let lo = i128::from(first) + span * i / n;
            let hi = i128::from(first) + span * (i + 1) / n - 1;
            Bounds::Values {
                first: Watermark::new(kind, lo as i64),
                last: Watermark::new(kind, hi as i64),
            }
        })
        .collect()
}

/// The block ranges of an xmin run over a table of `pages` blocks holding about `tuples`
/// rows (the largest heap of a partitioned table: a range's blocks are read in every leaf).
pub fn block_partitions(
    pages: u64,
    tuples: f64,
    rows_per_partition: u64,
    xids: XidRange,
) -> Vec<Bounds> {
    ctid::plan(pages, tuples, rows_per_partition)
        .into_iter()
        .map(|r| Bounds::Blocks {
            start: r.start,
            end: r.end,
            xids,
        })
        .collect()
}

/// Where a run over a watermark column starts reading: after the last watermark, less the
/// lag (in the kind's units) — never below the smallest value.
pub fn read_after(kind: WatermarkKind, last: Option<i64>, lag: Option<u64>) -> Option<i64> {
    let last = last?;
    let back = lag.map_or(0, |l| kind.lag_units(l));
    Some(
        last.saturating_sub(back)
            .max(kind.range().0.saturating_sub(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(b: &[Bounds]) -> Vec<(i64, i64)> {
        b.iter()
            .map(|b| match b {
                Bounds::Values { first, last } => (first.value, last.value),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn values_are_cut_evenly_without_gaps() {
        let k = WatermarkKind::Int64;
        assert_eq!(
            ranges(&value_partitions(k, 1, 10, 10, 3)),
            [(1, 2), (3, 5), (6, 7), (8, 10)]
        );
        assert_eq!(ranges(&value_partitions(k, 5, 5, 100, 1)), [(5, 5)]);
        assert_eq!(ranges(&value_partitions(k, 1, 100, 0, 10)), [(1, 100)]);
        assert!(value_partitions(k, 2, 1, 1, 1).is_empty());
        for (first, last, rows, per) in [
            (i64::MIN, i64::MAX, 1_000_000_000, 7),
            (-3, 1 << 40, 12_345, 100),
            (0, 9, 1 << 40, 1),
        ] {
            let r = ranges(&value_partitions(k, first, last, rows, per));
            assert_eq!(r.first().unwrap().0, first);
            assert_eq!(r.last().unwrap().1, last);
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0, "{w:?}");
                assert!(w[0].0 <= w[0].1);
            }
        }
    }

    #[test]
    fn lag_reads_back_in_the_kinds_units() {
        assert_eq!(read_after(WatermarkKind::Int64, None, Some(5)), None);
        assert_eq!(
            read_after(WatermarkKind::Int32, Some(100), Some(5)),
            Some(95)
        );
        assert_eq!(
            read_after(WatermarkKind::TimestampTz, Some(10_000_000), Some(3)),
            Some(7_000_000)
        );
        assert_eq!(read_after(WatermarkKind::Date, Some(10), Some(1)), Some(9));
        assert_eq!(
            read_after(WatermarkKind::Int16, Some(-32_760), Some(100)),
            Some(-32_769)
        );
    }

    #[test]
    fn blocks_carry_the_runs_ids() {
        let xids = XidRange {
            after: Some(10),
            through: 20,
            next: 25,
        };
        let b = block_partitions(1000, 100_000.0, 30_000, xids);
        assert_eq!(b.len(), 4);
        assert!(matches!(b[3], Bounds::Blocks { end: None, xids: x, .. } if x == xids));
    }
}
