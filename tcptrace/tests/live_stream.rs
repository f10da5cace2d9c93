//! The live stream on the real kernel: exact transitions of both sides of real loopback
//! connections, owners, filters, lost-event reporting and clean stops.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    Peer, Tracer, connection_with, endpoint_states, find, listener, one_connection,
    socket_transitions, steps, summary, transitions,
};

#[derive(Clone, Copy, PartialEq)]
enum Closer {
    Server,
    Client,
}

/// The test process is the client; the server is a python3 process of its own.
fn traced_connection(family: &str, closer: Closer) {
    let mut server =
        Peer::start(family, if closer == Closer::Server { "close-first" } else { "wait-eof" });
    let port = server.port.to_string();
    let tracer = Tracer::start(&["--port", &port]);

    let host = if family == "ipv6" { "[::1]" } else { "127.0.0.1" };
    let server_addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
    let mut client = TcpStream::connect(server_addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    match closer {
        Closer::Server => {
            let mut greeting = Vec::new();
            client.read_to_end(&mut greeting).unwrap(); // until the server's FIN
            server.wait_done();
            support::close_alone(client);
        }
        Closer::Client => {
            client.write_all(b"bye").unwrap();
            support::close_alone(client);
            server.wait_done();
        }
    }
    let lines = tracer.stop();

    let client_side = socket_transitions(&lines, client_addr);
    let server_side = socket_transitions(&lines, server_addr);
    let (active, passive) = match closer {
        Closer::Server => (&server_side, &client_side),
        Closer::Client => (&client_side, &server_side),
    };
    let opening_client = ["CLOSED->SYN_SENT", "SYN_SENT->ESTABLISHED"];
    let opening_server = ["LISTEN->SYN_RECEIVED", "SYN_RECEIVED->ESTABLISHED"];
    let (active_opening, passive_opening) = match closer {
        Closer::Server => (opening_server, opening_client),
        Closer::Client => (opening_client, opening_server),
    };
    let mut expected_active: Vec<&str> = active_opening.to_vec();
    expected_active.extend(["ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSED"]);
    let mut expected_passive: Vec<&str> = passive_opening.to_vec();
    expected_passive.extend([
        "ESTABLISHED->CLOSE_WAIT",
        "CLOSE_WAIT->LAST_ACK",
        "LAST_ACK->CLOSED",
    ]);
    assert_eq!(steps(active), expected_active, "active closer");
    assert_eq!(steps(passive), expected_passive, "passive closer");

    // Addresses from each socket's own point of view (the connect event has local port 0).
    for t in &client_side[1..] {
        assert_eq!(t["local"], client_addr.to_string());
        assert_eq!(t["remote"], server_addr.to_string());
    }
    assert_eq!(client_side[0]["remote"], server_addr.to_string());
    for t in &server_side {
        assert_eq!(t["local"], server_addr.to_string());
        assert_eq!(t["remote"], client_addr.to_string());
        assert_eq!(t["family"], family);
    }

    // Each close is the closing process's own, in process context.
    let (active_pid, passive_pid) = match closer {
        Closer::Server => (server.pid(), std::process::id()),
        Closer::Client => (std::process::id(), server.pid()),
    };
    let fin = find(active, "ESTABLISHED", "FIN_WAIT1");
    assert_eq!(fin["pid"], active_pid, "{fin} (server pid {}, all: {active:#?})", server.pid());
    assert_eq!(fin["process_context"], true);
    let last_ack = find(passive, "CLOSE_WAIT", "LAST_ACK");
    assert_eq!(last_ack["pid"], passive_pid, "{last_ack}");
    let connect = find(&client_side, "CLOSED", "SYN_SENT");
    assert_eq!(connect["pid"], std::process::id());
    assert_eq!(connect["process_context"], true);

    // The server's child socket is born in softirq: the client process whose softirq ran
    // it is not blamed. Its owner is the listener's when the listener is known (the
    // start-up snapshot found it, when it was done before this connection), else unknown.
    let syn_recv = find(&server_side, "LISTEN", "SYN_RECEIVED");
    assert_eq!(syn_recv["process_context"], false, "{syn_recv}");
    assert!(syn_recv["pid"].is_null() || syn_recv["pid"] == server.pid(), "{syn_recv}");
    // Softirq events of the client's socket carry the owner learned at connect().
    let established = find(&client_side, "SYN_SENT", "ESTABLISHED");
    assert_eq!(established["pid"], std::process::id(), "{established}");
    assert!(
        transitions(&lines).iter().all(|t| t["comm"] != "swapper/0" && t["comm"] != "swapper/1")
    );

    // The socket that goes to TIME-WAIT names its time-wait timer.
    assert!(find(active, "FIN_WAIT2", "CLOSED")["time_wait_timer"].is_string());
    assert_eq!(summary(&lines)["lost"], 0);
}

#[test]
fn ipv4_server_closes_first() {
    traced_connection("ipv4", Closer::Server);
}

#[test]
fn ipv4_client_closes_first() {
    traced_connection("ipv4", Closer::Client);
}

#[test]
fn ipv6_server_closes_first() {
    traced_connection("ipv6", Closer::Server);
}

#[test]
fn ipv6_client_closes_first() {
    traced_connection("ipv6", Closer::Client);
}

#[test]
fn port_filter_drops_other_ports_in_the_kernel_and_keeps_port_zero_events() {
    let (watched, watched_addr) = listener();
    let (other, other_addr) = listener();
    let (watched_port, other_port) = (watched_addr.port(), other_addr.port());
    let tracer = Tracer::start(&["--port", &watched_port.to_string()]);
    one_connection(&other);
    let client_addr = one_connection(&watched);
    one_connection(&other);
    let lines = tracer.stop();

    let all = transitions(&lines);
    let other_suffix = format!(":{other_port}");
    assert!(
        all.iter().all(|t| {
            !t["local"].as_str().unwrap().ends_with(&other_suffix)
                && !t["remote"].as_str().unwrap().ends_with(&other_suffix)
        }),
        "events of port {other_port} passed a --port {watched_port} filter: {all:#?}"
    );
    let client_side = socket_transitions(&lines, client_addr);
    let connect = find(&client_side, "CLOSED", "SYN_SENT");
    assert_eq!(connect["local"], "127.0.0.1:0", "the connect event has no local port yet");
    // Events after the socket closed and lost its ports still belong to the kept socket.
    assert_eq!(steps(&client_side).last().unwrap(), "LAST_ACK->CLOSED");
    let event_lines = lines
        .iter()
        .filter(|line| {
            ["transition", "time_wait_timer", "reset"].contains(&line["type"].as_str().unwrap())
        })
        .count();
    assert_eq!(summary(&lines)["events"].as_u64().unwrap() as usize, event_lines);
}

/// At a gentle rate every event arrives, and the summary says none was lost. (That the
/// same count reports real losses is `reliability.rs`'s full-ring test.)
#[test]
fn every_transition_of_every_connection_arrives_and_none_is_reported_lost() {
    let (watched, addr) = listener();
    let tracer = Tracer::start(&["--port", &addr.port().to_string()]);
    let clients: Vec<SocketAddr> = (0..20).map(|_| one_connection(&watched)).collect();
    let lines = tracer.stop();
    assert!(lines.iter().all(|line| line["type"] != "lost"));
    assert_eq!(summary(&lines)["lost"], 0);
    for client in clients {
        // Each connection whole, from both ends: every state change of both sockets arrived.
        let record = connection_with(&lines, client);
        assert_eq!(record["incomplete"], false, "{record:#}");
        assert_eq!(
            endpoint_states(&record["client"]),
            ["SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"],
            "{record:#}"
        );
        assert_eq!(
            endpoint_states(&record["server"]),
            ["SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSED"],
            "{record:#}"
        );
    }
}

#[test]
fn stops_cleanly_on_ctrl_c_and_after_duration() {
    let (watched, addr) = listener();
    let tracer = Tracer::start(&["--port", &addr.port().to_string()]);
    let client_addr = one_connection(&watched);
    let lines = tracer.stop_with(libc::SIGINT);
    assert_eq!(steps(&socket_transitions(&lines, client_addr)).len(), 5);

    let started = std::time::Instant::now();
    let tracer = Tracer::start(&["--port", &addr.port().to_string(), "--duration", "1"]);
    let client_addr = one_connection(&watched);
    let lines = tracer.wait();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(steps(&socket_transitions(&lines, client_addr)).len(), 5, "flushed at exit");
}

/// `tcptrace --record FILE | head -1`: when the reader of standard output goes away, live
/// tracing ends quietly, and the recording is whole: it ends with its `end` line.
#[test]
fn a_closed_stdout_ends_tracing_quietly_and_the_recording_keeps_its_end() {
    support::require_root();
    let (watched, addr) = listener();
    let dir = std::env::temp_dir().join(format!("tcptrace-test-closed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("session.jsonl");
    let mut child = support::spawn(
        Command::new(env!("CARGO_BIN_EXE_tcptrace"))
            .args([
                "--json",
                "--port",
                &addr.port().to_string(),
                "--record",
                recording.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("tracing TCP state transitions") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "tcptrace stopped before tracing");
    }
    one_connection(&watched);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap(); // and close
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tcptrace kept running with nobody reading");
        one_connection(&watched); // output that can no longer be written
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(!rest.contains("error"), "{rest}");
    let recorded = std::fs::read_to_string(&recording).unwrap();
    let last: serde_json::Value = serde_json::from_str(recorded.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "end", "{recorded}");
    assert!(recorded.lines().filter(|l| l.contains("\"type\":\"transition\"")).count() >= 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A recording that can't be written stops tracing with an error that names it.
#[test]
fn a_full_recording_is_named_in_the_error() {
    support::require_root();
    let output = support::output(Command::new(env!("CARGO_BIN_EXE_tcptrace")).args([
        "--port",
        "9",
        "--duration",
        "3",
        "--record",
        "/dev/full",
    ]))
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("writing the recording /dev/full: No space left on device"),
        "{stderr}"
    );
}

/// The kernel program's own diagnostics (aya-log) reach stderr with `--verbose` only: each
/// CPU says when it sends its first state change (a `listen()` on every CPU in turn here).
#[test]
fn kernel_diagnostics_show_with_verbose_and_only_then() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_arg = port.to_string();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;

    let mut verbose = Tracer::start(&["--port", &port_arg, "--verbose"]);
    listen_on_every_cpu(port, cpus);
    for cpu in 0..cpus {
        verbose
            .wait_for_stderr(&format!("kernel: cpu {cpu}: the first state change is on its way"));
    }
    verbose.stop();

    let mut quiet = Tracer::start(&["--port", &port_arg]);
    listen_on_every_cpu(port, cpus);
    std::thread::sleep(Duration::from_millis(300));
    let said = quiet.stderr_so_far();
    let listens = quiet.stop().iter().filter(|line| line["new"] == "LISTEN").count();
    assert_eq!(listens, cpus, "the events came");
    assert!(!said.contains("kernel:"), "{said}");
}

/// A `listen()` on 127.0.0.1:`port` from a thread pinned to each CPU in turn.
fn listen_on_every_cpu(port: u16, cpus: usize) {
    std::thread::spawn(move || {
        for cpu in 0..cpus {
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0);
            }
            drop(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        }
    })
    .join()
    .unwrap();
}
