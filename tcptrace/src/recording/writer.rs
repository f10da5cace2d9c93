//! Writing a recording: the header, every raw event as the kernel reported it, losses with
//! when they were noticed, and the end.

use std::io::{self, Write};

use crate::{
    event::{Family, SeenSocket, TcpEvent},
    names::Learned,
    schema::{
        Addresses, CgroupPath, End, Lost, NetnsName, RecordingHeader, RecordingLine, SeenAtStart,
        SnapshotEvent, SnapshotMark, fast::event_head, json_line::JsonLine, write_line,
    },
};

/// Writes a recording. Buffered: call [`Recorder::flush`] with every batch.
pub struct Recorder<W: Write> {
    out: W,
    line: JsonLine,
}

impl<W: Write> Recorder<W> {
    pub fn new(mut out: W, header: &RecordingHeader) -> io::Result<Recorder<W>> {
        write_line(&mut out, &RecordingLine::TcptraceRecording(*header))?;
        Ok(Recorder { out, line: JsonLine::new() })
    }

    /// One event, written by hand: every event is recorded, so this is a hot path.
    pub fn event(&mut self, event: &TcpEvent) -> io::Result<()> {
        let line = self.line.clear();
        event_head(line, event, event.sk, event.addresses, event.home.netns);
        line.raw(",\"pid\":").u64(u64::from(event.task.pid));
        line.raw(",\"tid\":").u64(u64::from(event.task.tid));
        line.raw(",\"comm\":").string(event.task.comm.as_bytes());
        line.raw(",\"process_context\":").bool(event.task.process_context);
        line.raw(",\"cpu\":").u64(u64::from(event.cpu));
        if let Some(cgroup) = event.home.cgroup {
            line.raw(",\"cgroup_id\":").u64(cgroup);
        }
        line.raw("}").write_to(&mut self.out)
    }

    /// What a namespace or cgroup number stands for, before the first event with it.
    pub fn name(&mut self, learned: &Learned) -> io::Result<()> {
        let line = match learned {
            Learned::NetnsName { inode, name } => {
                RecordingLine::Netns(NetnsName { inode: *inode, name: name.into() })
            }
            Learned::Cgroup { id, cgroup } => RecordingLine::Cgroup(CgroupPath {
                id: *id,
                path: cgroup.as_ref().map(|c| c.path.as_str().into()),
            }),
        };
        write_line(&mut self.out, &line)
    }

    /// The start-up snapshot began (`done: None`) or was done with `Some(sockets)`.
    pub fn snapshot(&mut self, ts_ns: u64, done: Option<u64>) -> io::Result<()> {
        let event = if done.is_some() { SnapshotEvent::Done } else { SnapshotEvent::Began };
        write_line(
            &mut self.out,
            &RecordingLine::Snapshot(SnapshotMark { event, ts_ns, sockets: done }),
        )
    }

    /// A socket the start-up snapshot found.
    pub fn seen(&mut self, socket: &SeenSocket) -> io::Result<()> {
        let line = SeenAtStart {
            state: socket.state,
            addresses: Addresses {
                family: Some(Family::of(&socket.local)),
                local: socket.local,
                remote: socket.remote,
            },
            netns: socket.home.netns,
            cgroup_id: socket.home.cgroup,
            pid: socket.owner.map(|owner| owner.pid),
            comm: socket.owner.map(|owner| owner.comm.to_string().into()),
            time_wait_left_ns: socket.time_wait_left_ns,
        };
        write_line(&mut self.out, &RecordingLine::SeenAtStart(line))
    }

    pub fn lost(&mut self, ts_ns: u64, count: u64) -> io::Result<()> {
        write_line(&mut self.out, &RecordingLine::Lost(Lost { ts_ns: Some(ts_ns), count }))
    }

    /// The last line: when tracing stopped (open TIME-WAITs are measured against it).
    pub fn end(&mut self, ts_ns: u64) -> io::Result<()> {
        write_line(&mut self.out, &RecordingLine::End(End { ts_ns }))?;
        self.out.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
