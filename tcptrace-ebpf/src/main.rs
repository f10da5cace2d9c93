//! Kernel side of tcptrace.
//!
//! Tracepoint programs only (no kprobes, no fentry): BTF tracepoints for the state changes
//! and the timers, perf tracepoints for the (rare) resets. They read the fields they need at
//! offsets the loader took from BTF and tracefs, drop what the filters exclude as early as
//! possible, and push fixed-size [`Event`](tcptrace_common::Event)s into one ring buffer.
//! Everything else happens in userspace.
//!
//! - [`record`]: a reset tracepoint's record, copied once, and its fields.
//! - [`filter`]: `-4`/`-6`, `--netns`; `--port`, `--pid`, `--cgroup` sticky per socket.
//! - [`home`]: a socket's network namespace and cgroup.
//! - [`emit`]: writing an event into the ring buffer; [`counters`]: a closing socket's.
//! - one module per job: [`set_state`], [`timers`] (time-wait sockets), [`resets`].
#![no_std]
#![no_main]

mod counters;
mod emit;
mod filter;
mod home;
mod record;
mod resets;
mod set_state;
mod timers;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tcptrace_common::{
    Config, MAX_RINGS, MeetWindow, RECORD_BYTES, STACK_SCAN_WORDS, TimerSlot, counter,
};

/// Set by the loader before load (field offsets, filters, `tw_timer_handler` and the
/// timer functions).
#[unsafe(no_mangle)]
// SAFETY: `Config` is plain data for which all-zero bytes are a valid value.
static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Every event for userspace, in a ring buffer per CPU (up to [`MAX_RINGS`]; CPU `n`
/// writes to ring `n % ring_count`): a ring shared by all CPUs cost 40–120 ns more an
/// event, its lock and positions moving between them. The loader gives the ones in use
/// `--ring-size` each, and the others a page.
macro_rules! rings {
    ($($name:ident),*) => {
        $(
            #[map]
            static $name: RingBuf = RingBuf::with_byte_size(4 << 20, 0);
        )*
    };
}
rings!(EVENTS0, EVENTS1, EVENTS2, EVENTS3, EVENTS4, EVENTS5, EVENTS6, EVENTS7);
const _: () = assert!(MAX_RINGS == 8, "one EVENTS map for each ring");

/// The ring buffer of the CPU `cpu`.
#[inline(always)]
fn ring_of(cpu: u32, config: &Config) -> &'static RingBuf {
    match cpu % config.ring_count.max(1) {
        0 => &EVENTS0,
        1 => &EVENTS1,
        2 => &EVENTS2,
        3 => &EVENTS3,
        4 => &EVENTS4,
        5 => &EVENTS5,
        6 => &EVENTS6,
        _ => &EVENTS7,
    }
}

/// Per-CPU counters (see `tcptrace_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Sockets that passed `--port`/`--pid` once: all their later events pass too, even those
/// that no longer carry the port (or fire in softirq, where the pid is someone else's).
#[map]
static KEPT_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Live time-wait timers of kept sockets, when a filter keeps some out: timer address →
/// socket address. The loader sizes it to `net.ipv4.tcp_max_tw_buckets`, the most time-wait
/// sockets the kernel keeps.
#[map]
static TIME_WAIT_TIMERS: HashMap<u64, u64> = HashMap::with_max_entries(65536, 0);

/// While a cancelled time-wait timer not known to be of a traced hand-over is looked at for
/// a time-wait socket from before tcptrace started. The loader sets it at start (such a
/// socket lives at most about 62 s on) and shortens it once the start-up snapshot said how
/// long the ones there have left, then ends it (`until_ns` 0).
#[map]
static MEET_TIME_WAITS: Array<MeetWindow> = Array::with_max_entries(1, 0);

/// The live time-wait timer just cancelled on this CPU, for the expiry that may follow.
#[map]
static CANCELLED_TIMER: PerCpuArray<TimerSlot> = PerCpuArray::with_max_entries(1, 0);

/// A copy of the kernel stack above a time-wait timer's cancel, to find out who cancels it
/// (`timer_cancel` does not nest on a CPU: the kernel runs one program once at a time there).
#[map]
static STACK_WORDS: PerCpuArray<[u64; STACK_SCAN_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// What the programs keep per CPU.
#[repr(C)]
struct CpuState {
    /// A copy of the current reset tracepoint's record: one helper call instead of one per
    /// field. The loader checks that every field read from it is inside it and aligned.
    record: [u8; RECORD_BYTES],
    /// Transitions this CPU sends before it looks at the ring's fill level again.
    until_fill_check: u32,
    /// Whether this CPU sent a transition yet (said once, under `--verbose`).
    sent_one: u32,
}

#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[inline(always)]
fn config() -> &'static Config {
    // SAFETY: `CONFIG` is a static, so the pointer is valid and aligned for the program's
    // whole run. The volatile read hides its value from the optimiser: the loader rewrites
    // it at load time, so it must not be folded to the zeroes above.
    unsafe { &*core::ptr::read_volatile(&&raw const CONFIG) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
