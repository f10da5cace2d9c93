//! The live tracer's place in the scheduler. On a busy host every bit of CPU the tracer
//! takes is taken from the programs it traces, so the thread that drains the rings runs in
//! the time they leave idle (`SCHED_IDLE`) for as long as that is safe. It becomes a batch
//! task again (`SCHED_BATCH`: its fair share, but its wake-ups still don't preempt) the moment
//! it falls behind: when a drain finds a ring half full (the kernel wakes it at an eighth),
//! or when a watchdog thread sees that it has not drained for a while ([`starved_after`]),
//! as on a host with no idle time, where an idle task hardly runs at all. That while is
//! shorter the faster events come (into the fullest ring, at the rate of the last
//! [`RATE_WINDOW`]), and it yields only while the ring can take what arrives until it
//! drains again with half of it to spare, a drain finds every ring less than a quarter
//! full, and it did not fall behind just before ([`Backoff`]). A small ring at a high rate
//! never yields, and neither does a tracer that could not stop yielding: leaving
//! `SCHED_IDLE` needs `CAP_SYS_NICE`, which a tracer given only `CAP_BPF` and `CAP_PERFMON`
//! lacks. An idle task yields at once only within its scheduling group; where the host
//! allows, the draining thread's cgroup yields to every other ([`idle_cgroup`]).

pub mod idle_cgroup;

use std::{
    io,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::clock::monotonic_now_ns;
use idle_cgroup::IdleCgroup;

/// The longest the ring may go undrained before the watchdog stops the tracer yielding:
/// it drains at least every 10 ms while it gets to run.
pub const LONGEST_STARVED: Duration = Duration::from_millis(20);
/// How long the watchdog, and then the draining thread, may wait for a CPU once starved:
/// neither preempts when it wakes (both are batch tasks then), so each waits for the
/// running task's turn to end, at the next timer tick (4 ms at this kernel's 250 Hz).
pub const SCHEDULING_LATENCY: Duration = Duration::from_millis(8);
/// How long the event rate is measured over, for [`starved_after`].
pub const RATE_WINDOW: Duration = Duration::from_millis(100);
/// How long the tracer waits, after it fell behind, before it yields again ([`Backoff`])…
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// … twice as long each time it falls behind again this soon after it yielded again …
const SOON_BEHIND: Duration = Duration::from_millis(100);
/// … up to this.
const LONGEST_BACKOFF: Duration = Duration::from_secs(1);

/// How long a ring of `ring_size` bytes filling at `bytes_per_s` may go undrained before
/// the watchdog stops the tracer yielding, or `None` if it should not yield at all.
///
/// A sixth of the time the ring takes to fill: the kernel wakes the tracer at an eighth,
/// so a tracer woken that drains soon after is not taken as starved. The watchdog then
/// looks again every quarter of that ([`watch_every`]), and after it acts the draining
/// thread may wait [`SCHEDULING_LATENCY`] more: the ring must not be more than half full
/// by then, the other half left for a rate that rises. With the default 4 MiB ring that is
/// up to about 150 MB/s of events.
pub fn starved_after(ring_size: u64, bytes_per_s: u64) -> Option<Duration> {
    let fill_ns = u128::from(ring_size) * 1_000_000_000 / u128::from(bytes_per_s.max(1));
    let starved_ns = (fill_ns / 6).min(LONGEST_STARVED.as_nanos());
    let starved = Duration::from_nanos(starved_ns as u64);
    let drained_by = starved + watch_every(starved) + SCHEDULING_LATENCY;
    (drained_by.as_nanos() <= fill_ns / 2).then_some(starved)
}

/// When the tracer may yield again after it fell behind. On a host with idle time it falls
/// behind now and then (a drain came late, or a burst filled the ring), and yields again
/// after [`FIRST_BACKOFF`]; on a host with none it falls behind soon after each time it
/// yields, and each time it then waits twice as long, up to [`LONGEST_BACKOFF`]: it stays a
/// batch task nearly all the time, and every time it tries to yield risks the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Backoff {
    wait: Duration,
    /// When it last fell behind, and last yielded again (ns).
    behind_ns: u64,
    resumed_ns: u64,
}

impl Backoff {
    fn fell_behind(&mut self, now_ns: u64) {
        let soon = now_ns.saturating_sub(self.resumed_ns) < SOON_BEHIND.as_nanos() as u64;
        self.wait = if soon {
            (self.wait * 2).clamp(FIRST_BACKOFF, LONGEST_BACKOFF)
        } else {
            FIRST_BACKOFF
        };
        self.behind_ns = now_ns;
    }

    fn may_yield(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.behind_ns) >= self.wait.as_nanos() as u64
    }
}

/// How often the watchdog looks again once the ring went `starved` undrained.
fn watch_every(starved: Duration) -> Duration {
    starved / 4
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
    /// [`starved_after`] at the rate of the last whole window (`None`, not yielding, before
    /// one was measured).
    starved_after: Option<Duration>,
    backoff: Backoff,
    /// The watchdog; none where the thread could not stop yielding again.
    watchdog: Option<JoinHandle<()>>,
}

struct Shared {
    /// The draining thread.
    tid: libc::pid_t,
    last_drain_ns: AtomicU64,
    /// [`starved_after`] now, in ns, for the watchdog.
    starved_after_ns: AtomicU64,
    /// When the watchdog last stopped the tracer yielding (ns; 0 for never).
    starved_ns: AtomicU64,
    /// Whether it is `SCHED_IDLE` now (and its cgroup idle); held while it moves in or out,
    /// by the draining thread or the watchdog.
    idle: Mutex<bool>,
    /// Its cgroup, idle while it is; unset where the host has none to give.
    group: OnceLock<IdleCgroup>,
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
    /// Moves the draining thread to `SCHED_IDLE` and its cgroup to idle (or both back), if
    /// it is not there already; whether it moved.
    fn set_yielding(&self, idle: bool) -> bool {
        let mut now_idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if *now_idle == idle {
            return false;
        }
        *now_idle = idle;
        let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_BATCH };
        if let Err(error) = set_policy(self.tid, policy) {
            crate::debug(format_args!("scheduling policy {policy} refused: {error}"));
        }
        if let Some(Err(error)) = self.group.get().map(|group| group.set_idle(idle)) {
            crate::debug(format_args!("{error:#}"));
        }
        true
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
    /// Lets the calling thread, the one that drains rings of `ring_size` bytes each, yield
    /// from the first [`RATE_WINDOW`] on, as the rate allows ([`starved_after`]), and starts
    /// its watchdog (which keeps the calling thread's policy, and never yields itself); where
    /// the thread could not stop yielding again, it never yields.
    pub fn start(ring_size: u64) -> io::Result<Yielding> {
        let tid = gettid();
        let shared = Arc::new(Shared {
            tid,
            last_drain_ns: AtomicU64::new(monotonic_now_ns()),
            starved_after_ns: AtomicU64::new(LONGEST_STARVED.as_nanos() as u64),
            starved_ns: AtomicU64::new(0),
            idle: Mutex::new(false),
            group: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let mut yielding = Yielding {
            shared: shared.clone(),
            ring_size,
            window_bytes: 0,
            window_since_ns: monotonic_now_ns(),
            starved_after: None,
            backoff: Backoff::default(),
            watchdog: None,
        };
        if !can_stop_yielding() {
            return Ok(yielding);
        }
        let watched = shared;
        let watchdog = thread::Builder::new().name("tcptrace-watch".into()).spawn(move || {
            while !watched.stop.load(Ordering::Relaxed) {
                // Asleep until the last drain is that old, not woken every `watch_every`:
                // a third of the wake-ups in the bench's churn (310 against 905 in 5 s, on
                // an earlier host), each a context switch on a core the traced programs need.
                let starved_ns = watched.starved_after_ns.load(Ordering::Relaxed);
                let since = monotonic_now_ns()
                    .saturating_sub(watched.last_drain_ns.load(Ordering::Relaxed));
                if since <= starved_ns {
                    thread::park_timeout(Duration::from_nanos(starved_ns - since + 1));
                    continue;
                }
                if watched.set_yielding(false) {
                    watched.starved_ns.store(monotonic_now_ns(), Ordering::Relaxed);
                    crate::debug(format_args!(
                        "stopped yielding: the ring went {} ms undrained",
                        since / 1_000_000
                    ));
                }
                thread::park_timeout(watch_every(Duration::from_nanos(starved_ns)));
            }
        })?;
        yielding.watchdog = Some(watchdog);
        // After the watchdog is started: it must not be born in the idle cgroup.
        match IdleCgroup::enter(tid) {
            Ok(group) => _ = yielding.shared.group.set(group),
            Err(error) => {
                crate::debug(format_args!("yielding within its scheduling group: {error:#}"))
            }
        }
        Ok(yielding)
    }

    /// The rings were just drained, the fullest of `bytes`, at `now_ns`: yield while that
    /// is little and the rate allows, stop while the tracer is behind.
    pub fn drained(&mut self, bytes: u64, now_ns: u64) {
        if self.watchdog.is_none() {
            return;
        }
        self.shared.last_drain_ns.store(now_ns, Ordering::Relaxed);
        self.window_bytes += bytes;
        let window_ns = now_ns.saturating_sub(self.window_since_ns);
        if window_ns >= RATE_WINDOW.as_nanos() as u64 {
            let bytes_per_s = u128::from(self.window_bytes) * 1_000_000_000 / u128::from(window_ns);
            self.starved_after =
                starved_after(self.ring_size, bytes_per_s.try_into().unwrap_or(u64::MAX));
            if let Some(starved) = self.starved_after {
                self.shared.starved_after_ns.store(starved.as_nanos() as u64, Ordering::Relaxed);
            }
            (self.window_bytes, self.window_since_ns) = (0, now_ns);
        }
        let starved_ns = self.shared.starved_ns.load(Ordering::Relaxed);
        if starved_ns > self.backoff.behind_ns {
            self.backoff.fell_behind(starved_ns);
        }
        if self.starved_after.is_none() {
            self.shared.set_yielding(false);
        } else if bytes >= self.ring_size / 2 {
            if self.shared.set_yielding(false) {
                self.backoff.fell_behind(now_ns);
            }
        } else if bytes < self.ring_size / 4
            && self.backoff.may_yield(now_ns)
            && self.shared.set_yielding(true)
        {
            self.backoff.resumed_ns = now_ns;
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
    fn the_tracer_is_draining_again_before_half_the_ring_fills() {
        const MIB: u64 = 1 << 20;
        let ms = Duration::from_millis;
        // Slow events: the longest wait, 20 ms (and 5 more for the watchdog to look).
        assert_eq!(starved_after(4 * MIB, 31_000_000), Some(LONGEST_STARVED));
        assert_eq!(starved_after(4 * MIB, 0), Some(LONGEST_STARVED));
        // The bench's churn on a fast host, 141 MB/s in the default 4 MiB ring, fills it in
        // 30 ms: starved after 5, the eighth where the kernel wakes the tracer in 3.7.
        let starved = starved_after(4 * MIB, 141_000_000).unwrap();
        assert!(ms(4) < starved && starved < ms(5), "{starved:?}");
        assert!(Duration::from_secs_f64(0.5 * MIB as f64 / 141e6) < starved);
        for (ring, rate) in [(4 * MIB, 31_000_000), (4 * MIB, 141_000_000), (64 << 10, 2_000_000)] {
            let starved = starved_after(ring, rate).unwrap();
            let drained_by = starved + watch_every(starved) + SCHEDULING_LATENCY;
            assert!(drained_by.as_secs_f64() * rate as f64 <= (ring / 2) as f64, "{ring} {rate}");
        }
        // Too fast for the ring: it does not yield.
        assert_eq!(starved_after(4 * MIB, 160_000_000), None);
        assert_eq!(starved_after(MIB, 80_000_000), None);
        assert_eq!(starved_after(64 << 10, 3_000_000), None);
    }

    #[test]
    fn falling_behind_soon_after_each_yield_makes_the_tracer_wait_longer_each_time() {
        let ms = |ms: u64| ms * 1_000_000;
        let mut backoff = Backoff::default();
        assert!(backoff.may_yield(ms(5)), "it yields from the start");
        // Behind now and then: it yields again 10 ms later, every time.
        for at in [1_000, 1_500, 2_000] {
            backoff.resumed_ns = ms(at - 300);
            backoff.fell_behind(ms(at));
            assert_eq!(backoff.wait, FIRST_BACKOFF);
            assert!(!backoff.may_yield(ms(at + 9)) && backoff.may_yield(ms(at + 10)));
        }
        // Behind each time within 100 ms of yielding again: 20, 40, … up to a second.
        let mut waits = Vec::new();
        let mut now = ms(3_000);
        for _ in 0..9 {
            backoff.resumed_ns = now;
            now += ms(30);
            backoff.fell_behind(now);
            waits.push(backoff.wait.as_millis());
            now += backoff.wait.as_nanos() as u64;
            assert!(backoff.may_yield(now));
        }
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // Keeping up for a while: back to 10 ms.
        backoff.resumed_ns = now;
        backoff.fell_behind(now + ms(500));
        assert_eq!(backoff.wait, FIRST_BACKOFF);
    }
}
