//! Exporters on recorded streams.

use std::collections::HashMap;

use serde_json::Value;

use super::*;
use crate::{
    event::{EventKind, TcpState::*},
    testing::*,
};

/// The notes' simultaneous close, plus a server-closes-first connection whose TIME-WAIT
/// expires, plus one with a hostile process name that is still open at the end.
fn connections() -> (Vec<Connection>, u64) {
    let mut r = simultaneous_close();
    server_closes_first(&mut r)
        .with_counters(crate::event::Counters {
            info: crate::event::TcpInfo {
                bytes_acked: 81,
                bytes_received: 1_024_001,
                total_retrans: 2,
                rtt_us: 52,
                ..Default::default()
            },
            error: None,
        })
        .timer(1361.1, 12, EventKind::TimeWaitCancel { timer: 0x5150 })
        .timer(1361.1000001, 12, EventKind::TimeWaitExpire { timer: 0x5150 });
    let evil = ("127.0.0.1:40002", "127.0.0.1:18084");
    r.transition(1362.0, 21, Closed, SynSent, evil, Some(66));
    let mut events = r.events;
    events.last_mut().unwrap().task.comm = crate::event::Comm::new("<script>x</sc");
    let end = 1400.0;
    let (connections, _, _) = run_events(events, end, crate::engine::EngineOptions::default());
    (connections, (end * S as f64) as u64)
}

fn export(format: ExportFormat) -> String {
    let (connections, end_ns) = connections();
    let names = crate::names::Names::default();
    let input = ExportInput { connections: &connections, end_ns, lang: Lang::En, names: &names };
    let mut out = Vec::new();
    match format {
        ExportFormat::Csv => csv::write(&mut out, &input),
        ExportFormat::ChromeTrace => chrome::write(&mut out, &input),
        ExportFormat::Mermaid => mermaid::write(&mut out, &input),
        ExportFormat::Html => html::write(&mut out, &input),
        ExportFormat::Jsonl => unreachable!("written by report"),
    }
    .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn formats_follow_the_file_name() {
    let format = |name: &str| ExportFormat::from_path(Path::new(name));
    assert_eq!(format("lab.trace.json"), Some(ExportFormat::ChromeTrace));
    assert_eq!(format("out/LAB.HTML"), Some(ExportFormat::Html));
    assert_eq!(format("a.jsonl"), Some(ExportFormat::Jsonl));
    assert_eq!(format("a.csv"), Some(ExportFormat::Csv));
    assert_eq!(format("a.mmd"), Some(ExportFormat::Mermaid));
    assert_eq!(format("a.json"), None);
    assert_eq!(format("a.pdf"), None);
}

#[test]
fn csv_has_one_row_per_state_interval() {
    let text = export(ExportFormat::Csv);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(csv::HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 16), "{text}");
    // Simultaneous: 4 bars and a TIME-WAIT per side; server-first: client 4 bars, server
    // 4 and a TIME-WAIT; the open connection: one open SYN_SENT bar.
    assert_eq!(rows.len(), 10 + 9 + 1, "{text}");
    let time_waits: Vec<&Vec<&str>> = rows.iter().filter(|r| r[3] == "TIME_WAIT").collect();
    assert_eq!(time_waits.len(), 3);
    for row in &rows {
        let (start, end, duration): (u64, u64, u64) =
            (row[4].parse().unwrap(), row[5].parse().unwrap(), row[6].parse().unwrap());
        assert_eq!(end - start, duration);
    }
    let server_first_id = connections().0[1].id.to_string();
    let server_tw = rows.iter().find(|r| r[0] == server_first_id && r[3] == "TIME_WAIT").unwrap();
    assert_eq!((server_tw[1], server_tw[2], server_tw[7]), ("127.0.0.1:18084", "server", "false"));
    assert_eq!(rows.last().unwrap()[7], "true", "still open at the end");
    // The client of the server-first connection closed with its counters: on each of its
    // rows, and on no other endpoint's.
    let with_counters: Vec<&Vec<&str>> = rows.iter().filter(|r| !r[8].is_empty()).collect();
    assert_eq!(with_counters.len(), 4, "{text}");
    for row in with_counters {
        assert_eq!((row[0], row[2]), (server_first_id.as_str(), "client"));
        assert_eq!(row[8..13], ["81", "1024001", "2", "52", ""]);
    }
}

#[test]
fn chrome_trace_validates_against_the_trace_event_format() {
    let value: Value = serde_json::from_str(&export(ExportFormat::ChromeTrace)).unwrap();
    let events = value["traceEvents"].as_array().unwrap();
    let mut slices: HashMap<(u64, u64), Vec<(f64, f64)>> = HashMap::new();
    for event in events {
        let phase = event["ph"].as_str().unwrap();
        assert!(["X", "i", "M"].contains(&phase), "{event}");
        assert!(event["pid"].is_u64() && event["tid"].is_u64(), "{event}");
        assert!(event["name"].is_string());
        if phase == "X" {
            let (ts, dur) = (event["ts"].as_f64().unwrap(), event["dur"].as_f64().unwrap());
            assert!(ts >= 0.0 && dur >= 0.0, "{event}");
            let track = (event["pid"].as_u64().unwrap(), event["tid"].as_u64().unwrap());
            slices.entry(track).or_default().push((ts, ts + dur));
        }
        if phase == "i" {
            assert!(event["ts"].is_f64());
        }
    }
    assert_eq!(slices.len(), 5, "one track per endpoint");
    // Slices on a track follow each other without overlapping (so they nest trivially).
    for spans in slices.values_mut() {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0 + 1e-6, "{pair:?}");
        }
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(
        names.contains(&"TIME_WAIT")
            && names.contains(&"TIME-WAIT expired")
            && names.contains(&"FIN sent")
    );
}

#[test]
fn mermaid_has_one_participant_per_endpoint() {
    let text = export(ExportFormat::Mermaid);
    assert!(text.starts_with("sequenceDiagram\n"));
    let participants: Vec<&str> =
        text.lines().filter(|l| l.trim_start().starts_with("participant ")).collect();
    // 2 + 2 endpoints, and the lone client with its peer that is not on this host.
    assert_eq!(participants.len(), 6, "{text}");
    assert_eq!(participants.iter().filter(|p| p.contains("(not on this host)")).count(), 1);
    assert!(text.contains("C1->>S1: SYN") && text.contains("S1->>C1: SYN+ACK"), "{text}");
    assert!(
        text.contains("Note over C1: CLOSING") && text.contains("Note over S1: CLOSING"),
        "{text}"
    );
    assert!(text.contains("Note over S2: TIME-WAIT 61.10 s (expired)"), "{text}");
    assert!(!text.contains('<') && !text.contains(';'), "unsafe characters in labels: {text}");
}

#[test]
fn html_is_self_contained_and_escapes_event_text() {
    let page = export(ExportFormat::Html);
    assert!(!page.contains("<script>x"), "a comm name became markup");
    assert!(page.contains("\\u003cscript\\u003ex"), "the name is still there, as data");
    assert!(!page.contains("http://") && !page.contains("https://"), "no external URL");
    assert!(!page.contains(" src=") && !page.contains(" href="), "nothing loaded from elsewhere");
    assert_eq!(page.matches("<script").count(), 2, "the data block and the page's own script");
    let data_start = page.find("<script type=\"application/json\" id=\"data\">").unwrap();
    let data = &page[data_start..];
    let json_text = &data[data.find('>').unwrap() + 1..data.find("</script>").unwrap()];
    let value: Value = serde_json::from_str(json_text).unwrap();
    let connections = value["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 3);
    let server_first = &connections[1];
    assert!(
        server_first["title"]
            .as_str()
            .unwrap()
            .contains("TIME-WAIT on 127.0.0.1:18084 lasted 61.10 s (expired)")
    );
    // TIME-WAIT to scale: its bar is about 30 000 times the handshake's.
    let server_lane = &server_first["lanes"][1];
    let bar = |state: &str| {
        let bar = server_lane["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["state"] == state)
            .unwrap()
            .clone();
        bar["end"].as_f64().unwrap() - bar["start"].as_f64().unwrap()
    };
    assert!((bar("TIME_WAIT") / 1e6 - 61.1).abs() < 0.01);
    assert!(bar("SYN_RECEIVED") < 100.0);
}

/// The Perfetto trace and the HTML page show, per endpoint, what it carried.
#[test]
fn the_trace_and_the_page_show_what_each_endpoint_carried() {
    let carried = "sent 81 B, received 1.0 MB, 2 retransmits, RTT 52 µs";
    let trace: Value = serde_json::from_str(&export(ExportFormat::ChromeTrace)).unwrap();
    let names: Vec<&str> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(carried)).count(), 1, "{names:#?}");
    let page = export(ExportFormat::Html);
    assert_eq!(page.matches(carried).count(), 1, "in the page's data, once");
}

/// Two namespaces' connections, one in a container: the CSV names each row's namespace,
/// cgroup and container; the trace's and the page's lanes say the namespace and container.
#[test]
fn exports_say_where_each_endpoint_lives() {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut r = Recording::default();
    r.in_netns(4026532177);
    server_closes_first(&mut r);
    r.events[0].home.cgroup = Some(9); // the client's connect, in the container
    r.in_netns(4026532246).transition(1390.0, 21, Closed, SynSent, CURL_CONNECT, Some(66));
    let (connections, _, _) = run_events(r.events, 1400.0, Default::default());
    let mut names = crate::names::Names::default();
    names.saw_netns(4026532177);
    names.saw_netns(4026532246);
    names.set_netns_name(4026532177, "blue".into());
    let cgroup = crate::names::Cgroup::new(format!("/system.slice/docker-{id}.scope"));
    names.set_cgroup(9, Some(cgroup));
    let input =
        ExportInput { connections: &connections, end_ns: 1400 * S, lang: Lang::En, names: &names };
    let mut csv_text = Vec::new();
    csv::write(&mut csv_text, &input).unwrap();
    let csv_text = String::from_utf8(csv_text).unwrap();
    let client_row = csv_text.lines().find(|l| l.contains(",client,SYN_SENT,")).unwrap();
    assert!(
        client_row.ends_with(&format!(",4026532177,/system.slice/docker-{id}.scope,{id}")),
        "{client_row}"
    );
    let open_row = csv_text.lines().last().unwrap();
    assert!(open_row.ends_with(",4026532246,,"), "{open_row}");
    let mut trace = Vec::new();
    chrome::write(&mut trace, &input).unwrap();
    let trace = String::from_utf8(trace).unwrap();
    assert!(
        trace.contains("(owner 31, ns blue ctr 0123456789ab)")
            || trace.contains(", ns blue ctr 0123456789ab)"),
        "{trace}"
    );
    assert!(trace.contains(", ns 4026532246)"), "{trace}");
    let mut page = Vec::new();
    html::write(&mut page, &input).unwrap();
    assert!(String::from_utf8(page).unwrap().contains("ns blue ctr 0123456789ab"));
}
