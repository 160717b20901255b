//! Writing in the background: the destination takes one chunk while the stream receives and
//! decodes the next.
//!
//! The destination's [`Apply`] lives in a task of its own and takes jobs in the order they
//! were sent: write a chunk, commit up to a position. Each job's outcome comes back in the
//! same order. At most one chunk is being written while the next one is built, so memory
//! stays at two chunks; a commit is acknowledged only after every write before it, so a
//! position reaches the catalog and the source only once the destination has everything
//! before it, as without the pipeline. The first failure ends the task: later jobs are never
//! run, and the stream starts again from the last acknowledged position.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferry_core::change::TableChanges;
use ferry_core::destination::{Apply, ApplyError, Summary};
use ferry_core::Lsn;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::FlowError;

enum Job {
    Write(Vec<TableChanges>),
    Commit(Lsn),
}

/// What became of a job.
pub(super) enum Done {
    Written(Summary),
    Committed(Lsn),
    Failed(ApplyError),
}

pub(super) struct Writer {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    done: mpsc::UnboundedReceiver<Done>,
    /// Jobs sent whose outcome has not been taken yet.
    pending: usize,
    /// Writes among them.
    writes: usize,
    /// Tells the task to run no further job.
    quit: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn new(mut apply: Box<dyn Apply>) -> Writer {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (tx, done) = mpsc::unbounded_channel();
        let quit = Arc::new(AtomicBool::new(false));
        let told = quit.clone();
        let task = tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                if told.load(Ordering::Acquire) {
                    break;
                }
                let outcome = match job {
                    Job::Write(chunk) => apply.write(chunk).await.map(Done::Written),
                    Job::Commit(at) => apply.commit(at).await.map(|()| Done::Committed(at)),
                };
                let failed = outcome.is_err();
                let _ = tx.send(outcome.unwrap_or_else(Done::Failed));
                if failed {
                    break;
                }
            }
        });
        Writer {
            jobs: Some(jobs),
            done,
            pending: 0,
            writes: 0,
            quit,
            task: Some(task),
        }
    }

    /// Nothing sent is waiting for the destination.
    pub fn idle(&self) -> bool {
        self.pending == 0
    }

    /// Whether a chunk may be sent without waiting: none is being written.
    pub fn ready_for_write(&self) -> bool {
        self.writes == 0
    }

    pub fn write(&mut self, chunk: Vec<TableChanges>) -> Result<(), FlowError> {
        self.send(Job::Write(chunk))?;
        self.writes += 1;
        Ok(())
    }

    pub fn commit(&mut self, at: Lsn) -> Result<(), FlowError> {
        self.send(Job::Commit(at))
    }

    fn send(&mut self, job: Job) -> Result<(), FlowError> {
        // A send fails only once the task has ended; its failure is then among the outcomes
        // still to be taken, and comes out there.
        if self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok()) {
            self.pending += 1;
        }
        Ok(())
    }

    /// The next outcome, in the order the jobs were sent (cancel safe). Only to be awaited
    /// while something is pending.
    pub async fn next(&mut self) -> Result<Done, FlowError> {
        match self.done.recv().await {
            Some(done) => {
                self.pending -= 1;
                if matches!(done, Done::Written(_)) {
                    self.writes -= 1;
                }
                Ok(done)
            }
            None => Err(FlowError::internal(
                "the destination's writer ended without saying why",
            )),
        }
    }

    /// Ends the task: the job under way finishes (so that nothing of this stream is still
    /// being written once the next one starts), the ones after it are never run. A stream
    /// that ends with jobs outstanding starts again from the last acknowledged position.
    pub async fn shut_down(&mut self) {
        self.quit.store(true, Ordering::Release);
        self.jobs = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
