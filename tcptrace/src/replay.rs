//! `tcptrace replay FILE`: a recording through the same pipeline as live tracing. A thread
//! of its own reads and parses the file beside the engine (reading and parsing are about
//! 40 % of a replay's work), and hands the items over in batches, in order.

use std::{
    fs::File,
    io::BufReader,
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    thread::{self, JoinHandle},
};

use anyhow::{Context, Result, anyhow};

use crate::{
    cli::ReplayArgs,
    clock::WallClock,
    engine::EngineOptions,
    pipeline::Pipeline,
    recording::{Item, ReadError, Reader},
    sink,
};

/// Items per batch: the channel's cost per item disappears, and a batch (about 60 KiB)
/// stays below the size from which malloc maps fresh pages for each.
const BATCH_ITEMS: usize = 256;
/// Full batches the reader may have ready ahead of the engine.
const BATCHES_AHEAD: usize = 4;

type Batch = Vec<Result<Item, ReadError>>;

pub fn run(args: &ReplayArgs) -> Result<()> {
    let path = &args.file;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = Reader::new(BufReader::with_capacity(1 << 16, file))
        .map_err(|error| anyhow!("{}: {error}", path.display()))?;
    let header = reader.header;
    let engine =
        EngineOptions { ephemeral_ports: header.ephemeral_ports, ..EngineOptions::default() };
    let clock = WallClock::from_offset(header.realtime_offset_ns);
    let mut pipeline = Pipeline::new(sink::stdout(), clock, args.output.pipeline_options(engine));
    pipeline.start()?;
    let (reading, full, emptied) = read_aside(reader)?;
    let mut end_ns = 0;
    // The snapshot's sockets, handed over together when its `done` line comes.
    let mut seen = Vec::new();
    for mut batch in full.iter() {
        // The engine's clock moves on once for a run of events, not after each: the same
        // events are processed in the same order, and the engine's round costs less.
        let mut pushed_until = None;
        for item in batch.drain(..) {
            let item = item.map_err(|error| anyhow!("{}: {error}", path.display()))?;
            match &item {
                Item::Event(event) => pushed_until = Some(event.ts_ns),
                // Anything else comes after the events before it are processed.
                _ => {
                    if let Some(ts_ns) = pushed_until.take() {
                        pipeline.advance(ts_ns)?;
                    }
                }
            }
            match item {
                Item::Event(event) => pipeline.push(event),
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
        if let Some(ts_ns) = pushed_until {
            pipeline.advance(ts_ns)?;
        }
        // For the reader to fill again; dropped if it has enough, or is done.
        let _ = emptied.try_send(batch);
    }
    // The batches end when the file does, or when the reader failed to go on.
    reading.join().map_err(|_| anyhow!("reading {} failed (a panic)", path.display()))?;
    pipeline.finish(end_ns)
}

/// Reads `reader` to its end on a thread of its own. Its items arrive in batches on the
/// returned receiver; the sender takes emptied batches back, to be filled again.
fn read_aside(
    mut reader: Reader<BufReader<File>>,
) -> Result<(JoinHandle<()>, Receiver<Batch>, SyncSender<Batch>)> {
    let (full_sender, full) = sync_channel::<Batch>(BATCHES_AHEAD);
    let (emptied, emptied_receiver) = sync_channel::<Batch>(BATCHES_AHEAD + 2);
    let reading = thread::Builder::new()
        .name("tcptrace-read".into())
        .spawn(move || {
            loop {
                let mut batch =
                    emptied_receiver.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH_ITEMS));
                while batch.len() < BATCH_ITEMS {
                    let Some(item) = reader.next_item() else { break };
                    batch.push(item);
                }
                let last = batch.len() < BATCH_ITEMS;
                // A send fails once the engine's side stopped (an error): so does reading.
                if full_sender.send(batch).is_err() || last {
                    return;
                }
            }
        })
        .context("starting the reading thread")?;
    Ok((reading, full, emptied))
}
