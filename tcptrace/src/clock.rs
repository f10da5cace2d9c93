//! Clocks: the kernel stamps events with CLOCK_MONOTONIC (`bpf_ktime_get_ns()`); people
//! read time of day.

use std::io::{self, Write};

/// Converts kernel CLOCK_MONOTONIC stamps to wall-clock time of day.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

/// A clock's current time in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

impl WallClock {
    /// A clock from a recording's `realtime_offset_ns`.
    pub fn from_offset(realtime_offset_ns: i64) -> WallClock {
        WallClock { realtime_minus_monotonic_ns: i128::from(realtime_offset_ns) }
    }

    /// In an `i64`, as recordings keep it: enough for 292 years of uptime.
    pub fn realtime_offset_ns(&self) -> i64 {
        self.realtime_minus_monotonic_ns.clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }

    pub fn now() -> WallClock {
        WallClock {
            realtime_minus_monotonic_ns: clock_ns(libc::CLOCK_REALTIME)
                - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// Writes `HH:MM:SS.micros` in local time.
    pub fn write_time_of_day(&self, out: &mut impl Write, monotonic_ns: u64) -> io::Result<()> {
        let realtime_ns = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        let seconds = (realtime_ns / 1_000_000_000) as libc::time_t;
        let micros = (realtime_ns % 1_000_000_000) / 1000;
        // SAFETY: localtime_r fills the struct we own.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&seconds, &mut tm) };
        write!(out, "{:02}:{:02}:{:02}.{micros:06}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}
