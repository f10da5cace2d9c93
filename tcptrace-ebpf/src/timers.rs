//! Time-wait sockets never pass `inet_sock_set_state`: their life is their timer
//! (`tw_timer_handler`). `timer_start` names a new one for the CLOSE event that follows it
//! on the same CPU, `timer_cancel` sees it leave the wheel, and `timer_expire_entry` sees
//! it run out; a cancel followed at once by a start is a re-arm. These run for every timer
//! on the machine, under the timer base's lock with interrupts off, so they give up on
//! anything that is not a time-wait timer as early as they can.
//!
//! They are BTF tracepoints (raw tracepoints typed by the kernel's BTF): the kernel builds
//! no perf record for them, and they read the timer through its own pointer with plain
//! loads the verifier checks against BTF, where a perf tracepoint's program needs a helper
//! call (the timer programs run about 18 times a connection; most of their cost was that).
//! Their events carry no task: the kernel does not say, here, whether it runs in process
//! context, and a time-wait socket's owner is its connection's anyway.
//!
//! A time-wait socket from before tcptrace started was never seen starting: for about a
//! minute after start, a cancelled timer the table does not know is checked for being a
//! time-wait timer, and if it is, its socket is read next to it and followed from there.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, Config, EXPIRE_AFTER_CANCEL_TTL_NS, REARM_AFTER_CANCEL_TTL_NS, TimerSlot, counter,
    kind,
};

use crate::{
    CANCELLED_TIMER, MEET_TIME_WAITS_UNTIL, STARTED_TIMER, TIME_WAIT_TIMERS,
    emit::{count, emit},
    filter::{family_kept, ports_match},
    home::{netns, netns_kept, read},
};

/// The `struct timer_list *` every timer tracepoint gets first.
#[inline(always)]
fn timer_of(ctx: &BtfTracePointContext) -> *const u8 {
    // Argument 0 of timer_start, timer_cancel and timer_expire_entry (their prototypes in
    // include/trace/events/timer.h); the verifier types it from BTF.
    ctx.arg(0)
}

/// The timer's `u64` member at `offset`: one load, which the verifier checks against the
/// timer's BTF type (the offset comes from read-only config, so it is known at load time).
#[inline(always)]
fn timer_member(timer: *const u8, offset: u16) -> u64 {
    // SAFETY: `offset` is that of an 8-byte member of `struct timer_list` (the loader took
    // it from BTF); loads through a BTF pointer can't fault (the kernel handles them).
    unsafe { timer.add(usize::from(offset)).cast::<u64>().read() }
}

/// Whether `timer` runs `tw_timer_handler`: set once, when its time-wait socket is made.
#[inline(always)]
fn is_time_wait_timer(config: &Config, timer: *const u8) -> bool {
    config.tw_timer_handler != 0
        && timer_member(timer, config.timer.function) == config.tw_timer_handler
}

/// Takes this CPU's noted timer if it is younger than `ttl_ns` (and is `timer`, if given).
#[inline(always)]
pub fn take_slot(
    slot_map: &PerCpuArray<TimerSlot>,
    now: u64,
    ttl_ns: u64,
    timer: Option<u64>,
) -> Option<TimerSlot> {
    // SAFETY: this CPU's slot, valid while the program is loaded; the programs that use it
    // run one at a time on a CPU (with interrupts off, or in the tracepoint they follow).
    let slot = unsafe { &mut *slot_map.get_ptr_mut(0)? };
    let fresh = slot.timer != 0
        && now.wrapping_sub(slot.ts_ns) < ttl_ns
        && timer.is_none_or(|t| t == slot.timer);
    if !fresh {
        return None;
    }
    let taken = *slot;
    slot.timer = 0;
    Some(taken)
}

/// A time-wait timer that can't be tracked (the table is full): counted, and said under
/// `--verbose`.
#[inline(always)]
pub fn table_full<C: EbpfContext>(ctx: &C) {
    count(counter::TW_TABLE_FULL);
    // Not the timer's address: in a BTF tracepoint it is a typed pointer, which can't be
    // formatted (the verifier allows no shifts on pointers).
    warn!(ctx, "the time-wait timer table is full: a time-wait socket is not followed");
}

#[inline(always)]
fn put_slot(slot_map: &PerCpuArray<TimerSlot>, slot: TimerSlot) {
    if let Some(ptr) = slot_map.get_ptr_mut(0) {
        // SAFETY: as in `take_slot`.
        unsafe { *ptr = slot };
    }
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    let config = crate::config();
    let timer = timer_of(&ctx);
    if !is_time_wait_timer(config, timer) {
        return 0;
    }
    let address = timer as u64;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // mod_timer() on a pending timer shows as cancel + start: a re-arm of a live time-wait.
    let Some(cancelled) =
        take_slot(&CANCELLED_TIMER, now, REARM_AFTER_CANCEL_TTL_NS, Some(address))
    else {
        put_slot(&STARTED_TIMER, TimerSlot { timer: address, sk: 0, ts_ns: now });
        return 0;
    };
    if TIME_WAIT_TIMERS.insert(&address, &cancelled.sk, 0).is_err() {
        table_full(&ctx);
    }
    let expires = timer_member(timer, config.timer.expires);
    // SAFETY: the helper has no preconditions.
    let jiffies_now = unsafe { bpf_jiffies64() };
    emit(config, now, kind::TW_REARM, cancelled.sk, false, true, |event| {
        event.timer = address;
        event.timeout_jiffies = expires.wrapping_sub(jiffies_now) as u32;
    });
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    let config = crate::config();
    let timer = timer_of(&ctx);
    // Eight cancelled timers in nine are not time-wait timers (retransmit, delayed ACK,
    // keepalive…): one load of the timer's own `function` tells, before any map lookup.
    if !is_time_wait_timer(config, timer) {
        return 0;
    }
    let address = timer as u64;
    // SAFETY: the value is copied out at once; an entry is only ever replaced whole.
    let Some(&sk) = (unsafe { TIME_WAIT_TIMERS.get(&address) }) else {
        meet_time_wait(config, address);
        return 0;
    };
    let _ = TIME_WAIT_TIMERS.remove(&address);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    put_slot(&CANCELLED_TIMER, TimerSlot { timer: address, sk, ts_ns: now });
    emit(config, now, kind::TW_CANCEL, sk, false, true, |event| event.timer = address);
    0
}

/// A cancelled time-wait timer the table does not know: while [`MEET_TIME_WAITS_UNTIL`]
/// says so, one of a time-wait socket from before tcptrace started is reported with the
/// socket's addresses (read from beside its timer), and noted for the expiry or re-arm
/// that follows.
#[inline(always)]
fn meet_time_wait(config: &Config, timer: u64) {
    let offsets = &config.time_wait_sock;
    let until = MEET_TIME_WAITS_UNTIL.get(0).copied().unwrap_or(0);
    // A time-wait socket has no process and no cgroup: `--pid` and `--cgroup` keep none.
    if until == 0 || offsets.valid == 0 || config.pid != 0 || config.cgroup != 0 {
        return;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= until {
        return;
    }
    let tw = timer - u64::from(offsets.tw_timer);
    let family: u16 = read(tw + u64::from(offsets.family));
    if !family_kept(config, family) {
        return;
    }
    let netns = netns(tw, &config.socket_home);
    let sport: u16 = read(tw + u64::from(offsets.num));
    let dport = u16::from_be(read(tw + u64::from(offsets.dport)));
    if !netns_kept(config, netns) || !ports_match(config, sport, dport) {
        return;
    }
    put_slot(&CANCELLED_TIMER, TimerSlot { timer, sk: tw, ts_ns: now });
    emit(config, now, kind::TW_CANCEL, tw, false, true, |event| {
        event.timer = timer;
        event.family = family as u8;
        event.sport = sport;
        event.dport = dport;
        event.netns = netns;
        if family == AF_INET {
            let local: [u8; 4] = read(tw + u64::from(offsets.rcv_saddr));
            let remote: [u8; 4] = read(tw + u64::from(offsets.daddr));
            event.saddr[..4].copy_from_slice(&local);
            event.daddr[..4].copy_from_slice(&remote);
        } else {
            event.saddr = read(tw + u64::from(offsets.v6_rcv_saddr));
            event.daddr = read(tw + u64::from(offsets.v6_daddr));
        }
    });
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    let config = crate::config();
    let timer = timer_of(&ctx);
    if !is_time_wait_timer(config, timer) {
        return 0;
    }
    let address = timer as u64;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(cancelled) =
        take_slot(&CANCELLED_TIMER, now, EXPIRE_AFTER_CANCEL_TTL_NS, Some(address))
    else {
        return 0;
    };
    emit(config, now, kind::TW_EXPIRE, cancelled.sk, false, true, |event| event.timer = address);
    0
}
