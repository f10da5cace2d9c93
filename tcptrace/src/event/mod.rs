//! The event model: what the kernel reported, as typed values ([`decode`] turns the ring
//! buffer's raw [`tcptrace_common::Event`]s into them).

mod decode;

pub use decode::{DecodeError, decode, decode_event};

use std::{fmt, net::SocketAddr};

use tcptrace_common::{COMM_LEN, tcp_state};

/// A TCP state, named as in RFC 9293 (with underscores); `NEW_SYN_RECV` is Linux's
/// request-socket state, which the RFC does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynReceived,
    FinWait1,
    FinWait2,
    TimeWait,
    Closed,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynReceived,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Closed,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// From the kernel's state number (`include/net/tcp_states.h`).
    pub fn from_kernel(number: u8) -> Option<TcpState> {
        Some(match number {
            tcp_state::ESTABLISHED => TcpState::Established,
            tcp_state::SYN_SENT => TcpState::SynSent,
            tcp_state::SYN_RECV => TcpState::SynReceived,
            tcp_state::FIN_WAIT1 => TcpState::FinWait1,
            tcp_state::FIN_WAIT2 => TcpState::FinWait2,
            tcp_state::TIME_WAIT => TcpState::TimeWait,
            tcp_state::CLOSE => TcpState::Closed,
            tcp_state::CLOSE_WAIT => TcpState::CloseWait,
            tcp_state::LAST_ACK => TcpState::LastAck,
            tcp_state::LISTEN => TcpState::Listen,
            tcp_state::CLOSING => TcpState::Closing,
            tcp_state::NEW_SYN_RECV => TcpState::NewSynRecv,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynReceived => "SYN_RECEIVED",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Closed => "CLOSED",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// The inverse of [`TcpState::name`], as bytes or text. A `match`: replay reads two
    /// names per transition.
    pub fn from_name(name: impl AsRef<[u8]>) -> Option<TcpState> {
        Some(match name.as_ref() {
            b"ESTABLISHED" => TcpState::Established,
            b"SYN_SENT" => TcpState::SynSent,
            b"SYN_RECEIVED" => TcpState::SynReceived,
            b"FIN_WAIT1" => TcpState::FinWait1,
            b"FIN_WAIT2" => TcpState::FinWait2,
            b"TIME_WAIT" => TcpState::TimeWait,
            b"CLOSED" => TcpState::Closed,
            b"CLOSE_WAIT" => TcpState::CloseWait,
            b"LAST_ACK" => TcpState::LastAck,
            b"LISTEN" => TcpState::Listen,
            b"CLOSING" => TcpState::Closing,
            b"NEW_SYN_RECV" => TcpState::NewSynRecv,
            _ => return None,
        })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(address: &SocketAddr) -> Family {
        if address.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// A task's `comm`: up to 16 bytes, not always UTF-8, stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    /// From text, cut (like the kernel) to 15 bytes, but never inside a character.
    pub fn new(name: &str) -> Comm {
        let mut bytes = [0; COMM_LEN];
        let mut len = name.len().min(COMM_LEN - 1);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Comm(bytes)
    }

    pub fn from_kernel(bytes: [u8; COMM_LEN]) -> Comm {
        Comm(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The process a socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
}

/// The current task when an event fired. Only meaningful in process context: in softirq it
/// is whatever task the interrupt happened to land on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub process_context: bool,
}

impl Task {
    /// The task as the socket's owner, when it can be trusted to be one: process context,
    /// and not the idle task (pid 0, `swapper`).
    pub fn as_owner(&self) -> Option<Owner> {
        (self.process_context && self.pid != 0).then_some(Owner { pid: self.pid, comm: self.comm })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A socket changed state. `time_wait_timer` is set when the socket handed over to a
    /// kernel time-wait socket with that timer.
    Transition {
        old: TcpState,
        new: TcpState,
        time_wait_timer: Option<u64>,
    },
    /// A live time-wait timer was re-armed with a new timeout.
    TimeWaitRearm {
        timer: u64,
        timeout_jiffies: u32,
    },
    /// A live time-wait timer was taken off the timer wheel.
    TimeWaitCancel {
        timer: u64,
    },
    /// A time-wait timer ran out.
    TimeWaitExpire {
        timer: u64,
    },
    ResetSent,
    ResetReceived,
}

/// An errno value, as the kernel leaves it in a socket's `sk_err`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub u16);

/// The errors a TCP socket can be left with (connects refused or timed out, resets, ICMP
/// errors, and `accept()` out of descriptors), by name.
const ERRNO_NAMES: [(i32, &str); 18] = [
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::EPIPE, "EPIPE"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::EPROTO, "EPROTO"),
    (libc::EMSGSIZE, "EMSGSIZE"),
    (libc::ENOPROTOOPT, "ENOPROTOOPT"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::EACCES, "EACCES"),
    (libc::EPERM, "EPERM"),
    (libc::ENONET, "ENONET"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::EMFILE, "EMFILE"),
];

impl Errno {
    /// `ECONNREFUSED` and the like; an errno without a name here is `E` and its number.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match ERRNO_NAMES.iter().find(|(number, _)| *number == i32::from(self.0)) {
            Some((_, name)) => (*name).into(),
            None => format!("E{}", self.0).into(),
        }
    }

    /// The inverse of [`Errno::name`].
    pub fn from_name(name: &str) -> Option<Errno> {
        let number = match ERRNO_NAMES.iter().find(|(_, known)| *known == name) {
            Some((number, _)) => *number,
            None => name.strip_prefix('E')?.parse().ok()?,
        };
        u16::try_from(number).ok().filter(|&n| n != 0).map(Errno)
    }
}

/// What a socket carried and how it ended, read from its `struct tcp_sock` when it closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub info: TcpInfo,
    /// The socket's pending error (`sk_err`) when it closed.
    pub error: Option<Errno>,
}

/// The counters `TCP_INFO` and `ss -i` report (also the JSON lines' `tcp_info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpInfo {
    /// Bytes of ours the peer acknowledged (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes received in order (`tcpi_bytes_received`).
    pub bytes_received: u64,
    pub bytes_retrans: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    /// Segments sent again, SYNs included (`tcpi_total_retrans`).
    pub total_retrans: u32,
    /// The smoothed round-trip time, µs (`srtt_us >> 3`, as `tcpi_rtt`).
    pub rtt_us: u32,
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
}

/// Where a socket lives: its network namespace (the inode `ls -l /proc/PID/ns/net`
/// shows) and its cgroup (v2) id, when known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Home {
    pub netns: Option<u32>,
    pub cgroup: Option<u64>,
}

impl Home {
    /// From the kernel's numbers, where 0 is unknown.
    pub fn from_kernel(netns: u32, cgroup: u64) -> Home {
        Home { netns: (netns != 0).then_some(netns), cgroup: (cgroup != 0).then_some(cgroup) }
    }
}

/// One decoded kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket; 0 when unknown.
    pub sk: u64,
    pub kind: EventKind,
    /// Local and remote endpoint, from this socket's point of view. `None` for timer
    /// events, which carry no address.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub task: Task,
    pub cpu: u8,
    /// On a close, with BTF: the socket's counters.
    pub counters: Option<Counters>,
    /// The socket's namespace (every event with a socket) and cgroup (where it starts: a
    /// connect, a listener's child).
    pub home: Home,
}

/// A socket the start-up snapshot found (through sock_diag), as it was then: the engine
/// starts it there and follows it from its first event on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenSocket {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub home: Home,
    /// The process holding it, as `ss -p` finds it (a descriptor under `/proc/PID/fd`).
    pub owner: Option<Owner>,
    /// A time-wait socket (in TIME_WAIT, or FIN_WAIT2 for an orphaned one): the time left
    /// on its timer. `None` for a full socket.
    pub time_wait_left_ns: Option<u64>,
}

/// One socket as `ss -tan` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRow {
    pub state: TcpState,
    /// For a listener: connections waiting to be accepted, and the most that may.
    pub recv_q: u32,
    pub send_q: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's inode (0 for a time-wait socket: no file refers to it).
    pub inode: u32,
    /// A time-wait socket's time left on its timer.
    pub time_wait_left_ns: Option<u64>,
}

/// What the trace says about itself, beside the engine's statistics: events read, lost,
/// undecodable, and the kernel side's own counts.
#[derive(Clone, Debug, Default)]
pub struct TraceCounts {
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub untracked_time_waits: u64,
    /// Kernel run statistics of the eBPF programs (live only).
    pub programs: Vec<ProgramStats>,
}

/// How much kernel time one program took (from the kernel's BPF statistics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_task_is_never_an_owner() {
        let task = Task { pid: 0, tid: 0, comm: Comm::new("swapper/0"), process_context: true };
        assert_eq!(task.as_owner(), None);
    }

    #[test]
    fn comm_is_cut_at_15_bytes_on_a_character_boundary() {
        assert_eq!(Comm::new("a-very-long-process-name").to_string(), "a-very-long-pro");
        // 7 two-byte letters make 14 bytes; an 8th would end past byte 15.
        assert_eq!(Comm::new("щщщщщщщщ").to_string(), "щщщщщщщ");
        assert_eq!(Comm::new("").as_bytes(), b"");
    }

    #[test]
    fn state_names_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_name(state.name()), Some(state));
        }
        assert_eq!(TcpState::from_name("ESTABLISHE"), None);
        assert_eq!(TcpState::from_name("established"), None);
        assert_eq!(TcpState::from_kernel(tcp_state::CLOSE), Some(TcpState::Closed));
        assert_eq!(TcpState::from_kernel(0), None);
    }
}
