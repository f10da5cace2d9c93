//! Property tests: the lifecycle engine and the recording reader take any input without
//! panicking or growing without bound. CI runs the default number of cases; `cargo xtask
//! fuzz` runs many more. Failing cases proptest finds are kept in
//! `tests/properties.proptest-regressions` and rerun first, as regression tests.

use std::net::SocketAddr;

use proptest::prelude::*;
use tcptrace::{
    engine::{Engine, EngineOptions, Output},
    event::{Comm, Counters, Errno, EventKind, Home, Task, TcpEvent, TcpInfo, TcpState},
    names::{Cgroup, Learned},
    recording::{FORMAT_VERSION, Item, Reader, Recorder, RecordingHeader},
};

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        Just("127.0.0.1:8080"),
        Just("127.0.0.1:40000"),
        Just("127.0.0.1:0"),
        Just("[::1]:8080"),
        Just("[::1]:40000"),
        Just("10.0.0.1:443"),
    ]
    .prop_map(|text| text.parse().unwrap())
}

fn state() -> impl Strategy<Value = TcpState> {
    proptest::sample::select(TcpState::ALL.to_vec())
}

fn kind() -> impl Strategy<Value = EventKind> {
    let timer = 1..5u64;
    prop_oneof![
        4 => (state(), state(), proptest::option::of(timer.clone()))
            .prop_map(|(old, new, time_wait_timer)| EventKind::Transition { old, new, time_wait_timer }),
        1 => (timer.clone(), any::<u32>()).prop_map(|(timer, timeout_jiffies)| EventKind::TimeWaitRearm { timer, timeout_jiffies }),
        1 => timer.clone().prop_map(|timer| EventKind::TimeWaitCancel { timer }),
        1 => timer.prop_map(|timer| EventKind::TimeWaitExpire { timer }),
        1 => Just(EventKind::ResetSent),
        1 => Just(EventKind::ResetReceived),
    ]
}

/// A closing socket's counters, any values (the recording must carry them all).
fn counters() -> impl Strategy<Value = Counters> {
    (any::<[u64; 3]>(), any::<[u32; 6]>(), proptest::option::of(1..200u16)).prop_map(
        |([bytes_acked, bytes_received, bytes_retrans], [a, b, c, d, e, f], error)| Counters {
            info: TcpInfo {
                bytes_acked,
                bytes_received,
                bytes_retrans,
                segs_out: a,
                segs_in: b,
                total_retrans: c,
                rtt_us: d,
                min_rtt_us: e,
                snd_cwnd: f,
            },
            error: error.map(Errno),
        },
    )
}

/// Events from a few sockets, timers and addresses, so that they collide and reuse each
/// other the way real ones do; times wander, so some arrive out of order.
fn event() -> impl Strategy<Value = (i64, TcpEvent)> {
    (
        -3_000_000i64..20_000_000,
        1..8u64,
        kind(),
        proptest::option::of((address(), address())),
        any::<bool>(),
        0..3u32,
        proptest::option::of(counters()),
        (proptest::option::of(1..3u32), proptest::option::of(1..3u64)),
    )
        .prop_map(
            |(step, sk, kind, addresses, process_context, pid, counters, (netns, cgroup))| {
                let addresses = match kind {
                    EventKind::Transition { .. } => addresses
                        .or(Some(("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()))),
                    _ => addresses,
                };
                let task = Task { pid, tid: pid, comm: Comm::new("p"), process_context };
                // Only closes carry counters.
                let closes = matches!(kind, EventKind::Transition { new: TcpState::Closed, .. });
                let counters = counters.filter(|_| closes);
                let home = Home { netns, cgroup };
                (step, TcpEvent { ts_ns: 0, sk, kind, addresses, task, cpu: 0, counters, home })
            },
        )
}

/// The address of whole connections, which random events never use.
const WHOLE_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9));

/// A whole, well-formed connection (the client closes first, no TIME-WAIT tracked), on
/// sockets of its own: random streams alone are nearly always incomplete, and the loss
/// property needs connections that would otherwise be complete. Connections `2k` and
/// `2k + 1` have the same addresses, in namespaces 10 and 11.
fn whole_connection(n: u64) -> Vec<(i64, TcpEvent)> {
    use TcpState::*;
    let ip = WHOLE_IP.to_string();
    let port = 5000 + (n / 2) as u16;
    let netns = Some(10 + (n % 2) as u32);
    let client: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let server: SocketAddr = format!("{ip}:9000").parse().unwrap();
    let unbound: SocketAddr = format!("{ip}:0").parse().unwrap();
    let (c, s) = (1000 + 2 * n, 1001 + 2 * n);
    let steps = [
        (c, (unbound, server), Closed, SynSent, true),
        (c, (client, server), SynSent, Established, false),
        (s, (server, client), Listen, SynReceived, false),
        (s, (server, client), SynReceived, Established, false),
        (c, (client, server), Established, FinWait1, true),
        (s, (server, client), Established, CloseWait, false),
        (c, (client, server), FinWait1, FinWait2, false),
        (s, (server, client), CloseWait, LastAck, true),
        (c, (client, server), FinWait2, Closed, false),
        (s, (server, client), LastAck, Closed, false),
    ];
    steps
        .into_iter()
        .map(|(sk, addresses, old, new, process_context)| {
            // ESTABLISHED for longer than the reorder window: a loss noticed meanwhile finds
            // the connection processed and open.
            let step = if new == FinWait1 { 50_000_000 } else { 1000 };
            let kind = EventKind::Transition { old, new, time_wait_timer: None };
            let task = Task { pid: 9, tid: 9, comm: Comm::new("whole"), process_context };
            let event = TcpEvent {
                ts_ns: 0,
                sk,
                kind,
                addresses: Some(addresses),
                task,
                cpu: 0,
                counters: None,
                home: Home { netns, cgroup: None },
            };
            (step, event)
        })
        .collect()
}

fn stream() -> impl Strategy<Value = Vec<(i64, TcpEvent)>> {
    proptest::collection::vec(event(), 0..300)
}

proptest! {
    #[test]
    fn the_engine_takes_any_stream(events in stream(), losses in proptest::collection::vec(0..300usize, 0..3), wholes in proptest::collection::vec(0..300usize, 0..4)) {
        let mut events = events;
        for (n, &at) in wholes.iter().enumerate() {
            // Twins, interleaved: the same 4-tuple in two namespaces at once.
            let n = 2 * n as u64;
            let twins = whole_connection(n).into_iter().zip(whole_connection(n + 1));
            let twins = twins.flat_map(|(first, (_, second))| [first, (100, second)]);
            let at = at.min(events.len());
            events.splice(at..at, twins);
        }
        let max_connections = 16;
        let mut engine = Engine::new(EngineOptions { max_connections, ..EngineOptions::default() });
        let mut emitted = 0u64;
        // Every event up to the newest one seen when a loss was noticed may have lost company.
        let mut loss_horizon: Option<u64> = None;
        let mut newest = 0u64;
        let mut now: i64 = 1_000_000_000;
        // A connection with a state entered up to the loss horizon must say it is incomplete.
        let mut check = |connection: &tcptrace::engine::Connection, horizon: Option<u64>| {
            emitted += 1;
            assert!((1..=2).contains(&connection.endpoints.len()));
            // The twins of whole connections (same loopback addresses, two namespaces)
            // never pair across them. (Random events move sockets between any addresses,
            // which real ones never do, so only the twins say something here.)
            let twin = |endpoint: &tcptrace::engine::Endpoint| endpoint.local.ip() == WHOLE_IP;
            if let [a, b] = &connection.endpoints[..]
                && (twin(a) || twin(b))
            {
                assert_eq!(a.home.netns, b.home.netns, "paired across namespaces: {connection:#?}");
            }
            // And, all their events seen, they pair: each twin is one connection.
            if connection.endpoints.iter().any(twin) && !connection.incomplete {
                assert_eq!(connection.endpoints.len(), 2, "a twin left unpaired: {connection:#?}");
            }
            let touched_before_loss = connection.endpoints.iter().any(|endpoint| {
                endpoint.states().any(|span| span.enter_ns.zip(horizon).is_some_and(|(at, h)| at <= h))
            });
            assert!(
                connection.incomplete || !touched_before_loss,
                "a connection with events from before a loss is not marked incomplete: {connection:#?}"
            );
        };
        for (index, (step, mut event)) in events.into_iter().enumerate() {
            now = (now + step).max(0);
            event.ts_ns = now as u64;
            newest = newest.max(event.ts_ns);
            engine.push(event);
            if losses.contains(&index) {
                engine.lost(1, now as u64);
                loss_horizon = Some(newest.max(now as u64));
            }
            engine.advance(now as u64, &mut |output| {
                if let Output::Connection(connection) = output {
                    check(connection, loss_horizon);
                }
            });
            prop_assert!(engine.tracked() <= max_connections + 1);
        }
        engine.finish(now as u64 + 1, &mut |output| {
            if let Output::Connection(connection) = output {
                check(connection, loss_horizon);
            }
        });
        prop_assert_eq!(engine.tracked(), 0);
        prop_assert_eq!(engine.stats().connections, emitted);
    }

    #[test]
    fn recordings_round_trip(events in proptest::collection::vec(event(), 0..50), name in "\\PC{0,15}", path in proptest::option::of("/\\PC{0,40}"), inode in any::<u32>()) {
        let header = RecordingHeader { version: FORMAT_VERSION, ephemeral_ports: (32768, 60999), realtime_offset_ns: -5 };
        let mut recorder = Recorder::new(Vec::new(), &header).unwrap();
        let mut expected = Vec::new();
        for learned in [
            Learned::NetnsName { inode, name: name.clone() },
            Learned::Cgroup { id: u64::from(inode) << 3, cgroup: path.map(Cgroup::new) },
        ] {
            recorder.name(&learned).unwrap();
            expected.push(Item::Name(learned));
        }
        for (i, (_, mut event)) in events.into_iter().enumerate() {
            event.ts_ns = i as u64;
            event.task.comm = Comm::new(&name);
            recorder.event(&event).unwrap();
            expected.push(Item::Event(event));
        }
        recorder.end(99).unwrap();
        expected.push(Item::End { ts_ns: 99 });
        let bytes = recorder.into_inner();
        let mut reader = Reader::new(bytes.as_slice()).unwrap();
        let mut items = Vec::new();
        while let Some(item) = reader.next_item() {
            items.push(item.unwrap());
        }
        prop_assert_eq!(reader.header, header);
        prop_assert_eq!(items, expected);
    }

    #[test]
    fn the_reader_takes_any_damage(events in proptest::collection::vec(event(), 1..20), cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        let header = RecordingHeader { version: FORMAT_VERSION, ephemeral_ports: (1, 2), realtime_offset_ns: 0 };
        let mut recorder = Recorder::new(Vec::new(), &header).unwrap();
        for (_, event) in &events {
            recorder.event(event).unwrap();
        }
        let mut bytes = recorder.into_inner();
        let cut = cut.index(bytes.len());
        bytes.truncate(cut.max(1));
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        // Any outcome but a panic: an error names a line, or the items read are valid.
        match Reader::new(bytes.as_slice()) {
            Ok(mut reader) => {
                while let Some(item) = reader.next_item() {
                    if let Err(error) = item {
                        prop_assert!(error.line > 0, "{}", error);
                        break;
                    }
                }
            }
            Err(error) => prop_assert_eq!(error.line, 1),
        }
    }
}
