//! What each connection carried and how it ended, on the real kernel: the counters a
//! socket closes with (read from `struct tcp_sock` at offsets from the kernel's BTF) and its
//! pending error, for known transfers, real packet loss, refused and timed-out connects.

mod support;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use support::{Netns, Tracer, connection_with, summary};

fn transfer_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/transfer.py").display().to_string()
}

/// Runs `command` (in `netns` if given) with its stdout piped.
fn spawn(netns: Option<&Netns>, command: &[&str]) -> Child {
    match netns {
        Some(netns) => netns.spawn(command),
        None => Command::new(command[0])
            .args(&command[1..])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3"),
    }
}

fn first_line(child: &mut Child) -> (String, BufReader<std::process::ChildStdout>) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    (line.trim().to_owned(), stdout)
}

/// The client sends `up` bytes and the server `down`, over `host` (in `netns` if given):
/// every line tcptrace printed, and the client's address.
fn transfer(netns: Option<&Netns>, host: &str, up: u64, down: u64) -> (Vec<Value>, SocketAddr) {
    let script = transfer_script();
    let mut server = spawn(netns, &["python3", &script, "server", host, &down.to_string()]);
    let (port, mut server_out) = first_line(&mut server);
    let tracer = Tracer::start(&["--port", &port]);
    let mut client = spawn(netns, &["python3", &script, "client", host, &port, &up.to_string()]);
    let (report, _) = first_line(&mut client);
    assert!(client.wait().unwrap().success());
    let mut done = String::new();
    server_out.read_line(&mut done).unwrap();
    assert_eq!(done.trim(), "done");
    server.wait().unwrap();
    wait_until_closed(netns, &port);
    let lines = tracer.stop();
    let (local_port, received) = report.split_once(' ').expect("LOCALPORT RECEIVED");
    assert_eq!(received.parse::<u64>().unwrap(), down, "the client got all the server sent");
    let ip: std::net::IpAddr = host.parse().unwrap();
    (lines, SocketAddr::new(ip, local_port.parse().unwrap()))
}

/// Waits until no socket on `port` is left but TIME-WAIT ones: with loss, the server's
/// LAST_ACK can outlive its process while its FIN is sent again, and its counters are read
/// only when it closes.
fn wait_until_closed(netns: Option<&Netns>, port: &str) {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let command = ["ss", "-Htan", "exclude", "time-wait", &filter];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let open = match netns {
            Some(netns) => netns.exec(&command),
            None => support::run(command[0], &command[1..]),
        };
        if open.trim().is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "sockets still open on {port}: {open}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn counter(endpoint: &Value, name: &str) -> u64 {
    endpoint["tcp_info"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no tcp_info.{name} in {endpoint:#}"))
}

/// Data bytes and what TCP adds to them: the SYN and the FIN each take a sequence number, so
/// `bytes_acked` counts up to two more than the data sent and `bytes_received` one more than
/// the data received (as `ss -i` shows them).
fn assert_carried(endpoint: &Value, sent: u64, received: u64) {
    let acked = counter(endpoint, "bytes_acked");
    assert!((sent..=sent + 2).contains(&acked), "sent {sent}, acked {acked}: {endpoint:#}");
    let got = counter(endpoint, "bytes_received");
    assert!((received..=received + 1).contains(&got), "received {received}, {got}: {endpoint:#}");
}

#[test]
fn known_transfers_both_ways_are_counted_on_both_ends() {
    for (host, up, down) in [("127.0.0.1", 1000, 250_000), ("::1", 300_000, 77)] {
        let (lines, client_addr) = transfer(None, host, up, down);
        let record = connection_with(&lines, client_addr);
        let (client, server) = (&record["client"], &record["server"]);
        assert_carried(client, up, down);
        assert_carried(server, down, up);
        for side in [client, server] {
            assert!(counter(side, "rtt_us") > 0, "{side:#}");
            assert!(counter(side, "segs_out") > 0 && counter(side, "segs_in") > 0, "{side:#}");
            assert_eq!(counter(side, "total_retrans"), 0, "no loss on loopback: {side:#}");
            assert!(side["error"].is_null(), "{side:#}");
        }
        // The close events themselves carry the counters too.
        let close = lines
            .iter()
            .find(|l| {
                l["type"] == "transition"
                    && l["new"] == "CLOSED"
                    && l["local"] == client_addr.to_string()
            })
            .expect("the client's close");
        assert_eq!(close["tcp_info"], client["tcp_info"], "{close:#}");
    }
}

/// Segments the kernel sent again in `netns`, all sockets together (`nstat`).
fn retransmitted_segments(netns: &Netns) -> u64 {
    let table = netns.exec(&["nstat", "-az", "TcpRetransSegs"]);
    table
        .lines()
        .find_map(|line| {
            line.strip_prefix("TcpRetransSegs")?.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no TcpRetransSegs in {table}"))
}

/// nftables in a namespace of the test's own drops a fifth of the packets at random, so
/// segments are sent again: both ends' `total_retrans` add up to what the kernel's own
/// counter for the namespace says, and a transfer with loss shows it. (Loopback is given
/// Ethernet's MTU and no segmentation offload, so the data goes in about seventy packets,
/// not two 64 KiB ones.)
#[test]
fn real_packet_loss_shows_as_retransmits() {
    let netns = Netns::new("loss");
    let lo = ["ip", "link", "set", "dev", "lo", "mtu", "1500", "gso_max_size", "1500"];
    netns.exec(&lo);
    netns.exec(&["ip", "link", "set", "dev", "lo", "gso_max_segs", "1"]);
    netns.exec(&[
        "nft",
        "add table inet loss; add chain inet loss out { type filter hook output priority 0; }; \
         add rule inet loss out numgen random mod 10 < 2 drop",
    ]);
    let mut lossy = 0;
    for _ in 0..8 {
        let before = retransmitted_segments(&netns);
        let (lines, client_addr) = transfer(Some(&netns), "127.0.0.1", 100_000, 10);
        let retransmitted = retransmitted_segments(&netns) - before;
        let record = connection_with(&lines, client_addr);
        let (client, server) = (&record["client"], &record["server"]);
        assert_carried(client, 100_000, 10);
        let traced = counter(client, "total_retrans") + counter(server, "total_retrans");
        assert_eq!(traced, retransmitted, "tcptrace and the kernel's counter: {record:#}");
        if counter(client, "total_retrans") > 0 && counter(client, "bytes_retrans") > 0 {
            lossy += 1;
            if lossy == 2 {
                break;
            }
        }
    }
    assert_eq!(lossy, 2, "the client had to send data again in two transfers of eight");
}

/// A port nobody listens on: the connect is refused, and the record, the summary and the
/// text say so.
#[test]
fn a_refused_connect_is_named_with_its_error_and_its_time() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("tcptrace-test-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("refused.jsonl");
    let tracer =
        Tracer::start(&["--port", &port.to_string(), "--record", recording.to_str().unwrap()]);
    let error = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    let lines = tracer.stop();
    let record = lines.iter().find(|l| l["type"] == "connection").expect("a record");
    let client = &record["client"];
    assert_eq!(client["error"], "ECONNREFUSED", "{record:#}");
    assert_eq!(support::endpoint_states(client), ["SYN_SENT", "CLOSED"]);
    assert!(client["states"][0]["duration_ns"].as_u64().unwrap() > 0);
    assert_eq!(summary(&lines)["failed_connects"]["ECONNREFUSED"], 1);

    let text = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["replay", recording.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("connect to 127.0.0.1:{port} refused after ")), "{text}");
    assert!(text.contains("failed connects: ECONNREFUSED 1"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SYNs dropped by nftables until the kernel gives up (one retry in this namespace): the
/// connect times out, after the SYN was sent again once.
#[test]
fn a_connect_whose_syns_are_dropped_times_out_after_its_retries() {
    let netns = Netns::new("synloss");
    netns.exec(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"]);
    netns.exec(&[
        "nft",
        "add table inet syn; add chain inet syn out { type filter hook output priority 0; }; \
         add rule inet syn out tcp dport 4000 tcp flags syn drop",
    ]);
    let tracer = Tracer::start(&["--port", "4000"]);
    let said = netns.exec(&["python3", &transfer_script(), "connect", "127.0.0.1", "4000"]);
    assert_eq!(said.trim(), "ETIMEDOUT");
    let lines = tracer.stop();
    let record = lines.iter().find(|l| l["type"] == "connection").expect("a record");
    let client = &record["client"];
    assert_eq!(client["error"], "ETIMEDOUT", "{record:#}");
    // Every SYN after the first is a retransmit (the kernel gives up on a time budget that
    // one retry sets, so the count is the kernel's to tell: 1 or 2 here).
    let syns = counter(client, "segs_out");
    assert!(syns >= 2, "{record:#}");
    assert_eq!(counter(client, "total_retrans"), syns - 1, "{record:#}");
    let waited = client["states"][0]["duration_ns"].as_u64().unwrap() as f64 / 1e9;
    assert!((2.5..10.0).contains(&waited), "1 s, then 2 s for the retry: {waited} s");
    assert_eq!(summary(&lines)["failed_connects"]["ETIMEDOUT"], 1);
}

/// tcptrace's own BTF reader finds every member it reads where btfparse, a general BTF
/// parser, finds it in this machine's kernel, with the same size.
#[test]
fn the_btf_reader_agrees_with_btfparse_on_this_kernel() {
    use tcptrace::kernel::btf::{
        Btf, CGROUP_MEMBERS, Member, NETNS_MEMBERS, SOCK_MEMBERS, TCP_SOCK_MEMBERS,
        TIME_WAIT_SOCK_MEMBERS, TIMER_MEMBERS, VMLINUX,
    };
    struct Bytes(Vec<u8>);
    impl btfparse::Readable for Bytes {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let start = offset as usize;
            let bytes = self
                .0
                .get(start..start + buffer.len())
                .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::EOF, "past the end"))?;
            buffer.copy_from_slice(bytes);
            Ok(())
        }
    }
    let bytes = std::fs::read(VMLINUX).unwrap();
    let theirs = btfparse::TypeInformation::new(&Bytes(bytes.clone())).unwrap();
    let ours = Btf::parse(bytes).unwrap();
    fn check<O>(theirs: &btfparse::TypeInformation, ours: &Btf, members: &[Member<O>]) {
        for Member { parent, path, size, .. } in members {
            let (their_id, our_id) =
                (theirs.id_of(parent).unwrap(), ours.struct_named(parent).unwrap());
            assert_eq!(their_id, our_id, "{parent}");
            let (their_type, their_offset) = theirs.offset_of(their_id, path).unwrap();
            let btfparse::Offset::ByteOffset(their_offset) = their_offset else {
                panic!("{path} is a bitfield")
            };
            let their_size = theirs.size_of(their_type).unwrap() as u32;
            let ours = ours.offset_of(our_id, path).unwrap();
            assert_eq!(ours, (their_offset, their_size), "{parent}.{path}");
            assert_eq!(their_size, *size, "{parent}.{path}");
        }
    }
    check(&theirs, &ours, &TCP_SOCK_MEMBERS);
    check(&theirs, &ours, &NETNS_MEMBERS);
    check(&theirs, &ours, &CGROUP_MEMBERS);
    check(&theirs, &ours, &TIME_WAIT_SOCK_MEMBERS);
    check(&theirs, &ours, &TIMER_MEMBERS);
    check(&theirs, &ours, &SOCK_MEMBERS);
    let tw = tcptrace::kernel::btf::time_wait_sock_offsets(&ours).unwrap();
    assert_eq!(tw.valid, 1);
    // A time-wait socket's namespace is read at a socket's offset: both start alike.
    let tw_net =
        ours.offset_of(ours.struct_named("inet_timewait_sock").unwrap(), "__tw_common.skc_net.net");
    let sock_net = ours.offset_of(ours.struct_named("sock").unwrap(), "__sk_common.skc_net.net");
    assert_eq!(tw_net.unwrap(), sock_net.unwrap());
    let offsets = tcptrace::kernel::btf::tcp_sock_offsets(&ours).unwrap();
    assert_eq!(offsets.valid, 1);
    assert!(offsets.sk_err < offsets.bytes_acked, "struct sock comes first: {offsets:?}");
    let (home, errors) = tcptrace::kernel::btf::socket_home_offsets(&ours);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((home.netns_valid, home.cgroup_valid), (1, 1));
}

/// A recording made before the counters (format version 1) still replays; its
/// connections have no counters.
#[test]
fn a_version_1_recording_replays_with_null_counters() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/close-lab.jsonl");
    let header = std::fs::read_to_string(&example).unwrap();
    assert!(header.starts_with(r#"{"type":"tcptrace_recording","version":1,"#));
    let output = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["replay", example.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let records: Vec<&Value> = lines.iter().filter(|l| l["type"] == "connection").collect();
    assert_eq!(records.len(), 2);
    for record in records {
        for side in [&record["client"], &record["server"]] {
            assert!(side["tcp_info"].is_null() && side["error"].is_null(), "{side:#}");
        }
    }
}
