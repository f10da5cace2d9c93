//! `sock:inet_sock_set_state`: every TCP state change, the bulk of all events. Filters
//! first; names the socket's network namespace (and, where it starts, its cgroup), the
//! time-wait timer of a socket that hands over to a time-wait socket (found in the
//! established hash, where the time-wait socket took its place), and a closing socket's
//! counters.
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
use tcptrace_common::{AF_INET, Config, Event, IPPROTO_TCP, kind, tcp_state};

use crate::{
    CPU_STATE, CpuState, TIME_WAIT_TIMERS, counters,
    emit::emit,
    filter::{family_kept, keep_socket},
    home::{load, netns_kept, netns_of_typed, read, socket_cgroup_id},
    timers::table_full,
};

/// How many sockets of a bucket's chain are looked at for the time-wait socket. It was put
/// at the head just before; another socket hashed into the bucket since is rare.
const CHAIN_STEPS: usize = 4;
/// `TCP_TIME_WAIT`: the state a time-wait socket's `skc_state` says.
const TCP_TIME_WAIT: u8 = 6;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // The prototype: (const struct sock *sk, const int oldstate, const int newstate).
    let sk: *const u8 = ctx.arg(0);
    let config = crate::config();
    let offsets = &config.sock;
    if load::<u16>(sk, offsets.protocol) != IPPROTO_TCP {
        return 0;
    }
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let family: u16 = load(sk, offsets.family);
    if !family_kept(config, family) {
        return 0;
    }
    let address = sk as u64;
    let netns = netns_of_typed(sk, &config.socket_home);
    if !netns_kept(config, netns) {
        return 0;
    }
    let sport = match load::<u16>(sk, offsets.num) {
        // A closing socket has left its port (`inet_put_port`) but still says it here.
        0 => u16::from_be(read(address + u64::from(offsets.inet_sport))),
        port => port,
    };
    let dport = u16::from_be(load(sk, offsets.dport));
    let process_context = load::<u32>(sk, offsets.lock_owned) != 0;
    if config.filters_sockets() {
        // 0 where the task is not the socket's (no real task has pid 0). Not an Option: the
        // compiler would compare whatever the register held on the `None` path, which the
        // verifier refuses when that is the socket's pointer.
        let pid = if process_context { (bpf_get_current_pid_tgid() >> 32) as u32 } else { 0 };
        if !keep_socket(config, address, sport, dport, pid, new) {
            return 0;
        }
    }
    // A hand-over to a time-wait socket (`tcp_time_wait`, then this CLOSE). Its timer is
    // named only when it is followed: otherwise its end would never be reported. Where a
    // filter keeps some sockets out, the table says which timers are followed.
    let mut time_wait_timer = 0;
    if new == tcp_state::CLOSE
        && (old == tcp_state::FIN_WAIT2 || old == tcp_state::CLOSING)
        && config.tw_timer_handler != 0
    {
        let ports = u32::from(dport.to_be()) | u32::from(sport) << 16;
        time_wait_timer = time_wait_timer_of(sk, config, family, ports);
        if time_wait_timer != 0
            && !config.keeps_every_socket()
            && TIME_WAIT_TIMERS.insert(&time_wait_timer, &address, 0).is_err()
        {
            table_full(&ctx);
            time_wait_timer = 0;
        }
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
        if new == tcp_state::CLOSE
            && config.tcp_sock.valid != 0
            && counters::read(sk, &config.tcp_sock, &mut event.counters)
        {
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
        event.saddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, offsets.rcv_saddr));
        event.daddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, offsets.daddr));
    } else {
        event.saddr = load(sk, offsets.v6_rcv_saddr);
        event.daddr = load(sk, offsets.v6_daddr);
    }
}

/// The timer of the time-wait socket that took `sk`'s place at the head of its bucket in the
/// established hash; 0 if there is none (the kernel made none: out of memory, or past
/// `tcp_max_tw_buckets`; or it is gone already). Known by its state, hash, ports and
/// addresses, which are the socket's; `ports` as `skc_portpair` has them (the socket's own
/// says 0 for the local port by now, when it was an ephemeral one).
#[inline(always)]
fn time_wait_timer_of(sk: *const u8, config: &Config, family: u16, ports: u32) -> u64 {
    let offsets = &config.time_wait_sock;
    // The namespace's tables, through typed loads; from the bucket on, helper reads (its
    // address is computed, which a typed pointer can't be).
    let net: *const u8 = load(sk, config.socket_home.sock_net);
    let hashinfo: *const u8 = load(net, offsets.net_hashinfo);
    let buckets: *const u8 = load(hashinfo, offsets.ehash);
    let mask: u32 = load(hashinfo, offsets.ehash_mask);
    let hash: u32 = load(sk, offsets.hash);
    let bucket = buckets as u64 + u64::from(hash & mask) * u64::from(offsets.bucket_size);
    // `hlist_nulls_head.first`, then each `hlist_nulls_node.next`: both at offset 0.
    let mut node: u64 = read(bucket);
    for _ in 0..CHAIN_STEPS {
        // A set lowest bit marks the chain's end (a "nulls" value).
        if node & 1 != 0 || node == 0 {
            return 0;
        }
        let tw = node.wrapping_sub(u64::from(offsets.nulls_node));
        if read::<u8>(tw + u64::from(offsets.state)) == TCP_TIME_WAIT
            && read::<u32>(tw + u64::from(offsets.hash)) == hash
            && read::<u32>(tw + u64::from(offsets.portpair)) == ports
            && same_addresses(sk, tw, config, family)
        {
            return tw + u64::from(offsets.tw_timer);
        }
        node = read(node);
    }
    0
}

/// Whether time-wait socket `tw` has `sk`'s two addresses.
#[inline(always)]
fn same_addresses(sk: *const u8, tw: u64, config: &Config, family: u16) -> bool {
    let (sock, time_wait) = (&config.sock, &config.time_wait_sock);
    if family == AF_INET {
        // `skc_addrpair`: both IPv4 addresses in one word.
        return read::<u64>(tw + u64::from(time_wait.daddr)) == load::<u64>(sk, sock.daddr);
    }
    read::<[u64; 2]>(tw + u64::from(time_wait.v6_daddr)) == load::<[u64; 2]>(sk, sock.v6_daddr)
        && read::<[u64; 2]>(tw + u64::from(time_wait.v6_rcv_saddr))
            == load::<[u64; 2]>(sk, sock.v6_rcv_saddr)
}
