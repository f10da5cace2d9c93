//! The ring buffers the kernel program writes events to, one per CPU (up to
//! [`MAX_RINGS`]), read as one. A ring shared by every CPU cost 40–120 ns more an event on
//! this project's bench host: its lock and positions moved between the CPUs with each
//! event (docs/BENCHMARKS.md). What the async runtime waits on is an epoll instance over all
//! of them, readable when any is.

use std::{
    io,
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
    /// (the engine puts them in time order); returns the most read from one ring, which
    /// says how far behind the reader was.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        let mut most = 0;
        for ring in &mut self.rings {
            let mut count = 0;
            while let Some(item) = ring.next() {
                on_record(&item);
                count += 1;
            }
            most = most.max(count);
        }
        most
    }
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
}
