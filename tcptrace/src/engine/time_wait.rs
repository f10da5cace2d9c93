//! Following time-wait sockets. A socket entering TIME-WAIT hands over to a kernel
//! time-wait socket whose life is its timer: `cancel` then `expire` is a natural end,
//! `cancel` alone an early kill, `rearm` a restart (a FIN or a retransmission arrived;
//! recordings from before the kernel program told re-arms at the cancel have `cancel` then
//! `rearm`). Each open one holds its ephemeral port, counted toward its remote endpoint.

use std::net::SocketAddr;

use super::{
    Attribution, Engine, TimeWait, TimeWaitEnd, TimeWaitKind, TimerOf,
    stats::TowardKey,
    storage::{Address, Homes, Index, Side, Tracked},
};
use crate::event::{TcpEvent, TcpState};

impl Engine {
    pub(super) fn start_time_wait(&mut self, index: Index, ts: u64, old: TcpState, timer: u64) {
        // A timer address still mapped belongs to an earlier time-wait socket that was
        // killed (its memory was reused): close that one too.
        if let Some(stale) = self.by_timer.remove(&timer)
            && self.is_timer_of(timer, stale)
        {
            let tw = self.time_waits.get_mut(stale.time_wait).expect("checked just above");
            if tw.end == TimeWaitEnd::Open {
                tw.end = TimeWaitEnd::Killed;
                tw.end_ns = Some(tw.pending_cancel_ns.unwrap_or(ts));
            }
            self.release_port(stale.side);
            // Its connection may be over now, like after any other kill.
            let connection = self.side(stale.side).connection;
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
        let time_wait = self.hold_time_wait(index, TimeWait::opened(kind, timer, Some(ts), ts));
        self.by_timer.insert(timer, TimerOf { side: index, time_wait });
    }

    /// Side `index` now has time-wait socket `time_wait`, which holds its port; returns
    /// where the time-wait is kept.
    pub(super) fn hold_time_wait(&mut self, index: Index, time_wait: TimeWait) -> Index {
        let ephemeral_ports = self.options.ephemeral_ports;
        if let Some(key) = port_pressure_key(self.side(index), &self.homes, ephemeral_ports) {
            self.port_pressure(key, true);
        }
        self.stats.time_waits_open += 1;
        let previous = self.side(index).time_wait;
        self.time_waits.remove(previous);
        let time_wait = self.time_waits.insert(time_wait);
        self.side_mut(index).time_wait = time_wait;
        time_wait
    }

    /// The peer of the side with `tuple` sent its FIN: an orphaned FIN_WAIT2 time-wait
    /// socket on the other side becomes a real TIME-WAIT.
    pub(super) fn peer_sent_fin(&mut self, index: Index, tuple: (Address, Address), ts: u64) {
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

    pub(super) fn timer_event(
        &mut self,
        event: &TcpEvent,
        timer: u64,
        update: impl FnOnce(&mut TimeWait, u64, TimerOf),
    ) -> (Attribution, Option<Index>) {
        // Addresses on a timer event: the kernel program met a time-wait socket from before
        // tracing began (its cancel or re-arm is the first heard of it).
        if event.addresses.is_some() && self.side_of_timer(timer).is_none() {
            self.meet_time_wait(event, timer);
        }
        let Some(found) = self.side_of_timer(timer) else {
            self.stats.unmatched_events += 1;
            let attribution = Attribution { owner: None, ..Attribution::unmatched(event) };
            return (attribution, None);
        };
        let side = self.side(found.side);
        let attribution = Attribution {
            owner: side.owner(),
            old_state_ns: None,
            addresses: Some((side.local.into(), side.remote.into())),
            handed_over: (side.sk != 0).then_some(side.sk),
            home: self.homes.get(side.home),
        };
        let connection = side.connection;
        match self.time_waits.get_mut(found.time_wait) {
            Some(tw) if tw.end == TimeWaitEnd::Open => update(tw, event.ts_ns, found),
            _ => return (attribution, None),
        }
        (attribution, Some(connection))
    }

    /// Cancels older than `until_ns` with no expiry or re-arm after them were early kills.
    pub(super) fn resolve_cancels(&mut self, until_ns: u64) {
        while let Some(&(ts, timer, found)) = self.pending_cancels.front() {
            if ts > until_ns {
                break;
            }
            self.pending_cancels.pop_front();
            // Straight to the time-wait the cancel found, not through the timer table: an
            // open one with this timer still holds the table's entry, and a later one with
            // the same address was not cancelled at this very time.
            if !self.is_timer_of(timer, found) {
                continue;
            }
            let tw = self.time_waits.get_mut(found.time_wait).expect("checked just above");
            if tw.end == TimeWaitEnd::Open && tw.pending_cancel_ns == Some(ts) {
                tw.end = TimeWaitEnd::Killed;
                tw.end_ns = Some(ts);
                self.time_wait_ended(timer);
                let connection = self.side(found.side).connection;
                self.finish_if_done(connection, ts);
            }
        }
    }

    /// A time-wait socket with this timer ended (expired or killed): forget the timer and
    /// release its ephemeral port.
    pub(super) fn time_wait_ended(&mut self, timer: u64) {
        if let Some(found) = self.by_timer.remove(&timer) {
            self.release_port(found.side);
        }
    }

    /// The time-wait of side `index` ended: it no longer holds its port.
    pub(super) fn release_port(&mut self, index: Index) {
        self.stats.time_waits_open = self.stats.time_waits_open.saturating_sub(1);
        let key = self
            .sides
            .get(index)
            .and_then(|side| port_pressure_key(side, &self.homes, self.options.ephemeral_ports));
        if let Some(key) = key {
            self.port_pressure(key, false);
        }
    }

    pub(super) fn port_pressure(&mut self, key: TowardKey, started: bool) {
        let pressure = self.stats.time_wait_toward_remote.entry(key).or_default();
        if started {
            pressure.now += 1;
            pressure.peak = pressure.peak.max(pressure.now);
        } else {
            pressure.now = pressure.now.saturating_sub(1);
        }
    }
}

/// The (namespace, local address, remote endpoint) whose ephemeral ports a time-wait
/// socket on this side holds, if its local port is ephemeral.
pub(super) fn port_pressure_key(
    side: &Side,
    homes: &Homes,
    (low, high): (u16, u16),
) -> Option<TowardKey> {
    let local = SocketAddr::from(side.local);
    let netns = homes.get(side.home).netns;
    (low..=high).contains(&local.port()).then(|| (netns, local.ip(), side.remote.into()))
}
