//! Decoded events → the lifecycle engine → the output stream, the summary and the exports.
//! Live tracing and replay both drive this.

use std::{io, io::Write, path::PathBuf, sync::Arc};

use anyhow::Result;

use crate::{
    clock::WallClock,
    engine::{Connection, Engine, EngineOptions, Output},
    event::{ProgramStats, SeenSocket, TcpEvent, TraceCounts},
    names::{Learned, Names},
    render::Watcher,
    render::explain::Lang,
    render::export::{self, ExportFormat, ExportInput},
    render::stream::{Stream, StreamFormat},
};

/// How often the watcher (the metrics' gauges) follows the engine's state.
const WATCHER_UPDATE_NS: u64 = 1_000_000_000;

/// How to show what was traced (from `--json`, `--connections-only`, `--explain`, `--lang`,
/// `--export`, `--max-connections`).
#[derive(Clone, Debug, Default)]
pub struct PipelineOptions {
    pub format: StreamFormat,
    /// Print each event, not only connection records.
    pub show_events: bool,
    /// Notes for learners, in this language.
    pub explain: Option<Lang>,
    /// The language of the exports' notes.
    pub lang: Lang,
    pub exports: Vec<(PathBuf, ExportFormat)>,
    pub engine: EngineOptions,
    /// Print nothing per event or connection (`--quiet`): the metrics, the recording or
    /// the exports carry what was traced; the summary still comes at exit.
    pub quiet: bool,
    /// What follows the engine's output beside the stream: the metrics (`--metrics`),
    /// `tcptrace top`'s tally.
    pub watcher: Option<Arc<dyn Watcher>>,
    /// Keep every finished connection ([`Pipeline::finished`]), as for the exports.
    pub keep_connections: bool,
}

pub struct Pipeline<W: Write> {
    stream: Stream<W>,
    engine: Engine,
    counts: TraceCounts,
    /// Print each event, not only connection records.
    show_events: bool,
    exports: Vec<(PathBuf, ExportFormat)>,
    /// Finished connections, kept for the exports (only when there are exports, or
    /// `keep_connections`).
    collected: Vec<Connection>,
    keep_connections: bool,
    /// Print connection records.
    show_connections: bool,
    /// Print the summary at the end.
    show_summary: bool,
    lang: Lang,
    latest_ns: u64,
    /// What the namespace and cgroup numbers in events stand for.
    names: Names,
    /// The namespace of the last event: most events are in the same one as the last.
    last_netns: Option<u32>,
    /// Whether the stream was told there is more than one namespace or container.
    said_many_homes: bool,
    quiet: bool,
    watcher: Option<Arc<dyn Watcher>>,
    /// When the watcher was last told the engine's state.
    watcher_updated_ns: u64,
}

impl<W: Write> Pipeline<W> {
    pub fn new(out: W, clock: WallClock, options: PipelineOptions) -> Pipeline<W> {
        Pipeline {
            stream: Stream::new(out, options.format, clock).with_explain(options.explain),
            engine: Engine::new(options.engine),
            counts: TraceCounts::default(),
            show_events: options.show_events,
            keep_connections: options.keep_connections || !options.exports.is_empty(),
            exports: options.exports,
            collected: Vec::new(),
            show_connections: true,
            show_summary: true,
            lang: options.lang,
            latest_ns: 0,
            names: Names::default(),
            last_netns: None,
            said_many_homes: false,
            quiet: options.quiet,
            watcher: options.watcher,
            watcher_updated_ns: 0,
        }
    }

    /// The column header of the text stream.
    pub fn start(&mut self) -> io::Result<()> {
        if self.show_events && !self.quiet {
            self.stream.header()?;
        }
        self.stream.flush()
    }

    pub fn push(&mut self, event: TcpEvent) {
        self.counts.events += 1;
        self.latest_ns = self.latest_ns.max(event.ts_ns);
        if event.home.netns.is_some() && event.home.netns != self.last_netns {
            self.last_netns = event.home.netns;
            self.names.saw_netns(event.home.netns.unwrap_or(0));
        }
        self.engine.push(event);
    }

    /// The engine, for views of what it follows now.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What the namespace and cgroup numbers in events stand for.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// What the trace counted so far (events, lost, undecodable).
    pub fn counts(&self) -> &TraceCounts {
        &self.counts
    }

    /// The connections finished so far, in the order they finished (with
    /// `keep_connections` or exports).
    pub fn finished(&self) -> &[Connection] {
        &self.collected
    }

    /// Whether events and connection records are printed from now on (`tcptrace lab`
    /// prints some steps its own way); warnings always are.
    pub fn show(&mut self, events: bool, connections: bool) {
        self.show_events = events;
        self.show_connections = connections;
    }

    /// No summary at the end, and no general TIME-WAIT notes with the records:
    /// `tcptrace lab` tells both its own way.
    pub fn for_the_lab(&mut self) {
        self.show_summary = false;
        self.stream.skip_time_wait_notes();
    }

    /// The start-up snapshot began at `ts_ns` (just after attaching).
    pub fn snapshot_began(&mut self, ts_ns: u64) {
        self.engine.snapshot_began(ts_ns);
    }

    /// Sockets the start-up snapshot found.
    pub fn seen(&mut self, sockets: Vec<SeenSocket>) {
        for netns in sockets.iter().filter_map(|socket| socket.home.netns) {
            if self.last_netns != Some(netns) {
                self.last_netns = Some(netns);
                self.names.saw_netns(netns);
            }
        }
        self.engine.seen(sockets);
    }

    /// The start-up snapshot was done at `ts_ns`.
    pub fn snapshot_done(&mut self, ts_ns: u64) {
        self.engine.snapshot_done(ts_ns);
    }

    /// What a namespace or cgroup number stands for (before the events that carry it).
    pub fn learn(&mut self, learned: Learned) {
        self.names.learn(learned);
    }

    /// A record that could not be decoded was skipped (counted in the summary).
    pub fn skipped_undecodable(&mut self) {
        self.counts.undecodable += 1;
    }

    /// Events lost so far.
    pub fn lost_so_far(&self) -> u64 {
        self.counts.lost
    }

    /// What the kernel side counted itself, for the summary (live only).
    pub fn kernel_counts(&mut self, untracked_time_waits: u64, programs: Vec<ProgramStats>) {
        self.counts.untracked_time_waits = untracked_time_waits;
        self.counts.programs = programs;
    }

    /// `count` events never reached us, as learnt at `noticed_ns`: said at once, and the
    /// connections they may belong to are marked incomplete.
    pub fn lost(&mut self, count: u64, noticed_ns: u64) -> io::Result<()> {
        self.counts.lost += count;
        self.engine.lost(count, noticed_ns);
        if self.quiet {
            eprintln!("tcptrace: warning: {count} events lost (the ring buffer was full)");
            return Ok(());
        }
        self.stream.lost(count)
    }

    /// Writes what the engine can tell by time `now_ns`. Buffered: see [`Pipeline::flush`].
    pub fn advance(&mut self, now_ns: u64) -> io::Result<()> {
        self.run_engine(now_ns, false)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }

    fn run_engine(&mut self, now_ns: u64, finish: bool) -> io::Result<()> {
        if !self.said_many_homes && self.names.many_homes() {
            self.said_many_homes = true;
            if self.show_events && !self.quiet {
                self.stream.many_homes()?;
            }
        }
        let Pipeline {
            stream,
            engine,
            show_events,
            show_connections,
            keep_connections,
            collected,
            names,
            quiet,
            watcher,
            counts,
            watcher_updated_ns,
            ..
        } = self;
        let (names, watcher, quiet) = (&*names, watcher.as_deref(), *quiet);
        let mut result = Ok(());
        let mut write = |output: Output<'_>| {
            if result.is_err() {
                return;
            }
            result = match output {
                Output::Event(event, attribution) => {
                    if let Some(watcher) = watcher {
                        watcher.event(event);
                    }
                    if *show_events && !quiet {
                        stream.event(event, &attribution, names)
                    } else {
                        Ok(())
                    }
                }
                Output::Connection(connection) => {
                    if let Some(watcher) = watcher {
                        watcher.connection(connection);
                    }
                    if *keep_connections {
                        collected.push(connection.clone());
                    }
                    if quiet || !*show_connections {
                        Ok(())
                    } else {
                        stream.connection(connection, names)
                    }
                }
                Output::Stuck(stuck) => {
                    if let Some(watcher) = watcher {
                        watcher.stuck(stuck);
                    }
                    if quiet { Ok(()) } else { stream.stuck(stuck) }
                }
                Output::Closed(closer) => {
                    if let Some(watcher) = watcher {
                        watcher.closed(closer);
                    }
                    Ok(())
                }
            };
        };
        if finish {
            engine.finish(now_ns, &mut write);
        } else {
            engine.advance(now_ns, &mut write);
        }
        // The gauges (the pile-up one sorts every remote endpoint) once a second, not on
        // every batch of events: a scrape every few seconds sees them at most 1 s old.
        if let Some(watcher) = watcher
            && (finish || now_ns >= watcher_updated_ns.saturating_add(WATCHER_UPDATE_NS))
        {
            *watcher_updated_ns = now_ns;
            watcher.update(engine.stats(), counts, engine.tracked());
        }
        result
    }

    /// The end of the trace at `end_ns` (0: the last event's time): every open connection,
    /// the summary, then the exports.
    pub fn finish(mut self, end_ns: u64) -> Result<()> {
        let end_ns = end_ns.max(self.latest_ns);
        self.run_engine(end_ns, true)?;
        let ephemeral_ports = self.engine.options().ephemeral_ports;
        if self.show_summary {
            let (stats, counts, names) = (self.engine.stats(), &self.counts, &self.names);
            self.stream.summary(stats, counts, ephemeral_ports, names)?;
        }
        self.stream.flush()?;
        let input = ExportInput {
            connections: &self.collected,
            end_ns,
            lang: self.lang,
            names: &self.names,
        };
        for (path, format) in &self.exports {
            export::write(path, *format, &input)?;
            eprintln!("tcptrace: wrote {}", path.display());
        }
        Ok(())
    }
}
