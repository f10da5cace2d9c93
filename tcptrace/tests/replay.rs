//! Recording, replay and exports: a real session recorded and replayed without root must
//! give the same connection records; broken recordings fail clearly; the HTML page renders.

mod support;

use std::{
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use support::{Peer, Tracer, connections, json_lines};

/// A fresh folder that anyone may reach, wherever the checkout is (it may live under a
/// folder only root can enter, such as /root): under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn tcptrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tcptrace")).args(args).output().unwrap()
}

/// Runs `tcptrace replay …` as the unprivileged user `nobody`, from a copy of the binary in
/// `dir` (the build's own may sit where `nobody` can't reach it).
fn replay_unprivileged(dir: &Path, args: &[&str]) -> Output {
    let binary = dir.join("tcptrace");
    fs::copy(env!("CARGO_BIN_EXE_tcptrace"), &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .arg("replay")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn a_recorded_session_replays_without_root_to_the_same_connections() {
    let dir = scratch("round-trip");
    let recording = dir.join("session.jsonl");
    let mut server_first = Peer::start("ipv4", "close-first");
    let mut client_first = Peer::start("ipv6", "wait-eof");
    let (p1, p2) = (server_first.port.to_string(), client_first.port.to_string());
    let tracer =
        Tracer::start(&["--port", &p1, "--port", &p2, "--record", recording.to_str().unwrap()]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server_first.port)).unwrap();
    stream.read_to_end(&mut Vec::new()).unwrap();
    server_first.wait_done();
    drop(stream);
    drop(std::net::TcpStream::connect(("::1", client_first.port)).unwrap());
    client_first.wait_done();
    let live = tracer.stop();
    fs::set_permissions(&recording, fs::Permissions::from_mode(0o644)).unwrap();

    let replayed = json_lines(&replay_unprivileged(&dir, &[recording.to_str().unwrap(), "--json"]));
    let live_connections = connections(&live);
    assert_eq!(live_connections.len(), 2, "{live_connections:#?}");
    assert_eq!(connections(&replayed), live_connections);
    let transitions = |lines: &[Value]| {
        lines.iter().filter(|l| l["type"] == "transition").cloned().collect::<Vec<_>>()
    };
    assert_eq!(transitions(&replayed), transitions(&live), "the same owners and durations too");
    let summary = |lines: &[Value]| {
        lines.iter().find(|l| l["type"] == "summary").unwrap()["closed_first"].clone()
    };
    assert_eq!(summary(&replayed), summary(&live));
}

fn replay_error(name: &str, contents: &[u8]) -> String {
    let dir = scratch("broken");
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    let output = tcptrace(&["replay", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{name} must fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.starts_with("tcptrace: error: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    stderr
}

#[test]
fn broken_recordings_fail_with_an_error_naming_the_line() {
    let header = r#"{"type":"tcptrace_recording","version":1,"ephemeral_ports":[32768,60999],"realtime_offset_ns":0}"#;
    let event = r#"{"type":"transition","ts_ns":5,"sk":"0x1","local":"127.0.0.1:0","remote":"127.0.0.1:80","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"x","process_context":true,"cpu":0}"#;

    let truncated = format!("{header}\n{event}\n{}", &event[..60]);
    let error = replay_error("truncated.jsonl", truncated.as_bytes());
    assert!(error.contains("line 3: the line is cut short: the recording is truncated"), "{error}");

    let corrupt = format!("{header}\n{event}\n{}\n", event.replace("SYN_SENT", "SYN_SLEPT"));
    let error = replay_error("corrupt.jsonl", corrupt.as_bytes());
    assert!(
        error.contains("line 3: not a valid record: not a TCP state: \"SYN_SLEPT\""),
        "{error}"
    );

    let newer = header.replace("\"version\":1", "\"version\":9");
    let error = replay_error("newer.jsonl", format!("{newer}\n").as_bytes());
    assert!(error.contains("line 1: recording format version 9 is not supported"), "{error}");

    let error = replay_error("notes.txt", b"just some notes\n");
    assert!(error.contains("line 1: this is not a tcptrace recording"), "{error}");

    let error = replay_error("binary.jsonl", &[0xff, 0xfe, 0x00, 0x12]);
    assert!(error.contains("line 1"), "{error}");

    let missing = tcptrace(&["replay", "/nonexistent/recording.jsonl"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("cannot open /nonexistent/recording.jsonl")
    );
}

fn example_recording() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/close-lab.jsonl")
}

/// A recording of `count` connects (each one line, and more in the output than a pipe holds).
fn many_connects(path: &Path, count: u64) {
    use tcptrace::{
        event::{Comm, EventKind, Home, Task, TcpEvent, TcpState},
        recording::{FORMAT_VERSION, Recorder, RecordingHeader},
    };
    let header =
        RecordingHeader { version: FORMAT_VERSION, ephemeral_ports: (1, 2), realtime_offset_ns: 0 };
    let mut recorder = Recorder::new(fs::File::create(path).unwrap(), &header).unwrap();
    let task = Task { pid: 1, tid: 1, comm: Comm::new("curl"), process_context: true };
    for i in 0..count {
        let kind = EventKind::Transition {
            old: TcpState::Closed,
            new: TcpState::SynSent,
            time_wait_timer: None,
        };
        let addresses = Some(("127.0.0.1:0".parse().unwrap(), "127.0.0.1:80".parse().unwrap()));
        let event = TcpEvent {
            ts_ns: 1000 + i,
            sk: 0x1000 + i,
            kind,
            addresses,
            task,
            cpu: 0,
            counters: None,
            home: Home::default(),
        };
        recorder.event(&event).unwrap();
    }
    recorder.end(2000 + count).unwrap();
}

/// `tcptrace replay FILE | head -1`: the reader goes away, and replay ends quietly.
#[test]
fn replay_into_a_closed_pipe_ends_quietly() {
    let dir = scratch("pipe");
    let recording = dir.join("many.jsonl");
    many_connects(&recording, 20_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["replay", recording.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then the pipe closes
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A full disk is named: what could not be written, not only the system's word for it.
#[test]
fn write_errors_name_what_could_not_be_written() {
    let full = fs::File::options().write(true).open("/dev/full").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["replay", example_recording().to_str().unwrap()])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("writing standard output: No space left on device"), "{stderr}");
    let dir = scratch("exports");
    let export = dir.join("missing/lab.csv");
    let output = tcptrace(&[
        "replay",
        example_recording().to_str().unwrap(),
        "--export",
        export.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot create the export {}", export.display())), "{stderr}");
}

/// The example recording's page in headless Chromium: it renders lanes without console
/// errors; the screenshot is left in the target folder.
#[test]
fn the_html_page_renders_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(chromium.exists(), "this test needs Debian's chromium package (.ci/run installs it)");
    let dir = scratch("html");
    let page = dir.join("lab.html");
    let output = tcptrace(&[
        "replay",
        example_recording().to_str().unwrap(),
        "--connections-only",
        "--export",
        page.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let run_chromium = |extra: &[&str]| {
        let profile = dir.join(format!("profile-{}", extra.len()));
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .args(["--enable-logging=stderr", "--v=0", "--window-size=1400,900"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium")
    };
    let dom = run_chromium(&["--virtual-time-budget=3000", "--dump-dom"]);
    let rendered = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(rendered.contains("data-rendered=\"yes\""), "the page's script did not finish:\n{log}");
    for bad in ["Uncaught", "CONSOLE(", "SyntaxError", "TypeError"] {
        assert!(!log.contains(bad), "console error ({bad}):\n{log}");
    }
    assert_eq!(rendered.matches("class=\"lane\"").count(), 4, "two connections, two lanes each");
    assert!(rendered.contains("TIME_WAIT 61."), "TIME-WAIT bars with their length");

    let screenshot = dir.join("lab.png");
    let shot = run_chromium(&[&format!("--screenshot={}", screenshot.display())]);
    let png = fs::read(&screenshot)
        .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&shot.stderr)));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}
