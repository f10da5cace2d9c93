//! Whether an event fired in process context, where the current task is the socket's user.
//!
//! The record's `common_flags` can't tell: before running a BPF program the kernel
//! overwrites the record's first 8 bytes (`common_type`, `common_flags`, `common_pid`)
//! with a pointer to perf's per-CPU `pt_regs` for the current context level (task,
//! softirq, hardirq, NMI; `perf_trace_run_bpf_submit`). So the pointer itself says the
//! level: it equals the one seen, on this CPU, by events that only happen in process
//! context. Such an event (a socket entering LISTEN or SYN_SENT: `listen()` and
//! `connect()`) teaches it; the loader makes one on every CPU at start-up.

use aya_ebpf::{helpers::bpf_get_smp_processor_id, programs::TracePointContext};
use aya_log_ebpf::debug;

/// Learns `regs` as this CPU's process-context pointer, from an event that only happens in
/// process context. A change is said under `--verbose` (once per CPU, or when perf moves
/// its buffers), never per event.
#[inline(always)]
pub fn learn_process_context(ctx: &TracePointContext, regs: u64, known: &mut u64) {
    if *known != regs {
        *known = regs;
        // SAFETY: the helper has no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        debug!(ctx, "cpu {}: learned the process-context marker", cpu);
    }
}

/// Compares `regs` with this CPU's process-context pointer.
#[inline(always)]
pub fn same_as_process_context(regs: u64, known: &u64) -> bool {
    regs != 0 && *known == regs
}
