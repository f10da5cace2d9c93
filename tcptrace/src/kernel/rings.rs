//! The ring buffers the kernel program writes events to, one per CPU (up to
//! [`MAX_RINGS`]), read as one. A ring shared by every CPU cost 40–120 ns more an event on
//! this project's bench host: its lock and positions moved between the CPUs with each
//! event (docs/BENCHMARKS.md). What the async runtime waits on is an epoll instance over all
//! of them, readable when any is. Each record read has its cache lines flushed
//! ([`release_lines`]).

use std::{
    io,
    ops::Range,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use tcptrace_common::MAX_RINGS;

/// The smallest ring the kernel makes: a page.
pub const PAGE_BYTES: u32 = 4096;

/// The rings: one per CPU, up to [`MAX_RINGS`] (CPU `n` writes to ring `n % count`), each
/// of `--ring-size` bytes. Each CPU's events have as much room as one ring shared by all
/// had: the CPUs of a host are seldom evenly busy (on the bench's loopback churn one ring
/// takes most of the events), and a ring split among them would fill sooner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub count: u32,
    pub bytes_each: u32,
}

impl RingLayout {
    pub fn new(ring_size: u32, cpus: u32) -> RingLayout {
        RingLayout { count: cpus.clamp(1, MAX_RINGS), bytes_each: ring_size.max(PAGE_BYTES) }
    }

    /// How many CPUs write to one ring, at most.
    pub fn cpus_per_ring(&self, cpus: u32) -> u32 {
        cpus.max(1).div_ceil(self.count)
    }
}

/// The rings in use, and an epoll instance over them: what the reader waits on.
pub struct Rings {
    rings: Vec<RingBuf<MapData>>,
    layout: RingLayout,
    epoll: OwnedFd,
}

impl Rings {
    pub fn new(rings: Vec<RingBuf<MapData>>, layout: RingLayout) -> io::Result<Rings> {
        // SAFETY: epoll_create1 has no preconditions; a new descriptor is ours to own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created, and nothing else owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for ring in &rings {
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
            // SAFETY: both descriptors are open, and `event` is valid for the call (a ring's
            // descriptor closed later leaves the instance by itself).
            let added = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ring.as_raw_fd(),
                    &mut event,
                )
            };
            if added != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Rings { rings, layout, epoll })
    }

    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Calls `on_record` with each record waiting in the rings, one ring after another
    /// (the engine puts them in time order), then flushes its cache lines
    /// ([`release_lines`]); returns the most read from one ring, which says how far behind
    /// the reader was.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        let mut most = 0;
        for ring in &mut self.rings {
            let mut count = 0;
            while let Some(item) = ring.next() {
                on_record(&item);
                release_lines(&item);
                count += 1;
            }
            most = most.max(count);
        }
        most
    }
}

/// The ring's header before each record (`BPF_RINGBUF_HDR_SZ`).
const RECORD_HEADER_BYTES: usize = 8;
/// A cache line on x86-64.
const CACHE_LINE_BYTES: usize = 64;

/// Flushes a record's cache lines, once read, from every cache (x86-64's `clflush`; a no-op
/// elsewhere, where it was not measured). A line the reader's CPU still holds makes the
/// kernel program's write over it, a lap later, wait for that CPU to give it up: on the
/// bench host the program's `bpf_ringbuf_submit` (whose `xchg` waits for the event's
/// stores) took about 85 ns an event with the default ring, 25 with the lines flushed, and
/// the reader's CPU stayed the same (docs/BENCHMARKS.md). Larger rings cut it too, by the
/// time the lines have to leave the reader's caches by themselves, but they cost memory.
fn release_lines(record: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in lines_to_release(record.as_ptr() as usize, record.len()).step_by(CACHE_LINE_BYTES) {
        // SAFETY: the line holds part of the record or its header, in the ring's mapping,
        // which stays mapped while the ring is; `clflush` only writes the line back and
        // evicts it, and every x86-64 CPU has it (SSE2).
        unsafe { std::arch::x86_64::_mm_clflush(line as *const u8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = record;
}

/// The addresses of the cache lines to flush once the record at `address` (`bytes` long,
/// its header just before it) has been read: from the line its header starts in, up to and
/// not including the line it ends in, which the next record shares (the kernel program may
/// be writing it): that line goes with the next record. So each line of a run of records is
/// flushed once, except the last, left to the record the kernel program writes next. (A
/// flush changes only where a line is cached, never what it holds.)
fn lines_to_release(address: usize, bytes: usize) -> Range<usize> {
    let first = (address - RECORD_HEADER_BYTES) & !(CACHE_LINE_BYTES - 1);
    let end = (address + bytes) & !(CACHE_LINE_BYTES - 1);
    first..end.max(first)
}

impl AsRawFd for Rings {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_per_cpu_up_to_eight_each_of_the_ring_size() {
        const MIB: u32 = 1 << 20;
        assert_eq!(RingLayout::new(4 * MIB, 2), RingLayout { count: 2, bytes_each: 4 * MIB });
        assert_eq!(RingLayout::new(4 * MIB, 1), RingLayout { count: 1, bytes_each: 4 * MIB });
        // 64 CPUs share the 8 rings, 8 each.
        let many = RingLayout::new(4 * MIB, 64);
        assert_eq!(many.count, 8);
        assert_eq!(many.cpus_per_ring(64), 8);
        assert_eq!(RingLayout::new(4 * MIB, 3).cpus_per_ring(3), 1);
        assert_eq!(RingLayout::new(4 * MIB, 0).count, 1);
    }

    #[test]
    fn a_run_of_records_releases_each_line_once_but_the_last() {
        // Records of 176 bytes with their headers, from a line's start: the first ends
        // 48 bytes into its third line, which the second record starts in.
        const RECORD: usize = 176;
        let base = 0x10_000;
        let lines = |count: usize| -> Vec<usize> {
            (0..count)
                .map(|n| lines_to_release(base + n * RECORD + RECORD_HEADER_BYTES, RECORD - 8))
                .flat_map(|lines| lines.step_by(CACHE_LINE_BYTES))
                .collect()
        };
        assert_eq!(lines_to_release(base + 8, 168), base..base + 128);
        assert_eq!(lines_to_release(base + 176 + 8, 168), base + 128..base + 320);
        // Seven records end 16 bytes into their 20th line (7 × 176 = 19 × 64 + 16): the
        // first 19 are released, each once; the 20th holds the next record's header.
        assert_eq!(lines(7), (base..base + 19 * 64).step_by(CACHE_LINE_BYTES).collect::<Vec<_>>());
        // Eight end at a line's end (8 × 176 = 22 × 64): nothing is left over.
        assert_eq!(lines(8), (base..base + 22 * 64).step_by(CACHE_LINE_BYTES).collect::<Vec<_>>());
        // A record inside one line releases nothing: its line goes with the next.
        assert_eq!(lines_to_release(base + 16, 24), base..base);
    }
}
