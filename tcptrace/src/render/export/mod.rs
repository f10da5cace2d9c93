//! Exports of finished connection records (`--export FILE`), for spreadsheets, trace
//! viewers, Markdown and the browser. Every format is drawn from one [`Timeline`] model.

mod chrome;
mod csv;
mod html;
mod mermaid;

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};

use crate::{
    engine::{Connection, Endpoint, Role, TimeWaitEnd, TimeWaitKind},
    event::{Owner, TcpState},
    names::Names,
    render::explain::Lang,
    render::report::{self, HomeLabel, by_role},
    schema::json_line::JsonLine,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    ChromeTrace,
    Mermaid,
    Html,
}

impl ExportFormat {
    /// From the file name's ending.
    pub fn from_path(path: &Path) -> Option<ExportFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        [
            (".trace.json", ExportFormat::ChromeTrace),
            (".jsonl", ExportFormat::Jsonl),
            (".csv", ExportFormat::Csv),
            (".mmd", ExportFormat::Mermaid),
            (".html", ExportFormat::Html),
        ]
        .into_iter()
        .find(|(ending, _)| name.ends_with(ending))
        .map(|(_, format)| format)
    }
}

/// What every exporter gets.
pub struct ExportInput<'a> {
    pub connections: &'a [Connection],
    /// When tracing stopped: where open states and open TIME-WAITs are drawn to.
    pub end_ns: u64,
    /// The language of the notes on the HTML page.
    pub lang: Lang,
    /// What the namespace and cgroup numbers stand for.
    pub names: &'a Names,
}

pub fn write(path: &Path, format: ExportFormat, input: &ExportInput<'_>) -> Result<()> {
    let file = File::create(path)
        .with_context(|| format!("cannot create the export {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let result = match format {
        ExportFormat::Jsonl => {
            let mut line = JsonLine::new();
            input.connections.iter().try_for_each(|connection| {
                report::connection_json(line.clear(), connection, input.names, None);
                out.write_all(line.bytes())
            })
        }
        ExportFormat::Csv => csv::write(&mut out, input),
        ExportFormat::ChromeTrace => chrome::write(&mut out, input),
        ExportFormat::Mermaid => mermaid::write(&mut out, input),
        ExportFormat::Html => html::write(&mut out, input),
    };
    result
        .and_then(|()| out.flush())
        .with_context(|| format!("writing the export {}", path.display()))
}

/// One bar on an endpoint's lane.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    /// A state name, or `TIME_WAIT` for the kernel's time-wait socket.
    pub state: &'static str,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Still going when tracing stopped.
    pub open: bool,
    /// For TIME_WAIT: how it ended.
    pub detail: Option<String>,
}

/// Something that happened at one instant on an endpoint's lane.
#[derive(Clone, Debug, PartialEq)]
pub struct Instant {
    pub name: &'static str,
    pub ts_ns: u64,
}

/// One endpoint's lane.
pub struct Lane<'a> {
    pub role: Role,
    pub endpoint: &'a Endpoint,
    pub intervals: Vec<Interval>,
    pub instants: Vec<Instant>,
    /// Its namespace and container, when the trace spans more than one.
    pub home: Option<String>,
}

impl Lane<'_> {
    pub fn label(&self) -> String {
        let owner = match self.endpoint.owner {
            Some(Owner { pid, comm }) => format!("{comm} {pid}"),
            None => "owner unknown".into(),
        };
        let home = self.home.as_ref().map(|home| format!(", {home}")).unwrap_or_default();
        format!("{} {} ({owner}{home})", self.role.name(), self.endpoint.local)
    }

    /// What the endpoint carried, in words, when its counters were seen at close.
    pub fn carried(&self) -> Option<String> {
        self.endpoint.counters.as_ref().map(|counters| report::CountersText(counters).to_string())
    }
}

/// A connection as lanes of bars and instants.
pub struct Timeline<'a> {
    pub connection: &'a Connection,
    pub lanes: Vec<Lane<'a>>,
}

impl<'a> Timeline<'a> {
    pub fn new(connection: &'a Connection, end_ns: u64, names: &Names) -> Timeline<'a> {
        let (client, server) = by_role(connection);
        let lanes = [(Role::Client, client), (Role::Server, server)]
            .into_iter()
            .filter_map(|(role, endpoint)| {
                let endpoint = endpoint?;
                let role = match connection.role_of(endpoint) {
                    Role::Unknown => role,
                    known => known,
                };
                let home = HomeLabel(names, endpoint.home);
                Some(Lane {
                    role,
                    endpoint,
                    intervals: intervals(endpoint, end_ns),
                    instants: instants(endpoint),
                    home: home.shown().then(|| home.to_string()),
                })
            })
            .collect();
        Timeline { connection, lanes }
    }

    /// The earliest time on any lane.
    pub fn start_ns(&self) -> Option<u64> {
        self.lanes
            .iter()
            .flat_map(|lane| {
                lane.intervals
                    .iter()
                    .map(|i| i.start_ns)
                    .chain(lane.instants.iter().map(|i| i.ts_ns))
            })
            .min()
    }
}

fn intervals(endpoint: &Endpoint, end_ns: u64) -> Vec<Interval> {
    let mut intervals = Vec::with_capacity(8);
    for span in endpoint.states() {
        let Some(start_ns) = span.enter_ns else { continue }; // seen mid-way: start unknown
        let (span_end, open) = match span.duration_ns {
            Some(duration) => (start_ns + duration, false),
            None if span.state == TcpState::Closed => continue, // an instant, not a bar
            None => (end_ns.max(start_ns), true),
        };
        intervals.push(Interval {
            state: span.state.name(),
            start_ns,
            end_ns: span_end,
            open,
            detail: None,
        });
    }
    if let Some(tw) = &endpoint.time_wait {
        let (tw_end, open) = match tw.end_ns {
            Some(end) => (end, false),
            None => (end_ns.max(tw.known_from_ns), true),
        };
        let mut how = match (tw.end, tw.kind) {
            (TimeWaitEnd::Open, _) => "open at the end of the trace".to_owned(),
            (end, TimeWaitKind::FinWait2) => format!("{} (an orphaned FIN_WAIT2)", end.name()),
            (end, TimeWaitKind::TimeWait) => end.name().to_owned(),
        };
        if tw.start_ns.is_none() {
            how.push_str("; there before tracing began");
        }
        intervals.push(Interval {
            state: "TIME_WAIT",
            start_ns: tw.known_from_ns,
            end_ns: tw_end,
            open,
            detail: Some(how),
        });
    }
    intervals
}

fn instants(endpoint: &Endpoint) -> Vec<Instant> {
    let mut instants = Vec::new();
    for state in [TcpState::FinWait1, TcpState::LastAck] {
        if let Some(ts_ns) = endpoint.entered(state) {
            instants.push(Instant { name: "FIN sent", ts_ns });
        }
    }
    if let Some(ts_ns) = endpoint.reset_sent_ns {
        instants.push(Instant { name: "RST sent", ts_ns });
    }
    if let Some(ts_ns) = endpoint.reset_received_ns {
        instants.push(Instant { name: "RST received", ts_ns });
    }
    if let Some(tw) = &endpoint.time_wait
        && let Some(ts_ns) = tw.end_ns
    {
        let name = match tw.end {
            TimeWaitEnd::Expired => "TIME-WAIT expired",
            _ => "TIME-WAIT killed",
        };
        instants.push(Instant { name, ts_ns });
    }
    instants.sort_by_key(|i| i.ts_ns);
    instants
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
pub(crate) mod tests;
