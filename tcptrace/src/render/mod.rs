//! Rendering: everything the engine's output becomes for people and programs. The live
//! [`stream`] (text or JSON Lines, one line per event), connection records and the exit
//! summary ([`report`]), notes for learners ([`explain`]), the `--export` files
//! ([`export`]) and the Prometheus metrics ([`metrics`]). No I/O of its own beyond the writers it is handed.

pub mod explain;
pub mod export;
pub mod metrics;
pub mod report;
pub mod stream;
