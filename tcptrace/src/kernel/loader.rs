//! Loading the embedded eBPF object, attaching its tracepoints, and reading its ring buffer.

use std::io;

use anyhow::{Context, Result, anyhow, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use aya_log::EbpfLogger;
use tcptrace_common::{
    AddressOffsets, Config, FAMILY_IPV4, FAMILY_IPV6, MAX_NETNS, MAX_PORTS, MAX_RINGS, MeetWindow,
    RING_RECORD_BYTES, SendResetOffsets, counter,
};

use crate::{
    event::ProgramStats,
    kernel::{
        btf,
        kallsyms::{self, Kallsyms},
        rings::{PAGE_BYTES, RingLayout, Rings},
        tracefs::{self, Format},
    },
};

/// `TCP_TIMEWAIT_LEN`: the length of TIME-WAIT, which a re-arm starts again.
const TIME_WAIT_SECONDS: u32 = 60;

/// The kernel program, embedded at build time; empty when it was built without one
/// (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TCPTRACE_EBPF_OBJECT"));

/// Fails with what to do when this binary was built without its kernel program.
fn embedded_object() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        anyhow::bail!(
            "this tcptrace was built without its eBPF program, so it can replay recordings but \
             not trace: run `cargo xtask build-ebpf`, then build tcptrace again (or use \
             `cargo xtask build`)"
        );
    }
    Ok(OBJECT)
}

/// Which events the kernel keeps. Everything else is dropped before it costs ring space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Local or remote ports; empty keeps all.
    pub ports: Vec<u16>,
    pub pid: Option<u32>,
    /// Network namespace inodes; empty keeps all.
    pub netns: Vec<u32>,
    pub cgroup: Option<CgroupFilter>,
    pub ipv4: bool,
    pub ipv6: bool,
}

/// `--cgroup`: the cgroup whose subtree is kept, by id, and its depth below the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupFilter {
    pub id: u64,
    pub level: u32,
}

#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub filters: Filters,
    /// Ring-buffer size in bytes: a power of two, at least one page.
    pub ring_size: u32,
    /// Follow the time-wait sockets that were there before start to their end (off with
    /// `--no-snapshot`, which starts from nothing).
    pub earlier_time_waits: bool,
}

/// The socket and its ends, where `inet_sock_set_state` and `tcp_receive_reset` keep them.
fn address_offsets(format: &Format) -> Result<AddressOffsets> {
    Ok(AddressOffsets {
        skaddr: format.record_field("skaddr", 8, 8)?,
        sport: format.record_field("sport", 2, 2)?,
        dport: format.record_field("dport", 2, 2)?,
        family: format.record_field("family", 2, 2)?,
        saddr: format.record_field("saddr", 2, 4)?,
        daddr: format.record_field("daddr", 2, 4)?,
        saddr_v6: format.record_field("saddr_v6", 2, 16)?,
        daddr_v6: format.record_field("daddr_v6", 2, 16)?,
    })
}

/// Each address is a `struct sockaddr_in6`-sized blob (28 bytes), read 2 bytes at a time.
fn send_reset_offsets(format: &Format) -> Result<SendResetOffsets> {
    Ok(SendResetOffsets {
        skaddr: format.record_field("skaddr", 8, 8)?,
        state: format.record_field("state", 4, 4)?,
        saddr: format.record_field("saddr", 2, 28)?,
        daddr: format.record_field("daddr", 2, 28)?,
    })
}

/// An optional tracepoint group that could not be used, and why.
#[derive(Debug)]
pub struct Degraded {
    pub what: &'static str,
    pub why: String,
}

/// The kernel program's own diagnostics (aya-log), shown with `--verbose` as
/// `tcptrace: kernel: …`.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("tcptrace: kernel: {}", record.args());
    }

    fn flush(&self) {}
}

/// The attached programs. Dropping it detaches them all.
pub struct Tracer {
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// With `--verbose`: the kernel program's log, read on every [`Tracer::flush_kernel_log`].
    kernel_log: Option<EbpfLogger<KernelLog>>,
    /// Optional parts that are off on this kernel (reset or time-wait tracking).
    pub degraded: Vec<Degraded>,
    /// While the kernel program looks for time-wait sockets from before start
    /// (`MEET_TIME_WAITS`); `until_ns` 0 once it no longer does.
    meet_window: MeetWindow,
}

const PROGRAMS: [(&str, &str); 5] = [
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_send_reset"),
    ("tcp", "tcp_receive_reset"),
    ("timer", "timer_cancel"),
    ("timer", "timer_expire_entry"),
];

impl Tracer {
    /// Loads and attaches everything; returns the tracer and its ring buffers of events.
    pub fn attach(options: &TraceOptions) -> Result<(Tracer, Rings)> {
        let object = embedded_object()?;
        check_privileges()?;
        raise_memlock_limit();
        let tracefs = tracefs::ensure_mounted()?;
        let mut degraded = Vec::new();
        let cpus = configured_cpus();
        let layout = RingLayout::new(options.ring_size, cpus);
        let mut config = Config {
            ring_count: layout.count,
            wakeup_bytes: u64::from(layout.bytes_each / 8),
            wakeup_check_every: wakeup_check_every(layout.bytes_each, layout.cpus_per_ring(cpus)),
            ..Config::default()
        };
        apply_filters(&mut config, &options.filters);

        // The state-change and timer programs are BTF tracepoints: without the kernel's
        // BTF there is nothing to attach them to, nor offsets to read sockets at.
        let kernel_btf = btf::Btf::read(btf::VMLINUX).context(
            "tcptrace needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF, /sys/kernel/btf/vmlinux)",
        )?;
        config.sock = btf::sock_offsets(&kernel_btf).context("reading struct sock from BTF")?;
        match btf::tcp_sock_offsets(&kernel_btf) {
            Ok(offsets) => config.tcp_sock = offsets,
            Err(error) => degraded.push(Degraded {
                what: "TCP counters at close (bytes, segments, retransmits, RTT, errors)",
                why: format!("{error:#}"),
            }),
        }
        let (offsets, errors) = btf::socket_home_offsets(&kernel_btf);
        config.socket_home = offsets;
        for error in errors {
            degraded.push(Degraded {
                what: "network namespaces and cgroups of sockets",
                why: format!("{error:#}"),
            });
        }
        let home = config.socket_home;
        if !options.filters.netns.is_empty() && home.netns_valid == 0 {
            anyhow::bail!(
                "--netns needs the kernel's BTF (/sys/kernel/btf/vmlinux) to read namespaces"
            );
        }
        if options.filters.cgroup.is_some() && home.cgroup_valid == 0 {
            anyhow::bail!(
                "--cgroup needs the kernel's BTF (/sys/kernel/btf/vmlinux) to read cgroups"
            );
        }
        let resets = (|| -> Result<_> {
            Ok((
                send_reset_offsets(&Format::read(&tracefs, "tcp", "tcp_send_reset")?)?,
                address_offsets(&Format::read(&tracefs, "tcp", "tcp_receive_reset")?)?,
            ))
        })();
        let resets_on = match resets {
            Ok((send, receive)) => {
                config.send_reset = send;
                config.receive_reset = receive;
                true
            }
            Err(error) => {
                degraded.push(Degraded { what: "reset tracking", why: format!("{error:#}") });
                false
            }
        };
        // A time-wait socket is found from the socket it replaces, in the namespace's hash
        // tables: through the socket's namespace.
        let timers = (|| -> Result<_> {
            ensure!(home.netns_valid != 0, "a socket's namespace can't be read");
            let kallsyms = Kallsyms::read()?;
            let handler = kallsyms.address("tw_timer_handler").ok_or_else(|| {
                anyhow!("tw_timer_handler is not in /proc/kallsyms (or addresses are hidden)")
            })?;
            let callers = kallsyms.timer_callers()?;
            let timer = btf::timer_offsets(&kernel_btf)?;
            let time_wait_sock = btf::time_wait_sock_offsets(&kernel_btf)?;
            let hz = kallsyms::kernel_hz()?;
            Ok((handler, callers, timer, time_wait_sock, hz))
        })();
        drop(kernel_btf);
        let timers_on = match timers {
            Ok((handler, callers, timer, time_wait_sock, hz)) => {
                config.tw_timer_handler = handler;
                config.timer_callers = callers.ranges;
                config.timer_caller_count = callers.count;
                config.rearm_callers = callers.rearm;
                config.timer_callers_span = callers.span;
                config.timer = timer;
                config.time_wait_sock = time_wait_sock;
                config.time_wait_jiffies = TIME_WAIT_SECONDS * hz;
                config.jiffy_ns = 1_000_000_000 / hz;
                true
            }
            Err(error) => {
                degraded.push(Degraded { what: "TIME-WAIT tracking", why: format!("{error:#}") });
                false
            }
        };
        // aya reads the BTF again to find each BTF tracepoint's type; dropped once they
        // are loaded.
        let aya_btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;

        // The kernel program's log statements are compiled in, and off unless --verbose:
        // with level 0 each costs one compare, on paths that are not the per-event one.
        let log_level: u8 = if crate::verbose() { aya_log::Level::Debug as u8 } else { 0 };
        let mut loader = EbpfLoader::new();
        // No CO-RE relocations: skip parsing the kernel's BTF (tens of MiB of memory).
        loader
            .btf(None)
            .override_global("CONFIG", &config, true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries("TIME_WAIT_TIMERS", time_wait_table_size(&config));
        for (ring, name) in RING_MAPS.iter().enumerate() {
            let in_use = (ring as u32) < layout.count;
            loader.map_max_entries(name, if in_use { layout.bytes_each } else { PAGE_BYTES });
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|error| explain_permission(anyhow::Error::new(error)))
            .context("loading the eBPF program failed")?;

        let kernel_log = if crate::verbose() {
            Some(
                EbpfLogger::init_with_logger(&mut ebpf, KernelLog)
                    .context("reading the kernel log")?,
            )
        } else {
            None
        };
        for (category, name) in PROGRAMS {
            match category {
                "sock" => attach_btf(&mut ebpf, name, &aya_btf)?,
                "timer" if timers_on => attach_btf(&mut ebpf, name, &aya_btf)?,
                "tcp" if resets_on => attach(&mut ebpf, category, name)?,
                _ => {}
            }
        }
        drop(aya_btf);
        let rings = RING_MAPS[..layout.count as usize]
            .iter()
            .map(|name| {
                let map = ebpf.take_map(name).with_context(|| format!("{name} map missing"))?;
                Ok(RingBuf::try_from(map)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let rings = Rings::new(rings, layout).context("watching the ring buffers")?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        let mut tracer =
            Tracer { ebpf, counters, kernel_log, degraded, meet_window: MeetWindow::default() };
        if timers_on {
            // Attached already: a hand-over from now on is traced, and a time-wait socket
            // ending from now on is seen either way. (Until this is written, the kernel
            // program takes every time-wait timer for one from before.)
            let now_ns = crate::clock::monotonic_now_ns();
            tracer.meet_window.traced_since_ns = now_ns;
            let until_ns =
                if options.earlier_time_waits { now_ns + longest_time_wait_ns() } else { 0 };
            tracer.set_meet_window(until_ns)?;
        }
        tracer.flush_kernel_log();
        Ok((tracer, rings))
    }

    /// Time-wait sockets from before start end by `until_ns` (the start-up snapshot said
    /// how long they have left): the kernel program stops looking for them then. Never
    /// later than it looks already.
    pub fn meet_time_waits_until(&mut self, until_ns: u64) -> Result<()> {
        let until_ns = match self.meet_window.until_ns {
            0 => until_ns,
            current => current.min(until_ns),
        };
        self.set_meet_window(until_ns)
    }

    /// Once every time-wait socket from before start has ended, the kernel program stops
    /// looking for them (a cancelled timer it does not know then costs one load).
    pub fn tick(&mut self, now_ns: u64) -> Result<()> {
        if self.meet_window.until_ns != 0 && now_ns >= self.meet_window.until_ns {
            self.set_meet_window(0)?;
        }
        Ok(())
    }

    fn set_meet_window(&mut self, until_ns: u64) -> Result<()> {
        let window = MeetWindow { until_ns, ..self.meet_window };
        let mut map: Array<&mut MapData, MeetWindow> = Array::try_from(
            self.ebpf.map_mut("MEET_TIME_WAITS").context("MEET_TIME_WAITS missing")?,
        )?;
        map.set(0, window, 0).context("writing MEET_TIME_WAITS")?;
        self.meet_window = window;
        Ok(())
    }

    /// Prints what the kernel program logged since the last call (only with `--verbose`).
    pub fn flush_kernel_log(&mut self) {
        if let Some(log) = &mut self.kernel_log {
            log.flush();
        }
    }

    /// Events the kernel could not queue because the ring buffer was full, since start.
    pub fn lost_events(&self) -> Result<u64> {
        self.counter(counter::LOST)
    }

    /// Per attached program: (name, times run, total run time in ns). The kernel counts
    /// only while `kernel.bpf_stats_enabled` is 1; otherwise both are 0.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramStats {
                    name: name.to_owned(),
                    runs: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// Time-wait timers not tracked because the kernel's timer table was full.
    pub fn untracked_time_waits(&self) -> Result<u64> {
        self.counter(counter::TW_TABLE_FULL)
    }

    fn counter(&self, index: u32) -> Result<u64> {
        let values = self.counters.get(&index, 0).context("reading the COUNTERS map")?;
        Ok(values.iter().sum())
    }
}

/// The kernel program's maps for the rings, in order.
const RING_MAPS: [&str; MAX_RINGS as usize] =
    ["EVENTS0", "EVENTS1", "EVENTS2", "EVENTS3", "EVENTS4", "EVENTS5", "EVENTS6", "EVENTS7"];

/// CPUs the kernel was configured with, online or not.
fn configured_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.clamp(1, i64::from(u32::MAX)) as u32
}

/// How many transitions a CPU sends between looks at the ring's fill level: up to 16 (a
/// look costs about 27 ns, one event in ten), but no more than lets every CPU together add
/// another eighth of the ring past the wake-up level before one looks.
fn wakeup_check_every(ring_size: u32, cpus: u32) -> u32 {
    (ring_size / 8 / RING_RECORD_BYTES.saturating_mul(cpus.max(1))).clamp(1, 16)
}

fn apply_filters(config: &mut Config, filters: &Filters) {
    for (slot, port) in config.ports.iter_mut().zip(&filters.ports) {
        *slot = *port;
    }
    config.port_count = filters.ports.len().min(MAX_PORTS) as u32;
    config.pid = filters.pid.unwrap_or(0);
    for (slot, netns) in config.netns.iter_mut().zip(&filters.netns) {
        *slot = *netns;
    }
    config.netns_count = filters.netns.len().min(MAX_NETNS) as u32;
    if let Some(cgroup) = filters.cgroup {
        (config.cgroup, config.cgroup_level) = (cgroup.id, cgroup.level);
    }
    // Neither -4 nor -6 means both.
    config.families = match (filters.ipv4, filters.ipv6) {
        (true, false) => FAMILY_IPV4,
        (false, true) => FAMILY_IPV6,
        _ => FAMILY_IPV4 | FAMILY_IPV6,
    };
}

fn attach(ebpf: &mut Ebpf, category: &str, name: &str) -> Result<()> {
    let program: &mut TracePoint = program(ebpf, name)?.try_into()?;
    program.load().map_err(|error| load_error(name, error))?;
    program
        .attach(category, name)
        .map_err(|error| explain_permission(error.into()))
        .with_context(|| format!("attaching to tracepoint {category}:{name} failed"))?;
    Ok(())
}

/// Loads and attaches a BTF tracepoint program, named after its tracepoint.
fn attach_btf(ebpf: &mut Ebpf, name: &str, btf: &aya::Btf) -> Result<()> {
    let program: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
    program.load(name, btf).map_err(|error| load_error(name, error))?;
    program
        .attach()
        .map_err(|error| explain_permission(error.into()))
        .with_context(|| format!("attaching to BTF tracepoint {name} failed"))?;
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))
}

fn load_error(name: &str, error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => anyhow!(
            "the kernel's verifier rejected the {name} program ({io_error}):\n{verifier_log}"
        ),
        other => explain_permission(other.into()),
    }
}

/// Turns a permission error anywhere in the chain into advice a person can act on.
fn explain_permission(error: anyhow::Error) -> anyhow::Error {
    let denied = error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
    });
    if denied {
        error.context(
            "permission denied: tracing needs root, or CAP_BPF and CAP_PERFMON; run with sudo",
        )
    } else {
        error
    }
}

/// The longest a time-wait socket there at start can live on: `TCP_TIMEWAIT_LEN` (or
/// `tcp_fin_timeout`, for an orphaned FIN_WAIT2 one, if longer), the timer wheel's 2.05 s
/// of rounding, and a second to spare. (A re-armed one is followed from its re-arm.)
fn longest_time_wait_ns() -> u64 {
    let fin_timeout_s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(60);
    fin_timeout_s.max(60) * 1_000_000_000 + 3_050_000_000
}

/// Room for every time-wait socket the kernel may keep at once (`tcp_max_tw_buckets`); one
/// entry (unused) where every socket is kept, and the kernel program needs no table.
fn time_wait_table_size(config: &Config) -> u32 {
    if config.keeps_every_socket() {
        return 1;
    }
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(0)
        .clamp(65536, 1 << 20)
}

/// Fails early, with advice, when the process can't load and attach tracing programs.
fn check_privileges() -> Result<()> {
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_BPF) && has(CAP_PERFMON) {
        return Ok(());
    }
    anyhow::bail!(
        "tcptrace needs root (or the CAP_BPF and CAP_PERFMON capabilities): run it with sudo"
    )
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones don't, and some
/// containers may not raise it. Failing here is fine: a real shortage shows at load time.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        crate::debug(format_args!(
            "could not raise RLIMIT_MEMLOCK ({}); not needed on Linux 5.11+",
            io::Error::last_os_error()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_level_is_checked_often_enough_for_small_rings() {
        assert_eq!(wakeup_check_every(4 << 20, 2), 16, "the default ring");
        // 8192 / 8 = 1024 bytes past the level, shared by two CPUs: two 176-byte events each.
        assert_eq!(wakeup_check_every(8192, 2), 2);
        assert_eq!(wakeup_check_every(4096, 2), 1);
        assert_eq!(wakeup_check_every(4096, 64), 1, "every event, never less");
        assert_eq!(wakeup_check_every(4096, 0), 2);
    }

    #[test]
    fn filters_become_kernel_config() {
        let mut config = Config::default();
        let filters = Filters {
            ports: vec![8080, 443],
            pid: Some(42),
            netns: vec![4026531840],
            cgroup: Some(CgroupFilter { id: 77, level: 2 }),
            ipv4: true,
            ipv6: false,
        };
        apply_filters(&mut config, &filters);
        assert_eq!(config.port_count, 2);
        assert_eq!(&config.ports[..2], &[8080, 443]);
        assert_eq!(config.pid, 42);
        assert_eq!((config.netns_count, config.netns[0]), (1, 4026531840));
        assert_eq!((config.cgroup, config.cgroup_level), (77, 2));
        assert_eq!(config.families, FAMILY_IPV4);
        assert!(config.filters_sockets());

        let mut config = Config::default();
        apply_filters(&mut config, &Filters::default());
        assert_eq!(config.families, FAMILY_IPV4 | FAMILY_IPV6);
        assert!(!config.filters_sockets());
    }
}
