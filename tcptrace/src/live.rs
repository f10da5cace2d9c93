//! Live tracing: attach, stream events until Ctrl-C, SIGTERM or `--duration`, detach.

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
    loader::{TraceOptions, Tracer, drain, is_own_event},
    output::{Stream, StreamFormat, WallClock},
    sockets::SocketTable,
};

/// The kernel wakes the reader only when the ring fills up; this tick picks up the rest.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Sockets remembered for owner attribution before the oldest are evicted.
const SOCKET_TABLE_CAPACITY: usize = 1 << 20;

/// Everything between the ring buffer and stdout.
struct Pipeline<W: Write> {
    stream: Stream<W>,
    sockets: SocketTable,
    events: u64,
    undecodable: u64,
    lost: u64,
}

impl<W: Write> Pipeline<W> {
    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        match decode(bytes) {
            Ok(event) if is_own_event(&event) => Ok(()),
            Ok(event) => {
                self.events += 1;
                let attribution = self.sockets.observe(&event);
                self.stream.event(&event, &attribution)
            }
            Err(error) => {
                self.undecodable += 1;
                crate::debug(format_args!("skipping a record: {error}"));
                Ok(())
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        let mut result = Ok(());
        drain(ring, |bytes| {
            if result.is_ok() {
                result = self.record(bytes);
            }
        });
        result?;
        self.stream.flush()
    }

    /// Prints how many events the kernel dropped since the last check.
    fn report_lost(&mut self, tracer: &Tracer) -> Result<()> {
        let lost = tracer.lost_events()?;
        if lost > self.lost {
            self.stream.lost(lost - self.lost)?;
            self.lost = lost;
            self.stream.flush()?;
        }
        Ok(())
    }
}

pub async fn run(cli: &Cli) -> Result<()> {
    let options = TraceOptions { filters: cli.filters(), ring_size: cli.ring_size };
    let (tracer, ring) = Tracer::attach(&options)?;
    for degraded in &tracer.degraded {
        eprintln!("tcptrace: warning: {} is off: {}", degraded.what, degraded.why);
    }
    let format = if cli.json { StreamFormat::Json } else { StreamFormat::Text };
    let stdout = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut pipeline = Pipeline {
        stream: Stream::new(stdout, format, WallClock::now()),
        sockets: SocketTable::new(SOCKET_TABLE_CAPACITY),
        events: 0,
        undecodable: 0,
        lost: 0,
    };
    pipeline.stream.header()?;
    pipeline.stream.flush()?;
    eprintln!("tcptrace: tracing TCP state transitions{}; Ctrl-C to stop", describe(cli));

    let result = stream_until_stopped(cli, &tracer, ring, &mut pipeline).await;
    match result {
        Err(error) if is_broken_pipe(&error) => return Ok(()),
        other => other?,
    }
    pipeline.report_lost(&tracer)?;
    let untracked = tracer.untracked_time_waits()?;
    drop(tracer); // detaches every program
    if format == StreamFormat::Json {
        writeln!(
            pipeline.stream.get_mut(),
            r#"{{"type":"summary","events":{},"lost":{},"undecodable":{},"untracked_time_waits":{untracked}}}"#,
            pipeline.events,
            pipeline.lost,
            pipeline.undecodable
        )?;
    }
    pipeline.stream.flush()?;
    eprintln!(
        "tcptrace: {} events, {} lost{}",
        pipeline.events,
        pipeline.lost,
        if pipeline.undecodable > 0 {
            format!(", {} undecodable", pipeline.undecodable)
        } else {
            String::new()
        }
    );
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
