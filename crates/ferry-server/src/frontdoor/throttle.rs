//! Slowing down password guessing, per client address.
//!
//! Each failed login from an address makes the next attempt from it wait longer before its
//! password is checked (100 ms, doubling to 3.2 s); after `max_failures` failures within
//! `lockout` of each other the address is refused outright until `lockout` has passed
//! since the last one. The wait comes before the check, so an attacker cannot learn early
//! that a guess failed by timing out on it. A login from another address is not slowed.
//! A successful login clears its address. IPv6 clients count per /64, the block a single
//! host usually holds. The table is bounded: when full, the entry idle longest goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 10_000;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DOUBLINGS: u32 = 5;

pub struct Throttle {
    max_failures: u32,
    lockout: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// What a failed login did to its address.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Counted; this many failures so far.
    Counted(u32),
    /// This failure locked the address out for this long.
    LockedOut(Duration),
}

impl Throttle {
    pub fn new(max_failures: u32, lockout: Duration) -> Throttle {
        Throttle {
            max_failures: max_failures.max(1),
            lockout,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
            },
            v4 => v4,
        }
    }

    /// The address's failures, forgetting those older than the lockout.
    fn current(&self, ip: IpAddr, now: Instant) -> Option<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&Self::key(ip))
            .copied()
            .filter(|e| now.duration_since(e.last) < self.lockout)
    }

    /// How much longer the address is refused, if it is.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let e = self.current(ip, now)?;
        (e.failures >= self.max_failures).then(|| self.lockout - now.duration_since(e.last))
    }

    /// How long a login from the address waits before its password is checked.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        match self.current(ip, Instant::now()) {
            Some(e) if e.failures > 0 => {
                FIRST_DELAY * 2u32.pow((e.failures - 1).min(MAX_DOUBLINGS))
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failed login.
    pub fn failed(&self, ip: IpAddr) -> Failure {
        let now = Instant::now();
        let failures = self.current(ip, now).map_or(0, |e| e.failures) + 1;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(ip);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, e| now.duration_since(e.last) < self.lockout);
            if entries.len() >= MAX_ENTRIES {
                if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            key,
            Entry {
                failures,
                last: now,
            },
        );
        if failures == self.max_failures {
            Failure::LockedOut(self.lockout)
        } else {
            Failure::Counted(failures)
        }
    }

    /// A successful login clears the address.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&Self::key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_address_is_refused_and_others_are_not() {
        let t = Throttle::new(4, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.delay(a), Duration::ZERO);
        assert_eq!(t.failed(a), Failure::Counted(1));
        assert_eq!(t.delay(a), Duration::from_millis(100));
        assert_eq!(t.failed(a), Failure::Counted(2));
        assert_eq!(t.delay(a), Duration::from_millis(200));
        assert_eq!(t.failed(a), Failure::Counted(3));
        assert!(t.locked(a).is_none());
        assert_eq!(t.failed(a), Failure::LockedOut(Duration::from_secs(60)));
        assert!(t.locked(a).unwrap() > Duration::from_secs(59));
        assert_eq!((t.delay(b), t.locked(b)), (Duration::ZERO, None));
        t.succeeded(a);
        assert_eq!((t.delay(a), t.locked(a)), (Duration::ZERO, None));
    }

    #[test]
    fn failures_are_forgotten_after_the_lockout() {
        let t = Throttle::new(2, Duration::from_millis(30));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        t.failed(a);
        t.failed(a);
        assert!(t.locked(a).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.locked(a).is_none());
        assert_eq!(t.failed(a), Failure::Counted(1));
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_is_bounded() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        t.failed(x);
        assert_eq!(t.failed(y), Failure::Counted(2));
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        t.failed(mapped);
        assert_eq!(t.failed("10.0.0.9".parse().unwrap()), Failure::Counted(2));
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            t.failed(IpAddr::V4(i.into()));
        }
        assert!(t.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
