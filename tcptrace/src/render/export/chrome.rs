//! `.trace.json`: the Chrome trace event format, for Perfetto UI and chrome://tracing.
//! One process per connection, one thread (track) per endpoint, one complete ("X") slice
//! per state, instant ("i") events for FIN, RST and the end of TIME-WAIT.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::{ExportInput, Timeline};

pub fn write(out: &mut impl Write, input: &ExportInput<'_>) -> io::Result<()> {
    let timelines: Vec<Timeline<'_>> =
        input.connections.iter().map(|c| Timeline::new(c, input.end_ns, input.names)).collect();
    // Microseconds from the first thing on any lane: viewers want small numbers.
    let origin = timelines.iter().filter_map(Timeline::start_ns).min().unwrap_or(0);
    let us = |ns: u64| (ns - origin.min(ns)) as f64 / 1000.0;
    let mut events: Vec<Value> = Vec::new();
    for timeline in &timelines {
        let pid = timeline.connection.id;
        let title = format!("connection {pid}: {}", timeline.connection.closed_first.name());
        events.push(json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": title}}));
        for (index, lane) in timeline.lanes.iter().enumerate() {
            let tid = index + 1;
            events.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": lane.carried().map_or_else(|| lane.label(), |carried| format!("{}: {carried}", lane.label()))}}));
            for interval in &lane.intervals {
                let mut args = json!({"open": interval.open});
                if let Some(detail) = &interval.detail {
                    args["end"] = json!(detail);
                }
                events.push(json!({
                    "ph": "X", "name": interval.state, "cat": "state", "pid": pid, "tid": tid,
                    "ts": us(interval.start_ns), "dur": (interval.end_ns - interval.start_ns) as f64 / 1000.0,
                    "args": args,
                }));
            }
            for instant in &lane.instants {
                events.push(json!({
                    "ph": "i", "s": "t", "name": instant.name, "cat": "packet", "pid": pid, "tid": tid,
                    "ts": us(instant.ts_ns),
                }));
            }
        }
    }
    serde_json::to_writer(&mut *out, &json!({"traceEvents": events, "displayTimeUnit": "ms"}))?;
    writeln!(out)
}
