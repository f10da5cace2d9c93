//! `tcptrace lab`: the classic TIME-WAIT exercise, run and traced by itself in a private
//! network namespace. Step 1 is the exercise (an HTTP server on port 8080 and one request),
//! step 2 times its TIME-WAIT, step 3 says why it exists, step 4 shows what a pile-up
//! costs (ports, and which sockets hold descriptors). The words are in `render::lab`.

mod namespace;
pub mod peer;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cli::{FilterArgs, LabArgs, RunArgs, TraceArgs},
    clock::WallClock,
    engine::{Connection, EngineOptions, TimeWaitEnd, TimeWaitKind},
    event::{Errno, TableRow, TcpState},
    kernel::snapshot::socket_table,
    live::{Session, Step, ephemeral_port_range},
    pipeline::{Pipeline, PipelineOptions},
    render::{
        explain::Lang,
        lab::{self as text, Fds},
        stream::StreamFormat,
    },
    sink,
};
use namespace::LabNamespace;
use peer::Role as PeerRole;

/// The exercise's port.
const HTTP_PORT: u16 = 8080;
/// Step 4's servers: one that closes after its client, one that never closes.
const DRAIN_PORT: u16 = 9090;
const LEAK_PORT: u16 = 9091;
/// The narrowed ephemeral port range of step 4: a handful of ports.
const PORT_RANGE: (u16, u16) = (40000, 40007);
/// The leaky server's descriptor limit, and the connections made to it: more than it can
/// take, so that accept() fails.
const LEAK_MAX_FDS: u64 = 16;
const LEAK_CONNECTIONS: u32 = 14;
/// What tcptrace reports as stuck in the lab (the default 30 s is for servers).
const LAB_STUCK_AFTER: Duration = Duration::from_secs(2);
/// How long the lab waits for something that takes milliseconds, before giving up.
const PATIENCE: Duration = Duration::from_secs(10);
/// A natural TIME-WAIT lasts up to 62.05 s; the lab waits that and a margin.
const TIME_WAIT_PATIENCE: Duration = Duration::from_secs(70);

type Out = std::io::BufWriter<sink::Named<std::io::StdoutLock<'static>>>;

pub async fn run(args: &LabArgs) -> Result<()> {
    let lang = args.lang;
    // The exports are written at the end: a path that can't be is said before the 70 s.
    for (path, _) in &args.export {
        std::fs::File::create(path)
            .with_context(|| format!("cannot create the export {}", path.display()))?;
    }
    let namespace = LabNamespace::create()?;
    let trace = TraceArgs {
        filter: FilterArgs { netns: vec![namespace.inode().to_string()], ..FilterArgs::default() },
        // A namespace made a moment ago holds no socket yet.
        run: RunArgs { no_snapshot: true, ..RunArgs::default() },
        ..TraceArgs::default()
    };
    let engine = EngineOptions {
        ephemeral_ports: ephemeral_port_range(),
        stuck_after_ns: LAB_STUCK_AFTER.as_nanos() as u64,
        ..EngineOptions::default()
    };
    let options = PipelineOptions {
        format: StreamFormat::Text,
        show_events: true,
        explain: Some(lang),
        lang,
        exports: args.export.clone(),
        engine,
        keep_connections: true,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::new(sink::stdout(), WallClock::now(), options);
    let mut session = Session::attach(&trace, pipeline, None, None)?;
    session.pipeline().for_the_lab();
    let mut lab = Lab { session: &mut session, namespace: &namespace, lang, peers: Vec::new() };
    let result = lab.steps(args.quick).await;
    let peers = std::mem::take(&mut lab.peers);
    // The trace ends with the lab's sockets as they are; then its processes go, and with
    // them its namespace (the last file that kept it open is `namespace`).
    let result = session.end(result);
    drop(peers);
    drop(namespace);
    result?;
    writeln!(std::io::stdout(), "{}", text::the_end(lang))?;
    Ok(())
}

/// A process of the lab: killed when dropped; its output read a line at a time.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The thread that reads its output, to its end.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines it printed since the last call.
    fn lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Every line it printed that [`Peer::lines`] did not give yet, once it has exited: its
    /// output is read to the end first (the reader may still be behind the exit).
    fn last_lines(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Lab<'a> {
    session: &'a mut Session<Out>,
    namespace: &'a LabNamespace,
    lang: Lang,
    peers: Vec<Peer>,
}

impl Lab<'_> {
    async fn steps(&mut self, quick: bool) -> Result<()> {
        let connection = self.exercise().await?;
        self.time_wait_timed(&connection, quick).await?;
        self.why(&connection)?;
        self.pile_up().await?;
        self.leak().await
    }

    /// Prints lab text after whatever the trace has written so far.
    fn say(&mut self, words: impl std::fmt::Display) -> Result<()> {
        self.session.pipeline().flush()?;
        // Through `?`, not println!: a reader that went away (`lab | head`) ends the lab.
        writeln!(std::io::stdout(), "{words}")?;
        Ok(())
    }

    /// Runs the trace until `done` holds (checked between steps of at most 10 ms).
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&mut Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !done(self)? {
            if Instant::now() > deadline {
                bail!("the lab waited {} s for {what}, in vain", within.as_secs());
            }
            if self.session.step().await? == Step::Stopped {
                bail!("stopped (Ctrl-C); the lab's namespace and processes are gone with it");
            }
        }
        Ok(())
    }

    /// Starts a process in the namespace; its output comes to [`Peer::lines`].
    fn start(&mut self, command: &mut std::process::Command, what: &str) -> Result<usize> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("the peer's output")?;
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        self.peers.push(Peer { child, lines, reader: Some(reader) });
        Ok(self.peers.len() - 1)
    }

    /// The lab's own peer (`tcptrace lab-peer`), in the namespace.
    fn start_peer(&mut self, role: PeerRole, port: u16, extra: &[String]) -> Result<usize> {
        let exe = std::env::current_exe().context("finding tcptrace's own executable")?;
        let mut command = self.namespace.command(exe);
        let role_name = clap::ValueEnum::to_possible_value(&role).map(|v| v.get_name().to_owned());
        command.arg("lab-peer").arg(role_name.unwrap_or_default()).arg("--port");
        command.arg(port.to_string()).args(extra);
        self.start(&mut command, role.comm())
    }

    fn table(&self, port: u16) -> Result<Vec<TableRow>> {
        self.namespace.run(|| socket_table(port))
    }

    async fn until_listening(&mut self, port: u16) -> Result<()> {
        self.until(PATIENCE, &format!("a server to listen on port {port}"), |lab| {
            Ok(lab.table(port)?.iter().any(|row| row.state == TcpState::Listen))
        })
        .await
    }

    /// Step 1: the exercise, traced; the socket table; the connection's story.
    async fn exercise(&mut self) -> Result<Connection> {
        let (python, curl) = (find_program("python3"), find_program("curl"));
        let lang = self.lang;
        self.say(text::step_one(lang, self.namespace.inode(), python.is_some() && curl.is_some()))?;
        self.session.pipeline().start()?;
        match &python {
            Some(python) => {
                let mut command = self.namespace.command(python);
                command.args(["-m", "http.server", "8080", "--bind", "127.0.0.1"]).current_dir("/");
                self.start(&mut command, "python3 -m http.server")?;
            }
            None => {
                self.start_peer(PeerRole::HttpServer, HTTP_PORT, &[])?;
            }
        }
        self.until_listening(HTTP_PORT).await?;
        let client = match (&python, &curl) {
            (Some(_), Some(curl)) => {
                let mut command = self.namespace.command(curl);
                command.args(["-s", "-o", "/dev/null", "http://127.0.0.1:8080/"]);
                self.start(&mut command, "curl")?
            }
            _ => self.start_peer(PeerRole::HttpClient, HTTP_PORT, &[])?,
        };
        self.until(PATIENCE, "the client to finish", |lab| lab.peers[client].exited()).await?;
        // Both sides closed: each has reached CLOSED in the trace.
        let mut found = None;
        self.until(PATIENCE, "both sides of the connection to close", |lab| {
            found = lab.session.pipeline().engine().open_connections().into_iter().find(|c| {
                c.endpoints.len() == 2
                    && c.endpoints.iter().all(|e| e.is_closed())
                    && c.endpoints.iter().any(|e| e.local.port() == HTTP_PORT)
            });
            Ok(found.is_some())
        })
        .await?;
        let connection = found.context("the exercise's connection")?;
        let table = self.table(HTTP_PORT)?;
        self.say(text::socket_table(lang, HTTP_PORT, &table))?;
        self.say(text::story(lang, &connection))?;
        Ok(connection)
    }

    /// Step 2: the TIME-WAIT's countdown, as the kernel's timer has it, then its measured
    /// length; with `--quick`, the time it had left.
    async fn time_wait_timed(&mut self, connection: &Connection, quick: bool) -> Result<()> {
        let lang = self.lang;
        self.say(text::step_two(lang))?;
        let time_waits: Vec<TableRow> = self
            .table(HTTP_PORT)?
            .into_iter()
            .filter(|row| row.state == TcpState::TimeWait)
            .collect();
        if quick {
            return self.say(text::quick_time_left(lang, &time_waits));
        }
        let mut next_report = Instant::now();
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let id = connection.id;
        let finished =
            |lab: &mut Self| lab.session.pipeline().finished().iter().any(|c| c.id == id);
        self.until(TIME_WAIT_PATIENCE, "the TIME-WAIT to end", |lab| {
            if finished(lab) {
                return Ok(true);
            }
            if Instant::now() >= next_report {
                let rows = lab.table(HTTP_PORT)?;
                let left = rows.iter().filter_map(|row| row.time_wait_left_ns).max();
                if let Some(left) = left {
                    lab.session.pipeline().flush()?;
                    let line = text::countdown(lang, left);
                    if interactive {
                        write!(std::io::stdout(), "\r{line}   ")?;
                        std::io::stdout().flush()?;
                        next_report = Instant::now() + Duration::from_secs(1);
                    } else {
                        writeln!(std::io::stdout(), "{line}")?;
                        next_report = Instant::now() + Duration::from_secs(10);
                    }
                }
            }
            Ok(false)
        })
        .await?;
        if interactive {
            writeln!(std::io::stdout())?;
        }
        let ended = self.session.pipeline().finished().iter().find(|c| c.id == id).cloned();
        let ended = ended.context("the exercise's connection record")?;
        self.say(text::measured(lang, &ended))
    }

    /// Step 3: why TIME-WAIT exists and why it can't be removed, on what was just seen.
    fn why(&mut self, connection: &Connection) -> Result<()> {
        let words = text::why(self.lang, connection);
        self.say(words)
    }

    /// Step 4: a handful of ephemeral ports filled with TIME-WAITs until connect() fails,
    /// then `tcp_tw_reuse` lets new connections take them over.
    async fn pile_up(&mut self) -> Result<()> {
        let lang = self.lang;
        // The per-connection lines would be a hundred; the lab says what they came to.
        self.session.pipeline().show(false, false);
        let range = format!("{} {}", PORT_RANGE.0, PORT_RANGE.1);
        let reuse_default = self.namespace.sysctl("net.ipv4.tcp_tw_reuse")?;
        let range_default = self.namespace.sysctl("net.ipv4.ip_local_port_range")?;
        self.namespace.set_sysctl("net.ipv4.ip_local_port_range", &range)?;
        self.namespace.set_sysctl("net.ipv4.tcp_tw_reuse", "0")?;
        let host_range = ephemeral_port_range();
        self.say(text::step_four(lang, PORT_RANGE, host_range, &reuse_default))?;
        let server = self.start_peer(PeerRole::DrainServer, DRAIN_PORT, &[])?;
        self.until_listening(DRAIN_PORT).await?;
        let count = u32::from(PORT_RANGE.1 - PORT_RANGE.0) + 1 + 4;
        let (connected, failure) = self.close_first_clients(count).await?;
        let failure = failure.context("connect() never failed, although the range was full")?;
        let time_waits = self.client_time_waits()?;
        let fds = self.fds(&[server], DRAIN_PORT)?;
        self.say(text::ports_exhausted(lang, &connected, failure, &time_waits, &fds))?;
        // A time-wait may be reused once it is older than tcp_tw_reuse_delay (1 s).
        let delay = self.namespace.sysctl("net.ipv4.tcp_tw_reuse_delay").ok();
        let delay_ms: u64 = delay.and_then(|d| d.parse().ok()).unwrap_or(1000);
        let wait_until = Instant::now() + Duration::from_millis(delay_ms + 200);
        self.until(PATIENCE, "the TIME-WAITs to be old enough to reuse", |_| {
            Ok(Instant::now() >= wait_until)
        })
        .await?;
        self.namespace.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        let killed_before = self.killed_time_waits();
        let reused = connected.len() as u32;
        let (again, failed_again) = self.close_first_clients(reused).await?;
        let want = killed_before + again.len();
        let _ = self
            .until(Duration::from_secs(3), "the reused TIME-WAITs to end", |lab| {
                Ok(lab.killed_time_waits() >= want)
            })
            .await;
        let killed = self.killed_time_waits() - killed_before;
        self.say(text::reused(lang, delay_ms, &again, failed_again, killed))?;
        // The next clients need ports again.
        self.namespace.set_sysctl("net.ipv4.ip_local_port_range", &range_default)
    }

    /// Step 4, continued: a server that never closes, against its descriptor limit.
    async fn leak(&mut self) -> Result<()> {
        let lang = self.lang;
        self.session.pipeline().show(false, false);
        self.say(text::step_leak(lang, LEAK_MAX_FDS))?;
        let extra = ["--max-fds".to_owned(), LEAK_MAX_FDS.to_string()];
        let server = self.start_peer(PeerRole::LeakyServer, LEAK_PORT, &extra)?;
        self.until_listening(LEAK_PORT).await?;
        let extra = ["--count".to_owned(), LEAK_CONNECTIONS.to_string()];
        let client = self.start_peer(PeerRole::CloseFirstClient, LEAK_PORT, &extra)?;
        self.until(PATIENCE, "the client to finish", |lab| lab.peers[client].exited()).await?;
        let mut accept_failed = None;
        let mut accepted = 0;
        self.until(PATIENCE, "the server to hit its descriptor limit", |lab| {
            for line in lab.peers[server].lines() {
                if let Some(count) = line.strip_prefix("accepted ") {
                    accepted = count.parse().unwrap_or(accepted);
                } else if let Some(error) = line.strip_prefix("accept-failed ") {
                    accept_failed = errno_of(error);
                }
            }
            Ok(accept_failed.is_some())
        })
        .await?;
        // tcptrace's own report of them comes once they are older than --stuck-after.
        let reported_at = Instant::now() + LAB_STUCK_AFTER + Duration::from_millis(1500);
        self.until(PATIENCE, "tcptrace's report of the stuck sockets", |_| {
            Ok(Instant::now() >= reported_at)
        })
        .await?;
        let fds = self.fds(&[server], LEAK_PORT)?;
        let close_waits = self
            .table(LEAK_PORT)?
            .iter()
            .filter(|row| row.state == TcpState::CloseWait && row.local.port() == LEAK_PORT)
            .count();
        let owner = (PeerRole::LeakyServer.comm(), self.peers[server].pid());
        self.say(text::leaked(
            lang,
            owner,
            LEAK_MAX_FDS,
            accepted,
            accept_failed,
            close_waits,
            &fds,
        ))
    }

    /// Runs the close-first client for `count` connections to the drain server: the local
    /// ports it got, and the error that stopped it.
    async fn close_first_clients(&mut self, count: u32) -> Result<(Vec<u16>, Option<Errno>)> {
        let extra = ["--count".to_owned(), count.to_string()];
        let client = self.start_peer(PeerRole::CloseFirstClient, DRAIN_PORT, &extra)?;
        self.until(PATIENCE, "the client to finish", |lab| lab.peers[client].exited()).await?;
        let (mut ports, mut failure) = (Vec::new(), None);
        for line in self.peers[client].last_lines() {
            if let Some(port) = line.strip_prefix("connected ") {
                ports.extend(port.parse::<u16>());
            } else if let Some(error) = line.strip_prefix("failed ") {
                failure = errno_of(error);
            }
        }
        // Every close on both sides traced before the lab looks at the table.
        let settled = Instant::now() + Duration::from_millis(100);
        self.until(PATIENCE, "the connections to close", |_| Ok(Instant::now() >= settled)).await?;
        Ok((ports, failure))
    }

    /// The client-side TIME-WAITs toward the drain server, from the kernel.
    fn client_time_waits(&self) -> Result<Vec<TableRow>> {
        let rows = self.table(DRAIN_PORT)?;
        Ok(rows
            .into_iter()
            .filter(|row| row.state == TcpState::TimeWait && row.remote.port() == DRAIN_PORT)
            .collect())
    }

    /// Time-waits tcptrace saw killed so far, in finished connections.
    fn killed_time_waits(&mut self) -> usize {
        let finished = self.session.pipeline().finished();
        finished
            .iter()
            .flat_map(|c| &c.endpoints)
            .filter_map(|e| e.time_wait.as_ref())
            .filter(|tw| tw.end == TimeWaitEnd::Killed && tw.kind == TimeWaitKind::TimeWait)
            .count()
    }

    /// The descriptors the lab's processes hold, and what the sockets on `port` are.
    fn fds(&self, peers: &[usize], port: u16) -> Result<Fds> {
        let table = self.table(port)?;
        let mut fds = Fds::default();
        for &peer in peers {
            let pid = self.peers[peer].pid();
            let dir = format!("/proc/{pid}/fd");
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
                fds.total += 1;
                let target = std::fs::read_link(entry?.path()).unwrap_or_default();
                let Some(inode) = socket_inode(&target) else { continue };
                fds.sockets += 1;
                match table.iter().find(|row| row.inode == inode).map(|row| row.state) {
                    Some(TcpState::Listen) => fds.listeners += 1,
                    Some(TcpState::CloseWait) => fds.close_wait += 1,
                    _ => {}
                }
            }
        }
        fds.time_waits = table.iter().filter(|row| row.state == TcpState::TimeWait).count();
        fds.time_waits_with_inode =
            table.iter().filter(|row| row.state == TcpState::TimeWait && row.inode != 0).count();
        Ok(fds)
    }
}

/// The errno of a peer's `failed ERRNO message` line.
fn errno_of(line: &str) -> Option<Errno> {
    line.split_whitespace().next()?.parse().ok().map(Errno)
}

/// `socket:[INODE]`, as a descriptor under /proc/PID/fd links to a socket.
fn socket_inode(target: &Path) -> Option<u32> {
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// An executable named `name` on PATH.
fn find_program(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
