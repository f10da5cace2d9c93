//! Per-socket memory for the live stream: who owns a socket, and since when it is in its
//! current state.
//!
//! In softirq the tracepoint's current task is whoever the interrupt landed on, so an event
//! there is attributed to the owner learned from the socket's process-context events
//! (connect, close), or to nobody.

use std::collections::{HashMap, hash_map::Entry};

use crate::event::{EventKind, Owner, TcpEvent, TcpState};

#[derive(Clone, Copy, Debug)]
struct SocketInfo {
    owner: Option<Owner>,
    state_since_ns: u64,
}

/// What the table knows about one transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub owner: Option<Owner>,
    /// Time spent in the old state, when its start was seen.
    pub old_state_ns: Option<u64>,
}

/// Bounded: sockets whose close was never seen are evicted, oldest first, past `capacity`.
pub struct SocketTable {
    sockets: HashMap<u64, SocketInfo>,
    capacity: usize,
    evicted: u64,
}

impl SocketTable {
    pub fn new(capacity: usize) -> SocketTable {
        SocketTable { sockets: HashMap::new(), capacity, evicted: 0 }
    }

    /// Sockets dropped from the table without their close having been seen.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Learns from `event` and attributes it.
    pub fn observe(&mut self, event: &TcpEvent) -> Attribution {
        let task_owner = event.task.as_owner();
        let EventKind::Transition { new, .. } = event.kind else {
            let known = self.sockets.get(&event.sk).and_then(|info| info.owner);
            return Attribution { owner: task_owner.or(known), old_state_ns: None };
        };
        if new == TcpState::Closed {
            // The address may be reused by the next socket at once: forget it now.
            let info = self.sockets.remove(&event.sk);
            return Attribution {
                owner: task_owner.or(info.and_then(|i| i.owner)),
                old_state_ns: info.map(|i| event.ts_ns.saturating_sub(i.state_since_ns)),
            };
        }
        if self.sockets.len() >= self.capacity && !self.sockets.contains_key(&event.sk) {
            self.evict_oldest_half();
        }
        match self.sockets.entry(event.sk) {
            Entry::Vacant(slot) => {
                // First sight of this socket: when it entered the old state is unknown.
                slot.insert(SocketInfo { owner: task_owner, state_since_ns: event.ts_ns });
                Attribution { owner: task_owner, old_state_ns: None }
            }
            Entry::Occupied(mut slot) => {
                let info = slot.get_mut();
                let old_state_ns = event.ts_ns.saturating_sub(info.state_since_ns);
                info.owner = task_owner.or(info.owner);
                info.state_since_ns = event.ts_ns;
                Attribution { owner: info.owner, old_state_ns: Some(old_state_ns) }
            }
        }
    }

    fn evict_oldest_half(&mut self) {
        let mut ages: Vec<u64> = self.sockets.values().map(|i| i.state_since_ns).collect();
        let middle = ages.len() / 2;
        let (_, &mut cutoff, _) = ages.select_nth_unstable(middle);
        let before = self.sockets.len();
        self.sockets.retain(|_, info| info.state_since_ns > cutoff);
        self.evicted += (before - self.sockets.len()) as u64;
    }
}
