//! `.csv`: one row per state interval, for spreadsheets and pandas.

use std::io::{self, Write};

use super::{ExportInput, Timeline};

pub const HEADER: &str = "connection_id,endpoint,role,state,start_ns,end_ns,duration_ns,open,\
bytes_acked,bytes_received,total_retrans,rtt_us,error,netns,cgroup,container_id";

pub fn write(out: &mut impl Write, input: &ExportInput<'_>) -> io::Result<()> {
    writeln!(out, "{HEADER}")?;
    for connection in input.connections {
        let timeline = Timeline::new(connection, input.end_ns, input.names);
        for lane in &timeline.lanes {
            // The endpoint's counters at close, on each of its rows (empty when not seen).
            let counters = match &lane.endpoint.counters {
                Some(c) => format!(
                    "{},{},{},{},{}",
                    c.info.bytes_acked,
                    c.info.bytes_received,
                    c.info.total_retrans,
                    c.info.rtt_us,
                    c.error.map(|e| e.name()).unwrap_or_default()
                ),
                None => ",,,,".into(),
            };
            // Where the endpoint lives (empty when not known).
            let home = lane.endpoint.home;
            let cgroup = input.names.cgroup(home.cgroup);
            let home = format!(
                "{},{},{}",
                home.netns.map(|n| n.to_string()).unwrap_or_default(),
                field(cgroup.map_or("", |c| c.path.as_str())),
                cgroup.and_then(|c| c.container_id.as_deref()).unwrap_or_default()
            );
            for interval in &lane.intervals {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{counters},{home}",
                    connection.id,
                    field(&lane.endpoint.local.to_string()),
                    lane.role.name(),
                    interval.state,
                    interval.start_ns,
                    interval.end_ns,
                    interval.end_ns - interval.start_ns,
                    interval.open
                )?;
            }
        }
    }
    Ok(())
}

/// Quotes a field when CSV needs it.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}
