//! Writing events into the ring buffer, in place, and counting what could not be written.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, generated},
};
use tcptrace_common::{COMM_LEN, Config, Event, counter};

use crate::{COUNTERS, ring_of};

#[inline(always)]
pub fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot, valid while the program is loaded and written only
        // by this CPU, one program at a time.
        unsafe { *value += 1 };
    }
}

/// Reserves the next event in the ring buffer and writes it there in place: what every
/// event carries (time, CPU, kind, socket, and the current task in process context;
/// elsewhere the task is whoever the interrupt landed on, not worth reading), then the rest
/// through `fill`. Counts the event lost when the ring buffer is full. With `check_fill`,
/// wakes the reader if the ring has filled past `wakeup_bytes` (transitions look now and
/// then; the rarer timer and reset events always look).
#[inline(always)]
pub fn emit(
    config: &Config,
    ts_ns: u64,
    event_kind: u8,
    sk: u64,
    process_context: bool,
    check_fill: bool,
    fill: impl FnOnce(&mut Event),
) {
    // SAFETY: the helper has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let ring = ring_of(cpu, config);
    let Some(mut entry) = ring.reserve::<Event>(0) else {
        count(counter::LOST);
        return;
    };
    let event = zeroed(&mut entry);
    event.ts_ns = ts_ns;
    event.cpu = cpu as u8;
    event.kind = event_kind;
    event.sk = sk;
    if process_context {
        let pid_tgid = bpf_get_current_pid_tgid();
        event.pid = (pid_tgid >> 32) as u32;
        event.tid = pid_tgid as u32;
        // Straight into the ring buffer: no copy through the stack.
        // SAFETY: `comm` is COMM_LEN bytes inside the reserved event, which is ours until
        // it is submitted; the helper writes at most that many.
        unsafe {
            generated::bpf_get_current_comm(event.comm.as_mut_ptr() as *mut _, COMM_LEN as u32)
        };
        event.process_context = 1;
    }
    fill(event);
    // Wake the reader only once a batch has piled up; it also polls on a short tick.
    let flags = if check_fill && ring.query(BPF_RB_AVAIL_DATA as u64) >= config.wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// Zeroes a reserved event with 8-byte stores: a plain `Event::ZERO` compiles to a call to a
/// byte-at-a-time memset on BPF (90 iterations per event).
#[inline(always)]
fn zeroed(entry: &mut core::mem::MaybeUninit<Event>) -> &mut Event {
    const _: () = assert!(size_of::<Event>() % 8 == 0 && align_of::<Event>() == 8);
    let words = entry.as_mut_ptr() as *mut u64;
    for i in 0..size_of::<Event>() / 8 {
        // Volatile, or LLVM turns the stores back into that memset.
        // SAFETY: `i` stays below the event's size in words, and the event is 8-aligned
        // (checked above), so each store is in bounds and aligned.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was just written (and all-zero is a valid `Event`).
    unsafe { entry.assume_init_mut() }
}
