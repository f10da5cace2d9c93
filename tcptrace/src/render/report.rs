//! Connection records and the exit summary, as text for people and JSON for programs.

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Write},
    net::SocketAddr,
};

use crate::{
    engine::{
        Closer, Connection, Endpoint, FailedConnect, Role, Stats, Stuck, TimeWait, TimeWaitEnd,
    },
    event::{Counters, Home, Owner, TraceCounts},
    names::Names,
    render::explain::{self, Lang},
    schema::{
        ClosedFirstCounts, KernelProgram, PileUp, StreamLine, StuckRecord, StuckSocket, Summary,
        TimeWaitByLocal, fast, json_line::JsonLine, write_line,
    },
};

/// A duration for people: `0.080 ms`, `12.3 ms`, `61.37 s`.
pub struct Human(pub u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0 as f64;
        if ns < 1e6 {
            write!(f, "{:.3} ms", ns / 1e6)
        } else if ns < 1e9 {
            write!(f, "{:.1} ms", ns / 1e6)
        } else {
            write!(f, "{:.2} s", ns / 1e9)
        }
    }
}

/// The endpoints under the keys `client` and `server`: by role where known, an endpoint of
/// unknown role takes a free key (its `role` field says it is unknown).
pub fn by_role(connection: &Connection) -> (Option<&Endpoint>, Option<&Endpoint>) {
    let mut client = connection.endpoint(Role::Client);
    let mut server = connection.endpoint(Role::Server);
    for endpoint in &connection.endpoints {
        if connection.role_of(endpoint) == Role::Unknown {
            if client.is_none() {
                client = Some(endpoint);
            } else if server.is_none() {
                server = Some(endpoint);
            }
        }
    }
    (client, server)
}

pub fn closer_sentence(closer: Closer) -> &'static str {
    match closer {
        Closer::Client => "client closed first",
        Closer::Server => "server closed first",
        Closer::Simultaneous => "both closed at once (simultaneous close)",
        Closer::ClientReset => "client reset the connection",
        Closer::ServerReset => "server reset the connection",
        Closer::Unknown => "who closed first is unknown",
    }
}

/// Bytes for people: `78 B`, `12.3 kB`, `1.2 MB` (powers of 1000, as `ss` and curl count).
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0 as f64;
        match self.0 {
            0..1000 => write!(f, "{} B", self.0),
            1000..1_000_000 => write!(f, "{:.1} kB", bytes / 1e3),
            1_000_000..1_000_000_000 => write!(f, "{:.1} MB", bytes / 1e6),
            _ => write!(f, "{:.2} GB", bytes / 1e9),
        }
    }
}

/// A socket's counters in one line: `sent 1.2 MB, received 3.4 kB, 0 retransmits, RTT 52 µs`.
pub struct CountersText<'a>(pub &'a Counters);

impl fmt::Display for CountersText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, error) = (&self.0.info, self.0.error);
        let s = if c.total_retrans == 1 { "" } else { "s" };
        write!(f, "sent {}, received {}, ", Bytes(c.bytes_acked), Bytes(c.bytes_received))?;
        write!(f, "{} retransmit{s}", c.total_retrans)?;
        if c.rtt_us > 0 {
            match c.rtt_us {
                0..1000 => write!(f, ", RTT {} µs", c.rtt_us)?,
                _ => write!(f, ", RTT {:.1} ms", f64::from(c.rtt_us) / 1e3)?,
            }
        }
        if let Some(error) = error {
            write!(f, ", ended with {}", error.name())?;
        }
        Ok(())
    }
}

/// A connect that failed, in words: `connect to 127.0.0.1:9 refused after 0.1 ms`.
struct FailedText(SocketAddr, FailedConnect);

impl fmt::Display for FailedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FailedText(remote, failed) = self;
        write!(f, "connect to {remote} ")?;
        match failed.error.map(|error| error.name()) {
            Some(name) if name == "ECONNREFUSED" => write!(f, "refused")?,
            Some(name) if name == "ETIMEDOUT" => write!(f, "timed out")?,
            Some(name) => write!(f, "failed with {name}")?,
            None => write!(f, "never got through")?,
        }
        if let Some(attempt) = failed.attempt_ns {
            write!(f, " after {}", Human(attempt))?;
        }
        match failed.syn_retransmits {
            Some(0) | None => Ok(()),
            Some(1) => write!(f, " (its SYN was sent again once)"),
            Some(n) => write!(f, " (its SYN was sent again {n} times)"),
        }
    }
}

struct OwnerText(Option<Owner>);

impl fmt::Display for OwnerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(owner) => write!(f, "{} {}", owner.comm, owner.pid),
            None => write!(f, "owner unknown"),
        }
    }
}

/// Which namespace and container a socket is in, for text, when the trace spans more than
/// one of either: `ns blue`, `ns 4026532290 ctr 0123456789ab`.
pub struct HomeLabel<'a>(pub &'a Names, pub Home);

impl HomeLabel<'_> {
    pub fn shown(&self) -> bool {
        self.0.many_homes()
    }
}

impl fmt::Display for HomeLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let HomeLabel(names, home) = self;
        match home.netns {
            Some(netns) => write!(f, "ns {}", names.netns_label(netns))?,
            None => write!(f, "ns ?")?,
        }
        if let Some(id) = names.cgroup(home.cgroup).and_then(|c| c.short_container_id()) {
            write!(f, " ctr {id}")?;
        }
        Ok(())
    }
}

/// A stuck report as its JSON line (and the summary's entries) has it.
pub fn stuck_record<'a>(stuck: &'a Stuck, note: Option<&'a str>) -> StuckRecord<'a> {
    let sockets = stuck
        .sockets
        .iter()
        .map(|&(local, remote, since_ns)| StuckSocket { local, remote, since_ns })
        .collect();
    StuckRecord {
        ts_ns: stuck.ts_ns,
        state: stuck.state,
        pid: stuck.owner.map(|owner| owner.pid),
        comm: stuck.owner.map(|owner| owner.comm.to_string().into()),
        count: stuck.count as u64,
        oldest_ns: stuck.oldest_ns,
        sockets,
        note: note.map(Into::into),
    }
}

/// `python3 (pid 4711) holds 3 sockets in CLOSE_WAIT for over 30 s: it is not closing them`,
/// with the oldest and one of them.
pub struct StuckText<'a>(pub &'a Stuck);

impl fmt::Display for StuckText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stuck = self.0;
        // `--stuck-after 30` reads "over 30 s".
        let after = match stuck.after_ns % 1_000_000_000 {
            0 => format!("{} s", stuck.after_ns / 1_000_000_000),
            _ => Human(stuck.after_ns).to_string(),
        };
        match stuck.owner {
            Some(owner) => write!(f, "{} (pid {})", owner.comm, owner.pid)?,
            None => write!(f, "a process tcptrace does not know")?,
        }
        if stuck.count == 0 {
            return write!(f, " holds no more sockets in {} for over {after}", stuck.state);
        }
        let (s, them) = if stuck.count == 1 { ("", "it") } else { ("s", "them") };
        let (count, state) = (stuck.count, stuck.state);
        write!(
            f,
            " holds {count} socket{s} in {state} for over {after}: it is not closing {them}"
        )?;
        if let (Some(oldest), Some((local, remote, _))) = (stuck.oldest_ns, stuck.sockets.first()) {
            let waited = Human(stuck.ts_ns.saturating_sub(oldest));
            write!(f, " (the oldest for {waited}: {local} ↔ {remote})")?;
        }
        Ok(())
    }
}

/// One block that tells a connection's story (with notes for learners when `explain`).
pub fn write_connection_text(
    out: &mut impl Write,
    connection: &Connection,
    names: &Names,
    explain: Option<Lang>,
) -> io::Result<()> {
    let (client, server) = by_role(connection);
    write!(out, "\n── connection: ")?;
    let sides: Vec<(&str, &Endpoint)> = [("client", client), ("server", server)]
        .into_iter()
        .filter_map(|(n, e)| Some((n, e?)))
        .collect();
    for (i, (name, endpoint)) in sides.iter().enumerate() {
        if i > 0 {
            write!(out, " ↔ ")?;
        }
        write!(out, "{name} {} ({}", endpoint.local, OwnerText(endpoint.owner))?;
        let home = HomeLabel(names, endpoint.home);
        if home.shown() {
            write!(out, ", {home}")?;
        }
        if endpoint.seen_at_start {
            write!(out, ", there before tracing began")?;
        }
        write!(out, ")")?;
    }
    if sides.len() == 1 {
        write!(out, " ↔ {} (not on this host)", sides[0].1.remote)?;
    }
    write!(out, ", {}", closer_sentence(connection.closed_first))?;
    if connection.incomplete {
        write!(out, " [incomplete: some events were not seen]")?;
    }
    writeln!(out)?;
    for (name, endpoint) in &sides {
        write!(out, "   {name:<6}")?;
        for (i, span) in endpoint.states().enumerate() {
            if i > 0 {
                write!(out, " →")?;
            }
            write!(out, " {}", span.state)?;
            if let Some(duration) = span.duration_ns {
                write!(out, " {}", Human(duration))?;
            }
        }
        writeln!(out)?;
    }
    let failed = connection.failed_connect();
    for (name, endpoint) in &sides {
        // A failed connect carried nothing: its sentence below says what happened.
        let connected = failed.is_none() || connection.role_of(endpoint) != Role::Client;
        if let Some(counters) = endpoint.counters.as_ref().filter(|_| connected) {
            writeln!(out, "   {name:<6} {}", CountersText(counters))?;
        }
    }
    if let (Some(failed), Some(client)) = (failed, client) {
        writeln!(out, "   {}", FailedText(client.remote, failed))?;
    }
    for (_, endpoint) in &sides {
        if let Some(tw) = &endpoint.time_wait {
            write!(out, "   ")?;
            write_time_wait_sentence(out, endpoint.local, tw)?;
            writeln!(out)?;
        }
    }
    if let Some(lang) = explain {
        for note in explain::connection(lang, connection) {
            writeln!(out, "   ↳ {note}")?;
        }
    }
    Ok(())
}

fn write_time_wait_sentence(
    out: &mut impl Write,
    local: SocketAddr,
    tw: &TimeWait,
) -> io::Result<()> {
    let what = match tw.kind {
        crate::engine::TimeWaitKind::TimeWait => "TIME-WAIT",
        crate::engine::TimeWaitKind::FinWait2 => "FIN_WAIT2 (orphaned, kept by a time-wait socket)",
    };
    match (tw.end, tw.duration_ns(), tw.end_ns) {
        (TimeWaitEnd::Open, ..) | (_, None, None) => {
            write!(out, "{what} on {local} still open at exit")?;
            if let Some(left) = tw.time_left_ns {
                write!(out, ", about {} left", Human(left))?;
            }
        }
        (end, Some(duration), _) => {
            write!(out, "{what} on {local} lasted {} ({})", Human(duration), end.name())?
        }
        // There before tracing began: how long it lasted is not known, only its end.
        (end, None, Some(end_ns)) => {
            let after = end_ns.saturating_sub(tw.known_from_ns);
            write!(
                out,
                "{what} on {local} {} {} after tcptrace first saw it",
                end.name(),
                Human(after)
            )?
        }
    }
    if tw.start_ns.is_none() {
        write!(out, " (there before tracing began")?;
        if let Some(left) = tw.remaining_at_start_ns {
            write!(out, ", {} left at start", Human(left))?;
        }
        write!(out, ")")?;
    }
    if tw.rearmed > 0 {
        write!(out, ", re-armed {}×", tw.rearmed)?;
    }
    Ok(())
}

fn optional_string(line: &mut JsonLine, value: Option<&str>) {
    match value {
        Some(text) => line.string(text.as_bytes()),
        None => line.raw("null"),
    };
}

fn endpoint_json(
    line: &mut JsonLine,
    connection: &Connection,
    endpoint: Option<&Endpoint>,
    names: &Names,
) {
    let Some(endpoint) = endpoint else {
        line.raw("null");
        return;
    };
    line.raw("{\"addr\":").address(&endpoint.local).raw(",\"remote\":").address(&endpoint.remote);
    line.raw(",\"role\":\"").raw(connection.role_of(endpoint).name()).raw("\"");
    line.raw(",\"seen_at_start\":").bool(endpoint.seen_at_start);
    match endpoint.owner {
        Some(owner) => {
            line.raw(",\"pid\":")
                .u64(u64::from(owner.pid))
                .raw(",\"comm\":")
                .string(owner.comm.as_bytes());
        }
        None => {
            line.raw(",\"pid\":null,\"comm\":null");
        }
    }
    line.raw(",\"netns\":").optional(endpoint.home.netns.map(u64::from));
    let cgroup = names.cgroup(endpoint.home.cgroup);
    line.raw(",\"cgroup\":");
    optional_string(line, cgroup.map(|c| c.path.as_str()));
    line.raw(",\"container_id\":");
    optional_string(line, cgroup.and_then(|c| c.container_id.as_deref()));
    if let Some(pod_uid) = cgroup.and_then(|c| c.pod_uid.as_deref()) {
        line.raw(",\"pod_uid\":").string(pod_uid.as_bytes());
    }
    line.raw(",\"states\":[");
    for (i, span) in endpoint.states().enumerate() {
        line.raw(if i > 0 { ",{\"state\":\"" } else { "{\"state\":\"" }).raw(span.state.name());
        line.raw("\",\"enter_ns\":").optional(span.enter_ns);
        line.raw(",\"duration_ns\":").optional(span.duration_ns).raw("}");
    }
    line.raw("],\"time_wait\":");
    match &endpoint.time_wait {
        None => {
            line.raw("null");
        }
        Some(tw) => {
            line.raw("{\"start_ns\":").optional(tw.start_ns);
            line.raw(",\"remaining_at_start_ns\":").optional(tw.remaining_at_start_ns);
            line.raw(",\"end_ns\":").optional(tw.end_ns);
            line.raw(",\"duration_ns\":").optional(tw.duration_ns());
            line.raw(",\"rearmed\":").u64(u64::from(tw.rearmed));
            line.raw(",\"end\":\"").raw(tw.end.name());
            line.raw("\",\"kind\":\"").raw(tw.kind.name()).raw("\"");
            line.raw(",\"became_time_wait_ns\":").optional(tw.became_time_wait_ns);
            line.raw(",\"time_left_ns\":").optional(tw.time_left_ns).raw("}");
        }
    }
    line.raw(",\"tcp_info\":");
    match &endpoint.counters {
        Some(counters) => fast::tcp_info(line, &counters.info),
        None => {
            line.raw("null");
        }
    }
    match endpoint.counters.and_then(|counters| counters.error) {
        Some(error) => line.raw(",\"error\":\"").raw(&error.name()).raw("\""),
        None => line.raw(",\"error\":null"),
    };
    line.raw(",\"reset_sent_ns\":").optional(endpoint.reset_sent_ns);
    line.raw(",\"reset_received_ns\":").optional(endpoint.reset_received_ns);
    line.raw(",\"incomplete\":").bool(endpoint.incomplete).raw("}");
}

/// One connection record as a JSON line (with notes for learners when `explain`), after
/// what `line` holds already.
pub fn connection_json(
    line: &mut JsonLine,
    connection: &Connection,
    names: &Names,
    explain: Option<Lang>,
) {
    let (client, server) = by_role(connection);
    line.raw("{\"type\":\"connection\",\"id\":").u64(connection.id);
    line.raw(",\"client\":");
    endpoint_json(line, connection, client, names);
    line.raw(",\"server\":");
    endpoint_json(line, connection, server, names);
    line.raw(",\"closed_first\":\"").raw(connection.closed_first.name()).raw("\"");
    line.raw(",\"incomplete\":").bool(connection.incomplete);
    if let Some(lang) = explain {
        line.raw(",\"notes\":[");
        for (i, note) in explain::connection(lang, connection).iter().enumerate() {
            if i > 0 {
                line.raw(",");
            }
            line.string(note.as_bytes());
        }
        line.raw("]");
    }
    line.raw("}").end_line();
}

/// TIME-WAIT durations of one local endpoint, summarised.
struct TimeWaitRow {
    netns: Option<u32>,
    local: SocketAddr,
    count: usize,
    min: u64,
    median: u64,
    max: u64,
    open: u64,
}

fn time_wait_rows(stats: &Stats) -> Vec<TimeWaitRow> {
    let mut rows: Vec<TimeWaitRow> = stats
        .time_wait_by_local
        .iter()
        .map(|(&(netns, local), tw)| TimeWaitRow {
            netns,
            local,
            count: tw.count as usize,
            min: tw.min_ns,
            median: tw.median_ns().unwrap_or(0),
            max: tw.max_ns,
            open: tw.open,
        })
        .collect();
    rows.sort_by_key(|row| (std::cmp::Reverse(row.count as u64 + row.open), row.local, row.netns));
    rows
}

/// Pile-ups worth a warning: TIME-WAIT sockets toward one remote endpoint that held at
/// least half of the ephemeral port range at once.
fn pile_ups(stats: &Stats, ephemeral_ports: (u16, u16)) -> Vec<PileUp> {
    let range = u64::from(ephemeral_ports.1.saturating_sub(ephemeral_ports.0)) + 1;
    let mut found: Vec<_> = stats
        .time_wait_toward_remote
        .iter()
        .filter(|(_, p)| p.peak * 2 >= range)
        .map(|(&(netns, local_ip, remote), p)| PileUp { netns, local_ip, remote, peak: p.peak })
        .collect();
    found.sort();
    found
}

/// How many rows of the TIME-WAIT table the text summary shows.
const TEXT_ROWS: usize = 10;

pub fn write_summary_text(
    out: &mut impl Write,
    stats: &Stats,
    counts: &TraceCounts,
    ephemeral_ports: (u16, u16),
    names: &Names,
) -> io::Result<()> {
    writeln!(out, "\n══ summary")?;
    write!(out, "connections: {}", stats.connections)?;
    let closers: BTreeMap<&str, u64> =
        stats.closed_first.iter().map(|(closer, &n)| (closer.name(), n)).collect();
    if !closers.is_empty() {
        let parts: Vec<String> = closers.iter().map(|(name, n)| format!("{name} {n}")).collect();
        write!(out, "; closed first: {}", parts.join(", "))?;
    }
    writeln!(out)?;
    if !stats.failed_connects.is_empty() {
        let parts: Vec<String> =
            stats.failed_connects.iter().map(|(error, n)| format!("{error} {n}")).collect();
        writeln!(out, "failed connects: {}", parts.join(", "))?;
    }
    let carried = &stats.carried;
    if carried.sockets > 0 {
        let s = if carried.total_retrans == 1 { "" } else { "s" };
        writeln!(
            out,
            "carried: sent {}, received {}, {} retransmit{s} ({} sockets' counters at close)",
            Bytes(carried.bytes_acked),
            Bytes(carried.bytes_received),
            carried.total_retrans,
            carried.sockets
        )?;
    }
    let rows = time_wait_rows(stats);
    // Each namespace has its own addresses: with more than one, each row says whose.
    let per_namespace = rows.iter().any(|row| row.netns != rows[0].netns);
    let netns_label = |netns: Option<u32>| match netns {
        Some(netns) => names.netns_label(netns),
        None => "?".into(),
    };
    if !rows.is_empty() {
        write!(out, "TIME-WAIT by local endpoint:\n  ")?;
        if per_namespace {
            write!(out, "{:<12} ", "NETNS")?;
        }
        writeln!(
            out,
            "{:<28} {:>6} {:>10} {:>10} {:>10} {:>5}",
            "LOCAL", "COUNT", "MIN", "MEDIAN", "MAX", "OPEN"
        )?;
        for row in rows.iter().take(TEXT_ROWS) {
            let (min, median, max) = if row.count > 0 {
                (
                    Human(row.min).to_string(),
                    Human(row.median).to_string(),
                    Human(row.max).to_string(),
                )
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            write!(out, "  ")?;
            if per_namespace {
                write!(out, "{:<12} ", netns_label(row.netns))?;
            }
            writeln!(
                out,
                "{:<28} {:>6} {min:>10} {median:>10} {max:>10} {:>5}",
                row.local.to_string(),
                row.count,
                row.open
            )?;
        }
        if rows.len() > TEXT_ROWS {
            writeln!(
                out,
                "  … and {} more local endpoints (all of them in --json)",
                rows.len() - TEXT_ROWS
            )?;
        }
    }
    let range = u32::from(ephemeral_ports.1.saturating_sub(ephemeral_ports.0)) + 1;
    for PileUp { netns, local_ip, remote, peak } in pile_ups(stats, ephemeral_ports) {
        let within = if per_namespace || names.many_homes() {
            format!(" in network namespace {}", netns_label(netns))
        } else {
            String::new()
        };
        writeln!(
            out,
            "warning: up to {peak} TIME-WAIT sockets from {local_ip}{within} toward {remote} held ephemeral ports at once, \
             out of {range} in net.ipv4.ip_local_port_range: new connections to {remote} may fail to find a port"
        )?;
    }
    for stuck in &stats.stuck_at_exit {
        writeln!(out, "still stuck at exit: {}", StuckText(stuck))?;
    }
    if stats.seen_at_start > 0 {
        writeln!(
            out,
            "sockets there before tracing began, followed from start: {}",
            stats.seen_at_start
        )?;
    }
    if stats.incomplete > 0 || stats.aged_out > 0 {
        writeln!(
            out,
            "incomplete connections: {} (events lost or tracing started mid-way); aged out to bound memory: {}",
            stats.incomplete, stats.aged_out
        )?;
    }
    writeln!(
        out,
        "events: {}, lost: {}{}",
        counts.events,
        counts.lost,
        if counts.lost > 0 { " (raise --ring-size)" } else { "" }
    )
}

pub fn write_summary_json(
    out: &mut impl Write,
    stats: &Stats,
    counts: &TraceCounts,
    ephemeral_ports: (u16, u16),
) -> io::Result<()> {
    let mut closed_first = ClosedFirstCounts::default();
    for (&closer, &n) in &stats.closed_first {
        *closed_first.count(closer) += n;
    }
    let time_wait_by_local = time_wait_rows(stats)
        .iter()
        .map(|row| {
            let ended = |ns: u64| (row.count > 0).then_some(ns);
            TimeWaitByLocal {
                netns: row.netns,
                local: row.local,
                count: row.count as u64,
                open: row.open,
                min_ns: ended(row.min),
                median_ns: ended(row.median),
                max_ns: ended(row.max),
            }
        })
        .collect();
    let pile_ups = pile_ups(stats, ephemeral_ports);
    let kernel_programs = counts
        .programs
        .iter()
        .map(|p| KernelProgram {
            name: p.name.as_str().into(),
            runs: p.runs,
            run_time_ns: p.run_time_ns,
        })
        .collect();
    let summary = Summary {
        events: counts.events,
        lost: counts.lost,
        undecodable: counts.undecodable,
        untracked_time_waits: counts.untracked_time_waits,
        connections: stats.connections,
        closed_first,
        incomplete: stats.incomplete,
        aged_out: stats.aged_out,
        seen_at_start: stats.seen_at_start,
        time_wait_by_local,
        failed_connects: stats.failed_connects.clone(),
        carried: stats.carried,
        ephemeral_ports,
        pile_ups,
        stuck: stats.stuck_at_exit.iter().map(|stuck| stuck_record(stuck, None)).collect(),
        kernel_programs,
    };
    write_line(out, &StreamLine::Summary(summary))
}
