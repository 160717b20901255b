//! What the initial load costs Ferry per row, on what PostgreSQL really sends: binary COPY of
//! `pgbench_accounts` (int4, int4, int4, bpchar(84)) and of `bench_wide` (17 mixed columns),
//! turned into ClickHouse RowBinary two ways:
//!
//! - old: `BinaryCopyDecoder` (a `Value` per cell) and `rowbinary::encode` (as `RowInsert::push`);
//! - new: `CopyFramer` (borrowed fields) and `Transcoder` (straight into RowBinary).
//!
//! The tables are those of `scripts/bench snapshot` (database `ferry_bench`; run that once).
//! The stream is read into memory first, in the chunks the server sent; then each way runs over
//! it several times, into 1 MiB chunks as an insert sends them, and the CPU time of this thread
//! (`/proc/thread-self/schedstat`, which excludes waiting for a CPU on a busy machine) is
//! reported per row: the best and the median run. Both ways must give the same bytes. The new
//! way is also timed into `Native` blocks (65 536 rows or 4 MiB of data at most); with
//! `TRANSCODE_BENCH_SAVE=dir` both encodings are written to files there, to time ClickHouse's
//! inserts of each.
//!
//! ```sh
//! cargo run --release -p ferry-e2e --example transcode_bench [rows, default 1000000] [runs, default 7]
//! ```

#![allow(clippy::print_stdout)]

use bytes::Bytes;
use ferry_clickhouse::native::NativeBlock;
use ferry_clickhouse::rowbinary::encode;
use ferry_clickhouse::transcode::Transcoder;
use ferry_clickhouse::unrepresentable::UnrepresentablePolicy;
use ferry_core::binary_copy::{CopyFramer, DEFAULT_MAX_ROW_BYTES};
use ferry_core::ColumnSchema;
use ferry_e2e::copy_stream;
use ferry_postgres::copy::BinaryCopyDecoder;

/// An insert's chunk: sent (here: handed to `sink`) once this full.
const CHUNK_BYTES: usize = 1 << 20;

/// CPU nanoseconds this thread has run.
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("schedstat's first field")
}

/// Where full chunks go: kept for the check run, dropped otherwise.
struct Sink {
    keep: bool,
    chunks: Vec<Bytes>,
}

impl Sink {
    fn send(&mut self, buf: &mut Vec<u8>) {
        let chunk = Bytes::from(std::mem::replace(
            buf,
            Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
        ));
        if self.keep {
            self.chunks.push(chunk);
        }
    }
}

fn old_way(columns: &[ColumnSchema], stream: &[Bytes], sink: &mut Sink) -> u64 {
    let mut decoder = BinaryCopyDecoder::new(columns.iter().map(|c| c.kind.clone()).collect());
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 64 * 1024);
    for chunk in stream {
        decoder.push(chunk);
        while let Some(values) = decoder.next_row().expect("decode") {
            for (c, v) in columns.iter().zip(&values) {
                encode(&c.kind, c.nullable, v, &mut buf).expect("encode");
            }
            buf.extend_from_slice(&0u64.to_le_bytes());
            buf.push(0);
            if buf.len() >= CHUNK_BYTES {
                sink.send(&mut buf);
            }
        }
    }
    sink.send(&mut buf);
    decoder.finish().expect("complete stream")
}

fn new_way(columns: &[ColumnSchema], stream: &[Bytes], sink: &mut Sink) -> u64 {
    let mut framer = CopyFramer::new(columns.len(), DEFAULT_MAX_ROW_BYTES);
    let mut transcoder =
        Transcoder::new(columns, UnrepresentablePolicy::Substitute).expect("transcoder");
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 64 * 1024);
    for chunk in stream {
        let mut rows = framer.feed(chunk);
        while let Some(row) = rows.next().expect("frame") {
            transcoder
                .append_row(row.fields(), 0, false, &mut buf)
                .expect("transcode");
            if buf.len() >= CHUNK_BYTES {
                sink.send(&mut buf);
            }
        }
    }
    sink.send(&mut buf);
    framer.finish().expect("complete stream")
}

/// Rows of a `Native` block, and its bytes of column data, at most.
const BLOCK_ROWS: usize = 65_536;
const BLOCK_BYTES: usize = 4 << 20;

/// The new way into `Native` blocks: each row transcoded straight into the block's columns.
fn native_way(columns: &[ColumnSchema], stream: &[Bytes], sink: &mut Sink) -> u64 {
    let mut framer = CopyFramer::new(columns.len(), DEFAULT_MAX_ROW_BYTES);
    let mut transcoder =
        Transcoder::new(columns, UnrepresentablePolicy::Substitute).expect("transcoder");
    let mut block = NativeBlock::new(columns, BLOCK_ROWS, BLOCK_BYTES);
    let mut buf = Vec::new();
    for chunk in stream {
        let mut rows = framer.feed(chunk);
        while let Some(fields) = rows.next().expect("frame") {
            transcoder
                .append_native(fields.fields(), 0, false, &mut block)
                .expect("transcode");
            if block.is_full() {
                block.finish(&mut buf);
                sink.send(&mut buf);
            }
        }
    }
    block.finish(&mut buf);
    sink.send(&mut buf);
    framer.finish().expect("complete stream")
}

type Way = fn(&[ColumnSchema], &[Bytes], &mut Sink) -> u64;

/// ns per row: (best, median) over `runs`.
fn time(way: Way, columns: &[ColumnSchema], stream: &[Bytes], runs: usize) -> (f64, f64) {
    let mut per_row: Vec<f64> = (0..runs)
        .map(|_| {
            let mut sink = Sink {
                keep: false,
                chunks: Vec::new(),
            };
            let start = cpu_ns();
            let rows = way(columns, stream, &mut sink);
            (cpu_ns() - start) as f64 / rows as f64
        })
        .collect();
    per_row.sort_by(f64::total_cmp);
    (per_row[0], per_row[runs / 2])
}

fn output(way: Way, columns: &[ColumnSchema], stream: &[Bytes]) -> Vec<u8> {
    let mut sink = Sink {
        keep: true,
        chunks: Vec::new(),
    };
    way(columns, stream, &mut sink);
    sink.chunks.concat()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("rows"));
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("runs"));
    println!(
        "table | rows | old ns/row (best, median) | new ns/row (best, median) | old/new | new into Native ns/row (best, median)"
    );
    println!("---|---|---|---|---|---");
    for (table, key) in [("pgbench_accounts", "aid"), ("bench_wide", "id")] {
        let (columns, stream) = copy_stream(
            "ferry_bench",
            table,
            &format!("ORDER BY {key} LIMIT {rows}"),
        )
        .await;
        let old = output(old_way, &columns, &stream);
        let new = output(new_way, &columns, &stream);
        assert!(old == new, "{table}: the two ways differ");
        let n = rows.min(old_way(
            &columns,
            &stream,
            &mut Sink {
                keep: false,
                chunks: Vec::new(),
            },
        ));
        // `TRANSCODE_BENCH_ONLY=new` (or `old`) runs one way alone, e.g. under a profiler.
        let only = std::env::var("TRANSCODE_BENCH_ONLY").unwrap_or_default();
        let runs_of = |way: &str| {
            if only.is_empty() || only == way {
                runs
            } else {
                1
            }
        };
        let (old_best, old_median) = time(old_way, &columns, &stream, runs_of("old"));
        let (new_best, new_median) = time(new_way, &columns, &stream, runs_of("new"));
        let (native_best, native_median) = time(native_way, &columns, &stream, runs_of("native"));
        println!(
            "{table} | {n} | {old_best:.0}, {old_median:.0} | {new_best:.0}, {new_median:.0} | {:.1}× | {native_best:.0}, {native_median:.0}",
            old_median / new_median
        );
        if let Ok(dir) = std::env::var("TRANSCODE_BENCH_SAVE") {
            // The two encodings of the table, for timing ClickHouse's inserts of each.
            std::fs::write(format!("{dir}/{table}.rowbinary"), &new).expect("save");
            std::fs::write(
                format!("{dir}/{table}.native"),
                output(native_way, &columns, &stream),
            )
            .expect("save");
        }
    }
}
