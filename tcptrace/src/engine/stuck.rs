//! Sockets stuck in CLOSE_WAIT: the peer closed, and the application never called
//! `close()`. Each holds a file descriptor until it does, so a process that forgets to
//! close leaks them. A socket in CLOSE_WAIT for longer than `stuck_after_ns` joins its
//! owner's group; a group is reported when a socket joins or leaves it.

use std::{collections::VecDeque, net::SocketAddr};

use super::{
    Engine, Map, Output,
    storage::{Index, UNKNOWN_NS},
};
use crate::event::{Owner, TcpState};

/// How many of a group's sockets a report lists.
const LISTED_SOCKETS: usize = 5;

/// Most CLOSE_WAITs end within microseconds (the application closes as soon as it reads
/// the FIN). A side is looked at once after this long, and only the few still in
/// CLOSE_WAIT then wait for `stuck_after_ns`: the queue of young ones holds one second's
/// worth, not `--stuck-after`'s (600 000 entries at 20 000 connections a second).
const STILL_THERE_NS: u64 = 1_000_000_000;

/// One owner's sockets stuck in a state, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    /// When this was noticed.
    pub ts_ns: u64,
    pub state: TcpState,
    /// The owner, when known (pid 0 groups the sockets of unknown owners).
    pub owner: Option<Owner>,
    /// How many are stuck now (0: none any more).
    pub count: usize,
    /// When the oldest of them entered the state.
    pub oldest_ns: Option<u64>,
    /// Up to [`LISTED_SOCKETS`] of them, oldest first: (local, remote, entered).
    pub sockets: Vec<(SocketAddr, SocketAddr, u64)>,
    /// How long a socket must sit in the state to be stuck (`--stuck-after`).
    pub after_ns: u64,
}

/// One owner's stuck sides: (side, socket, entered), in the order they got stuck. The
/// owner is kept for the report that says none is left.
#[derive(Default)]
struct Group {
    owner: Option<Owner>,
    sockets: Vec<(Index, u64, u64)>,
}

/// The engine's view of stuck sockets.
#[derive(Default)]
pub(super) struct StuckSockets {
    /// Sides that entered CLOSE_WAIT, in time order: (entered, side, socket).
    entered: VecDeque<(u64, Index, u64)>,
    /// Those still in CLOSE_WAIT [`STILL_THERE_NS`] later, in time order.
    lingering: VecDeque<(u64, Index, u64)>,
    /// Stuck sides by their owner's pid (0: unknown).
    groups: Map<u32, Group>,
    /// Owners whose group changed since the last report.
    changed: Vec<u32>,
}

impl Engine {
    /// A side entered CLOSE_WAIT at `ts`.
    pub(super) fn entered_close_wait(&mut self, index: Index, sk: u64, ts: u64) {
        self.stuck.entered.push_back((ts, index, sk));
    }

    /// Sides that have been in CLOSE_WAIT for `stuck_after_ns` by `now_ns` join their
    /// owner's group.
    pub(super) fn find_stuck(&mut self, now_ns: u64) {
        let after = self.options.stuck_after_ns;
        let first_look = after.min(STILL_THERE_NS);
        while let Some(&(entered, index, sk)) = self.stuck.entered.front() {
            if entered.saturating_add(first_look) > now_ns {
                break;
            }
            self.stuck.entered.pop_front();
            if self.still_in_close_wait(index, sk, entered) {
                self.stuck.lingering.push_back((entered, index, sk));
            }
        }
        while let Some(&(entered, index, sk)) = self.stuck.lingering.front() {
            if entered.saturating_add(after) > now_ns {
                break;
            }
            self.stuck.lingering.pop_front();
            if !self.still_in_close_wait(index, sk, entered) {
                continue;
            }
            let side = self.sides.get(index).expect("checked just above");
            let (pid, owner) = (side.owner.pid, side.owner());
            let group = self.stuck.groups.entry(pid).or_default();
            group.owner = group.owner.or(owner);
            group.sockets.push((index, sk, entered));
            self.stuck.changed.push(pid);
        }
    }

    /// Whether side `index` is still socket `sk`, in the CLOSE_WAIT it entered at `entered`.
    /// (A socket seen at start was queued as socket 0, from when it was seen: its first
    /// event may have adopted it since, and its CLOSE_WAIT's start is not known.)
    fn still_in_close_wait(&self, index: Index, sk: u64, entered: u64) -> bool {
        self.sides.get(index).is_some_and(|side| {
            let seeded = sk == 0 && side.seen_at_start;
            (side.sk == sk || seeded)
                && side.steps.last().is_some_and(|step| {
                    step.state == TcpState::CloseWait
                        && (step.enter_ns == entered || seeded && step.enter_ns == UNKNOWN_NS)
                })
        })
    }

    /// A side left CLOSE_WAIT. Most do within microseconds, when their entry is among the
    /// newest of the queue: it is taken out there (in cache), so that the look a second
    /// later, a cache miss on the side, is only for the few that linger.
    pub(super) fn left_close_wait(&mut self, index: Index, sk: u64) {
        let entered = &mut self.stuck.entered;
        let newest = entered.len().saturating_sub(8)..entered.len();
        if let Some(at) = newest.rev().find(|&at| (entered[at].1, entered[at].2) == (index, sk)) {
            entered.remove(at);
        }
        self.unstick(index);
    }

    /// A side left CLOSE_WAIT, or is gone: it leaves its group, if it was in one.
    pub(super) fn unstick(&mut self, index: Index) {
        if self.stuck.groups.is_empty() {
            return;
        }
        let StuckSockets { groups, changed, .. } = &mut self.stuck;
        for (&pid, group) in groups.iter_mut() {
            let before = group.sockets.len();
            group.sockets.retain(|&(side, _, _)| side != index);
            if group.sockets.len() != before {
                changed.push(pid);
            }
        }
    }

    /// Reports every group that changed.
    pub(super) fn report_stuck(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        if self.stuck.changed.is_empty() {
            return;
        }
        let mut changed = std::mem::take(&mut self.stuck.changed);
        changed.sort_unstable();
        changed.dedup();
        for pid in changed {
            let report = self.stuck_group(pid, now_ns);
            if report.count == 0 {
                self.stuck.groups.remove(&pid);
            }
            out(Output::Stuck(&report));
        }
    }

    fn stuck_group(&self, pid: u32, now_ns: u64) -> Stuck {
        let group = self.stuck.groups.get(&pid);
        let sockets = group.map_or(&[][..], |group| group.sockets.as_slice());
        let owner = group.and_then(|group| group.owner);
        let oldest_ns = sockets.iter().map(|&(_, _, entered)| entered).min();
        let mut listed: Vec<(SocketAddr, SocketAddr, u64)> = sockets
            .iter()
            .filter_map(|&(index, _, entered)| {
                let side = self.sides.get(index)?;
                Some((side.local.into(), side.remote.into(), entered))
            })
            .collect();
        listed.sort_by_key(|&(_, _, entered)| entered);
        listed.truncate(LISTED_SOCKETS);
        Stuck {
            ts_ns: now_ns,
            state: TcpState::CloseWait,
            owner,
            count: sockets.len(),
            oldest_ns,
            sockets: listed,
            after_ns: self.options.stuck_after_ns,
        }
    }

    /// What is stuck now, one report per owner (for the summary at exit).
    pub fn stuck_now(&self, now_ns: u64) -> Vec<Stuck> {
        let mut pids: Vec<u32> = self.stuck.groups.keys().copied().collect();
        pids.sort_unstable();
        pids.into_iter()
            .map(|pid| self.stuck_group(pid, now_ns))
            .filter(|report| report.count > 0)
            .collect()
    }
}
