//! tcptrace: trace TCP state transitions with eBPF.
//!
//! Data flows one way: the kernel program ([`loader`]) or a [`recording`] → decoded
//! [`event`]s → the [`lifecycle`] engine → [`output`] (live lines), [`report`] (connection
//! records and the summary) and [`export`]s. [`pipeline`] is that chain; [`live`] and
//! [`replay`] feed it.

pub mod cli;
pub mod event;
pub mod explain;
pub mod export;
pub mod json_line;
pub mod lifecycle;
pub mod live;
pub mod loader;
pub mod output;
pub mod pipeline;
pub mod recording;
pub mod replay;
pub mod report;
#[cfg(test)]
mod testing;
pub mod tracefs;

use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// A diagnostic for `--verbose`; silent otherwise.
pub fn debug(message: std::fmt::Arguments<'_>) {
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!("tcptrace: debug: {message}");
    }
}
