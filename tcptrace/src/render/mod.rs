//! Rendering: everything the engine's output becomes for people and programs. The live
//! [`stream`] (text or JSON Lines, one line per event), connection records and the exit
//! summary ([`report`]), notes for learners ([`explain`]) and the `--export` files
//! ([`export`]). No I/O of its own beyond the writers it is handed.

pub mod explain;
pub mod export;
pub mod report;
pub mod stream;
