//! The words of `tcptrace lab`, in English and Russian: each step's heading and what it
//! found, built from what the trace and the kernel showed. Plain text, for a terminal and
//! for pasting into a report.

use std::fmt::Write as _;

use crate::{
    engine::{Closer, Connection, Endpoint, Role, TIME_WAIT_LEN_NS, TimeWaitKind},
    event::{Errno, TableRow, TcpState},
    render::{
        explain::{self, Lang},
        report::by_role,
    },
};

/// `en` or `ru`, each a `format!` of its own.
macro_rules! say {
    ($lang:expr, $en:literal, $ru:literal $(, $arg:expr)* $(,)?) => {
        match $lang {
            Lang::En => format!($en $(, $arg)*),
            Lang::Ru => format!($ru $(, $arg)*),
        }
    };
}

/// What descriptors the lab's processes held, against the sockets on a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fds {
    /// Every descriptor of the processes counted.
    pub total: usize,
    pub sockets: usize,
    pub listeners: usize,
    pub close_wait: usize,
    /// TIME-WAIT sockets on the port, and those a file refers to (always none).
    pub time_waits: usize,
    pub time_waits_with_inode: usize,
}

fn heading(number: &str, title: String) -> String {
    let line = format!("== {number}. {title} ");
    let width = line.chars().count();
    format!("\n{line}{}", "=".repeat(78usize.saturating_sub(width)))
}

fn wrap(text: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    for word in text.split(' ') {
        let len = word.chars().count();
        if width > 0 && width + 1 + len > 78 {
            out.push('\n');
            width = 0;
        } else if width > 0 {
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += len;
    }
    out
}

/// `python3 (pid 4242)`, or its role when its owner is unknown.
fn who(lang: Lang, endpoint: &Endpoint, role: Role) -> String {
    let role = match (role, lang) {
        (Role::Client, Lang::En) => "the client",
        (Role::Client, Lang::Ru) => "клиент",
        (Role::Server, Lang::En) => "the server",
        (Role::Server, Lang::Ru) => "сервер",
        (Role::Unknown, Lang::En) => "one side",
        (Role::Unknown, Lang::Ru) => "одна из сторон",
    };
    match endpoint.owner {
        Some(owner) => format!("{role} ({}, pid {})", owner.comm, owner.pid),
        None => role.to_owned(),
    }
}

/// A short time between two events: `172 µs`, `2.7 ms`.
fn gap(lang: Lang, ns: u64) -> String {
    match (ns < 1_000_000, lang) {
        (true, Lang::En) => format!("{} µs", ns / 1000),
        (true, Lang::Ru) => format!("{} мкс", ns / 1000),
        (false, Lang::En) => format!("{:.1} ms", ns as f64 / 1e6),
        (false, Lang::Ru) => format!("{:.1} мс", ns as f64 / 1e6).replace('.', ","),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn fin_sent_ns(endpoint: &Endpoint) -> Option<u64> {
    match (endpoint.entered(TcpState::FinWait1), endpoint.entered(TcpState::LastAck)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn time_waits(connection: &Connection) -> impl Iterator<Item = &Endpoint> {
    connection.endpoints.iter().filter(|endpoint| {
        endpoint.time_wait.as_ref().is_some_and(|tw| tw.kind == TimeWaitKind::TimeWait)
    })
}

pub fn step_one(lang: Lang, netns: u32, real_peers: bool) -> String {
    let mut text = heading(
        "1",
        say!(
            lang,
            "The exercise: an HTTP server on port 8080, one request",
            "Упражнение: HTTP-сервер на порту 8080, один запрос"
        ),
    );
    let intro = say!(
        lang,
        "The lab runs in a network namespace of its own (inode {}), made for it and removed at the end: nothing on this host is touched. In it: `python3 -m http.server 8080`, then `curl http://127.0.0.1:8080/`. tcptrace traces every state change of their sockets; each line has a note on what it means.",
        "Лабораторная работа идёт в собственном сетевом пространстве имён (inode {}), созданном для неё и удаляемом в конце: на этом хосте ничего не меняется. В нём запускаются `python3 -m http.server 8080` и `curl http://127.0.0.1:8080/`. tcptrace показывает каждую смену состояния их сокетов, с пояснением к каждой строке.",
        netns
    );
    let _ = write!(text, "\n{}", wrap(&intro));
    if !real_peers {
        let missing = say!(
            lang,
            "(python3 or curl is not installed here: the lab's own server and client, lab-http-server and lab-http-client, make the same HTTP/1.0 exchange.)",
            "(python3 или curl здесь не установлены: тот же обмен HTTP/1.0 ведут собственные сервер и клиент лабораторной, lab-http-server и lab-http-client.)"
        );
        let _ = write!(text, "\n{}", wrap(&missing));
    }
    text.push('\n');
    text
}

/// The sockets as `ss -tan` prints them.
pub fn socket_table(lang: Lang, port: u16, rows: &[TableRow]) -> String {
    let mut text = format!(
        "\n{}\n\n",
        wrap(&say!(
            lang,
            "The sockets on port {} now, as `ss -tan` would show them (read from the kernel through sock_diag, as ss reads them):",
            "Сокеты на порту {} сейчас, как их показал бы `ss -tan` (прочитаны из ядра через sock_diag, как это делает ss):",
            port
        ))
    );
    let _ = writeln!(
        text,
        "{:<11}{:>6} {:>6} {:>22} {:>22}",
        "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"
    );
    for row in rows {
        let remote = if row.state == TcpState::Listen {
            let any = if row.local.is_ipv4() { "0.0.0.0" } else { "[::]" };
            format!("{any}:*")
        } else {
            row.remote.to_string()
        };
        let _ = writeln!(
            text,
            "{:<11}{:>6} {:>6} {:>22} {:>22}",
            ss_state(row.state),
            row.recv_q,
            row.send_q,
            row.local.to_string(),
            remote
        );
    }
    text
}

/// A state as `ss` spells it.
pub fn ss_state(state: TcpState) -> &'static str {
    match state {
        TcpState::Established => "ESTAB",
        TcpState::SynSent => "SYN-SENT",
        TcpState::SynReceived | TcpState::NewSynRecv => "SYN-RECV",
        TcpState::FinWait1 => "FIN-WAIT-1",
        TcpState::FinWait2 => "FIN-WAIT-2",
        TcpState::TimeWait => "TIME-WAIT",
        TcpState::Closed => "UNCONN",
        TcpState::CloseWait => "CLOSE-WAIT",
        TcpState::LastAck => "LAST-ACK",
        TcpState::Listen => "LISTEN",
        TcpState::Closing => "CLOSING",
    }
}

/// Who closed first, when each FIN went, and where the TIME-WAIT sits.
pub fn story(lang: Lang, connection: &Connection) -> String {
    let mut text = format!("\n{}\n", say!(lang, "The connection's story:", "История соединения:"));
    let (client, server) = by_role(connection);
    let (Some(client), Some(server)) = (client, server) else {
        return text + explain::closer(lang, connection.closed_first);
    };
    let (client_name, server_name) =
        (who(lang, client, Role::Client), who(lang, server, Role::Server));
    let fins = (fin_sent_ns(client), fin_sent_ns(server));
    let first = match (connection.closed_first, fins) {
        (Closer::Server, (Some(c), Some(s))) => say!(
            lang,
            "{} called close() first: its FIN left {} before {}'s.",
            "{} первым вызвал close(): его FIN ушёл на {} раньше, чем FIN, который отправил {}.",
            server_name,
            gap(lang, c.saturating_sub(s)),
            client_name
        ),
        (Closer::Client, (Some(c), Some(s))) => say!(
            lang,
            "{} called close() first: its FIN left {} before {}'s.",
            "{} первым вызвал close(): его FIN ушёл на {} раньше, чем FIN, который отправил {}.",
            client_name,
            gap(lang, s.saturating_sub(c)),
            server_name
        ),
        (Closer::Simultaneous, (Some(c), Some(s))) => say!(
            lang,
            "Both called close() before the other's FIN arrived: their FINs left {} apart.",
            "Обе стороны вызвали close() до прихода FIN собеседника: их FIN ушли с разницей {}.",
            gap(lang, c.abs_diff(s))
        ),
        _ => String::new(),
    };
    let _ = writeln!(text, "  {} {}", say!(lang, "Client:", "Клиент:"), client_name);
    let _ = writeln!(text, "  {} {}", say!(lang, "Server:", "Сервер:"), server_name);
    let closer = match (connection.closed_first, lang) {
        (Closer::Client, Lang::En) => "the client",
        (Closer::Client, Lang::Ru) => "клиент",
        (Closer::Server, Lang::En) => "the server",
        (Closer::Server, Lang::Ru) => "сервер",
        (Closer::Simultaneous, Lang::En) => "both at once (a simultaneous close)",
        (Closer::Simultaneous, Lang::Ru) => "обе стороны сразу (одновременное закрытие)",
        (Closer::ClientReset | Closer::ServerReset, Lang::En) => "a reset (RST)",
        (Closer::ClientReset | Closer::ServerReset, Lang::Ru) => "сброс (RST)",
        (Closer::Unknown, Lang::En) => "unknown",
        (Closer::Unknown, Lang::Ru) => "неизвестно",
    };
    let _ = writeln!(text, "  {} {}", say!(lang, "Closed first:", "Закрыл первым:"), closer);
    if !first.is_empty() {
        let _ = writeln!(text, "{}", wrap(&capitalized(&first)));
    }
    for endpoint in time_waits(connection) {
        let role = connection.role_of(endpoint);
        let line = say!(
            lang,
            "TIME-WAIT sits with {}, on {} ↔ {}: the side that closes first is the one that waits.",
            "TIME-WAIT остался у стороны «{}», на {} ↔ {}: ждёт та сторона, что закрыла первой.",
            who(lang, endpoint, role),
            endpoint.local,
            endpoint.remote
        );
        let _ = writeln!(text, "{}", wrap(&line));
    }
    text + &wrap(explain::closer(lang, connection.closed_first))
}

pub fn step_two(lang: Lang) -> String {
    heading("2", say!(lang, "TIME-WAIT, timed", "TIME-WAIT с секундомером"))
}

pub fn countdown(lang: Lang, left_ns: u64) -> String {
    say!(
        lang,
        "  TIME-WAIT: {:>4.1} s left on the kernel's timer",
        "  TIME-WAIT: до срабатывания таймера ядра {:>4.1} с",
        left_ns as f64 / 1e9
    )
}

pub fn quick_time_left(lang: Lang, rows: &[TableRow]) -> String {
    let mut text = String::new();
    for row in rows {
        let left = row.time_wait_left_ns.unwrap_or(0) as f64 / 1e9;
        let line = say!(
            lang,
            "--quick: not waiting. The kernel's timer of the TIME-WAIT on {} ↔ {} had {:.1} s left; it would end {} to 62.05 s after the close (a full run of the lab measures it).",
            "--quick: без ожидания. Таймеру ядра у TIME-WAIT {} ↔ {} оставалось {:.1} с; он закончился бы через {}–62,05 с после закрытия (полный запуск лабораторной это измеряет).",
            row.local,
            row.remote,
            left,
            TIME_WAIT_LEN_NS / 1_000_000_000
        );
        let _ = writeln!(text, "{}", wrap(&line));
    }
    text + &wrap(explain::WHY_60_TO_62.text(lang))
}

pub fn measured(lang: Lang, connection: &Connection) -> String {
    let mut text = String::new();
    for endpoint in time_waits(connection) {
        let Some(tw) = &endpoint.time_wait else { continue };
        let line = match tw.duration_ns() {
            Some(ns) => say!(
                lang,
                "Measured: the TIME-WAIT on {} ↔ {} lasted {:.2} s, from the close to the kernel's timer ({}).",
                "Измерено: TIME-WAIT {} ↔ {} длился {:.2} с, от закрытия до срабатывания таймера ядра ({}).",
                endpoint.local,
                endpoint.remote,
                ns as f64 / 1e9,
                tw.end.name()
            ),
            None => say!(
                lang,
                "The TIME-WAIT on {} ↔ {} ended ({}), but its start was not seen.",
                "TIME-WAIT {} ↔ {} закончился ({}), но его начало не было видно.",
                endpoint.local,
                endpoint.remote,
                tw.end.name()
            ),
        };
        let _ = writeln!(text, "{}", wrap(&line));
    }
    text + &wrap(explain::WHY_60_TO_62.text(lang))
}

/// Why TIME-WAIT exists and can't be removed, on the connection just seen.
pub fn why(lang: Lang, connection: &Connection) -> String {
    let mut text = heading(
        "3",
        say!(
            lang,
            "Why it exists, and why it can't be removed",
            "Зачем он нужен и почему его нельзя удалить"
        ),
    );
    for endpoint in time_waits(connection) {
        let role = connection.role_of(endpoint);
        let line = say!(
            lang,
            "On this connection: {} sent the last ACK, for its peer's FIN. Had that ACK been lost, the peer ({}) would have sent its FIN again, and the TIME-WAIT on {} is what would answer it with an ACK, not with a RST. And until it ends, no new connection can take the same 4-tuple ({} ↔ {}), so a late segment of this one can't land in a new one.",
            "На этом соединении: {} отправил последний ACK — на FIN собеседника. Потеряйся этот ACK, собеседник ({}) прислал бы FIN снова, и ответил бы ему ACK, а не RST, именно TIME-WAIT на {}. И пока он не закончится, новое соединение не может занять тот же 4-кортеж ({} ↔ {}), так что запоздавший сегмент этого соединения не попадёт в новое.",
            who(lang, endpoint, role),
            endpoint.remote,
            endpoint.local,
            endpoint.local,
            endpoint.remote
        );
        let _ = write!(text, "\n{}\n", wrap(&line));
    }
    for note in [&explain::WHY_TIME_WAIT, &explain::WHY_NOT_DELETE, &explain::TRACE_SHOWS_CLOSED] {
        let _ = write!(text, "\n{}\n", wrap(note.text(lang)));
    }
    text
}

pub fn step_four(lang: Lang, range: (u16, u16), host: (u16, u16), reuse_default: &str) -> String {
    let ports = u32::from(range.1 - range.0) + 1;
    let mut text = heading(
        "4",
        say!(
            lang,
            "What a pile-up costs: ports, and descriptors",
            "Чем опасно скопление: порты и дескрипторы"
        ),
    );
    let setup = say!(
        lang,
        "In the lab's namespace only (sysctls under net. are per namespace): net.ipv4.ip_local_port_range = {} {} ({} ephemeral ports; this host has {} {}, {} of them), and net.ipv4.tcp_tw_reuse = 0 (a new namespace starts with {}: 2 is reuse for loopback only). A client connects to 127.0.0.1:9090 and closes first each time, so each connection leaves a TIME-WAIT on the client's port.",
        "Только в пространстве имён лабораторной (sysctl в net. у каждого пространства свои): net.ipv4.ip_local_port_range = {} {} ({} эфемерных портов; у этого хоста {} {}, их {}), и net.ipv4.tcp_tw_reuse = 0 (новое пространство начинает с {}: 2 — переиспользование только для loopback). Клиент подключается к 127.0.0.1:9090 и каждый раз закрывает первым, поэтому каждое соединение оставляет TIME-WAIT на порту клиента.",
        range.0,
        range.1,
        ports,
        host.0,
        host.1,
        u32::from(host.1.saturating_sub(host.0)) + 1,
        reuse_default
    );
    let _ = write!(text, "\n{}\n", wrap(&setup));
    text
}

fn errno_text(errno: Errno) -> String {
    let message = std::io::Error::from_raw_os_error(i32::from(errno.0)).to_string();
    let message = message.split(" (os error").next().unwrap_or_default().to_owned();
    format!("{} ({message})", errno.name())
}

pub fn ports_exhausted(
    lang: Lang,
    connected: &[u16],
    failure: Errno,
    time_waits: &[TableRow],
    fds: &Fds,
) -> String {
    let ports: Vec<String> = connected.iter().map(u16::to_string).collect();
    let mut text = String::new();
    let filled = say!(
        lang,
        "{} connections got a port ({}), and each left a TIME-WAIT there: the kernel holds {} TIME-WAIT sockets toward 127.0.0.1:9090 now. Connection {} failed: connect() returned {}. Every port of the range is held by a TIME-WAIT toward this server address and port, so no 4-tuple is free.",
        "Соединений, получивших порт: {} ({}), и каждое оставило там TIME-WAIT; TIME-WAIT-сокетов к 127.0.0.1:9090 сейчас в ядре: {}. Соединение № {} не удалось: connect() вернул {}. Каждый порт диапазона занят TIME-WAIT к этому адресу и порту сервера, свободного 4-кортежа нет.",
        connected.len(),
        ports.join(", "),
        time_waits.len(),
        connected.len() + 1,
        errno_text(failure)
    );
    let _ = writeln!(text, "{}", wrap(&filled));
    let held = say!(
        lang,
        "Descriptors: the server process holds {} descriptors, {} of them sockets ({} its listener). The {} TIME-WAIT sockets are held by no descriptor at all ({} of them has an inode a descriptor could point to): the application closed them, and only the kernel keeps them. A pile of TIME-WAITs costs ports (and a little kernel memory), never file descriptors.",
        "Дескрипторы: у процесса сервера их {}, из них сокетов {} (слушающих {}). На TIME-WAIT-сокеты (их {}) не приходится ни одного дескриптора (с inode, на который мог бы указывать дескриптор, — {}): приложение их закрыло, держит их только ядро. Скопление TIME-WAIT стоит портов (и немного памяти ядра), но не файловых дескрипторов.",
        fds.total,
        fds.sockets,
        fds.listeners,
        fds.time_waits,
        fds.time_waits_with_inode
    );
    let _ = writeln!(text, "\n{}\n", wrap(&held));
    text + &wrap(explain::PILE_UP.text(lang))
}

pub fn reused(
    lang: Lang,
    delay_ms: u64,
    again: &[u16],
    failed: Option<Errno>,
    killed: usize,
) -> String {
    let ports: Vec<String> = again.iter().map(u16::to_string).collect();
    let mut line = say!(
        lang,
        "Now net.ipv4.tcp_tw_reuse = 1, and the TIME-WAITs are older than net.ipv4.tcp_tw_reuse_delay ({} ms): {} new connections got ports again ({}). The kernel let each take over a TIME-WAIT's 4-tuple, because the new connection's TCP timestamps are newer than any late segment of the old one could carry (PAWS tells them apart), and ended that TIME-WAIT early: tcptrace saw {} TIME-WAITs killed.",
        "Теперь net.ipv4.tcp_tw_reuse = 1, а TIME-WAIT старше net.ipv4.tcp_tw_reuse_delay ({} мс): новые соединения снова получили порты, их {} ({}). Ядро разрешило каждому занять 4-кортеж TIME-WAIT, потому что метки времени TCP нового соединения новее всего, что мог бы нести запоздавший сегмент старого (их различает PAWS), и досрочно завершило тот TIME-WAIT: TIME-WAIT, завершённых досрочно (killed), tcptrace видел: {}.",
        delay_ms,
        again.len(),
        ports.join(", "),
        killed
    );
    if let Some(errno) = failed {
        line += &say!(
            lang,
            " Then connect() failed again: {}.",
            " Затем connect() снова не удался: {}.",
            errno_text(errno)
        );
    }
    let note = say!(
        lang,
        "tcp_tw_reuse helps only the side that connects (the client), toward the same server address and port; a server's TIME-WAITs on its own port cost it nothing, since each connection has another client port.",
        "tcp_tw_reuse помогает только стороне, которая подключается (клиенту), к тому же адресу и порту сервера; TIME-WAIT сервера на его собственном порту ему ничего не стоят: у каждого соединения другой порт клиента."
    );
    format!("\n{}\n\n{}", wrap(&line), wrap(&note))
}

pub fn step_leak(lang: Lang, max_fds: u64) -> String {
    let title = say!(
        lang,
        "Where descriptors run out: CLOSE_WAIT",
        "Где кончаются дескрипторы: CLOSE_WAIT"
    );
    let line = say!(
        lang,
        "Descriptors run out for sockets an application keeps open. A server on 127.0.0.1:9091 that accepts connections and never closes them, with a limit of {} open files (ulimit -n {}); a client connects and closes each. Every socket the server accepted waits in CLOSE_WAIT for a close() that never comes.",
        "Дескрипторы кончаются на сокетах, которые приложение держит открытыми. Сервер на 127.0.0.1:9091 принимает соединения и никогда их не закрывает, при пределе {} открытых файлов (ulimit -n {}); клиент подключается и каждый раз закрывает. Каждый принятый сервером сокет ждёт в CLOSE_WAIT вызова close(), который так и не наступит.",
        max_fds,
        max_fds
    );
    format!("{}\n{}\n", heading("5", title), wrap(&line))
}

#[allow(clippy::too_many_arguments)]
pub fn leaked(
    lang: Lang,
    owner: (&str, u32),
    max_fds: u64,
    accepted: usize,
    accept_failed: Option<Errno>,
    close_waits: usize,
    fds: &Fds,
) -> String {
    let queued = close_waits.saturating_sub(fds.close_wait);
    let failed = accept_failed.map(errno_text).unwrap_or_else(|| "-".to_owned());
    let line = say!(
        lang,
        "{} (pid {}) accepted {} connections and holds {} descriptors, as many as its limit of {} allows: {} of them sockets in CLOSE_WAIT, one its listener, three standard input, output and error. Then accept() failed: {}. {} more connections wait in its accept queue, in CLOSE_WAIT too, and will fail the same way. Here each socket does hold a descriptor, and the limit bites: tcptrace reports such an owner (the \"!!\" line above) once its sockets sit in CLOSE_WAIT longer than --stuck-after (2 s in the lab, 30 s by default).",
        "{} (pid {}) принял соединений: {}; дескрипторов у него {} — столько, сколько позволяет его предел {}: из них сокетов в CLOSE_WAIT {}, один — слушающий, три — стандартные ввод, вывод и ошибки. Затем accept() не удался: {}. Ещё соединений в его очереди принятия, тоже в CLOSE_WAIT: {}; они упрутся в то же. Здесь каждый сокет держит дескриптор, и предел срабатывает: tcptrace сообщает о таком владельце (строка «!!» выше), когда его сокеты сидят в CLOSE_WAIT дольше --stuck-after (2 с в лабораторной, 30 с по умолчанию).",
        owner.0,
        owner.1,
        accepted,
        fds.total,
        max_fds,
        fds.close_wait,
        failed,
        queued
    );
    format!("\n{}", wrap(&line))
}

pub fn the_end(lang: Lang) -> String {
    say!(
        lang,
        "\nThe lab's namespace is gone, and its processes and settings with it: nothing of the lab is left on this host.",
        "\nПространство имён лабораторной удалено, а с ним её процессы и настройки: на этом хосте от неё ничего не осталось."
    )
}
