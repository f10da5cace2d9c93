//! Statistics over everything the engine handed out, for the summary: who closed first,
//! TIME-WAIT durations per local endpoint, and ephemeral ports held toward each remote
//! (both per network namespace: each has its own ports).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::{Closer, Connection, Engine, TimeWaitEnd};
use crate::event::TcpInfo;

/// How many TIME-WAIT durations a local endpoint keeps for its median: memory stays
/// bounded however long tcptrace runs.
pub(super) const DURATION_SAMPLE: usize = 1024;

/// TIME-WAIT durations of one local endpoint: exact count, minimum and maximum, and a
/// uniform sample (reservoir) of at most 1024 durations for the median.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeWaitStats {
    pub count: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    pub(super) sample: Vec<u64>,
    pub open: u64,
}

impl TimeWaitStats {
    pub(super) fn add(&mut self, duration_ns: u64) {
        self.count += 1;
        self.min_ns = if self.count == 1 { duration_ns } else { self.min_ns.min(duration_ns) };
        self.max_ns = self.max_ns.max(duration_ns);
        if self.sample.len() < DURATION_SAMPLE {
            self.sample.push(duration_ns);
        } else {
            // Keep each of the `count` durations with equal chance (Algorithm R), with a
            // cheap deterministic generator: no need for cryptographic randomness here.
            let slot = (self.count.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % self.count;
            if let Some(kept) = self.sample.get_mut(slot as usize) {
                *kept = duration_ns;
            }
        }
    }

    /// The median: exact up to 1024 durations, then that of the sample.
    pub fn median_ns(&self) -> Option<u64> {
        let mut sorted = self.sample.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// Counters of many sockets, added up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// Sockets whose counters are in the sums.
    pub sockets: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_retrans: u64,
    pub total_retrans: u64,
}

impl Carried {
    /// Sums that saturate: a damaged recording's counters can be anything.
    fn add(&mut self, counters: &TcpInfo) {
        self.sockets += 1;
        self.bytes_acked = self.bytes_acked.saturating_add(counters.bytes_acked);
        self.bytes_received = self.bytes_received.saturating_add(counters.bytes_received);
        self.bytes_retrans = self.bytes_retrans.saturating_add(counters.bytes_retrans);
        self.total_retrans = self.total_retrans.saturating_add(counters.total_retrans.into());
    }
}

/// TIME-WAIT sockets on ephemeral ports toward one remote endpoint from one local address:
/// each holds a port that a new connection to that remote endpoint can't use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPressure {
    pub now: u64,
    pub peak: u64,
}

/// The summary's tables, updated at every record and every time-wait's start and end:
/// hashed with foldhash, where std's SipHash showed in profiles of the tracer.
pub type StatsMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A local endpoint in its network namespace (`None` when not known).
pub type LocalKey = (Option<u32>, SocketAddr);
/// A local address in its namespace, and a remote endpoint it holds ports toward.
pub type TowardKey = (Option<u32>, IpAddr, SocketAddr);

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections: u64,
    pub closed_first: StatsMap<Closer, u64>,
    pub time_wait_by_local: StatsMap<LocalKey, TimeWaitStats>,
    pub time_wait_toward_remote: StatsMap<TowardKey, PortPressure>,
    pub incomplete: u64,
    /// Connects that never got through (SYN_SENT → CLOSED), by the error they ended with
    /// (its name, or `unknown` when the close came without the socket's counters).
    pub failed_connects: BTreeMap<String, u64>,
    /// What every socket that closed with its counters carried, added up.
    pub carried: Carried,
    /// Connections dropped unfinished to keep memory bounded.
    pub aged_out: u64,
    /// Sockets that were there before tracing began (the snapshot's, and time-wait
    /// sockets met by their timer).
    pub seen_at_start: u64,
    /// Time-wait sockets open now.
    pub time_waits_open: u64,
    /// Timer or reset events for sockets the engine never saw.
    pub unmatched_events: u64,
    pub lost_events: u64,
    /// What was stuck when the trace ended, one entry per owner.
    pub stuck_at_exit: Vec<super::Stuck>,
}

impl Engine {
    pub(super) fn record_stats(&mut self, connection: &Connection) {
        let stats = &mut self.stats;
        stats.connections += 1;
        *stats.closed_first.entry(connection.closed_first).or_default() += 1;
        stats.incomplete += u64::from(connection.incomplete);
        if let Some(failed) = connection.failed_connect() {
            let error = failed.error.map_or("unknown".into(), |error| error.name().into_owned());
            *stats.failed_connects.entry(error).or_default() += 1;
        }
        for counters in connection.endpoints.iter().filter_map(|e| e.counters.as_ref()) {
            stats.carried.add(&counters.info);
        }
        for endpoint in &connection.endpoints {
            let Some(tw) = &endpoint.time_wait else { continue };
            let key = (endpoint.home.netns, endpoint.local);
            let entry = stats.time_wait_by_local.entry(key).or_default();
            match (tw.end, tw.duration_ns()) {
                (TimeWaitEnd::Open, _) | (_, None) => entry.open += 1,
                (_, Some(duration)) => entry.add(duration),
            }
        }
    }
}
