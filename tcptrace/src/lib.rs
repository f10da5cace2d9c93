//! tcptrace: trace TCP state transitions with eBPF.
//!
//! Data flows one way, one folder per stage:
//!
//! - [`kernel`]: the kernel side of userspace: tracefs and BTF offsets, loading and
//!   attaching the eBPF program, its ring buffer (the only module that uses aya), and the
//!   start-up snapshot of the sockets already there (sock_diag).
//! - [`event`]: the event model, and decoding the ring buffer's raw records into it.
//! - [`engine`]: the lifecycle engine, pure: events in, attributed events and connection
//!   records out.
//! - [`recording`]: `--record` files, written and read back for replay.
//! - [`render`]: live lines (text or JSON), connection records and the summary, notes for
//!   learners, the `--export` files, and the Prometheus metrics.
//! - [`schema`]: every JSON line type, defined once, for every writer and reader.
//! - [`names`]: what the namespace and cgroup numbers in events stand for.
//!
//! On top: [`pipeline`] joins events → engine → rendering; [`live`] feeds it from the
//! kernel (in the time the traced programs leave idle: [`yielding`]) and [`replay`] from a
//! recording; [`lab`] runs the TIME-WAIT exercise in a
//! namespace of its own, [`top`] keeps a full screen current; [`metrics_server`] serves `--metrics`; [`cli`]
//! is the command line. The engine and rendering use nothing of aya, clap or tokio.

pub mod cli;
pub mod clock;
pub mod engine;
pub mod event;
pub mod kernel;
pub mod lab;
pub mod live;
pub mod metrics_server;
pub mod names;
pub mod pipeline;
pub mod recording;
pub mod render;
pub mod replay;
pub mod schema;
pub mod sink;
#[cfg(test)]
mod testing;
pub mod top;
pub mod yielding;

use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// A diagnostic for `--verbose`; silent otherwise.
pub fn debug(message: std::fmt::Arguments<'_>) {
    if verbose() {
        eprintln!("tcptrace: debug: {message}");
    }
}
