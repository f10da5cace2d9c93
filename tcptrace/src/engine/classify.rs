//! Who closed a connection first, read from what each endpoint did: from a connection
//! record's endpoints, or (for the metrics daemon, which counts every close as it happens)
//! straight from the sides the engine follows, with no record built for it.

use super::{
    Closer, Connection, Endpoint, Role,
    storage::{NO_INDEX, Side, Steps, at},
};
use crate::event::TcpState;

/// What one endpoint did, as far as who closed first goes.
pub(super) struct Acts<'a> {
    /// Its role, or else its peer's opposite.
    role: Role,
    steps: &'a Steps,
    reset_sent_ns: Option<u64>,
    reset_received_ns: Option<u64>,
    /// (time, in process context) of a close straight to CLOSED without FIN.
    abort: Option<(u64, bool)>,
    has_time_wait: bool,
}

impl<'a> Acts<'a> {
    fn of_endpoint(connection: &Connection, endpoint: &'a Endpoint) -> Acts<'a> {
        Acts {
            role: connection.role_of(endpoint),
            steps: &endpoint.steps,
            reset_sent_ns: endpoint.reset_sent_ns,
            reset_received_ns: endpoint.reset_received_ns,
            abort: endpoint.abort,
            has_time_wait: endpoint.time_wait.is_some(),
        }
    }

    /// A followed side, whose role is `role` (resolved from its peer's where unknown).
    pub(super) fn of_side(side: &'a Side, role: Role) -> Acts<'a> {
        Acts {
            role,
            steps: &side.steps,
            reset_sent_ns: at(side.reset_sent_ns),
            reset_received_ns: at(side.reset_received_ns),
            abort: at(side.abort_ns).map(|ns| (ns, side.abort_in_process)),
            has_time_wait: side.time_wait != NO_INDEX,
        }
    }

    fn passed(&self, state: TcpState) -> bool {
        self.steps.passed(state)
    }

    fn entered(&self, state: TcpState) -> Option<u64> {
        self.steps.entered(state)
    }
}

/// Who closed first, from what the connection's endpoints did (see [`classify`]).
pub fn closed_first(connection: &Connection) -> Closer {
    let acts = |endpoint| Acts::of_endpoint(connection, endpoint);
    match connection.endpoints.as_slice() {
        [one] => classify(&[acts(one)]),
        [one, other] => classify(&[acts(one), acts(other)]),
        _ => Closer::Unknown,
    }
}

/// Who closed first, from what each endpoint did.
///
/// The earliest *active* act wins: sending a FIN (entering FIN_WAIT1) or a RST (a reset
/// sent, or an abort straight to CLOSED in process context). Without one, a passive sign
/// tells it: CLOSE_WAIT (the peer's FIN came first) or a RST received. Any endpoint passing
/// CLOSING, or both endpoints sending a FIN before either was in CLOSE_WAIT, is a
/// simultaneous close.
pub(super) fn classify(endpoints: &[Acts]) -> Closer {
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
        .flat_map(|e: &Acts| {
            let fin = e.entered(TcpState::FinWait1).map(|ts| (ts, Act::Fin, e));
            // An abort right after a RST came in is that RST's doing, even in process
            // context (on loopback the peer's RST is handled inside our own connect()).
            let answered_a_reset = |at: u64| e.reset_received_ns.is_some_and(|rst| rst <= at);
            let abort_here =
                e.abort.filter(|&(at, process)| process && !answered_a_reset(at)).map(|(ts, _)| ts);
            let reset = e.reset_sent_ns.or(abort_here).map(|ts| (ts, Act::Reset, e));
            [fin, reset]
        })
        .flatten()
        .min_by_key(|(ts, _, _)| *ts);
    if let Some((_, act, endpoint)) = active {
        return role_closer(endpoint.role, act);
    }
    let passive = endpoints
        .iter()
        .flat_map(|e: &Acts| {
            let fin = e.entered(TcpState::CloseWait).map(|ts| (ts, Act::Fin, e));
            let abort_there = e.abort.filter(|&(_, process)| !process).map(|(ts, _)| ts);
            let reset = e.reset_received_ns.or(abort_there).map(|ts| (ts, Act::Reset, e));
            [fin, reset]
        })
        .flatten()
        .min_by_key(|(ts, _, _)| *ts);
    if let Some((_, act, endpoint)) = passive {
        return role_closer(endpoint.role.opposite(), act);
    }
    // Seen mid-way, as the start-up snapshot found them: no time to order by, but the
    // states still say it. A side that waits for its peer's FIN, or holds the time-wait
    // socket, closed first; a side in CLOSE_WAIT got the FIN first.
    let closed =
        |e: &&Acts| e.passed(TcpState::FinWait1) || e.passed(TcpState::FinWait2) || e.has_time_wait;
    let got_fin = |e: &&Acts| e.passed(TcpState::CloseWait);
    match (endpoints.iter().filter(closed).count(), endpoints.iter().find(got_fin)) {
        (2, _) => Closer::Simultaneous,
        (_, Some(endpoint)) => role_closer(endpoint.role.opposite(), Act::Fin),
        (1, None) => {
            let endpoint = endpoints.iter().find(closed).expect("counted one");
            role_closer(endpoint.role, Act::Fin)
        }
        _ => Closer::Unknown,
    }
}
