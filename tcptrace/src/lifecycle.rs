//! The lifecycle engine: decoded events in, attributed events and finished connection
//! records out. Pure: no I/O and no clock of its own (the caller says what time it is), so
//! live tracing, replay of a recording and the tests all drive the same code.
//!
//! - Each socket becomes an [`Endpoint`]: every state with its entry time and duration, its
//!   role (client: went through SYN_SENT; server: child of a LISTEN socket), its owner.
//! - Both endpoints of a connection on this host are paired by their mirrored 4-tuples.
//! - A socket entering TIME-WAIT hands over to a kernel time-wait socket whose life is its
//!   timer: `cancel` then `expire` is a natural end, `cancel` alone an early kill, `cancel`
//!   then `rearm` a restart (a FIN or a retransmission arrived).
//! - Who closed first is read from the states and resets themselves ([`Closer`]).

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use crate::event::{Comm, EventKind, Owner, Task, TcpEvent, TcpState};

/// Fast, randomly seeded hashing: some keys (4-tuples of remote peers) are chosen by others.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// TCP_TIMEWAIT_LEN: the kernel's fixed TIME-WAIT length (2 × MSL on Linux).
pub const TIME_WAIT_LEN_NS: u64 = 60_000_000_000;
/// Events are processed in timestamp order once they are this old (events from different
/// CPUs can reach the ring buffer slightly out of order).
pub const REORDER_WINDOW_NS: u64 = 5_000_000;
/// A time-wait timer's expiry or re-arm follows its cancel within microseconds; a cancel
/// with nothing after it for this long was an early kill.
const CANCEL_GRACE_NS: u64 = 1_000_000;
/// A connection is handed out this long after its last socket closed and its time-wait
/// ended: the kernel reports some things just after (a RST's `tcp_send_reset` fires after
/// the packet went out, when on loopback the peer has already closed).
const FINISH_GRACE_NS: u64 = 1_000_000;
/// A socket that reached CLOSED is still found by its address this long, for a RST the
/// kernel reports just after (an abort sets CLOSED first). Not for all of its time-wait: the
/// table stays small, so its lookups stay in the cache.
const CLOSED_LOOKUP_NS: u64 = 1_000_000_000;
/// How often connections are checked for being stuck (their events lost).
const SWEEP_INTERVAL_NS: u64 = 10_000_000_000;
/// A closed connection whose time-wait end was never seen (lost events) is given up after this.
const TIME_WAIT_GIVE_UP_NS: u64 = 3 * TIME_WAIT_LEN_NS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
    Unknown,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }

    fn opposite(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
            Role::Unknown => Role::Unknown,
        }
    }
}

/// Who closed the connection first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Closer {
    Client,
    Server,
    /// Both sent a FIN before receiving the other's (FIN_WAIT1 → CLOSING).
    Simultaneous,
    ClientReset,
    ServerReset,
    Unknown,
}

impl Closer {
    pub const ALL: [Closer; 6] = [
        Closer::Client,
        Closer::Server,
        Closer::Simultaneous,
        Closer::ClientReset,
        Closer::ServerReset,
        Closer::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Server => "server",
            Closer::Simultaneous => "simultaneous",
            Closer::ClientReset => "client_reset",
            Closer::ServerReset => "server_reset",
            Closer::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSpan {
    pub state: TcpState,
    /// `None` for the state a socket was in when tracing first saw it.
    pub enter_ns: Option<u64>,
    /// `None` while the endpoint is still in this state (or for the final CLOSED).
    pub duration_ns: Option<u64>,
}

/// One state: durations follow from the next state's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    state: TcpState,
    /// [`UNKNOWN_NS`] for the state a socket was in when tracing first saw it.
    enter_ns: u64,
}

const UNKNOWN_NS: u64 = u64::MAX;

impl Step {
    fn enter(&self) -> Option<u64> {
        (self.enter_ns != UNKNOWN_NS).then_some(self.enter_ns)
    }
}

/// States stored inline: a whole life is 5 states (SYN_SENT … CLOSED), so almost no
/// endpoint allocates; longer ones spill the rest to the heap.
const INLINE_STEPS: usize = 5;

/// An endpoint's states in order, without a heap allocation for the usual five.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Steps {
    enter_ns: [u64; INLINE_STEPS],
    states: [TcpState; INLINE_STEPS],
    len: u8,
    /// Past the inline ones: rare, so a boxed slice (8 bytes here) regrown on each push.
    more: Option<Box<[Step]>>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            enter_ns: [0; INLINE_STEPS],
            states: [TcpState::Closed; INLINE_STEPS],
            len: 0,
            more: None,
        }
    }

    fn push(&mut self, step: Step) {
        let len = usize::from(self.len);
        if len < INLINE_STEPS {
            self.enter_ns[len] = step.enter_ns;
            self.states[len] = step.state;
            self.len += 1;
        } else {
            let more = self.more.take().unwrap_or_default();
            self.more = Some(more.iter().copied().chain([step]).collect());
        }
    }

    fn iter(&self) -> impl Iterator<Item = Step> + '_ {
        let inline = (0..usize::from(self.len))
            .map(|i| Step { state: self.states[i], enter_ns: self.enter_ns[i] });
        inline.chain(self.more.iter().flat_map(|more| more.iter().copied()))
    }

    fn last(&self) -> Option<Step> {
        match (&self.more, usize::from(self.len)) {
            (Some(more), _) if !more.is_empty() => more.last().copied(),
            (_, 0) => None,
            (_, len) => {
                Some(Step { state: self.states[len - 1], enter_ns: self.enter_ns[len - 1] })
            }
        }
    }

    fn passed(&self, state: TcpState) -> bool {
        self.iter().any(|step| step.state == state)
    }

    fn entered(&self, state: TcpState) -> Option<u64> {
        self.iter().find(|step| step.state == state).and_then(|step| step.enter())
    }

    /// When this side sent its FIN (entered FIN_WAIT1 or LAST_ACK).
    fn fin_sent_ns(&self) -> Option<u64> {
        match (self.entered(TcpState::FinWait1), self.entered(TcpState::LastAck)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWaitEnd {
    /// The timer ran out.
    Expired,
    /// Cancelled early: a RST, a new connection reusing the 4-tuple, namespace teardown.
    Killed,
    /// Still in TIME-WAIT when tracing stopped.
    Open,
}

impl TimeWaitEnd {
    pub fn name(self) -> &'static str {
        match self {
            TimeWaitEnd::Expired => "expired",
            TimeWaitEnd::Killed => "killed",
            TimeWaitEnd::Open => "open",
        }
    }
}

/// What the kernel's time-wait socket stood for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWaitKind {
    /// A real TIME-WAIT: this side's FIN was acknowledged and the peer's FIN arrived.
    TimeWait,
    /// An orphaned FIN_WAIT2 (the application closed; the peer's FIN has not come), kept by a
    /// time-wait socket for `tcp_fin_timeout`. It becomes a TIME-WAIT if the FIN arrives.
    FinWait2,
}

impl TimeWaitKind {
    pub fn name(self) -> &'static str {
        match self {
            TimeWaitKind::TimeWait => "time_wait",
            TimeWaitKind::FinWait2 => "fin_wait2",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWait {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// How often the timer was started again (each restarts the 60 s).
    pub rearmed: u32,
    pub end: TimeWaitEnd,
    pub kind: TimeWaitKind,
    /// When a FIN_WAIT2 time-wait socket got the peer's FIN and became a real TIME-WAIT.
    pub became_time_wait_ns: Option<u64>,
    /// For `Open`: time left until the timer runs out, from the last arming.
    pub time_left_ns: Option<u64>,
    pub timer: u64,
    last_armed_ns: u64,
    pending_cancel_ns: Option<u64>,
}

impl TimeWait {
    pub fn duration_ns(&self) -> Option<u64> {
        self.end_ns.map(|end| end.saturating_sub(self.start_ns))
    }
}

/// One socket's life, as handed out with its [`Connection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// This socket's address and its peer's.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Role,
    pub owner: Option<Owner>,
    /// Every state in order (see [`Endpoint::states`]).
    steps: Steps,
    pub time_wait: Option<Box<TimeWait>>,
    pub reset_sent_ns: Option<u64>,
    pub reset_received_ns: Option<u64>,
    /// Events of this endpoint may be missing (a gap in its states, or events lost).
    pub incomplete: bool,
    /// (time, in process context) of a close straight to CLOSED without FIN: an abort or RST.
    abort: Option<(u64, bool)>,
}

impl Endpoint {
    /// Every state the endpoint passed through, in order, with entry times and durations.
    pub fn states(&self) -> impl Iterator<Item = StateSpan> + '_ {
        let mut steps = self.steps.iter().peekable();
        std::iter::from_fn(move || {
            let step = steps.next()?;
            let next = steps.peek().map(|next| next.enter_ns);
            Some(StateSpan {
                state: step.state,
                enter_ns: step.enter(),
                duration_ns: step.enter().zip(next).map(|(enter, next)| next.saturating_sub(enter)),
            })
        })
    }

    pub fn current_state(&self) -> Option<TcpState> {
        self.steps.last().map(|step| step.state)
    }

    pub fn is_closed(&self) -> bool {
        self.current_state() == Some(TcpState::Closed)
    }

    pub fn passed(&self, state: TcpState) -> bool {
        self.steps.passed(state)
    }

    /// When this endpoint first entered `state`.
    pub fn entered(&self, state: TcpState) -> Option<u64> {
        self.steps.entered(state)
    }
}

/// An IP address and port in 20 bytes (a `SocketAddr` takes 32): IPv4 is kept as an
/// IPv4-mapped IPv6 address, with `v6` telling the two families apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Address {
    ip: [u8; 16],
    port: u16,
    v6: bool,
}

impl From<SocketAddr> for Address {
    fn from(address: SocketAddr) -> Address {
        let (ip, v6) = match address.ip() {
            IpAddr::V4(ip) => (ip.to_ipv6_mapped(), false),
            IpAddr::V6(ip) => (ip, true),
        };
        Address { ip: ip.octets(), port: address.port(), v6 }
    }
}

impl From<Address> for SocketAddr {
    fn from(address: Address) -> SocketAddr {
        let ip = Ipv6Addr::from(address.ip);
        match ip.to_ipv4_mapped().filter(|_| !address.v6) {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), address.port),
            None => SocketAddr::new(IpAddr::V6(ip), address.port),
        }
    }
}

/// No time yet, in [`Side`]'s optional times (an `Option<u64>` takes twice the room).
const NEVER: u64 = u64::MAX;

fn at(ns: u64) -> Option<u64> {
    (ns != NEVER).then_some(ns)
}

/// An endpoint while the engine follows it: compact, in the engine's side table, and
/// turned into an [`Endpoint`] when its connection is handed out.
struct Side {
    sk: u64,
    steps: Steps,
    reset_sent_ns: u64,
    reset_received_ns: u64,
    /// A close straight to CLOSED without FIN: an abort or RST ([`NEVER`] if none).
    abort_ns: u64,
    local: Address,
    remote: Address,
    /// The socket's owner; pid 0 while unknown (the idle task never owns one).
    owner: Owner,
    connection: Index,
    /// Its time-wait socket in the engine's time-wait table, or [`NO_INDEX`].
    time_wait: Index,
    role: Role,
    incomplete: bool,
    abort_in_process: bool,
}

impl Side {
    fn is_closed(&self) -> bool {
        self.steps.last().is_some_and(|step| step.state == TcpState::Closed)
    }

    fn tuple(&self) -> (Address, Address) {
        (self.local, self.remote)
    }

    fn owner(&self) -> Option<Owner> {
        (self.owner.pid != 0).then_some(self.owner)
    }

    /// The current task becomes the owner when it can be trusted to be one.
    fn learn_owner(&mut self, task: &Task) -> Option<Owner> {
        if let Some(owner) = task.as_owner() {
            self.owner = owner;
        }
        self.owner()
    }

    fn into_endpoint(self, time_wait: Option<TimeWait>) -> Endpoint {
        Endpoint {
            local: self.local.into(),
            remote: self.remote.into(),
            role: self.role,
            owner: self.owner(),
            steps: self.steps,
            time_wait: time_wait.map(Box::new),
            reset_sent_ns: at(self.reset_sent_ns),
            reset_received_ns: at(self.reset_received_ns),
            incomplete: self.incomplete,
            abort: at(self.abort_ns).map(|ns| (ns, self.abort_in_process)),
        }
    }
}

/// A position in a [`Slab`].
type Index = u32;
const NO_INDEX: Index = Index::MAX;

/// A table whose freed slots are reused: it stays at the size of the most entries live at
/// once, and long churn fragments no heap (nothing is allocated per entry).
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<Index>,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab { entries: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, value: T) -> Index {
        match self.free.pop() {
            Some(index) => {
                self.entries[index as usize] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                (self.entries.len() - 1) as Index
            }
        }
    }

    fn remove(&mut self, index: Index) -> Option<T> {
        let value = self.entries.get_mut(index as usize)?.take()?;
        self.free.push(index);
        Some(value)
    }

    fn get(&self, index: Index) -> Option<&T> {
        self.entries.get(index as usize)?.as_ref()
    }

    fn get_mut(&mut self, index: Index) -> Option<&mut T> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    fn iter(&self) -> impl Iterator<Item = (Index, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| Some((index as Index, entry.as_ref()?)))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().flatten()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub id: u64,
    /// One endpoint, or both when both ends are on this host.
    pub endpoints: Vec<Endpoint>,
    pub closed_first: Closer,
    pub incomplete: bool,
}

impl Connection {
    /// The endpoint in `role`, where a role is known from the states or from the peer.
    pub fn endpoint(&self, role: Role) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| self.role_of(e) == role)
    }

    pub fn role_of(&self, endpoint: &Endpoint) -> Role {
        if endpoint.role != Role::Unknown {
            return endpoint.role;
        }
        self.endpoints
            .iter()
            .find(|other| !std::ptr::eq(*other, endpoint))
            .map_or(Role::Unknown, |other| other.role.opposite())
    }
}

/// What the engine knows about one event, for the live stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribution {
    /// The socket's owner: the current task in process context, else the one learned earlier.
    pub owner: Option<Owner>,
    /// Time spent in the old state, when its start was seen.
    pub old_state_ns: Option<u64>,
    /// For events without addresses (time-wait timers): the endpoint's (local, remote).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

impl Attribution {
    fn owner(owner: Option<Owner>) -> Attribution {
        Attribution { owner, old_state_ns: None, addresses: None }
    }
}

pub enum Output<'a> {
    Event(&'a TcpEvent, Attribution),
    Connection(&'a Connection),
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Connections tracked at once before the least recently active are aged out.
    pub max_connections: usize,
    /// `net.ipv4.ip_local_port_range`, for the TIME-WAIT pile-up warning.
    pub ephemeral_ports: (u16, u16),
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_connections: 1 << 18, ephemeral_ports: (32768, 60999) }
    }
}

/// How many TIME-WAIT durations a local endpoint keeps for its median: memory stays
/// bounded however long tcptrace runs.
const DURATION_SAMPLE: usize = 1024;

/// TIME-WAIT durations of one local endpoint: exact count, minimum and maximum, and a
/// uniform sample (reservoir) of at most [`DURATION_SAMPLE`] durations for the median.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeWaitStats {
    pub count: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    sample: Vec<u64>,
    pub open: u64,
}

impl TimeWaitStats {
    fn add(&mut self, duration_ns: u64) {
        self.count += 1;
        self.min_ns = if self.count == 1 { duration_ns } else { self.min_ns.min(duration_ns) };
        self.max_ns = self.max_ns.max(duration_ns);
        if self.sample.len() < DURATION_SAMPLE {
            self.sample.push(duration_ns);
        } else {
            // Keep each of the `count` durations with equal chance (Algorithm R), with a
            // cheap deterministic generator: no need for cryptographic randomness here.
            let slot = (self.count.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % self.count;
            if let Some(kept) = self.sample.get_mut(slot as usize) {
                *kept = duration_ns;
            }
        }
    }

    /// The median: exact up to [`DURATION_SAMPLE`] durations, then that of the sample.
    pub fn median_ns(&self) -> Option<u64> {
        let mut sorted = self.sample.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// TIME-WAIT sockets on ephemeral ports toward one remote endpoint from one local address:
/// each holds a port that a new connection to that remote endpoint can't use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPressure {
    pub now: u64,
    pub peak: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections: u64,
    pub closed_first: HashMap<Closer, u64>,
    pub time_wait_by_local: HashMap<SocketAddr, TimeWaitStats>,
    pub time_wait_toward_remote: HashMap<(IpAddr, SocketAddr), PortPressure>,
    pub incomplete: u64,
    /// Connections dropped unfinished to keep memory bounded.
    pub aged_out: u64,
    /// Timer or reset events for sockets the engine never saw.
    pub unmatched_events: u64,
    pub lost_events: u64,
}

/// A connection being followed: its sides sit in the engine's side table.
struct Tracked {
    id: u64,
    last_activity_ns: u64,
    /// One side, or two when both ends are on this host ([`NO_INDEX`] for none).
    sides: [Index; 2],
    incomplete: bool,
}

impl Tracked {
    fn sides(&self) -> impl Iterator<Item = Index> + use<> {
        self.sides.into_iter().filter(|&side| side != NO_INDEX)
    }
}

pub struct Engine {
    options: EngineOptions,
    /// Events waiting out the reorder window, sorted by time, then arrival. They nearly
    /// always arrive in order, so this is a queue with the odd insertion near its back.
    pending: VecDeque<TcpEvent>,
    next_id: u64,
    connections: Slab<Tracked>,
    sides: Slab<Side>,
    time_waits: Slab<TimeWait>,
    /// Indexes into `sides`. A lookup checks that the side still has the key, so that a
    /// socket (or timer) address reused by the kernel never reaches another socket's side.
    by_sk: Map<u64, Index>,
    /// Sockets that reached CLOSED in the last [`CLOSED_LOOKUP_NS`].
    closed_sk: Map<u64, Index>,
    /// (time it closed, socket, side) for `closed_sk`, in time order.
    closed_order: VecDeque<(u64, u64, Index)>,
    by_timer: Map<u64, Index>,
    /// Sides not yet paired with their peer, by (local, remote).
    by_tuple: Map<(Address, Address), Index>,
    /// (cancel time, timer), in time order.
    pending_cancels: VecDeque<(u64, u64)>,
    /// (time it finished, connection, its id), in time order, waiting out `FINISH_GRACE_NS`.
    finishing: VecDeque<(u64, Index, u64)>,
    last_sweep_ns: u64,
    newest_ns: u64,
    /// Events up to this time may have lost company: connections they touch are incomplete.
    loss_horizon_ns: Option<u64>,
    stats: Stats,
}

impl Engine {
    pub fn new(options: EngineOptions) -> Engine {
        Engine {
            options,
            pending: VecDeque::new(),
            next_id: 1,
            connections: Slab::new(),
            sides: Slab::new(),
            time_waits: Slab::new(),
            by_sk: Map::default(),
            closed_sk: Map::default(),
            closed_order: VecDeque::new(),
            by_timer: Map::default(),
            by_tuple: Map::default(),
            pending_cancels: VecDeque::new(),
            finishing: VecDeque::new(),
            last_sweep_ns: 0,
            newest_ns: 0,
            loss_horizon_ns: None,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Connections being tracked now.
    pub fn tracked(&self) -> usize {
        self.connections.len()
    }

    /// Queues an event; it is processed by [`Engine::advance`] once it is out of the
    /// reorder window.
    pub fn push(&mut self, event: TcpEvent) {
        self.newest_ns = self.newest_ns.max(event.ts_ns);
        if self.pending.back().is_none_or(|last| last.ts_ns <= event.ts_ns) {
            self.pending.push_back(event);
        } else {
            // After every queued event of the same time or earlier: ties keep arrival order.
            let at = self.pending.partition_point(|queued| queued.ts_ns <= event.ts_ns);
            self.pending.insert(at, event);
        }
    }

    /// `count` events were lost before reaching us, as learnt at `noticed_ns`: any
    /// connection tracked now, or touched by an event from before then, may miss some.
    /// Events from before then may still be on their way (the ring is drained apart from
    /// reading its loss counter), so the time, not the events seen so far, draws the line.
    pub fn lost(&mut self, count: u64, noticed_ns: u64) {
        self.stats.lost_events += count;
        let horizon = noticed_ns.max(self.newest_ns);
        self.loss_horizon_ns = Some(self.loss_horizon_ns.map_or(horizon, |h| h.max(horizon)));
        for tracked in self.connections.values_mut() {
            tracked.incomplete = true;
        }
    }

    /// Processes queued events up to `now_ns - REORDER_WINDOW_NS`, resolves time-wait
    /// cancels, ages out what must go, and hands everything that is ready to `out`.
    pub fn advance(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        self.process_until(now_ns.saturating_sub(REORDER_WINDOW_NS), out);
        self.settle(now_ns, out);
        if now_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_INTERVAL_NS {
            self.last_sweep_ns = now_ns;
            self.sweep(now_ns, out);
        }
    }

    /// The end of the trace at `now_ns`: everything queued is processed and every
    /// connection still tracked is handed out, its time-wait `Open` with the time left.
    pub fn finish(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        let now_ns = now_ns.max(self.newest_ns);
        self.process_until(u64::MAX, out);
        self.settle(u64::MAX, out);
        let mut by_id: Vec<(u64, Index)> =
            self.connections.iter().map(|(index, tracked)| (tracked.id, index)).collect();
        by_id.sort_unstable();
        for (_, index) in by_id {
            let sides = self.connections.get(index).map(Tracked::sides);
            for side in sides.into_iter().flatten() {
                if let Some(tw) = self.time_wait_mut(side).filter(|tw| tw.end == TimeWaitEnd::Open)
                {
                    let expires = tw.last_armed_ns + TIME_WAIT_LEN_NS;
                    tw.time_left_ns = Some(expires.saturating_sub(now_ns));
                }
            }
            self.emit(index, out);
        }
    }

    fn process_until(&mut self, until_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        while self.pending.front().is_some_and(|queued| queued.ts_ns <= until_ns) {
            let Some(event) = self.pending.pop_front() else { break };
            let ts = event.ts_ns;
            self.settle(ts, out);
            self.process(&event, out);
        }
    }

    fn process(&mut self, event: &TcpEvent, out: &mut impl FnMut(Output<'_>)) {
        let (attribution, touched) = match event.kind {
            EventKind::Transition { old, new, time_wait_timer } => {
                self.transition(event, old, new, time_wait_timer)
            }
            EventKind::TimeWaitRearm { timer, .. } => self.timer_event(event, timer, |tw, ts| {
                tw.rearmed += 1;
                tw.pending_cancel_ns = None;
                tw.last_armed_ns = ts;
                if tw.kind == TimeWaitKind::FinWait2 {
                    tw.kind = TimeWaitKind::TimeWait;
                    tw.became_time_wait_ns = Some(ts);
                }
            }),
            EventKind::TimeWaitCancel { timer } => {
                let result =
                    self.timer_event(event, timer, |tw, ts| tw.pending_cancel_ns = Some(ts));
                if result.1.is_some() {
                    self.pending_cancels.push_back((event.ts_ns, timer));
                }
                result
            }
            EventKind::TimeWaitExpire { timer } => {
                let result = self.timer_event(event, timer, |tw, ts| {
                    tw.end = TimeWaitEnd::Expired;
                    tw.end_ns = Some(ts);
                    tw.pending_cancel_ns = None;
                });
                if result.1.is_some() {
                    self.time_wait_ended(timer);
                }
                result
            }
            EventKind::ResetSent | EventKind::ResetReceived => self.reset(event),
        };
        out(Output::Event(event, attribution));
        if let Some(index) = touched {
            let lossy = self.loss_horizon_ns.is_some_and(|horizon| event.ts_ns <= horizon);
            if let Some(tracked) = self.connections.get_mut(index) {
                tracked.last_activity_ns = event.ts_ns;
                tracked.incomplete |= lossy;
            }
            // Only a close or a time-wait's end can finish a connection (kills are found
            // where they are resolved).
            if matches!(
                event.kind,
                EventKind::Transition { new: TcpState::Closed, .. }
                    | EventKind::TimeWaitExpire { .. }
            ) {
                self.finish_if_done(index, event.ts_ns);
            }
        }
    }

    /// The side `index` points to in `map` under `sk`, if it is still that socket's.
    fn side_of_socket(&self, map: &Map<u64, Index>, sk: u64) -> Option<Index> {
        map.get(&sk).copied().filter(|&side| self.sides.get(side).is_some_and(|s| s.sk == sk))
    }

    /// The unpaired side with this (local, remote), if it still has them.
    fn side_of_tuple(&self, tuple: (Address, Address)) -> Option<Index> {
        let side = *self.by_tuple.get(&tuple)?;
        (self.sides.get(side)?.tuple() == tuple).then_some(side)
    }

    /// The live side whose time-wait socket has `timer`.
    fn side_of_timer(&self, timer: u64) -> Option<Index> {
        let side = *self.by_timer.get(&timer)?;
        let tw = self.time_waits.get(self.sides.get(side)?.time_wait)?;
        (tw.timer == timer).then_some(side)
    }

    fn side(&self, index: Index) -> &Side {
        self.sides.get(index).expect("indexed sides exist")
    }

    fn side_mut(&mut self, index: Index) -> &mut Side {
        self.sides.get_mut(index).expect("indexed sides exist")
    }

    fn time_wait_mut(&mut self, side: Index) -> Option<&mut TimeWait> {
        let index = self.sides.get(side)?.time_wait;
        self.time_waits.get_mut(index)
    }

    fn transition(
        &mut self,
        event: &TcpEvent,
        old: TcpState,
        new: TcpState,
        time_wait_timer: Option<u64>,
    ) -> (Attribution, Option<Index>) {
        let task_owner = event.task.as_owner();
        let Some((local, remote)) = event.addresses else {
            return (Attribution::owner(task_owner), None);
        };
        let index = match self.side_of_socket(&self.by_sk, event.sk) {
            Some(index) => index,
            None => {
                // Listening sockets are not connections; a fresh socket that is not yet
                // anything (CLOSED → CLOSED) neither.
                if new == TcpState::Listen || old == TcpState::Listen && new == TcpState::Closed {
                    return (Attribution::owner(task_owner), None);
                }
                self.new_side(event, old, (local, remote))
            }
        };
        let side = self.side_mut(index);
        let owner = side.learn_owner(&event.task);
        let mut old_state_ns = None;
        if let Some(last) = side.steps.last() {
            if last.state != old {
                side.incomplete = true; // a gap: some transitions were not seen
            }
            old_state_ns = last.enter().map(|enter| event.ts_ns.saturating_sub(enter));
            if old == new && last.state == new {
                // The kernel reports some same-state changes (CLOSING → CLOSING).
                let attribution = Attribution { owner, old_state_ns, addresses: None };
                return (attribution, Some(side.connection));
            }
        }
        side.steps.push(Step { state: new, enter_ns: event.ts_ns });
        if remote.port() != 0 && local.port() != 0 {
            side.local = local.into();
            side.remote = remote.into();
        }
        let aborted = new == TcpState::Closed
            && matches!(
                old,
                TcpState::Established
                    | TcpState::SynSent
                    | TcpState::SynReceived
                    | TcpState::CloseWait
            );
        if aborted && side.abort_ns == NEVER {
            side.abort_ns = event.ts_ns;
            side.abort_in_process = event.task.process_context;
        }
        let tuple = side.tuple();
        let tuple_known = tuple.0.port != 0 && tuple.1.port != 0;

        if new == TcpState::Closed {
            self.by_sk.remove(&event.sk);
            self.closed_sk.insert(event.sk, index);
            self.closed_order.push_back((event.ts_ns, event.sk, index));
            if let Some(timer) = time_wait_timer {
                self.start_time_wait(index, event.ts_ns, old, timer);
            }
        }
        if tuple_known {
            self.pair(index, tuple);
        }
        if matches!(new, TcpState::LastAck | TcpState::FinWait1) {
            self.peer_sent_fin(index, tuple, event.ts_ns);
        }
        (Attribution { owner, old_state_ns, addresses: None }, Some(self.side(index).connection))
    }

    fn new_side(
        &mut self,
        event: &TcpEvent,
        old: TcpState,
        tuple: (SocketAddr, SocketAddr),
    ) -> Index {
        let role = match (old, event.kind) {
            (TcpState::Closed, EventKind::Transition { new: TcpState::SynSent, .. }) => {
                Role::Client
            }
            (TcpState::Listen, EventKind::Transition { new: TcpState::SynReceived, .. }) => {
                Role::Server
            }
            _ => Role::Unknown,
        };
        let mut steps = Steps::new();
        if role == Role::Unknown {
            // Seen mid-way: the state it was in, since an unknown time.
            steps.push(Step { state: old, enter_ns: UNKNOWN_NS });
        }
        let id = self.next_id;
        self.next_id += 1;
        let connection = self.connections.insert(Tracked {
            id,
            last_activity_ns: event.ts_ns,
            sides: [NO_INDEX; 2],
            incomplete: false,
        });
        let index = self.sides.insert(Side {
            sk: event.sk,
            steps,
            reset_sent_ns: NEVER,
            reset_received_ns: NEVER,
            abort_ns: NEVER,
            local: tuple.0.into(),
            remote: tuple.1.into(),
            owner: Owner { pid: 0, comm: Comm::default() },
            connection,
            time_wait: NO_INDEX,
            role,
            incomplete: role == Role::Unknown,
            abort_in_process: false,
        });
        if let Some(tracked) = self.connections.get_mut(connection) {
            tracked.sides[0] = index;
        }
        self.by_sk.insert(event.sk, index);
        self.closed_sk.remove(&event.sk);
        if self.connections.len() > self.options.max_connections {
            self.age_out_least_recent(connection);
        }
        index
    }

    /// Joins this side's connection with the peer's, whose tuple mirrors it, if there is one.
    fn pair(&mut self, index: Index, tuple: (Address, Address)) {
        let single = |c: Index| self.connections.get(c).is_some_and(|t| t.sides[1] == NO_INDEX);
        let mine = self.side(index).connection;
        if !single(mine) {
            return; // already paired
        }
        let (local, remote) = tuple;
        let Some(peer) = self.side_of_tuple((remote, local)) else {
            // The newest side with a tuple wins it: an older one has closed.
            self.by_tuple.insert(tuple, index);
            return;
        };
        let theirs = self.side(peer).connection;
        if mine == theirs || !single(theirs) {
            return;
        }
        self.by_tuple.remove(&(remote, local));
        if self.by_tuple.get(&tuple) == Some(&index) {
            self.by_tuple.remove(&tuple);
        }
        let Some(joining) = self.connections.remove(mine) else { return };
        if let Some(tracked) = self.connections.get_mut(theirs) {
            tracked.sides[1] = index;
            tracked.incomplete |= joining.incomplete;
            tracked.last_activity_ns = tracked.last_activity_ns.max(joining.last_activity_ns);
        }
        self.side_mut(index).connection = theirs;
    }

    fn start_time_wait(&mut self, index: Index, ts: u64, old: TcpState, timer: u64) {
        // A timer address still mapped belongs to an earlier time-wait socket that was
        // killed (its memory was reused): close that one too. One probe of the table both
        // finds it and maps the address to the new one.
        if let Some(stale) = self.by_timer.insert(timer, index)
            && let Some(tw) = self.time_wait_mut(stale)
            && tw.timer == timer
        {
            if tw.end == TimeWaitEnd::Open {
                tw.end = TimeWaitEnd::Killed;
                tw.end_ns = Some(tw.pending_cancel_ns.unwrap_or(ts));
            }
            self.release_port(stale);
            // Its connection may be over now, like after any other kill.
            let connection = self.side(stale).connection;
            self.finish_if_done(connection, ts);
        }
        let side = self.side(index);
        let peer_fin = self
            .connections
            .get(side.connection)
            .into_iter()
            .flat_map(Tracked::sides)
            .filter(|&other| other != index)
            .find_map(|other| self.side(other).steps.fin_sent_ns());
        let kind = if old == TcpState::Closing || peer_fin.is_some_and(|fin| fin <= ts) {
            TimeWaitKind::TimeWait
        } else {
            TimeWaitKind::FinWait2
        };
        if let Some(key) = port_pressure_key(side, self.options.ephemeral_ports) {
            self.port_pressure(key, true);
        }
        let previous = self.side(index).time_wait;
        self.time_waits.remove(previous);
        let time_wait = self.time_waits.insert(TimeWait {
            start_ns: ts,
            end_ns: None,
            rearmed: 0,
            end: TimeWaitEnd::Open,
            kind,
            became_time_wait_ns: None,
            time_left_ns: None,
            timer,
            last_armed_ns: ts,
            pending_cancel_ns: None,
        });
        self.side_mut(index).time_wait = time_wait;
    }

    /// The peer of the side with `tuple` sent its FIN: an orphaned FIN_WAIT2 time-wait
    /// socket on the other side becomes a real TIME-WAIT.
    fn peer_sent_fin(&mut self, index: Index, tuple: (Address, Address), ts: u64) {
        let Some(tracked) = self.connections.get(self.side(index).connection) else { return };
        for side in tracked.sides() {
            let side = self.side(side);
            if (side.remote, side.local) != tuple {
                continue;
            }
            if let Some(tw) = self.time_waits.get_mut(side.time_wait)
                && tw.kind == TimeWaitKind::FinWait2
                && tw.end == TimeWaitEnd::Open
            {
                tw.kind = TimeWaitKind::TimeWait;
                tw.became_time_wait_ns = Some(ts);
            }
        }
    }

    fn timer_event(
        &mut self,
        event: &TcpEvent,
        timer: u64,
        update: impl FnOnce(&mut TimeWait, u64),
    ) -> (Attribution, Option<Index>) {
        let Some(index) = self.side_of_timer(timer) else {
            self.stats.unmatched_events += 1;
            return (Attribution::owner(None), None);
        };
        let side = self.side(index);
        let attribution = Attribution {
            owner: side.owner(),
            old_state_ns: None,
            addresses: Some((side.local.into(), side.remote.into())),
        };
        let connection = side.connection;
        match self.time_wait_mut(index) {
            Some(tw) if tw.end == TimeWaitEnd::Open => update(tw, event.ts_ns),
            _ => return (attribution, None),
        }
        (attribution, Some(connection))
    }

    fn reset(&mut self, event: &TcpEvent) -> (Attribution, Option<Index>) {
        let task_owner = event.task.as_owner();
        let index = self
            .side_of_socket(&self.by_sk, event.sk)
            .or_else(|| self.side_of_socket(&self.closed_sk, event.sk))
            .or_else(|| {
                let (local, remote) = event.addresses?;
                self.side_of_tuple((local.into(), remote.into()))
            });
        let Some(index) = index else {
            self.stats.unmatched_events += 1;
            return (Attribution::owner(task_owner), None);
        };
        let side = self.side_mut(index);
        let sent = event.kind == EventKind::ResetSent;
        let field = if sent { &mut side.reset_sent_ns } else { &mut side.reset_received_ns };
        if *field == NEVER {
            *field = event.ts_ns;
        }
        let owner = if sent { side.learn_owner(&event.task) } else { side.owner() };
        (Attribution::owner(owner), Some(side.connection))
    }

    /// Cancels older than `until_ns` with no expiry or re-arm after them were early kills.
    fn resolve_cancels(&mut self, until_ns: u64) {
        while let Some(&(ts, timer)) = self.pending_cancels.front() {
            if ts > until_ns {
                break;
            }
            self.pending_cancels.pop_front();
            let Some(index) = self.side_of_timer(timer) else { continue };
            let Some(tw) = self.time_wait_mut(index) else { continue };
            if tw.end == TimeWaitEnd::Open && tw.pending_cancel_ns == Some(ts) {
                tw.end = TimeWaitEnd::Killed;
                tw.end_ns = Some(ts);
                self.time_wait_ended(timer);
                let connection = self.side(index).connection;
                self.finish_if_done(connection, ts);
            }
        }
    }

    /// Everything that time `now_ns` makes certain: a time-wait cancel with nothing after
    /// it was a kill, and finished connections past their grace are handed out.
    fn settle(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        self.resolve_cancels(now_ns.saturating_sub(CANCEL_GRACE_NS));
        while let Some(&(ts, sk, index)) = self.closed_order.front() {
            if ts > now_ns.saturating_sub(CLOSED_LOOKUP_NS) {
                break;
            }
            self.closed_order.pop_front();
            // A newer close of the same address into the same reused slot loses the rest of
            // its second here: still a thousand times what a RST needs.
            if self.closed_sk.get(&sk) == Some(&index) {
                self.closed_sk.remove(&sk);
            }
        }
        while let Some(&(ts, index, id)) = self.finishing.front() {
            if ts > now_ns.saturating_sub(FINISH_GRACE_NS) {
                break;
            }
            self.finishing.pop_front();
            // The slot may hold another connection by now (this one was joined or aged out).
            let same = self.connections.get(index).is_some_and(|tracked| tracked.id == id);
            if same && self.is_done(index) {
                self.emit(index, out);
            }
        }
    }

    fn is_done(&self, index: Index) -> bool {
        self.connections.get(index).is_some_and(|tracked| {
            tracked.sides().all(|side| {
                let side = self.side(side);
                let time_wait_over = self
                    .time_waits
                    .get(side.time_wait)
                    .is_none_or(|tw| tw.end != TimeWaitEnd::Open);
                side.is_closed() && time_wait_over
            })
        })
    }

    fn finish_if_done(&mut self, index: Index, ts: u64) {
        if self.is_done(index)
            && let Some(tracked) = self.connections.get(index)
        {
            self.finishing.push_back((ts, index, tracked.id));
        }
    }

    fn emit(&mut self, index: Index, out: &mut impl FnMut(Output<'_>)) {
        let Some(mut connection) = self.forget(index) else { return };
        connection.closed_first = closed_first(&connection);
        connection.incomplete |= connection.endpoints.iter().any(|e| e.incomplete);
        self.record_stats(&connection);
        out(Output::Connection(&connection));
    }

    fn record_stats(&mut self, connection: &Connection) {
        let stats = &mut self.stats;
        stats.connections += 1;
        *stats.closed_first.entry(connection.closed_first).or_default() += 1;
        stats.incomplete += u64::from(connection.incomplete);
        for endpoint in &connection.endpoints {
            let Some(tw) = &endpoint.time_wait else { continue };
            let entry = stats.time_wait_by_local.entry(endpoint.local).or_default();
            match (tw.end, tw.duration_ns()) {
                (TimeWaitEnd::Open, _) | (_, None) => entry.open += 1,
                (_, Some(duration)) => entry.add(duration),
            }
        }
    }

    /// A time-wait socket with this timer ended (expired or killed): forget the timer and
    /// release its ephemeral port.
    fn time_wait_ended(&mut self, timer: u64) {
        if let Some(index) = self.by_timer.remove(&timer) {
            self.release_port(index);
        }
    }

    /// The time-wait of side `index` no longer holds its port.
    fn release_port(&mut self, index: Index) {
        let key = self
            .sides
            .get(index)
            .and_then(|side| port_pressure_key(side, self.options.ephemeral_ports));
        if let Some(key) = key {
            self.port_pressure(key, false);
        }
    }

    fn port_pressure(&mut self, key: (IpAddr, SocketAddr), started: bool) {
        let pressure = self.stats.time_wait_toward_remote.entry(key).or_default();
        if started {
            pressure.now += 1;
            pressure.peak = pressure.peak.max(pressure.now);
        } else {
            pressure.now = pressure.now.saturating_sub(1);
        }
    }

    fn sweep(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        // Closed connections whose time-wait end never came (its events were lost).
        let stuck: Vec<Index> = self
            .connections
            .iter()
            .filter(|(_, tracked)| {
                // The time first: it is in the connection table, read in order, where the
                // sides are scattered (a cache miss each, for every connection tracked).
                now_ns.saturating_sub(tracked.last_activity_ns) > TIME_WAIT_GIVE_UP_NS
                    && tracked.sides().all(|side| self.side(side).is_closed())
            })
            .map(|(index, _)| index)
            .collect();
        for index in stuck {
            if let Some(tracked) = self.connections.get_mut(index) {
                tracked.incomplete = true;
            }
            self.stats.aged_out += 1;
            self.emit(index, out);
        }
    }

    /// Drops the least recently active eighth of the table (never `keep`).
    fn age_out_least_recent(&mut self, keep: Index) {
        let mut by_age: Vec<(u64, Index)> = self
            .connections
            .iter()
            .map(|(index, tracked)| (tracked.last_activity_ns, index))
            .collect();
        by_age.sort_unstable();
        let count = (by_age.len() / 8).max(1);
        for &(_, index) in by_age.iter().filter(|(_, index)| *index != keep).take(count) {
            if self.forget(index).is_some() {
                self.stats.aged_out += 1;
            }
        }
    }

    /// Removes a connection, its sides and every index entry that points to them.
    fn forget(&mut self, index: Index) -> Option<Connection> {
        let tracked = self.connections.remove(index)?;
        let mut endpoints = Vec::with_capacity(2);
        for side_index in tracked.sides() {
            // A time-wait still open ends with its connection (it releases its port).
            if let Some(timer) = self.time_wait_mut(side_index).map(|tw| tw.timer)
                && self.by_timer.get(&timer) == Some(&side_index)
            {
                self.time_wait_ended(timer);
            }
            let Some(side) = self.sides.remove(side_index) else { continue };
            let tuple = side.tuple();
            if self.by_tuple.get(&tuple) == Some(&side_index) {
                self.by_tuple.remove(&tuple);
            }
            for map in [&mut self.by_sk, &mut self.closed_sk] {
                if map.get(&side.sk) == Some(&side_index) {
                    map.remove(&side.sk);
                }
            }
            let time_wait = self.time_waits.remove(side.time_wait);
            endpoints.push(side.into_endpoint(time_wait));
        }
        Some(Connection {
            id: tracked.id,
            endpoints,
            closed_first: Closer::Unknown,
            incomplete: tracked.incomplete,
        })
    }
}

/// The (local address, remote endpoint) whose ephemeral ports a time-wait socket on this
/// side holds, if its local port is ephemeral.
fn port_pressure_key(side: &Side, (low, high): (u16, u16)) -> Option<(IpAddr, SocketAddr)> {
    let local = SocketAddr::from(side.local);
    (low..=high).contains(&local.port()).then(|| (local.ip(), side.remote.into()))
}

/// Who closed first, from what each endpoint did.
///
/// The earliest *active* act wins: sending a FIN (entering FIN_WAIT1) or a RST (a reset
/// sent, or an abort straight to CLOSED in process context). Without one, a passive sign
/// tells it: CLOSE_WAIT (the peer's FIN came first) or a RST received. Any endpoint passing
/// CLOSING, or both endpoints sending a FIN before either was in CLOSE_WAIT, is a
/// simultaneous close.
pub fn closed_first(connection: &Connection) -> Closer {
    let endpoints = &connection.endpoints;
    if endpoints.iter().any(|e| e.passed(TcpState::Closing))
        || (endpoints.len() == 2
            && endpoints
                .iter()
                .all(|e| e.passed(TcpState::FinWait1) && !e.passed(TcpState::CloseWait)))
    {
        return Closer::Simultaneous;
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        Fin,
        Reset,
    }
    let role_closer = |role: Role, act: Act| match (role, act) {
        (Role::Client, Act::Fin) => Closer::Client,
        (Role::Server, Act::Fin) => Closer::Server,
        (Role::Client, Act::Reset) => Closer::ClientReset,
        (Role::Server, Act::Reset) => Closer::ServerReset,
        (Role::Unknown, _) => Closer::Unknown,
    };
    let active = endpoints
        .iter()
        .flat_map(|e| {
            let fin = e.entered(TcpState::FinWait1).map(|ts| (ts, Act::Fin, e));
            let abort_here = e.abort.filter(|&(_, process)| process).map(|(ts, _)| ts);
            let reset = e.reset_sent_ns.or(abort_here).map(|ts| (ts, Act::Reset, e));
            [fin, reset]
        })
        .flatten()
        .min_by_key(|(ts, _, _)| *ts);
    if let Some((_, act, endpoint)) = active {
        return role_closer(connection.role_of(endpoint), act);
    }
    let passive = endpoints
        .iter()
        .flat_map(|e| {
            let fin = e.entered(TcpState::CloseWait).map(|ts| (ts, Act::Fin, e));
            let abort_there = e.abort.filter(|&(_, process)| !process).map(|(ts, _)| ts);
            let reset = e.reset_received_ns.or(abort_there).map(|ts| (ts, Act::Reset, e));
            [fin, reset]
        })
        .flatten()
        .min_by_key(|(ts, _, _)| *ts);
    match passive {
        Some((_, act, endpoint)) => role_closer(connection.role_of(endpoint).opposite(), act),
        None => Closer::Unknown,
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
