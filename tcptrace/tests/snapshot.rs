//! Starting from what is already there, on the real kernel: sockets made before tcptrace
//! starts (in a namespace the test makes, IPv4 and IPv6) are found by the start-up
//! snapshot and followed to their end: connections open at start are one record each with
//! both ends, their owner and the right closer; TIME-WAITs already running end with their
//! timer (`expired`, or `killed` by a reuse of their 4-tuple) and are never given a start;
//! CLOSE_WAITs a server leaks are reported stuck. A recording of it replays the same.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Netns, Tracer, connections, json_lines, summary};

const PORT: u16 = 18520;
const S: u64 = 1_000_000_000;

/// Waits until the namespace holds no TIME-WAIT (at most 70 s).
fn wait_for_time_waits_to_end(netns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(70);
    while !netns.exec(&["ss", "-Htan", "state", "time-wait"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "TIME-WAITs still there after 70 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The expiry's events reach the ring and the engine's 1 ms grace.
    std::thread::sleep(Duration::from_millis(300));
}

/// The connection with an endpoint at `host`:`port`, and that endpoint. The host too: an
/// IPv4 and an IPv6 connection may have the same ephemeral port.
fn endpoint_at<'a>(lines: &'a [Value], host: &str, port: u64) -> (&'a Value, &'a Value) {
    let addr =
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    connections(lines)
        .into_iter()
        .find_map(|record| {
            ["client", "server"].into_iter().find_map(|key| {
                let endpoint = &record[key];
                (endpoint["addr"].as_str()? == addr).then_some((record, endpoint))
            })
        })
        .unwrap_or_else(|| panic!("no endpoint at {addr}"))
}

fn u64_at(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("not a number: {value}"))
}

#[test]
fn sockets_from_before_start_are_followed_to_their_end() {
    let netns = Netns::new("before");
    netns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/before_start.py");
    let mut peer = Command::new("ip")
        .args(["netns", "exec", &netns.name, "python3"])
        .arg(&script)
        .arg(PORT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn before_start.py");
    let mut stdin = peer.stdin.take().unwrap();
    let mut stdout = BufReader::new(peer.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ports: Value = serde_json::from_str(&line).expect("the script's ports");

    let recording =
        std::env::temp_dir().join(format!("tcptrace-before-{}.jsonl", std::process::id()));
    let recording_text = recording.display().to_string();
    let mut tracer =
        Tracer::start(&["--netns", &netns.name, "--stuck-after", "2", "--record", &recording_text]);
    // Beside it, one with no filter: the kernel then follows every time-wait timer without
    // its table of kept ones, and tells those from before start by when they run out.
    let mut unfiltered = Tracer::start(&[]);
    unfiltered.wait_for_stderr("at start:");
    let at_start = tracer.wait_for_stderr("at start:");
    // Per family: the listener, two pairs (four sockets), two TIME-WAITs, and two
    // CLOSE_WAITs with their clients' orphaned FIN_WAIT2s (kept by time-wait sockets).
    assert!(at_start.contains("at start: 22 sockets"), "{at_start}");

    stdin.write_all(b"go\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    std::thread::sleep(Duration::from_secs(3)); // past --stuck-after
    wait_for_time_waits_to_end(&netns);
    let lines = tracer.stop();
    let inode = netns.inode();
    let unfiltered: Vec<Value> = unfiltered
        .stop()
        .into_iter()
        .filter(|line| line["type"] != "connection" || line["client"]["netns"] == inode)
        .collect();
    drop(stdin);
    peer.wait().unwrap();
    let owner = u64::from(peer.id());

    for host in ["127.0.0.1", "::1"] {
        for lines in [&lines, &unfiltered] {
            check_time_waits(lines, host, &ports[host]);
        }
        let made = &ports[host];
        for pair in made["pairs"].as_array().unwrap() {
            let (record, _) = endpoint_at(&lines, host, u64_at(pair));
            assert_eq!(record["closed_first"], "server", "{record}");
            assert_eq!(record["incomplete"], false, "{record}");
            for key in ["client", "server"] {
                let endpoint = &record[key];
                assert_eq!(endpoint["role"], key, "{record}");
                assert_eq!(endpoint["seen_at_start"], true, "{record}");
                assert_eq!(endpoint["pid"], owner, "its owner, from /proc: {record}");
                assert_eq!(endpoint["comm"], "python3", "{record}");
                assert_eq!(endpoint["states"][0]["state"], "ESTABLISHED", "{record}");
                assert_eq!(endpoint["states"][0]["enter_ns"], Value::Null, "{record}");
            }
        }
    }
    // A server's CLOSE_WAIT and its client's orphaned FIN_WAIT2 (kept by a time-wait
    // socket until tcp_fin_timeout, while the server never closes) are one connection, in
    // which the client closed first.
    for host in ["127.0.0.1", "::1"] {
        for port in ports[host]["close_wait"].as_array().unwrap() {
            let (record, _) = endpoint_at(&lines, host, u64_at(port));
            assert_eq!(record["closed_first"], "client", "{record}");
            assert_eq!(record["server"]["states"][0]["state"], "CLOSE_WAIT", "{record}");
            assert_eq!(record["server"]["pid"], owner, "{record}");
            let orphan = &record["client"]["time_wait"];
            assert_eq!(orphan["kind"], "fin_wait2", "{record}");
            assert_ne!(orphan["end"], "killed", "{record}");
        }
    }
    // The natural ones ended when their timers said, give or take the wheel's 2.05 s.
    let began = recorded_snapshot_began(&recording);
    for host in ["127.0.0.1", "::1"] {
        let (_, endpoint) = endpoint_at(&lines, host, u64_at(&ports[host]["natural"]));
        let tw = &endpoint["time_wait"];
        let due = began + u64_at(&tw["remaining_at_start_ns"]);
        let late = u64_at(&tw["end_ns"]) as f64 / S as f64 - due as f64 / S as f64;
        assert!((-0.1..2.2).contains(&late), "ended {late} s after it was due");
    }

    let stuck: Vec<&Value> = lines.iter().filter(|l| l["type"] == "stuck").collect();
    let last = stuck.last().unwrap_or_else(|| panic!("no stuck report in {lines:#?}"));
    assert_eq!((last["pid"].as_u64(), last["count"].as_u64()), (Some(owner), Some(4)), "{last}");
    assert_eq!(summary(&lines)["stuck"][0]["count"], 4);
    assert!(u64_at(&summary(&lines)["seen_at_start"]) >= 14);

    // The recording replays to the same connections.
    let replayed = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["replay", &recording_text, "--json"])
        .output()
        .unwrap();
    std::fs::remove_file(&recording).unwrap();
    let replayed = json_lines(&replayed);
    let records = |lines: &[Value]| -> Vec<String> {
        let mut all: Vec<String> = connections(lines).iter().map(|c| without_id(c)).collect();
        all.sort();
        all
    };
    assert_eq!(records(&replayed), records(&lines));
}

/// The TIME-WAITs in `host`'s connections `made`: those after a close seen whole, and those
/// from before start, which end (`expired`, or `killed` by a reuse of their 4-tuple) with
/// no start invented.
fn check_time_waits(lines: &[Value], host: &str, made: &Value) {
    for pair in made["pairs"].as_array().unwrap() {
        let (record, _) = endpoint_at(lines, host, u64_at(pair));
        let tw = &record["server"]["time_wait"];
        assert_eq!(tw["end"], "expired", "the TIME-WAIT after the close: {record}");
        let lasted = u64_at(&tw["duration_ns"]) as f64 / S as f64;
        assert!((60.0..62.1).contains(&lasted), "{lasted} s: {record}");
    }
    for (name, end) in [("natural", "expired"), ("reused", "killed")] {
        let (record, endpoint) = endpoint_at(lines, host, u64_at(&made[name]));
        // The first connection on the port: the TIME-WAIT from before start.
        let tw = &endpoint["time_wait"];
        assert_eq!(endpoint["seen_at_start"], true, "{record}");
        assert_eq!(tw["end"], end, "{name}: {record}");
        assert_eq!(tw["start_ns"], Value::Null, "never invented: {record}");
        assert_eq!(tw["duration_ns"], Value::Null, "{record}");
        let left = u64_at(&tw["remaining_at_start_ns"]);
        assert!(left > 0 && left <= 60 * S, "{left}: {record}");
        assert!(tw["end_ns"].is_u64(), "{record}");
    }
}

fn without_id(record: &Value) -> String {
    let mut record = record.clone();
    record["id"] = Value::Null;
    record.to_string()
}

fn recorded_snapshot_began(recording: &Path) -> u64 {
    let text = std::fs::read_to_string(recording).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["type"] == "snapshot" && line["event"] == "began")
        .map(|line| u64_at(&line["ts_ns"]))
        .expect("a snapshot line in the recording")
}

#[test]
fn a_snapshot_that_misses_a_namespace_says_which_and_tracing_goes_on() {
    // An inode no process or /run/netns entry is in: nothing to enter for the dump.
    let mut tracer = Tracer::start(&["--netns", "4026599999"]);
    let warning = tracer.wait_for_stderr("the start-up snapshot missed");
    assert!(warning.contains("network namespace 4026599999"), "{warning}");
    assert!(warning.contains("tracing goes on"), "{warning}");
    tracer.wait_for_stderr("at start: 0 sockets");
    let lines = tracer.stop();
    assert_eq!(summary(&lines)["seen_at_start"], 0);
}
