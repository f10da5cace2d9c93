//! Recordings: every raw event as JSON Lines (`--record FILE`), and reading them back for
//! `tcptrace replay`.
//!
//! ```text
//! {"type":"tcptrace_recording","version":1,"ephemeral_ports":[32768,60999],"realtime_offset_ns":…}
//! {"type":"transition","ts_ns":…,"sk":"0x…","local":"…","remote":"…","old":"…","new":"…","pid":…,"tid":…,"comm":"…","process_context":true,"cpu":0}
//! {"type":"time_wait_timer","event":"cancel","ts_ns":…,"sk":"0x…","timer":"0x…",…}
//! {"type":"reset","direction":"sent",…}
//! {"type":"lost","ts_ns":…,"count":3}
//! {"type":"end","ts_ns":…}
//! ```
//!
//! Unlike the `--json` stream, `pid`/`comm` here are the raw current task (attribution is
//! the engine's job on replay), and nothing is left out.

use std::{
    borrow::Cow,
    fmt,
    io::{self, BufRead, Write},
    net::SocketAddr,
};

use serde::Deserialize;

use crate::{
    event::{Comm, EventKind, Task, TcpEvent, TcpState},
    json_line::JsonLine,
    output::event_fields,
};

pub const FORMAT_VERSION: u32 = 1;
const HEADER_TYPE: &str = "tcptrace_recording";

/// What a recording says about the machine it was made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub ephemeral_ports: (u16, u16),
    /// CLOCK_REALTIME − CLOCK_MONOTONIC when recording started, to show times of day.
    pub realtime_offset_ns: i128,
}

/// Writes a recording. Buffered: call [`Recorder::flush`] with every batch.
pub struct Recorder<W: Write> {
    out: W,
    line: JsonLine,
}

impl<W: Write> Recorder<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Recorder<W>> {
        writeln!(
            out,
            r#"{{"type":"{HEADER_TYPE}","version":{},"ephemeral_ports":[{},{}],"realtime_offset_ns":{}}}"#,
            header.version,
            header.ephemeral_ports.0,
            header.ephemeral_ports.1,
            header.realtime_offset_ns
        )?;
        Ok(Recorder { out, line: JsonLine::new() })
    }

    pub fn event(&mut self, event: &TcpEvent) -> io::Result<()> {
        let line = self.line.clear();
        event_fields(line, event, event.addresses);
        line.raw(",\"pid\":").u64(u64::from(event.task.pid));
        line.raw(",\"tid\":").u64(u64::from(event.task.tid));
        line.raw(",\"comm\":").string(event.task.comm.as_bytes());
        line.raw(",\"process_context\":").bool(event.task.process_context);
        line.raw(",\"cpu\":").u64(u64::from(event.cpu)).raw("}");
        line.write_to(&mut self.out)
    }

    pub fn lost(&mut self, ts_ns: u64, count: u64) -> io::Result<()> {
        writeln!(self.out, r#"{{"type":"lost","ts_ns":{ts_ns},"count":{count}}}"#)
    }

    /// The last line: when tracing stopped (open TIME-WAITs are measured against it).
    pub fn end(&mut self, ts_ns: u64) -> io::Result<()> {
        writeln!(self.out, r#"{{"type":"end","ts_ns":{ts_ns}}}"#)?;
        self.out.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One item of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(TcpEvent),
    Lost { ts_ns: u64, count: u64 },
    End { ts_ns: u64 },
}

/// What went wrong where, for a person.
#[derive(Debug)]
pub struct ReadError {
    /// 1-based; 0 when the error is not about one line (I/O).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ReadError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    #[serde(rename = "type")]
    kind: String,
    version: u32,
    ephemeral_ports: (u16, u16),
    realtime_offset_ns: i128,
}

/// Every field any line may have; which are required depends on `type`.
#[derive(Deserialize, Default)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    ts_ns: Option<u64>,
    #[serde(borrow)]
    sk: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    direction: Option<Cow<'a, str>>,
    #[serde(borrow)]
    local: Option<Cow<'a, str>>,
    #[serde(borrow)]
    remote: Option<Cow<'a, str>>,
    #[serde(borrow)]
    old: Option<Cow<'a, str>>,
    #[serde(borrow)]
    new: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time_wait_timer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timer: Option<Cow<'a, str>>,
    timeout_jiffies: Option<u32>,
    pid: Option<u32>,
    tid: Option<u32>,
    #[serde(borrow)]
    comm: Option<Cow<'a, str>>,
    process_context: Option<bool>,
    cpu: Option<u8>,
    count: Option<u64>,
}

impl<'a> Line<'a> {
    /// A fast reading of the flat objects tcptrace writes: strings without escapes,
    /// numbers, booleans, `null`. `None` for anything else, which serde_json then reads
    /// (and reports on) in full.
    fn scan(text: &'a str) -> Option<Line<'a>> {
        let bytes = text.as_bytes();
        if bytes.first() != Some(&b'{') || memchr::memchr(b'\\', bytes).is_some() {
            return None; // an escape somewhere: serde_json reads it
        }
        // Without escapes every `"` opens or closes a key or a string. Everything split off
        // sits between ASCII delimiters, so `text[..]` is safe.
        let mut line = Line::default();
        let mut at = 1;
        let mut next_key = 0;
        loop {
            if bytes.get(at) != Some(&b'"') {
                return None;
            }
            // Keys nearly always come in the writer's order: try the expected ones with a
            // 16-byte compare before searching for the key's end.
            let ahead = sixteen_bytes(bytes, at + 1);
            let expected = KEY_PATTERNS[next_key..]
                .iter()
                .position(|&(pattern, mask)| ahead & mask == pattern);
            let key_end = match expected {
                Some(skipped) => {
                    next_key += skipped + 1;
                    at + 1 + KEYS[next_key - 1].len()
                }
                None => find_quote(bytes, at + 1)?,
            };
            if bytes.get(key_end + 1) != Some(&b':') {
                return None;
            }
            let key = &text[at + 1..key_end];
            at = key_end + 2;
            match bytes.get(at) {
                Some(b'"') => {
                    let end = find_quote(bytes, at + 1)?;
                    line.set_string(key, &text[at + 1..end])?;
                    at = end + 1;
                }
                Some(b't' | b'f') => {
                    let (value, len) = match &bytes[at..] {
                        rest if rest.starts_with(b"true") => (true, 4),
                        rest if rest.starts_with(b"false") => (false, 5),
                        _ => return None,
                    };
                    line.set_bool(key, value)?;
                    at += len;
                }
                _ => {
                    let (value, end) = number(bytes, at)?;
                    line.set_number(key, value)?;
                    at = end;
                }
            }
            match bytes.get(at) {
                Some(b',') => at += 1,
                Some(b'}') if at + 1 == bytes.len() => return Some(line),
                _ => return None,
            }
        }
    }

    fn set_string(&mut self, key: &str, value: &'a str) -> Option<()> {
        let slot = match key {
            "type" => {
                self.kind = Cow::Borrowed(value);
                return Some(());
            }
            "sk" => &mut self.sk,
            "event" => &mut self.event,
            "direction" => &mut self.direction,
            "local" => &mut self.local,
            "remote" => &mut self.remote,
            "old" => &mut self.old,
            "new" => &mut self.new,
            "time_wait_timer" => &mut self.time_wait_timer,
            "timer" => &mut self.timer,
            "comm" => &mut self.comm,
            "family" => return Some(()),
            _ => return None,
        };
        *slot = Some(Cow::Borrowed(value));
        Some(())
    }

    fn set_number(&mut self, key: &str, value: u64) -> Option<()> {
        match key {
            "ts_ns" => self.ts_ns = Some(value),
            "count" => self.count = Some(value),
            "pid" => self.pid = Some(value.try_into().ok()?),
            "tid" => self.tid = Some(value.try_into().ok()?),
            "timeout_jiffies" => self.timeout_jiffies = Some(value.try_into().ok()?),
            "cpu" => self.cpu = Some(value.try_into().ok()?),
            _ => return None,
        }
        Some(())
    }

    fn set_bool(&mut self, key: &str, value: bool) -> Option<()> {
        (key == "process_context").then(|| self.process_context = Some(value))
    }
}

/// Every key of a record, in the order tcptrace writes them.
const KEYS: [&str; 19] = [
    "type",
    "event",
    "direction",
    "ts_ns",
    "sk",
    "family",
    "local",
    "remote",
    "old",
    "new",
    "time_wait_timer",
    "timer",
    "timeout_jiffies",
    "pid",
    "tid",
    "comm",
    "process_context",
    "cpu",
    "count",
];

/// Each key of [`KEYS`] with its closing quote, as a little-endian 16-byte pattern and the
/// mask of its bytes (the longest keys have 15 characters).
const KEY_PATTERNS: [(u128, u128); KEYS.len()] = {
    let mut patterns = [(0, 0); KEYS.len()];
    let mut k = 0;
    while k < KEYS.len() {
        let key = KEYS[k].as_bytes();
        assert!(key.len() < 16);
        let mut pattern = (b'"' as u128) << (8 * key.len());
        let mut mask = 0xff << (8 * key.len());
        let mut i = 0;
        while i < key.len() {
            pattern |= (key[i] as u128) << (8 * i);
            mask |= 0xff << (8 * i);
            i += 1;
        }
        patterns[k] = (pattern, mask);
        k += 1;
    }
    patterns
};

/// The 16 bytes at `from` as a little-endian number, zero-padded past the end.
fn sixteen_bytes(bytes: &[u8], from: usize) -> u128 {
    let mut block = [0u8; 16];
    let rest = bytes.get(from..).unwrap_or_default();
    match rest.first_chunk::<16>() {
        Some(chunk) => block = *chunk,
        None => block[..rest.len()].copy_from_slice(rest),
    }
    u128::from_le_bytes(block)
}

/// The decimal number at `from` (no sign, no fraction, no exponent, no leading zero, no
/// overflow: anything else is left to serde_json): (value, where its digits end).
fn number(bytes: &[u8], from: usize) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut at = from;
    while let Some(&digit) = bytes.get(at)
        && digit.is_ascii_digit()
    {
        value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
        at += 1;
    }
    let leading_zero = bytes.get(from) == Some(&b'0') && at - from > 1;
    (at > from && !leading_zero).then_some((value, at))
}

/// Where the first `"` at or after `from` is. `memchr` looks at the rest of the line many
/// bytes at once, so a search costs about the same whatever the string's length.
fn find_quote(bytes: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'"', bytes.get(from..)?).map(|n| from + n)
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("missing field `{field}`"))
}

fn parse_hex(text: &str, field: &str) -> Result<u64, String> {
    text.strip_prefix("0x")
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .ok_or_else(|| format!("`{field}` is not a 0x… hex address: {text:?}"))
}

fn parse_state(text: &str, field: &str) -> Result<TcpState, String> {
    TcpState::from_name(text).ok_or_else(|| format!("`{field}` is not a TCP state: {text:?}"))
}

fn parse_address(text: &str, field: &str) -> Result<SocketAddr, String> {
    parse_ipv4_address(text)
        .or_else(|| text.parse().ok())
        .ok_or_else(|| format!("`{field}` is not an IP:PORT address: {text:?}"))
}

/// `a.b.c.d:port`, the usual case, without the general parser's cost. Anything else
/// (IPv6, leading zeros, out of range) is left to the general parser.
fn parse_ipv4_address(text: &str) -> Option<SocketAddr> {
    let bytes = text.as_bytes();
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (i, octet) in octets.iter_mut().enumerate() {
        let (value, end) = decimal(bytes, at)?;
        *octet = u8::try_from(value).ok()?;
        if bytes.get(end) != Some(if i < 3 { &b'.' } else { &b':' }) {
            return None;
        }
        at = end + 1;
    }
    let (port, end) = decimal(bytes, at)?;
    let port = u16::try_from(port).ok().filter(|_| end == bytes.len())?;
    Some(SocketAddr::from((octets, port)))
}

/// 1–5 digits at `from` without a leading zero: (value, where they end).
fn decimal(bytes: &[u8], from: usize) -> Option<(u32, usize)> {
    let mut value = 0;
    let mut at = from;
    while let Some(&digit) = bytes.get(at)
        && digit.is_ascii_digit()
        && at - from < 5
    {
        value = value * 10 + u32::from(digit - b'0');
        at += 1;
    }
    let leading_zero = bytes.get(from) == Some(&b'0') && at - from > 1;
    (at > from && !leading_zero).then_some((value, at))
}

impl Line<'_> {
    fn into_item(self) -> Result<Item, String> {
        let ts_ns = required(self.ts_ns, "ts_ns")?;
        let kind = match self.kind.as_ref() {
            "lost" => return Ok(Item::Lost { ts_ns, count: required(self.count, "count")? }),
            "end" => return Ok(Item::End { ts_ns }),
            "transition" => EventKind::Transition {
                old: parse_state(&required(self.old, "old")?, "old")?,
                new: parse_state(&required(self.new, "new")?, "new")?,
                time_wait_timer: self
                    .time_wait_timer
                    .map(|t| parse_hex(&t, "time_wait_timer"))
                    .transpose()?,
            },
            "time_wait_timer" => {
                let timer = parse_hex(&required(self.timer, "timer")?, "timer")?;
                match required(self.event, "event")?.as_ref() {
                    "rearm" => EventKind::TimeWaitRearm {
                        timer,
                        timeout_jiffies: required(self.timeout_jiffies, "timeout_jiffies")?,
                    },
                    "cancel" => EventKind::TimeWaitCancel { timer },
                    "expire" => EventKind::TimeWaitExpire { timer },
                    other => return Err(format!("unknown time_wait_timer event {other:?}")),
                }
            }
            "reset" => match required(self.direction, "direction")?.as_ref() {
                "sent" => EventKind::ResetSent,
                "received" => EventKind::ResetReceived,
                other => return Err(format!("unknown reset direction {other:?}")),
            },
            HEADER_TYPE => return Err("a second recording header".into()),
            other => return Err(format!("unknown record type {other:?}")),
        };
        let addresses = match (self.local, self.remote) {
            (Some(local), Some(remote)) => {
                Some((parse_address(&local, "local")?, parse_address(&remote, "remote")?))
            }
            (None, None) => None,
            _ => return Err("`local` and `remote` come together".into()),
        };
        if addresses.is_none() && matches!(kind, EventKind::Transition { .. }) {
            return Err("a transition needs `local` and `remote`".into());
        }
        Ok(Item::Event(TcpEvent {
            ts_ns,
            sk: parse_hex(&required(self.sk, "sk")?, "sk")?,
            kind,
            addresses,
            task: Task {
                pid: required(self.pid, "pid")?,
                tid: required(self.tid, "tid")?,
                comm: Comm::new(&required(self.comm, "comm")?),
                process_context: required(self.process_context, "process_context")?,
            },
            cpu: self.cpu.unwrap_or(0),
        }))
    }
}

/// Reads a recording line by line.
pub struct Reader<R: BufRead> {
    input: R,
    line_number: usize,
    /// A line that straddles the end of the input's buffer, gathered.
    partial: Vec<u8>,
    pub header: Header,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Reader<R>, ReadError> {
        let mut buffer = String::new();
        let not_ours = |why: String| ReadError {
            line: 1,
            message: format!(
                "this is not a tcptrace recording ({why}); make one with `tcptrace --record FILE`"
            ),
        };
        let read = input.read_line(&mut buffer).map_err(|error| match error.kind() {
            io::ErrorKind::InvalidData => not_ours("not text".into()),
            _ => ReadError { line: 0, message: error.to_string() },
        })?;
        if read == 0 {
            return Err(not_ours("the file is empty".into()));
        }
        let value: serde_json::Value =
            serde_json::from_str(&buffer).map_err(|e| not_ours(format!("not JSON: {e}")))?;
        if value.get("type").and_then(|t| t.as_str()) != Some(HEADER_TYPE) {
            return Err(not_ours(format!("no \"type\":\"{HEADER_TYPE}\" header")));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(ReadError {
                line: 1,
                message: format!(
                    "recording format version {version} is not supported: this tcptrace reads version {FORMAT_VERSION}"
                ),
            });
        }
        let header: HeaderLine =
            serde_json::from_value(value).map_err(|e| not_ours(format!("bad header: {e}")))?;
        debug_assert_eq!(header.kind, HEADER_TYPE);
        let header = Header {
            version: header.version,
            ephemeral_ports: header.ephemeral_ports,
            realtime_offset_ns: header.realtime_offset_ns,
        };
        Ok(Reader { input, line_number: 1, partial: Vec::new(), header })
    }

    /// The next item; `None` at the end of the file.
    pub fn next_item(&mut self) -> Option<Result<Item, ReadError>> {
        loop {
            let line = self.line_number + 1;
            let available = match self.input.fill_buf() {
                Ok(available) => available,
                Err(error) => return Some(Err(ReadError { line, message: error.to_string() })),
            };
            // Lines are read where they sit in the input's buffer; only one that straddles
            // the buffer's end is gathered in `partial` first.
            let (parsed, used) = match memchr::memchr(b'\n', available) {
                Some(end) if self.partial.is_empty() => {
                    (parse_line(&available[..end], true), end + 1)
                }
                Some(end) => {
                    self.partial.extend_from_slice(&available[..end]);
                    (parse_line(&self.partial, true), end + 1)
                }
                None if available.is_empty() && self.partial.is_empty() => return None,
                None if available.is_empty() => (parse_line(&self.partial, false), 0),
                None => {
                    let used = available.len();
                    self.partial.extend_from_slice(available);
                    self.input.consume(used);
                    continue;
                }
            };
            self.input.consume(used);
            self.partial.clear();
            self.line_number = line;
            match parsed {
                Some(result) => {
                    return Some(result.map_err(|message| ReadError { line, message }));
                }
                None => continue, // a blank line
            }
        }
    }
}

/// One line's item; `None` for a blank line. `complete`: the line ended with a newline.
fn parse_line(bytes: &[u8], complete: bool) -> Option<Result<Item, String>> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Some(Err("not text (invalid UTF-8): the file is corrupt".into()));
    };
    let text = text.trim_end();
    if text.is_empty() {
        return None;
    }
    let parsed = Line::scan(text)
        .map(Ok)
        .unwrap_or_else(|| serde_json::from_str::<Line<'_>>(text))
        .map_err(|error| {
            if !complete && error.is_eof() {
                "the line is cut short: the recording is truncated".to_owned()
            } else {
                format!("not a valid record: {error}")
            }
        });
    Some(parsed.and_then(Line::into_item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header { version: FORMAT_VERSION, ephemeral_ports: (32768, 60999), realtime_offset_ns: 42 }
    }

    fn events() -> Vec<TcpEvent> {
        let addresses = Some(("127.0.0.1:8080".parse().unwrap(), "[::1]:42020".parse().unwrap()));
        let task =
            Task { pid: 7, tid: 8, comm: Comm::new("we\"ird\\na\tme"), process_context: true };
        let kinds = [
            EventKind::Transition {
                old: TcpState::FinWait2,
                new: TcpState::Closed,
                time_wait_timer: Some(0xffff_1234),
            },
            EventKind::Transition {
                old: TcpState::Closed,
                new: TcpState::SynSent,
                time_wait_timer: None,
            },
            EventKind::TimeWaitRearm { timer: 0xabc, timeout_jiffies: 15000 },
            EventKind::TimeWaitCancel { timer: 0xabc },
            EventKind::TimeWaitExpire { timer: 0xabc },
            EventKind::ResetSent,
            EventKind::ResetReceived,
        ];
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| TcpEvent {
                ts_ns: 1000 + i as u64,
                sk: 0xffff_8880_0000_0000 + i as u64,
                kind,
                addresses: if matches!(kind, EventKind::Transition { .. } | EventKind::ResetSent) {
                    addresses
                } else {
                    None
                },
                task,
                cpu: 1,
            })
            .collect()
    }

    fn record(events: &[TcpEvent]) -> Vec<u8> {
        let mut recorder = Recorder::new(Vec::new(), &header()).unwrap();
        for event in events {
            recorder.event(event).unwrap();
        }
        recorder.lost(2000, 3).unwrap();
        recorder.end(3000).unwrap();
        recorder.out
    }

    fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Item>), ReadError> {
        let mut reader = Reader::new(bytes)?;
        let mut items = Vec::new();
        while let Some(item) = reader.next_item() {
            items.push(item?);
        }
        Ok((reader.header, items))
    }

    #[test]
    fn every_event_kind_round_trips() {
        let events = events();
        let (read_header, items) = read_all(&record(&events)).unwrap();
        assert_eq!(read_header, header());
        let mut expected: Vec<Item> = events.into_iter().map(Item::Event).collect();
        expected.push(Item::Lost { ts_ns: 2000, count: 3 });
        expected.push(Item::End { ts_ns: 3000 });
        assert_eq!(items, expected);
    }

    fn error_of(bytes: &[u8]) -> String {
        read_all(bytes).unwrap_err().to_string()
    }

    #[test]
    fn addresses_read_fast_read_as_the_general_parser_does() {
        for text in ["127.0.0.1:8080", "10.0.0.255:0", "255.255.255.255:65535", "[::1]:443"] {
            assert_eq!(parse_address(text, "local"), Ok(text.parse().unwrap()), "{text}");
        }
        for text in ["01.0.0.1:80", "256.0.0.1:80", "1.2.3.4:65536", "1.2.3:80", "1.2.3.4.5:80"] {
            assert_eq!(parse_ipv4_address(text), None, "{text}");
            assert!(parse_address(text, "local").is_err(), "{text}");
        }
    }

    #[test]
    fn the_fast_reader_reads_what_the_recorder_writes() {
        let bytes = record(&events());
        let text = String::from_utf8(bytes).unwrap();
        for line in text.lines().skip(1) {
            let Some(fast) = Line::scan(line) else {
                assert!(line.contains('\\'), "fell back to serde for {line}");
                continue;
            };
            let slow: Line<'_> = serde_json::from_str(line).unwrap();
            assert_eq!(format!("{:?}", fast.into_item()), format!("{:?}", slow.into_item()));
        }
        assert!(
            Line::scan(r#"{"type":"lost","ts_ns":1,"count":2} "#).is_none(),
            "odd spacing: serde"
        );
        assert!(Line::scan(r#"{"type":"end","ts_ns":1,"x":{"y":1}}"#).is_none(), "nesting: serde");
        let plain = r#"{"type":"transition","ts_ns":1000050000,"sk":"0xffff888000000000","local":"127.0.0.1:32768","remote":"127.0.0.1:8080","old":"SYN_SENT","new":"ESTABLISHED","pid":7,"tid":7,"comm":"curl","process_context":false,"cpu":0}"#;
        let fast = Line::scan(plain).expect("the common case is read fast");
        let slow: Line<'_> = serde_json::from_str(plain).unwrap();
        let expected = format!("{:?}", slow.into_item());
        assert_eq!(format!("{:?}", fast.into_item()), expected);
        // Keys in another order are still read fast, to the same item.
        let reordered = r#"{"cpu":0,"new":"ESTABLISHED","type":"transition","comm":"curl","sk":"0xffff888000000000","old":"SYN_SENT","ts_ns":1000050000,"remote":"127.0.0.1:8080","tid":7,"local":"127.0.0.1:32768","process_context":false,"pid":7}"#;
        let fast = Line::scan(reordered).expect("reordered keys are read fast");
        assert_eq!(format!("{:?}", fast.into_item()), expected);
        // Numbers the fast path doesn't read exactly as JSON does are left to serde_json.
        for odd in ["1e3", "-1", "18446744073709551616", "007", "1.5", "null", "tru"] {
            let line = format!(r#"{{"type":"lost","ts_ns":1,"count":{odd}}}"#);
            assert!(Line::scan(&line).is_none(), "{line}");
        }
    }

    #[test]
    fn wrong_files_are_named_as_such() {
        assert!(error_of(b"").contains("not a tcptrace recording"));
        assert!(error_of(b"hello\n").contains("line 1: this is not a tcptrace recording"));
        assert!(error_of(b"{\"type\":\"transition\"}\n").contains("not a tcptrace recording"));
        let newer = br#"{"type":"tcptrace_recording","version":2,"ephemeral_ports":[1,2],"realtime_offset_ns":0}"#;
        assert!(error_of(newer).contains("version 2 is not supported"), "{}", error_of(newer));
    }

    #[test]
    fn truncated_and_corrupt_lines_name_the_line() {
        let good = record(&events());
        let cut = &good[..good.len() - 30];
        let error = error_of(cut);
        assert!(error.starts_with("line 9:") && error.contains("truncated"), "{error}");

        let text = String::from_utf8(good.clone()).unwrap();
        let corrupt = text.replacen("\"old\":\"FIN_WAIT2\"", "\"old\":\"FIN_WAIT9\"", 1);
        assert_eq!(error_of(corrupt.as_bytes()), "line 2: `old` is not a TCP state: \"FIN_WAIT9\"");
        let garbage = text.replacen("{\"type\":\"reset\"", "{\"type\":\"reset\"}}}", 1);
        assert!(error_of(garbage.as_bytes()).starts_with("line 7: not a valid record"));
        let missing = text.replacen("\"sk\":", "\"skk\":", 1);
        assert_eq!(error_of(missing.as_bytes()), "line 2: missing field `sk`");
    }
}
