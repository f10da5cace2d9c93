//! Every JSON line tcptrace writes or reads, defined once: the `--json` stream
//! ([`StreamLine`]), connection records (also `--export FILE.jsonl`), the summary, and
//! recordings ([`RecordingLine`]). `docs/json.md` documents these types, and a test parses
//! each of its examples with them.
//!
//! The hottest lines (events, connection records, recorded events) are written by hand
//! into a [`json_line::JsonLine`] and recorded events are read back by a hand-written
//! scanner, because measurements showed serde costing a large part of the per-event time;
//! tests check that those fast paths write and read exactly what serde does with these
//! types, line type by line type. Everything else goes through serde.

pub mod fast;
pub mod json_line;
mod named;

use std::{
    borrow::Cow,
    io::{self, Write},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    engine::{Carried, Closer, Role, TimeWaitEnd, TimeWaitKind},
    event::{Errno, Family, TcpState},
};

pub use crate::event::TcpInfo;

/// The recording format this tcptrace writes. Version 2 added `tcp_info` and `error` to
/// closes; version 3 each event's `netns`, `cgroup_id` where the kernel read it, and the
/// `netns` and `cgroup` lines that name them; version 4 the start-up snapshot's `snapshot`
/// and `seen_at_start` lines. Older recordings still read (without counters, namespaces
/// or cgroups: `null`).
pub const FORMAT_VERSION: u32 = 4;
/// The recording formats this tcptrace reads.
pub const READABLE_VERSIONS: [u32; 4] = [1, 2, 3, 4];

/// Writes one line through serde: for the lines that are not on the per-event path.
pub fn write_line(out: &mut impl Write, line: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// A kernel address (socket, timer), written as `"0x…"` in lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hex, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.strip_prefix("0x")
            .and_then(|digits| u64::from_str_radix(digits, 16).ok())
            .map(Hex)
            .ok_or_else(|| serde::de::Error::custom(format!("not a 0x… hex address: {text:?}")))
    }
}

/// A line of the `--json` stream (and of `--export FILE.jsonl`: its connection records).
// One at a time, off the per-event path (the hot lines are written by hand): its size
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamLine<'a> {
    #[serde(borrow)]
    Transition(Transition<StreamTransitionTail<'a>>),
    #[serde(borrow)]
    TimeWaitTimer(TimeWaitTimer<StreamOwner<'a>>),
    #[serde(borrow)]
    Reset(Reset<StreamOwner<'a>>),
    Lost(Lost),
    #[serde(borrow)]
    Connection(ConnectionRecord<'a>),
    #[serde(borrow)]
    Summary(Summary<'a>),
    #[serde(borrow)]
    Stuck(StuckRecord<'a>),
}

/// `stuck`: an owner's sockets that sit in one state too long (CLOSE_WAIT longer than
/// `--stuck-after`), written when one joins or leaves the group; `count` 0 when none is
/// left. Also the summary's `stuck`, at exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StuckRecord<'a> {
    pub ts_ns: u64,
    pub state: TcpState,
    pub pid: Option<u32>,
    #[serde(borrow)]
    pub comm: Option<Cow<'a, str>>,
    pub count: u64,
    /// When the oldest of them entered the state.
    pub oldest_ns: Option<u64>,
    /// A few of them, oldest first.
    pub sockets: Vec<StuckSocket>,
    /// With `--explain`.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub note: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// When it entered the state.
    pub since_ns: u64,
}

/// A line of a recording (`--record FILE`): a header, raw events with the task that was
/// current when each fired, losses, and the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordingLine<'a> {
    TcptraceRecording(RecordingHeader),
    #[serde(borrow)]
    Transition(Transition<RecordedTask<'a>>),
    #[serde(borrow)]
    TimeWaitTimer(TimeWaitTimer<RecordedTask<'a>>),
    #[serde(borrow)]
    Reset(Reset<RecordedTask<'a>>),
    Lost(Lost),
    #[serde(borrow)]
    Netns(NetnsName<'a>),
    #[serde(borrow)]
    Cgroup(CgroupPath<'a>),
    Snapshot(SnapshotMark),
    #[serde(borrow)]
    SeenAtStart(SeenAtStart<'a>),
    End(End),
}

/// `snapshot` (recordings): the start-up snapshot `began` (just after attaching, before
/// the events that may race it) or was `done` (after the `seen_at_start` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMark {
    pub event: SnapshotEvent,
    pub ts_ns: u64,
    /// With `done`: how many `seen_at_start` lines it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotEvent {
    Began,
    Done,
}

/// `seen_at_start` (recordings): a socket the start-up snapshot found, in the state it
/// was in, with its owner (as `ss -p` finds it) and, for a time-wait socket, the time
/// left on its timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeenAtStart<'a> {
    pub state: TcpState,
    #[serde(flatten)]
    pub addresses: Addresses,
    pub netns: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    #[serde(borrow)]
    pub comm: Option<Cow<'a, str>>,
    /// A time-wait socket (TIME_WAIT, or an orphaned FIN_WAIT2): its timer's time left.
    pub time_wait_left_ns: Option<u64>,
}

/// `netns` (recordings): the `ip netns` name of a namespace, before the first event in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsName<'a> {
    pub inode: u32,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `cgroup` (recordings): the path of a cgroup id from the cgroup2 root, before the first
/// event that names it; `null` when it was gone before tcptrace could resolve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPath<'a> {
    pub id: u64,
    #[serde(borrow)]
    pub path: Option<Cow<'a, str>>,
}

/// `transition`: a socket changed state. `T` is what the stream or the recording adds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition<T> {
    pub ts_ns: u64,
    pub sk: Hex,
    #[serde(flatten)]
    pub addresses: Addresses,
    /// The socket's network namespace (its inode); recordings before version 3 lack it.
    #[serde(default)]
    pub netns: Option<u32>,
    pub old: TcpState,
    pub new: TcpState,
    /// On a hand-over to a time-wait socket: that socket's timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_wait_timer: Option<Hex>,
    /// On a close, when the kernel's BTF gave the offsets: the socket's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_info: Option<TcpInfo>,
    /// On a close: the socket's pending error, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Errno>,
    #[serde(flatten)]
    pub tail: T,
}

/// `time_wait_timer`: the timer of a time-wait socket was re-armed, cancelled or ran out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeWaitTimer<T> {
    pub event: TimerEvent,
    pub ts_ns: u64,
    pub sk: Hex,
    /// In the stream: the endpoint the engine found for the timer. In a recording only on
    /// the `cancel` or `rearm` of a time-wait socket from before tracing began, which the
    /// kernel program read next to its timer (the first the engine hears of it).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Addresses>,
    /// In the stream: that endpoint's namespace. In a recording `null` (the kernel does not
    /// read it for timers) but on such a `cancel` or `rearm`, or missing before version 3.
    #[serde(default)]
    pub netns: Option<u32>,
    pub timer: Hex,
    /// With `rearm`: the new timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_jiffies: Option<u32>,
    #[serde(flatten)]
    pub tail: T,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerEvent {
    Rearm,
    Cancel,
    Expire,
}

/// `reset`: a RST was sent or received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reset<T> {
    pub direction: Direction,
    pub ts_ns: u64,
    pub sk: Hex,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Addresses>,
    /// The socket's namespace; `null` for a RST sent with no socket (a closed port).
    #[serde(default)]
    pub netns: Option<u32>,
    #[serde(flatten)]
    pub tail: T,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}

/// Both ends of a socket, from its own point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// Always written; the addresses say it too, so recordings made before it was written
    /// still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What the stream adds to a transition: the time in the old state, the note for
/// learners, and the socket's owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamTransitionTail<'a> {
    pub old_state_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub note: Option<Cow<'a, str>>,
    #[serde(flatten, borrow)]
    pub owner: StreamOwner<'a>,
}

/// The socket's owner as the engine attributes it (`null` when not known), and whether
/// the event fired in process context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamOwner<'a> {
    pub pid: Option<u32>,
    #[serde(borrow)]
    pub comm: Option<Cow<'a, str>>,
    pub process_context: bool,
}

/// What a recording adds to every event: the raw current task (attribution is the
/// engine's job on replay) and the CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedTask<'a> {
    pub pid: u32,
    pub tid: u32,
    #[serde(borrow)]
    pub comm: Cow<'a, str>,
    pub process_context: bool,
    /// Recordings before the CPU was recorded lack it: 0.
    #[serde(default)]
    pub cpu: u8,
    /// The socket's cgroup id, on the events the kernel reads it on (see `cgroup` lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

/// `lost`: events the kernel had to drop. Recordings say when the loss was noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ns: Option<u64>,
    pub count: u64,
}

/// A recording's first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingHeader {
    pub version: u32,
    pub ephemeral_ports: (u16, u16),
    /// CLOCK_REALTIME − CLOCK_MONOTONIC when recording started, to show times of day.
    pub realtime_offset_ns: i64,
}

/// A recording's last line: when tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub ts_ns: u64,
}

/// `connection`: one connection's whole life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord<'a> {
    pub id: u64,
    #[serde(borrow)]
    pub client: Option<EndpointRecord<'a>>,
    #[serde(borrow)]
    pub server: Option<EndpointRecord<'a>>,
    pub closed_first: Closer,
    pub incomplete: bool,
    /// With `--explain`.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub notes: Option<Vec<Cow<'a, str>>>,
}

/// One endpoint of a connection record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord<'a> {
    pub addr: SocketAddr,
    pub remote: SocketAddr,
    pub role: Role,
    /// It was there before tracing began: found by the start-up snapshot (or, a time-wait
    /// socket, by its timer). Its first state's `enter_ns` is then `null`.
    #[serde(default)]
    pub seen_at_start: bool,
    pub pid: Option<u32>,
    #[serde(borrow)]
    pub comm: Option<Cow<'a, str>>,
    /// The socket's network namespace (its inode).
    #[serde(default)]
    pub netns: Option<u32>,
    /// Its cgroup's path from the cgroup2 root, and the container and pod that path names.
    #[serde(default, borrow)]
    pub cgroup: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub container_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub pod_uid: Option<Cow<'a, str>>,
    pub states: Vec<StateRecord>,
    pub time_wait: Option<TimeWaitRecord>,
    /// `null` when the close was not seen with its counters.
    pub tcp_info: Option<TcpInfo>,
    /// The socket's pending error when it closed (`ECONNREFUSED`, `ETIMEDOUT`, …).
    pub error: Option<Errno>,
    pub reset_sent_ns: Option<u64>,
    pub reset_received_ns: Option<u64>,
    pub incomplete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub state: TcpState,
    pub enter_ns: Option<u64>,
    pub duration_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWaitRecord {
    /// `null` for one that was there before tracing began: its start was not seen.
    pub start_ns: Option<u64>,
    /// For one the start-up snapshot found: the time its timer had left then.
    #[serde(default)]
    pub remaining_at_start_ns: Option<u64>,
    pub end_ns: Option<u64>,
    pub duration_ns: Option<u64>,
    pub rearmed: u32,
    pub end: TimeWaitEnd,
    pub kind: TimeWaitKind,
    pub became_time_wait_ns: Option<u64>,
    pub time_left_ns: Option<u64>,
}

/// `summary`: the last line of the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary<'a> {
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub untracked_time_waits: u64,
    pub connections: u64,
    pub closed_first: ClosedFirstCounts,
    pub incomplete: u64,
    pub aged_out: u64,
    /// Sockets there before tracing began (the start-up snapshot's, and time-wait sockets
    /// met by their timer).
    #[serde(default)]
    pub seen_at_start: u64,
    pub time_wait_by_local: Vec<TimeWaitByLocal>,
    /// Connects that never became connections, by the error they ended with.
    pub failed_connects: std::collections::BTreeMap<String, u64>,
    /// What the sockets that closed with their counters carried, added up.
    pub carried: Carried,
    pub ephemeral_ports: (u16, u16),
    pub pile_ups: Vec<PileUp>,
    /// What was still stuck at exit, one entry per owner.
    #[serde(default, borrow)]
    pub stuck: Vec<StuckRecord<'a>>,
    #[serde(borrow)]
    pub kernel_programs: Vec<KernelProgram<'a>>,
}

/// Connections by who closed first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedFirstCounts {
    pub client: u64,
    pub server: u64,
    pub simultaneous: u64,
    pub client_reset: u64,
    pub server_reset: u64,
    pub unknown: u64,
}

impl ClosedFirstCounts {
    pub fn count(&mut self, closer: Closer) -> &mut u64 {
        match closer {
            Closer::Client => &mut self.client,
            Closer::Server => &mut self.server,
            Closer::Simultaneous => &mut self.simultaneous,
            Closer::ClientReset => &mut self.client_reset,
            Closer::ServerReset => &mut self.server_reset,
            Closer::Unknown => &mut self.unknown,
        }
    }
}

/// TIME-WAIT durations of one local endpoint: `count` ended, `open` still open at exit;
/// the durations are `null` while none ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWaitByLocal {
    /// The namespace the endpoint is in (each has its own addresses and ports).
    pub netns: Option<u32>,
    pub local: SocketAddr,
    pub count: u64,
    pub open: u64,
    pub min_ns: Option<u64>,
    pub median_ns: Option<u64>,
    pub max_ns: Option<u64>,
}

/// TIME-WAIT sockets on ephemeral ports from `local_ip` toward `remote` that at one
/// moment held at least half of the ephemeral port range (`peak` of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PileUp {
    pub netns: Option<u32>,
    pub local_ip: std::net::IpAddr,
    pub remote: SocketAddr,
    pub peak: u64,
}

/// One eBPF program's kernel run statistics (0 unless `kernel.bpf_stats_enabled` is 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelProgram<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub runs: u64,
    pub run_time_ns: u64,
}

#[cfg(test)]
mod tests;
