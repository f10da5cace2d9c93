//! Sockets stuck in CLOSE_WAIT, on the real kernel: a server that never closes what its
//! clients closed is named, with its count, live and in the summary.

mod support;

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use support::{Tracer, summary};

fn leaks_and_is_named(host: &str, port: u16) {
    let port_text = port.to_string();
    let tracer = Tracer::start(&["--port", &port_text, "--stuck-after", "1"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/leaky_server.py");
    let mut server = Command::new("python3")
        .arg(&script)
        .args([host, &port_text, "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let address =
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&address).unwrap()).collect();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "accepted");
    drop(clients); // the clients close; the server never does
    std::thread::sleep(Duration::from_millis(2500));
    let lines = tracer.stop();
    drop(server.stdin.take());
    server.wait().unwrap();

    let reports: Vec<_> = lines.iter().filter(|l| l["type"] == "stuck").collect();
    let counts: Vec<u64> = reports.iter().map(|r| r["count"].as_u64().unwrap()).collect();
    assert_eq!(counts.last(), Some(&3), "{reports:#?}");
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "one more each time: {counts:?}");
    for report in &reports {
        assert_eq!(report["state"], "CLOSE_WAIT", "{report}");
        assert_eq!(report["pid"], server.id(), "the server, by its listener: {report}");
        assert_eq!(report["comm"], "python3", "{report}");
    }
    let last = reports.last().unwrap();
    assert_eq!(last["sockets"].as_array().unwrap().len(), 3, "{last}");
    assert!(last["ts_ns"].as_u64().unwrap() - last["oldest_ns"].as_u64().unwrap() >= 1_000_000_000);
    let at_exit = summary(&lines)["stuck"].as_array().unwrap().clone();
    assert_eq!(at_exit.len(), 1, "{at_exit:#?}");
    assert_eq!(
        (at_exit[0]["pid"].as_u64(), at_exit[0]["count"].as_u64()),
        (Some(u64::from(server.id())), Some(3))
    );
}

#[test]
fn a_server_that_never_closes_is_named_with_its_count_ipv4() {
    leaks_and_is_named("127.0.0.1", 18097);
}

#[test]
fn a_server_that_never_closes_is_named_with_its_count_ipv6() {
    leaks_and_is_named("::1", 18098);
}
