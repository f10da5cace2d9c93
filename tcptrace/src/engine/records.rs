//! The records the engine hands out: each connection with its endpoints, every state they
//! passed through, their TIME-WAITs, and who closed first.

use std::net::SocketAddr;

use super::storage::Steps;
use crate::event::{Counters, Errno, Home, Owner, TcpEvent, TcpState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
    Unknown,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Client, Role::Server, Role::Unknown];

    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }

    pub(super) fn opposite(self) -> Role {
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
    pub const ALL: [TimeWaitEnd; 3] =
        [TimeWaitEnd::Expired, TimeWaitEnd::Killed, TimeWaitEnd::Open];

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
    pub const ALL: [TimeWaitKind; 2] = [TimeWaitKind::TimeWait, TimeWaitKind::FinWait2];

    pub fn name(self) -> &'static str {
        match self {
            TimeWaitKind::TimeWait => "time_wait",
            TimeWaitKind::FinWait2 => "fin_wait2",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWait {
    /// `None` for one that was there before tracing began: its start was not seen.
    pub start_ns: Option<u64>,
    /// Its start, or when tcptrace first learnt of it (one from before tracing began).
    pub known_from_ns: u64,
    /// For one found by the start-up snapshot: the time its timer had left then.
    pub remaining_at_start_ns: Option<u64>,
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
    pub(super) last_armed_ns: u64,
    pub(super) pending_cancel_ns: Option<u64>,
}

impl TimeWait {
    /// An open one, started at `start_ns` (`None`: before tracing began) and known to
    /// tcptrace from `known_from_ns`, when its timer is taken to have been armed.
    pub(super) fn opened(
        kind: TimeWaitKind,
        timer: u64,
        start_ns: Option<u64>,
        known_from_ns: u64,
    ) -> TimeWait {
        TimeWait {
            start_ns,
            known_from_ns,
            remaining_at_start_ns: None,
            end_ns: None,
            rearmed: 0,
            end: TimeWaitEnd::Open,
            kind,
            became_time_wait_ns: None,
            time_left_ns: None,
            timer,
            last_armed_ns: known_from_ns,
            pending_cancel_ns: None,
        }
    }

    pub fn duration_ns(&self) -> Option<u64> {
        Some(self.end_ns?.saturating_sub(self.start_ns?))
    }
}

/// One socket's life, as handed out with its [`Connection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// This socket's address and its peer's.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Role,
    /// It was there before tracing began (found by the start-up snapshot, or, for a
    /// time-wait socket, by its timer).
    pub seen_at_start: bool,
    /// Its network namespace and cgroup.
    pub home: Home,
    pub owner: Option<Owner>,
    /// Every state in order (see [`Endpoint::states`]).
    pub(super) steps: Steps,
    pub time_wait: Option<Box<TimeWait>>,
    /// What the socket carried and its pending error, when its close was seen with them.
    pub counters: Option<Counters>,
    pub reset_sent_ns: Option<u64>,
    pub reset_received_ns: Option<u64>,
    /// Events of this endpoint may be missing (a gap in its states, or events lost).
    pub incomplete: bool,
    /// (time, in process context) of a close straight to CLOSED without FIN: an abort or RST.
    pub(super) abort: Option<(u64, bool)>,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub id: u64,
    /// One endpoint, or both when both ends are on this host.
    pub endpoints: Vec<Endpoint>,
    pub closed_first: Closer,
    pub incomplete: bool,
}

/// A connect that never got through: what the client's socket ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedConnect {
    /// How long the client waited in SYN_SENT.
    pub attempt_ns: Option<u64>,
    /// The socket's pending error (`ECONNREFUSED`, `ETIMEDOUT`), when its counters were seen.
    pub error: Option<Errno>,
    /// SYNs sent again before it gave up, when its counters were seen.
    pub syn_retransmits: Option<u32>,
}

impl Connection {
    /// The client's connect failed: it went from SYN_SENT straight to CLOSED.
    pub fn failed_connect(&self) -> Option<FailedConnect> {
        let client = self.endpoint(Role::Client)?;
        let mut states = client.states();
        let syn_sent = states.next().filter(|span| span.state == TcpState::SynSent)?;
        states.next().filter(|span| span.state == TcpState::Closed)?;
        Some(FailedConnect {
            attempt_ns: syn_sent.duration_ns,
            error: client.counters.and_then(|counters| counters.error),
            syn_retransmits: client.counters.map(|counters| counters.info.total_retrans),
        })
    }

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

/// What the engine knows about one event, for the live stream (by default: nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The socket's owner: the current task in process context, else the one learned earlier.
    pub owner: Option<Owner>,
    /// Time spent in the old state, when its start was seen.
    pub old_state_ns: Option<u64>,
    /// For events without addresses (time-wait timers): the endpoint's (local, remote).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// For time-wait timers: the socket that handed over to the time-wait socket (without a
    /// filter, the kernel names the time-wait socket itself).
    pub handed_over: Option<u64>,
    /// The socket's namespace and cgroup as the engine knows them (time-wait timers carry
    /// neither; most events carry no cgroup).
    pub home: Home,
}

impl Attribution {
    /// For an event the engine found no socket for.
    pub(super) fn unmatched(event: &TcpEvent) -> Attribution {
        let owner = event.task.as_owner();
        Attribution { owner, home: event.home, ..Attribution::default() }
    }
}

pub enum Output<'a> {
    Event(&'a TcpEvent, Attribution),
    Connection(&'a Connection),
    /// An owner's sockets stuck in a state changed in number.
    Stuck(&'a super::Stuck),
    /// A connection's sockets have all closed (with `report_closes`): who closed first.
    Closed(Closer),
}
