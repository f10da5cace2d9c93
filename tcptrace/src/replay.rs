//! `tcptrace replay FILE`: a recording through the same pipeline as live tracing.

use std::{fs::File, io::BufReader};

use anyhow::{Context, Result, anyhow};

use crate::{
    cli::ReplayArgs,
    clock::WallClock,
    engine::EngineOptions,
    pipeline::Pipeline,
    recording::{Item, Reader},
    sink,
};

pub fn run(args: &ReplayArgs) -> Result<()> {
    let path = &args.file;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = Reader::new(BufReader::with_capacity(1 << 16, file))
        .map_err(|error| anyhow!("{}: {error}", path.display()))?;
    let header = reader.header;
    let engine =
        EngineOptions { ephemeral_ports: header.ephemeral_ports, ..EngineOptions::default() };
    let clock = WallClock::from_offset(header.realtime_offset_ns);
    let mut pipeline = Pipeline::new(sink::stdout(), clock, args.output.pipeline_options(engine));
    pipeline.start()?;
    let mut end_ns = 0;
    // The snapshot's sockets, handed over together when its `done` line comes.
    let mut seen = Vec::new();
    while let Some(item) = reader.next_item() {
        match item.map_err(|error| anyhow!("{}: {error}", path.display()))? {
            Item::Event(event) => {
                let ts_ns = event.ts_ns;
                pipeline.push(event);
                pipeline.advance(ts_ns)?;
            }
            Item::Lost { ts_ns, count } => pipeline.lost(count, ts_ns)?,
            Item::Name(learned) => pipeline.learn(learned),
            Item::SnapshotBegan { ts_ns } => pipeline.snapshot_began(ts_ns),
            Item::Seen(socket) => seen.push(socket),
            Item::SnapshotDone { ts_ns } => {
                pipeline.seen(std::mem::take(&mut seen));
                pipeline.snapshot_done(ts_ns);
            }
            Item::End { ts_ns } => end_ns = ts_ns,
        }
    }
    pipeline.finish(end_ns)
}
