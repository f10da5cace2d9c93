//! Recordings: every raw event as JSON Lines (`--record FILE`), and reading them back for
//! `tcptrace replay`. The lines are the schema's [`RecordingLine`]s:
//!
//! ```text
//! {"type":"tcptrace_recording","version":1,"ephemeral_ports":[32768,60999],"realtime_offset_ns":…}
//! {"type":"transition","ts_ns":…,"sk":"0x…","family":"ipv4","local":"…","remote":"…","netns":4026531840,"old":"…","new":"…","pid":…,"tid":…,"comm":"…","process_context":true,"cpu":0,"cgroup_id":1234}
//! {"type":"time_wait_timer","event":"cancel","ts_ns":…,"sk":"0x…","timer":"0x…",…}
//! {"type":"reset","direction":"sent",…}
//! {"type":"lost","ts_ns":…,"count":3}
//! {"type":"netns","inode":4026532290,"name":"blue"}
//! {"type":"cgroup","id":1234,"path":"/system.slice/docker-….scope"}
//! {"type":"snapshot","event":"began","ts_ns":…}
//! {"type":"seen_at_start","state":"ESTABLISHED","family":"ipv4","local":"…","remote":"…","netns":…,"cgroup_id":…,"pid":…,"comm":"…","time_wait_left_ns":null}
//! {"type":"snapshot","event":"done","ts_ns":…,"sockets":1}
//! {"type":"end","ts_ns":…}
//! ```
//!
//! Unlike the `--json` stream, `pid`/`comm` here are the raw current task (attribution is
//! the engine's job on replay), and nothing is left out. A `netns` or `cgroup` line names
//! a namespace or cgroup before the first event that carries its number. The start-up
//! snapshot's sockets come between its `began` and `done` lines, after the events that
//! raced it.
//!
//! [`RecordingLine`]: crate::schema::RecordingLine

mod reader;
mod scan;
mod writer;

use std::fmt;

pub use reader::Reader;
pub use writer::Recorder;

pub use crate::schema::{FORMAT_VERSION, RecordingHeader};
use crate::{
    event::{SeenSocket, TcpEvent},
    names::Learned,
};

/// One item of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(TcpEvent),
    Lost { ts_ns: u64, count: u64 },
    Name(Learned),
    SnapshotBegan { ts_ns: u64 },
    Seen(SeenSocket),
    SnapshotDone { ts_ns: u64 },
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

#[cfg(test)]
mod tests;
