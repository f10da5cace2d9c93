//! The lifecycle engine: decoded events in, attributed events and finished connection
//! records out. Pure: no I/O and no clock of its own (the caller says what time it is), so
//! live tracing, replay of a recording and the tests all drive the same code.
//!
//! - Each socket becomes an [`Endpoint`]: every state with its entry time and duration, its
//!   role (client: went through SYN_SENT; server: child of a LISTEN socket), its owner.
//! - Both endpoints of a connection on this host are paired by their mirrored 4-tuples, in
//!   one network namespace, or across two (a veth pair) for addresses other than loopback.
//!   Two namespaces' sockets with the same 4-tuple are never mixed up.
//! - A socket entering TIME-WAIT hands over to a kernel time-wait socket whose life is its
//!   timer: `cancel` then `expire` is a natural end, `cancel` alone an early kill, `cancel`
//!   then `rearm` a restart (a FIN or a retransmission arrived).
//! - Who closed first is read from the states and resets themselves ([`Closer`]).
//! - A socket left in CLOSE_WAIT too long is reported with its owner's others ([`Stuck`]).
//!
//! Here: the engine's event loop (reordering, transitions, pairing, handing out). Beside it:
//! `records` (what it hands out), `storage` (how it keeps what it follows), `time_wait`,
//! `classify` (who closed first), `stats` (the summary's numbers) and `stuck`.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

mod classify;
mod records;
mod snapshot;
mod stats;
mod storage;
mod stuck;
mod time_wait;

pub use classify::closed_first;
use classify::{Acts, classify};
pub use records::{
    Attribution, Closer, Connection, Endpoint, FailedConnect, Output, Role, StateSpan, TimeWait,
    TimeWaitEnd, TimeWaitKind,
};
pub use stats::{Carried, PortPressure, Stats, TimeWaitStats};
use storage::{
    Address, Homes, Index, NEVER, NO_INDEX, Side, Slab, Step, Steps, Tracked, TupleKey, UNKNOWN_NS,
};
pub use stuck::Stuck;

/// A listening socket: its address, and its owner (its children are the owner's until
/// their process touches them: they are born in softirq).
#[derive(Clone, Copy, Debug)]
struct Listener {
    local: SocketAddr,
    owner: Option<Owner>,
}

/// Where a time-wait socket's timer leads: its side, and the time-wait itself, both kept
/// so that a timer event reads them together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimerOf {
    side: Index,
    time_wait: Index,
}

/// One socket as it is now, from [`Engine::sockets_now`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketNow {
    pub state: TcpState,
    /// When it entered that state, when known: not for a full socket the start-up snapshot
    /// found; for a time-wait it found, from the time its timer had left.
    pub since_ns: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<Owner>,
    pub netns: Option<u32>,
    pub role: Role,
    /// A time-wait socket (TIME_WAIT, or an orphaned FIN_WAIT2): the application closed
    /// it, and only the kernel holds it; its owner is the one that had it.
    pub orphan: bool,
}

use crate::event::{Comm, Counters, EventKind, Owner, TcpEvent, TcpState};

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

/// The network namespaces sockets were seen in: pairing across namespaces is only looked
/// for once there are two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Namespaces {
    None,
    One(u32),
    Many,
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Connections tracked at once before the least recently active are aged out.
    pub max_connections: usize,
    /// `net.ipv4.ip_local_port_range`, for the TIME-WAIT pile-up warning.
    pub ephemeral_ports: (u16, u16),
    /// A socket in CLOSE_WAIT this long is reported stuck (`--stuck-after`).
    pub stuck_after_ns: u64,
    /// Hand out [`Output::Closed`] when a connection's sockets have all closed (for
    /// `--metrics`, which counts closes then, not after the TIME-WAIT).
    pub report_closes: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_connections: 1 << 18,
            ephemeral_ports: (32768, 60999),
            stuck_after_ns: 30_000_000_000,
            report_closes: false,
        }
    }
}

pub struct Engine {
    options: EngineOptions,
    /// Events waiting out the reorder window, sorted by time, then arrival.
    pending: VecDeque<TcpEvent>,
    /// Events pushed since `pending` was last processed from the first that came out of
    /// order on, in arrival order: the runs of the rings read after the first, each in
    /// time order ([`Engine::order_arrivals`]).
    arrivals: Vec<TcpEvent>,
    next_id: u64,
    connections: Slab<Tracked>,
    sides: Slab<Side>,
    time_waits: Slab<TimeWait>,
    /// Counters of closed sides (see `Side::counters`).
    counters: Slab<Counters>,
    /// Indexes into `sides`. A lookup checks that the side still has the key, so that a
    /// socket (or timer) address reused by the kernel never reaches another socket's side.
    by_sk: Map<u64, Index>,
    /// Sockets that reached CLOSED in the last [`CLOSED_LOOKUP_NS`].
    closed_sk: Map<u64, Index>,
    /// (time it closed, socket, side) for `closed_sk`, in time order.
    closed_order: VecDeque<(u64, u64, Index)>,
    /// Open time-wait sockets' timers: what a timer event finds.
    by_timer: Map<u64, TimerOf>,
    /// Sides not yet paired with their peer, by (namespace, local, remote).
    by_tuple: Map<TupleKey, Index>,
    /// Once sockets of more than one namespace were seen: the unpaired sides with other
    /// than loopback addresses by (local, remote) alone, for a peer in another namespace.
    by_tuple_across: Map<(Address, Address), Index>,
    namespaces: Namespaces,
    homes: Homes,
    /// Listening sockets' owners by (namespace, port): a server's accepted socket is
    /// born in softirq, and until its process touches it, it is the listener's.
    listeners: Map<(u32, u16), Listener>,
    stuck: stuck::StuckSockets,
    /// The start-up snapshot, while it is taken and until its sockets are seeded.
    snapshot: Option<snapshot::Taking>,
    unadopted: snapshot::Unadopted,
    /// (cancel time, timer, its time-wait), in time order.
    pending_cancels: VecDeque<(u64, u64, TimerOf)>,
    /// (time it finished, connection, its id), in time order, waiting out `FINISH_GRACE_NS`.
    finishing: VecDeque<(u64, Index, u64)>,
    /// With `report_closes`: (time its last socket closed, connection, its id), waiting
    /// out `FINISH_GRACE_NS` too (a RST is reported just after the close it causes).
    closing: VecDeque<(u64, Index, u64)>,
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
            arrivals: Vec::new(),
            next_id: 1,
            connections: Slab::new(),
            sides: Slab::new(),
            time_waits: Slab::new(),
            counters: Slab::new(),
            by_sk: Map::default(),
            closed_sk: Map::default(),
            closed_order: VecDeque::new(),
            by_timer: Map::default(),
            by_tuple: Map::default(),
            by_tuple_across: Map::default(),
            namespaces: Namespaces::None,
            homes: Homes::new(),
            listeners: Map::default(),
            stuck: Default::default(),
            snapshot: None,
            unadopted: Default::default(),
            pending_cancels: VecDeque::new(),
            finishing: VecDeque::new(),
            closing: VecDeque::new(),
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
        // In order (nearly all of the first ring's events): straight into the queue, not
        // copied again later.
        if self.arrivals.is_empty()
            && self.pending.back().is_none_or(|last| last.ts_ns <= event.ts_ns)
        {
            self.pending.push_back(event);
        } else {
            self.arrivals.push(event);
        }
    }

    /// Moves the events that arrived into `pending`, in time order, ties in arrival order.
    /// A stable sort finds the batch's runs (one per ring buffer) and merges them; then the
    /// batch merges with the tail of `pending` it overlaps. Inserting each event where it
    /// belongs instead moved the queue's tail for every event of the later-read rings.
    fn order_arrivals(&mut self) {
        self.arrivals.sort_by_key(|event| event.ts_ns);
        let Some(first_ns) = self.arrivals.first().map(|event| event.ts_ns) else { return };
        // Queued earlier, so first among equal times.
        let overlap = self.pending.partition_point(|queued| queued.ts_ns <= first_ns);
        let mut earlier: VecDeque<TcpEvent> = self.pending.drain(overlap..).collect();
        let mut arrivals = self.arrivals.drain(..).peekable();
        while let Some(queued) = earlier.front() {
            match arrivals.next_if(|arrived| arrived.ts_ns < queued.ts_ns) {
                Some(arrived) => self.pending.push_back(arrived),
                None => self.pending.extend(earlier.pop_front()),
            }
        }
        self.pending.extend(arrivals);
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
        let processed_ns = now_ns.saturating_sub(REORDER_WINDOW_NS);
        self.process_until(processed_ns, out);
        // By the time processed up to, not `now_ns`: what follows a cancel (its expiry,
        // microseconds later) may still be in the reorder window.
        self.settle(processed_ns, out);
        // Stuck by the time of the events processed: a socket's way out of CLOSE_WAIT
        // may still be in the reorder window.
        self.find_stuck(processed_ns);
        self.report_stuck(processed_ns, out);
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
        self.find_stuck(now_ns);
        self.report_stuck(now_ns, out);
        // What is still stuck goes in the summary; handing the connections out below
        // is the end of the trace, not of their being stuck.
        self.stats.stuck_at_exit = self.stuck_now(now_ns);
        self.stuck = Default::default();
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
        // Every connection handed out, no socket or timer may point to one any more
        // (`forget` skips the tables it knows an entry gone from). The unpaired ones' table
        // may keep a stale tuple, when a socket's addresses changed after it was indexed
        // (as random streams' do; it is checked where it is read).
        debug_assert!(
            self.by_sk.is_empty() && self.closed_sk.is_empty() && self.by_timer.is_empty(),
            "entries left in the engine's tables after the end"
        );
    }

    fn process_until(&mut self, until_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        self.order_arrivals();
        // Taken out while its events are processed where they lie: nothing below queues
        // events, and moving each out first copied its 240 bytes.
        let mut pending = std::mem::take(&mut self.pending);
        while let Some(event) = pending.front().filter(|queued| queued.ts_ns <= until_ns) {
            let ts = event.ts_ns;
            if self.snapshot_due_ns().is_some_and(|due| due < ts) {
                self.apply_snapshot();
            }
            self.settle(ts, out);
            self.find_stuck(ts);
            self.report_stuck(ts, out);
            self.process(event, out);
            pending.pop_front();
        }
        self.pending = pending;
        if self.snapshot_due_ns().is_some_and(|due| due <= until_ns) {
            self.apply_snapshot();
        }
    }

    fn process(&mut self, event: &TcpEvent, out: &mut impl FnMut(Output<'_>)) {
        let (attribution, touched) = match event.kind {
            EventKind::Transition { old, new, time_wait_timer } => {
                self.transition(event, old, new, time_wait_timer)
            }
            EventKind::TimeWaitRearm { timer, .. } => {
                self.timer_event(event, timer, |tw, ts, _| {
                    tw.rearmed += 1;
                    tw.pending_cancel_ns = None;
                    tw.last_armed_ns = ts;
                    if tw.kind == TimeWaitKind::FinWait2 {
                        tw.kind = TimeWaitKind::TimeWait;
                        tw.became_time_wait_ns = Some(ts);
                    }
                })
            }
            EventKind::TimeWaitCancel { timer } => {
                let mut cancelled = None;
                let result = self.timer_event(event, timer, |tw, ts, found| {
                    tw.pending_cancel_ns = Some(ts);
                    cancelled = Some(found);
                });
                if let Some(found) = cancelled {
                    self.pending_cancels.push_back((event.ts_ns, timer, found));
                }
                result
            }
            EventKind::TimeWaitExpire { timer } => {
                let result = self.timer_event(event, timer, |tw, ts, _| {
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
            if self.options.report_closes
                && matches!(event.kind, EventKind::Transition { new: TcpState::Closed, .. })
                && let Some(tracked) = self.connections.get(index)
                && tracked.sides().all(|side| self.side(side).is_closed())
            {
                self.closing.push_back((event.ts_ns, index, tracked.id));
            }
        }
    }

    /// The side `index` points to in `map` under `sk`, if it is still that socket's.
    fn side_of_socket(&self, map: &Map<u64, Index>, sk: u64) -> Option<Index> {
        map.get(&sk).copied().filter(|&side| self.sides.get(side).is_some_and(|s| s.sk == sk))
    }

    /// The unpaired side with this key, if it still has it.
    fn side_of_key(&self, key: TupleKey) -> Option<Index> {
        let side = *self.by_tuple.get(&key)?;
        (self.homes.key(self.sides.get(side)?) == key).then_some(side)
    }

    /// The unpaired side in a namespace other than `netns` with this (local, remote).
    fn side_across(&self, netns: u32, tuple: (Address, Address)) -> Option<Index> {
        if self.namespaces != Namespaces::Many || tuple.0.is_loopback() || tuple.1.is_loopback() {
            return None;
        }
        let side = *self.by_tuple_across.get(&tuple)?;
        let found = self.sides.get(side)?;
        (found.tuple() == tuple && self.homes.netns(found) != netns).then_some(side)
    }

    /// Notes the namespace of a new side: the first time a second one shows up, the
    /// unpaired sides are indexed for peers across namespaces too.
    fn saw_namespace(&mut self, netns: u32) {
        match self.namespaces {
            Namespaces::None => self.namespaces = Namespaces::One(netns),
            Namespaces::One(known) if known != netns => {
                self.namespaces = Namespaces::Many;
                for (&(_, local, remote), &side) in &self.by_tuple {
                    if !local.is_loopback() && !remote.is_loopback() {
                        self.by_tuple_across.insert((local, remote), side);
                    }
                }
            }
            _ => {}
        }
    }

    /// The key an event's namespace gives a tuple: an event that can't tell its namespace
    /// (a RST with no socket) is taken to be in the only one seen, if there is one.
    fn key_of(&self, netns: Option<u32>, tuple: (Address, Address)) -> Option<TupleKey> {
        let netns = match (netns, self.namespaces) {
            (Some(netns), _) => netns,
            (None, Namespaces::One(only)) => only,
            (None, Namespaces::None) => 0,
            (None, Namespaces::Many) => return None,
        };
        Some((netns, tuple.0, tuple.1))
    }

    /// The live side whose time-wait socket has `timer`, and that time-wait.
    fn side_of_timer(&self, timer: u64) -> Option<TimerOf> {
        let found = *self.by_timer.get(&timer)?;
        self.is_timer_of(timer, found).then_some(found)
    }

    /// Whether `found` is still the side and time-wait of `timer` (a timer's address is
    /// reused by later time-wait sockets). The side and the time-wait are read at once:
    /// neither address waits on the other, and both are cold by a time-wait's end.
    fn is_timer_of(&self, timer: u64, found: TimerOf) -> bool {
        let side = self.sides.get(found.side);
        let tw = self.time_waits.get(found.time_wait);
        side.is_some_and(|side| side.time_wait == found.time_wait)
            && tw.is_some_and(|tw| tw.timer == timer)
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
        let Some((local, remote)) = event.addresses else {
            return (Attribution::unmatched(event), None);
        };
        let index = match self.side_of_socket(&self.by_sk, event.sk) {
            Some(index) => index,
            None => {
                // Listening sockets are not connections; a fresh socket that is not yet
                // anything (CLOSED → CLOSED) neither.
                if new == TcpState::Listen || old == TcpState::Listen && new == TcpState::Closed {
                    let listener = (event.home.netns.unwrap_or(0), local.port());
                    if new == TcpState::Listen {
                        let owner = event.task.as_owner();
                        self.listeners.insert(listener, Listener { local, owner });
                    } else {
                        self.listeners.remove(&listener);
                    }
                    return (Attribution::unmatched(event), None);
                }
                let key = (event.home.netns.unwrap_or(0), local.into(), remote.into());
                let born = matches!(old, TcpState::Closed | TcpState::Listen);
                match (!born).then(|| self.adopt(key, event.sk)).flatten() {
                    Some(index) => index,
                    None => self.new_side(event, old, (local, remote)),
                }
            }
        };
        let side = self.sides.get_mut(index).expect("indexed sides exist");
        let owner = side.learn_owner(&event.task);
        self.homes.learn(side, event.home);
        let home = self.homes.get(side.home);
        let mut old_state_ns = None;
        if let Some(last) = side.steps.last() {
            if last.state != old {
                side.incomplete = true; // a gap: some transitions were not seen
            }
            old_state_ns = last.enter().map(|enter| event.ts_ns.saturating_sub(enter));
            if old == new && last.state == new {
                // The kernel reports some same-state changes (CLOSING → CLOSING).
                let attribution =
                    Attribution { owner, old_state_ns, home, ..Attribution::default() };
                return (attribution, Some(side.connection));
            }
        }
        side.steps.push(Step { state: new, enter_ns: event.ts_ns });
        if new == TcpState::CloseWait {
            self.entered_close_wait(index, event.sk, event.ts_ns);
        } else if old == TcpState::CloseWait {
            self.left_close_wait(index, event.sk);
        }
        let side = self.side_mut(index);
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
        if tuple_known && self.snapshot.is_some() {
            let key = self.homes.key(self.side(index));
            self.touched_while_taking(key);
        }

        if new == TcpState::Closed {
            if let Some(counters) = event.counters {
                let previous = self.side(index).counters;
                self.counters.remove(previous);
                let stored = self.counters.insert(counters);
                self.side_mut(index).counters = stored;
            }
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
        let attribution = Attribution { owner, old_state_ns, home, ..Attribution::default() };
        (attribution, Some(self.side(index).connection))
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
            home: self.homes.intern(event.home),
            // A listener's child is the listener's until its process touches it.
            owner: (role == Role::Server)
                .then(|| self.listeners.get(&(event.home.netns.unwrap_or(0), tuple.0.port())))
                .flatten()
                .and_then(|listener| listener.owner)
                .unwrap_or(Owner { pid: 0, comm: Comm::default() }),
            connection,
            time_wait: NO_INDEX,
            counters: NO_INDEX,
            role,
            incomplete: role == Role::Unknown,
            abort_in_process: false,
            seen_at_start: false,
        });
        if let Some(tracked) = self.connections.get_mut(connection) {
            tracked.sides[0] = index;
        }
        self.by_sk.insert(event.sk, index);
        self.closed_sk.remove(&event.sk);
        self.saw_namespace(event.home.netns.unwrap_or(0));
        if self.connections.len() > self.options.max_connections {
            self.age_out_least_recent(connection);
        }
        index
    }

    /// Joins this side's connection with the peer's, whose tuple mirrors it (in the same
    /// namespace, or in another across a veth pair), if there is one.
    fn pair(&mut self, index: Index, tuple: (Address, Address)) {
        let single = |c: Index| self.connections.get(c).is_some_and(|t| t.sides[1] == NO_INDEX);
        let mine = self.side(index).connection;
        if !single(mine) {
            return; // already paired
        }
        let (local, remote) = tuple;
        let netns = self.homes.netns(self.side(index));
        let peer = self
            .side_of_key((netns, remote, local))
            .or_else(|| self.side_across(netns, (remote, local)));
        let Some(peer) = peer else {
            // The newest side with a tuple wins it: an older one has closed.
            self.by_tuple.insert((netns, local, remote), index);
            if self.namespaces == Namespaces::Many && !local.is_loopback() && !remote.is_loopback()
            {
                self.by_tuple_across.insert(tuple, index);
            }
            return;
        };
        let theirs = self.side(peer).connection;
        if mine == theirs || !single(theirs) {
            return;
        }
        self.unindex_tuple(peer);
        self.unindex_tuple(index);
        let Some(joining) = self.connections.remove(mine) else { return };
        if let Some(tracked) = self.connections.get_mut(theirs) {
            tracked.sides[1] = index;
            tracked.incomplete |= joining.incomplete;
            tracked.last_activity_ns = tracked.last_activity_ns.max(joining.last_activity_ns);
        }
        self.side_mut(index).connection = theirs;
    }

    fn reset(&mut self, event: &TcpEvent) -> (Attribution, Option<Index>) {
        let index = self
            .side_of_socket(&self.by_sk, event.sk)
            .or_else(|| self.side_of_socket(&self.closed_sk, event.sk))
            .or_else(|| {
                let (local, remote) = event.addresses?;
                self.side_of_key(self.key_of(event.home.netns, (local.into(), remote.into()))?)
            });
        let Some(index) = index else {
            self.stats.unmatched_events += 1;
            return (Attribution::unmatched(event), None);
        };
        let side = self.sides.get_mut(index).expect("indexed sides exist");
        let sent = event.kind == EventKind::ResetSent;
        let field = if sent { &mut side.reset_sent_ns } else { &mut side.reset_received_ns };
        if *field == NEVER {
            *field = event.ts_ns;
        }
        let owner = if sent { side.learn_owner(&event.task) } else { side.owner() };
        let home = self.homes.get(side.home);
        let attribution = Attribution { owner, home, ..Attribution::default() };
        (attribution, Some(side.connection))
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
        while let Some(&(ts, index, id)) = self.closing.front() {
            if ts > now_ns.saturating_sub(FINISH_GRACE_NS) {
                break;
            }
            self.closing.pop_front();
            if self.connections.get(index).is_some_and(|tracked| tracked.id == id) {
                out(Output::Closed(self.closer_now(index)));
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

    /// Who closed connection `index` first, from what its sides did so far: read from the
    /// sides where they lie, with no record built (the metrics daemon asks at every close).
    fn closer_now(&self, index: Index) -> Closer {
        let Some(tracked) = self.connections.get(index) else { return Closer::Unknown };
        let [one, other] = tracked.sides.map(|side| self.sides.get(side));
        // A side of unknown role takes the opposite of its peer's, as in a record.
        let role = |side: &Side, peer: &Side| match side.role {
            Role::Unknown => peer.role.opposite(),
            known => known,
        };
        match (one, other) {
            (Some(one), Some(other)) => classify(&[
                Acts::of_side(one, role(one, other)),
                Acts::of_side(other, role(other, one)),
            ]),
            (Some(only), None) | (None, Some(only)) => classify(&[Acts::of_side(only, only.role)]),
            (None, None) => Closer::Unknown,
        }
    }

    /// Connection `index` as it is now, still followed: its time-waits may be open.
    fn connection_now(&self, index: Index) -> Option<Connection> {
        let tracked = self.connections.get(index)?;
        let endpoints = tracked
            .sides()
            .map(|side| {
                let side = self.side(side);
                let time_wait = self.time_waits.get(side.time_wait).cloned();
                let counters = self.counters.get(side.counters).copied();
                side.to_endpoint(self.homes.get(side.home), time_wait, counters)
            })
            .collect();
        let mut connection = Connection {
            id: tracked.id,
            endpoints,
            closed_first: Closer::Unknown,
            incomplete: tracked.incomplete,
        };
        connection.closed_first = closed_first(&connection);
        Some(connection)
    }

    /// Every connection followed now, as it is so far, oldest first (for `tcptrace lab`,
    /// which tells a connection's story before its TIME-WAIT is over).
    pub fn open_connections(&self) -> Vec<Connection> {
        let mut by_id: Vec<(u64, Index)> =
            self.connections.iter().map(|(index, tracked)| (tracked.id, index)).collect();
        by_id.sort_unstable();
        by_id.into_iter().filter_map(|(_, index)| self.connection_now(index)).collect()
    }

    /// Every socket followed now, as `ss` would list it: the listeners, then each side; a
    /// side that handed over to a time-wait socket still open is that socket (TIME_WAIT,
    /// or FIN_WAIT2 while the peer's FIN has not come); closed ones are left out.
    /// Allocates nothing.
    pub fn sockets_now(&self) -> impl Iterator<Item = SocketNow> + '_ {
        let listeners = self.listeners.iter().map(|(&(netns, _), listener)| SocketNow {
            state: TcpState::Listen,
            since_ns: None,
            local: listener.local,
            remote: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
            owner: listener.owner,
            netns: Some(netns).filter(|&netns| netns != 0),
            role: Role::Unknown,
            orphan: false,
        });
        listeners.chain(self.sides.iter().filter_map(|(_, side)| {
            let last = side.steps.last()?;
            let (state, since, orphan) = match self.time_waits.get(side.time_wait) {
                Some(tw) if tw.end == TimeWaitEnd::Open => {
                    let state = match tw.kind {
                        TimeWaitKind::TimeWait => TcpState::TimeWait,
                        TimeWaitKind::FinWait2 => TcpState::FinWait2,
                    };
                    // One from before start began its time-wait 60 s before its time left.
                    let from_left = tw.remaining_at_start_ns.map(|left| {
                        tw.known_from_ns.saturating_sub(TIME_WAIT_LEN_NS.saturating_sub(left))
                    });
                    (state, tw.became_time_wait_ns.or(tw.start_ns).or(from_left), true)
                }
                _ if last.state == TcpState::Closed => return None,
                _ => (last.state, last.enter(), false),
            };
            Some(SocketNow {
                state,
                since_ns: since,
                local: side.local.into(),
                remote: side.remote.into(),
                owner: side.owner(),
                netns: self.homes.get(side.home).netns,
                role: side.role,
                orphan,
            })
        }))
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

    /// Drops the side's entries among the unpaired, where they are still its.
    fn unindex_tuple(&mut self, index: Index) {
        let Some(side) = self.sides.get(index) else { return };
        let (key, tuple) = (self.homes.key(side), side.tuple());
        if self.by_tuple.get(&key) == Some(&index) {
            self.by_tuple.remove(&key);
        }
        if self.by_tuple_across.get(&tuple) == Some(&index) {
            self.by_tuple_across.remove(&tuple);
        }
    }

    /// Removes a connection, its sides and every index entry that points to them.
    ///
    /// Most connections end long after their sockets closed, their tables' entries cold: an
    /// entry known to be gone already is not looked for (each look was a cache miss).
    fn forget(&mut self, index: Index) -> Option<Connection> {
        let tracked = self.connections.remove(index)?;
        let mut endpoints = Vec::with_capacity(2);
        for side_index in tracked.sides() {
            // A time-wait still open ends with its connection (it releases its port); one
            // from before start whose timer was never met is not in the timer table. (The
            // end of one that ended took its timer out.)
            if let Some((timer, true)) =
                self.time_wait_mut(side_index).map(|tw| (tw.timer, tw.end == TimeWaitEnd::Open))
            {
                if self.by_timer.get(&timer).map(|found| found.side) == Some(side_index) {
                    self.time_wait_ended(timer);
                } else if timer == 0 {
                    self.release_port(side_index);
                }
            }
            self.unindex_tuple(side_index);
            self.unstick(side_index);
            let Some(side) = self.sides.remove(side_index) else { continue };
            // `by_sk` holds the open sockets only: few, and in cache. `closed_sk` holds every
            // socket closed in the last second; a socket's close put it there, and it is gone
            // once `closed_order`, in time order, has passed that close.
            let in_closed_sk = side.steps.last().is_some_and(|step| {
                step.state == TcpState::Closed
                    && self
                        .closed_order
                        .front()
                        .is_some_and(|&(oldest, _, _)| oldest <= step.enter_ns)
            });
            if self.by_sk.get(&side.sk) == Some(&side_index) {
                self.by_sk.remove(&side.sk);
            }
            if in_closed_sk && self.closed_sk.get(&side.sk) == Some(&side_index) {
                self.closed_sk.remove(&side.sk);
            }
            let time_wait = self.time_waits.remove(side.time_wait);
            let counters = self.counters.remove(side.counters);
            let home = self.homes.get(side.home);
            endpoints.push(side.to_endpoint(home, time_wait, counters));
        }
        Some(Connection {
            id: tracked.id,
            endpoints,
            closed_first: Closer::Unknown,
            incomplete: tracked.incomplete,
        })
    }
}

#[cfg(test)]
mod tests;
