//! A closing socket's counters (what `TCP_INFO` and `ss -i` report), read from its
//! `struct tcp_sock` at the offsets the loader found in the kernel's BTF. Only close events
//! pay for these reads.

use tcptrace_common::{TcpCounters, TcpSockOffsets};

use crate::home;

/// The member of type `T` at `offset` from the socket's address; 0 if it can't be read.
#[inline(always)]
fn member<T: Default>(sk: u64, offset: u16) -> T {
    home::read(sk + u64::from(offset))
}

#[inline(always)]
pub fn read(sk: u64, offsets: &TcpSockOffsets, into: &mut TcpCounters) {
    into.bytes_acked = member(sk, offsets.bytes_acked);
    into.bytes_received = member(sk, offsets.bytes_received);
    into.bytes_retrans = member(sk, offsets.bytes_retrans);
    into.segs_out = member(sk, offsets.segs_out);
    into.segs_in = member(sk, offsets.segs_in);
    into.total_retrans = member(sk, offsets.total_retrans);
    into.srtt_us8 = member(sk, offsets.srtt_us);
    into.min_rtt_us = member(sk, offsets.min_rtt);
    into.snd_cwnd = member(sk, offsets.snd_cwnd);
    into.sk_err = member(sk, offsets.sk_err);
}
