//! Sessions by their cancel key, so that a cancel request can reach the one it names.
//!
//! Each session gets a process id of its own (a counter from a random start, as unique as
//! PostgreSQL's pids while the session lives) and a random 32-bit secret, sent to the
//! client in BackendKeyData. A CancelRequest carrying both asks that session to cancel
//! what it is running; one whose secret does not match does nothing, as in PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;

/// What a cancel request can do to a session.
pub struct Control {
    /// Bumped by each cancel that reaches the session.
    cancels: watch::Sender<u64>,
    /// While set, the statement running cannot be interrupted and cancels are ignored.
    shielded: AtomicBool,
}

impl Control {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.cancels.subscribe()
    }

    /// Marks the running statement as one that must run to its end, until the guard drops.
    pub fn shield(&self) -> ShieldGuard<'_> {
        self.shielded.store(true, Ordering::SeqCst);
        ShieldGuard(self)
    }

    fn cancel(&self) -> bool {
        if self.shielded.load(Ordering::SeqCst) {
            return false;
        }
        self.cancels.send_modify(|n| *n += 1);
        true
    }
}

pub struct ShieldGuard<'a>(&'a Control);

impl Drop for ShieldGuard<'_> {
    fn drop(&mut self) {
        self.0.shielded.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub struct Registry {
    next_pid: AtomicI32,
    sessions: Mutex<HashMap<i32, (i32, Arc<Control>)>>,
}

/// A session's entry; removed from the registry when dropped.
pub struct Registration<'a> {
    pub pid: i32,
    pub secret: i32,
    pub control: Arc<Control>,
    registry: &'a Registry,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut sessions = self.registry.lock();
        sessions.remove(&self.pid);
    }
}

fn random_i32() -> i32 {
    let mut bytes = [0u8; 4];
    // A failing system RNG leaves a predictable secret; PostgreSQL would not start.
    let _ = SystemRandom::new().fill(&mut bytes);
    i32::from_be_bytes(bytes)
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            next_pid: AtomicI32::new(1000 + random_i32().rem_euclid(1_000_000)),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Arc<Control>)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self) -> Registration<'_> {
        let control = Arc::new(Control {
            cancels: watch::channel(0).0,
            shielded: AtomicBool::new(false),
        });
        let secret = random_i32();
        let mut sessions = self.lock();
        let pid = loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & i32::MAX;
            if pid > 0 && !sessions.contains_key(&pid) {
                break pid;
            }
        };
        sessions.insert(pid, (secret, control.clone()));
        Registration {
            pid,
            secret,
            control,
            registry: self,
        }
    }

    /// Cancels what the session `pid` runs if `secret` is its secret; whether it did.
    pub fn cancel(&self, pid: i32, secret: i32) -> bool {
        let control = {
            let sessions = self.lock();
            match sessions.get(&pid) {
                // Compared in constant time: the secret is the only thing guarding a session.
                Some((s, control)) if (s ^ secret) == 0 => control.clone(),
                _ => return false,
            }
        };
        control.cancel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_need_the_right_secret_and_respect_shields() {
        let registry = Registry::new();
        let a = registry.register();
        let b = registry.register();
        assert_ne!(a.pid, b.pid);
        let mut seen = a.control.subscribe();
        assert!(!registry.cancel(a.pid, a.secret.wrapping_add(1)));
        assert!(!seen.has_changed().unwrap());
        assert!(registry.cancel(a.pid, a.secret));
        assert!(seen.has_changed().unwrap());
        seen.borrow_and_update();
        {
            let _shield = a.control.shield();
            assert!(!registry.cancel(a.pid, a.secret));
        }
        assert!(registry.cancel(a.pid, a.secret));
        let pid = a.pid;
        drop(a);
        assert!(!registry.cancel(pid, 0) && registry.lock().len() == 1);
    }
}
