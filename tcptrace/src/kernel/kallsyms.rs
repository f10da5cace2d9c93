//! The kernel's symbols (`/proc/kallsyms`): where `tw_timer_handler` is, and the code of the
//! timer functions whose return addresses tell a time-wait timer's re-arm from its end; and
//! the kernel's tick rate (HZ), which a re-arm's length is counted in.

use anyhow::{Context, Result, bail, ensure};
use tcptrace_common::{MAX_TIMER_CALLERS, TextRange};

/// Functions that cancel a pending timer to file it again (`mod_timer()` on a pending
/// timer; TIME-WAIT's re-arm is `mod_timer_pending`). Whichever of them the kernel's build
/// did not inline is on the stack above the cancel.
const REARM_CALLERS: [&str; 4] = ["__mod_timer", "mod_timer_pending", "mod_timer", "timer_reduce"];
/// Functions that cancel a timer for good (a kill: `timer_shutdown_sync` in
/// `inet_twsk_deschedule_put`) or take it off the wheel to run it (the natural end).
const END_CALLERS: [&str; 8] = [
    "__try_to_del_timer_sync",
    "__timer_delete_sync",
    "timer_shutdown_sync",
    "timer_delete_sync",
    "__timer_delete",
    "timer_delete",
    "timer_shutdown",
    "__run_timers",
];

const _: () = assert!(REARM_CALLERS.len() + END_CALLERS.len() <= MAX_TIMER_CALLERS);

/// What the kernel program needs to tell a re-arm from an end: [`REARM_CALLERS`] first,
/// then [`END_CALLERS`] (those this kernel has), and the span of text they all lie in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TimerCallers {
    pub ranges: [TextRange; MAX_TIMER_CALLERS],
    pub count: u32,
    pub rearm: u32,
    pub span: TextRange,
}

/// The kernel's text symbols, sorted by address.
pub struct Kallsyms {
    symbols: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn read() -> Result<Kallsyms> {
        let text =
            std::fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
        Ok(Kallsyms::parse(&text))
    }

    /// Code symbols (`t`/`T`) with their addresses; hidden ones (shown as 0 to readers
    /// without the right to see kernel addresses) are left out.
    pub fn parse(text: &str) -> Kallsyms {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let address = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_owned()))
            })
            .collect();
        symbols.sort_unstable();
        Kallsyms { symbols }
    }

    /// The address of function `name`.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|(_, own)| own == name).map(|&(address, _)| address)
    }

    /// Function `name`'s code: from its address to the next symbol's.
    pub fn range(&self, name: &str) -> Option<TextRange> {
        let at = self.symbols.iter().position(|(_, own)| own == name)?;
        let start = self.symbols[at].0;
        let end =
            self.symbols[at + 1..].iter().map(|&(address, _)| address).find(|&a| a > start)?;
        Some(TextRange { start, end })
    }

    /// The timer functions this kernel has, re-arming ones first.
    pub fn timer_callers(&self) -> Result<TimerCallers> {
        let mut callers = TimerCallers::default();
        for (index, name) in REARM_CALLERS.iter().chain(&END_CALLERS).enumerate() {
            if index == REARM_CALLERS.len() {
                callers.rearm = callers.count;
            }
            if let Some(range) = self.range(name) {
                callers.ranges[callers.count as usize] = range;
                callers.count += 1;
            }
        }
        ensure!(
            callers.rearm > 0,
            "none of {} is in /proc/kallsyms (or addresses are hidden)",
            REARM_CALLERS.join(", ")
        );
        let found = &callers.ranges[..callers.count as usize];
        callers.span = TextRange {
            start: found.iter().map(|r| r.start).min().unwrap_or(0),
            end: found.iter().map(|r| r.end).max().unwrap_or(0),
        };
        Ok(callers)
    }
}

/// The kernel's tick rate, from `/proc/timer_list` (root only): `jiffies` there began at
/// `2^32 - 300 × HZ` at boot (`INITIAL_JIFFIES`, which makes the counter wrap five minutes
/// in), and the file says how long ago that was ("now at … nsecs"). Within seconds of the
/// wrap that quotient says nothing, and the rate is counted over 0.5 s instead.
pub fn kernel_hz() -> Result<u32> {
    let read = || -> Result<(f64, f64)> {
        let text =
            std::fs::read_to_string("/proc/timer_list").context("cannot read /proc/timer_list")?;
        jiffies_and_uptime(&text)
    };
    let (jiffies, uptime_s) = read()?;
    if (uptime_s - 300.0).abs() > 5.0 {
        return nearest_hz((jiffies - 4_294_967_296.0) / (uptime_s - 300.0));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (later, later_s) = read()?;
    nearest_hz((later - jiffies) / (later_s - uptime_s))
}

/// `jiffies` and the uptime in seconds, from a `/proc/timer_list`.
fn jiffies_and_uptime(text: &str) -> Result<(f64, f64)> {
    let number = |prefix: &str, suffix: &str| -> Result<f64> {
        let line = text
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .with_context(|| format!("/proc/timer_list has no `{prefix}` line"))?;
        let value = line.trim().trim_end_matches(suffix).trim();
        value.parse().with_context(|| format!("/proc/timer_list: `{prefix}{line}`"))
    };
    Ok((number("jiffies:", "")?, number("now at ", "nsecs")? / 1e9))
}

/// The rate Linux is built with that `estimate` is (a clock read a moment apart from the
/// counter is well within the gaps between them).
fn nearest_hz(estimate: f64) -> Result<u32> {
    match [100, 250, 300, 1000]
        .into_iter()
        .find(|&hz| (estimate / f64::from(hz) - 1.0).abs() < 0.05)
    {
        Some(hz) => Ok(hz),
        None => {
            bail!("the kernel's tick rate looks like {estimate:.0} Hz, which Linux has none of")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernel_symbols_and_ignores_hidden_ones() {
        let kallsyms = Kallsyms::parse(
            "ffffffff820660f0 t tw_timer_handler\nffffffff81000000 T _stext\n\
             ffffffff820661a0 d some_data\n",
        );
        assert_eq!(kallsyms.address("tw_timer_handler"), Some(0xffffffff820660f0));
        assert_eq!(kallsyms.address("tw_timer"), None);
        assert_eq!(kallsyms.address("some_data"), None);
        let hidden = Kallsyms::parse("0000000000000000 t tw_timer_handler\n");
        assert_eq!(hidden.address("tw_timer_handler"), None);
    }

    #[test]
    fn a_function_ends_where_the_next_begins_and_rearming_ones_come_first() {
        let kallsyms = Kallsyms::parse(
            "ffffffff81200300 T timer_shutdown_sync\nffffffff81200000 t __mod_timer\n\
             ffffffff81200200 T mod_timer\nffffffff81200400 T msleep\n",
        );
        let range = kallsyms.range("__mod_timer").unwrap();
        assert_eq!((range.start, range.end), (0xffffffff81200000, 0xffffffff81200200));
        assert_eq!(kallsyms.range("msleep"), None, "the last symbol has no end");
        let callers = kallsyms.timer_callers().unwrap();
        assert_eq!((callers.count, callers.rearm), (3, 2));
        assert_eq!(callers.ranges[2].start, 0xffffffff81200300);
        assert_eq!(
            (callers.span.start, callers.span.end),
            (0xffffffff81200000, 0xffffffff81200400)
        );
        let none =
            Kallsyms::parse("ffffffff81200300 T timer_shutdown_sync\nffffffff81200400 T x\n");
        assert!(none.timer_callers().unwrap_err().to_string().contains("__mod_timer"));
    }

    #[test]
    fn the_tick_rate_comes_from_jiffies_and_uptime() {
        // Read on a machine with HZ=250, 22 minutes after boot.
        let list = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
                    now at 1312555748094 nsecs\n\ncpu: 0\njiffies: 4295220371\n";
        let (jiffies, uptime_s) = jiffies_and_uptime(list).unwrap();
        assert_eq!(nearest_hz((jiffies - 4_294_967_296.0) / (uptime_s - 300.0)).unwrap(), 250);
        assert_eq!(nearest_hz(96.0).unwrap(), 100);
        assert_eq!(nearest_hz(1010.0).unwrap(), 1000);
        assert!(nearest_hz(275.0).is_err());
        assert!(jiffies_and_uptime("jiffies: 5\n").is_err());
    }
}
