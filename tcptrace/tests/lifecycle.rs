//! Connection lifecycles on the real kernel: who closed first, and TIME-WAIT measured from
//! the kernel's own timer.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Netns, Peer, Tracer, connection_with, connections, endpoint_states, listener};

const NS_PER_S: f64 = 1e9;

fn time_wait(endpoint: &Value) -> &Value {
    &endpoint["time_wait"]
}

/// A tracer with the test's filter and one with none, side by side: with a filter the
/// kernel follows the kept sockets' time-wait timers through a table, with none it follows
/// every time-wait timer without one. The time-wait tests check both.
fn filtered_and_not(filter: &[&str], rest: &[&str]) -> [(&'static str, Tracer); 2] {
    let filtered: Vec<&str> = filter.iter().chain(rest).copied().collect();
    [("filtered", Tracer::start(&filtered)), ("unfiltered", Tracer::start(rest))]
}

/// `lines` with only the connection records of `server` in the test's own namespace (the
/// unfiltered tracer sees every test's, and an ephemeral port may serve two connections).
fn to_server(lines: Vec<Value>, server: SocketAddr) -> Vec<Value> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let server = server.to_string();
    lines
        .into_iter()
        .filter(|line| {
            line["type"] != "connection"
                || (line["server"]["addr"] == server && line["server"]["netns"] == netns)
        })
        .collect()
}

#[test]
fn server_closes_first_holds_the_only_time_wait() {
    let mut server = Peer::start("ipv4", "close-first");
    let tracers = filtered_and_not(&["--port", &server.port.to_string()], &[]);
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let client_addr = client.local_addr().unwrap();
    let mut greeting = Vec::new();
    client.read_to_end(&mut greeting).unwrap();
    server.wait_done();
    drop(client);
    let server_addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    for (how, tracer) in tracers {
        let lines = to_server(tracer.stop(), server_addr);
        let record = connection_with(&lines, client_addr);
        assert_eq!(record["closed_first"], "server", "{how}: {record:#}");
        server_closed_first(record, client_addr, &server);
    }
}

fn server_closed_first(record: &Value, client_addr: SocketAddr, server: &Peer) {
    assert_eq!(record["incomplete"], false);
    let (client, server_side) = (&record["client"], &record["server"]);
    assert_eq!(client["addr"], client_addr.to_string());
    assert_eq!(server_side["addr"], format!("127.0.0.1:{}", server.port));
    assert_eq!(client["pid"], std::process::id());
    assert_eq!(server_side["pid"], server.pid());
    assert_eq!(
        endpoint_states(client),
        ["SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    );
    assert_eq!(
        endpoint_states(server_side),
        ["SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSED"]
    );
    assert!(time_wait(client).is_null(), "{record:#}");
    let tw = time_wait(server_side);
    assert_eq!(tw["end"], "open", "tracing stopped long before 60 s");
    assert_eq!(tw["kind"], "time_wait", "the client's FIN arrived");
    assert!(tw["time_left_ns"].as_u64().unwrap() > 55_000_000_000, "{tw}");
}

#[test]
fn client_closes_first_leaves_time_wait_on_its_ephemeral_port() {
    let mut server = Peer::start("ipv4", "wait-eof");
    let tracer = Tracer::start(&["--port", &server.port.to_string()]);
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(b"bye").unwrap();
    drop(client);
    server.wait_done();
    let lines = tracer.stop();

    let record = connection_with(&lines, client_addr);
    assert_eq!(record["closed_first"], "client", "{record:#}");
    let (client, server_side) = (&record["client"], &record["server"]);
    assert_eq!(
        endpoint_states(client),
        ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSED"]
    );
    assert_eq!(
        endpoint_states(server_side),
        ["SYN_RECEIVED", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    );
    assert_eq!(client["addr"], client_addr.to_string(), "TIME-WAIT sits on the client's port");
    assert_eq!(time_wait(client)["end"], "open");
    assert!(time_wait(server_side).is_null());
}

/// The client's close leaves an orphaned FIN_WAIT2 time-wait socket; the server's FIN, 6 s
/// later, makes it a real TIME-WAIT and re-arms its timer for 60 s from then. 6 s is more
/// than the timer wheel's bucket for a 60 s timer at any HZ (5.12 s at 100), so the kernel
/// moves the timer: the cancel that tcptrace must tell from a kill.
#[test]
fn a_fin_arriving_in_time_wait_re_arms_its_timer() {
    let (listener, addr) = listener();
    let tracers = filtered_and_not(&["--port", &addr.port().to_string()], &[]);
    let client = TcpStream::connect(addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (accepted, _) = listener.accept().unwrap();
    drop(client);
    thread::sleep(Duration::from_secs(6));
    drop(accepted);
    thread::sleep(Duration::from_millis(300));
    for (how, tracer) in tracers {
        println!("{how}");
        re_armed(&to_server(tracer.stop(), addr), client_addr);
    }
}

/// The same re-arm of a time-wait socket from before tracing began: the kernel program
/// meets it at the re-arm, which it reports alone with the socket's addresses (not as a
/// cancel, then a re-arm), and the engine gives it to the socket the start-up snapshot found.
#[test]
fn a_time_wait_from_before_start_is_met_by_its_re_arm() {
    let (listener, addr) = listener();
    let client = TcpStream::connect(addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (accepted, _) = listener.accept().unwrap();
    drop(client);
    let closed = Instant::now();
    let tracers = filtered_and_not(&["--port", &addr.port().to_string()], &[]);
    thread::sleep(Duration::from_secs(6).saturating_sub(closed.elapsed()));
    drop(accepted);
    thread::sleep(Duration::from_millis(300));
    for (how, tracer) in tracers {
        println!("{how}");
        let lines = to_server(tracer.stop(), addr);
        let timer_events: Vec<&Value> = lines
            .iter()
            .filter(|line| line["type"] == "time_wait_timer")
            .filter(|line| line["local"] == client_addr.to_string())
            .collect();
        assert_eq!(timer_events.len(), 1, "one re-arm, no cancel: {timer_events:#?}");
        assert_eq!(timer_events[0]["event"], "rearm");
        let record = connection_with(&lines, client_addr);
        let tw = time_wait(&record["client"]);
        assert_eq!(record["client"]["seen_at_start"], true, "{record:#}");
        assert_eq!((&tw["end"], &tw["rearmed"]), (&Value::from("open"), &Value::from(1)), "{tw}");
        let left = tw["time_left_ns"].as_u64().unwrap() as f64 / NS_PER_S;
        assert!(left > 57.0, "60 s from the re-arm: {left} s left");
    }
}

fn re_armed(lines: &[Value], client_addr: SocketAddr) {
    let record = connection_with(lines, client_addr);
    assert_eq!(record["closed_first"], "client", "{record:#}");
    let handed_over = lines
        .iter()
        .find(|line| line["new"] == "CLOSED" && line["local"] == client_addr.to_string())
        .expect("the client's close");
    let timer = &handed_over["time_wait_timer"];
    assert!(timer.is_string(), "the close names its time-wait timer: {handed_over}");
    // The socket too: without a filter, another time-wait socket may have had the timer's
    // memory before.
    let timer_events: Vec<&Value> = lines
        .iter()
        .filter(|line| line["type"] == "time_wait_timer" && &line["timer"] == timer)
        .filter(|line| line["sk"] == handed_over["sk"])
        .collect();
    assert_eq!(timer_events.len(), 1, "one re-arm, no cancel: {timer_events:#?}");
    assert_eq!(timer_events[0]["event"], "rearm");
    let tw = time_wait(&record["client"]);
    assert_eq!(tw["end"], "open", "re-armed, not killed: {tw}");
    assert_eq!(tw["rearmed"], 1, "{tw}");
    assert_eq!(tw["kind"], "time_wait", "{tw}");
    let lasted_before = (tw["became_time_wait_ns"].as_u64().unwrap()
        - tw["start_ns"].as_u64().unwrap()) as f64
        / NS_PER_S;
    assert!((5.9..7.0).contains(&lasted_before), "FIN_WAIT2 for {lasted_before} s");
    // 60 s from the re-arm, not from the close (which would leave about 54 s).
    let left = tw["time_left_ns"].as_u64().unwrap() as f64 / NS_PER_S;
    assert!(left > 57.0, "{left} s left");
}

#[test]
fn curl_against_python_http_server_is_classified_by_what_each_side_did() {
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut banner).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port: u16 = banner.split_whitespace().nth(5).and_then(|p| p.parse().ok()).expect(&banner);
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", &format!("http://127.0.0.1:{port}/")])
        .spawn()
        .expect("curl");
    let curl_pid = curl.id();
    assert!(curl.wait_with_output().unwrap().status.success());
    let lines = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();

    let all = connections(&lines);
    assert_eq!(all.len(), 1, "{all:#?}");
    let record = all[0];
    let (client, server_side) = (&record["client"], &record["server"]);
    assert_eq!(client["pid"], curl_pid);
    assert_eq!(client["comm"], "curl");
    assert_eq!(server_side["pid"], server.id());
    match record["closed_first"].as_str().unwrap() {
        "server" => {
            assert_eq!(endpoint_states(client)[2..], ["CLOSE_WAIT", "LAST_ACK", "CLOSED"]);
            assert_eq!(endpoint_states(server_side)[2..], ["FIN_WAIT1", "FIN_WAIT2", "CLOSED"]);
            assert!(time_wait(client).is_null());
            assert_eq!(time_wait(server_side)["end"], "open");
        }
        "simultaneous" => {
            for side in [client, server_side] {
                assert_eq!(
                    endpoint_states(side)[2..],
                    ["FIN_WAIT1", "CLOSING", "CLOSED"],
                    "{record:#}"
                );
                assert_eq!(time_wait(side)["end"], "open", "both sides hold a TIME-WAIT");
            }
        }
        // curl knows the body's length and may close before python's handler returns and
        // closes: seen under load (CI runs tests in parallel). Rarer, but as real.
        "client" => {
            let client_closes = ["FIN_WAIT1", "FIN_WAIT2", "CLOSED"];
            assert_eq!(endpoint_states(client)[2..], client_closes, "{record:#}");
            assert_eq!(endpoint_states(server_side)[2..], ["CLOSE_WAIT", "LAST_ACK", "CLOSED"]);
            assert_eq!(time_wait(client)["end"], "open");
            assert!(time_wait(server_side).is_null());
        }
        other => panic!("curl vs http.server closed by {other}: {record:#}"),
    }
}

#[test]
fn linger_zero_abort_by_the_client_is_a_client_reset_without_time_wait() {
    let (listener, server_addr) = listener();
    let tracer = Tracer::start(&["--port", &server_addr.port().to_string()]);
    let client = TcpStream::connect(server_addr).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(client); // close() with SO_LINGER 0: RST instead of FIN
    thread::sleep(Duration::from_millis(50));
    drop(accepted);
    let lines = tracer.stop();

    let record = connection_with(&lines, client_addr);
    assert_eq!(record["closed_first"], "client_reset", "{record:#}");
    let (client, server) = (&record["client"], &record["server"]);
    assert_eq!(endpoint_states(client), ["SYN_SENT", "ESTABLISHED", "CLOSED"]);
    assert_eq!(endpoint_states(server), ["SYN_RECEIVED", "ESTABLISHED", "CLOSED"]);
    assert!(client["reset_sent_ns"].is_u64(), "{record:#}");
    assert!(server["reset_received_ns"].is_u64(), "{record:#}");
    assert!(time_wait(client).is_null() && time_wait(server).is_null());
    // Each reset event carries its socket's own view of the addresses (the two tracepoints
    // lay them out differently: `tcp_receive_reset` on 2-byte boundaries).
    for (direction, local, remote) in
        [("sent", client_addr, server_addr), ("received", server_addr, client_addr)]
    {
        let reset = lines
            .iter()
            .find(|l| l["type"] == "reset" && l["direction"] == direction)
            .unwrap_or_else(|| panic!("no reset {direction} event"));
        assert_eq!(reset["local"], local.to_string(), "{reset:#}");
        assert_eq!(reset["remote"], remote.to_string(), "{reset:#}");
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The (local, peer) pairs of every time-wait socket on the host, as `ss` shows them.
fn time_wait_sockets() -> Vec<(String, String)> {
    let table = support::run("ss", &["-Htn", "state", "time-wait"]);
    table
        .lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace().skip(2);
            Some((columns.next()?.to_owned(), columns.next()?.to_owned()))
        })
        .collect()
}

/// Both ends shut down their sending side at the same moment from two CPUs, again and
/// again. Whether the FINs crossed is told apart from tcptrace, by the kernel's own table:
/// only after a simultaneous close do both ends hold a time-wait socket (`ss`). tcptrace must
/// call exactly those connections simultaneous.
#[test]
fn simultaneous_close_puts_time_wait_on_both_sides() {
    let (listener, server_addr) = listener();
    let tracer = Tracer::start(&["--port", &server_addr.port().to_string()]);
    let mut sockets = Vec::new();
    let mut crossed = Vec::new();
    for _ in 0..200 {
        let client = TcpStream::connect(server_addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let client_addr = client.local_addr().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let shut = |stream: TcpStream, cpu: usize, barrier: Arc<Barrier>| {
            thread::spawn(move || {
                pin_to_cpu(cpu);
                barrier.wait();
                stream.shutdown(Shutdown::Write).unwrap();
                stream
            })
        };
        let a = shut(client, 0, barrier.clone());
        let b = shut(accepted, 1, barrier);
        let (client, accepted) = (a.join().unwrap(), b.join().unwrap());
        for stream in [&client, &accepted] {
            // Each end has the other's FIN: both closes are over.
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!((&*stream).read(&mut [0u8; 1]).unwrap(), 0);
        }
        thread::sleep(Duration::from_millis(5)); // the last ACKs on loopback
        let time_waits = time_wait_sockets();
        let (c, s) = (client_addr.to_string(), server_addr.to_string());
        let both = time_waits.contains(&(c.clone(), s.clone())) && time_waits.contains(&(s, c));
        if both {
            crossed.push(client_addr.to_string());
        }
        sockets.push((client, accepted));
        if !crossed.is_empty() && sockets.len() >= 20 {
            break;
        }
    }
    let tries = sockets.len();
    drop(sockets);
    let lines = tracer.stop();
    assert!(!crossed.is_empty(), "the FINs never crossed in {tries} tries");

    let all = connections(&lines);
    assert_eq!(all.len(), tries, "one record per connection");
    for record in &all {
        let client = record["client"]["addr"].as_str().unwrap().to_owned();
        let simultaneous = crossed.contains(&client);
        assert_eq!(record["closed_first"] == "simultaneous", simultaneous, "{record:#}");
        let holders: Vec<&Value> = [&record["client"], &record["server"]]
            .into_iter()
            .filter(|side| !time_wait(side).is_null())
            .collect();
        if simultaneous {
            for side in [&record["client"], &record["server"]] {
                assert_eq!(
                    endpoint_states(side)[2..],
                    ["FIN_WAIT1", "CLOSING", "CLOSED"],
                    "{record:#}"
                );
                assert_eq!(time_wait(side)["end"], "open");
                assert_eq!(time_wait(side)["kind"], "time_wait");
            }
        } else {
            // An ordinary close: one TIME-WAIT, on the side that closed first.
            assert_eq!(holders.len(), 1, "{record:#}");
        }
    }
}

/// In a namespace of the test's own with `tcp_tw_reuse=1`: a reconnect from the same port
/// reuses the 4-tuple, and the kernel kills the old TIME-WAIT early.
#[test]
fn reconnect_reusing_the_four_tuple_kills_time_wait_early() {
    let netns = Netns::new("reuse");
    netns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tw_reuse.py");
    // The server port is not known before the script runs: trace all of loopback's TCP in
    // the namespace and pick the connection by its client port.
    let tracers = filtered_and_not(&["-4"], &[]);
    let mut helper = netns.spawn(&["python3", script]);
    let mut output = String::new();
    helper.stdout.take().unwrap().read_to_string(&mut output).unwrap();
    assert!(helper.wait().unwrap().success(), "{output}");

    let mut words = output.split_whitespace().skip(1);
    let client_port: u16 = words.next().unwrap().parse().unwrap();
    let server_port: u16 = words.next().unwrap().parse().unwrap();
    let client_addr = format!("127.0.0.1:{client_port}");
    let server_addr = format!("127.0.0.1:{server_port}");
    for (how, tracer) in tracers {
        let lines = tracer.stop();
        let records: Vec<&Value> = connections(&lines)
            .into_iter()
            .filter(|c| c["client"]["addr"] == client_addr && c["server"]["addr"] == server_addr)
            .filter(|c| c["client"]["netns"] == netns.inode())
            .collect();
        assert_eq!(records.len(), 2, "{how}: two connections on one 4-tuple: {records:#?}");
        let first = records[0];
        assert_eq!(first["closed_first"], "client", "{how}");
        let tw = time_wait(&first["client"]);
        assert_eq!(tw["end"], "killed", "{how}: {first:#}");
        let lasted = tw["duration_ns"].as_u64().unwrap() as f64 / NS_PER_S;
        assert!((1.1..5.0).contains(&lasted), "{how}: killed after {lasted} s, well under 60 s");
        assert_eq!(time_wait(&records[1]["client"])["end"], "open", "{how}");
    }
}

/// Waits out a whole TIME-WAIT (about a minute).
#[test]
fn natural_time_wait_expires_after_60_to_62_seconds() {
    let (listener, server_addr) = listener();
    let tracers =
        filtered_and_not(&["--port", &server_addr.port().to_string()], &["--duration", "66"]);
    let mut client = TcpStream::connect(server_addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (accepted, _) = listener.accept().unwrap();
    drop(accepted); // the server closes first
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    drop(client);
    for (how, tracer) in tracers {
        let lines = to_server(tracer.wait(), server_addr);
        let record = connection_with(&lines, client_addr);
        assert_eq!(record["closed_first"], "server", "{how}");
        let tw = time_wait(&record["server"]);
        assert_eq!(tw["end"], "expired", "{how}: {record:#}");
        let lasted = tw["duration_ns"].as_u64().unwrap() as f64 / NS_PER_S;
        assert!((60.0..=62.1).contains(&lasted), "{how}: TIME-WAIT lasted {lasted} s");
        assert_eq!(
            tw["end_ns"].as_u64().unwrap() - tw["start_ns"].as_u64().unwrap(),
            tw["duration_ns"].as_u64().unwrap()
        );
    }
}
