//! A writer at the source running in the background while a test does something else: one
//! transaction per round, counted, until stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::CONVERGE_TIMEOUT;

pub struct Workload {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    /// Runs `round(i)` (a batch of statements, one transaction) for i = 1, 2, … on `client`.
    /// An error ends the workload when `tolerate_errors` (a test that fails the source's
    /// tables on purpose), and fails the test otherwise.
    pub fn start(
        client: Client,
        tolerate_errors: bool,
        round: impl Fn(i64) -> String + Send + 'static,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, rounds) = (stop.clone(), rounds.clone());
            async move {
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match client.batch_execute(&round(i)).await {
                        Ok(()) => {}
                        Err(_) if tolerate_errors => return,
                        Err(e) => panic!("workload round {i}: {e}"),
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Workload { stop, rounds, task }
    }

    /// Waits until `more` rounds past where the workload is now are done.
    pub async fn wait_rounds(&self, more: u64) {
        let target = self.rounds.load(Ordering::Relaxed) + more;
        let started = Instant::now();
        while self.rounds.load(Ordering::Relaxed) < target {
            assert!(!self.task.is_finished(), "the workload ended");
            assert!(started.elapsed() < CONVERGE_TIMEOUT, "the workload stalled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops after the round in progress; returns the rounds done.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the workload panicked");
        self.rounds.load(Ordering::Relaxed)
    }
}
