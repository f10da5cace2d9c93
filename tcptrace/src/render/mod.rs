//! Rendering: everything the engine's output becomes for people and programs. The live
//! [`stream`] (text or JSON Lines, one line per event), connection records and the exit
//! summary ([`report`]), notes for learners ([`explain`]), the `--export` files
//! ([`export`]), the Prometheus metrics ([`metrics`]), the words of `tcptrace lab`
//! ([`lab`]) and the screen of `tcptrace top` ([`top`]). No I/O of its own beyond the writers it is handed.

pub mod explain;
pub mod export;
pub mod lab;
pub mod metrics;
pub mod report;
pub mod stream;
pub mod top;

use crate::{
    engine::{Closer, Connection, Stats, Stuck},
    event::{TcpEvent, TraceCounts},
};

/// What follows the engine's output beside the stream, through `&self` (atomics): the
/// Prometheus [`metrics`], and the tally behind `tcptrace top`'s rates ([`top`]).
pub trait Watcher: Send + Sync + std::fmt::Debug {
    /// One event the engine processed.
    fn event(&self, event: &TcpEvent);
    /// A connection's sockets all closed (with `EngineOptions::report_closes`).
    fn closed(&self, closer: Closer);
    /// A connection record was handed out: its TIME-WAITs have ended, its connect may
    /// have failed.
    fn connection(&self, connection: &Connection);
    /// An owner's stuck sockets changed in number.
    fn stuck(&self, stuck: &Stuck);
    /// The engine's state, about once a second and at the end.
    fn update(&self, stats: &Stats, counts: &TraceCounts, tracked: usize);
}
