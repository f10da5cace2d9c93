//! Kernel side of tcptrace.
//!
//! Tracepoint programs only (no kprobes, no fentry): they read the fields they need at
//! offsets the loader took from tracefs, drop what the filters exclude as early as possible,
//! and push fixed-size [`Event`]s into one ring buffer. Everything else happens in userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf, generated,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcptrace_common::{
    AF_INET, AF_INET6, BuiltInTimerLayout, COMM_LEN, Config, EXPIRE_AFTER_CANCEL_TTL_NS, Event,
    FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, MAX_PORTS, REARM_AFTER_CANCEL_TTL_NS, RECORD_BYTES,
    STARTED_TIMER_TTL_NS, TimerSlot, counter, kind, tcp_state,
};

/// Set by the loader before load (field offsets, filters, `tw_timer_handler`).
#[unsafe(no_mangle)]
static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Every event for userspace. The loader sets the size (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters (see `tcptrace_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Sockets that passed `--port`/`--pid` once: all their later events pass too, even those
/// that no longer carry the port (or fire in softirq, where the pid is someone else's).
#[map]
static KEPT_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Live time-wait timers of kept sockets: timer address → socket address. The loader sizes
/// it to `net.ipv4.tcp_max_tw_buckets`, the most time-wait sockets the kernel keeps.
#[map]
static TIME_WAIT_TIMERS: HashMap<u64, u64> = HashMap::with_max_entries(65536, 0);

/// The time-wait timer just started on this CPU, for the CLOSE event that follows it.
#[map]
static STARTED_TIMER: PerCpuArray<TimerSlot> = PerCpuArray::with_max_entries(1, 0);

/// The live time-wait timer just cancelled on this CPU, for the expiry or re-arm that may follow.
#[map]
static CANCELLED_TIMER: PerCpuArray<TimerSlot> = PerCpuArray::with_max_entries(1, 0);

/// What `inet_sock_set_state` keeps per CPU, in one map value so that one lookup finds it.
#[repr(C)]
struct CpuState {
    /// A copy of the current tracepoint record: one helper call instead of one per field.
    /// The loader checks that every field read from it is inside it and aligned.
    record: [u8; RECORD_BYTES],
    /// The `pt_regs` pointer perf hands to programs run in process context on this CPU.
    process_context_regs: u64,
    /// Transitions this CPU sends before it looks at the ring's fill level again.
    until_fill_check: u32,
    _pad: u32,
}

#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[inline(always)]
fn config() -> &'static Config {
    // A volatile read hides the value from the optimiser: the loader rewrites it at load time.
    unsafe { &*core::ptr::read_volatile(&&raw const CONFIG) }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    unsafe { ctx.read_at::<T>(offset as usize) }
}

/// A pointer-sized timer tracepoint field: one load at the built-in offset `AT` when the
/// loader found that layout, else a helper call at the offset tracefs gave.
#[inline(always)]
fn timer_field<const AT: u16>(
    ctx: &TracePointContext,
    config: &Config,
    offset: u16,
) -> Result<u64, i32> {
    if config.timer.built_in_layout != 0 {
        Ok(unsafe { *(ctx.as_ptr() as *const u8).add(AT as usize).cast::<u64>() })
    } else {
        field(ctx, offset)
    }
}

/// Whether the timer of this `timer_start` or `timer_expire_entry` record is a time-wait
/// timer: its `function` field (built-in offset `AT`, else `offset`) is `tw_timer_handler`.
#[inline(always)]
fn runs_time_wait_handler<const AT: u16>(
    ctx: &TracePointContext,
    config: &Config,
    offset: u16,
) -> Result<bool, i32> {
    Ok(config.tw_timer_handler != 0
        && timer_field::<AT>(ctx, config, offset)? == config.tw_timer_handler)
}

/// The current record, copied once. Fields are read from the copy at offsets masked to the
/// buffer, which is what lets the verifier accept offsets only known at load time.
struct Record(&'static [u8; RECORD_BYTES]);

impl Record {
    /// Copies the record into this CPU's state; returns it with the rest of that state.
    #[inline(always)]
    fn copy(ctx: &TracePointContext) -> Option<(Record, &'static mut u64, &'static mut u32)> {
        let state = unsafe { &mut *CPU_STATE.get_ptr_mut(0)? };
        unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut state.record) }.ok()?;
        let CpuState { record, process_context_regs, until_fill_check, .. } = state;
        Some((Record(record), process_context_regs, until_fill_check))
    }

    /// The field of type `T` at `offset`. Masking the offset with `RECORD_BYTES - size`
    /// keeps the read inside the buffer and aligned (fields are naturally aligned), so it
    /// is one load, not one per byte.
    #[inline(always)]
    fn get<T: Copy>(&self, offset: u16) -> T {
        let offset = offset as usize & (RECORD_BYTES - size_of::<T>());
        unsafe { *(self.0.as_ptr().add(offset) as *const T) }
    }

    /// Fills what transitions and resets carry about both ends: the family, the ports, and
    /// the source and destination addresses, read at the `v4` (4 bytes each) or `v6` (16
    /// bytes each) offsets by family.
    #[inline(always)]
    fn fill_endpoints(
        &self,
        event: &mut Event,
        family: u16,
        (sport, dport): (u16, u16),
        v4: (u16, u16),
        v6: (u16, u16),
    ) {
        event.family = family as u8;
        event.sport = sport;
        event.dport = dport;
        let ((src, dst), words) = if family == AF_INET { (v4, 2) } else { (v6, 8) };
        self.copy_to(src, &mut event.saddr, words);
        self.copy_to(dst, &mut event.daddr, words);
    }

    /// Copies an address of `words` 2-byte words (2 or 8) at `offset` into `to`. Two bytes
    /// at a time: some records place addresses on 2-byte boundaries (`tcp_receive_reset`).
    #[inline(always)]
    fn copy_to(&self, offset: u16, to: &mut [u8; 16], words: usize) {
        for word in 0..8 {
            if word < words {
                let value: u16 = self.get(offset + 2 * word as u16);
                to[2 * word..2 * word + 2].copy_from_slice(&value.to_ne_bytes());
            }
        }
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn family_kept(config: &Config, family: u16) -> bool {
    match family {
        AF_INET => config.families & FAMILY_IPV4 != 0,
        AF_INET6 => config.families & FAMILY_IPV6 != 0,
        _ => false,
    }
}

#[inline(always)]
fn ports_match(config: &Config, sport: u16, dport: u16) -> bool {
    if config.port_count == 0 {
        return true;
    }
    for i in 0..MAX_PORTS {
        if i as u32 >= config.port_count {
            break;
        }
        let port = config.ports[i];
        if port == sport || port == dport {
            return true;
        }
    }
    false
}

/// The `--port`/`--pid` filter for a socket's state change. A socket is kept once both
/// filters match, and from then on until it closes.
#[inline(always)]
fn keep_socket(
    config: &Config,
    sk: u64,
    sport: u16,
    dport: u16,
    pid: Option<u32>,
    new: u8,
) -> bool {
    let closing = new == tcp_state::CLOSE;
    if unsafe { KEPT_SOCKETS.get(&sk) }.is_some() {
        if closing {
            let _ = KEPT_SOCKETS.remove(&sk);
        }
        return true;
    }
    let pid_matches = config.pid == 0 || pid == Some(config.pid);
    if !(pid_matches && ports_match(config, sport, dport)) {
        return false;
    }
    if !closing {
        let _ = KEPT_SOCKETS.insert(&sk, &1, 0);
    }
    true
}

/// Reserves the next event in the ring buffer and writes it there in place: what every
/// event carries (time, CPU, kind, socket, and the current task in process context;
/// elsewhere the task is whoever the interrupt landed on, not worth reading), then the rest
/// through `fill`. Counts the event lost when the ring buffer is full. With `check_fill`,
/// wakes the reader if the ring has filled past `wakeup_bytes` (transitions look now and
/// then; the rarer timer and reset events always look).
#[inline(always)]
fn emit(
    config: &Config,
    ts_ns: u64,
    event_kind: u8,
    sk: u64,
    process_context: bool,
    check_fill: bool,
    fill: impl FnOnce(&mut Event),
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::LOST);
        return;
    };
    let event = zeroed(&mut entry);
    event.ts_ns = ts_ns;
    event.cpu = unsafe { bpf_get_smp_processor_id() } as u8;
    event.kind = event_kind;
    event.sk = sk;
    if process_context {
        let pid_tgid = bpf_get_current_pid_tgid();
        event.pid = (pid_tgid >> 32) as u32;
        event.tid = pid_tgid as u32;
        // Straight into the ring buffer: no copy through the stack.
        unsafe {
            generated::bpf_get_current_comm(event.comm.as_mut_ptr() as *mut _, COMM_LEN as u32)
        };
        event.process_context = 1;
    }
    fill(event);
    // Wake the reader only once a batch has piled up; it also polls on a short tick.
    let flags = if check_fill && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config.wakeup_bytes {
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
        unsafe { words.add(i).write_volatile(0) };
    }
    unsafe { entry.assume_init_mut() }
}

/// Whether this tracepoint fired in process context.
///
/// The record's `common_flags` can't tell: before running a BPF program the kernel
/// overwrites the record's first 8 bytes (`common_type`, `common_flags`, `common_pid`)
/// with a pointer to perf's per-CPU `pt_regs` for the current context level (task,
/// softirq, hardirq, NMI; `perf_trace_run_bpf_submit`). So the pointer itself says the
/// level: it equals the one seen, on this CPU, by events that only happen in process
/// context. `learn` marks such an event (a socket entering LISTEN or SYN_SENT: `listen()`
/// and `connect()`); the loader makes one on every CPU at start-up.
#[inline(always)]
fn in_process_context(ctx: &TracePointContext, learn: bool) -> bool {
    let Ok(regs) = field::<u64>(ctx, 0) else {
        return false;
    };
    let Some(state) = CPU_STATE.get_ptr_mut(0) else {
        return false;
    };
    same_as_process_context(regs, unsafe { &mut (*state).process_context_regs }, learn)
}

/// Compares `regs` with this CPU's process-context pointer, after learning it if `learn`.
#[inline(always)]
fn same_as_process_context(regs: u64, known: &mut u64, learn: bool) -> bool {
    if learn {
        *known = regs;
    }
    regs != 0 && *known == regs
}

/// Takes this CPU's noted timer if it is younger than `ttl_ns` (and is `timer`, if given).
#[inline(always)]
fn take_slot(
    slot_map: &PerCpuArray<TimerSlot>,
    now: u64,
    ttl_ns: u64,
    timer: Option<u64>,
) -> Option<TimerSlot> {
    let slot = unsafe { &mut *slot_map.get_ptr_mut(0)? };
    let fresh = slot.timer != 0
        && now.wrapping_sub(slot.ts_ns) < ttl_ns
        && timer.is_none_or(|t| t == slot.timer);
    if !fresh {
        return None;
    }
    let taken = *slot;
    slot.timer = 0;
    Some(taken)
}

#[inline(always)]
fn put_slot(slot_map: &PerCpuArray<TimerSlot>, slot: TimerSlot) {
    if let Some(ptr) = slot_map.get_ptr_mut(0) {
        unsafe { *ptr = slot };
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let config = config();
    let offsets = &config.set_state;
    let (record, process_context_regs, until_fill_check) = Record::copy(ctx).ok_or(0)?;
    if record.get::<u16>(offsets.protocol) != IPPROTO_TCP {
        return Ok(());
    }
    let family: u16 = record.get(offsets.family);
    let old = record.get::<i32>(offsets.oldstate) as u8;
    let new = record.get::<i32>(offsets.newstate) as u8;
    // A hand-over to a time-wait socket takes the timer started just before, kept or not,
    // so that a later hand-over on this CPU never takes a stale one.
    let mut time_wait_timer = if new == tcp_state::CLOSE
        && (old == tcp_state::FIN_WAIT2 || old == tcp_state::CLOSING)
        && config.tw_timer_handler != 0
    {
        take_slot(&STARTED_TIMER, unsafe { bpf_ktime_get_ns() }, STARTED_TIMER_TTL_NS, None)
            .map_or(0, |s| s.timer)
    } else {
        0
    };
    // Learn from every socket (the loader's calibration sockets are filtered out below).
    let known_process_context =
        new == tcp_state::LISTEN || (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT);
    let process_context =
        same_as_process_context(record.get(0), process_context_regs, known_process_context);
    if !family_kept(config, family) {
        return Ok(());
    }
    let sk: u64 = record.get(offsets.skaddr);
    let sport: u16 = record.get(offsets.sport);
    let dport: u16 = record.get(offsets.dport);
    if config.filters_sockets() {
        let pid = process_context.then(|| (bpf_get_current_pid_tgid() >> 32) as u32);
        if !keep_socket(config, sk, sport, dport, pid, new) {
            return Ok(());
        }
    }
    // A timer is named only when it is tracked: otherwise its end would never be reported.
    if time_wait_timer != 0 && TIME_WAIT_TIMERS.insert(&time_wait_timer, &sk, 0).is_err() {
        count(counter::TW_TABLE_FULL);
        time_wait_timer = 0;
    }

    // The bulk of all events: a look at the fill level costs a tenth of sending one.
    let check_fill = *until_fill_check == 0;
    *until_fill_check = if check_fill {
        config.wakeup_check_every.saturating_sub(1)
    } else {
        *until_fill_check - 1
    };
    let now = unsafe { bpf_ktime_get_ns() };
    emit(config, now, kind::TRANSITION, sk, process_context, check_fill, |event| {
        event.old_state = old;
        event.new_state = new;
        event.timer = time_wait_timer;
        let (v4, v6) = ((offsets.saddr, offsets.daddr), (offsets.saddr_v6, offsets.daddr_v6));
        record.fill_endpoints(event, family, (sport, dport), v4, v6);
    });
    Ok(())
}

#[tracepoint]
pub fn timer_start(ctx: TracePointContext) -> u32 {
    let _ = try_timer_start(&ctx);
    0
}

fn try_timer_start(ctx: &TracePointContext) -> Result<(), i32> {
    let config = config();
    let offsets = &config.timer;
    if !runs_time_wait_handler::<{ BuiltInTimerLayout::START_FUNCTION }>(
        ctx,
        config,
        offsets.start_function,
    )? {
        return Ok(());
    }
    let timer = timer_field::<{ BuiltInTimerLayout::TIMER }>(ctx, config, offsets.start_timer)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // mod_timer() on a pending timer shows as cancel + start: a re-arm of a live time-wait.
    let Some(cancelled) = take_slot(&CANCELLED_TIMER, now, REARM_AFTER_CANCEL_TTL_NS, Some(timer))
    else {
        put_slot(&STARTED_TIMER, TimerSlot { timer, sk: 0, ts_ns: now });
        return Ok(());
    };
    if TIME_WAIT_TIMERS.insert(&timer, &cancelled.sk, 0).is_err() {
        count(counter::TW_TABLE_FULL);
    }
    let expires: u64 = field(ctx, offsets.start_expires)?;
    let jiffies_now: u64 = field(ctx, offsets.start_now)?;
    let process_context = in_process_context(ctx, false);
    emit(config, now, kind::TW_REARM, cancelled.sk, process_context, true, |event| {
        event.timer = timer;
        event.timeout_jiffies = expires.wrapping_sub(jiffies_now) as u32;
    });
    Ok(())
}

#[tracepoint]
pub fn timer_cancel(ctx: TracePointContext) -> u32 {
    let _ = try_timer_cancel(&ctx);
    0
}

fn try_timer_cancel(ctx: &TracePointContext) -> Result<(), i32> {
    let config = config();
    if config.tw_timer_handler == 0 {
        return Ok(());
    }
    let timer =
        timer_field::<{ BuiltInTimerLayout::TIMER }>(ctx, config, config.timer.cancel_timer)?;
    let Some(&sk) = (unsafe { TIME_WAIT_TIMERS.get(&timer) }) else {
        return Ok(());
    };
    let _ = TIME_WAIT_TIMERS.remove(&timer);
    let now = unsafe { bpf_ktime_get_ns() };
    put_slot(&CANCELLED_TIMER, TimerSlot { timer, sk, ts_ns: now });
    let process_context = in_process_context(ctx, false);
    emit(config, now, kind::TW_CANCEL, sk, process_context, true, |event| event.timer = timer);
    Ok(())
}

#[tracepoint]
pub fn timer_expire_entry(ctx: TracePointContext) -> u32 {
    let _ = try_timer_expire_entry(&ctx);
    0
}

fn try_timer_expire_entry(ctx: &TracePointContext) -> Result<(), i32> {
    let config = config();
    let offsets = &config.timer;
    if !runs_time_wait_handler::<{ BuiltInTimerLayout::EXPIRE_FUNCTION }>(
        ctx,
        config,
        offsets.expire_function,
    )? {
        return Ok(());
    }
    let timer = timer_field::<{ BuiltInTimerLayout::TIMER }>(ctx, config, offsets.expire_timer)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(cancelled) = take_slot(&CANCELLED_TIMER, now, EXPIRE_AFTER_CANCEL_TTL_NS, Some(timer))
    else {
        return Ok(());
    };
    emit(config, now, kind::TW_EXPIRE, cancelled.sk, false, true, |event| event.timer = timer);
    Ok(())
}

/// Resets pass the filter when their socket was kept, or (without `--pid`) by port, so that
/// a RST for a socket-less port is seen too.
#[inline(always)]
fn keep_reset(config: &Config, sk: u64, sport: u16, dport: u16) -> bool {
    !config.filters_sockets()
        || unsafe { KEPT_SOCKETS.get(&sk) }.is_some()
        || (config.pid == 0 && ports_match(config, sport, dport))
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_send_reset(&ctx);
    0
}

/// `tcp_send_reset` stores its addresses as `struct sockaddr_in`/`sockaddr_in6`, already
/// oriented from the sender's side: family at +0, port (network order) at +2, address at
/// +4 (IPv4) or +8 (IPv6).
fn try_tcp_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let config = config();
    let offsets = &config.send_reset;
    let (record, process_context_regs, _) = Record::copy(ctx).ok_or(0)?;
    let family: u16 = record.get(offsets.saddr_sockaddr);
    if !family_kept(config, family) {
        return Ok(());
    }
    let sk: u64 = record.get(offsets.skaddr);
    let sport = u16::from_be(record.get(offsets.saddr_sockaddr + 2));
    let dport = u16::from_be(record.get(offsets.daddr_sockaddr + 2));
    if !keep_reset(config, sk, sport, dport) {
        return Ok(());
    }
    let process_context = same_as_process_context(record.get(0), process_context_regs, false);
    let now = unsafe { bpf_ktime_get_ns() };
    // Each address is a `sockaddr_in` or `sockaddr_in6`: the IP after the family and port.
    let (saddr, daddr) = (offsets.saddr_sockaddr, offsets.daddr_sockaddr);
    emit(config, now, kind::RESET_SENT, sk, process_context, true, |event| {
        let (v4, v6) = ((saddr + 4, daddr + 4), (saddr + 8, daddr + 8));
        record.fill_endpoints(event, family, (sport, dport), v4, v6);
    });
    Ok(())
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_receive_reset(&ctx);
    0
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let config = config();
    let offsets = &config.receive_reset;
    let (record, process_context_regs, _) = Record::copy(ctx).ok_or(0)?;
    let family: u16 = record.get(offsets.family);
    if !family_kept(config, family) {
        return Ok(());
    }
    let sk: u64 = record.get(offsets.skaddr);
    let sport: u16 = record.get(offsets.sport);
    let dport: u16 = record.get(offsets.dport);
    if !keep_reset(config, sk, sport, dport) {
        return Ok(());
    }
    let process_context = same_as_process_context(record.get(0), process_context_regs, false);
    let now = unsafe { bpf_ktime_get_ns() };
    emit(config, now, kind::RESET_RECEIVED, sk, process_context, true, |event| {
        let (v4, v6) = ((offsets.saddr, offsets.daddr), (offsets.saddr_v6, offsets.daddr_v6));
        record.fill_endpoints(event, family, (sport, dport), v4, v6);
    });
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
