//! Live tracing: attach, stream events through the lifecycle engine until Ctrl-C, SIGTERM
//! or `--duration`, detach, and print the summary.

use std::{
    future::pending,
    io::{self, BufWriter, Write},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    cli::Cli,
    event::decode,
    lifecycle::{Engine, EngineOptions, Output},
    loader::{TraceOptions, Tracer, drain, is_own_event},
    output::{Stream, StreamFormat, WallClock},
    report::TraceCounts,
};

/// The kernel wakes the reader only when the ring fills up; this tick picks up the rest.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Everything between the ring buffer and stdout.
pub struct Pipeline<W: Write> {
    pub stream: Stream<W>,
    pub engine: Engine,
    pub counts: TraceCounts,
    /// Print each transition as it happens, not only the connection records.
    pub show_events: bool,
}

impl<W: Write> Pipeline<W> {
    pub fn new(stream: Stream<W>, engine: Engine, show_events: bool) -> Pipeline<W> {
        Pipeline { stream, engine, counts: TraceCounts::default(), show_events }
    }

    fn record(&mut self, bytes: &[u8]) {
        match decode(bytes) {
            Ok(event) if is_own_event(&event) => {}
            Ok(event) => {
                self.counts.events += 1;
                self.engine.push(event);
            }
            Err(error) => {
                self.counts.undecodable += 1;
                crate::debug(format_args!("skipping a record: {error}"));
            }
        }
    }

    /// Hands the engine's output for time `now_ns` to the stream; `finish` ends the trace.
    pub fn advance(&mut self, now_ns: u64, finish: bool) -> io::Result<()> {
        let Pipeline { stream, engine, show_events, .. } = self;
        let mut result = Ok(());
        let mut write = |output: Output<'_>| {
            if result.is_err() {
                return;
            }
            result = match output {
                Output::Event(event, attribution) if *show_events => {
                    stream.event(event, &attribution)
                }
                Output::Event(..) => Ok(()),
                Output::Connection(connection) => stream.connection(connection),
            };
        };
        if finish {
            engine.finish(now_ns, &mut write);
        } else {
            engine.advance(now_ns, &mut write);
        }
        result?;
        self.stream.flush()
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        drain(ring, |bytes| self.record(bytes));
        self.advance(monotonic_now_ns(), false)
    }

    /// Reports events the kernel dropped since the last check.
    fn report_lost(&mut self, tracer: &Tracer) -> Result<()> {
        let lost = tracer.lost_events()?;
        if lost > self.counts.lost {
            let new = lost - self.counts.lost;
            self.counts.lost = lost;
            self.engine.lost(new);
            self.stream.lost(new)?;
            self.stream.flush()?;
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
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

pub async fn run(cli: &Cli) -> Result<()> {
    let options = TraceOptions { filters: cli.filters(), ring_size: cli.ring_size };
    let (tracer, ring) = Tracer::attach(&options)?;
    for degraded in &tracer.degraded {
        eprintln!("tcptrace: warning: {} is off: {}", degraded.what, degraded.why);
    }
    let format = if cli.json { StreamFormat::Json } else { StreamFormat::Text };
    let stdout = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let engine_options = EngineOptions {
        max_connections: cli.max_connections,
        ephemeral_ports: ephemeral_port_range(),
    };
    let mut pipeline = Pipeline::new(
        Stream::new(stdout, format, WallClock::now()),
        Engine::new(engine_options),
        !cli.connections_only,
    );
    if pipeline.show_events {
        pipeline.stream.header()?;
    }
    pipeline.stream.flush()?;
    eprintln!("tcptrace: tracing TCP state transitions{}; Ctrl-C to stop", describe(cli));

    let result = stream_until_stopped(cli, &tracer, ring, &mut pipeline).await;
    match result {
        Err(error) if is_broken_pipe(&error) => return Ok(()),
        other => other?,
    }
    pipeline.report_lost(&tracer)?;
    pipeline.counts.untracked_time_waits = tracer.untracked_time_waits()?;
    drop(tracer); // detaches every program
    pipeline.advance(monotonic_now_ns(), true)?;
    let ephemeral_ports = pipeline.engine.options().ephemeral_ports;
    pipeline.stream.summary(pipeline.engine.stats(), &pipeline.counts, ephemeral_ports)?;
    pipeline.stream.flush()?;
    Ok(())
}

async fn stream_until_stopped(
    cli: &Cli,
    tracer: &Tracer,
    ring: RingBuf<MapData>,
    pipeline: &mut Pipeline<impl Write>,
) -> Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, until dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
        .context("watching the ring buffer")?;
    let mut tick = interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = async {
        match cli.duration {
            Some(duration) => sleep(duration).await,
            None => pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                pipeline.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                pipeline.drain(ring.get_mut())?;
                pipeline.report_lost(tracer)?;
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline => break,
        }
    }
    // Whatever the kernel queued before we stopped is still shown.
    pipeline.drain(ring.get_mut())?;
    Ok(())
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn describe(cli: &Cli) -> String {
    let mut parts = Vec::new();
    if !cli.ports.is_empty() {
        let ports: Vec<String> = cli.ports.iter().map(u16::to_string).collect();
        parts.push(format!("port {}", ports.join(", ")));
    }
    if let Some(pid) = cli.pid {
        parts.push(format!("pid {pid}"));
    }
    if cli.ipv4 {
        parts.push("IPv4".into());
    }
    if cli.ipv6 {
        parts.push("IPv6".into());
    }
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}
