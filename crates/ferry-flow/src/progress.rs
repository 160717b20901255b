//! What a mirror's stream knows about its own progress, shared with the monitor.
//!
//! The stream is restarted often (after each transient error, whenever a table starts or ends
//! loading on its own), but its figures must outlive each run: a change received before
//! ClickHouse went away is still pending after ten restarts, and the lag must keep growing
//! from its commit time. So they live here, one value per mirror for as long as the daemon
//! runs, and the stream only reports to it:
//!
//! - [`MirrorProgress::pending`] for each change it takes into a batch: the change's table and
//!   the commit position and time of its transaction. The oldest pending commit time per table
//!   is kept.
//! - [`MirrorProgress::applied`] once a batch is in the destination and recorded: everything
//!   that committed before the position is applied, its rows are counted per table (in a
//!   one-minute window and in total), and pending entries before it go.
//! - [`MirrorProgress::caught_up`] when the source says it has sent everything and nothing is
//!   pending: the time up to which every change is applied is now.
//! - [`MirrorProgress::reading`] while a run reads the slot; when a run starts, the rows it
//!   will count are those it applies, not those of the runs before that were never applied.
//!
//! The monitor reads it every few seconds ([`MirrorProgress::figures`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ferry_catalog::{StreamFigures, TableFigures};
use ferry_core::value::PG_EPOCH_UNIX_MICROS;
use ferry_core::Lsn;

/// The window of the streaming rate, in buckets of a second.
const WINDOW_SECS: usize = 60;

/// Rows counted per second over the last minute.
#[derive(Debug, Clone)]
struct RateWindow {
    /// Rows per second, indexed by the second (since `origin`) modulo the window.
    buckets: [u64; WINDOW_SECS],
    /// The second each bucket holds.
    seconds: [u64; WINDOW_SECS],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            buckets: [0; WINDOW_SECS],
            seconds: [u64::MAX; WINDOW_SECS],
        }
    }
}

impl RateWindow {
    fn add(&mut self, second: u64, rows: u64) {
        let i = (second % WINDOW_SECS as u64) as usize;
        if self.seconds[i] != second {
            self.seconds[i] = second;
            self.buckets[i] = 0;
        }
        self.buckets[i] += rows;
    }

    /// Rows in the minute up to `second` (inclusive).
    fn last_minute(&self, second: u64) -> u64 {
        self.seconds
            .iter()
            .zip(&self.buckets)
            .filter(|(&s, _)| s != u64::MAX && s <= second && second - s < WINDOW_SECS as u64)
            .map(|(_, &n)| n)
            .sum()
    }
}

/// A change not yet applied: its transaction's commit position and time.
#[derive(Debug, Clone, Copy)]
struct Pending {
    commit_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC, as pgoutput gives commit times.
    commit_micros: i64,
}

#[derive(Debug, Default)]
struct Table {
    /// The oldest change received and not applied.
    pending: Option<Pending>,
    /// Rows taken into batches by the current run and not applied yet.
    unapplied: u64,
    window: RateWindow,
    /// Rows applied, not yet reported to the catalog.
    unreported: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Whether a stream has run since the daemon started.
    known: bool,
    reading: bool,
    applied: Option<Lsn>,
    caught_up_at: Option<SystemTime>,
    tables: HashMap<i64, Table>,
    /// Why the mirror's task is retrying, and since when; `None` while it is not.
    retrying: Option<(String, SystemTime)>,
}

/// One mirror's progress (see the module doc).
#[derive(Debug)]
pub struct MirrorProgress {
    origin: Instant,
    state: Mutex<State>,
}

impl Default for MirrorProgress {
    fn default() -> Self {
        MirrorProgress {
            origin: Instant::now(),
            state: Mutex::default(),
        }
    }
}

/// Marks the stream as reading until dropped.
pub struct Reading(Arc<MirrorProgress>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.lock().reading = false;
    }
}

fn from_pg_micros(micros: i64) -> SystemTime {
    let unix = micros.saturating_add(PG_EPOCH_UNIX_MICROS);
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl MirrorProgress {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// A run of the stream starts reading from `applied`; it reads until the guard drops.
    pub fn reading(self: &Arc<Self>, applied: Lsn) -> Reading {
        let mut s = self.lock();
        s.known = true;
        s.reading = true;
        s.applied = Some(s.applied.map_or(applied, |a| a.max(applied)));
        for t in s.tables.values_mut() {
            t.unapplied = 0;
        }
        drop(s);
        Reading(self.clone())
    }

    /// A change of `table` was taken into a batch.
    pub fn pending(&self, table: i64, commit_lsn: Lsn, commit_micros: i64) {
        let mut s = self.lock();
        let t = s.tables.entry(table).or_default();
        t.unapplied += 1;
        if t.pending.is_none_or(|p| commit_lsn < p.commit_lsn) {
            t.pending = Some(Pending {
                commit_lsn,
                commit_micros,
            });
        }
    }

    /// Everything before `position` is in the destination; `last_commit_micros` is the
    /// commit time of the last transaction applied, when the batch had changes.
    pub fn applied(&self, position: Lsn, last_commit_micros: Option<i64>) {
        let second = self.second();
        let mut s = self.lock();
        s.applied = Some(s.applied.map_or(position, |a| a.max(position)));
        for t in s.tables.values_mut() {
            if t.unapplied > 0 {
                t.window.add(second, t.unapplied);
                t.unreported += t.unapplied;
                t.unapplied = 0;
            }
            if t.pending.is_some_and(|p| p.commit_lsn < position) {
                t.pending = None;
            }
        }
        if let Some(m) = last_commit_micros {
            let at = from_pg_micros(m);
            s.caught_up_at = Some(s.caught_up_at.map_or(at, |c| c.max(at)));
        }
        s.retrying = None;
    }

    /// The source has sent everything up to `position`, and the stream holds nothing it has
    /// not applied. Changes an earlier run received past `position` (not sent again yet)
    /// stay pending.
    pub fn caught_up(&self, position: Lsn) {
        let mut s = self.lock();
        s.applied = Some(s.applied.map_or(position, |a| a.max(position)));
        for t in s.tables.values_mut() {
            if t.pending.is_some_and(|p| p.commit_lsn < position) {
                t.pending = None;
            }
        }
        if s.tables.values().all(|t| t.pending.is_none()) {
            s.caught_up_at = Some(SystemTime::now());
        }
    }

    /// The mirror's task hit a transient error and will try again.
    pub fn retrying(&self, error: &str) {
        let mut s = self.lock();
        match &mut s.retrying {
            Some((message, _)) => error.clone_into(message),
            None => s.retrying = Some((error.to_owned(), SystemTime::now())),
        }
    }

    /// The mirror's task made progress again (or stopped).
    pub fn settled(&self) {
        self.lock().retrying = None;
    }

    /// Why the mirror is retrying, and since when.
    pub fn retry_reason(&self) -> Option<(String, SystemTime)> {
        self.lock().retrying.clone()
    }

    /// The figures for the catalog; the rows applied since the last call are handed over.
    pub fn figures(&self) -> (StreamFigures, Vec<TableFigures>) {
        let second = self.second();
        // Over the last minute, or the time since the daemon started when that is shorter.
        let window = (second + 1).min(WINDOW_SECS as u64) as f64;
        let mut s = self.lock();
        let mut rows_last_minute = 0;
        let mut pending_since: Option<i64> = None;
        let mut tables = Vec::with_capacity(s.tables.len());
        for (&id, t) in s.tables.iter_mut() {
            let last_minute = t.window.last_minute(second);
            rows_last_minute += last_minute;
            let pending = t.pending.map(|p| p.commit_micros);
            if let Some(p) = pending {
                pending_since = Some(pending_since.map_or(p, |q| q.min(p)));
            }
            tables.push(TableFigures {
                table_id: id,
                rows_per_second: last_minute as f64 / window,
                rows_added: std::mem::take(&mut t.unreported),
                pending_since: pending.map(from_pg_micros),
            });
        }
        let stream = StreamFigures {
            known: s.known,
            applied: s.applied,
            pending_since: pending_since.map(from_pg_micros),
            caught_up_at: s.caught_up_at,
            streaming: s.reading,
            rows_per_second: rows_last_minute as f64 / window,
        };
        (stream, tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_one_minute() {
        let mut w = RateWindow::default();
        w.add(0, 5);
        w.add(30, 7);
        w.add(30, 1);
        assert_eq!(w.last_minute(30), 13);
        assert_eq!(w.last_minute(59), 13);
        assert_eq!(w.last_minute(60), 8);
        // A bucket reused a minute later starts again.
        w.add(90, 2);
        assert_eq!(w.last_minute(90), 2);
        assert_eq!(w.last_minute(200), 0);
    }

    #[test]
    fn pending_stays_across_runs_until_applied() {
        let p = Arc::new(MirrorProgress::default());
        {
            let _run = p.reading(Lsn(100));
            p.pending(1, Lsn(200), 1_000);
            p.pending(1, Lsn(300), 2_000);
            p.pending(2, Lsn(300), 2_000);
        }
        // The run failed before applying: a new run takes the same changes again.
        let _run = p.reading(Lsn(100));
        p.pending(1, Lsn(200), 1_000);
        let (f, _) = p.figures();
        assert!(f.streaming);
        assert_eq!(f.pending_since, Some(from_pg_micros(1_000)));
        // Applied up to after the first transaction: only the second is pending.
        p.applied(Lsn(250), Some(1_000));
        let (f, tables) = p.figures();
        assert_eq!(f.pending_since, Some(from_pg_micros(2_000)));
        assert_eq!(f.applied, Some(Lsn(250)));
        let t1 = tables.iter().find(|t| t.table_id == 1).unwrap();
        // Only the row of this run counts: the first run's rows were never applied.
        assert_eq!(t1.rows_added, 1);
        assert!(t1.rows_per_second > 0.0);
        p.applied(Lsn(400), Some(2_000));
        let (f, _) = p.figures();
        assert_eq!(f.pending_since, None);
        assert_eq!(f.caught_up_at, Some(from_pg_micros(2_000)));
    }

    #[test]
    fn a_keepalive_does_not_clear_what_was_not_sent_again() {
        let p = Arc::new(MirrorProgress::default());
        {
            let _run = p.reading(Lsn(100));
            p.pending(1, Lsn(500), 5_000);
        }
        // Run 2 starts again at 100; the server says it has sent up to 150 only.
        let _run = p.reading(Lsn(100));
        p.caught_up(Lsn(150));
        let (f, _) = p.figures();
        assert_eq!(f.pending_since, Some(from_pg_micros(5_000)));
        assert_eq!(f.caught_up_at, None);
        p.caught_up(Lsn(600));
        let (f, _) = p.figures();
        assert_eq!(f.pending_since, None);
        assert!(f.caught_up_at.is_some());
    }
}
