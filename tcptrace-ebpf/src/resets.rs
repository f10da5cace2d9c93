//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: RSTs, with both ends as the socket
//! sees them. Rare, so perf tracepoints, which copy the addresses out of the packet when
//! there is no socket.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{Config, kind, tcp_state};

use crate::{
    emit::emit,
    filter::{family_kept, keep_reset},
    home::{netns, netns_kept, read},
    record::Record,
};

/// Whether a task holds full socket `sk` (in `state`): the reset comes from a system call
/// of its user (a close with unread data, an abort). A time-wait or request socket has no
/// lock to read.
#[inline(always)]
fn in_process_context(config: &Config, sk: u64, state: u8) -> bool {
    sk != 0
        && state != tcp_state::TIME_WAIT
        && state != tcp_state::NEW_SYN_RECV
        && read::<u32>(sk + u64::from(config.sock.lock_owned)) != 0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_send_reset(&ctx);
    0
}

/// `tcp_send_reset` stores its addresses as `struct sockaddr_in`/`sockaddr_in6`, already
/// oriented from the sender's side: family at +0, port (network order) at +2, address at
/// +4 (IPv4) or +8 (IPv6).
fn try_tcp_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let config = crate::config();
    let offsets = &config.send_reset;
    let record = Record::copy(ctx).ok_or(0)?;
    let family: u16 = record.get(offsets.saddr);
    if !family_kept(config, family) {
        return Ok(());
    }
    let sk: u64 = record.get(offsets.skaddr);
    // A RST for a port with no socket has no namespace to tell: `--netns` drops it.
    let netns = netns(sk, &config.socket_home);
    if !netns_kept(config, netns) {
        return Ok(());
    }
    let sport = u16::from_be(record.get(offsets.saddr + 2));
    let dport = u16::from_be(record.get(offsets.daddr + 2));
    if !keep_reset(config, sk, sport, dport) {
        return Ok(());
    }
    let state = record.get::<i32>(offsets.state) as u8;
    let process_context = in_process_context(config, sk, state);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Each address is a `sockaddr_in` or `sockaddr_in6`: the IP after the family and port.
    let (saddr, daddr) = (offsets.saddr, offsets.daddr);
    emit(config, now, kind::RESET_SENT, sk, process_context, true, |event| {
        let (v4, v6) = ((saddr + 4, daddr + 4), (saddr + 8, daddr + 8));
        record.fill_endpoints(event, family, (sport, dport), v4, v6);
        event.netns = netns;
    });
    Ok(())
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_receive_reset(&ctx);
    0
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let config = crate::config();
    let offsets = &config.receive_reset;
    let record = Record::copy(ctx).ok_or(0)?;
    let family: u16 = record.get(offsets.family);
    if !family_kept(config, family) {
        return Ok(());
    }
    let sk: u64 = record.get(offsets.skaddr);
    let netns = netns(sk, &config.socket_home);
    if !netns_kept(config, netns) {
        return Ok(());
    }
    let sport: u16 = record.get(offsets.sport);
    let dport: u16 = record.get(offsets.dport);
    if !keep_reset(config, sk, sport, dport) {
        return Ok(());
    }
    // The socket a RST reaches is a full one (`tcp_reset`).
    let process_context = in_process_context(config, sk, tcp_state::ESTABLISHED);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(config, now, kind::RESET_RECEIVED, sk, process_context, true, |event| {
        record.fill_from(event, offsets, family, (sport, dport));
        event.netns = netns;
    });
    Ok(())
}
