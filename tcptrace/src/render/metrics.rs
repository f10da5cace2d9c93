//! Prometheus metrics of what is traced (`--metrics ADDR:PORT`), built with the
//! prometheus-client crate and encoded as OpenMetrics text at each scrape.
//!
//! The number of series is bounded whatever the traffic: no label takes a port, a pid or
//! an address from an open set, except `remote` on the pile-up gauge, which holds only
//! the [`WORST_REMOTES`] remote endpoints with the most ports in TIME-WAIT now. Labels
//! take TCP states (12 × 12 at most), who closed first (6), the end of a TIME-WAIT (2),
//! a RST's direction (2) and a connect's error (the errno names tcptrace knows, 17, and
//! `unknown`): at most 144 + 6 + 2 × 16 + 2 + 18 + 1 + 5 series of those families, and
//! the health gauges beside them.

use std::{
    collections::HashMap,
    sync::{OnceLock, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    engine::{Closer, Connection, Stats, Stuck, TimeWaitEnd},
    event::{EventKind, TcpEvent, TcpState, TraceCounts},
    render::Watcher,
};

/// How many remote endpoints the pile-up gauge names: the ones with the most ephemeral
/// ports held in TIME-WAIT toward them.
pub const WORST_REMOTES: usize = 5;

/// TIME-WAIT lengths, in seconds: most end near 60–62 s (the timer wheel), kills earlier.
const TIME_WAIT_BUCKETS: [f64; 12] =
    [0.001, 0.1, 1.0, 10.0, 30.0, 59.0, 60.0, 60.5, 61.0, 61.5, 62.0, 62.5];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateChange {
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedFirst {
    closed_first: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct End {
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectError {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Remote {
    remote: String,
}

/// Every metric tcptrace serves. Updated through `&self` (the metrics are atomics), read
/// by the HTTP server at each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    transitions: Family<StateChange, Counter>,
    closes: Family<ClosedFirst, Counter>,
    time_wait_sockets: Gauge,
    time_wait_duration: Family<End, Histogram>,
    resets: Family<Direction, Counter>,
    failed_connects: Family<ConnectError, Counter>,
    stuck: Family<State, Gauge>,
    ports_held: Family<Remote, Gauge>,
    connections: Counter,
    connections_tracked: Gauge,
    events: Counter,
    lost: Counter,
    events_per_second: Gauge<f64, AtomicU64>,
    ring_fill: Gauge<f64, AtomicU64>,
    /// Stuck sockets by owner (pid), for the per-state total.
    stuck_by_owner: std::sync::Mutex<HashMap<Option<u32>, i64>>,
    /// `transitions`' counter of each (old, new) pair of states (as numbers), once it
    /// exists: every event counts one, and the family's own lookup hashes both labels'
    /// text (SipHash, then compares it: about 8% of the metrics daemon's CPU).
    transition_counters: [[OnceLock<Counter>; STATES]; STATES],
}

const STATES: usize = TcpState::ALL.len();

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tcptrace");
        let transitions = Family::<StateChange, Counter>::default();
        registry.register(
            "transitions",
            "TCP state changes, by the state left and the state entered",
            transitions.clone(),
        );
        let closes = Family::<ClosedFirst, Counter>::default();
        registry.register(
            "closes",
            "Connections whose sockets all closed, by who closed first (counted at the close, not after TIME-WAIT)",
            closes.clone(),
        );
        let time_wait_sockets = Gauge::default();
        registry.register(
            "time_wait_sockets",
            "TIME-WAIT sockets open now (and orphaned FIN_WAIT2 ones, kept the same way)",
            time_wait_sockets.clone(),
        );
        let time_wait_duration =
            Family::<End, Histogram>::new_with_constructor(|| Histogram::new(TIME_WAIT_BUCKETS));
        registry.register_with_unit(
            "time_wait_duration",
            "How long TIME-WAITs lasted, by how they ended (expired: the timer ran out; killed: ended early)",
            Unit::Seconds,
            time_wait_duration.clone(),
        );
        let resets = Family::<Direction, Counter>::default();
        registry.register("resets", "RSTs this host sent or received", resets.clone());
        let failed_connects = Family::<ConnectError, Counter>::default();
        registry.register(
            "failed_connects",
            "Connects that never got through, by the socket's error (ECONNREFUSED, ETIMEDOUT, …)",
            failed_connects.clone(),
        );
        let stuck = Family::<State, Gauge>::default();
        registry.register(
            "stuck_sockets",
            "Sockets stuck in a state longer than --stuck-after (CLOSE_WAIT: the application never closed them)",
            stuck.clone(),
        );
        let ports_held = Family::<Remote, Gauge>::default();
        registry.register(
            "time_wait_ports_held",
            "Ephemeral ports held in TIME-WAIT toward a remote endpoint: the worst few only",
            ports_held.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "connections",
            "Connection records written (after their TIME-WAIT)",
            connections.clone(),
        );
        let connections_tracked = Gauge::default();
        registry.register(
            "connections_tracked",
            "Connections followed now",
            connections_tracked.clone(),
        );
        let events = Counter::default();
        registry.register("events", "Kernel events read", events.clone());
        let lost = Counter::default();
        registry.register(
            "lost_events",
            "Kernel events lost because the ring buffer was full (raise --ring-size)",
            lost.clone(),
        );
        let events_per_second = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "events_per_second",
            "Kernel events read per second, over the last second",
            events_per_second.clone(),
        );
        let ring_fill = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ring_fill_ratio",
            "How full the fullest ring buffer was at its fullest read in the last second (0 to 1)",
            ring_fill.clone(),
        );
        Metrics {
            registry,
            transitions,
            closes,
            time_wait_sockets,
            time_wait_duration,
            resets,
            failed_connects,
            stuck,
            ports_held,
            connections,
            connections_tracked,
            events,
            lost,
            events_per_second,
            ring_fill,
            stuck_by_owner: Default::default(),
            transition_counters: Default::default(),
        }
    }

    /// Events read per second and how full the ring got, over the last second.
    pub fn health(&self, events_per_second: f64, ring_fill: f64) {
        self.events_per_second.set(events_per_second);
        self.ring_fill.set(ring_fill);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String can't fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Events counted so far (for the events-per-second gauge).
    pub fn events_so_far(&self) -> u64 {
        self.events.get()
    }
}

/// The OpenMetrics content type, for the HTTP response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Watcher for Metrics {
    /// One event the engine processed.
    fn event(&self, event: &TcpEvent) {
        match event.kind {
            EventKind::Transition { old, new, .. } if old != new => {
                let counter =
                    self.transition_counters[old as usize][new as usize].get_or_init(|| {
                        let labels = StateChange { from: old.name(), to: new.name() };
                        self.transitions.get_or_create(&labels).clone()
                    });
                counter.inc();
            }
            EventKind::ResetSent => {
                self.resets.get_or_create(&Direction { direction: "sent" }).inc();
            }
            EventKind::ResetReceived => {
                self.resets.get_or_create(&Direction { direction: "received" }).inc();
            }
            _ => {}
        }
    }

    /// A connection's sockets all closed.
    fn closed(&self, closer: Closer) {
        self.closes.get_or_create(&ClosedFirst { closed_first: closer.name() }).inc();
    }

    /// A connection record was written: its TIME-WAITs have ended, its connect may have
    /// failed.
    fn connection(&self, connection: &Connection) {
        self.connections.inc();
        for endpoint in &connection.endpoints {
            let Some(tw) = &endpoint.time_wait else { continue };
            if let (Some(duration), TimeWaitEnd::Expired | TimeWaitEnd::Killed) =
                (tw.duration_ns(), tw.end)
            {
                let end = End { end: tw.end.name() };
                self.time_wait_duration.get_or_create(&end).observe(duration as f64 / 1e9);
            }
        }
        if let Some(failed) = connection.failed_connect() {
            let error = failed.error.map_or("unknown".into(), |errno| errno.name().into_owned());
            self.failed_connects.get_or_create(&ConnectError { error }).inc();
        }
    }

    /// An owner's stuck sockets changed in number.
    fn stuck(&self, stuck: &Stuck) {
        let mut by_owner = self.stuck_by_owner.lock().unwrap_or_else(|e| e.into_inner());
        by_owner.insert(stuck.owner.map(|owner| owner.pid), stuck.count as i64);
        by_owner.retain(|_, count| *count > 0);
        let total: i64 = by_owner.values().sum();
        self.stuck.get_or_create(&State { state: stuck.state.name() }).set(total);
    }

    fn update(&self, stats: &Stats, counts: &TraceCounts, tracked: usize) {
        self.time_wait_sockets.set(stats.time_waits_open as i64);
        self.connections_tracked.set(tracked as i64);
        let lost = self.lost.get();
        if counts.lost > lost {
            self.lost.inc_by(counts.lost - lost);
        }
        let events = self.events.get();
        if counts.events > events {
            self.events.inc_by(counts.events - events);
        }
        let mut worst: Vec<(u64, String)> = stats
            .time_wait_toward_remote
            .iter()
            .filter(|(_, pressure)| pressure.now > 0)
            .map(|((_, _, remote), pressure)| (pressure.now, remote.to_string()))
            .collect();
        worst.sort_unstable_by(|a, b| b.cmp(a));
        worst.truncate(WORST_REMOTES);
        // Several local addresses (or namespaces) may hold ports toward one remote: summed.
        let mut held: HashMap<String, i64> = HashMap::new();
        for (now, remote) in worst {
            *held.entry(remote).or_default() += now as i64;
        }
        self.ports_held.clear();
        for (remote, now) in held {
            self.ports_held.get_or_create(&Remote { remote }).set(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{server_closes_first, simultaneous_close};

    #[test]
    fn closes_transitions_and_time_waits_are_counted_with_bounded_labels() {
        let metrics = Metrics::new();
        let mut r = simultaneous_close();
        server_closes_first(&mut r);
        let (connections, attributed, engine) = r.run(1400.0);
        for (event, _) in &attributed {
            metrics.event(event);
        }
        for connection in &connections {
            metrics.closed(connection.closed_first);
            metrics.connection(connection);
        }
        let counts = TraceCounts { events: attributed.len() as u64, ..Default::default() };
        metrics.update(engine.stats(), &counts, engine.tracked());
        let text = metrics.encode();
        assert!(text.contains("tcptrace_closes_total{closed_first=\"simultaneous\"} 1"), "{text}");
        assert!(text.contains("tcptrace_closes_total{closed_first=\"server\"} 1"), "{text}");
        assert!(
            text.contains("tcptrace_transitions_total{from=\"ESTABLISHED\",to=\"FIN_WAIT1\"} 3"),
            "{text}"
        );
        assert!(text.contains("tcptrace_time_wait_duration_seconds_count{end=\"expired\"} 2"));
        assert!(text.contains(&format!("tcptrace_events_total {}", attributed.len())));
        assert!(text.ends_with("# EOF\n"));
    }
}
