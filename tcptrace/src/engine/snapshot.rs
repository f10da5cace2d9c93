//! Starting from what was there before tracing began: the sockets of the start-up snapshot
//! (sock_diag, taken just after attaching), merged with the events that raced it, and the
//! time-wait sockets the kernel program meets by their timer.
//!
//! The snapshot is taken while events flow. Events up to the moment it is done are
//! processed first; then each socket it found is seeded, unless an event since it began
//! already named that socket (the events know better, and the seed would be a twin). A
//! seeded socket has no kernel address: its first event adopts it by (namespace, local,
//! remote).

use std::net::SocketAddr;

use super::{
    Engine, Map, Role, TIME_WAIT_LEN_NS, TimeWait, TimeWaitKind, TimerOf,
    storage::{Address, Index, NEVER, NO_INDEX, Side, Step, Steps, Tracked, TupleKey, UNKNOWN_NS},
};
use crate::event::{Comm, Home, Owner, SeenSocket, TcpEvent, TcpState};

/// A snapshot being taken: since when, what events named meanwhile, what it found.
pub(super) struct Taking {
    began_ns: u64,
    touched: Map<TupleKey, ()>,
    seen: Vec<SeenSocket>,
    done_ns: Option<u64>,
}

/// The sockets seeded from the snapshot that no event has named yet.
#[derive(Default)]
pub(super) struct Unadopted {
    /// Full sockets, by key.
    sides: Map<TupleKey, Index>,
    /// Time-wait sockets (their timer is not known yet), by key.
    time_waits: Map<TupleKey, Index>,
}

impl Engine {
    /// A snapshot began at `ts_ns`: from now until it is done, the tuples events name are
    /// noted, so that its sockets are never seeded twice.
    pub fn snapshot_began(&mut self, ts_ns: u64) {
        self.snapshot = Some(Taking {
            began_ns: ts_ns,
            touched: Map::default(),
            seen: Vec::new(),
            done_ns: None,
        });
    }

    /// Sockets the snapshot found (taken as they are: there may be a hundred thousand).
    pub fn seen(&mut self, sockets: Vec<SeenSocket>) {
        if let Some(taking) = &mut self.snapshot {
            if taking.seen.is_empty() {
                taking.seen = sockets;
            } else {
                taking.seen.extend(sockets);
            }
        }
    }

    /// The snapshot was done at `ts_ns`: its sockets are seeded once every event up to
    /// then is processed.
    pub fn snapshot_done(&mut self, ts_ns: u64) {
        if let Some(taking) = &mut self.snapshot {
            taking.done_ns = Some(ts_ns);
        }
    }

    /// When the snapshot's sockets are due: once processing passes this time.
    pub(super) fn snapshot_due_ns(&self) -> Option<u64> {
        self.snapshot.as_ref()?.done_ns
    }

    /// Notes a tuple an event named while the snapshot is taken.
    pub(super) fn touched_while_taking(&mut self, key: TupleKey) {
        if let Some(taking) = &mut self.snapshot {
            taking.touched.insert(key, ());
        }
    }

    /// Seeds the snapshot's sockets: listeners first (their ports make roles), then the
    /// rest, pairing the two ends of connections inside this host.
    pub(super) fn apply_snapshot(&mut self) {
        let Some(taking) = self.snapshot.take() else { return };
        // Sides the events made meanwhile (few: the snapshot is taken just after start).
        let live: Map<TupleKey, Index> =
            self.sides.iter().map(|(index, side)| (self.homes.key(side), index)).collect();
        let netns_of = |socket: &SeenSocket| socket.home.netns.unwrap_or(0);
        let mut listening: Map<(u32, u16), ()> =
            self.listeners.keys().map(|&listener| (listener, ())).collect();
        for socket in taking.seen.iter().filter(|s| s.state == TcpState::Listen) {
            let listener = (netns_of(socket), socket.local.port());
            listening.insert(listener, ());
            let seen = super::Listener { local: socket.local, owner: socket.owner };
            self.listeners.entry(listener).or_insert(seen);
        }
        let is_listener =
            |netns: u32, address: SocketAddr| listening.contains_key(&(netns, address.port()));
        // Room for them all at once (a table that doubles as it fills holds up to three
        // times its size while it grows).
        let mut seen = taking.seen;
        let count = seen.len();
        self.sides.reserve(count);
        self.connections.reserve(count);
        self.unadopted.sides.reserve(count);
        // Full sockets first: a time-wait socket then finds its peer among them (an
        // orphaned FIN_WAIT2's peer is in CLOSE_WAIT), and never waits among the unpaired,
        // where a new connection reusing its 4-tuple could take it for its own.
        seen.sort_unstable_by_key(|socket| socket.time_wait_left_ns.is_some());
        for socket in seen.into_iter().filter(|s| s.state != TcpState::Listen) {
            let key = (netns_of(&socket), Address::from(socket.local), socket.remote.into());
            if let Some(&index) = live.get(&key) {
                // Named by an event already: if its life began before tracing, say so.
                let side = self.side_mut(index);
                if side.role == Role::Unknown
                    && side.steps.iter().next().is_some_and(|s| s.enter_ns == UNKNOWN_NS)
                {
                    side.seen_at_start = true;
                    if side.owner.pid == 0
                        && let Some(owner) = socket.owner
                    {
                        side.owner = owner;
                    }
                }
                continue;
            }
            if taking.touched.contains_key(&key) {
                continue; // its events came and went while the snapshot was taken
            }
            self.stats.seen_at_start += 1;
            let role = if socket.time_wait_left_ns.is_some() {
                Role::Unknown // its peer says, if it is still there
            } else if is_listener(key.0, socket.local) {
                Role::Server
            } else if socket.remote.ip().is_loopback() && is_listener(key.0, socket.remote) {
                Role::Client
            } else {
                Role::Unknown
            };
            let index = self.seed(&socket, key, role, taking.began_ns);
            // The first end of a pair waits among the unpaired; the second finds it.
            self.pair(index, (key.1, key.2));
            if socket.time_wait_left_ns.is_some() {
                self.unindex_tuple(index);
            }
        }
    }

    /// A side for a socket the snapshot saw at `seen_ns`, in its connection of one.
    fn seed(&mut self, socket: &SeenSocket, key: TupleKey, role: Role, seen_ns: u64) -> Index {
        let mut steps = Steps::new();
        let state =
            if socket.time_wait_left_ns.is_some() { TcpState::Closed } else { socket.state };
        steps.push(Step { state, enter_ns: UNKNOWN_NS });
        let index = self.new_seeded_side(steps, key, socket.home, socket.owner, role, seen_ns);
        match socket.time_wait_left_ns {
            Some(left_ns) => {
                let kind = if socket.state == TcpState::FinWait2 {
                    TimeWaitKind::FinWait2
                } else {
                    TimeWaitKind::TimeWait
                };
                self.open_earlier_time_wait(index, kind, seen_ns, Some(left_ns), 0);
                self.unadopted.time_waits.insert(key, index);
            }
            None => {
                self.unadopted.sides.insert(key, index);
                if state == TcpState::CloseWait {
                    // Counted as stuck from when it was first seen.
                    self.entered_close_wait(index, 0, seen_ns);
                }
            }
        }
        index
    }

    fn new_seeded_side(
        &mut self,
        steps: Steps,
        (netns, local, remote): TupleKey,
        home: Home,
        owner: Option<Owner>,
        role: Role,
        seen_ns: u64,
    ) -> Index {
        let id = self.next_id;
        self.next_id += 1;
        // Events lost after it was seen may have been its own.
        let lossy = self.loss_horizon_ns.is_some_and(|horizon| seen_ns <= horizon);
        let connection = self.connections.insert(Tracked {
            id,
            last_activity_ns: seen_ns,
            sides: [NO_INDEX; 2],
            incomplete: lossy,
        });
        let owner = owner.or_else(|| {
            (role == Role::Server).then(|| self.listeners.get(&(netns, local.port))?.owner)?
        });
        let index = self.sides.insert(Side {
            sk: 0,
            steps,
            reset_sent_ns: NEVER,
            reset_received_ns: NEVER,
            abort_ns: NEVER,
            local,
            remote,
            home: self.homes.intern(home),
            owner: owner.unwrap_or(Owner { pid: 0, comm: Comm::default() }),
            connection,
            time_wait: NO_INDEX,
            counters: NO_INDEX,
            role,
            incomplete: false,
            abort_in_process: false,
            seen_at_start: true,
        });
        if let Some(tracked) = self.connections.get_mut(connection) {
            tracked.sides[0] = index;
        }
        self.saw_namespace(netns);
        index
    }

    /// The time-wait of a side from before tracing began: `left_ns` on its timer at
    /// `seen_ns` when the snapshot said so, its `timer` once the kernel names it.
    fn open_earlier_time_wait(
        &mut self,
        index: Index,
        kind: TimeWaitKind,
        seen_ns: u64,
        left_ns: Option<u64>,
        timer: u64,
    ) {
        // Armed for TCP_TIMEWAIT_LEN (or less, for an orphaned FIN_WAIT2): `time_left_ns`
        // at the end counts from the time this gives.
        let expires_ns = seen_ns + left_ns.unwrap_or(TIME_WAIT_LEN_NS);
        let time_wait = TimeWait {
            remaining_at_start_ns: left_ns,
            last_armed_ns: expires_ns.saturating_sub(TIME_WAIT_LEN_NS),
            ..TimeWait::opened(kind, timer, None, seen_ns)
        };
        self.hold_time_wait(index, time_wait);
    }

    /// The seeded side an event about a socket the engine does not know names, if any: it
    /// takes the event's socket address from now on.
    pub(super) fn adopt(&mut self, key: TupleKey, sk: u64) -> Option<Index> {
        if self.unadopted.sides.is_empty() {
            return None;
        }
        let index = self.unadopted.sides.remove(&key)?;
        if self.unadopted.sides.is_empty() {
            self.unadopted.sides.shrink_to_fit(); // it held a whole snapshot's worth
        }
        let side = self.sides.get_mut(index)?;
        if side.sk != 0 || self.homes.key(side) != key {
            return None;
        }
        side.sk = sk;
        self.by_sk.insert(sk, index);
        self.closed_sk.remove(&sk); // an address just freed by another socket
        Some(index)
    }

    /// A cancelled or re-armed time-wait timer the engine did not know, which the kernel
    /// program says is a time-wait socket's from before tracing began: the snapshot's socket
    /// with its addresses takes the timer; without one (the snapshot missed it), it is
    /// opened now.
    pub(super) fn meet_time_wait(&mut self, event: &TcpEvent, timer: u64) -> Option<Index> {
        let (local, remote) = event.addresses?;
        let key = (event.home.netns.unwrap_or(0), Address::from(local), Address::from(remote));
        let seeded =
            self.unadopted.time_waits.remove(&key).filter(|&index| {
                self.sides.get(index).is_some_and(|side| self.homes.key(side) == key)
            });
        let index = match seeded {
            Some(index) => {
                let tw = self.time_wait_mut(index)?;
                tw.timer = timer;
                index
            }
            None => {
                self.stats.seen_at_start += 1;
                let mut steps = Steps::new();
                steps.push(Step { state: TcpState::Closed, enter_ns: UNKNOWN_NS });
                let (home, ts) = (event.home, event.ts_ns);
                let index = self.new_seeded_side(steps, key, home, None, Role::Unknown, ts);
                self.open_earlier_time_wait(index, TimeWaitKind::TimeWait, ts, None, timer);
                index
            }
        };
        let time_wait = self.side(index).time_wait;
        self.by_timer.insert(timer, TimerOf { side: index, time_wait });
        Some(index)
    }
}
