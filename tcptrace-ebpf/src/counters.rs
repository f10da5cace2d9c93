//! A closing socket's counters (what `TCP_INFO` and `ss -i` report), read from its
//! `struct tcp_sock` at the offsets the loader found in the kernel's BTF. Only close events
//! pay for these reads: one helper call that types the socket as a `tcp_sock`, then plain
//! loads (ten helper reads, before).

use aya_ebpf::helpers::bpf_skc_to_tcp_sock;
use tcptrace_common::{TcpCounters, TcpSockOffsets};

use crate::home::load;

/// Fills `into` from `sk` (a BTF `struct sock *`); false if `sk` is no `tcp_sock`.
#[inline(always)]
pub fn read(sk: *const u8, offsets: &TcpSockOffsets, into: &mut TcpCounters) -> bool {
    // SAFETY: `sk` is the tracepoint's `struct sock *`, which the helper takes (it checks
    // the socket's type itself and returns null for anything but TCP).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    if tp.is_null() {
        return false;
    }
    into.bytes_acked = load(tp, offsets.bytes_acked);
    into.bytes_received = load(tp, offsets.bytes_received);
    into.bytes_retrans = load(tp, offsets.bytes_retrans);
    into.segs_out = load(tp, offsets.segs_out);
    into.segs_in = load(tp, offsets.segs_in);
    into.total_retrans = load(tp, offsets.total_retrans);
    into.srtt_us8 = load(tp, offsets.srtt_us);
    into.min_rtt_us = load(tp, offsets.min_rtt);
    into.snd_cwnd = load(tp, offsets.snd_cwnd);
    into.sk_err = load(tp, offsets.sk_err);
    true
}
