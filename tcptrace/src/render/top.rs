//! The screen of `tcptrace top`: what the engine follows now, drawn with ratatui. The
//! [`Tally`] counts what passes (connects, closes by side, resets, failed connects) for the
//! rates; a [`View`] is one picture of the engine and the tally, and [`draw`] lays it out
//! to fit 80×24 and grow with the terminal. No terminal here: `top` owns it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Bar, BarChart, BarGroup, Block, Cell, Paragraph, Row, Table},
};

use crate::{
    engine::{Closer, Connection, Engine, Role, Stats, Stuck},
    event::{EventKind, Owner, TcpEvent, TcpState, TraceCounts},
    render::{Watcher, lab::ss_state},
};

/// Counts of what passed, for the rates: bumped by the pipeline, read at each redraw.
#[derive(Debug, Default)]
pub struct Tally {
    connects: AtomicU64,
    accepts: AtomicU64,
    closes: [AtomicU64; 4],
    resets: AtomicU64,
    failed_connects: AtomicU64,
}

/// What a [`Tally`] had counted at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// connect() calls (CLOSED → SYN_SENT).
    pub connects: u64,
    /// Connections a listener took (LISTEN → SYN_RECV).
    pub accepts: u64,
    /// Closes by who closed first: the client, the server, both at once, a RST.
    pub closes: [u64; 4],
    pub resets: u64,
    pub failed_connects: u64,
}

/// Which of [`Totals::closes`] a closer counts in.
fn close_slot(closer: Closer) -> Option<usize> {
    match closer {
        Closer::Client => Some(0),
        Closer::Server => Some(1),
        Closer::Simultaneous => Some(2),
        Closer::ClientReset | Closer::ServerReset => Some(3),
        Closer::Unknown => None,
    }
}

impl Tally {
    pub fn totals(&self) -> Totals {
        Totals {
            connects: self.connects.load(Relaxed),
            accepts: self.accepts.load(Relaxed),
            closes: [0, 1, 2, 3].map(|slot| self.closes[slot].load(Relaxed)),
            resets: self.resets.load(Relaxed),
            failed_connects: self.failed_connects.load(Relaxed),
        }
    }
}

impl Watcher for Tally {
    fn event(&self, event: &TcpEvent) {
        match event.kind {
            EventKind::Transition { old: TcpState::Closed, new: TcpState::SynSent, .. } => {
                self.connects.fetch_add(1, Relaxed);
            }
            EventKind::Transition {
                old: TcpState::Listen,
                new: TcpState::SynReceived | TcpState::NewSynRecv,
                ..
            } => {
                self.accepts.fetch_add(1, Relaxed);
            }
            EventKind::ResetSent | EventKind::ResetReceived => {
                self.resets.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    fn closed(&self, closer: Closer) {
        if let Some(slot) = close_slot(closer) {
            self.closes[slot].fetch_add(1, Relaxed);
        }
    }

    fn connection(&self, connection: &Connection) {
        if connection.failed_connect().is_some() {
            self.failed_connects.fetch_add(1, Relaxed);
        }
    }

    fn stuck(&self, _: &Stuck) {}

    fn update(&self, _: &Stats, _: &TraceCounts, _: usize) {}
}

/// What the tables are sorted by (`s` cycles through them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    All,
    TimeWait,
    CloseWait,
    Established,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::All => SortBy::TimeWait,
            SortBy::TimeWait => SortBy::CloseWait,
            SortBy::CloseWait => SortBy::Established,
            SortBy::Established => SortBy::All,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::All => "all",
            SortBy::TimeWait => "TIME-WAIT",
            SortBy::CloseWait => "CLOSE-WAIT",
            SortBy::Established => "ESTAB",
        }
    }

    fn key(self, counts: &Counts) -> usize {
        match self {
            SortBy::All => counts.all,
            SortBy::TimeWait => counts.time_wait,
            SortBy::CloseWait => counts.close_wait,
            SortBy::Established => counts.established,
        }
    }
}

/// Sockets of one endpoint or process, by the states that matter most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub established: usize,
    pub time_wait: usize,
    pub close_wait: usize,
    pub all: usize,
}

impl Counts {
    fn add(&mut self, state: TcpState) {
        self.all += 1;
        match state {
            TcpState::Established => self.established += 1,
            TcpState::TimeWait => self.time_wait += 1,
            TcpState::CloseWait => self.close_wait += 1,
            _ => {}
        }
    }
}

/// A row of the endpoint table: a server's (or listener's) local endpoint, or the remote
/// endpoint a client's sockets go to (their local ports are ephemeral, one each), in its
/// network namespace (two containers' 127.0.0.1:8080 are two rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Local(SocketAddr, Option<u32>),
    Toward(SocketAddr, Option<u32>),
}

impl Endpoint {
    pub fn netns(&self) -> Option<u32> {
        match *self {
            Endpoint::Local(_, netns) | Endpoint::Toward(_, netns) => netns,
        }
    }
}

/// TIME-WAIT ages are counted in these buckets, in seconds (the last: 60 s and more,
/// re-armed ones and the timer wheel's last 2 s).
pub const AGE_BUCKETS: [(u64, &str); 7] = [
    (10, "<10"),
    (20, "10-20"),
    (30, "20-30"),
    (40, "30-40"),
    (50, "40-50"),
    (60, "50-60"),
    (u64::MAX, "60+"),
];

/// The states shown, as `ss -s` counts them: all but CLOSED and the kernel's own
/// NEW_SYN_RECV (counted as SYN-RECV); five a row.
fn shown_states() -> impl Iterator<Item = TcpState> {
    TcpState::ALL.into_iter().filter(|s| !matches!(s, TcpState::Closed | TcpState::NewSynRecv))
}

/// One picture of what is traced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// What is traced (the filters), for the title.
    pub traced: String,
    /// Names of the namespaces (`ip netns`), where there are any.
    pub netns_labels: Vec<(u32, String)>,
    pub states: Vec<(TcpState, usize)>,
    pub time_wait_ages: [u64; 7],
    pub endpoints: Vec<(Endpoint, Counts)>,
    pub processes: Vec<(Option<Owner>, Counts)>,
    pub stuck: Vec<Stuck>,
    /// Per second since the last picture.
    pub rates: Rates,
    pub events: u64,
    pub lost: u64,
    pub now_ns: u64,
    pub sort: SortBy,
    pub paused: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub connects: f64,
    pub accepts: f64,
    pub closes: [f64; 4],
    pub resets: f64,
    pub failed_connects: f64,
}

impl Rates {
    /// The rates from `then` to `now`, `elapsed_ns` apart.
    pub fn between(then: &Totals, now: &Totals, elapsed_ns: u64) -> Rates {
        let per_second =
            |a: u64, b: u64| b.saturating_sub(a) as f64 * 1e9 / elapsed_ns.max(1) as f64;
        Rates {
            connects: per_second(then.connects, now.connects),
            accepts: per_second(then.accepts, now.accepts),
            closes: [0, 1, 2, 3].map(|slot| per_second(then.closes[slot], now.closes[slot])),
            resets: per_second(then.resets, now.resets),
            failed_connects: per_second(then.failed_connects, now.failed_connects),
        }
    }
}

impl View {
    /// The engine's sockets at `now_ns`, as the tables show them.
    pub fn of(engine: &Engine, now_ns: u64, sort: SortBy) -> View {
        let mut states: HashMap<TcpState, usize> = HashMap::new();
        let mut ages = [0u64; 7];
        let mut endpoints: HashMap<Endpoint, Counts> = HashMap::new();
        let mut processes: HashMap<Option<u32>, (Option<Owner>, Counts)> = HashMap::new();
        let ports = engine.options().ephemeral_ports;
        for socket in engine.sockets_now() {
            let state = match socket.state {
                TcpState::NewSynRecv => TcpState::SynReceived,
                state => state,
            };
            *states.entry(state).or_default() += 1;
            if state == TcpState::TimeWait {
                let age_s =
                    socket.since_ns.map_or(0, |since| now_ns.saturating_sub(since) / 1_000_000_000);
                let bucket = AGE_BUCKETS.iter().position(|&(below, _)| age_s < below).unwrap_or(6);
                ages[bucket] += 1;
            }
            // A socket of unknown role (one the start-up snapshot found) on an ephemeral
            // port is taken for a client's: its local port says nothing.
            let ephemeral = (ports.0..=ports.1).contains(&socket.local.port());
            let endpoint = match socket.role {
                Role::Client => Endpoint::Toward(socket.remote, socket.netns),
                Role::Unknown if ephemeral && socket.state != TcpState::Listen => {
                    Endpoint::Toward(socket.remote, socket.netns)
                }
                _ => Endpoint::Local(socket.local, socket.netns),
            };
            endpoints.entry(endpoint).or_default().add(state);
            // A TIME-WAIT (or orphaned FIN_WAIT2) is the kernel's alone: no process holds
            // a descriptor to it.
            if !socket.orphan {
                let key = socket.owner.map(|o| o.pid);
                processes.entry(key).or_insert((socket.owner, Counts::default())).1.add(state);
            }
        }
        let by = |counts: &Counts| std::cmp::Reverse(sort.key(counts));
        let mut endpoints: Vec<(Endpoint, Counts)> = endpoints.into_iter().collect();
        endpoints.sort_by_key(|(endpoint, counts)| {
            (by(counts), std::cmp::Reverse(counts.all), *endpoint)
        });
        let mut processes: Vec<(Option<Owner>, Counts)> = processes.into_values().collect();
        processes.sort_by_key(|(owner, counts)| {
            (by(counts), std::cmp::Reverse(counts.all), owner.map(|o| o.pid))
        });
        View {
            states: shown_states()
                .map(|state| (state, states.get(&state).copied().unwrap_or(0)))
                .collect(),
            time_wait_ages: ages,
            endpoints,
            processes,
            stuck: engine.stuck_now(now_ns),
            now_ns,
            sort,
            ..View::default()
        }
    }

    fn count(&self, state: TcpState) -> usize {
        self.states.iter().find(|(known, _)| *known == state).map_or(0, |(_, count)| *count)
    }
}

/// Lays the view out: title, states, rates, TIME-WAIT ages, the endpoint and process
/// tables side by side, the stuck sockets; the tables take what height is left.
pub fn draw(frame: &mut Frame, view: &View) {
    let stuck_rows = view.stuck.len().clamp(1, 4) as u16;
    let [title, states, rates, ages, tables, stuck, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(2),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(stuck_rows + 3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(title_line(view), title);
    frame.render_widget(state_lines(view), states);
    frame.render_widget(rate_lines(view), rates);
    draw_ages(frame, view, ages);
    let [endpoints, processes] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(tables);
    frame.render_widget(endpoint_table(view), endpoints);
    frame.render_widget(process_table(view), processes);
    frame.render_widget(stuck_table(view), stuck);
    let sort = format!(" q quit   p pause   s sort tables: {}", view.sort.name());
    frame.render_widget(Paragraph::new(sort).reversed(), keys);
}

fn title_line(view: &View) -> Paragraph<'static> {
    let mut spans = vec![
        Span::styled(" tcptrace top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(view.traced.clone()),
        Span::raw(format!(" · Sockets: {}", view.states.iter().map(|(_, n)| n).sum::<usize>())),
        Span::raw(format!(" · {} events", view.events)),
    ];
    if view.lost > 0 {
        spans.push(Span::styled(format!(", {} lost", view.lost), Style::new().red().bold()));
    } else {
        spans.push(Span::raw(", 0 lost"));
    }
    if view.paused {
        spans.push(Span::styled(" · PAUSED", Style::new().yellow().bold()));
    }
    Paragraph::new(Line::from(spans)).reversed()
}

/// Two rows of five states, 16 columns each: 80 in all.
fn state_lines(view: &View) -> Paragraph<'static> {
    let cell = |state: TcpState| {
        let count = view.count(state);
        let style = match state {
            TcpState::TimeWait | TcpState::CloseWait if count > 0 => Style::new().bold(),
            _ => Style::new(),
        };
        [
            Span::raw(format!("{:<11}", ss_state(state))),
            Span::styled(format!("{:>4} ", compact(count)), style),
        ]
    };
    let line =
        |states: Vec<TcpState>| Line::from(states.into_iter().flat_map(cell).collect::<Vec<_>>());
    let (first, second) = (shown_states().take(5).collect(), shown_states().skip(5).collect());
    Paragraph::new(vec![line(first), line(second)])
}

fn rate_lines(view: &View) -> Paragraph<'static> {
    let rates = &view.rates;
    let first = format!(
        " connects {:.1}  accepts {:.1}  resets {:.1}  failed connects {:.1}",
        rates.connects, rates.accepts, rates.resets, rates.failed_connects
    );
    let second = format!(
        "     closed first by: client {:.1}  server {:.1}  both {:.1}  reset {:.1}",
        rates.closes[0], rates.closes[1], rates.closes[2], rates.closes[3]
    );
    Paragraph::new(vec![
        Line::from(vec![
            Span::styled("Per s", Style::new().bold()),
            Span::raw(" ".repeat(2)),
            Span::raw(first),
        ]),
        Line::from(second),
    ])
}

fn draw_ages(frame: &mut Frame, view: &View, area: Rect) {
    let bars: Vec<Bar> = AGE_BUCKETS
        .iter()
        .zip(view.time_wait_ages)
        .map(|(&(_, label), count)| Bar::default().value(count).label(Line::from(label)))
        .collect();
    let width =
        (area.width.saturating_sub(2) / AGE_BUCKETS.len() as u16).saturating_sub(1).clamp(3, 12);
    let chart = BarChart::default()
        .block(
            Block::bordered()
                .title(format!(" TIME-WAIT by age (s): {} now ", view.count(TcpState::TimeWait))),
        )
        .data(BarGroup::default().bars(&bars))
        .bar_width(width)
        .bar_gap(1);
    frame.render_widget(chart, area);
}

/// A count in at most 4 characters: `9999`, `12k`, `1.2M`, so that a table column never
/// cuts one short.
pub fn compact(n: usize) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{}k", n / 1000),
        1_000_000..10_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{}M", n / 1_000_000),
    }
}

fn count_cells<const N: usize>(counts: [usize; N]) -> [Cell<'static>; N] {
    counts.map(|n| Cell::from(Line::from(compact(n)).right_aligned()))
}

const COUNT: Constraint = Constraint::Length(4);

fn endpoint_table(view: &View) -> Table<'static> {
    // Once rows come from more than one namespace, each says which (`ip netns` name or
    // inode, as the other outputs name them).
    let mut namespaces = view.endpoints.iter().map(|(endpoint, _)| endpoint.netns());
    let first = namespaces.next().flatten();
    let many = namespaces.any(|netns| netns != first);
    let rows = view.endpoints.iter().map(move |(endpoint, counts)| {
        let mut name = match endpoint {
            Endpoint::Local(local, _) => local.to_string(),
            Endpoint::Toward(remote, _) => format!("→{remote}"),
        };
        if let (true, Some(netns)) = (many, endpoint.netns()) {
            let label = view.netns_labels.iter().find(|(inode, _)| *inode == netns);
            // An unnamed one by its inode's last digits: the column is narrow at 80.
            let short = || format!("…{:04}", netns % 10_000);
            name += &format!(" [{}]", label.map_or_else(short, |(_, l)| l.clone()));
        }
        let counts = [counts.established, counts.time_wait, counts.close_wait, counts.all];
        Row::new([Cell::from(name)].into_iter().chain(count_cells(counts)))
    });
    let widths = [Constraint::Min(15), COUNT, COUNT, COUNT, COUNT];
    Table::new(rows, widths)
        .header(Row::new(["ENDPOINT", " EST", "  TW", "  CW", " ALL"]).bold())
        .block(Block::bordered().title(" Local endpoints (→ clients toward) "))
}

fn process_table(view: &View) -> Table<'static> {
    let rows = view.processes.iter().map(|(owner, counts)| {
        let (pid, comm) = match owner {
            Some(owner) => (owner.pid.to_string(), owner.comm.to_string()),
            None => ("-".to_owned(), "(not seen yet)".to_owned()),
        };
        let counts = [counts.established, counts.close_wait, counts.all];
        Row::new([Cell::from(pid), Cell::from(comm)].into_iter().chain(count_cells(counts)))
    });
    let widths = [Constraint::Length(7), Constraint::Min(8), COUNT, COUNT, COUNT];
    Table::new(rows, widths)
        .header(Row::new(["PID", "COMM", " EST", "  CW", " ALL"]).bold())
        .block(Block::bordered().title(" Processes (sockets they hold) "))
}

fn stuck_table(view: &View) -> Table<'static> {
    let after_s = view.stuck.first().map_or(0, |stuck| stuck.after_ns / 1_000_000_000);
    let rows: Vec<Row> = if view.stuck.is_empty() {
        vec![Row::new(["none"])]
    } else {
        view.stuck
            .iter()
            .map(|stuck| {
                let (pid, comm) = match stuck.owner {
                    Some(owner) => (owner.pid.to_string(), owner.comm.to_string()),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                let oldest = stuck.oldest_ns.map_or("-".to_owned(), |since| {
                    format!("{} s", view.now_ns.saturating_sub(since) / 1_000_000_000)
                });
                let socket =
                    stuck.sockets.first().map_or(String::new(), |(l, r, _)| format!("{l} ↔ {r}"));
                Row::new([pid, comm, stuck.count.to_string(), oldest, socket])
            })
            .collect()
    };
    let title = if after_s > 0 {
        format!(" Stuck in CLOSE-WAIT (over {after_s} s: not closed by their owner) ")
    } else {
        " Stuck in CLOSE-WAIT (not closed by their owner) ".to_owned()
    };
    let widths = [
        Constraint::Length(7),
        Constraint::Length(15),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    Table::new(rows, widths)
        .header(Row::new(["PID", "COMM", "COUNT", "OLDEST", "OLDEST SOCKET"]).bold())
        .block(Block::bordered().title(title))
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{engine::EngineOptions, event::TcpState::*, testing::*};

    fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, view)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol().to_owned()).collect::<String>())
            .collect()
    }

    /// A listener on 18084; a connection whose server closed first (its TIME-WAIT from
    /// 1300 s); one whose client closed first and whose server never did (CLOSE_WAIT).
    fn engine_at(now: f64) -> Engine {
        let mut r = Recording::default();
        let listen = ("127.0.0.1:18084", "0.0.0.0:0");
        let client = ("127.0.0.1:40002", "127.0.0.1:18084");
        let server = ("127.0.0.1:18084", "127.0.0.1:40002");
        r.transition(1299.0, 10, Closed, Listen, listen, Some(1743));
        server_closes_first(&mut r)
            .transition(1301.0, 21, Closed, SynSent, ("127.0.0.1:0", "127.0.0.1:18084"), Some(31))
            .transition(1301.0001, 21, SynSent, Established, client, None)
            .transition(1301.00015, 22, Listen, SynReceived, server, None)
            .transition(1301.0002, 22, SynReceived, Established, server, None)
            .transition(1301.001, 21, Established, FinWait1, client, Some(31))
            .transition(1301.00101, 22, Established, CloseWait, server, None)
            .transition(1301.00102, 21, FinWait1, FinWait2, client, None);
        let mut engine = Engine::new(EngineOptions::default());
        for event in &r.events {
            engine.push(*event);
            engine.advance(event.ts_ns, &mut |_| {});
        }
        for second in 1302..=now as u64 {
            engine.advance(second * S, &mut |_| {});
        }
        engine
    }

    #[test]
    fn the_view_counts_states_ages_endpoints_and_owners() {
        let view = View::of(&engine_at(1335.0), 1335 * S, SortBy::All);
        let count = |state| view.count(state);
        assert_eq!(
            (count(Listen), count(TimeWait), count(CloseWait), count(FinWait2), count(Established)),
            (1, 1, 1, 1, 0),
            "{view:?}"
        );
        // The TIME-WAIT began at 1300.002 s: 34 s old.
        assert_eq!(view.time_wait_ages, [0, 0, 0, 1, 0, 0, 0]);
        let server = Endpoint::Local("127.0.0.1:18084".parse().unwrap(), None);
        let toward = Endpoint::Toward("127.0.0.1:18084".parse().unwrap(), None);
        let counts =
            |endpoint| view.endpoints.iter().find(|(e, _)| *e == endpoint).map(|(_, c)| *c);
        assert_eq!(
            counts(server),
            Some(Counts { established: 0, time_wait: 1, close_wait: 1, all: 3 })
        );
        assert_eq!(counts(toward).map(|c| c.all), Some(1), "the client's FIN_WAIT2");
        assert_eq!(view.endpoints[0].0, server, "the most sockets first");
        let by_processes: usize = view.processes.iter().map(|(_, c)| c.all).sum();
        assert_eq!(by_processes, 3, "every socket but the TIME-WAIT is some process's");
        let listener = view.processes.iter().find(|(o, _)| o.is_some_and(|o| o.pid == 1743));
        assert!(
            listener.is_some_and(|(_, c)| c.close_wait == 1 && c.all == 2),
            "the accepted socket is the listener's: {view:?}"
        );
        // In CLOSE_WAIT since 1301 s: stuck after the default 30 s.
        assert_eq!(view.stuck.len(), 1);
        assert_eq!(view.stuck[0].count, 1);
        let by_close_wait = View::of(&engine_at(1335.0), 1335 * S, SortBy::TimeWait);
        assert_eq!(by_close_wait.endpoints[0].0, server);
        let screen = screen(&view, 80, 24).join("\n");
        assert!(screen.contains("127.0.0.1:18084"), "{screen}");
        assert!(screen.contains("→127.0.0.1:18084"), "{screen}");
        assert!(screen.contains(" 34 s ") || screen.contains("1743"), "{screen}");
    }

    #[test]
    fn the_same_endpoint_in_two_namespaces_is_two_rows_each_named() {
        let mut r = Recording::default();
        let listen = ("127.0.0.1:8080", "0.0.0.0:0");
        r.in_netns(4026532001).transition(10.0, 1, Closed, Listen, listen, Some(7));
        r.in_netns(4026532002).transition(10.0, 2, Closed, Listen, listen, Some(8));
        let mut engine = Engine::new(EngineOptions::default());
        r.events.iter().for_each(|event| engine.push(*event));
        engine.advance(11 * S, &mut |_| {});
        let mut view = View::of(&engine, 11 * S, SortBy::All);
        let rows: Vec<Endpoint> = view.endpoints.iter().map(|(endpoint, _)| *endpoint).collect();
        let address = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            rows,
            [
                Endpoint::Local(address, Some(4026532001)),
                Endpoint::Local(address, Some(4026532002))
            ]
        );
        view.netns_labels = vec![(4026532001, "blue".into())];
        let screen = screen(&view, 80, 24).join("\n");
        assert!(screen.contains("127.0.0.1:8080 [blue]"), "{screen}");
        assert!(screen.contains("127.0.0.1:8080 […2002]"), "{screen}");
    }

    #[test]
    fn the_tally_counts_connects_closes_and_resets_into_rates() {
        let tally = Tally::default();
        let mut r = Recording::default();
        server_closes_first(&mut r).reset(1300.1, 11, true, ("127.0.0.1:1", "127.0.0.1:2"), None);
        r.events.iter().for_each(|event| tally.event(event));
        tally.closed(Closer::Server);
        tally.closed(Closer::Unknown);
        let totals = tally.totals();
        assert_eq!((totals.connects, totals.accepts, totals.resets), (1, 1, 1));
        assert_eq!(totals.closes, [0, 1, 0, 0]);
        let rates = Rates::between(&Totals::default(), &totals, 2 * S);
        assert_eq!((rates.connects, rates.closes[1]), (0.5, 0.5));
    }

    #[test]
    fn everything_fits_in_80_by_24() {
        let view = View {
            traced: " (port 8080)".into(),
            states: shown_states().map(|s| (s, 12_345)).collect(),
            ..View::default()
        };
        let lines = screen(&view, 80, 24);
        let text = lines.join("\n");
        for needle in [
            "tcptrace top",
            "q quit",
            "TIME-WAIT   12k",
            "CLOSE-WAIT  12k",
            "LISTEN      12k",
            "Sockets: 123450",
            "s sort tables: all",
            "closed first by",
            "TIME-WAIT by age",
            "Local endpoints",
            "Processes",
            "Stuck in CLOSE-WAIT",
        ] {
            assert!(text.contains(needle), "{needle:?} is not on an 80×24 screen:\n{text}");
        }
    }
}
