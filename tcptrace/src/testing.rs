//! Builders of recorded event streams for tests (the engine's, the exporters').

use crate::{
    engine::{Attribution, Connection, Engine, EngineOptions, Output},
    event::{Comm, Counters, EventKind, Home, Task, TcpEvent, TcpState, TcpState::*},
};

pub const S: u64 = 1_000_000_000;

/// A recorded stream, built one event at a time.
#[derive(Default)]
pub struct Recording {
    pub events: Vec<TcpEvent>,
    /// The namespace the next socket events are in (timer events carry none).
    pub netns: Option<u32>,
}

pub fn task(pid: Option<u32>) -> Task {
    Task {
        pid: pid.unwrap_or(4242), // in softirq: some unrelated task
        tid: pid.unwrap_or(4242),
        comm: Comm::new(if pid.is_some() { "owner" } else { "bystander" }),
        process_context: pid.is_some(),
    }
}

impl Recording {
    /// The events added from now on are in namespace `netns`.
    pub fn in_netns(&mut self, netns: u32) -> &mut Self {
        self.netns = Some(netns);
        self
    }

    /// `at` in seconds (as the notes print them); `pid` only for process-context events.
    pub fn transition(
        &mut self,
        at: f64,
        sk: u64,
        old: TcpState,
        new: TcpState,
        (local, remote): (&str, &str),
        pid: Option<u32>,
    ) -> &mut Self {
        self.push(
            at,
            sk,
            EventKind::Transition { old, new, time_wait_timer: None },
            Some((local, remote)),
            pid,
        )
    }

    pub fn hand_over_to_time_wait(
        &mut self,
        at: f64,
        sk: u64,
        old: TcpState,
        (local, remote): (&str, &str),
        timer: u64,
    ) -> &mut Self {
        let kind = EventKind::Transition { old, new: Closed, time_wait_timer: Some(timer) };
        self.push(at, sk, kind, Some((local, remote)), None)
    }

    /// The last event carries a closing socket's counters.
    pub fn with_counters(&mut self, counters: Counters) -> &mut Self {
        self.events.last_mut().expect("an event to give counters to").counters = Some(counters);
        self
    }

    pub fn timer(&mut self, at: f64, sk: u64, kind: EventKind) -> &mut Self {
        self.push(at, sk, kind, None, None)
    }

    pub fn reset(
        &mut self,
        at: f64,
        sk: u64,
        sent: bool,
        (local, remote): (&str, &str),
        pid: Option<u32>,
    ) -> &mut Self {
        let kind = if sent { EventKind::ResetSent } else { EventKind::ResetReceived };
        self.push(at, sk, kind, Some((local, remote)), pid)
    }

    fn push(
        &mut self,
        at: f64,
        sk: u64,
        kind: EventKind,
        addresses: Option<(&str, &str)>,
        pid: Option<u32>,
    ) -> &mut Self {
        self.events.push(TcpEvent {
            ts_ns: (at * S as f64).round() as u64,
            sk,
            kind,
            addresses: addresses.map(|(l, r)| (l.parse().unwrap(), r.parse().unwrap())),
            task: task(pid),
            cpu: 0,
            counters: None,
            home: Home { netns: self.netns.filter(|_| addresses.is_some()), cgroup: None },
        });
        self
    }

    /// Runs the engine as live tracing does (advance after each event), ending at `end`.
    pub fn run(&self, end: f64) -> (Vec<Connection>, Vec<(TcpEvent, Attribution)>, Engine) {
        run_events(self.events.iter().copied(), end, EngineOptions::default())
    }
}

/// An engine output callback that keeps a copy of every connection handed out.
pub fn collect_connections(into: &mut Vec<Connection>) -> impl FnMut(Output<'_>) + '_ {
    |output| {
        if let Output::Connection(connection) = output {
            into.push(connection.clone());
        }
    }
}

pub fn run_events(
    events: impl IntoIterator<Item = TcpEvent>,
    end: f64,
    options: EngineOptions,
) -> (Vec<Connection>, Vec<(TcpEvent, Attribution)>, Engine) {
    let mut engine = Engine::new(options);
    let mut connections = Vec::new();
    let mut attributed = Vec::new();
    let mut collect = |output: Output<'_>| match output {
        Output::Event(event, attribution) => attributed.push((*event, attribution)),
        Output::Connection(connection) => connections.push(connection.clone()),
        Output::Stuck(_) | Output::Closed(_) => {}
    };
    for event in events {
        let ts = event.ts_ns;
        engine.push(event);
        engine.advance(ts, &mut collect);
    }
    engine.finish((end * S as f64) as u64, &mut collect);
    (connections, attributed, engine)
}

pub const CURL: (&str, &str) = ("127.0.0.1:58466", "127.0.0.1:18084");
pub const CURL_CONNECT: (&str, &str) = ("127.0.0.1:0", "127.0.0.1:18084");
pub const SERVER: (&str, &str) = ("127.0.0.1:18084", "127.0.0.1:58466");
pub const CLIENT_SK: u64 = 0xffff_8880_0000_2e40;
pub const SERVER_SK: u64 = 0xffff_8880_0000_2500;

/// Adds, at 1300 s, a connection whose server (socket 12, pid 1743) closes first and hands
/// over to a time-wait socket with timer 0x5150; the timer's end is the caller's to add.
pub fn server_closes_first(r: &mut Recording) -> &mut Recording {
    let client = ("127.0.0.1:40001", "127.0.0.1:18084");
    let server = ("127.0.0.1:18084", "127.0.0.1:40001");
    r.transition(1300.0, 11, Closed, SynSent, client, Some(31))
        .transition(1300.0001, 11, SynSent, Established, client, None)
        .transition(1300.00015, 12, Listen, SynReceived, server, None)
        .transition(1300.0002, 12, SynReceived, Established, server, None)
        .transition(1300.002, 12, Established, FinWait1, server, Some(1743))
        .transition(1300.00201, 11, Established, CloseWait, client, None)
        .transition(1300.00202, 12, FinWait1, FinWait2, server, None)
        .transition(1300.00203, 11, CloseWait, LastAck, client, Some(31))
        .hand_over_to_time_wait(1300.00204, 12, FinWait2, server, 0x5150)
        .transition(1300.00205, 11, LastAck, Closed, client, None)
}

/// The notes' curl vs `python3 -m http.server`: both closed within 13 µs.
pub fn simultaneous_close() -> Recording {
    let mut r = Recording::default();
    r.transition(1293.602893, CLIENT_SK, Closed, SynSent, CURL_CONNECT, Some(2910))
        .transition(1293.602971, CLIENT_SK, SynSent, Established, CURL, None)
        .transition(1293.602979, SERVER_SK, Listen, SynReceived, SERVER, None)
        .transition(1293.602988, SERVER_SK, SynReceived, Established, SERVER, None)
        .transition(1293.604595, SERVER_SK, Established, FinWait1, SERVER, Some(1743))
        .transition(1293.604608, CLIENT_SK, Established, FinWait1, CURL, Some(2910))
        .transition(1293.604620, SERVER_SK, FinWait1, Closing, SERVER, None)
        .transition(1293.604622, SERVER_SK, Closing, Closing, SERVER, None)
        .hand_over_to_time_wait(1293.604636, SERVER_SK, Closing, SERVER, 0x22a0)
        .transition(1293.604643, CLIENT_SK, FinWait1, Closing, CURL, None)
        .hand_over_to_time_wait(1293.604648, CLIENT_SK, Closing, CURL, 0x21a0)
        .timer(1354.972091, CLIENT_SK, EventKind::TimeWaitCancel { timer: 0x21a0 })
        .timer(1354.972116, CLIENT_SK, EventKind::TimeWaitExpire { timer: 0x21a0 })
        .timer(1354.972124, SERVER_SK, EventKind::TimeWaitCancel { timer: 0x22a0 })
        .timer(1354.972125, SERVER_SK, EventKind::TimeWaitExpire { timer: 0x22a0 });
    r
}

/// What a start-up snapshot at 1000 s found: a listener on 18084 (pid 1743), one
/// connection to it with both ends on this host (`PAIR_CLIENT`, `PAIR_SERVER`), and a
/// TIME-WAIT from an earlier one with 41 s left.
pub fn seen_at_start() -> Vec<crate::event::SeenSocket> {
    use crate::event::{Owner, SeenSocket};
    let seen =
        |state, (local, remote): (&str, &str), pid: Option<u32>, left: Option<u64>| SeenSocket {
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            home: Home { netns: Some(4026531840), cgroup: None },
            owner: pid.map(|pid| Owner { pid, comm: Comm::new("owner") }),
            time_wait_left_ns: left,
        };
    vec![
        seen(Listen, ("0.0.0.0:18084", "0.0.0.0:0"), Some(1743), None),
        seen(Established, PAIR_CLIENT, Some(31), None),
        seen(Established, PAIR_SERVER, Some(1743), None),
        seen(TimeWait, EARLIER_TIME_WAIT, None, Some(41 * S)),
    ]
}

pub const PAIR_CLIENT: (&str, &str) = ("127.0.0.1:40100", "127.0.0.1:18084");
pub const PAIR_SERVER: (&str, &str) = ("127.0.0.1:18084", "127.0.0.1:40100");
pub const EARLIER_TIME_WAIT: (&str, &str) = ("127.0.0.1:40090", "127.0.0.1:18084");

impl Recording {
    /// A cancel or re-arm (`kind`) of a time-wait timer the kernel program met for the
    /// first time: it carries the time-wait socket's addresses and namespace.
    pub fn met_time_wait(
        &mut self,
        at: f64,
        tw: u64,
        kind: EventKind,
        tuple: (&str, &str),
    ) -> &mut Self {
        self.push(at, tw, kind, Some(tuple), None)
    }
}

/// Runs the engine as live tracing does, with a snapshot that began at `began` and was
/// done at `done` (in seconds) finding `seen`.
pub fn run_with_snapshot(
    events: &[TcpEvent],
    (began, done): (f64, f64),
    seen: Vec<crate::event::SeenSocket>,
    end: f64,
) -> (Vec<Connection>, Engine) {
    let mut engine = Engine::new(EngineOptions::default());
    let mut connections = Vec::new();
    let at = |seconds: f64| (seconds * S as f64) as u64;
    engine.snapshot_began(at(began));
    let mut seeded = false;
    for event in events {
        if !seeded && event.ts_ns > at(done) {
            seeded = true;
            engine.seen(seen.clone());
            engine.snapshot_done(at(done));
        }
        engine.push(*event);
        engine.advance(event.ts_ns, &mut collect_connections(&mut connections));
    }
    if !seeded {
        engine.seen(seen);
        engine.snapshot_done(at(done));
    }
    engine.finish(at(end), &mut collect_connections(&mut connections));
    (connections, engine)
}
