//! `.mmd`: a Mermaid sequence diagram (renders in GitHub Markdown) of the first few
//! connections: one participant per endpoint, the SYN/FIN/ACK/RST steps each state change
//! implies, and each side's states as notes.

use std::io::{self, Write};

use super::{ExportInput, Lane, Timeline};
use crate::{
    event::TcpState,
    render::report::{Human, closer_sentence},
};

/// A sequence diagram of more connections than this is unreadable.
pub const MAX_CONNECTIONS: usize = 5;

pub fn write(out: &mut impl Write, input: &ExportInput<'_>) -> io::Result<()> {
    writeln!(out, "sequenceDiagram")?;
    let left_out = input.connections.len().saturating_sub(MAX_CONNECTIONS);
    if left_out > 0 {
        writeln!(
            out,
            "    %% {left_out} more connections left out: see the .html or .trace.json export"
        )?;
    }
    for (n, connection) in input.connections.iter().take(MAX_CONNECTIONS).enumerate() {
        let timeline = Timeline::new(connection, input.end_ns, input.names);
        let aliases: Vec<String> = timeline
            .lanes
            .iter()
            .map(|lane| {
                format!(
                    "{}{}",
                    lane.role.name().to_ascii_uppercase().chars().next().unwrap_or('E'),
                    n + 1
                )
            })
            .collect();
        for (lane, alias) in timeline.lanes.iter().zip(&aliases) {
            writeln!(out, "    participant {alias} as {}", text(&lane.label()))?;
        }
        let peer_alias = format!("P{}", n + 1);
        if timeline.lanes.len() == 1 {
            let remote = timeline.lanes[0].endpoint.remote;
            writeln!(
                out,
                "    participant {peer_alias} as peer {} (not on this host)",
                text(&remote.to_string())
            )?;
        }
        let mut steps: Vec<(u64, usize, String)> = Vec::new();
        for (index, lane) in timeline.lanes.iter().enumerate() {
            let me = &aliases[index];
            let other = if aliases.len() == 2 { &aliases[1 - index] } else { &peer_alias };
            lane_steps(lane, me, other, &mut steps);
        }
        steps.sort_by_key(|(ts, order, _)| (*ts, *order));
        writeln!(
            out,
            "    Note over {}: connection {}: {}",
            aliases.join(","),
            connection.id,
            text(closer_sentence(connection.closed_first))
        )?;
        for (_, _, line) in steps {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}

/// The lines one endpoint contributes: its states as notes, and what it sent.
fn lane_steps(lane: &Lane<'_>, me: &str, other: &str, steps: &mut Vec<(u64, usize, String)>) {
    let mut order = steps.len();
    let mut push = |ts: u64, line: String| {
        order += 1;
        steps.push((ts, order, line));
    };
    let mut previous = None;
    for span in lane.endpoint.states() {
        let Some(ts) = span.enter_ns else {
            previous = Some(span.state);
            continue;
        };
        let sent = match (previous, span.state) {
            (_, TcpState::SynSent) => Some("SYN"),
            (_, TcpState::SynReceived) => Some("SYN+ACK"),
            (Some(TcpState::SynSent), TcpState::Established) => Some("ACK"),
            (_, TcpState::FinWait1 | TcpState::LastAck) => Some("FIN"),
            (_, TcpState::CloseWait | TcpState::Closing) => Some("ACK of FIN"),
            _ => None,
        };
        if previous == Some(TcpState::LastAck) && span.state == TcpState::Closed {
            // The other side's last ACK is what closes a LAST_ACK socket.
            push(ts, format!("{other}->>{me}: ACK of FIN"));
        }
        push(ts, format!("Note over {me}: {}", span.state));
        if let Some(segment) = sent {
            push(ts, format!("{me}->>{other}: {segment}"));
        }
        previous = Some(span.state);
    }
    if let Some(ts) = lane.endpoint.reset_sent_ns {
        push(ts, format!("{me}-x{other}: RST"));
    }
    if let Some(tw) = &lane.endpoint.time_wait {
        let how = match tw.duration_ns() {
            Some(duration) => format!("TIME-WAIT {} ({})", Human(duration), tw.end.name()),
            None => "TIME-WAIT (open at the end of the trace)".to_owned(),
        };
        push(tw.known_from_ns, format!("Note over {me}: {}", text(&how)));
    }
}

/// Mermaid has no escaping for `;`, `#` and line breaks in labels: keep only safe characters.
fn text(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_alphanumeric() || " .:()[]-_/".contains(c) { c } else { '_' })
        .collect()
}
