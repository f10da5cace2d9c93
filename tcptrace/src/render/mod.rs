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
