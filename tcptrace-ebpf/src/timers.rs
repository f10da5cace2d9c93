//! Time-wait sockets never pass `inet_sock_set_state`: their life is their timer
//! (`tw_timer_handler`). The CLOSE event of the socket that hands over names it (see
//! [`crate::set_state`]); `timer_cancel` sees it leave the wheel, and `timer_expire_entry`
//! sees it run out. A cancel is a re-arm when `__mod_timer` is what cancels (a segment
//! arrived, and TIME-WAIT starts over): the return addresses on the kernel stack above the
//! cancel say which function that is. These run for every timer on the machine, under the
//! timer base's lock with interrupts off, so they give up on anything that is not a
//! time-wait timer as early as they can. No program runs on `timer_start`: it ran about nine
//! times a connection, for one time-wait timer.
//!
//! They are BTF tracepoints (raw tracepoints typed by the kernel's BTF): the kernel builds
//! no perf record for them, and they read the timer through its own pointer with plain
//! loads the verifier checks against BTF, where a perf tracepoint's program needs a helper
//! call. Their events carry no task: the kernel does not say, here, whether it runs in
//! process context, and a time-wait socket's owner is its connection's anyway.
//!
//! With no filter, every time-wait timer is followed, and its events name the time-wait
//! socket (userspace knows it by its timer). With one, a table of the kept sockets' timers
//! says which are followed; its cold lookup and delete cost more than the rest together.
//!
//! A time-wait socket from before tcptrace started was never seen starting: for about a
//! minute after start, a cancelled time-wait timer the table does not know (with no table:
//! one armed before the start) has its socket read next to it, and is followed from there.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf, generated::bpf_jiffies64},
    macros::btf_tracepoint,
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, Config, EXPIRE_AFTER_CANCEL_TTL_NS, MAX_TIMER_CALLERS, TimerSlot, counter, kind,
};

use crate::{
    CANCELLED_TIMER, MEET_TIME_WAITS, STACK_WORDS, TIME_WAIT_TIMERS,
    emit::{count, emit},
    filter::{family_kept, ports_match},
    home::{load, netns, netns_kept, read},
};

/// The `struct timer_list *` every timer tracepoint gets first.
#[inline(always)]
fn timer_of(ctx: &BtfTracePointContext) -> *const u8 {
    // Argument 0 of timer_start, timer_cancel and timer_expire_entry (their prototypes in
    // include/trace/events/timer.h); the verifier types it from BTF.
    ctx.arg(0)
}

/// Whether `timer` runs `tw_timer_handler`: set once, when its time-wait socket is made.
#[inline(always)]
fn is_time_wait_timer(config: &Config, timer: *const u8) -> bool {
    config.tw_timer_handler != 0
        && load::<u64>(timer, config.timer.function) == config.tw_timer_handler
}

/// Takes this CPU's noted timer if it is `timer` and younger than `ttl_ns`.
#[inline(always)]
fn take_slot(
    slot_map: &PerCpuArray<TimerSlot>,
    now: u64,
    ttl_ns: u64,
    timer: u64,
) -> Option<TimerSlot> {
    // SAFETY: this CPU's slot, valid while the program is loaded; the programs that use it
    // run one at a time on a CPU (with interrupts off, or in the tracepoint they follow).
    let slot = unsafe { &mut *slot_map.get_ptr_mut(0)? };
    let fresh = slot.timer == timer && now.wrapping_sub(slot.ts_ns) < ttl_ns;
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

/// Whether the time-wait timer cancelled now is being re-armed (`mod_timer` on a pending
/// timer detaches it, then files it again with TIME-WAIT's full length): the first return
/// address into one of [`Config::timer_callers`] above the tracepoint's arguments (which
/// lie on the stack of the code that cancels) says. None found: not a re-arm.
#[inline(always)]
fn cancelled_for_a_rearm<C: EbpfContext>(ctx: &C, config: &Config) -> bool {
    let Some(words) = STACK_WORDS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's map value, valid while the program is loaded; `timer_cancel` runs
    // once at a time on a CPU, and nothing else uses it.
    let words = unsafe { &mut *words };
    // SAFETY: `[u64; N]` has no invalid bit patterns; the helper writes at most its size.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), size_of_val(words))
    };
    // SAFETY: the helper reads kernel memory and fails, instead of faulting, where it can't.
    if unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, bytes) }.is_err() {
        return false;
    }
    let span = &config.timer_callers_span;
    for &word in words.iter() {
        // Most words are data, and most return addresses are in other code: one range
        // check each before the callers are looked at one by one.
        if word < span.start || word >= span.end {
            continue;
        }
        for (index, caller) in config.timer_callers.iter().enumerate().take(MAX_TIMER_CALLERS) {
            if index as u32 >= config.timer_caller_count {
                break;
            }
            if caller.start <= word && word < caller.end {
                return (index as u32) < config.rearm_callers;
            }
        }
    }
    false
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    let config = crate::config();
    let timer = timer_of(&ctx);
    // Eight cancelled timers in nine are not time-wait timers (retransmit, delayed ACK,
    // keepalive…): one load of the timer's own `function` tells, before anything else.
    if !is_time_wait_timer(config, timer) {
        return 0;
    }
    let address = timer as u64;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if config.keeps_every_socket() {
        // Every hand-over was sent, so a timer armed since tracing began is one userspace
        // knows, by its address. The event names the time-wait socket, which is next to it.
        if may_be_from_before(config, timer, now) {
            meet_time_wait(&ctx, config, address, now);
        } else {
            let tw = address - u64::from(config.time_wait_sock.tw_timer);
            report_cancel(&ctx, config, now, tw, address);
        }
        return 0;
    }
    // SAFETY: the value is copied out at once; an entry is only ever replaced whole.
    let Some(&sk) = (unsafe { TIME_WAIT_TIMERS.get(&address) }) else {
        meet_time_wait(&ctx, config, address, now);
        return 0;
    };
    if report_cancel(&ctx, config, now, sk, address) {
        let _ = TIME_WAIT_TIMERS.remove(&address);
    }
    0
}

/// A followed time-wait timer left the wheel: it was re-armed (and is still live), or it is
/// gone (killed, or about to run out: noted for the expiry). Returns whether it is gone.
#[inline(always)]
fn report_cancel<C: EbpfContext>(ctx: &C, config: &Config, now: u64, sk: u64, timer: u64) -> bool {
    if cancelled_for_a_rearm(ctx, config) {
        emit_rearm(config, now, sk, timer);
        return false;
    }
    put_slot(&CANCELLED_TIMER, TimerSlot { timer, sk, ts_ns: now });
    emit(config, now, kind::TW_CANCEL, sk, false, true, |event| event.timer = timer);
    true
}

/// Whether a time-wait timer may have been armed before the hand-overs were traced (by a
/// time-wait socket tcptrace did not see start), while [`MEET_TIME_WAITS`] says such sockets
/// may be left. A timer runs out at most TIME-WAIT's length after it is armed: one that runs
/// out later than that after the start was armed since. Those of the start's own jiffy
/// count as from before (userspace knows them if it saw their hand-over), and so do all
/// until the loader has said when the start was.
#[inline(always)]
fn may_be_from_before(config: &Config, timer: *const u8, now: u64) -> bool {
    let Some(window) = MEET_TIME_WAITS.get(0) else {
        return true;
    };
    if window.traced_since_ns == 0 {
        return true;
    }
    if now >= window.until_ns {
        return false;
    }
    let expires: u64 = load(timer, config.timer.expires);
    // SAFETY: the helper has no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    // (`checked_div`: a plain division by a value the compiler can't see is never 0
    // brings in a panic, which BPF can't have.)
    let traced_for =
        now.saturating_sub(window.traced_since_ns).checked_div(u64::from(config.jiffy_ns));
    let Some(traced_for) = traced_for else {
        return true;
    };
    let start = jiffies.wrapping_sub(traced_for).wrapping_add(1);
    let armed_by = expires.wrapping_sub(u64::from(config.time_wait_jiffies));
    // Jiffies wrap: compared by their difference, as the kernel's `time_before` does.
    (armed_by.wrapping_sub(start) as i64) < 0
}

/// A re-armed time-wait timer: it runs for TIME-WAIT's full length from now.
#[inline(always)]
fn emit_rearm(config: &Config, now: u64, sk: u64, timer: u64) {
    emit(config, now, kind::TW_REARM, sk, false, true, |event| {
        event.timer = timer;
        event.timeout_jiffies = config.time_wait_jiffies;
    });
}

/// A cancelled time-wait timer that may be of a socket from before tcptrace started (one
/// the table does not know, or where there is no table, one armed before the start), while
/// [`MEET_TIME_WAITS`] says so: reported with the socket's addresses (read from beside its
/// timer), as the cancel it is (noted for the expiry that may follow) or as a re-arm (then,
/// where there is a table, followed in it from then on). One event either way: a re-arm
/// reported as a cancel and a re-arm showed a cancel that was none.
#[inline(always)]
fn meet_time_wait<C: EbpfContext>(ctx: &C, config: &Config, timer: u64, now: u64) {
    let offsets = &config.time_wait_sock;
    let until = MEET_TIME_WAITS.get(0).map_or(0, |window| window.until_ns);
    // A time-wait socket has no process and no cgroup: `--pid` and `--cgroup` keep none.
    if now >= until || offsets.valid == 0 || config.pid != 0 || config.cgroup != 0 {
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
    let rearm = cancelled_for_a_rearm(ctx, config);
    if !rearm {
        put_slot(&CANCELLED_TIMER, TimerSlot { timer, sk: tw, ts_ns: now });
    } else if !config.keeps_every_socket() && TIME_WAIT_TIMERS.insert(&timer, &tw, 0).is_err() {
        table_full(ctx);
        return;
    }
    let event_kind = if rearm { kind::TW_REARM } else { kind::TW_CANCEL };
    emit(config, now, event_kind, tw, false, true, |event| {
        event.timer = timer;
        if rearm {
            event.timeout_jiffies = config.time_wait_jiffies;
        }
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
    let Some(cancelled) = take_slot(&CANCELLED_TIMER, now, EXPIRE_AFTER_CANCEL_TTL_NS, address)
    else {
        return 0;
    };
    emit(config, now, kind::TW_EXPIRE, cancelled.sk, false, true, |event| event.timer = address);
    0
}
