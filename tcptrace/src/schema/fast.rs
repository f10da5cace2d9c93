//! The hand-written JSON writers the hot lines share (the live stream's and the
//! recording's events): no `fmt` machinery and no allocation per event. Tests check every
//! line they start against serde's writing of the same [`super`] types.

use std::net::SocketAddr;

use super::json_line::JsonLine;
use crate::event::{EventKind, Family, TcpEvent, TcpInfo};

/// The fields every JSON form of an event has (the live stream's and the recording's):
/// type, time, socket (`sk`: the kernel's, or for a time-wait timer, the live stream's is
/// the socket that handed over), addresses, namespace, and what happened. The caller adds
/// the rest and the `}`.
pub fn event_head(
    line: &mut JsonLine,
    event: &TcpEvent,
    sk: u64,
    addresses: Option<(SocketAddr, SocketAddr)>,
    netns: Option<u32>,
) {
    let (type_name, detail) = match event.kind {
        EventKind::Transition { .. } => ("transition", None),
        EventKind::TimeWaitRearm { .. } => ("time_wait_timer", Some(("event", "rearm"))),
        EventKind::TimeWaitCancel { .. } => ("time_wait_timer", Some(("event", "cancel"))),
        EventKind::TimeWaitExpire { .. } => ("time_wait_timer", Some(("event", "expire"))),
        EventKind::ResetSent => ("reset", Some(("direction", "sent"))),
        EventKind::ResetReceived => ("reset", Some(("direction", "received"))),
    };
    line.raw("{\"type\":\"").raw(type_name).raw("\"");
    if let Some((key, value)) = detail {
        line.raw(",\"").raw(key).raw("\":\"").raw(value).raw("\"");
    }
    line.raw(",\"ts_ns\":").u64(event.ts_ns).raw(",\"sk\":").hex(sk);
    if let Some((local, remote)) = addresses {
        line.raw(",\"family\":\"").raw(Family::of(&local).name()).raw("\"");
        line.raw(",\"local\":").address(&local).raw(",\"remote\":").address(&remote);
    }
    line.raw(",\"netns\":").optional(netns.map(u64::from));
    match event.kind {
        EventKind::Transition { old, new, time_wait_timer } => {
            line.raw(",\"old\":\"").raw(old.name()).raw("\",\"new\":\"").raw(new.name()).raw("\"");
            if let Some(timer) = time_wait_timer {
                line.raw(",\"time_wait_timer\":").hex(timer);
            }
            if let Some(counters) = &event.counters {
                line.raw(",\"tcp_info\":");
                tcp_info(line, &counters.info);
                if let Some(error) = counters.error {
                    line.raw(",\"error\":\"").raw(&error.name()).raw("\"");
                }
            }
        }
        EventKind::TimeWaitRearm { timer, timeout_jiffies } => {
            line.raw(",\"timer\":").hex(timer);
            line.raw(",\"timeout_jiffies\":").u64(u64::from(timeout_jiffies));
        }
        EventKind::TimeWaitCancel { timer } | EventKind::TimeWaitExpire { timer } => {
            line.raw(",\"timer\":").hex(timer);
        }
        EventKind::ResetSent | EventKind::ResetReceived => {}
    }
}

/// A [`TcpInfo`] object.
pub fn tcp_info(line: &mut JsonLine, counters: &TcpInfo) {
    line.raw("{\"bytes_acked\":").u64(counters.bytes_acked);
    line.raw(",\"bytes_received\":").u64(counters.bytes_received);
    line.raw(",\"bytes_retrans\":").u64(counters.bytes_retrans);
    line.raw(",\"segs_out\":").u64(counters.segs_out.into());
    line.raw(",\"segs_in\":").u64(counters.segs_in.into());
    line.raw(",\"total_retrans\":").u64(counters.total_retrans.into());
    line.raw(",\"rtt_us\":").u64(counters.rtt_us.into());
    line.raw(",\"min_rtt_us\":").u64(counters.min_rtt_us.into());
    line.raw(",\"snd_cwnd\":").u64(counters.snd_cwnd.into()).raw("}");
}
