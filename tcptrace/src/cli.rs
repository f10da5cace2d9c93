//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    engine::EngineOptions,
    kernel::{
        host,
        loader::{CgroupFilter, Filters},
    },
    pipeline::PipelineOptions,
    render::{explain::Lang, export::ExportFormat, stream::StreamFormat},
};

const ABOUT: &str = "Trace TCP state transitions with eBPF: every state each socket passes \
through, who closed first, and how long TIME-WAIT really lasted.";

const LONG_ABOUT: &str = "\
Trace TCP state transitions with eBPF.

tcptrace attaches to the kernel's sock:inet_sock_set_state tracepoint and prints one line \
per state change of every TCP socket: its local and remote address, the old and new state, \
how long the socket spent in the old state, and the process that owns it. When a connection \
is over it prints the connection's story: both sides' states, who closed first (client, \
server, both at once, or a reset), and how long each TIME-WAIT lasted, measured from the \
kernel's own time-wait timer.

Filters (--port, --pid, --netns, --cgroup, -4, -6) run inside the kernel, so traffic you \
filter out costs nothing. Every socket is keyed by its network namespace: two containers' \
127.0.0.1:8080 are never mixed up, and when a trace spans more than one namespace or \
container, each line says which. Tracing needs root (or CAP_BPF and CAP_PERFMON); `tcptrace replay` does not.";

const EXAMPLES: &str = "\
Examples:
  sudo tcptrace --port 8080                   watch connections to or from port 8080
  sudo tcptrace --port 8080 --explain         the same, with notes for learners
  sudo tcptrace --port 8080 --json            JSON Lines, for jq or scripts (docs/json.md)
  sudo tcptrace -p 8080 --record lab.jsonl    keep every raw event in a file
  sudo tcptrace --netns blue                  only sockets in `ip netns` namespace blue
  sudo tcptrace --netns /proc/4242/ns/net     only sockets in process 4242's namespace
  sudo tcptrace --cgroup /system.slice/nginx.service
                                              only sockets made in that cgroup or below
  tcptrace replay lab.jsonl --export lab.html --export lab.trace.json
                                              pictures of a recording, no root needed
  sudo tcptrace lab --quick                   the TIME-WAIT lab, in a namespace of its own
  sudo tcptrace top --port 8080               a full screen that stays current

Reading the output:
  PID/COMM is the socket's owner. Transitions that happen in softirq (when a packet \
arrives) run on whatever task the CPU was busy with, so tcptrace shows the owner it learned \
earlier in process context (connect, close; for an accepted socket, the listener's), or '-' \
when it has not seen one yet.
  '!! … holds N sockets in CLOSE_WAIT' names a process that is not closing sockets its \
peers closed (a file-descriptor leak); see --stuck-after.
  MS is the time spent in the old state ('-' when the socket was first seen mid-way).
  A socket that enters TIME-WAIT shows FIN_WAIT2 -> CLOSED (or CLOSING -> CLOSED): the \
kernel hands the connection to a small time-wait socket, which ss shows as TIME-WAIT. \
tcptrace follows that socket's timer, so a connection's record comes when its TIME-WAIT \
ends: about 60 s after the close, or at exit with the time it had left.";

#[derive(Parser, Debug)]
#[command(
    name = "tcptrace",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a recording (made with --record) through the same engine and outputs as live
    /// tracing. Needs neither root nor a kernel.
    Replay(ReplayArgs),
    /// The TIME-WAIT lab, run and traced by itself: an HTTP server on port 8080 and one
    /// request, the socket table as `ss -tan` shows it, who closed first, the TIME-WAIT
    /// timed to its end, why it exists, and what a pile-up costs (ports run out; which
    /// sockets hold file descriptors). In a network namespace of its own, removed at the
    /// end: nothing on the host changes. About 70 s, a few with --quick. Needs root.
    #[command(after_help = LAB_EXAMPLES)]
    Lab(LabArgs),
    /// A full-screen view that stays current: sockets per state (as `ss -s` counts
    /// them), TIME-WAITs by age, the busiest local endpoints and processes, sockets stuck
    /// in CLOSE-WAIT with their owners, rates of connects, closes by side, resets and
    /// failed connects, lost events. Takes the filters of tracing. Keys: q quits, p
    /// pauses, s sorts the tables. Needs root and a terminal.
    #[command(after_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// One of the lab's own peer processes (used by `tcptrace lab`).
    #[command(hide = true)]
    LabPeer(crate::lab::peer::PeerArgs),
}

const LAB_EXAMPLES: &str = "\
Examples:
  sudo tcptrace lab                           the whole lab, with TIME-WAIT timed (70 s)
  sudo tcptrace lab --quick --lang ru         в секунды, по-русски
  sudo tcptrace lab --export lab.html         and a timeline page of every connection";

const TOP_EXAMPLES: &str = "\
Examples:
  sudo tcptrace top                           every TCP socket of the host
  sudo tcptrace top --port 8080 --port 443    a server's ports
  sudo tcptrace top --netns blue --stuck-after 5

Sockets from before top started are counted too (the start-up snapshot), so the
counts match `ss -s` from the first second. A TIME-WAIT is counted for its endpoint,
never for a process: no process holds it (its descriptor was closed).";

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Redraw every SECS seconds.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    pub refresh: Duration,

    /// List sockets that sit in CLOSE_WAIT longer than this as stuck.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub stuck_after: Duration,

    #[command(flatten)]
    pub run: RunArgs,
}

impl TopArgs {
    /// The trace top runs.
    pub fn trace(&self) -> TraceArgs {
        TraceArgs { filter: self.filter.clone(), run: self.run.clone(), ..TraceArgs::default() }
    }
}

/// The default ring buffer of each CPU: 4 MiB.
pub const DEFAULT_RING_SIZE: u32 = 4 << 20;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Don't wait for the TIME-WAIT to end (about 60 s): say how long it had left.
    #[arg(long)]
    pub quick: bool,

    /// The language of the lab: en or ru.
    #[arg(long, value_name = "LANG", default_value = "en", value_parser = parse_lang)]
    pub lang: Lang,

    /// Write every connection of the lab to FILE at the end (.jsonl, .csv, .trace.json,
    /// .mmd, .html, as with tracing). Repeatable.
    #[arg(long, value_name = "FILE", value_parser = parse_export)]
    pub export: Vec<(PathBuf, ExportFormat)>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A recording made with `tcptrace --record FILE`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which sockets to trace (tracing and top), filtered in the kernel.
#[derive(Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Keep only sockets with this local or remote port (repeatable, up to 8).
    #[arg(short, long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Keep only sockets used by this process (matched when it touches the socket).
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Keep only sockets in this network namespace: an `ip netns` name, a namespace file
    /// (/run/netns/NAME, /proc/PID/ns/net) or its inode, as `lsns -t net` shows
    /// (repeatable, up to 8).
    #[arg(long = "netns", value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,

    /// Keep only sockets made in this cgroup (v2) or below it: a path from the cgroup2
    /// root (/system.slice/docker-ID.scope) or a directory of its mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

/// How long a trace runs, what it keeps, and its ring buffer (tracing and top).
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(short, long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Also write every raw event to FILE as JSON Lines, for `tcptrace replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Don't start from the sockets already there. By default tcptrace dumps them
    /// (sock_diag, as `ss` does) just after attaching, in every namespace it traces, and
    /// follows each to its end: connections open at start get both ends and their
    /// owners, TIME-WAITs already running their time left and their real end (for up to
    /// a minute, until the last has ended, the kernel program looks at every timer
    /// cancelled for theirs).
    #[arg(long)]
    pub no_snapshot: bool,

    /// Size in bytes of each CPU's ring buffer, up to 8 of them (a power of two, at least
    /// 4096): kernel memory, mapped into tcptrace. Each event takes 176 bytes; the default
    /// 4 MiB holds about 23 800 events. Raise it if events are lost (docs/sizing.md).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_SIZE, value_parser = parse_ring_size)]
    pub ring_size: u32,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs { duration: None, record: None, no_snapshot: false, ring_size: DEFAULT_RING_SIZE }
    }
}

/// How to trace (live only).
#[derive(Args, Debug, Default)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub run: RunArgs,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR:PORT/metrics: closes by
    /// who closed first, TIME-WAITs open now and how long they lasted, resets, failed
    /// connects, stuck sockets, lost events. Never bound unless asked; with --quiet,
    /// nothing is printed per event (a daemon). Series are bounded (docs/metrics.md).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Print diagnostics to stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

/// How to show what was traced (live and replay).
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Print one JSON object per line instead of text (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,

    /// Print only connection records and the summary, not each transition.
    #[arg(long)]
    pub connections_only: bool,

    /// Print nothing per event or connection, only warnings and the summary at exit (as
    /// JSON with --json): for a daemon whose output is --metrics, --record or --export.
    #[arg(short, long, conflicts_with_all = ["connections_only", "explain"])]
    pub quiet: bool,

    /// Write connection records to FILE when done; the format follows the name: .jsonl
    /// (records as in --json), .csv (one row per state), .trace.json (Perfetto /
    /// chrome://tracing), .mmd (Mermaid sequence diagram), .html (a timeline page).
    /// Repeatable.
    #[arg(long, value_name = "FILE", value_parser = parse_export)]
    pub export: Vec<(PathBuf, ExportFormat)>,

    /// Annotate the output for learners: what each state means, why TIME-WAIT exists.
    #[arg(long)]
    pub explain: bool,

    /// Language of the --explain notes and of the exports' notes: en or ru.
    #[arg(long, value_name = "LANG", default_value = "en", value_parser = parse_lang)]
    pub lang: Lang,

    /// Report sockets that sit in CLOSE_WAIT longer than this (the peer closed, the
    /// application never did: a leak of file descriptors), grouped by owner.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub stuck_after: Duration,

    /// Connections followed at once; past it the least recently active are aged out
    /// (counted in the summary). Each costs about 1 KiB (docs/sizing.md).
    #[arg(long, value_name = "N", default_value_t = 1 << 18)]
    pub max_connections: usize,
}

impl OutputArgs {
    pub fn explain_lang(&self) -> Option<Lang> {
        self.explain.then_some(self.lang)
    }

    /// The pipeline these options ask for, around an engine with `engine`'s settings.
    pub fn pipeline_options(&self, engine: EngineOptions) -> PipelineOptions {
        PipelineOptions {
            format: if self.json { StreamFormat::Json } else { StreamFormat::Text },
            show_events: !self.connections_only,
            explain: self.explain_lang(),
            lang: self.lang,
            exports: self.export.clone(),
            engine: EngineOptions {
                max_connections: self.max_connections,
                stuck_after_ns: self.stuck_after.as_nanos() as u64,
                ..engine
            },
            quiet: self.quiet,
            watcher: None,
            keep_connections: false,
        }
    }
}

impl FilterArgs {
    /// The kernel filters, with `--netns` and `--cgroup` resolved on this host (a clear
    /// error for a value that names no namespace or cgroup).
    pub fn filters(&self) -> anyhow::Result<Filters> {
        let netns: anyhow::Result<Vec<u32>> =
            self.netns.iter().map(|value| host::netns_filter(value)).collect();
        let cgroup = match &self.cgroup {
            Some(path) => {
                let (id, level, _) = host::cgroup_filter(path)?;
                Some(CgroupFilter { id, level })
            }
            None => None,
        };
        Ok(Filters {
            ports: self.ports.clone(),
            pid: self.pid,
            netns: netns?,
            cgroup,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
        })
    }

    /// Checks what clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.ports.len() > tcptrace_common::MAX_PORTS {
            return Err(format!(
                "at most {} --port values are supported (got {})",
                tcptrace_common::MAX_PORTS,
                self.ports.len()
            ));
        }
        if self.netns.len() > tcptrace_common::MAX_NETNS {
            return Err(format!(
                "at most {} --netns values are supported (got {})",
                tcptrace_common::MAX_NETNS,
                self.netns.len()
            ));
        }
        Ok(())
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("the duration must be more than 0 seconds (got '{text}')"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text.parse().map_err(|_| format!("'{text}' is not a size in bytes"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!("the ring size must be a power of two of at least 4096 (got {size})"));
    }
    Ok(size)
}

fn parse_lang(text: &str) -> Result<Lang, String> {
    Lang::ALL.into_iter().find(|lang| lang.code() == text).ok_or_else(|| {
        let codes: Vec<&str> = Lang::ALL.iter().map(|lang| lang.code()).collect();
        format!("'{text}' is not a language tcptrace speaks ({})", codes.join(", "))
    })
}

fn parse_export(text: &str) -> Result<(PathBuf, ExportFormat), String> {
    let path = PathBuf::from(text);
    let format = ExportFormat::from_path(&path).ok_or_else(|| {
        format!("'{text}': the name must end in .jsonl, .csv, .trace.json, .mmd or .html")
    })?;
    Ok((path, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
    }

    #[test]
    fn repeated_ports_and_filters() {
        let cli = parse(&["--port", "8080", "-p", "443", "-4", "--pid", "12", "--json"]).unwrap();
        assert_eq!(cli.trace.filter.ports, vec![8080, 443]);
        assert_eq!(cli.trace.filter.pid, Some(12));
        assert!(cli.trace.filter.ipv4 && !cli.trace.filter.ipv6 && cli.output.json);
        assert_eq!(cli.trace.filter.filters().unwrap().ports, vec![8080, 443]);
        assert!(cli.trace.filter.validate().is_ok());
        assert!(cli.command.is_none());
    }

    #[test]
    fn bad_port_values_are_refused_with_a_reason() {
        for bad in ["0", "65536", "http", "-1"] {
            let error = parse(&[&format!("--port={bad}")]).unwrap_err().to_string();
            assert!(error.contains("--port"), "{bad}: {error}");
        }
        let nine: Vec<String> = (1..=9).flat_map(|p| ["--port".into(), p.to_string()]).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(parse(&nine).unwrap().trace.filter.validate().unwrap_err().contains("at most 8"));
    }

    #[test]
    fn namespaces_and_cgroups_that_do_not_exist_are_named_in_the_error() {
        let cli = parse(&["--netns", "/nonexistent/ns"]).unwrap();
        let error = format!("{:#}", cli.trace.filter.filters().unwrap_err());
        assert!(error.contains("--netns /nonexistent/ns: cannot open"), "{error}");
        let cli = parse(&["--netns", "/proc/self/ns/mnt"]).unwrap();
        let error = format!("{:#}", cli.trace.filter.filters().unwrap_err());
        assert!(error.contains("is not a network namespace"), "{error}");
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino() as u32
        });
        let cli = parse(&["--netns", "/proc/self/ns/net", "--netns", "4026531840"]).unwrap();
        let netns = cli.trace.filter.filters().unwrap().netns;
        assert_eq!(netns, [own.unwrap(), 4026531840]);
        let cli = parse(&["--cgroup", "/no-such-cgroup-here"]).unwrap();
        let error = format!("{:#}", cli.trace.filter.filters().unwrap_err());
        assert!(error.contains("--cgroup /no-such-cgroup-here"), "{error}");
        let nine: Vec<String> = (1..=9).flat_map(|n| ["--netns".into(), n.to_string()]).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(parse(&nine).unwrap().trace.filter.validate().unwrap_err().contains("at most 8"));
    }

    #[test]
    fn durations_and_ring_sizes() {
        let duration = parse(&["--duration", "2.5"]).unwrap().trace.run.duration;
        assert_eq!(duration, Some(Duration::from_millis(2500)));
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
        assert_eq!(parse(&[]).unwrap().trace.run.ring_size, 4 << 20);
        assert!(parse(&["--ring-size", "5000"]).is_err());
        assert!(parse(&["--ring-size", "1024"]).is_err());
        assert_eq!(parse(&["--ring-size", "8192"]).unwrap().trace.run.ring_size, 8192);
    }

    #[test]
    fn ipv4_and_ipv6_only_conflict() {
        assert!(parse(&["-4", "-6"]).is_err());
    }

    #[test]
    fn replay_takes_the_output_options_and_not_the_trace_ones() {
        let cli = parse(&[
            "replay",
            "lab.jsonl",
            "--export",
            "a.html",
            "--export",
            "b.trace.json",
            "--explain",
            "--lang",
            "ru",
        ])
        .unwrap();
        let Some(Command::Replay(replay)) = cli.command else { panic!("not a replay") };
        assert_eq!(replay.file, PathBuf::from("lab.jsonl"));
        let formats: Vec<ExportFormat> = replay.output.export.iter().map(|(_, f)| *f).collect();
        assert_eq!(formats, [ExportFormat::Html, ExportFormat::ChromeTrace]);
        assert_eq!(replay.output.explain_lang(), Some(Lang::Ru));
        assert!(parse(&["replay", "lab.jsonl", "--port", "80"]).is_err());
        assert!(parse(&["--export", "lab.pdf"]).unwrap_err().to_string().contains(".trace.json"));
    }
}
