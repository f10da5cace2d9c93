//! tcptrace: trace TCP state transitions with eBPF.
//!
//! Data flows one way: the kernel program ([`loader`]) → decoded [`event`]s → the
//! [`lifecycle`] engine → [`output`] (live lines) and [`report`] (connection records and the
//! summary). [`live`] wires them together for `tcptrace`.

pub mod cli;
pub mod event;
pub mod lifecycle;
pub mod live;
pub mod loader;
pub mod output;
pub mod report;
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
