//! Live tracing: attach, stream events through the lifecycle engine until Ctrl-C, SIGTERM
//! or `--duration`, detach, and print the summary. The loop is a [`Session`], which
//! `tcptrace lab` and `tcptrace top` drive too, a step at a time.

use std::{
    fs::File,
    future::pending,
    io::{self, BufWriter, Write},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tcptrace_common::RING_RECORD_BYTES;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};

use crate::{
    cli::{FilterArgs, OutputArgs, TraceArgs},
    clock::{WallClock, monotonic_now_ns},
    engine::EngineOptions,
    event::{Home, TcpState, decode},
    kernel::{
        host::HomeResolver,
        loader::{TraceOptions, Tracer},
        rings::Rings,
        snapshot::{self, Snapshot},
    },
    metrics_server,
    names::{Cgroup, Learned},
    pipeline::{Pipeline, PipelineOptions},
    recording::{FORMAT_VERSION, Recorder, RecordingHeader},
    render::metrics::Metrics,
    sink::{self, Named},
    yielding::{self, Yielding},
};

/// A time-wait timer runs up to the timer wheel's 2.05 s after it is due; a second more.
const TIMER_SLACK_NS: u64 = 3_050_000_000;

/// The kernel wakes the reader only when the ring fills up; this tick picks up the rest.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The ring buffer's side of the pipeline: decoding, naming namespaces and cgroups,
/// recording, and lost-event checks.
struct Live<W: Write> {
    pipeline: Pipeline<W>,
    recorder: Option<Recorder<BufWriter<Named<File>>>>,
    resolver: HomeResolver,
    /// Numbers looked up already (most events repeat the last one's).
    known_netns: std::collections::HashSet<u32>,
    known_cgroups: std::collections::HashSet<u64>,
    last_netns: Option<u32>,
    /// With `--metrics`: the tracer's own health, measured here.
    health: Option<Health>,
    /// Yielding to the traced programs: live tracing's and `top`'s (not the lab's, whose
    /// traced programs are its own).
    yielding: Option<Yielding>,
}

/// What `--metrics` says about the tracer itself: events read per second, and how full
/// the fullest ring buffer was at its fullest read, over each second.
pub struct Health {
    metrics: Arc<Metrics>,
    since_ns: u64,
    events_then: u64,
    fullest_read_bytes: u64,
}

impl Health {
    fn read(&mut self, bytes: u64) {
        self.fullest_read_bytes = self.fullest_read_bytes.max(bytes);
    }

    /// Each second: the rate, and the fill of the fullest ring (each of `ring_size` bytes).
    fn tick(&mut self, now_ns: u64, ring_size: u64) {
        let elapsed_ns = now_ns.saturating_sub(self.since_ns);
        if elapsed_ns < 1_000_000_000 {
            return;
        }
        let events = self.metrics.events_so_far();
        let per_second = (events - self.events_then.min(events)) as f64 * 1e9 / elapsed_ns as f64;
        let fill = (self.fullest_read_bytes as f64 / ring_size as f64).min(1.0);
        self.metrics.health(per_second, fill);
        (self.since_ns, self.events_then, self.fullest_read_bytes) = (now_ns, events, 0);
    }
}

impl<W: Write> Live<W> {
    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match decode(bytes) {
            Ok(event) => {
                self.learn_home(event.home)?;
                if let Some(recorder) = &mut self.recorder {
                    recorder.event(&event)?;
                }
                self.pipeline.push(event);
                Ok(())
            }
            Err(error) => {
                self.pipeline.skipped_undecodable();
                crate::debug(format_args!("skipping a record: {error}"));
                Ok(())
            }
        }
    }

    /// Names a namespace or cgroup the first time an event carries it: for the outputs,
    /// and in the recording before the event.
    fn learn_home(&mut self, home: Home) -> io::Result<()> {
        let mut learned = Vec::new();
        if let Some(netns) = home.netns
            && self.last_netns != Some(netns)
        {
            self.last_netns = Some(netns);
            if self.known_netns.insert(netns)
                && let Some(name) = self.resolver.netns_name(netns)
            {
                learned.push(Learned::NetnsName { inode: netns, name });
            }
        }
        if let Some(id) = home.cgroup
            && self.known_cgroups.insert(id)
        {
            let cgroup: Option<Cgroup> = self.resolver.cgroup(id);
            learned.push(Learned::Cgroup { id, cgroup });
        }
        for learned in learned {
            if let Some(recorder) = &mut self.recorder {
                recorder.name(&learned)?;
            }
            self.pipeline.learn(learned);
        }
        Ok(())
    }

    /// Takes everything waiting in the ring buffers and writes what it makes certain.
    fn drain(&mut self, rings: &mut Rings) -> io::Result<()> {
        // Before reading: an event written to a ring read already, while a later one is,
        // has a later time than this, so it is not yet due when it comes next time.
        let now_ns = monotonic_now_ns();
        let mut result = Ok(());
        let most_from_one_ring = rings.drain(|bytes| {
            if result.is_ok() {
                result = self.record(bytes);
            }
        });
        result?;
        let fullest_bytes = most_from_one_ring as u64 * u64::from(RING_RECORD_BYTES);
        if let Some(health) = &mut self.health {
            health.read(fullest_bytes);
        }
        if let Some(yielding) = &mut self.yielding {
            yielding.drained(fullest_bytes, now_ns);
        }
        self.pipeline.advance(now_ns)?;
        self.flush()
    }

    /// Output and recording reach their files with every batch: a stop loses nothing shown.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(recorder) = &mut self.recorder {
            recorder.flush()?;
        }
        self.pipeline.flush()
    }

    /// Seeds what the start-up snapshot found: each socket named (for the outputs) and
    /// recorded between the snapshot's `began` and `done` lines.
    fn seed(&mut self, snapshot: Snapshot) -> io::Result<()> {
        for missing in &snapshot.missing {
            eprintln!("tcptrace: warning: the start-up snapshot missed {missing}; tracing goes on");
        }
        for socket in &snapshot.sockets {
            self.learn_home(socket.home)?;
            if let Some(recorder) = &mut self.recorder {
                recorder.seen(socket)?;
            }
        }
        if let Some(recorder) = &mut self.recorder {
            recorder.snapshot(snapshot.done_ns, Some(snapshot.sockets.len() as u64))?;
        }
        eprintln!("tcptrace: {}", describe_snapshot(&snapshot));
        self.pipeline.seen(snapshot.sockets);
        self.pipeline.snapshot_done(snapshot.done_ns);
        self.flush()
    }

    /// Reports events the kernel dropped since the last check.
    fn report_lost(&mut self, tracer: &Tracer) -> Result<()> {
        let lost = tracer.lost_events()?;
        // Taken after the count: every loss counted happened before this time, and so did
        // every event that may have lost company, drained already or still in the ring.
        let noticed_ns = monotonic_now_ns();
        if lost > self.pipeline.lost_so_far() {
            let new = lost - self.pipeline.lost_so_far();
            if let Some(recorder) = &mut self.recorder {
                recorder.lost(noticed_ns, new)?;
            }
            self.pipeline.lost(new, noticed_ns)?;
            self.flush()?;
        }
        Ok(())
    }
}

/// `at start: 1234 sockets in 2 network namespaces (900 ESTABLISHED, …), in 12 ms`.
fn describe_snapshot(snapshot: &Snapshot) -> String {
    let mut by_state: Vec<(TcpState, usize)> = Vec::new();
    for socket in &snapshot.sockets {
        match by_state.iter_mut().find(|(known, _)| *known == socket.state) {
            Some((_, count)) => *count += 1,
            None => by_state.push((socket.state, 1)),
        }
    }
    by_state.sort_by_key(|&(state, count)| (std::cmp::Reverse(count), state));
    let states: Vec<String> =
        by_state.iter().map(|(state, count)| format!("{count} {state}")).collect();
    let states =
        if states.is_empty() { String::new() } else { format!(" ({})", states.join(", ")) };
    let namespaces = match snapshot.namespaces {
        1 => String::new(),
        n => format!(" in {n} network namespaces"),
    };
    let took_ms = snapshot.done_ns.saturating_sub(snapshot.began_ns) as f64 / 1e6;
    format!(
        "at start: {} sockets{namespaces}{states}, found in {took_ms:.0} ms; each is followed to its end",
        snapshot.sockets.len()
    )
}

/// `net.ipv4.ip_local_port_range`, or Linux's default when it can't be read.
pub fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .unwrap_or(EngineOptions::default().ephemeral_ports)
}

pub async fn run(trace: &TraceArgs, output: &OutputArgs) -> Result<()> {
    yielding::run_as_batch_job();
    // Bound before attaching: a port in use fails before any tracing.
    let metrics_listener = trace.metrics.map(metrics_server::bind).transpose()?;
    let ephemeral_ports = ephemeral_port_range();
    let clock = WallClock::now();
    // Create the recording before attaching, so a bad path fails before any tracing.
    let recorder = recorder(trace, &clock, ephemeral_ports)?;
    let engine = EngineOptions {
        ephemeral_ports,
        report_closes: metrics_listener.is_some(),
        ..EngineOptions::default()
    };
    let metrics = metrics_listener.map(|listener| {
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(metrics_server::serve(listener, metrics.clone()));
        metrics
    });
    let pipeline_options = PipelineOptions {
        watcher: metrics.clone().map(|m| m as _),
        ..output.pipeline_options(engine)
    };
    let health = metrics.map(|metrics| Health {
        metrics,
        since_ns: monotonic_now_ns(),
        events_then: 0,
        fullest_read_bytes: 0,
    });
    let pipeline = Pipeline::new(sink::stdout(), clock, pipeline_options);
    let mut session = Session::attach(trace, pipeline, recorder, health)?;
    session.yield_to_traced()?;
    eprintln!("tcptrace: tracing TCP state transitions{}; Ctrl-C to stop", describe(&trace.filter));
    let streamed = session.run_to_end().await;
    session.end(streamed)
}

/// The recording `--record` asks for, its header written.
pub fn recorder(
    trace: &TraceArgs,
    clock: &WallClock,
    ephemeral_ports: (u16, u16),
) -> Result<Option<Recorder<BufWriter<Named<File>>>>> {
    let Some(path) = &trace.run.record else { return Ok(None) };
    let file = File::create(path)
        .with_context(|| format!("cannot create the recording {}", path.display()))?;
    let header = RecordingHeader {
        version: FORMAT_VERSION,
        ephemeral_ports,
        realtime_offset_ns: clock.realtime_offset_ns(),
    };
    let file = Named::new(file, format!("the recording {}", path.display()));
    Ok(Some(Recorder::new(BufWriter::with_capacity(1 << 16, file), &header)?))
}

/// Whether a [`Session`] goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Going,
    /// Ctrl-C, SIGTERM or `--duration`.
    Stopped,
}

/// A live trace: the attached tracer, its ring buffer and the pipeline it feeds. Live
/// tracing, `tcptrace lab` and `tcptrace top` all drive one, a [`Session::step`] at a time.
pub struct Session<W: Write> {
    tracer: Tracer,
    ring: AsyncFd<Rings>,
    live: Live<W>,
    /// The start-up snapshot while it is taken.
    snapshot: Option<tokio::task::JoinHandle<Snapshot>>,
    tick: tokio::time::Interval,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    deadline: Option<tokio::time::Instant>,
}

impl<W: Write> Session<W> {
    /// Attaches the kernel programs with `trace`'s filters and starts the start-up snapshot
    /// (unless `--no-snapshot`). Needs a tokio runtime with time and signals.
    pub fn attach(
        trace: &TraceArgs,
        pipeline: Pipeline<W>,
        recorder: Option<Recorder<BufWriter<Named<File>>>>,
        health: Option<Health>,
    ) -> Result<Session<W>> {
        let options = TraceOptions {
            filters: trace.filter.filters()?,
            ring_size: trace.run.ring_size,
            earlier_time_waits: !trace.run.no_snapshot,
        };
        let (tracer, rings) = Tracer::attach(&options)?;
        for degraded in &tracer.degraded {
            eprintln!("tcptrace: warning: {} is off: {}", degraded.what, degraded.why);
        }
        let mut live = Live {
            pipeline,
            recorder,
            resolver: HomeResolver::new(),
            known_netns: Default::default(),
            known_cgroups: Default::default(),
            last_netns: None,
            health,
            yielding: None,
        };
        // Attached already: every socket the snapshot misses, an event shows.
        let snapshot = (!trace.run.no_snapshot).then(|| {
            let began_ns = monotonic_now_ns();
            live.pipeline.snapshot_began(began_ns);
            let filters = options.filters.clone();
            (
                began_ns,
                tokio::task::spawn_blocking(move || snapshot::take(&filters, &HomeResolver::new())),
            )
        });
        if let (Some((began_ns, _)), Some(recorder)) = (&snapshot, &mut live.recorder) {
            recorder.snapshot(*began_ns, None)?;
        }
        // SAFETY: the rings own their epoll fd and keep it open, unchanged, until dropped.
        let ring = unsafe { AsyncFd::register_with_interest(rings, Interest::READABLE) }
            .map_err(|error| error.into_parts().1)
            .context("watching the ring buffers")?;
        let mut tick = interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Ok(Session {
            tracer,
            ring,
            live,
            snapshot: snapshot.map(|(_, task)| task),
            tick,
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            deadline: trace.run.duration.map(|duration| tokio::time::Instant::now() + duration),
        })
    }

    pub fn pipeline(&mut self) -> &mut Pipeline<W> {
        &mut self.live.pipeline
    }

    /// From now on the calling thread, which drains the rings, runs in the time the traced
    /// programs leave idle, for as long as it keeps up with them (see [`Yielding`]).
    pub fn yield_to_traced(&mut self) -> Result<()> {
        let ring_size = u64::from(self.ring.get_ref().layout().bytes_each);
        let yielding = Yielding::start(ring_size).context("starting the watchdog")?;
        self.live.yielding = Some(yielding);
        Ok(())
    }

    /// The column header, then every step until stopped.
    pub async fn run_to_end(&mut self) -> Result<()> {
        self.live.pipeline.start()?;
        while self.step().await? == Step::Going {}
        Ok(())
    }

    /// Waits for the next thing to do (events in the ring, the snapshot, the 10 ms tick, a
    /// signal, the deadline) and does it: at most [`POLL_INTERVAL`] passes.
    pub async fn step(&mut self) -> Result<Step> {
        let Session { tracer, ring, live, snapshot, tick, interrupt, terminate, deadline } = self;
        let taking = snapshot.is_some();
        let until = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(*deadline).await,
                None => pending().await,
            }
        };
        let snapshot_done = async {
            match snapshot.as_mut() {
                Some(task) => task.await,
                None => pending().await,
            }
        };
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                live.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            taken = snapshot_done, if taking => {
                *snapshot = None;
                let taken = taken.context("the start-up snapshot failed")?;
                // The kernel program stops looking for time-wait sockets from before start
                // once the last the snapshot saw has ended.
                let longest_left = taken.sockets.iter().filter_map(|s| s.time_wait_left_ns).max();
                tracer.meet_time_waits_until(taken.done_ns + longest_left.unwrap_or(0) + TIMER_SLACK_NS)?;
                live.drain(ring.get_mut())?;
                live.seed(taken)?;
            }
            _ = tick.tick() => {
                live.drain(ring.get_mut())?;
                live.report_lost(tracer)?;
                let now_ns = monotonic_now_ns();
                tracer.tick(now_ns)?;
                if let Some(health) = &mut live.health {
                    health.tick(now_ns, u64::from(ring.get_ref().layout().bytes_each));
                }
                tracer.flush_kernel_log();
            }
            _ = interrupt.recv() => return Ok(Step::Stopped),
            _ = terminate.recv() => return Ok(Step::Stopped),
            _ = until => return Ok(Step::Stopped),
        }
        Ok(Step::Going)
    }

    /// Detaches and ends the trace after `streamed`, what the steps came to: whatever the
    /// kernel queued is still shown, then the summary and the exports. When the output's
    /// reader went away, the recording still gets its losses and its end.
    pub fn end(mut self, streamed: Result<()>) -> Result<()> {
        // Not yielding any more: what is left comes at once.
        self.live.yielding = None;
        let streamed = streamed.and_then(|()| Ok(self.live.drain(self.ring.get_mut())?));
        let Session { tracer, mut live, .. } = self;
        match streamed {
            Err(error) if sink::is_closed_pipe(&error) => {
                let lost = tracer.lost_events()?.saturating_sub(live.pipeline.lost_so_far());
                drop(tracer);
                if let Some(recorder) = &mut live.recorder {
                    let end_ns = monotonic_now_ns();
                    if lost > 0 {
                        recorder.lost(end_ns, lost)?;
                    }
                    recorder.end(end_ns)?;
                }
                return Err(error);
            }
            other => other?,
        }
        let mut tracer = tracer;
        live.report_lost(&tracer)?;
        tracer.flush_kernel_log();
        live.pipeline.kernel_counts(tracer.untracked_time_waits()?, tracer.program_stats());
        drop(tracer); // detaches every program
        let end_ns = monotonic_now_ns();
        if let Some(recorder) = &mut live.recorder {
            recorder.end(end_ns)?;
        }
        live.pipeline.finish(end_ns)
    }
}

/// ` (port 8080, IPv4)`: what is traced, for the first line and top's title.
pub fn describe(trace: &FilterArgs) -> String {
    let mut parts = Vec::new();
    if !trace.ports.is_empty() {
        let ports: Vec<String> = trace.ports.iter().map(u16::to_string).collect();
        parts.push(format!("port {}", ports.join(", ")));
    }
    if let Some(pid) = trace.pid {
        parts.push(format!("pid {pid}"));
    }
    for netns in &trace.netns {
        parts.push(format!("netns {netns}"));
    }
    if let Some(cgroup) = &trace.cgroup {
        parts.push(format!("cgroup {}", cgroup.display()));
    }
    if trace.ipv4 {
        parts.push("IPv4".into());
    }
    if trace.ipv6 {
        parts.push("IPv6".into());
    }
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}
