//! `.csv`: one row per state interval, for spreadsheets and pandas.

use std::io::{self, Write};

use super::{ExportInput, Timeline};

pub const HEADER: &str = "connection_id,endpoint,role,state,start_ns,end_ns,duration_ns,open";

pub fn write(out: &mut impl Write, input: &ExportInput<'_>) -> io::Result<()> {
    writeln!(out, "{HEADER}")?;
    for connection in input.connections {
        let timeline = Timeline::new(connection, input.end_ns);
        for lane in &timeline.lanes {
            for interval in &lane.intervals {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{}",
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
