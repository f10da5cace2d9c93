//! `sock:inet_sock_set_state`: every TCP state change, the bulk of all events. Filters
//! first; names the socket's network namespace (and, where it starts, its cgroup), the
//! time-wait timer of a socket that hands over to a time-wait socket, and a
//! closing socket's counters.
//!
//! A BTF tracepoint: the kernel builds no perf record for it (about 8% of the machine in
//! the bench's churn, with the program doing nothing), and it reads the socket through its
//! own pointer with plain loads that the verifier checks against `struct sock`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::debug;
use tcptrace_common::{AF_INET, Config, Event, IPPROTO_TCP, STARTED_TIMER_TTL_NS, kind, tcp_state};

use crate::{
    CPU_STATE, CpuState, STARTED_TIMER, TIME_WAIT_TIMERS, counters,
    emit::emit,
    filter::{family_kept, keep_socket},
    home::{netns, netns_kept, read, socket_cgroup_id},
    timers::{table_full, take_slot},
};

/// The `T` at `offset` in the socket: one load, checked by the verifier against the
/// socket's BTF type (the offset comes from read-only config, so it is known at load time).
#[inline(always)]
fn member<T: Copy>(sk: *const u8, offset: u16) -> T {
    // SAFETY: `offset` is that of a member of `struct sock` at least `size_of::<T>()` long
    // (the loader took it from BTF); loads through a BTF pointer can't fault.
    unsafe { sk.add(usize::from(offset)).cast::<T>().read() }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // The prototype: (const struct sock *sk, const int oldstate, const int newstate).
    let sk: *const u8 = ctx.arg(0);
    let config = crate::config();
    let offsets = &config.sock;
    if member::<u16>(sk, offsets.protocol) != IPPROTO_TCP {
        return 0;
    }
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
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
    let family: u16 = member(sk, offsets.family);
    if !family_kept(config, family) {
        return 0;
    }
    let address = sk as u64;
    let netns = netns(address, &config.socket_home);
    if !netns_kept(config, netns) {
        return 0;
    }
    let sport = match member::<u16>(sk, offsets.num) {
        // A closing socket has left its port (`inet_put_port`) but still says it here.
        0 => u16::from_be(read(address + u64::from(offsets.inet_sport))),
        port => port,
    };
    let dport = u16::from_be(member(sk, offsets.dport));
    let process_context = member::<u32>(sk, offsets.lock_owned) != 0;
    if config.filters_sockets() {
        let pid = process_context.then(|| (bpf_get_current_pid_tgid() >> 32) as u32);
        if !keep_socket(config, address, sport, dport, pid, new) {
            return 0;
        }
    }
    // A timer is named only when it is tracked: otherwise its end would never be reported.
    if time_wait_timer != 0 && TIME_WAIT_TIMERS.insert(&time_wait_timer, &address, 0).is_err() {
        table_full(&ctx);
        time_wait_timer = 0;
    }
    let Some(state) = CPU_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's map value, valid while the program is loaded; a program runs to
    // its end on one CPU before another of ours runs there.
    let CpuState { until_fill_check, sent_one, .. } = unsafe { &mut *state };
    if *sent_one == 0 {
        *sent_one = 1;
        // SAFETY: the helper has no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        debug!(&ctx, "cpu {}: the first state change is on its way", cpu);
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
    emit(config, now, kind::TRANSITION, address, process_context, check_fill, |event| {
        event.old_state = old;
        event.new_state = new;
        event.timer = time_wait_timer;
        event.family = family as u8;
        event.sport = sport;
        event.dport = dport;
        fill_addresses(event, sk, config, family);
        event.netns = netns;
        // Where a socket starts (a connect, a listener's child): its cgroup is its
        // creator's and never changes, so these say it for the rest. (Three reads: not on
        // every event.)
        if new == tcp_state::SYN_SENT || new == tcp_state::SYN_RECV {
            event.cgroup = socket_cgroup_id(address, &config.socket_home);
        }
        if new == tcp_state::CLOSE && config.tcp_sock.valid != 0 {
            counters::read(address, &config.tcp_sock, &mut event.counters);
            event.has_counters = 1;
        }
    });
    0
}

/// Both addresses, as the tracepoint's own record has them: the bound local address and
/// the peer's, IPv4 or IPv6 by family.
#[inline(always)]
fn fill_addresses(event: &mut Event, sk: *const u8, config: &Config, family: u16) {
    let offsets = &config.sock;
    if family == AF_INET {
        event.saddr[..4].copy_from_slice(&member::<[u8; 4]>(sk, offsets.rcv_saddr));
        event.daddr[..4].copy_from_slice(&member::<[u8; 4]>(sk, offsets.daddr));
    } else {
        event.saddr = member(sk, offsets.v6_rcv_saddr);
        event.daddr = member(sk, offsets.v6_daddr);
    }
}
