//! `sock:inet_sock_set_state`: every TCP state change, the bulk of all events. Filters
//! first; names the socket's network namespace (and, where it starts, its cgroup), the
//! time-wait timer of a socket that hands over to a time-wait socket, and a
//! closing socket's counters.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tcptrace_common::{IPPROTO_TCP, STARTED_TIMER_TTL_NS, kind, tcp_state};

use crate::{
    STARTED_TIMER, TIME_WAIT_TIMERS,
    context::{learn_process_context, same_as_process_context},
    counters,
    emit::emit,
    filter::{family_kept, keep_socket},
    home::{netns, netns_kept, socket_cgroup_id},
    record::Record,
    timers::{table_full, take_slot},
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let config = crate::config();
    let offsets = &config.set_state;
    let (record, process_context_regs, until_fill_check) = Record::copy(ctx).ok_or(0)?;
    if record.get::<u16>(offsets.protocol) != IPPROTO_TCP {
        return Ok(());
    }
    let addresses = &offsets.addresses;
    let family: u16 = record.get(addresses.family);
    let old = record.get::<i32>(offsets.oldstate) as u8;
    let new = record.get::<i32>(offsets.newstate) as u8;
    // A hand-over to a time-wait socket takes the timer started just before, kept or not,
    // so that a later hand-over on this CPU never takes a stale one.
    let mut time_wait_timer = if new == tcp_state::CLOSE
        && (old == tcp_state::FIN_WAIT2 || old == tcp_state::CLOSING)
        && config.tw_timer_handler != 0
    {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        take_slot(&STARTED_TIMER, now, STARTED_TIMER_TTL_NS, None).map_or(0, |s| s.timer)
    } else {
        0
    };
    // Learn from every socket (the loader's calibration sockets are filtered out below).
    let regs: u64 = record.get(0);
    if new == tcp_state::LISTEN || (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT) {
        learn_process_context(ctx, regs, process_context_regs);
    }
    let process_context = same_as_process_context(regs, process_context_regs);
    if !family_kept(config, family) {
        return Ok(());
    }
    let sk: u64 = record.get(addresses.skaddr);
    let netns = netns(sk, &config.socket_home);
    if !netns_kept(config, netns) {
        return Ok(());
    }
    let sport: u16 = record.get(addresses.sport);
    let dport: u16 = record.get(addresses.dport);
    if config.filters_sockets() {
        let pid = process_context.then(|| (bpf_get_current_pid_tgid() >> 32) as u32);
        if !keep_socket(config, sk, sport, dport, pid, new) {
            return Ok(());
        }
    }
    // A timer is named only when it is tracked: otherwise its end would never be reported.
    if time_wait_timer != 0 && TIME_WAIT_TIMERS.insert(&time_wait_timer, &sk, 0).is_err() {
        table_full(ctx, time_wait_timer);
        time_wait_timer = 0;
    }

    // The bulk of all events: a look at the fill level costs a tenth of sending one.
    let check_fill = *until_fill_check == 0;
    *until_fill_check = if check_fill {
        config.wakeup_check_every.saturating_sub(1)
    } else {
        *until_fill_check - 1
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(config, now, kind::TRANSITION, sk, process_context, check_fill, |event| {
        event.old_state = old;
        event.new_state = new;
        event.timer = time_wait_timer;
        record.fill_from(event, addresses, family, (sport, dport));
        event.netns = netns;
        // Where a socket starts (a connect, a listener's child): its cgroup is its
        // creator's and never changes, so these say it for the rest. (Three reads: not on
        // every event.)
        if new == tcp_state::SYN_SENT || new == tcp_state::SYN_RECV {
            event.cgroup = socket_cgroup_id(sk, &config.socket_home);
        }
        if new == tcp_state::CLOSE && config.tcp_sock.valid != 0 {
            counters::read(sk, &config.tcp_sock, &mut event.counters);
            event.has_counters = 1;
        }
    });
    Ok(())
}
