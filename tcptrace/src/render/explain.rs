//! Notes for learners (`--explain`), in English and Russian (`--lang`).
//!
//! Section numbers are RFC 9293's. The notes explain the protocol *and* what this trace
//! shows of it, which is not always what `ss` shows.

use crate::{
    engine::{Closer, Connection, TimeWaitEnd, TimeWaitKind},
    event::TcpState,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    #[default]
    En,
    Ru,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Ru];

    /// The code `--lang` takes.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }
}

/// Picks the text in `lang`.
fn pick(lang: Lang, en: &'static str, ru: &'static str) -> &'static str {
    match lang {
        Lang::En => en,
        Lang::Ru => ru,
    }
}

/// What entering `new` from `old` means. `time_wait` says the socket handed over to a
/// time-wait socket.
pub fn transition(lang: Lang, old: TcpState, new: TcpState, time_wait: bool) -> &'static str {
    use TcpState::*;
    match (old, new) {
        (_, SynSent) => pick(
            lang,
            "connect() sent a SYN and waits for the peer's SYN+ACK: the three-way handshake (RFC 9293 §3.5).",
            "connect() отправил SYN и ждёт SYN+ACK от собеседника: трёхстороннее рукопожатие (RFC 9293 §3.5).",
        ),
        (_, SynReceived) => pick(
            lang,
            "A SYN reached a listening socket: the kernel made this socket, answered SYN+ACK and waits for the last ACK (§3.5). accept() has not seen it yet.",
            "SYN пришёл на слушающий сокет: ядро создало этот сокет, ответило SYN+ACK и ждёт последний ACK (§3.5). accept() его ещё не видел.",
        ),
        (_, Established) => pick(
            lang,
            "Handshake done: both sides can send data (§3.5).",
            "Рукопожатие завершено: обе стороны могут передавать данные (§3.5).",
        ),
        (_, FinWait1) => pick(
            lang,
            "This side closes first (active close): it sent a FIN and waits for its ACK (§3.6).",
            "Эта сторона закрывает первой (активное закрытие): она отправила FIN и ждёт на него ACK (§3.6).",
        ),
        (_, FinWait2) => pick(
            lang,
            "The peer acknowledged our FIN; now we wait for the peer's own FIN. The peer may still send data: the connection is half-closed (§3.6, §3.6.1).",
            "Собеседник подтвердил наш FIN; теперь ждём его собственный FIN. Он ещё может присылать данные: соединение полузакрыто (§3.6, §3.6.1).",
        ),
        (_, CloseWait) => pick(
            lang,
            "The peer sent a FIN: it will send nothing more. This side (passive close) must still call close(); a socket that stays here is an application that forgot to: a CLOSE-WAIT leak (§3.6).",
            "Собеседник прислал FIN: он больше ничего не отправит. Эта сторона (пассивное закрытие) ещё должна вызвать close(); сокет, застрявший здесь, — это приложение, которое забыло его закрыть: утечка CLOSE-WAIT (§3.6).",
        ),
        (_, LastAck) => pick(
            lang,
            "This side closes after the peer: its FIN is out, it waits for the last ACK. The passive closer gets no TIME-WAIT (§3.6).",
            "Эта сторона закрывает после собеседника: её FIN отправлен, она ждёт последний ACK. Пассивно закрывающей стороне TIME-WAIT не нужен (§3.6).",
        ),
        (_, Closing) => pick(
            lang,
            "Both sides sent a FIN before getting the other's: a simultaneous close (§3.6, the case where both close at once). Both will keep a TIME-WAIT.",
            "Обе стороны отправили FIN, не получив FIN собеседника: одновременное закрытие (§3.6, случай, когда обе стороны закрывают одновременно). TIME-WAIT будет у обеих.",
        ),
        (FinWait2 | Closing, Closed) if time_wait => pick(
            lang,
            "Not really closed: the kernel moved the connection to a small time-wait socket, which `ss -tan` shows as TIME-WAIT. The full socket is freed, so this tracepoint says CLOSED; tcptrace follows the time-wait socket's timer instead.",
            "Ещё не закрыто: ядро передало соединение маленькому time-wait-сокету, который `ss -tan` показывает как TIME-WAIT. Полный сокет освобождён, поэтому эта точка трассировки пишет CLOSED; дальше tcptrace следит за таймером time-wait-сокета.",
        ),
        (LastAck, Closed) => pick(
            lang,
            "The last ACK arrived: the passive closer is done, with no TIME-WAIT.",
            "Пришёл последний ACK: пассивно закрывающая сторона закончила, без TIME-WAIT.",
        ),
        (Established | SynSent | SynReceived | CloseWait, Closed) => pick(
            lang,
            "Closed without the FIN exchange: a RST was sent or received: an abort (SO_LINGER 0), a refused connection or a reset by the peer (§3.5.2, §3.5.3). No TIME-WAIT.",
            "Закрыто без обмена FIN: отправлен или получен RST — аварийное закрытие (SO_LINGER 0), отказ в соединении или сброс собеседником (§3.5.2, §3.5.3). TIME-WAIT нет.",
        ),
        (_, Closed) => pick(lang, "The socket is gone.", "Сокета больше нет."),
        (_, Listen) => pick(
            lang,
            "listen(): the socket waits for connections.",
            "listen(): сокет ждёт входящих соединений.",
        ),
        (_, TimeWait) | (_, NewSynRecv) => {
            pick(lang, "A kernel-internal state (§3.3.2).", "Внутреннее состояние ядра (§3.3.2).")
        }
    }
}

pub fn closer(lang: Lang, closer: Closer) -> &'static str {
    match closer {
        Closer::Client => pick(
            lang,
            "The client closed first, so the TIME-WAIT is on the client's port.",
            "Клиент закрыл первым, поэтому TIME-WAIT на порту клиента.",
        ),
        Closer::Server => pick(
            lang,
            "The server closed first, so the TIME-WAIT is on the server's port, as `ss -tan` on the server shows.",
            "Сервер закрыл первым, поэтому TIME-WAIT на порту сервера — это и видно в `ss -tan` на сервере.",
        ),
        Closer::Simultaneous => SIMULTANEOUS.text(lang),
        Closer::ClientReset | Closer::ServerReset => pick(
            lang,
            "The connection ended with a RST, not FINs: no TIME-WAIT protects this 4-tuple (§3.5.2).",
            "Соединение закончилось RST, а не обменом FIN: этот 4-кортеж не защищён TIME-WAIT (§3.5.2).",
        ),
        Closer::Unknown => pick(
            lang,
            "Who closed first can't be told: tracing started mid-way or events were lost.",
            "Кто закрыл первым, сказать нельзя: трассировка началась с середины или события потеряны.",
        ),
    }
}

/// A note in both languages.
pub struct Note {
    pub en: &'static str,
    pub ru: &'static str,
}

impl Note {
    pub fn text(&self, lang: Lang) -> &'static str {
        pick(lang, self.en, self.ru)
    }
}

pub const WHY_TIME_WAIT: Note = Note {
    en: "Why TIME-WAIT exists: the side that closes first keeps the connection's 4-tuple for 2×MSL (RFC 9293 §3.6, §3.4.2). Late segments of this connection that are still in the network die out meanwhile instead of landing in a new connection on the same 4-tuple; and if our last ACK is lost, the peer resends its FIN and we can acknowledge it again (§3.10.7.4) instead of answering with a RST.",
    ru: "Зачем нужен TIME-WAIT: сторона, закрывшая первой, держит 4-кортеж соединения 2×MSL (RFC 9293 §3.6, §3.4.2). Запоздавшие сегменты этого соединения, ещё блуждающие по сети, за это время исчезают, а не попадают в новое соединение с тем же 4-кортежем; а если наш последний ACK потеряется, собеседник повторит FIN, и мы сможем снова его подтвердить (§3.10.7.4), а не ответить RST.",
};

pub const WHY_NOT_DELETE: Note = Note {
    en: "Why it can't simply be deleted: a new connection on the same 4-tuple could then take an old segment as its own data. Linux ends it early only when that is safe: a new connection with newer timestamps (tcp_tw_reuse) or a RST (RFC 1337 describes the hazards).",
    ru: "Почему его нельзя просто удалить: тогда новое соединение с тем же 4-кортежем может принять старый сегмент за свои данные. Linux завершает его досрочно только когда это безопасно: новое соединение с более новыми метками времени (tcp_tw_reuse) или RST (об опасностях — RFC 1337).",
};

pub const WHY_60_TO_62: Note = Note {
    en: "Why 60–62 s and not exactly 60: Linux fixes TIME-WAIT at 60 s (TCP_TIMEWAIT_LEN; the RFC's MSL of 2 minutes would give 4). The kernel's timer wheel files a 60 s timer in a bucket of 512 jiffies (2.048 s at HZ=250) and never fires a timer early, so a measured TIME-WAIT lasts 60 to 62.05 s.",
    ru: "Почему 60–62 с, а не ровно 60: в Linux TIME-WAIT длится 60 с (TCP_TIMEWAIT_LEN; по MSL из RFC, 2 минуты, вышло бы 4). Колесо таймеров ядра кладёт 60-секундный таймер в ячейку по 512 тиков (2,048 с при HZ=250) и никогда не срабатывает раньше срока, поэтому измеренный TIME-WAIT длится от 60 до 62,05 с.",
};

pub const PILE_UP: Note = Note {
    en: "What a pile-up costs: every TIME-WAIT on the client side holds one ephemeral port toward that server address and port (net.ipv4.ip_local_port_range, about 28 000 ports), so a client that opens and closes connections fast runs out and connect() fails with EADDRNOTAVAIL. Each also takes some kernel memory, and past net.ipv4.tcp_max_tw_buckets the kernel skips TIME-WAIT for new closes (\"time wait bucket table overflow\"), losing its protection.",
    ru: "Чем опасно скопление: каждый TIME-WAIT на стороне клиента держит один эфемерный порт к этому адресу и порту сервера (net.ipv4.ip_local_port_range, около 28 000 портов), поэтому клиент, часто открывающий и закрывающий соединения, исчерпывает их, и connect() падает с EADDRNOTAVAIL. Каждый TIME-WAIT ещё и занимает память ядра, а сверх net.ipv4.tcp_max_tw_buckets ядро перестаёт создавать TIME-WAIT («time wait bucket table overflow») и теряет его защиту.",
};

pub const TRACE_SHOWS_CLOSED: Note = Note {
    en: "Why the trace shows FIN_WAIT2 → CLOSED where `ss` shows TIME-WAIT: to save memory the kernel replaces the socket with a small time-wait socket, and that one never passes the state-change tracepoint. tcptrace follows its timer (tw_timer_handler) to see when TIME-WAIT really ends.",
    ru: "Почему трассировка показывает FIN_WAIT2 → CLOSED там, где `ss` показывает TIME-WAIT: для экономии памяти ядро заменяет сокет маленьким time-wait-сокетом, а тот не проходит через точку трассировки смены состояния. tcptrace следит за его таймером (tw_timer_handler), чтобы увидеть, когда TIME-WAIT на самом деле заканчивается.",
};

pub const SIMULTANEOUS: Note = Note {
    en: "A simultaneous close: both sides called close() before the other's FIN arrived. With curl against python3 -m http.server this happens often: the server closes right after sending its response and curl closes as soon as it has read it, and on loopback both close() calls can land within microseconds on two CPUs. Both sides go FIN_WAIT1 → CLOSING, and both keep a TIME-WAIT.",
    ru: "Одновременное закрытие: обе стороны вызвали close() до того, как пришёл FIN собеседника. У curl и python3 -m http.server так бывает часто: сервер закрывает сразу после отправки ответа, а curl — как только его прочитал, и на loopback оба close() могут случиться с разницей в микросекунды на двух процессорах. Обе стороны проходят FIN_WAIT1 → CLOSING, и у обеих остаётся TIME-WAIT.",
};

pub const FIN_WAIT2_SOCKET: Note = Note {
    en: "This one is an orphaned FIN_WAIT2, not a TIME-WAIT: the application closed, our FIN was acknowledged, but the peer's FIN never came. The kernel keeps it on a time-wait socket for net.ipv4.tcp_fin_timeout (60 s by default).",
    ru: "Это осиротевший FIN_WAIT2, а не TIME-WAIT: приложение закрыло сокет, наш FIN подтверждён, но FIN собеседника так и не пришёл. Ядро держит его на time-wait-сокете net.ipv4.tcp_fin_timeout (по умолчанию 60 с).",
};

pub const COUNTERS: Note = Note {
    en: "What the counters say: a retransmit is a segment sent again because its acknowledgement did not come in time (it was lost, or late); some are normal on a real network, many mean loss or congestion. RTT is the round-trip time, from sending a segment to its ACK, smoothed by the kernel (srtt): tens of µs on loopback, milliseconds across a network. They are read from the socket when it closed, as ss -i shows them.",
    ru: "Что говорят счётчики: повторная передача (retransmit) — сегмент, отправленный снова, потому что подтверждение не пришло вовремя (он потерялся или задержался); немного их — норма для настоящей сети, много — признак потерь или перегрузки. RTT — время кругового пути, от отправки сегмента до его ACK, сглаженное ядром (srtt): десятки мкс на loopback, миллисекунды через сеть. Они прочитаны из сокета при закрытии, как их показывает ss -i.",
};

pub const REFUSED: Note = Note {
    en: "The connect was refused: the other host answered the SYN with a RST, which means nothing listens on that port (ECONNREFUSED). It fails at once, after one round trip.",
    ru: "Соединение отвергнуто: другой хост ответил на SYN сегментом RST — на этом порту никто не слушает (ECONNREFUSED). Ошибка приходит сразу, через один круговой путь.",
};

pub const TIMED_OUT: Note = Note {
    en: "The connect timed out: no answer came to the SYN, so the kernel sent it again after 1 s, 2 s, 4 s… (net.ipv4.tcp_syn_retries times) and then gave up with ETIMEDOUT. A firewall that drops packets silently, or a host that is down, looks like this.",
    ru: "Время соединения истекло: на SYN никто не ответил, и ядро повторяло его через 1 с, 2 с, 4 с… (net.ipv4.tcp_syn_retries раз), а затем сдалось с ошибкой ETIMEDOUT. Так выглядит брандмауэр, молча отбрасывающий пакеты, или выключенный хост.",
};

pub const STUCK_CLOSE_WAIT: Note = Note {
    en: "What CLOSE_WAIT means: the peer has closed its side (its FIN arrived) and the kernel waits for this application to call close(). Nothing happens until it does: a socket can stay in CLOSE_WAIT forever, holding its file descriptor and its buffers, so a program that forgets to close leaks them until it hits its limit of open files (\"Too many open files\"). TIME-WAIT is not like that: there the application has closed, no descriptor is held, and the kernel ends it by itself after 60 s.",
    ru: "Что значит CLOSE_WAIT: собеседник закрыл свою сторону (пришёл его FIN), и ядро ждёт, когда это приложение вызовет close(). Пока оно этого не сделает, ничего не происходит: сокет может висеть в CLOSE_WAIT вечно, держа свой файловый дескриптор и буферы, поэтому программа, забывающая закрывать сокеты, теряет их, пока не упрётся в предел открытых файлов («Too many open files»). С TIME-WAIT не так: там приложение уже закрыло сокет, дескриптор не занят, и ядро само завершает его через 60 с.",
};

/// The general notes about TIME-WAIT, shown once per run.
pub const TIME_WAIT_NOTES: [&Note; 5] =
    [&WHY_TIME_WAIT, &WHY_NOT_DELETE, &WHY_60_TO_62, &TRACE_SHOWS_CLOSED, &PILE_UP];

/// Notes on how one connection ended.
pub fn connection(lang: Lang, connection: &Connection) -> Vec<&'static str> {
    let mut notes = vec![closer(lang, connection.closed_first)];
    // Each note once, however many endpoints it applies to.
    let mut add = |note: &'static str| {
        if !notes.contains(&note) {
            notes.push(note);
        }
    };
    match connection.failed_connect().and_then(|failed| failed.error) {
        Some(error) if error.name() == "ECONNREFUSED" => add(REFUSED.text(lang)),
        Some(error) if error.name() == "ETIMEDOUT" => add(TIMED_OUT.text(lang)),
        _ => {}
    }
    if connection.failed_connect().is_none()
        && connection.endpoints.iter().any(|e| e.counters.is_some())
    {
        add(COUNTERS.text(lang));
    }
    for endpoint in &connection.endpoints {
        let Some(tw) = &endpoint.time_wait else { continue };
        if tw.kind == TimeWaitKind::FinWait2 {
            add(FIN_WAIT2_SOCKET.text(lang));
        }
        if tw.end == TimeWaitEnd::Killed {
            add(pick(
                lang,
                "This TIME-WAIT was killed early: a RST arrived, a new connection reused the 4-tuple (tcp_tw_reuse), or its network namespace went away.",
                "Этот TIME-WAIT завершён досрочно: пришёл RST, новое соединение переиспользовало 4-кортеж (tcp_tw_reuse) или исчезло его сетевое пространство имён.",
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_change_has_a_note_in_both_languages() {
        for old in TcpState::ALL {
            for new in TcpState::ALL {
                for time_wait in [false, true] {
                    let en = transition(Lang::En, old, new, time_wait);
                    let ru = transition(Lang::Ru, old, new, time_wait);
                    assert!(!en.is_empty() && !ru.is_empty());
                    assert_ne!(en, ru);
                    assert!(ru.chars().any(|c| ('а'..='я').contains(&c)), "{ru}");
                }
            }
        }
        for closer_kind in Closer::ALL {
            assert_ne!(closer(Lang::En, closer_kind), closer(Lang::Ru, closer_kind));
        }
    }

    /// The notes follow what each connection did, read from real engine output.
    #[test]
    fn connection_notes_follow_how_it_ended() {
        use crate::testing::*;
        let (connections, _, _) = simultaneous_close().run(1400.0);
        let [simultaneous] = connections.as_slice() else { panic!("{connections:#?}") };
        for lang in Lang::ALL {
            let notes = connection(lang, simultaneous);
            assert_eq!(notes, [SIMULTANEOUS.text(lang)], "both TIME-WAITs expired naturally");
        }
        // The same connection, its client's TIME-WAIT killed early and the server's kept by
        // an orphaned FIN_WAIT2: one note each, once.
        let mut changed = simultaneous.clone();
        changed.closed_first = Closer::Server;
        for endpoint in &mut changed.endpoints {
            let tw = endpoint.time_wait.as_mut().unwrap();
            tw.end = TimeWaitEnd::Killed;
            tw.kind = TimeWaitKind::FinWait2;
        }
        let notes = connection(Lang::En, &changed);
        assert_eq!(notes.len(), 3, "{notes:#?}");
        assert_eq!(notes[0], closer(Lang::En, Closer::Server));
        assert_eq!(notes[1], FIN_WAIT2_SOCKET.en);
        assert!(notes[2].starts_with("This TIME-WAIT was killed early"), "{}", notes[2]);
    }

    /// A connection that carried data is told what its counters mean; a refused connect
    /// and a timed-out one, why they failed; in both languages.
    #[test]
    fn counters_and_failed_connects_are_explained() {
        use crate::{
            event::{Counters, Errno, TcpInfo, TcpState::*},
            testing::*,
        };
        let mut r = Recording::default();
        let refused = ("127.0.0.1:40010", "127.0.0.1:9");
        let timed_out = ("127.0.0.1:40011", "127.0.0.1:4000");
        server_closes_first(&mut r)
            .with_counters(Counters {
                info: TcpInfo { bytes_acked: 81, rtt_us: 25, ..TcpInfo::default() },
                error: None,
            })
            .transition(1301.0, 41, Closed, SynSent, refused, Some(5))
            .transition(1301.0001, 41, SynSent, Closed, refused, Some(5))
            .with_counters(Counters {
                error: Some(Errno(libc::ECONNREFUSED as u16)),
                ..Counters::default()
            })
            .transition(1302.0, 42, Closed, SynSent, timed_out, Some(5))
            .transition(1305.0, 42, SynSent, Closed, timed_out, None)
            .with_counters(Counters {
                info: TcpInfo { total_retrans: 2, ..TcpInfo::default() },
                error: Some(Errno(libc::ETIMEDOUT as u16)),
            });
        let (connections, _, _) = r.run(1400.0);
        assert_eq!(connections.len(), 3, "{connections:#?}");
        let port = |c: &Connection| c.endpoints[0].remote.port();
        for lang in Lang::ALL {
            for record in &connections {
                let notes = connection(lang, record);
                let expected = match port(record) {
                    9 => REFUSED.text(lang),
                    4000 => TIMED_OUT.text(lang),
                    _ => COUNTERS.text(lang),
                };
                assert!(notes.contains(&expected), "{notes:#?}");
                let others = [REFUSED.text(lang), TIMED_OUT.text(lang), COUNTERS.text(lang)];
                assert_eq!(notes.iter().filter(|n| others.contains(n)).count(), 1, "{notes:#?}");
            }
        }
    }

    /// The note on TIME-WAIT's length states the engine's own constant and the range the
    /// lifecycle test measures.
    #[test]
    fn the_time_wait_length_note_states_the_engines_constant() {
        let seconds = crate::engine::TIME_WAIT_LEN_NS / 1_000_000_000;
        assert!(WHY_60_TO_62.en.contains(&format!("at {seconds} s")), "{}", WHY_60_TO_62.en);
        assert!(WHY_60_TO_62.ru.contains(&format!("длится {seconds} с")), "{}", WHY_60_TO_62.ru);
    }
}
