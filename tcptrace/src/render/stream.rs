//! The live stream: one line per event, as text for people or JSON Lines for programs.
//!
//! Both writers format straight into a buffer: no per-event allocation. JSON lines wait in
//! the stream's own, one after another, and reach the writer [`BATCH_BYTES`] at a time.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use crate::{
    clock::WallClock,
    engine::{Attribution, Connection, Stats, Stuck},
    event::TraceCounts,
    event::{EventKind, TcpEvent},
    names::Names,
    render::explain::{self, Lang},
    render::report::{self, HomeLabel},
    schema::{Lost, StreamLine, fast::event_head, json_line::JsonLine, write_line},
    sink::STDOUT_BUFFER,
};

/// JSON lines wait until this many bytes of them are written at once: as many as standard
/// output's `BufWriter` holds, which passes on a write that large without copying it. Lines
/// copied line by line into it were 3 % of the tracer's CPU with `--json`.
const BATCH_BYTES: usize = STDOUT_BUFFER;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamFormat {
    #[default]
    Text,
    Json,
}

pub struct Stream<W: Write> {
    out: W,
    format: StreamFormat,
    clock: WallClock,
    /// Notes for learners, in this language.
    explain: Option<Lang>,
    /// The general TIME-WAIT notes are shown once, with the first TIME-WAIT.
    explained_time_wait: bool,
    /// What CLOSE_WAIT means is said once, with the first stuck socket.
    explained_stuck: bool,
    /// JSON lines not yet written, one after another (see [`BATCH_BYTES`]).
    lines: JsonLine,
}

impl<W: Write> Stream<W> {
    pub fn new(out: W, format: StreamFormat, clock: WallClock) -> Stream<W> {
        Stream {
            out,
            format,
            clock,
            explain: None,
            explained_time_wait: false,
            explained_stuck: false,
            lines: JsonLine::new(),
        }
    }

    pub fn with_explain(mut self, explain: Option<Lang>) -> Stream<W> {
        self.explain = explain;
        self
    }

    /// The general TIME-WAIT notes are told elsewhere (`tcptrace lab`'s step 3).
    pub fn skip_time_wait_notes(&mut self) {
        self.explained_time_wait = true;
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.format == StreamFormat::Text {
            writeln!(
                self.out,
                "{:<15} {:>7} {:<15} {:<24} {:<24} {:<28} {:>9}",
                "TIME", "PID", "COMM", "LOCAL", "REMOTE", "EVENT", "MS"
            )?;
        }
        Ok(())
    }

    pub fn event(
        &mut self,
        event: &TcpEvent,
        attribution: &Attribution,
        names: &Names,
    ) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => self.text_event(event, attribution, names),
            StreamFormat::Json => self.json_event(event, attribution),
        }
    }

    /// Reports events the kernel dropped because the ring buffer was full.
    pub fn lost(&mut self, count: u64) -> io::Result<()> {
        self.write_lines()?;
        match self.format {
            StreamFormat::Text => writeln!(
                self.out,
                "!! {count} events lost: the ring buffer was full (raise --ring-size)"
            ),
            StreamFormat::Json => {
                write_line(&mut self.out, &StreamLine::Lost(Lost { ts_ns: None, count }))
            }
        }
    }

    /// An owner's stuck sockets changed in number: a warning, with what CLOSE_WAIT means
    /// under `--explain` (once).
    pub fn stuck(&mut self, stuck: &Stuck) -> io::Result<()> {
        self.write_lines()?;
        let first = stuck.count > 0 && !self.explained_stuck;
        let note = self.explain.filter(|_| first).map(|lang| explain::STUCK_CLOSE_WAIT.text(lang));
        self.explained_stuck |= note.is_some();
        match self.format {
            StreamFormat::Text => {
                writeln!(self.out, "!! {}", report::StuckText(stuck))?;
                if let Some(note) = note {
                    writeln!(self.out, "   ↳ {note}")?;
                }
                Ok(())
            }
            StreamFormat::Json => {
                write_line(&mut self.out, &StreamLine::Stuck(report::stuck_record(stuck, note)))
            }
        }
    }

    /// Said once, when a second namespace or container shows up: lines name theirs from
    /// then on.
    pub fn many_homes(&mut self) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => writeln!(
                self.out,
                "-- sockets of more than one network namespace or container: each line now says whose (ns NAME|INODE, ctr ID)"
            ),
            StreamFormat::Json => Ok(()),
        }
    }

    /// A finished connection's record.
    pub fn connection(&mut self, connection: &Connection, names: &Names) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => {
                report::write_connection_text(&mut self.out, connection, names, self.explain)?;
                let has_time_wait = connection.endpoints.iter().any(|e| e.time_wait.is_some());
                if let Some(lang) =
                    self.explain.filter(|_| has_time_wait && !self.explained_time_wait)
                {
                    self.explained_time_wait = true;
                    for note in explain::TIME_WAIT_NOTES {
                        writeln!(self.out, "   ↳ {}", note.text(lang))?;
                    }
                }
                Ok(())
            }
            StreamFormat::Json => {
                report::connection_json(&mut self.lines, connection, names, self.explain);
                self.line_done()
            }
        }
    }

    /// The last thing written: totals, who closed first, TIME-WAIT statistics.
    pub fn summary(
        &mut self,
        stats: &Stats,
        counts: &TraceCounts,
        ephemeral_ports: (u16, u16),
        names: &Names,
    ) -> io::Result<()> {
        self.write_lines()?;
        match self.format {
            StreamFormat::Text => {
                report::write_summary_text(&mut self.out, stats, counts, ephemeral_ports, names)
            }
            StreamFormat::Json => {
                report::write_summary_json(&mut self.out, stats, counts, ephemeral_ports)
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_lines()?;
        self.out.flush()
    }

    /// A JSON line was added: the waiting ones are written once there are enough.
    fn line_done(&mut self) -> io::Result<()> {
        if self.lines.bytes().len() < BATCH_BYTES {
            return Ok(());
        }
        self.write_lines()
    }

    /// Writes the JSON lines waiting, before anything else is written.
    fn write_lines(&mut self) -> io::Result<()> {
        if !self.lines.bytes().is_empty() {
            self.out.write_all(self.lines.bytes())?;
            self.lines.clear();
        }
        Ok(())
    }

    fn text_event(
        &mut self,
        event: &TcpEvent,
        attribution: &Attribution,
        names: &Names,
    ) -> io::Result<()> {
        self.clock.write_time_of_day(&mut self.out, event.ts_ns)?;
        match attribution.owner {
            Some(owner) => write!(self.out, " {:>7} {:<15}", owner.pid, owner.comm)?,
            None => write!(self.out, " {:>7} {:<15}", "-", "-")?,
        }
        match event.addresses.or(attribution.addresses) {
            Some((local, remote)) => {
                write!(self.out, " {:<24} {:<24}", Padded(local), Padded(remote))?
            }
            None => write!(self.out, " {:<24} {:<24}", "-", "-")?,
        }
        match event.kind {
            EventKind::Transition { old, new, .. } => {
                let width = 28usize.saturating_sub(old.name().len() + 4);
                write!(self.out, " {old} -> {new:<width$}")?;
            }
            EventKind::TimeWaitRearm { .. } => {
                write!(self.out, " {:<28}", "TIME-WAIT timer re-armed")?
            }
            EventKind::TimeWaitCancel { .. } => {
                write!(self.out, " {:<28}", "TIME-WAIT timer stopped")?
            }
            EventKind::TimeWaitExpire { .. } => write!(self.out, " {:<28}", "TIME-WAIT expired")?,
            EventKind::ResetSent => write!(self.out, " {:<28}", "RST sent")?,
            EventKind::ResetReceived => write!(self.out, " {:<28}", "RST received")?,
        }
        match attribution.old_state_ns {
            Some(ns) => write!(self.out, " {:>9.3}", ns as f64 / 1e6)?,
            None => write!(self.out, " {:>9}", "-")?,
        }
        let home = HomeLabel(names, attribution.home);
        if home.shown() {
            write!(self.out, "  [{home}]")?;
        }
        writeln!(self.out)?;
        if let Some(note) = self.note(event) {
            writeln!(self.out, "{:>17} {note}", "↳")?;
        }
        Ok(())
    }

    fn note(&self, event: &TcpEvent) -> Option<&'static str> {
        let lang = self.explain?;
        match event.kind {
            EventKind::Transition { old, new, time_wait_timer } => {
                Some(explain::transition(lang, old, new, time_wait_timer.is_some()))
            }
            _ => None,
        }
    }

    fn json_event(&mut self, event: &TcpEvent, attribution: &Attribution) -> io::Result<()> {
        let line = &mut self.lines;
        let netns = event.home.netns.or(attribution.home.netns);
        let sk = attribution.handed_over.unwrap_or(event.sk);
        event_head(line, event, sk, event.addresses.or(attribution.addresses), netns);
        if let EventKind::Transition { old, new, time_wait_timer } = event.kind {
            line.raw(",\"old_state_ns\":").optional(attribution.old_state_ns);
            if let Some(lang) = self.explain {
                let note = explain::transition(lang, old, new, time_wait_timer.is_some());
                line.raw(",\"note\":").string(note.as_bytes());
            }
        }
        match attribution.owner {
            Some(owner) => {
                line.raw(",\"pid\":").u64(u64::from(owner.pid));
                line.raw(",\"comm\":").string(owner.comm.as_bytes());
            }
            None => {
                line.raw(",\"pid\":null,\"comm\":null");
            }
        }
        line.raw(",\"process_context\":").bool(event.task.process_context).raw("}").end_line();
        self.line_done()
    }
}

impl<W: Write> Drop for Stream<W> {
    /// The lines still waiting are written, as a `BufWriter` dropped writes what it holds
    /// (a replay that stops at a damaged line keeps what came before it).
    fn drop(&mut self) {
        let _ = self.write_lines();
    }
}

/// `SocketAddr`'s `Display` ignores width; this pads it.
struct Padded(SocketAddr);

impl std::fmt::Display for Padded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buffer = [0u8; 64];
        let mut cursor = io::Cursor::new(&mut buffer[..]);
        write!(cursor, "{}", self.0).map_err(|_| std::fmt::Error)?;
        let len = cursor.position() as usize;
        f.pad(std::str::from_utf8(&buffer[..len]).map_err(|_| std::fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, Home, Owner, Task, TcpState};
    use crate::names::{Cgroup, Learned};

    fn transition() -> TcpEvent {
        TcpEvent {
            ts_ns: 5_000_000_123,
            sk: 0xffff_8880_1234_2500,
            kind: EventKind::Transition {
                old: TcpState::Established,
                new: TcpState::FinWait1,
                time_wait_timer: None,
            },
            addresses: Some((
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:42020".parse().unwrap(),
            )),
            task: Task { pid: 7, tid: 7, comm: Comm::new("x"), process_context: true },
            cpu: 1,
            counters: None,
            home: Home { netns: Some(4026532177), cgroup: None },
        }
    }

    #[test]
    fn json_line_matches_the_documented_schema() {
        let mut stream = Stream::new(Vec::new(), StreamFormat::Json, WallClock::now());
        let owner = Owner { pid: 1743, comm: Comm::new("py\"th\\on") };
        stream
            .event(
                &transition(),
                &Attribution {
                    owner: Some(owner),
                    old_state_ns: Some(1500),
                    ..Attribution::default()
                },
                &Names::default(),
            )
            .unwrap();
        let line = written(stream);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "transition");
        assert_eq!(value["ts_ns"], 5_000_000_123u64);
        assert_eq!(value["sk"], "0xffff888012342500");
        assert_eq!(value["family"], "ipv4");
        assert_eq!(value["local"], "127.0.0.1:8080");
        assert_eq!(value["remote"], "127.0.0.1:42020");
        assert_eq!(value["netns"], 4026532177u64, "the event's own namespace");
        assert_eq!(value["old"], "ESTABLISHED");
        assert_eq!(value["new"], "FIN_WAIT1");
        assert_eq!(value["pid"], 1743);
        assert_eq!(value["comm"], "py\"th\\on");
        assert_eq!(value["old_state_ns"], 1500);
        assert_eq!(value["process_context"], true);
    }

    /// An event in softirq on an idle CPU: the current task is the idle task, which owns
    /// nothing, and the engine knows no owner yet.
    fn softirq_on_an_idle_cpu() -> TcpEvent {
        let idle = Task { pid: 0, tid: 0, comm: Comm::new("swapper/1"), process_context: false };
        TcpEvent { task: idle, ..transition() }
    }

    #[test]
    fn unknown_owner_is_null_in_json_and_dash_in_text() {
        let unknown = Attribution::default();
        let mut json = Stream::new(Vec::new(), StreamFormat::Json, WallClock::now());
        json.event(&softirq_on_an_idle_cpu(), &unknown, &Names::default()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&written(json)).unwrap();
        assert!(value["pid"].is_null() && value["comm"].is_null());

        let mut text = Stream::new(Vec::new(), StreamFormat::Text, WallClock::now());
        text.event(&softirq_on_an_idle_cpu(), &unknown, &Names::default()).unwrap();
        let line = written(text);
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1..3], ["-", "-"], "{line}");
        assert!(line.contains("127.0.0.1:8080"), "{line}");
        assert!(line.contains("ESTABLISHED -> FIN_WAIT1"), "{line}");
        assert!(!line.contains("swapper"));
    }

    /// What a stream wrote, once flushed.
    fn written(mut stream: Stream<Vec<u8>>) -> String {
        stream.flush().unwrap();
        String::from_utf8(std::mem::take(&mut stream.out)).unwrap()
    }

    #[test]
    fn lost_events_line() {
        let mut json = Stream::new(Vec::new(), StreamFormat::Json, WallClock::now());
        json.lost(12).unwrap();
        assert_eq!(written(json), "{\"type\":\"lost\",\"count\":12}\n");
    }

    /// Event lines wait in the stream's buffer: a line written another way comes after
    /// them, and a stream dropped unflushed still writes them.
    #[test]
    fn waiting_lines_keep_their_place_and_are_not_lost() {
        let names = Names::default();
        let mut out = Vec::new();
        {
            let mut json = Stream::new(&mut out, StreamFormat::Json, WallClock::now());
            json.event(&transition(), &Attribution::default(), &names).unwrap();
            json.lost(12).unwrap();
            json.event(&softirq_on_an_idle_cpu(), &Attribution::default(), &names).unwrap();
        }
        let out = String::from_utf8(out).unwrap();
        let types: Vec<String> = out
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].to_string()
            })
            .collect();
        assert_eq!(types, ["\"transition\"", "\"lost\"", "\"transition\""], "{out}");
    }

    /// With one namespace a line says nothing of it; with two, each says whose, by its
    /// `ip netns` name or its inode, and the container where there is one.
    #[test]
    fn text_lines_name_the_namespace_and_container_once_there_are_two() {
        let mut names = Names::default();
        names.saw_netns(4026532177);
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        names.learn(Learned::Cgroup { id: 9, cgroup: Some(Cgroup::new(format!("/docker/{id}"))) });
        let home = Home { netns: Some(4026532177), cgroup: Some(9) };
        let attribution = Attribution { home, ..Attribution::default() };
        let line = |names: &Names| {
            let mut text = Stream::new(Vec::new(), StreamFormat::Text, WallClock::now());
            text.event(&transition(), &attribution, names).unwrap();
            written(text)
        };
        assert!(!line(&names).contains('['), "{}", line(&names));
        names.saw_netns(4026532246);
        names.learn(Learned::NetnsName { inode: 4026532177, name: "red".into() });
        let shown = line(&names);
        assert!(shown.trim_end().ends_with("[ns red ctr 0123456789ab]"), "{shown}");
    }
}
