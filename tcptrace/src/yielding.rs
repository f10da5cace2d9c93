//! The live tracer's place in the scheduler. On a busy host every bit of CPU the tracer
//! takes is taken from the programs it traces, so the thread that drains the ring runs in
//! the time they leave idle (`SCHED_IDLE`) for as long as that is safe. It becomes a batch
//! task again (`SCHED_BATCH`: its fair share, but its wake-ups still don't preempt) the moment
//! it falls behind: when a drain finds the ring half full (the kernel wakes it at an eighth),
//! or when a watchdog thread sees that it has not drained for [`STARVED_AFTER`], as on a
//! host with no idle time, where an idle task hardly runs at all. It yields only while the
//! ring can hold what arrives until the watchdog acts, at the rate of the last
//! [`RATE_WINDOW`], with three quarters of it to spare ([`may_yield`]), and a drain finds the
//! ring less than a quarter full. A small ring at a high rate never yields, and neither
//! does a tracer that could not stop yielding: leaving `SCHED_IDLE` needs `CAP_SYS_NICE`,
//! which a tracer given only `CAP_BPF` and `CAP_PERFMON` lacks.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::clock::monotonic_now_ns;

/// How long the ring may go undrained before the watchdog stops the tracer yielding. It
/// drains at least every 10 ms while it gets to run: at 30 MB/s of events (the bench's
/// churn), 20 ms more is 0.6 MB of the default 4 MiB ring.
pub const STARVED_AFTER: Duration = Duration::from_millis(20);
/// How often the watchdog looks again once the ring went undrained that long.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// How long the event rate is measured over, for [`may_yield`].
pub const RATE_WINDOW: Duration = Duration::from_millis(100);

/// Whether the draining thread may yield: a ring of `ring_size` bytes takes what arrives at
/// `bytes_per_s` until the watchdog makes it a batch task again ([`STARVED_AFTER`], and
/// twice the watchdog's interval for it to look and be scheduled) in a quarter of it.
pub fn may_yield(ring_size: u64, bytes_per_s: u64) -> bool {
    let waited_ns = (STARVED_AFTER + 2 * WATCH_EVERY).as_nanos();
    u128::from(bytes_per_s) * waited_ns / 1_000_000_000 < u128::from(ring_size / 4)
}

/// The draining thread's yielding, and its watchdog; the watchdog stops when dropped.
pub struct Yielding {
    shared: Arc<Shared>,
    /// The ring's size: a drain of half of it or more means the tracer is behind; of less
    /// than a quarter, that it keeps up.
    ring_size: u64,
    /// Bytes drained since `window_since_ns`, for the rate.
    window_bytes: u64,
    window_since_ns: u64,
    /// [`may_yield`] at the rate of the last whole window (not before one was measured).
    may_yield: bool,
    /// The watchdog; none where the thread could not stop yielding again.
    watchdog: Option<JoinHandle<()>>,
}

struct Shared {
    /// The draining thread.
    tid: libc::pid_t,
    last_drain_ns: AtomicU64,
    /// Whether it is `SCHED_IDLE` now.
    idle: AtomicBool,
    stop: AtomicBool,
}

/// Makes the tracer a batch job for the scheduler (`SCHED_BATCH`; the calling thread, and
/// the threads it starts after, which inherit it): its wake-ups then no longer preempt the
/// programs being traced. It still gets its fair share of the CPU, so it keeps up with the
/// ring buffer; it only waits for the running task's turn to end, which costs nothing
/// shown, since every event carries its kernel time. Once attached, the thread that drains
/// the ring yields further while it keeps up ([`Yielding`]).
pub fn run_as_batch_job() {
    if let Err(error) = set_policy(0, libc::SCHED_BATCH) {
        crate::debug(format_args!("staying a normal task (SCHED_BATCH refused: {error})"));
    }
}

/// Sets thread `tid`'s scheduling policy (`SCHED_IDLE` or `SCHED_BATCH`; 0: the calling
/// thread).
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Shared {
    /// Moves the draining thread to `SCHED_IDLE` (or back), if it is not there already.
    fn set_yielding(&self, idle: bool) {
        if self.idle.compare_exchange(!idle, idle, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_BATCH };
        if let Err(error) = set_policy(self.tid, policy) {
            crate::debug(format_args!("scheduling policy {policy} refused: {error}"));
        }
    }
}

/// The calling thread's id.
fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Whether a thread may leave `SCHED_IDLE` once in it: tried on a thread of its own, which
/// ends either way.
fn can_stop_yielding() -> bool {
    let tried = thread::spawn(|| {
        let tid = gettid();
        set_policy(tid, libc::SCHED_IDLE).and_then(|()| set_policy(tid, libc::SCHED_BATCH))
    });
    match tried.join() {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            crate::debug(format_args!("not yielding the CPU: could not stop again ({error})"));
            false
        }
        Err(_) => false,
    }
}

impl Yielding {
    /// Lets the calling thread, the one that drains a ring of `ring_size` bytes, yield
    /// from the first [`RATE_WINDOW`] on, as the rate allows, and starts its watchdog (which
    /// keeps the calling thread's policy, and never yields itself); where the thread could
    /// not stop yielding again, it never yields.
    pub fn start(ring_size: u64) -> io::Result<Yielding> {
        let shared = Arc::new(Shared {
            tid: gettid(),
            last_drain_ns: AtomicU64::new(monotonic_now_ns()),
            idle: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut yielding = Yielding {
            shared: shared.clone(),
            ring_size,
            window_bytes: 0,
            window_since_ns: monotonic_now_ns(),
            may_yield: false,
            watchdog: None,
        };
        if !can_stop_yielding() {
            return Ok(yielding);
        }
        let watched = shared;
        let watchdog = thread::Builder::new().name("tcptrace-watch".into()).spawn(move || {
            let starved_ns = STARVED_AFTER.as_nanos() as u64;
            while !watched.stop.load(Ordering::Relaxed) {
                // Asleep until the last drain is STARVED_AFTER old, not woken every
                // WATCH_EVERY: a third of the wake-ups in the bench's churn (310 against
                // 905 in 5 s), each a context switch on a core the traced programs need.
                let since = monotonic_now_ns()
                    .saturating_sub(watched.last_drain_ns.load(Ordering::Relaxed));
                if since <= starved_ns {
                    thread::park_timeout(Duration::from_nanos(starved_ns - since + 1));
                    continue;
                }
                if watched.idle.load(Ordering::Relaxed) {
                    watched.set_yielding(false);
                    crate::debug(format_args!(
                        "stopped yielding: the ring went {} ms undrained",
                        since / 1_000_000
                    ));
                }
                thread::park_timeout(WATCH_EVERY);
            }
        })?;
        yielding.watchdog = Some(watchdog);
        Ok(yielding)
    }

    /// The ring was just drained of `bytes`, at `now_ns`: yield while that is little and
    /// the rate allows, stop while the tracer is behind.
    pub fn drained(&mut self, bytes: u64, now_ns: u64) {
        if self.watchdog.is_none() {
            return;
        }
        self.shared.last_drain_ns.store(now_ns, Ordering::Relaxed);
        self.window_bytes += bytes;
        let window_ns = now_ns.saturating_sub(self.window_since_ns);
        if window_ns >= RATE_WINDOW.as_nanos() as u64 {
            let bytes_per_s = u128::from(self.window_bytes) * 1_000_000_000 / u128::from(window_ns);
            self.may_yield = may_yield(self.ring_size, bytes_per_s.try_into().unwrap_or(u64::MAX));
            (self.window_bytes, self.window_since_ns) = (0, now_ns);
        }
        if !self.may_yield || bytes >= self.ring_size / 2 {
            self.shared.set_yielding(false);
        } else if bytes < self.ring_size / 4 {
            self.shared.set_yielding(true);
        }
    }
}

impl Drop for Yielding {
    /// The end of the trace (the last drain, the summary, the exports) comes at once.
    fn drop(&mut self) {
        self.shared.set_yielding(false);
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.thread().unpark();
            let _ = watchdog.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_only_while_a_quarter_of_the_ring_takes_what_comes_before_the_watchdog_acts() {
        const MIB: u64 = 1 << 20;
        // The bench's churn, about 31 MB/s of events, in the default 4 MiB ring: 30 ms of it
        // is 0.9 MiB, under a quarter.
        assert!(may_yield(4 * MIB, 31_000_000));
        assert!(!may_yield(4 * MIB, 40 * MIB));
        // A 64 KiB ring takes 16 KiB in a quarter: 30 ms of 500 kB/s at most.
        assert!(may_yield(64 << 10, 500_000));
        assert!(!may_yield(64 << 10, 1_000_000));
        assert!(may_yield(4 * MIB, 0));
    }
}
