//! Decoding ring-buffer records into [`TcpEvent`]s.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tcptrace_common::{AF_INET, AF_INET6, Event, kind};

use super::{Comm, Counters, Errno, EventKind, Home, Task, TcpEvent, TcpInfo, TcpState};

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooShort(usize),
    UnknownKind(u8),
    UnknownState(u8),
    UnknownFamily(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort(len) => write!(f, "event of {len} bytes is too short"),
            DecodeError::UnknownKind(kind) => write!(f, "unknown event kind {kind}"),
            DecodeError::UnknownState(state) => write!(f, "unknown TCP state {state}"),
            DecodeError::UnknownFamily(family) => write!(f, "unknown address family {family}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn address(family: u8, bytes: [u8; 16], port: u16) -> Result<SocketAddr, DecodeError> {
    let ip = match u16::from(family) {
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(bytes)),
        _ => return Err(DecodeError::UnknownFamily(family)),
    };
    Ok(SocketAddr::new(ip, port))
}

fn counters(raw: &tcptrace_common::TcpCounters) -> Counters {
    let info = TcpInfo {
        bytes_acked: raw.bytes_acked,
        bytes_received: raw.bytes_received,
        bytes_retrans: raw.bytes_retrans,
        segs_out: raw.segs_out,
        segs_in: raw.segs_in,
        total_retrans: raw.total_retrans,
        rtt_us: raw.srtt_us8 >> 3,
        // `~0` until the first RTT sample.
        min_rtt_us: if raw.min_rtt_us == u32::MAX { 0 } else { raw.min_rtt_us },
        snd_cwnd: raw.snd_cwnd,
    };
    Counters { info, error: u16::try_from(raw.sk_err).ok().filter(|&n| n != 0).map(Errno) }
}

fn state(number: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_kernel(number).ok_or(DecodeError::UnknownState(number))
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<TcpEvent, DecodeError> {
    if bytes.len() < size_of::<Event>() {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    // SAFETY: `Event` is plain `#[repr(C)]` data valid for any bit pattern, and the slice
    // is long enough; `read_unaligned` makes no alignment assumption.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_event(&raw)
}

pub fn decode_event(raw: &Event) -> Result<TcpEvent, DecodeError> {
    let nonzero = |timer: u64| (timer != 0).then_some(timer);
    let kind = match raw.kind {
        kind::TRANSITION => EventKind::Transition {
            old: state(raw.old_state)?,
            new: state(raw.new_state)?,
            time_wait_timer: nonzero(raw.timer),
        },
        kind::TW_REARM => {
            EventKind::TimeWaitRearm { timer: raw.timer, timeout_jiffies: raw.timeout_jiffies }
        }
        kind::TW_CANCEL => EventKind::TimeWaitCancel { timer: raw.timer },
        kind::TW_EXPIRE => EventKind::TimeWaitExpire { timer: raw.timer },
        kind::RESET_SENT => EventKind::ResetSent,
        kind::RESET_RECEIVED => EventKind::ResetReceived,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let addresses = match raw.family {
        0 => None,
        family => {
            Some((address(family, raw.saddr, raw.sport)?, address(family, raw.daddr, raw.dport)?))
        }
    };
    Ok(TcpEvent {
        ts_ns: raw.ts_ns,
        sk: raw.sk,
        kind,
        addresses,
        task: Task {
            pid: raw.pid,
            tid: raw.tid,
            comm: Comm::from_kernel(raw.comm),
            process_context: raw.in_process_context(),
        },
        cpu: raw.cpu,
        counters: (raw.has_counters != 0).then(|| counters(&raw.counters)),
        home: Home::from_kernel(raw.netns, raw.cgroup),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Family;
    use tcptrace_common::tcp_state;

    fn raw_transition() -> Event {
        let mut raw = Event::ZERO;
        raw.kind = kind::TRANSITION;
        raw.ts_ns = 1_293_602_893_000;
        raw.sk = 0xffff_8880_0a1b_2e40;
        raw.family = AF_INET as u8;
        raw.old_state = tcp_state::ESTABLISHED;
        raw.new_state = tcp_state::FIN_WAIT1;
        raw.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        raw.sport = 8080;
        raw.dport = 42020;
        raw.pid = 1743;
        raw.tid = 1744;
        raw.comm[..7].copy_from_slice(b"python3");
        raw.process_context = 1;
        raw
    }

    fn bytes_of(raw: &Event) -> &[u8] {
        // SAFETY: reading the bytes of a plain-data struct without padding.
        unsafe { std::slice::from_raw_parts((raw as *const Event).cast(), size_of::<Event>()) }
    }

    #[test]
    fn decodes_an_ipv4_transition_from_ring_bytes() {
        let raw = raw_transition();
        let event = decode(bytes_of(&raw)).unwrap();
        assert_eq!(
            event.kind,
            EventKind::Transition {
                old: TcpState::Established,
                new: TcpState::FinWait1,
                time_wait_timer: None
            }
        );
        let (local, remote) = event.addresses.unwrap();
        assert_eq!(local.to_string(), "127.0.0.1:8080");
        assert_eq!(remote.to_string(), "127.0.0.2:42020");
        assert_eq!(Family::of(&local), Family::Ipv4);
        assert_eq!(event.task.pid, 1743);
        assert_eq!(event.task.comm.to_string(), "python3");
        assert!(event.task.process_context);
        assert_eq!(event.task.as_owner().unwrap().pid, 1743);
    }

    #[test]
    fn decodes_ipv6_and_softirq_context() {
        let mut raw = raw_transition();
        raw.family = AF_INET6 as u8;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "fe80::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.process_context = 0;
        raw.timer = 0xffff_0000_2222;
        raw.old_state = tcp_state::FIN_WAIT2;
        raw.new_state = tcp_state::CLOSE;
        let event = decode_event(&raw).unwrap();
        let (local, remote) = event.addresses.unwrap();
        assert_eq!(local.to_string(), "[::1]:8080");
        assert_eq!(remote.to_string(), "[fe80::1]:42020");
        assert!(!event.task.process_context);
        assert_eq!(event.task.as_owner(), None, "softirq tasks are not owners");
        assert_eq!(
            event.kind,
            EventKind::Transition {
                old: TcpState::FinWait2,
                new: TcpState::Closed,
                time_wait_timer: Some(0xffff_0000_2222)
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::TooShort(10)));
        let mut raw = raw_transition();
        raw.kind = 99;
        assert_eq!(decode_event(&raw), Err(DecodeError::UnknownKind(99)));
        let mut raw = raw_transition();
        raw.new_state = 42;
        assert_eq!(decode_event(&raw), Err(DecodeError::UnknownState(42)));
        let mut raw = raw_transition();
        raw.family = 7;
        assert_eq!(decode_event(&raw), Err(DecodeError::UnknownFamily(7)));
    }
}
