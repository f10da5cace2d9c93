//! Falling behind is visible, never wrong; stopping leaves nothing attached.
//!
//! This file's tests count the kernel's loaded programs, so they run one at a time
//! (`serial`) and apart from the other test files (cargo runs test binaries one by one).

mod support;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::Duration,
};

use support::{Tracer, connections, summary};

static SERIAL: Mutex<()> = Mutex::new(());

/// Names of tcptrace's programs as the kernel keeps them (16 bytes at most, NUL included).
const PROGRAM_NAMES: [&str; 5] =
    ["inet_sock_set_s", "tcp_send_reset", "tcp_receive_res", "timer_cancel", "timer_expire_en"];

fn our_programs_loaded() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| program.name_as_str().is_some_and(|name| PROGRAM_NAMES.contains(&name)))
        .count()
}

/// How many are loaded once the count is `expected`, or after 5 s. The kernel frees a BTF
/// tracepoint's program only after an RCU grace period, a little after its process is gone
/// (also an earlier test binary's).
fn programs_loaded_once(expected: usize) -> usize {
    let mut loaded = our_programs_loaded();
    for _ in 0..50 {
        if loaded == expected {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        loaded = our_programs_loaded();
    }
    loaded
}

fn server_closes(listener: &TcpListener) {
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    drop(listener.accept().unwrap().0);
    client.read_to_end(&mut Vec::new()).unwrap();
}

#[test]
fn a_full_ring_with_a_stalled_reader_is_reported_and_marks_connections_incomplete() {
    let _serial = SERIAL.lock().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // A one-page ring holds 39 events; a stopped reader drains none of them.
    let tracer = Tracer::start(&["--port", &port, "--ring-size", "4096"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.pid() as libc::pid_t, libc::SIGSTOP) };
    for _ in 0..50 {
        server_closes(&listener);
    }
    unsafe { libc::kill(tracer.pid() as libc::pid_t, libc::SIGCONT) };
    thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();

    let lost_lines: u64 =
        lines.iter().filter(|l| l["type"] == "lost").map(|l| l["count"].as_u64().unwrap()).sum();
    assert!(lost_lines > 0, "the loss is printed as it is seen");
    assert_eq!(summary(&lines)["lost"], lost_lines, "and totalled in the summary");
    let records = connections(&lines);
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record["incomplete"], true, "{record:#}");
    }
    assert_eq!(summary(&lines)["incomplete"].as_u64().unwrap() as usize, records.len());
}

#[test]
fn nothing_stays_attached_after_sigterm_sigint_duration_or_sigkill() {
    let _serial = SERIAL.lock().unwrap();
    let before = programs_loaded_once(0);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let tracer = Tracer::start(&["--port", "9"]);
        assert_eq!(our_programs_loaded(), before + PROGRAM_NAMES.len(), "all programs attached");
        tracer.stop_with(signal);
        assert_eq!(programs_loaded_once(before), before, "detached after signal {signal}");
    }
    Tracer::start(&["--port", "9", "--duration", "0.5"]).wait();
    assert_eq!(programs_loaded_once(before), before, "detached after --duration");

    // SIGKILL gives tcptrace no chance to clean up: the kernel frees its programs with it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["--port", "9"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = [0u8; 64];
    let _ = stderr.read(&mut seen); // the "tracing" line: attached
    assert_eq!(our_programs_loaded(), before + PROGRAM_NAMES.len());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(programs_loaded_once(before), before, "programs still loaded after SIGKILL");
}
