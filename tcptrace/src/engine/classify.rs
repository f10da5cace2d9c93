//! Who closed a connection first, read from what each endpoint did.

use super::{Closer, Connection, Role};
use crate::event::TcpState;

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
    if let Some((_, act, endpoint)) = passive {
        return role_closer(connection.role_of(endpoint).opposite(), act);
    }
    // Seen mid-way, as the start-up snapshot found them: no time to order by, but the
    // states still say it. A side that waits for its peer's FIN, or holds the time-wait
    // socket, closed first; a side in CLOSE_WAIT got the FIN first.
    let closed = |e: &&super::Endpoint| {
        e.passed(TcpState::FinWait1) || e.passed(TcpState::FinWait2) || e.time_wait.is_some()
    };
    let got_fin = |e: &&super::Endpoint| e.passed(TcpState::CloseWait);
    match (endpoints.iter().filter(closed).count(), endpoints.iter().find(got_fin)) {
        (2, _) => Closer::Simultaneous,
        (_, Some(endpoint)) => role_closer(connection.role_of(endpoint).opposite(), Act::Fin),
        (1, None) => {
            let endpoint = endpoints.iter().find(closed).expect("counted one");
            role_closer(connection.role_of(endpoint), Act::Fin)
        }
        _ => Closer::Unknown,
    }
}
