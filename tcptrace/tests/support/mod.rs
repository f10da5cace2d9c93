//! Helpers for tests that run the real `tcptrace` binary against the real kernel.
#![allow(dead_code)] // each test file uses its own subset

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        Mutex, MutexGuard, PoisonError,
        mpsc::{Receiver, channel},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Held while a thread of the test process starts a program, or closes a socket whose
/// closing process a test checks: a child copies every open socket when it is forked, and
/// holds it until it has started the program, so a close meanwhile would be the child's.
static FORKING: Mutex<()> = Mutex::new(());

fn forking() -> MutexGuard<'static, ()> {
    FORKING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a program; see [`FORKING`]. (`spawn` returns once the program runs.)
pub fn spawn(command: &mut Command) -> std::io::Result<Child> {
    let _forking = forking();
    command.spawn()
}

/// Runs a program to its end, its output taken, as [`Command::output`] does.
pub fn output(command: &mut Command) -> std::io::Result<Output> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn(command)?.wait_with_output()
}

/// Closes a socket while no other thread starts a program: the close is this process's.
pub fn close_alone(socket: TcpStream) {
    let _forking = forking();
    drop(socket);
}

/// The scheduling policy of thread `tid`.
pub fn policy(tid: libc::pid_t) -> i32 {
    // SAFETY: asks about a thread of a process of the test's own making, alive until it
    // is stopped.
    unsafe { libc::sched_getscheduler(tid) }
}

/// Polls `tid`'s policy for up to 5 s until it is `wanted`.
pub fn becomes(tid: libc::pid_t, wanted: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if policy(tid) == wanted {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the kernel tests load eBPF programs and need root: run `sudo cargo xtask test`"
    );
}

/// A listener on a loopback port no other socket has, and its address. The port is below
/// the ephemeral range, which connect() takes its ports from: after a churn, most ports of
/// that range are an end of some earlier test's TIME-WAIT for a minute, and the tracer
/// would count those connections with the test's own.
pub fn listener() -> (TcpListener, SocketAddr) {
    const LOWEST: u16 = 1024;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let choices = u64::from(ephemeral.saturating_sub(LOWEST).max(1));
    // A random start: test binaries and threads running at once try different ports.
    let start = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0);
    for offset in 0..choices {
        let port = LOWEST + (start.wrapping_add(offset) % choices) as u16;
        if sockets_on_port(port) > 0 {
            continue;
        }
        // Taken by another test between the look and the bind: try the next.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            let addr = listener.local_addr().unwrap();
            return (listener, addr);
        }
    }
    panic!("no loopback port below {ephemeral} without sockets");
}

/// How many TCP sockets (IPv4 and IPv6, any state) have `port` at either end.
fn sockets_on_port(port: u16) -> usize {
    let port = format!(":{port:04X}");
    let tables: String = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|table| std::fs::read_to_string(table).unwrap_or_default())
        .collect();
    // Each row: `sl local_address rem_address st …`, an address `0100007F:1F90`.
    tables
        .lines()
        .filter(|row| row.split_whitespace().skip(1).take(2).any(|end| end.ends_with(&port)))
        .count()
}

/// Connects, lets the server close, and waits for both sides to finish.
pub fn one_connection(listener: &TcpListener) -> SocketAddr {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();
    drop(accepted);
    let mut rest = Vec::new();
    (&client).read_to_end(&mut rest).unwrap();
    client.shutdown(Shutdown::Both).ok();
    client_addr
}

/// A running `tcptrace --json …`.
pub struct Tracer {
    child: Child,
    stderr_lines: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Tracer {
    /// Starts tcptrace and waits until it has attached.
    pub fn start(args: &[&str]) -> Tracer {
        require_root();
        let mut child = spawn(
            Command::new(env!("CARGO_BIN_EXE_tcptrace"))
                .arg("--json")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .expect("spawn tcptrace");
        let stderr = child.stderr.take().unwrap();
        let (sender, stderr_lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer { child, stderr_lines, stderr_seen: Vec::new() };
        tracer.wait_for_stderr("tracing TCP state transitions");
        tracer
    }

    /// Waits until tcptrace prints a line with `needle` on stderr; returns that line.
    pub fn wait_for_stderr(&mut self, needle: &str) -> String {
        loop {
            match self.stderr_lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "tcptrace never printed {needle:?}; stderr so far:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything tcptrace printed on stderr so far.
    pub fn stderr_so_far(&mut self) -> String {
        self.stderr_seen.extend(self.stderr_lines.try_iter());
        self.stderr_seen.join("\n")
    }

    /// Sends `signal`, waits for a clean exit and returns every JSON line it printed.
    pub fn stop_with(self, signal: libc::c_int) -> Vec<Value> {
        // Let the kernel's last events reach the ring buffer and the 10 ms poll tick.
        thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        self.wait()
    }

    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGTERM)
    }

    /// Waits for tcptrace to exit by itself (`--duration`).
    pub fn wait(mut self) -> Vec<Value> {
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        self.stderr_seen.extend(self.stderr_lines.try_iter());
        assert!(
            status.success(),
            "tcptrace exited with {status}; stderr:\n{}",
            self.stderr_seen.join("\n")
        );
        stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
            })
            .collect()
    }
}

/// A test that fails leaves no tracer behind.
impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server in its own process (tests/support/peer.py).
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    pub port: u16,
}

impl Peer {
    pub fn start(family: &str, mode: &str) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/peer.py");
        let mut child = spawn(
            Command::new("python3")
                .arg(script)
                .args([family, mode])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
        .expect("spawn python3 (needed by the kernel tests)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("peer printed {line:?}"));
        Peer { child, stdin, stdout, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the peer has closed its connection.
    pub fn wait_done(&mut self) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"\n");
        let _ = self.child.wait();
    }
}

pub fn transitions(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|line| line["type"] == "transition").collect()
}

/// The transitions of the socket whose events include `local` as local address, in order.
pub fn socket_transitions(lines: &[Value], local: SocketAddr) -> Vec<&Value> {
    let all = transitions(lines);
    let sk = all
        .iter()
        .find(|t| t["local"] == local.to_string())
        .unwrap_or_else(|| panic!("no transition with local {local} in {all:#?}"))["sk"]
        .clone();
    all.into_iter().filter(|t| t["sk"] == sk).collect()
}

/// `["CLOSED->SYN_SENT", …]` for compact assertions.
pub fn steps(transitions: &[&Value]) -> Vec<String> {
    transitions
        .iter()
        .map(|t| format!("{}->{}", t["old"].as_str().unwrap(), t["new"].as_str().unwrap()))
        .collect()
}

pub fn find<'a>(transitions: &[&'a Value], old: &str, new: &str) -> &'a Value {
    transitions
        .iter()
        .find(|t| t["old"] == old && t["new"] == new)
        .unwrap_or_else(|| panic!("no {old}->{new} in {transitions:#?}"))
}

pub fn summary(lines: &[Value]) -> &Value {
    lines.iter().find(|line| line["type"] == "summary").expect("a summary line at exit")
}

pub fn connections(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|line| line["type"] == "connection").collect()
}

/// The connection record whose client or server endpoint has this local address.
pub fn connection_with(lines: &[Value], addr: SocketAddr) -> &Value {
    let addr = addr.to_string();
    let all = connections(lines);
    all.iter()
        .copied()
        .find(|c| c["client"]["addr"] == addr || c["server"]["addr"] == addr)
        .unwrap_or_else(|| panic!("no connection record with {addr} in {all:#?}"))
}

/// `["SYN_SENT", "ESTABLISHED", …]` of one endpoint of a connection record.
pub fn endpoint_states(endpoint: &Value) -> Vec<&str> {
    endpoint["states"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect()
}

/// The JSON lines a finished `tcptrace` printed, failing the test if it failed.
pub fn json_lines(output: &std::process::Output) -> Vec<Value> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output =
        output(Command::new(program).args(args)).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace of the test's own, with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("tcptrace-{tag}-{}", std::process::id());
        let _ = output(Command::new("ip").args(["netns", "del", &name]));
        run("ip", &["netns", "add", &name]);
        let netns = Netns { name };
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    /// Its inode: what events and records carry.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name)).unwrap().ino()
    }

    pub fn exec(&self, command: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    pub fn spawn(&self, command: &[&str]) -> Child {
        spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(command)
                .stdout(Stdio::piped()),
        )
        .expect("spawn ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output(Command::new("ip").args(["netns", "del", &self.name]));
    }
}
