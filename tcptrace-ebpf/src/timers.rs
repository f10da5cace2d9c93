//! Time-wait sockets never pass `inet_sock_set_state`: their life is their timer
//! (`tw_timer_handler`). `timer_start` names a new one for the CLOSE event that follows it
//! on the same CPU, `timer_cancel` sees it leave the wheel, and `timer_expire_entry` sees
//! it run out; a cancel followed at once by a start is a re-arm. These run for every timer
//! on the machine, under the timer base's lock with interrupts off, so they give up on
//! anything that is not a time-wait timer as early as they can.
//!
//! A time-wait socket from before tcptrace started was never seen starting: for about a
//! minute after start, a cancelled timer the table does not know is checked for being a
//! time-wait timer, and if it is, its socket is read next to it and followed from there.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::tracepoint, maps::PerCpuArray, programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, BuiltInTimerLayout, Config, EXPIRE_AFTER_CANCEL_TTL_NS, REARM_AFTER_CANCEL_TTL_NS,
    TimerSlot, counter, kind,
};

use crate::{
    CANCELLED_TIMER, MEET_TIME_WAITS_UNTIL, STARTED_TIMER, TIME_WAIT_TIMERS,
    context::in_process_context,
    emit::{count, emit},
    filter::{family_kept, ports_match},
    home::{netns, netns_kept, read},
    record::{field, timer_field},
};

/// Whether the timer of this `timer_start` or `timer_expire_entry` record is a time-wait
/// timer: its `function` field (built-in offset `AT`, else `offset`) is `tw_timer_handler`.
#[inline(always)]
fn runs_time_wait_handler<const AT: u16>(
    ctx: &TracePointContext,
    config: &Config,
    offset: u16,
) -> Result<bool, i32> {
    Ok(config.tw_timer_handler != 0
        && timer_field::<AT>(ctx, config, offset)? == config.tw_timer_handler)
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
pub fn table_full(ctx: &TracePointContext, timer: u64) {
    count(counter::TW_TABLE_FULL);
    warn!(ctx, "the time-wait timer table is full: timer {:x} is not followed", timer);
}

#[inline(always)]
fn put_slot(slot_map: &PerCpuArray<TimerSlot>, slot: TimerSlot) {
    if let Some(ptr) = slot_map.get_ptr_mut(0) {
        // SAFETY: as in `take_slot`.
        unsafe { *ptr = slot };
    }
}

#[tracepoint]
pub fn timer_start(ctx: TracePointContext) -> u32 {
    let _ = try_timer_start(&ctx);
    0
}

fn try_timer_start(ctx: &TracePointContext) -> Result<(), i32> {
    let config = crate::config();
    let offsets = &config.timer;
    if !runs_time_wait_handler::<{ BuiltInTimerLayout::START_FUNCTION }>(
        ctx,
        config,
        offsets.start_function,
    )? {
        return Ok(());
    }
    let timer = timer_field::<{ BuiltInTimerLayout::TIMER }>(ctx, config, offsets.start_timer)?;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // mod_timer() on a pending timer shows as cancel + start: a re-arm of a live time-wait.
    let Some(cancelled) = take_slot(&CANCELLED_TIMER, now, REARM_AFTER_CANCEL_TTL_NS, Some(timer))
    else {
        put_slot(&STARTED_TIMER, TimerSlot { timer, sk: 0, ts_ns: now });
        return Ok(());
    };
    if TIME_WAIT_TIMERS.insert(&timer, &cancelled.sk, 0).is_err() {
        table_full(ctx, timer);
    }
    let expires: u64 = field(ctx, offsets.start_expires)?;
    let jiffies_now: u64 = field(ctx, offsets.start_now)?;
    let process_context = in_process_context(ctx);
    emit(config, now, kind::TW_REARM, cancelled.sk, process_context, true, |event| {
        event.timer = timer;
        event.timeout_jiffies = expires.wrapping_sub(jiffies_now) as u32;
    });
    Ok(())
}

#[tracepoint]
pub fn timer_cancel(ctx: TracePointContext) -> u32 {
    let _ = try_timer_cancel(&ctx);
    0
}

fn try_timer_cancel(ctx: &TracePointContext) -> Result<(), i32> {
    let config = crate::config();
    if config.tw_timer_handler == 0 {
        return Ok(());
    }
    let timer =
        timer_field::<{ BuiltInTimerLayout::TIMER }>(ctx, config, config.timer.cancel_timer)?;
    // Eight cancelled timers in nine are not time-wait timers (retransmit, delayed ACK,
    // keepalive…): one read of the timer's own `function` tells, before any map lookup.
    // Without the BTF offset, the table lookup alone tells.
    let by_function = config.time_wait_sock.valid != 0;
    if by_function && !is_time_wait_timer(config, timer) {
        return Ok(());
    }
    // SAFETY: the value is copied out at once; an entry is only ever replaced whole.
    let Some(&sk) = (unsafe { TIME_WAIT_TIMERS.get(&timer) }) else {
        if by_function {
            meet_time_wait(ctx, config, timer);
        }
        return Ok(());
    };
    let _ = TIME_WAIT_TIMERS.remove(&timer);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    put_slot(&CANCELLED_TIMER, TimerSlot { timer, sk, ts_ns: now });
    let process_context = in_process_context(ctx);
    emit(config, now, kind::TW_CANCEL, sk, process_context, true, |event| event.timer = timer);
    Ok(())
}

/// Whether the `timer_list` at `timer` runs `tw_timer_handler` (set once, when the
/// time-wait socket is made: it reads the same at every cancel).
#[inline(always)]
fn is_time_wait_timer(config: &Config, timer: u64) -> bool {
    read::<u64>(timer + u64::from(config.time_wait_sock.timer_function)) == config.tw_timer_handler
}

/// A cancelled time-wait timer the table does not know: while [`MEET_TIME_WAITS_UNTIL`]
/// says so, one of a time-wait socket from before tcptrace started is reported with the
/// socket's addresses (read from beside its timer), and noted for the expiry or re-arm
/// that follows.
#[inline(always)]
fn meet_time_wait(ctx: &TracePointContext, config: &Config, timer: u64) {
    let offsets = &config.time_wait_sock;
    let until = MEET_TIME_WAITS_UNTIL.get(0).copied().unwrap_or(0);
    // A time-wait socket has no process and no cgroup: `--pid` and `--cgroup` keep none.
    if until == 0 || config.pid != 0 || config.cgroup != 0 {
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
    let process_context = in_process_context(ctx);
    emit(config, now, kind::TW_CANCEL, tw, process_context, true, |event| {
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

#[tracepoint]
pub fn timer_expire_entry(ctx: TracePointContext) -> u32 {
    let _ = try_timer_expire_entry(&ctx);
    0
}

fn try_timer_expire_entry(ctx: &TracePointContext) -> Result<(), i32> {
    let config = crate::config();
    let offsets = &config.timer;
    if !runs_time_wait_handler::<{ BuiltInTimerLayout::EXPIRE_FUNCTION }>(
        ctx,
        config,
        offsets.expire_function,
    )? {
        return Ok(());
    }
    let timer = timer_field::<{ BuiltInTimerLayout::TIMER }>(ctx, config, offsets.expire_timer)?;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(cancelled) = take_slot(&CANCELLED_TIMER, now, EXPIRE_AFTER_CANCEL_TTL_NS, Some(timer))
    else {
        return Ok(());
    };
    emit(config, now, kind::TW_EXPIRE, cancelled.sk, false, true, |event| event.timer = timer);
    Ok(())
}
