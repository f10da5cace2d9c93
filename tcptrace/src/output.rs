//! The live stream: one line per event, as text for people or JSON Lines for programs.
//!
//! Both writers format straight into a buffered writer: no per-event allocation.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use crate::{
    event::{EventKind, Family, TcpEvent},
    explain::{self, Lang},
    lifecycle::{Attribution, Connection, Stats},
    report::{self, TraceCounts},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    Text,
    Json,
}

/// Converts kernel CLOCK_MONOTONIC stamps to wall-clock time of day.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

impl WallClock {
    /// A clock from a recording's `realtime_offset_ns`.
    pub fn from_offset(realtime_offset_ns: i128) -> WallClock {
        WallClock { realtime_minus_monotonic_ns: realtime_offset_ns }
    }

    pub fn realtime_offset_ns(&self) -> i128 {
        self.realtime_minus_monotonic_ns
    }

    pub fn now() -> WallClock {
        WallClock {
            realtime_minus_monotonic_ns: clock_ns(libc::CLOCK_REALTIME)
                - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// Writes `HH:MM:SS.micros` in local time.
    pub fn write_time_of_day(&self, out: &mut impl Write, monotonic_ns: u64) -> io::Result<()> {
        let realtime_ns = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        let seconds = (realtime_ns / 1_000_000_000) as libc::time_t;
        let micros = (realtime_ns % 1_000_000_000) / 1000;
        // SAFETY: localtime_r fills the struct we own.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&seconds, &mut tm) };
        write!(out, "{:02}:{:02}:{:02}.{micros:06}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

pub struct Stream<W: Write> {
    out: W,
    format: StreamFormat,
    clock: WallClock,
    /// Notes for learners, in this language.
    explain: Option<Lang>,
    /// The general TIME-WAIT notes are shown once, with the first TIME-WAIT.
    explained_time_wait: bool,
}

impl<W: Write> Stream<W> {
    pub fn new(out: W, format: StreamFormat, clock: WallClock) -> Stream<W> {
        Stream { out, format, clock, explain: None, explained_time_wait: false }
    }

    pub fn with_explain(mut self, explain: Option<Lang>) -> Stream<W> {
        self.explain = explain;
        self
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

    pub fn event(&mut self, event: &TcpEvent, attribution: &Attribution) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => self.text_event(event, attribution),
            StreamFormat::Json => self.json_event(event, attribution),
        }
    }

    /// Reports events the kernel dropped because the ring buffer was full.
    pub fn lost(&mut self, count: u64) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => writeln!(
                self.out,
                "!! {count} events lost: the ring buffer was full (raise --ring-size)"
            ),
            StreamFormat::Json => writeln!(self.out, r#"{{"type":"lost","count":{count}}}"#),
        }
    }

    /// A finished connection's record.
    pub fn connection(&mut self, connection: &Connection) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => {
                report::write_connection_text(&mut self.out, connection, self.explain)?;
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
                report::write_connection_json(&mut self.out, connection, self.explain)
            }
        }
    }

    /// The last thing written: totals, who closed first, TIME-WAIT statistics.
    pub fn summary(
        &mut self,
        stats: &Stats,
        counts: &TraceCounts,
        ephemeral_ports: (u16, u16),
    ) -> io::Result<()> {
        match self.format {
            StreamFormat::Text => {
                report::write_summary_text(&mut self.out, stats, counts, ephemeral_ports)
            }
            StreamFormat::Json => {
                report::write_summary_json(&mut self.out, stats, counts, ephemeral_ports)
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn text_event(&mut self, event: &TcpEvent, attribution: &Attribution) -> io::Result<()> {
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
            Some(ns) => writeln!(self.out, " {:>9.3}", ns as f64 / 1e6)?,
            None => writeln!(self.out, " {:>9}", "-")?,
        }
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
        let out = &mut self.out;
        let type_name = match event.kind {
            EventKind::Transition { .. } => "transition",
            EventKind::TimeWaitRearm { .. }
            | EventKind::TimeWaitCancel { .. }
            | EventKind::TimeWaitExpire { .. } => "time_wait_timer",
            EventKind::ResetSent | EventKind::ResetReceived => "reset",
        };
        write!(out, r#"{{"type":"{type_name}","ts_ns":{},"sk":"{:#x}""#, event.ts_ns, event.sk)?;
        if let Some((local, remote)) = event.addresses.or(attribution.addresses) {
            let family = Family::of(&local).name();
            write!(out, r#","family":"{family}","local":"{local}","remote":"{remote}""#)?;
        }
        match event.kind {
            EventKind::Transition { old, new, time_wait_timer } => {
                write!(out, r#","old":"{old}","new":"{new}""#)?;
                write_optional(out, "old_state_ns", attribution.old_state_ns)?;
                if let Some(timer) = time_wait_timer {
                    write!(out, r#","time_wait_timer":"{timer:#x}""#)?;
                }
                if let Some(lang) = self.explain {
                    let note = explain::transition(lang, old, new, time_wait_timer.is_some());
                    write!(out, r#","note":""#)?;
                    write_json_string_body(out, note.as_bytes())?;
                    write!(out, "\"")?;
                }
            }
            EventKind::TimeWaitRearm { timer, timeout_jiffies } => write!(
                out,
                r#","event":"rearm","timer":"{timer:#x}","timeout_jiffies":{timeout_jiffies}"#
            )?,
            EventKind::TimeWaitCancel { timer } => {
                write!(out, r#","event":"cancel","timer":"{timer:#x}""#)?
            }
            EventKind::TimeWaitExpire { timer } => {
                write!(out, r#","event":"expire","timer":"{timer:#x}""#)?
            }
            EventKind::ResetSent => write!(out, r#","direction":"sent""#)?,
            EventKind::ResetReceived => write!(out, r#","direction":"received""#)?,
        }
        match attribution.owner {
            Some(owner) => {
                write!(out, r#","pid":{},"comm":""#, owner.pid)?;
                write_json_string_body(out, owner.comm.as_bytes())?;
                write!(out, "\"")?;
            }
            None => write!(out, r#","pid":null,"comm":null"#)?,
        }
        writeln!(out, r#","process_context":{}}}"#, event.task.process_context)
    }
}

fn write_optional(out: &mut impl Write, key: &str, value: Option<u64>) -> io::Result<()> {
    match value {
        Some(value) => write!(out, r#","{key}":{value}"#),
        None => write!(out, r#","{key}":null"#),
    }
}

/// Writes bytes as the inside of a JSON string: invalid UTF-8 becomes U+FFFD, and quotes,
/// backslashes and control characters are escaped.
pub fn write_json_string_body(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.write_all(b"\\\"")?,
            '\\' => out.write_all(b"\\\\")?,
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => write!(out, "{c}")?,
        }
    }
    Ok(())
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
    use crate::event::{Comm, Owner, Task, TcpState};

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
        }
    }

    #[test]
    fn json_line_matches_the_documented_schema() {
        let mut stream = Stream::new(Vec::new(), StreamFormat::Json, WallClock::now());
        let owner = Owner { pid: 1743, comm: Comm::new("py\"th\\on") };
        stream
            .event(
                &transition(),
                &Attribution { owner: Some(owner), old_state_ns: Some(1500), addresses: None },
            )
            .unwrap();
        let line = String::from_utf8(stream.out).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "transition");
        assert_eq!(value["ts_ns"], 5_000_000_123u64);
        assert_eq!(value["sk"], "0xffff888012342500");
        assert_eq!(value["family"], "ipv4");
        assert_eq!(value["local"], "127.0.0.1:8080");
        assert_eq!(value["remote"], "127.0.0.1:42020");
        assert_eq!(value["old"], "ESTABLISHED");
        assert_eq!(value["new"], "FIN_WAIT1");
        assert_eq!(value["pid"], 1743);
        assert_eq!(value["comm"], "py\"th\\on");
        assert_eq!(value["old_state_ns"], 1500);
        assert_eq!(value["process_context"], true);
    }

    #[test]
    fn unknown_owner_is_null_in_json_and_dash_in_text() {
        let unknown = Attribution { owner: None, old_state_ns: None, addresses: None };
        let mut json = Stream::new(Vec::new(), StreamFormat::Json, WallClock::now());
        json.event(&transition(), &unknown).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json.out).unwrap();
        assert!(value["pid"].is_null() && value["comm"].is_null());

        let mut text = Stream::new(Vec::new(), StreamFormat::Text, WallClock::now());
        text.event(&transition(), &unknown).unwrap();
        let line = String::from_utf8(text.out).unwrap();
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1..3], ["-", "-"], "{line}");
        assert!(line.contains("127.0.0.1:8080"), "{line}");
        assert!(line.contains("ESTABLISHED -> FIN_WAIT1"), "{line}");
        assert!(!line.contains("swapper"));
    }

    #[test]
    fn lost_events_line() {
        let mut json = Stream::new(Vec::new(), StreamFormat::Json, WallClock::now());
        json.lost(12).unwrap();
        assert_eq!(String::from_utf8(json.out).unwrap(), "{\"type\":\"lost\",\"count\":12}\n");
    }
}
