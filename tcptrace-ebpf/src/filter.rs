//! The filters, applied before anything else costs: `-4`/`-6` by family, `--netns` by
//! the namespace every event names, and `--port`, `--pid` and `--cgroup` per socket. A
//! socket that matched once stays kept until it closes.

use tcptrace_common::{AF_INET, AF_INET6, Config, FAMILY_IPV4, FAMILY_IPV6, MAX_PORTS, tcp_state};

use crate::{KEPT_SOCKETS, home::in_kept_cgroup};

#[inline(always)]
pub fn family_kept(config: &Config, family: u16) -> bool {
    match family {
        AF_INET => config.families & FAMILY_IPV4 != 0,
        AF_INET6 => config.families & FAMILY_IPV6 != 0,
        _ => false,
    }
}

#[inline(always)]
pub fn ports_match(config: &Config, sport: u16, dport: u16) -> bool {
    if config.port_count == 0 {
        return true;
    }
    for i in 0..MAX_PORTS {
        if i as u32 >= config.port_count {
            break;
        }
        let port = config.ports[i];
        if port == sport || port == dport {
            return true;
        }
    }
    false
}

/// Whether this socket passed `--port`/`--pid` before.
#[inline(always)]
fn kept(sk: u64) -> bool {
    // SAFETY: the value is only tested for presence, never read through, so a concurrent
    // update of the entry can't be observed half-written.
    unsafe { KEPT_SOCKETS.get(&sk) }.is_some()
}

/// The `--port`/`--pid`/`--cgroup` filter for a socket's state change. A socket is kept
/// once all of them match, and from then on until it closes. `pid` is its task's, or 0
/// where the task running is not the socket's.
#[inline(always)]
pub fn keep_socket(config: &Config, sk: u64, sport: u16, dport: u16, pid: u32, new: u8) -> bool {
    let closing = new == tcp_state::CLOSE;
    if kept(sk) {
        if closing {
            let _ = KEPT_SOCKETS.remove(&sk);
        }
        return true;
    }
    let pid_matches = config.pid == 0 || pid == config.pid;
    if !(pid_matches && ports_match(config, sport, dport)) {
        return false;
    }
    if config.cgroup != 0 && !in_kept_cgroup(sk, config) {
        return false;
    }
    if !closing {
        let _ = KEPT_SOCKETS.insert(&sk, &1, 0);
    }
    true
}

/// Resets pass the filter when their socket was kept, or (without `--pid`) by port and
/// cgroup, so that a RST for a socket-less port is seen too (unless `--cgroup` asks for an
/// owner it can't have).
#[inline(always)]
pub fn keep_reset(config: &Config, sk: u64, sport: u16, dport: u16) -> bool {
    !config.filters_sockets()
        || kept(sk)
        || (config.pid == 0
            && ports_match(config, sport, dport)
            && (config.cgroup == 0 || in_kept_cgroup(sk, config)))
}
