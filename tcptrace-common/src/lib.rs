//! Types shared by the tcptrace eBPF program and its loader.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes [`Event`]s into a ring
//! buffer and the loader reads them back byte for byte, and the loader hands [`Config`]
//! to the kernel program as a read-only global before loading it.
#![no_std]

/// Length of a task's `comm`, as in the kernel.
pub const COMM_LEN: usize = 16;
/// Bytes of a tracepoint record the kernel program copies and reads its fields from (the
/// longest record it reads, `inet_sock_set_state`, is 72 bytes).
pub const RECORD_BYTES: usize = 128;
/// Most `--port` values the kernel filter holds.
pub const MAX_PORTS: usize = 8;
/// Most `--netns` values the kernel filter holds.
pub const MAX_NETNS: usize = 8;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Kernel TCP state numbers (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// What an [`Event`] reports.
pub mod kind {
    /// `sock:inet_sock_set_state`: a socket changed state. When a socket hands over to a
    /// time-wait socket (FIN_WAIT2/CLOSING → CLOSE), `timer` holds that socket's timer.
    pub const TRANSITION: u8 = 1;
    /// A live time-wait timer was started again (a FIN or retransmission arrived in TIME-WAIT).
    pub const TW_REARM: u8 = 2;
    /// A live time-wait timer was taken off the wheel: either it is about to run
    /// (`TW_EXPIRE` follows at once), it is re-armed (`TW_REARM` follows), or the time-wait
    /// socket was killed early (nothing follows). For a time-wait socket the program had
    /// not met (one from before tcptrace started), the event also carries its family,
    /// addresses, ports and namespace: the first the engine hears of it.
    pub const TW_CANCEL: u8 = 3;
    /// A time-wait timer ran out: the time-wait socket ends naturally.
    pub const TW_EXPIRE: u8 = 4;
    /// `tcp:tcp_send_reset`: this host sent a RST.
    pub const RESET_SENT: u8 = 5;
    /// `tcp:tcp_receive_reset`: a socket received a RST.
    pub const RESET_RECEIVED: u8 = 6;
}

/// One record in the ring buffer. 168 bytes, no padding the kernel leaves uninitialised.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the socket (0 when the event has none).
    pub sk: u64,
    /// Kernel address of the time-wait timer (0 when the event has none).
    pub timer: u64,
    /// Thread group id (the user-visible pid) of the current task; with `tid` and `comm`,
    /// only filled in process context (0 otherwise).
    pub pid: u32,
    /// Thread id of the current task.
    pub tid: u32,
    /// For `TW_REARM`: the new timeout in jiffies. Otherwise 0.
    pub timeout_jiffies: u32,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub comm: [u8; COMM_LEN],
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// One of [`kind`].
    pub kind: u8,
    /// 2 (`AF_INET`) or 10 (`AF_INET6`); 0 when the event has no address.
    pub family: u8,
    pub old_state: u8,
    pub new_state: u8,
    /// 1 when the event fired in process context (the current task is the socket's user),
    /// 0 in softirq, hardirq or NMI, or when the context could not be told.
    pub process_context: u8,
    pub cpu: u8,
    /// 1 when `counters` holds the socket's counters (a close, with BTF offsets known).
    pub has_counters: u8,
    pub _pad: u8,
    /// On a close (`X → CLOSE`): what the socket carried, as `TCP_INFO` reports it.
    pub counters: TcpCounters,
    /// The id of the socket's cgroup (v2), read where a socket starts (connect, a child of
    /// a listener); 0 on other events, or without BTF.
    pub cgroup: u64,
    /// The inode of the socket's network namespace (`net->ns.inum`); 0 when the event has
    /// no socket, or without BTF.
    pub netns: u32,
    pub _pad2: u32,
}

/// A socket's counters when it closed, read from its `struct tcp_sock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_retrans: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub total_retrans: u32,
    /// Smoothed RTT in 1/8 µs, as the kernel keeps it (`srtt_us`).
    pub srtt_us8: u32,
    /// The windowed minimum RTT, µs (`rtt_min`'s current value).
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
    /// The socket's pending error (`sk_err`), a positive errno; 0 for none.
    pub sk_err: i32,
    pub _pad: u32,
}

impl TcpCounters {
    pub const ZERO: TcpCounters = TcpCounters {
        bytes_acked: 0,
        bytes_received: 0,
        bytes_retrans: 0,
        segs_out: 0,
        segs_in: 0,
        total_retrans: 0,
        srtt_us8: 0,
        min_rtt_us: 0,
        snd_cwnd: 0,
        sk_err: 0,
        _pad: 0,
    };
}

impl Event {
    pub const ZERO: Event = Event {
        ts_ns: 0,
        sk: 0,
        timer: 0,
        pid: 0,
        tid: 0,
        timeout_jiffies: 0,
        sport: 0,
        dport: 0,
        comm: [0; COMM_LEN],
        saddr: [0; 16],
        daddr: [0; 16],
        kind: 0,
        family: 0,
        old_state: 0,
        new_state: 0,
        process_context: 0,
        cpu: 0,
        has_counters: 0,
        _pad: 0,
        counters: TcpCounters::ZERO,
        cgroup: 0,
        netns: 0,
        _pad2: 0,
    };

    /// Whether the event fired in process context, where pid and comm are the socket's user.
    pub fn in_process_context(&self) -> bool {
        self.process_context != 0
    }
}

/// Where a tracepoint record keeps a socket and its two ends: the same fields in
/// `sock:inet_sock_set_state` and `tcp:tcp_receive_reset`. Byte offsets, taken from each
/// tracepoint's `format` file in tracefs at start-up (they differ between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressOffsets {
    pub skaddr: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
}

/// Where a `struct sock` keeps what `inet_sock_set_state` reads, from the kernel's BTF. The
/// program is a BTF tracepoint: it gets the socket's own pointer and loads these straight
/// from it (the members of its `__sk_common`, and `sk_lock.owned`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sk_protocol`: u16.
    pub protocol: u16,
    /// `skc_family`: u16.
    pub family: u16,
    /// `skc_num`: the local port, in host order.
    pub num: u16,
    /// `skc_dport`: the remote port, in network order.
    pub dport: u16,
    /// `skc_rcv_saddr` and `skc_daddr`: the IPv4 addresses.
    pub rcv_saddr: u16,
    pub daddr: u16,
    /// `skc_v6_rcv_saddr` and `skc_v6_daddr`: the IPv6 addresses.
    pub v6_rcv_saddr: u16,
    pub v6_daddr: u16,
    /// `sk_lock.owned`: nonzero while a task holds the socket (`lock_sock`), in a system
    /// call of the socket's user. Softirq never changes a socket's state then (it queues
    /// to the backlog, which that task processes), so it tells process context.
    pub lock_owned: u16,
    /// `inet_sock.inet_sport` (network order, past the end of `struct sock`, so read with a
    /// helper): the local port, which a closing socket keeps after `skc_num` is cleared.
    pub inet_sport: u16,
    pub _pad: [u16; 2],
}

/// `tcp:tcp_send_reset` carries its addresses as `struct sockaddr_in6`-sized blobs, already
/// oriented from the sender's side: family at +0, port (network order) at +2, address at +4
/// (IPv4) or +8 (IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendResetOffsets {
    pub skaddr: u16,
    /// The socket's state (int), 0 without one.
    pub state: u16,
    pub saddr: u16,
    pub daddr: u16,
}

/// Offsets, from a socket's address, of what [`TcpCounters`] holds: members of `struct
/// tcp_sock` (whose first member, nested, is `struct sock`), read from the kernel's BTF.
/// Rust eBPF has no CO-RE relocations, so the loader finds them. `valid == 0` (no BTF, or a
/// member missing) leaves the counters out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSockOffsets {
    pub bytes_acked: u16,
    pub bytes_received: u16,
    pub bytes_retrans: u16,
    pub segs_out: u16,
    pub segs_in: u16,
    pub total_retrans: u16,
    pub srtt_us: u16,
    pub min_rtt: u16,
    pub snd_cwnd: u16,
    pub sk_err: u16,
    pub valid: u16,
    pub _pad: u16,
}

/// Where a socket says which network namespace and cgroup it belongs to, from the kernel's
/// BTF: `struct sock` → `struct net` → its inode, and `struct sock` → `struct cgroup` →
/// its `kernfs_node`'s id, the cgroup's ancestors and its depth. A zero `*_valid` (no BTF,
/// or a member missing) leaves that part out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketHomeOffsets {
    /// `sock.__sk_common.skc_net.net`: a `struct net *`.
    pub sock_net: u16,
    /// `net.ns.inum`: u32.
    pub net_inum: u16,
    /// `sock.sk_cgrp_data.cgroup`: a `struct cgroup *`.
    pub sock_cgroup: u16,
    /// `cgroup.kn`: a `struct kernfs_node *`.
    pub cgroup_kn: u16,
    /// `kernfs_node.id`: u64, the cgroup's id.
    pub kernfs_id: u16,
    /// `cgroup.level`: its depth below the root (int).
    pub cgroup_level: u16,
    /// `cgroup.ancestors`: `struct cgroup *[]`, indexed by level.
    pub cgroup_ancestors: u16,
    pub netns_valid: u8,
    pub cgroup_valid: u8,
}

/// Where a time-wait socket keeps its timer and its two ends, and how it is found, from the
/// kernel's BTF. It takes the place of the socket that hands over to it at the head of that
/// socket's bucket in the established hash (`inet_twsk_hashdance_schedule`), before that
/// socket's CLOSE event: the CLOSE event looks there and knows it by its hash, ports,
/// addresses and state. A time-wait socket from before tcptrace is told from its timer
/// instead, when the timer leaves the wheel. `valid == 0` (no BTF, or a member missing)
/// turns TIME-WAIT tracking off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWaitSockOffsets {
    /// `inet_timewait_sock.tw_timer`: the timer's place in its time-wait socket.
    pub tw_timer: u16,
    /// The members of `inet_timewait_sock.__tw_common` (a `struct sock_common`, the start
    /// of every socket), from the socket's address: remote and local IPv4 addresses
    /// (together: `skc_addrpair`), remote port (network order), local port (host order),
    /// family, the IPv6 addresses, both ports together (`skc_portpair`), the hash, the
    /// state, and the established hash's chain link (`skc_nulls_node`).
    pub daddr: u16,
    pub rcv_saddr: u16,
    pub dport: u16,
    pub num: u16,
    pub family: u16,
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
    pub portpair: u16,
    pub hash: u16,
    pub state: u16,
    pub nulls_node: u16,
    /// `net.ipv4.tcp_death_row.hashinfo`: the namespace's TCP hash tables; their
    /// `inet_hashinfo.ehash` (the established buckets) and `ehash_mask`; and the size of
    /// one bucket (`struct inet_ehash_bucket`).
    pub net_hashinfo: u16,
    pub ehash: u16,
    pub ehash_mask: u16,
    pub bucket_size: u16,
    pub valid: u16,
    pub _pad: [u16; 3],
}

/// A function's code in the kernel: from its address to the next symbol's (/proc/kallsyms).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextRange {
    pub start: u64,
    pub end: u64,
}

/// The most functions [`Config::timer_callers`] names.
pub const MAX_TIMER_CALLERS: usize = 12;
/// How many 8-byte words of the kernel stack above a time-wait timer's cancel are looked
/// at for its callers' return addresses. On 6.18 the caller's (`__mod_timer` for a re-arm,
/// `timer_shutdown_sync` for a kill) is the 10th; this leaves room for other builds.
pub const STACK_SCAN_WORDS: usize = 16;

/// Where a `struct timer_list` keeps what the timer programs read (from BTF). They run as
/// BTF tracepoints, which get the timer's own pointer, and load these straight from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerOffsets {
    /// `timer_list.function`: what runs when the timer expires.
    pub function: u16,
    /// `timer_list.expires`: when it runs out, in jiffies.
    pub expires: u16,
    pub _pad: [u16; 2],
}

/// Read-only configuration of the kernel program, set by the loader before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub sock: SockOffsets,
    pub send_reset: SendResetOffsets,
    pub receive_reset: AddressOffsets,
    pub timer: TimerOffsets,
    pub tcp_sock: TcpSockOffsets,
    pub socket_home: SocketHomeOffsets,
    pub time_wait_sock: TimeWaitSockOffsets,
    /// Address of `tw_timer_handler` (from /proc/kallsyms); 0 turns time-wait tracking off.
    pub tw_timer_handler: u64,
    /// Why a time-wait timer left the wheel, told by the first of these functions whose
    /// return address is on the stack above the cancel: the first `rearm_callers` re-arm a
    /// timer (`__mod_timer` and its callers: a segment arrived, and TIME-WAIT starts over),
    /// the rest delete it or run it (a kill, or the natural end).
    pub timer_callers: [TextRange; MAX_TIMER_CALLERS],
    pub timer_caller_count: u32,
    pub rearm_callers: u32,
    /// The text all of `timer_callers` lie in: a return address outside it is none of them.
    pub timer_callers_span: TextRange,
    /// TIME-WAIT's length (`TCP_TIMEWAIT_LEN`, 60 s) in jiffies: what a re-arm sets.
    pub time_wait_jiffies: u32,
    /// The length of a jiffy in nanoseconds (10^9 / HZ).
    pub jiffy_ns: u32,
    /// Ring-buffer fill level, in bytes, from which a submit wakes the reader at once.
    /// Below it the reader is not woken and picks events up on its next poll tick.
    pub wakeup_bytes: u64,
    /// With `--cgroup`: the id of the cgroup whose subtree is kept, and its depth below
    /// the root; 0 keeps every cgroup.
    pub cgroup: u64,
    pub cgroup_level: u32,
    /// Network namespaces to keep (their inodes); `netns_count == 0` keeps every one.
    pub netns: [u32; MAX_NETNS],
    pub netns_count: u32,
    /// Ports to keep (local or remote); `port_count == 0` keeps every port.
    pub ports: [u16; MAX_PORTS],
    pub port_count: u32,
    /// Thread group id to keep; 0 keeps every process.
    pub pid: u32,
    /// Families to keep: [`FAMILY_IPV4`] | [`FAMILY_IPV6`].
    pub families: u32,
    /// `inet_sock_set_state` looks at the fill level (for `wakeup_bytes`) on every this many
    /// events of a CPU, not on each: the ring grows by at most this many events per CPU
    /// past the level before the reader is woken. At least 1.
    pub wakeup_check_every: u32,
    /// How many ring buffers are in use, one per CPU up to [`MAX_RINGS`]: CPU `n` writes to
    /// ring `n % ring_count`. At least 1.
    pub ring_count: u32,
    pub _pad: u32,
}

/// The most ring buffers the kernel program has (maps `EVENTS0` … `EVENTS7`).
pub const MAX_RINGS: u32 = 8;

/// Bytes one [`Event`] takes in the ring buffer: the event and the ring's 8-byte header.
pub const RING_RECORD_BYTES: u32 = size_of::<Event>() as u32 + 8;

pub const FAMILY_IPV4: u32 = 1;
pub const FAMILY_IPV6: u32 = 2;

impl Config {
    /// Whether any filter needs the per-socket "already matched" memory. (`--netns` does
    /// not: every event names its socket's namespace, which never changes.)
    pub fn filters_sockets(&self) -> bool {
        self.port_count != 0 || self.pid != 0 || self.cgroup != 0
    }

    /// Whether every socket is kept (no filter at all), and so every time-wait socket is
    /// one whose hand-over was sent: its timer is then followed without the table of kept
    /// timers (`TIME_WAIT_TIMERS`), whose cold lookup and delete cost more than all the rest
    /// of following a time-wait socket.
    pub fn keeps_every_socket(&self) -> bool {
        !self.filters_sockets()
            && self.netns_count == 0
            && self.families == FAMILY_IPV4 | FAMILY_IPV6
    }
}

/// While time-wait sockets from before tcptrace started may still end (set by the loader,
/// `bpf_ktime_get_ns` times): from when the hand-overs were traced, until when one may end
/// (0: no more).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeetWindow {
    pub traced_since_ns: u64,
    pub until_ns: u64,
}

/// A per-CPU note about a time-wait timer, kept for the event that follows it on the same
/// CPU: `timer_expire_entry` after `timer_cancel` (a natural end).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TimerSlot {
    pub timer: u64,
    /// The owning socket, where known (after a cancel).
    pub sk: u64,
    pub ts_ns: u64,
}

/// An expiry is cancel (the timer leaves the wheel), then the handler: interrupts may run
/// in between, and nothing else calls the handler, so this can be generous.
pub const EXPIRE_AFTER_CANCEL_TTL_NS: u64 = 1_000_000;

/// Index of counters in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Time-wait timers that could not be tracked because the live-timer table was full.
    pub const TW_TABLE_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding holes, valid for any bit pattern.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::MeetWindow {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<Event>(), 168);
        assert_eq!(core::mem::size_of::<TcpCounters>(), 56);
        assert_eq!(core::mem::size_of::<TcpSockOffsets>(), 24);
        assert_eq!(core::mem::size_of::<AddressOffsets>(), 16);
        assert_eq!(core::mem::size_of::<SockOffsets>(), 24);
        assert_eq!(core::mem::size_of::<SendResetOffsets>(), 8);
        assert_eq!(core::mem::size_of::<TimerOffsets>(), 8);
        assert_eq!(core::mem::size_of::<SocketHomeOffsets>(), 16);
        assert_eq!(core::mem::size_of::<TimeWaitSockOffsets>(), 40);
        assert_eq!(core::mem::size_of::<TextRange>(), 16);
        let filters = 8 + 4 + 4 * MAX_NETNS + 4 + 16 + 16;
        let offsets = 24 + 8 + 16 + 8 + 24 + 16 + 40;
        // `tw_timer_handler`; the timer callers, their counts and span; the re-arm's length.
        let timers = 8 + 16 * MAX_TIMER_CALLERS + 4 + 4 + 16 + 4 + 4;
        assert_eq!(core::mem::size_of::<MeetWindow>(), 16);
        // `wakeup_bytes`; the rings' count and its padding.
        let rings = 8 + 4 + 4;
        assert_eq!(core::mem::size_of::<Config>(), offsets + timers + rings + filters);
    }
}
