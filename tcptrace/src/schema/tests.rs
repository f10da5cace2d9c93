//! The schema against its writers and its documentation: every line the fast writers make
//! is exactly what serde writes for the schema's types, and every example in docs/json.md
//! is a line of the schema, field for field.

use std::{cell::RefCell, io::Write, rc::Rc};

use serde_json::Value;

use super::*;
use crate::{
    clock::WallClock,
    engine::EngineOptions,
    event::{Counters, Errno, EventKind, TcpInfo, TcpState::*},
    names::{Cgroup, Learned},
    pipeline::{Pipeline, PipelineOptions},
    recording::Recorder,
    render::{explain::Lang, stream::StreamFormat},
    testing::*,
};

/// A writer whose bytes the test can read after the pipeline that owns it is gone.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every kind of event: a simultaneous close, a server-first close with a re-armed
/// TIME-WAIT, an IPv6 connection reset by its client, a RST with no socket, a name that
/// needs escapes, and a connection still open at the end.
fn every_kind_of_event() -> Vec<crate::event::TcpEvent> {
    let mut r = Recording::default();
    r.in_netns(4026531840);
    r.events = simultaneous_close().events;
    server_closes_first(&mut r)
        .with_counters(Counters {
            info: TcpInfo {
                bytes_acked: 81,
                bytes_received: 1_024_577,
                segs_out: 9,
                segs_in: 40,
                rtt_us: 25,
                min_rtt_us: 11,
                snd_cwnd: 10,
                ..TcpInfo::default()
            },
            error: None,
        })
        .timer(1310.0, 12, EventKind::TimeWaitCancel { timer: 0x5150 })
        .timer(1310.000001, 12, EventKind::TimeWaitRearm { timer: 0x5150, timeout_jiffies: 15000 })
        .timer(1371.1, 12, EventKind::TimeWaitCancel { timer: 0x5150 })
        .timer(1371.1000001, 12, EventKind::TimeWaitExpire { timer: 0x5150 });
    let v6_client = ("[::1]:40003", "[::1]:18084");
    let v6_server = ("[::1]:18084", "[::1]:40003");
    r.in_netns(4026532177)
        .transition(1380.0, 31, Closed, SynSent, v6_client, Some(32))
        .transition(1380.0001, 31, SynSent, Established, v6_client, None)
        .transition(1380.00015, 32, Listen, SynReceived, v6_server, None)
        .transition(1380.0002, 32, SynReceived, Established, v6_server, None)
        .reset(1380.1, 31, true, v6_client, Some(32))
        .transition(1380.1, 31, Established, Closed, v6_client, Some(32))
        .with_counters(Counters {
            info: TcpInfo { bytes_retrans: 1448, total_retrans: 3, ..TcpInfo::default() },
            error: Some(Errno(libc::ECONNRESET as u16)),
        })
        .reset(1380.10001, 32, false, v6_server, None)
        .transition(1380.10001, 32, Established, Closed, v6_server, None)
        .reset(1381.0, 0, true, ("127.0.0.1:9", "127.0.0.1:40009"), None);
    // A server that never closes what its client closed: stuck in CLOSE_WAIT.
    let leaked = ("127.0.0.1:18084", "127.0.0.1:40004");
    r.transition(1382.0, 41, Listen, SynReceived, leaked, None)
        .transition(1382.001, 41, SynReceived, Established, leaked, None)
        .transition(1383.0, 41, Established, CloseWait, leaked, None);
    let open = ("127.0.0.1:40002", "127.0.0.1:18084");
    r.transition(1390.0, 21, Closed, SynSent, open, Some(66));
    let mut events = r.events;
    events.last_mut().unwrap().task.comm = crate::event::Comm::new("we\"ird\\n\tme");
    // Cgroups where the kernel reads them: the first connect, and the IPv6 one.
    events[0].home.cgroup = Some(5);
    events.iter_mut().find(|e| e.sk == 31).unwrap().home.cgroup = Some(6);
    events
}

/// What those cgroups are: a pod's container, and a cgroup with a name JSON must escape.
fn learned() -> [Learned; 3] {
    let pod = "/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/\
               cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
    [
        Learned::Cgroup { id: 5, cgroup: Some(Cgroup::new(pod.into())) },
        Learned::Cgroup { id: 6, cgroup: Some(Cgroup::new("/we\"ird\\\tgroup".into())) },
        Learned::NetnsName { inode: 4026532177, name: "blue".into() },
    ]
}

/// The `--json` stream of those events, line by line.
fn stream(explain: Option<Lang>) -> Vec<String> {
    let out = Shared::default();
    let options = PipelineOptions {
        format: StreamFormat::Json,
        show_events: true,
        explain,
        engine: EngineOptions { stuck_after_ns: 5 * S, ..EngineOptions::default() },
        ..PipelineOptions::default()
    };
    let mut pipeline = Pipeline::new(out.clone(), WallClock::from_offset(0), options);
    learned().into_iter().for_each(|learned| pipeline.learn(learned));
    for event in every_kind_of_event() {
        let ts = event.ts_ns;
        pipeline.push(event);
        pipeline.advance(ts).unwrap();
    }
    pipeline.lost(3, 1385 * S).unwrap();
    pipeline.finish(1400 * S).unwrap();
    let text = String::from_utf8(out.0.borrow().clone()).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn line_type(line: &str) -> String {
    let value: Value = serde_json::from_str(line).unwrap();
    value["type"].as_str().unwrap().to_owned()
}

#[test]
fn every_stream_line_is_what_serde_writes_for_the_schema() {
    for explain in [None, Some(Lang::En), Some(Lang::Ru)] {
        let lines = stream(explain);
        let mut types: Vec<String> = lines.iter().map(|line| line_type(line)).collect();
        types.sort();
        types.dedup();
        assert_eq!(
            types,
            ["connection", "lost", "reset", "stuck", "summary", "time_wait_timer", "transition"],
            "every stream line type is checked"
        );
        for line in &lines {
            let typed: StreamLine<'_> =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(&serde_json::to_string(&typed).unwrap(), line, "explain {explain:?}");
        }
        let records: Vec<&String> = lines.iter().filter(|l| l.contains("\"connection\"")).collect();
        assert!(
            records
                .iter()
                .any(|l| l.contains(r#""pod_uid":"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0""#))
        );
        assert!(records.iter().any(|l| l.contains(r#""cgroup":"/we\"ird\\\tgroup""#)));
        assert!(lines.iter().any(|l| l.contains(r#""netns":4026532177"#)));
        let notes = lines.iter().filter(|line| line.contains("\"note\":")).count();
        assert_eq!(notes > 0, explain.is_some(), "notes only with --explain");
    }
}

#[test]
fn every_recorded_line_is_what_serde_writes_for_the_schema() {
    let header = RecordingHeader {
        version: FORMAT_VERSION,
        ephemeral_ports: (32768, 60999),
        realtime_offset_ns: -7,
    };
    let mut recorder = Recorder::new(Vec::new(), &header).unwrap();
    learned().iter().for_each(|learned| recorder.name(learned).unwrap());
    recorder.name(&Learned::Cgroup { id: 7, cgroup: None }).unwrap();
    for event in every_kind_of_event() {
        recorder.event(&event).unwrap();
    }
    recorder.snapshot(1380 * S, None).unwrap();
    for socket in crate::testing::seen_at_start() {
        recorder.seen(&socket).unwrap();
    }
    recorder.snapshot(1381 * S, Some(2)).unwrap();
    recorder.lost(1385 * S, 3).unwrap();
    recorder.end(1400 * S).unwrap();
    let text = String::from_utf8(recorder.into_inner()).unwrap();
    let mut types: Vec<String> = text.lines().map(line_type).collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        [
            "cgroup",
            "end",
            "lost",
            "netns",
            "reset",
            "seen_at_start",
            "snapshot",
            "tcptrace_recording",
            "time_wait_timer",
            "transition"
        ],
        "every recording line type is checked"
    );
    for line in text.lines() {
        let typed: RecordingLine<'_> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(serde_json::to_string(&typed).unwrap(), line);
    }
}

/// The JSON in docs/json.md's ```json blocks: each block one object, or one per line.
fn documented_examples() -> Vec<Value> {
    let doc = include_str!("../../../docs/json.md");
    let mut examples = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find("```json\n") {
        let block = &rest[start + 8..];
        let end = block.find("```").expect("every ```json block is closed");
        let text = &block[..end];
        match serde_json::from_str::<Value>(text) {
            Ok(value) => examples.push(value),
            Err(_) => {
                for line in text.lines().filter(|line| !line.trim().is_empty()) {
                    let value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("docs/json.md: not JSON ({e}): {line}"));
                    examples.push(value);
                }
            }
        }
        rest = &block[end + 3..];
    }
    examples
}

#[test]
fn every_example_in_the_docs_is_a_line_of_the_schema_field_for_field() {
    let examples = documented_examples();
    let mut types = Vec::new();
    for example in &examples {
        let text = example.to_string();
        // Read as the schema's type, then written again: a field the docs show that the
        // schema lacks, or one it always writes that the docs leave out, differs here.
        let as_stream = serde_json::from_str::<StreamLine<'_>>(&text)
            .map(|line| serde_json::to_value(&line).unwrap());
        let as_recording = serde_json::from_str::<RecordingLine<'_>>(&text)
            .map(|line| serde_json::to_value(&line).unwrap());
        let matches = |written: &Result<Value, serde_json::Error>| {
            written.as_ref().is_ok_and(|written| written == example)
        };
        assert!(
            matches(&as_stream) || matches(&as_recording),
            "docs/json.md's example is not a line of the schema, field for field: {text}\n\
             as a stream line: {as_stream:?}\nas a recording line: {as_recording:?}"
        );
        types.push(example["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        [
            "cgroup",
            "connection",
            "end",
            "lost",
            "netns",
            "reset",
            "seen_at_start",
            "snapshot",
            "stuck",
            "summary",
            "tcptrace_recording",
            "time_wait_timer",
            "transition"
        ],
        "docs/json.md shows every line type"
    );
}
