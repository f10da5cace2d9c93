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
    render::json_line::JsonLine,
    render::stream::event_fields,
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
#[derive(Deserialize)]
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

/// Reads a line laid out exactly as [`Recorder`] writes it: its keys in its order, ASCII
/// strings without escapes, plain numbers. `None` for anything else, which serde_json then
/// reads (and reports on) in full. Replay spends most of its reading time here.
fn read_canonical(bytes: &[u8]) -> Option<Item> {
    let mut line = Cursor { bytes, at: 0 };
    // Most lines are transitions: a compare of known length tells them at once.
    let kind = if line.optional(b"{\"type\":\"transition\"") {
        Kind::Transition
    } else {
        line.expect(b"{\"type\":")?;
        match line.string()? {
            b"lost" => {
                let ts_ns = line.number_field(b",\"ts_ns\":")?;
                let count = line.number_field(b",\"count\":")?;
                return line.end().then_some(Item::Lost { ts_ns, count });
            }
            b"end" => {
                let ts_ns = line.number_field(b",\"ts_ns\":")?;
                return line.end().then_some(Item::End { ts_ns });
            }
            b"transition" => Kind::Transition,
            b"time_wait_timer" => {
                line.expect(b",\"event\":")?;
                match line.string()? {
                    b"rearm" => Kind::Rearm,
                    b"cancel" => Kind::Cancel,
                    b"expire" => Kind::Expire,
                    _ => return None,
                }
            }
            b"reset" => {
                line.expect(b",\"direction\":")?;
                match line.string()? {
                    b"sent" => Kind::ResetSent,
                    b"received" => Kind::ResetReceived,
                    _ => return None,
                }
            }
            _ => return None,
        }
    };
    let ts_ns = line.number_field(b",\"ts_ns\":")?;
    line.expect(b",\"sk\":")?;
    let sk = line.hex()?;
    // The addresses say the family.
    if !line.optional(b",\"family\":\"ipv4\"") && line.optional(b",\"family\":") {
        line.string()?;
    }
    let addresses = if line.optional(b",\"local\":") {
        let local = line.address()?;
        line.expect(b",\"remote\":")?;
        Some((local, line.address()?))
    } else {
        None
    };
    let kind = match kind {
        Kind::Transition => {
            addresses?;
            line.expect(b",\"old\":")?;
            let old = line.state()?;
            line.expect(b",\"new\":")?;
            let new = line.state()?;
            let time_wait_timer =
                if line.optional(b",\"time_wait_timer\":") { Some(line.hex()?) } else { None };
            EventKind::Transition { old, new, time_wait_timer }
        }
        Kind::Rearm | Kind::Cancel | Kind::Expire => {
            line.expect(b",\"timer\":")?;
            let timer = line.hex()?;
            match kind {
                Kind::Rearm => {
                    let timeout = line.number_field(b",\"timeout_jiffies\":")?;
                    EventKind::TimeWaitRearm { timer, timeout_jiffies: timeout.try_into().ok()? }
                }
                Kind::Cancel => EventKind::TimeWaitCancel { timer },
                _ => EventKind::TimeWaitExpire { timer },
            }
        }
        Kind::ResetSent => EventKind::ResetSent,
        Kind::ResetReceived => EventKind::ResetReceived,
    };
    let pid = line.number_field(b",\"pid\":")?.try_into().ok()?;
    let tid = line.number_field(b",\"tid\":")?.try_into().ok()?;
    line.expect(b",\"comm\":")?;
    // ASCII (`string` leaves anything else to serde_json), so always text.
    let comm = Comm::new(std::str::from_utf8(line.string()?).ok()?);
    line.expect(b",\"process_context\":")?;
    let process_context = line.boolean()?;
    let cpu = line.number_field(b",\"cpu\":")?.try_into().ok()?;
    let task = Task { pid, tid, comm, process_context };
    line.end().then_some(Item::Event(TcpEvent { ts_ns, sk, kind, addresses, task, cpu }))
}

/// The kinds of event line, before their fields are read.
#[derive(Clone, Copy)]
enum Kind {
    Transition,
    Rearm,
    Cancel,
    Expire,
    ResetSent,
    ResetReceived,
}

/// Each byte's value as a hex digit, or [`NOT_HEX`].
const HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            digit @ b'0'..=b'9' => digit - b'0',
            digit @ b'a'..=b'f' => digit - b'a' + 10,
            digit @ b'A'..=b'F' => digit - b'A' + 10,
            _ => NOT_HEX,
        };
        byte += 1;
    }
    table
};
const NOT_HEX: u8 = 0x80;

/// What ends a plain string: its closing quote, or what makes it serde_json's.
fn is_special(byte: u8) -> bool {
    matches!(byte, b'"' | b'\\' | 0..0x20 | 0x80..)
}

/// The high bit of the first special byte in `word` (little-endian) and maybe of some
/// after it, where a borrow runs on: only the first one counts.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (quote | backslash | control | word) & HIGH
}

/// A position in a line, for [`read_canonical`]. Each method reads one thing at the
/// position and moves past it, or says `None` (or `false`) when it is not there.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Of a known length, the compare is a few loads, not a call to `memcmp`.
    fn optional<const N: usize>(&mut self, literal: &[u8; N]) -> bool {
        let found = self.bytes.get(self.at..self.at + N) == Some(literal);
        if found {
            self.at += N;
        }
        found
    }

    fn expect<const N: usize>(&mut self, literal: &[u8; N]) -> Option<()> {
        self.optional(literal).then_some(())
    }

    /// The closing `}`, with nothing after it.
    fn end(&mut self) -> bool {
        self.optional(b"}") && self.at == self.bytes.len()
    }

    /// A string of ASCII without escapes or control characters (anything else:
    /// serde_json). Looked at 8 bytes at a time.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b"\"")?;
        let start = self.at;
        while let Some(word) = self.bytes.get(self.at..).and_then(|rest| rest.first_chunk::<8>()) {
            let special = special_bytes(u64::from_le_bytes(*word));
            if special != 0 {
                self.at += special.trailing_zeros() as usize / 8;
                break;
            }
            self.at += 8;
        }
        // Here at the first special byte, or within 8 bytes of the end of the line.
        while !is_special(*self.bytes.get(self.at)?) {
            self.at += 1;
        }
        (self.bytes[self.at] == b'"').then(|| {
            self.at += 1;
            &self.bytes[start..self.at - 1]
        })
    }

    /// `literal` then a decimal number of at most 19 digits (so it can't overflow). A sign,
    /// fraction or exponent fails the next field's or the end's check.
    fn number_field<const N: usize>(&mut self, literal: &[u8; N]) -> Option<u64> {
        self.expect(literal)?;
        let (value, end) = decimal(self.bytes, self.at, 19)?;
        self.at = end;
        Some(value)
    }

    /// `"0x…"`: 1 to 16 hex digits.
    fn hex(&mut self) -> Option<u64> {
        self.expect(b"\"0x")?;
        let start = self.at;
        let mut value = 0u64;
        loop {
            let nibble = HEX_DIGITS[usize::from(*self.bytes.get(self.at)?)];
            if nibble == NOT_HEX {
                break;
            }
            value = value << 4 | u64::from(nibble);
            self.at += 1;
        }
        (1..=16).contains(&(self.at - start)).then_some(())?;
        self.expect(b"\"").map(|()| value)
    }

    /// `"a.b.c.d:port"` read straight off, or any other address through the general parser.
    fn address(&mut self) -> Option<SocketAddr> {
        let open = self.at;
        self.expect(b"\"")?;
        if let Some((address, end)) = ipv4_address(self.bytes, self.at)
            && self.bytes.get(end) == Some(&b'"')
        {
            self.at = end + 1;
            return Some(address);
        }
        self.at = open;
        std::str::from_utf8(self.string()?).ok()?.parse().ok()
    }

    fn state(&mut self) -> Option<TcpState> {
        TcpState::from_name(self.string()?)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.optional(b"true") { Some(true) } else { self.expect(b"false").map(|()| false) }
    }
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
    parse_ipv4_address(text.as_bytes())
        .or_else(|| text.parse().ok())
        .ok_or_else(|| format!("`{field}` is not an IP:PORT address: {text:?}"))
}

/// `a.b.c.d:port`, the usual case, without the general parser's cost. Anything else
/// (IPv6, leading zeros, out of range) is left to the general parser.
fn parse_ipv4_address(bytes: &[u8]) -> Option<SocketAddr> {
    ipv4_address(bytes, 0).filter(|&(_, end)| end == bytes.len()).map(|(address, _)| address)
}

/// `a.b.c.d:port` at `from`: (the address, where it ends).
fn ipv4_address(bytes: &[u8], from: usize) -> Option<(SocketAddr, usize)> {
    let mut octets = [0u8; 4];
    let mut at = from;
    for (i, octet) in octets.iter_mut().enumerate() {
        let (value, end) = decimal(bytes, at, 3)?;
        *octet = u8::try_from(value).ok()?;
        if bytes.get(end) != Some(if i < 3 { &b'.' } else { &b':' }) {
            return None;
        }
        at = end + 1;
    }
    let (port, end) = decimal(bytes, at, 5)?;
    Some((SocketAddr::from((octets, u16::try_from(port).ok()?)), end))
}

/// The decimal number at `from`: 1 to `most` digits (`None` for more), without a leading
/// zero: (value, where its digits end).
fn decimal(bytes: &[u8], from: usize, most: usize) -> Option<(u64, usize)> {
    let mut value = 0;
    let mut at = from;
    while let Some(&digit) = bytes.get(at)
        && digit.is_ascii_digit()
    {
        if at - from == most {
            return None;
        }
        value = value * 10 + u64::from(digit - b'0');
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
    if let Some(item) = read_canonical(bytes) {
        return Some(Ok(item));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Some(Err("not text (invalid UTF-8): the file is corrupt".into()));
    };
    let text = text.trim_end();
    if text.is_empty() {
        return None;
    }
    let parsed = serde_json::from_str::<Line<'_>>(text).map_err(|error| {
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
        for text in [
            "01.0.0.1:80",
            "256.0.0.1:80",
            "1234.0.0.1:80",
            "1.2.3.4:65536",
            "1.2.3:80",
            "1.2.3.4.5:80",
        ] {
            assert_eq!(parse_ipv4_address(text.as_bytes()), None, "{text}");
            assert!(parse_address(text, "local").is_err(), "{text}");
        }
    }

    /// serde_json's reading of a line, which the fast reader must match.
    fn slow(line: &str) -> Result<Item, String> {
        serde_json::from_str::<Line<'_>>(line).map_err(|e| e.to_string())?.into_item()
    }

    #[test]
    fn the_fast_reader_reads_what_the_recorder_writes() {
        let mut events = events();
        // A plain name too: the one in `events()` needs escapes, which go to serde_json.
        events.push(TcpEvent {
            task: Task { comm: Comm::new("curl"), ..events[0].task },
            ..events[0]
        });
        let text = String::from_utf8(record(&events)).unwrap();
        let mut fast_lines = 0;
        for line in text.lines().skip(1) {
            let Some(fast) = read_canonical(line.as_bytes()) else {
                assert!(line.contains('\\'), "fell back to serde for {line}");
                continue;
            };
            assert_eq!(Ok(fast), slow(line), "{line}");
            fast_lines += 1;
        }
        assert_eq!(fast_lines, 3, "the plain-named event, `lost` and `end`");
        let plain = r#"{"type":"transition","ts_ns":1000050000,"sk":"0xffff888000000000","local":"127.0.0.1:32768","remote":"127.0.0.1:8080","old":"SYN_SENT","new":"ESTABLISHED","pid":7,"tid":7,"comm":"curl","process_context":false,"cpu":0}"#;
        let fast = read_canonical(plain.as_bytes()).expect("the common case is read fast");
        assert_eq!(Ok(fast.clone()), slow(plain));
        // A name longer than the kernel keeps is cut the same way on both paths.
        let long = plain.replace("\"curl\"", "\"a-very-long-command-name\"");
        assert_eq!(read_canonical(long.as_bytes()).map(Ok), Some(slow(&long)));
        // Anything laid out otherwise is serde_json's, which reads it to the same item.
        let reordered = r#"{"cpu":0,"new":"ESTABLISHED","type":"transition","comm":"curl","sk":"0xffff888000000000","old":"SYN_SENT","ts_ns":1000050000,"remote":"127.0.0.1:8080","tid":7,"local":"127.0.0.1:32768","process_context":false,"pid":7}"#;
        assert!(read_canonical(reordered.as_bytes()).is_none());
        assert_eq!(slow(reordered), Ok(fast));
        for other in [
            r#"{"type":"lost","ts_ns":1,"count":2} "#,
            r#"{"type":"lost", "ts_ns":1,"count":2}"#,
            r#"{"type":"end","ts_ns":1,"x":{"y":1}}"#,
            r#"{"type":"end","ts_ns":1,"ts_ns":2}"#,
            r#"{"type":"transition","ts_ns":1,"sk":"0x1","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"a","process_context":true,"cpu":0}"#,
            r#"{"type":"transition","ts_ns":1,"sk":"0x1","local":"127.0.0.1:1","remote":"127.0.0.1:2","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"é","process_context":true,"cpu":0}"#,
            r#"{"type":"transition","ts_ns":1,"sk":"0x1","local":"127.0.0.1:1","remote":"127.0.0.1:2","old":"CLOSED","new":"SYN_SENT","pid":1,"tid":1,"comm":"a","process_context":true,"cpu":256}"#,
            r#"{"type":"time_wait_timer","event":"rearm","ts_ns":1,"sk":"0x1","timer":"0x12345678901234567","timeout_jiffies":1,"pid":1,"tid":1,"comm":"a","process_context":true,"cpu":0}"#,
        ] {
            assert!(read_canonical(other.as_bytes()).is_none(), "{other}");
        }
        // Numbers the fast path doesn't read exactly as JSON does are left to serde_json.
        for odd in [
            "1e3",
            "-1",
            "18446744073709551616",
            "12345678901234567890",
            "007",
            "1.5",
            "null",
            "tru",
        ] {
            let line = format!(r#"{{"type":"lost","ts_ns":1,"count":{odd}}}"#);
            assert!(read_canonical(line.as_bytes()).is_none(), "{line}");
        }
        let most = format!(r#"{{"type":"lost","ts_ns":0,"count":{}}}"#, 10u64.pow(19) - 1);
        assert_eq!(
            read_canonical(most.as_bytes()),
            Some(Item::Lost { ts_ns: 0, count: 10u64.pow(19) - 1 })
        );
    }

    #[test]
    fn strings_end_at_their_quote_and_leave_escapes_and_non_ascii_to_serde() {
        for position in 0..20 {
            for byte in 0..=255u8 {
                let mut text = b"\"".to_vec();
                text.extend(std::iter::repeat_n(b'a', position));
                text.push(byte);
                text.extend_from_slice(b"bcdefghijk\"");
                let read = Cursor { bytes: &text, at: 0 }.string();
                let expected = match byte {
                    b'"' => Some(&text[1..=position]),
                    b'\\' | 0..0x20 | 0x80.. => None,
                    _ => Some(&text[1..text.len() - 1]),
                };
                assert_eq!(read, expected, "byte {byte:#x} at {position}");
            }
        }
        assert_eq!(Cursor { bytes: b"\"abc", at: 0 }.string(), None, "unterminated");
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
