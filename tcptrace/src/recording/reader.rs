//! Reading a recording back, line by line: the fast reader for the recorder's own layout,
//! serde and the schema's types for anything else.

use std::io::{self, BufRead};

use super::{Item, ReadError, scan::read_canonical};
use crate::{
    event::{Comm, Counters, EventKind, Home, Owner, SeenSocket, Task, TcpEvent},
    names::{Cgroup, Learned},
    schema::{
        Addresses, CgroupPath, End, Hex, Lost, NetnsName, READABLE_VERSIONS, RecordedTask,
        RecordingHeader, RecordingLine, SnapshotEvent, SnapshotMark, TimerEvent,
    },
};

const HEADER_TYPE: &str = "tcptrace_recording";

/// Reads a recording line by line.
pub struct Reader<R: BufRead> {
    input: R,
    line_number: usize,
    /// A line that straddles the end of the input's buffer, gathered.
    partial: Vec<u8>,
    pub header: RecordingHeader,
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
        // The type and version first, so that another file or version is named as such.
        let value: serde_json::Value =
            serde_json::from_str(&buffer).map_err(|e| not_ours(format!("not JSON: {e}")))?;
        if value.get("type").and_then(|t| t.as_str()) != Some(HEADER_TYPE) {
            return Err(not_ours(format!("no \"type\":\"{HEADER_TYPE}\" header")));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if !READABLE_VERSIONS.iter().any(|&readable| u64::from(readable) == version) {
            let readable: Vec<String> = READABLE_VERSIONS.iter().map(u32::to_string).collect();
            return Err(ReadError {
                line: 1,
                message: format!(
                    "recording format version {version} is not supported: this tcptrace reads versions {}",
                    readable.join(" and ")
                ),
            });
        }
        let header = match serde_json::from_str::<RecordingLine<'_>>(&buffer) {
            Ok(RecordingLine::TcptraceRecording(header)) => header,
            Ok(_) => unreachable!("the type was checked above"),
            Err(error) => return Err(not_ours(format!("bad header: {error}"))),
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
pub(super) fn parse_line(bytes: &[u8], complete: bool) -> Option<Result<Item, String>> {
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
    Some(read_with_serde(text, complete))
}

/// A line read through the schema's types.
pub(super) fn read_with_serde(text: &str, complete: bool) -> Result<Item, String> {
    let line = serde_json::from_str::<RecordingLine<'_>>(text).map_err(|error| {
        if !complete && error.is_eof() {
            "the line is cut short: the recording is truncated".to_owned()
        } else {
            format!("not a valid record: {error}")
        }
    })?;
    into_item(line)
}

fn into_item(line: RecordingLine<'_>) -> Result<Item, String> {
    let missing = |field: &str| format!("not a valid record: missing field `{field}`");
    let mut counters = None;
    let (ts_ns, sk, kind, addresses, netns, task) = match line {
        RecordingLine::TcptraceRecording(_) => return Err("a second recording header".into()),
        RecordingLine::Lost(Lost { ts_ns, count }) => {
            return Ok(Item::Lost { ts_ns: ts_ns.ok_or_else(|| missing("ts_ns"))?, count });
        }
        RecordingLine::End(End { ts_ns }) => return Ok(Item::End { ts_ns }),
        RecordingLine::Netns(NetnsName { inode, name }) => {
            return Ok(Item::Name(Learned::NetnsName { inode, name: name.into_owned() }));
        }
        RecordingLine::Cgroup(CgroupPath { id, path }) => {
            let cgroup = path.map(|path| Cgroup::new(path.into_owned()));
            return Ok(Item::Name(Learned::Cgroup { id, cgroup }));
        }
        RecordingLine::Snapshot(SnapshotMark { event, ts_ns, .. }) => {
            return Ok(match event {
                SnapshotEvent::Began => Item::SnapshotBegan { ts_ns },
                SnapshotEvent::Done => Item::SnapshotDone { ts_ns },
            });
        }
        RecordingLine::SeenAtStart(line) => {
            let owner =
                line.pid.zip(line.comm).map(|(pid, comm)| Owner { pid, comm: Comm::new(&comm) });
            return Ok(Item::Seen(SeenSocket {
                state: line.state,
                local: line.addresses.local,
                remote: line.addresses.remote,
                home: Home { netns: line.netns, cgroup: line.cgroup_id },
                owner,
                time_wait_left_ns: line.time_wait_left_ns,
            }));
        }
        RecordingLine::Transition(line) => {
            let time_wait_timer = line.time_wait_timer.map(|Hex(timer)| timer);
            let kind = EventKind::Transition { old: line.old, new: line.new, time_wait_timer };
            counters = line.tcp_info.map(|info| Counters { info, error: line.error });
            (line.ts_ns, line.sk, kind, Some(line.addresses), line.netns, line.tail)
        }
        RecordingLine::TimeWaitTimer(line) => {
            let timer = line.timer.0;
            let kind = match line.event {
                TimerEvent::Rearm => EventKind::TimeWaitRearm {
                    timer,
                    timeout_jiffies: line
                        .timeout_jiffies
                        .ok_or_else(|| missing("timeout_jiffies"))?,
                },
                TimerEvent::Cancel => EventKind::TimeWaitCancel { timer },
                TimerEvent::Expire => EventKind::TimeWaitExpire { timer },
            };
            (line.ts_ns, line.sk, kind, line.addresses, line.netns, line.tail)
        }
        RecordingLine::Reset(line) => {
            let kind = match line.direction {
                crate::schema::Direction::Sent => EventKind::ResetSent,
                crate::schema::Direction::Received => EventKind::ResetReceived,
            };
            (line.ts_ns, line.sk, kind, line.addresses, line.netns, line.tail)
        }
    };
    let RecordedTask { pid, tid, comm, process_context, cpu, cgroup_id } = task;
    Ok(Item::Event(TcpEvent {
        ts_ns,
        sk: sk.0,
        kind,
        addresses: addresses.map(|Addresses { local, remote, .. }| (local, remote)),
        task: Task { pid, tid, comm: Comm::new(&comm), process_context },
        cpu,
        counters,
        home: Home { netns, cgroup: cgroup_id },
    }))
}
