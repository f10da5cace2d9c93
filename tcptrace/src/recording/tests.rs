use super::{reader::read_with_serde, scan::read_canonical, *};
use crate::event::{Comm, EventKind, Home, Task, TcpState};

fn header() -> RecordingHeader {
    RecordingHeader {
        version: FORMAT_VERSION,
        ephemeral_ports: (32768, 60999),
        realtime_offset_ns: 42,
    }
}

fn events() -> Vec<TcpEvent> {
    let addresses = Some(("127.0.0.1:8080".parse().unwrap(), "[::1]:42020".parse().unwrap()));
    let task = Task { pid: 7, tid: 8, comm: Comm::new("we\"ird\\na\tme"), process_context: true };
    let kinds = [
        EventKind::Transition {
            old: TcpState::FinWait2,
            new: TcpState::Closed,
            time_wait_timer: Some(0xffff_1234),
        },
        EventKind::Transition {
            old: TcpState::Closed,
            new: TcpState::SynSent,
            time_wait_timer: None,
        },
        EventKind::TimeWaitRearm { timer: 0xabc, timeout_jiffies: 15000 },
        EventKind::TimeWaitCancel { timer: 0xabc },
        EventKind::TimeWaitExpire { timer: 0xabc },
        EventKind::ResetSent,
        EventKind::ResetReceived,
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| TcpEvent {
            ts_ns: 1000 + i as u64,
            sk: 0xffff_8880_0000_0000 + i as u64,
            kind,
            addresses: if matches!(kind, EventKind::Transition { .. } | EventKind::ResetSent) {
                addresses
            } else {
                None
            },
            task,
            cpu: 1,
            home: Home {
                netns: (!matches!(kind, EventKind::TimeWaitCancel { .. })).then_some(4026531840),
                cgroup: matches!(kind, EventKind::Transition { .. }).then_some(7),
            },
            counters: None,
        })
        .collect()
}

fn record(events: &[TcpEvent]) -> Vec<u8> {
    let mut recorder = Recorder::new(Vec::new(), &header()).unwrap();
    for event in events {
        recorder.event(event).unwrap();
    }
    recorder.lost(2000, 3).unwrap();
    recorder.end(3000).unwrap();
    recorder.into_inner()
}

fn read_all(bytes: &[u8]) -> Result<(RecordingHeader, Vec<Item>), ReadError> {
    let mut reader = Reader::new(bytes)?;
    let mut items = Vec::new();
    while let Some(item) = reader.next_item() {
        items.push(item?);
    }
    Ok((reader.header, items))
}

#[test]
fn every_event_kind_round_trips() {
    let events = events();
    let (read_header, items) = read_all(&record(&events)).unwrap();
    assert_eq!(read_header, header());
    let mut expected: Vec<Item> = events.into_iter().map(Item::Event).collect();
    expected.push(Item::Lost { ts_ns: 2000, count: 3 });
    expected.push(Item::End { ts_ns: 3000 });
    assert_eq!(items, expected);
}

/// serde's reading of a line, through the schema, which the fast reader must match.
fn slow(line: &str) -> Result<Item, String> {
    read_with_serde(line, true)
}

fn error_of(bytes: &[u8]) -> String {
    read_all(bytes).unwrap_err().to_string()
}

#[test]
fn the_fast_reader_reads_what_the_recorder_writes() {
    let mut events = events();
    // A plain name too: the one in `events()` needs escapes, which go to serde_json.
    events.push(TcpEvent { task: Task { comm: Comm::new("curl"), ..events[0].task }, ..events[0] });
    let text = String::from_utf8(record(&events)).unwrap();
    let mut fast_lines = 0;
    for line in text.lines().skip(1) {
        let Some(fast) = read_canonical(line.as_bytes()) else {
            assert!(line.contains('\\'), "fell back to serde for {line}");
            continue;
        };
        assert_eq!(Ok(fast), slow(line), "{line}");
        fast_lines += 1;
    }
    assert_eq!(fast_lines, 3, "the plain-named event, `lost` and `end`");
    let plain = r#"{"type":"transition","ts_ns":1000050000,"sk":"0xffff888000000000","local":"127.0.0.1:32768","remote":"127.0.0.1:8080","old":"SYN_SENT","new":"ESTABLISHED","pid":7,"tid":7,"comm":"curl","process_context":false,"cpu":0}"#;
    let fast = read_canonical(plain.as_bytes()).expect("the common case is read fast");
    assert_eq!(Ok(fast.clone()), slow(plain));
    let Item::Event(event) = &fast else { panic!("{fast:?}") };
    assert_eq!(event.home, Home::default(), "a line from before version 3: no namespace");
    let v3 = plain
        .replace(r#","old""#, r#","netns":4026532177,"old""#)
        .replace(r#""cpu":0}"#, r#""cpu":0,"cgroup_id":42}"#);
    let Some(Item::Event(event)) = read_canonical(v3.as_bytes()) else { panic!("{v3}") };
    assert_eq!(event.home, Home { netns: Some(4026532177), cgroup: Some(42) });
    assert_eq!(slow(&v3), Ok(Item::Event(event)));
    // A name longer than the kernel keeps is cut the same way on both paths.
    let long = plain.replace("\"curl\"", "\"a-very-long-command-name\"");
    assert_eq!(read_canonical(long.as_bytes()).map(Ok), Some(slow(&long)));
    // Anything laid out otherwise is serde_json's, which reads it to the same item.
    let reordered = r#"{"cpu":0,"new":"ESTABLISHED","type":"transition","comm":"curl","sk":"0xffff888000000000","old":"SYN_SENT","ts_ns":1000050000,"remote":"127.0.0.1:8080","tid":7,"local":"127.0.0.1:32768","process_context":false,"pid":7}"#;
    assert!(read_canonical(reordered.as_bytes()).is_none());
    assert_eq!(slow(reordered), Ok(fast));
    for other in [
        r#"{"type":"lost","ts_ns":1,"count":2} "#,
        r#"{"type":"lost", "ts_ns":1,"count":2}"#,
        r#"{"type":"end","ts_ns":1,"x":{"y":1}}"#,
        r#"{"type":"end","ts_ns":1,"ts_ns":2}"#,
        r#"{"type":"transition","ts_ns":1,"sk":"0x1","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"a","process_context":true,"cpu":0}"#,
        r#"{"type":"transition","ts_ns":1,"sk":"0x1","local":"127.0.0.1:1","remote":"127.0.0.1:2","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"é","process_context":true,"cpu":0}"#,
        r#"{"type":"transition","ts_ns":1,"sk":"0x1","local":"127.0.0.1:1","remote":"127.0.0.1:2","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"a","process_context":true,"cpu":256}"#,
        r#"{"type":"time_wait_timer","event":"rearm","ts_ns":1,"sk":"0x1","timer":"0x12345678901234567","timeout_jiffies":1,"pid":1,"tid":1,"comm":"a","process_context":true,"cpu":0}"#,
    ] {
        assert!(read_canonical(other.as_bytes()).is_none(), "{other}");
    }
    // Numbers the fast path doesn't read exactly as JSON does are left to serde_json.
    for odd in
        ["1e3", "-1", "18446744073709551616", "12345678901234567890", "007", "1.5", "null", "tru"]
    {
        let line = format!(r#"{{"type":"lost","ts_ns":1,"count":{odd}}}"#);
        assert!(read_canonical(line.as_bytes()).is_none(), "{line}");
    }
    let most = format!(r#"{{"type":"lost","ts_ns":0,"count":{}}}"#, 10u64.pow(19) - 1);
    assert_eq!(
        read_canonical(most.as_bytes()),
        Some(Item::Lost { ts_ns: 0, count: 10u64.pow(19) - 1 })
    );
}

#[test]
fn wrong_files_are_named_as_such() {
    assert!(error_of(b"").contains("not a tcptrace recording"));
    assert!(error_of(b"hello\n").contains("line 1: this is not a tcptrace recording"));
    assert!(error_of(b"{\"type\":\"transition\"}\n").contains("not a tcptrace recording"));
    let newer = br#"{"type":"tcptrace_recording","version":5,"ephemeral_ports":[1,2],"realtime_offset_ns":0}"#;
    assert!(error_of(newer).contains("version 5 is not supported"), "{}", error_of(newer));
}

#[test]
fn truncated_and_corrupt_lines_name_the_line() {
    let good = record(&events());
    let cut = &good[..good.len() - 30];
    let error = error_of(cut);
    assert!(error.starts_with("line 9:") && error.contains("truncated"), "{error}");

    let text = String::from_utf8(good.clone()).unwrap();
    let corrupt = text.replacen("\"old\":\"FIN_WAIT2\"", "\"old\":\"FIN_WAIT9\"", 1);
    assert_eq!(
        error_of(corrupt.as_bytes()),
        "line 2: not a valid record: not a TCP state: \"FIN_WAIT9\""
    );
    let garbage = text.replacen("{\"type\":\"reset\"", "{\"type\":\"reset\"}}}", 1);
    assert!(error_of(garbage.as_bytes()).starts_with("line 7: not a valid record"));
    let missing = text.replacen("\"sk\":", "\"skk\":", 1);
    assert_eq!(error_of(missing.as_bytes()), "line 2: not a valid record: missing field `sk`");
}
