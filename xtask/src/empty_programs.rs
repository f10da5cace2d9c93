//! Empty BPF programs on the tracepoints tcptrace uses, for the bench's kernel-cost rows.
//! With `kernel.bpf_stats_enabled=1` the kernel times every program run between two clock
//! reads; what a program that does nothing measures there is that timing's own cost, which
//! no program pays while the statistics are off. Two instructions need no object file: they
//! are loaded with bpf(2) directly, as raw tracepoint programs (timed the same way as the
//! BTF tracepoint programs tcptrace attaches to the same tracepoints).

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `r0 = 0; exit`.
const RETURN_ZERO: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

/// The start of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel takes a shorter attr as
/// zero-filled).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
struct RawTracepointOpenAttr {
    name: u64,
    prog_fd: u32,
    padding: u32,
}

/// An empty program attached to each tracepoint named; detached when dropped.
pub struct EmptyPrograms {
    /// (program, its attachment).
    _attached: Vec<(OwnedFd, OwnedFd)>,
}

fn bpf<T>(command: libc::c_long, attr: &T) -> Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised attr of its command's layout, and its size is
    // passed with it; the kernel reads no further.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        bail!("bpf({command}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor the kernel just returned to us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl EmptyPrograms {
    /// Attaches one to each `(tracepoint, program name)`; a name is what `bpftool prog show`
    /// calls it (at most 15 bytes).
    pub fn attach(programs: &[(&str, &str)]) -> Result<EmptyPrograms> {
        let license = c"GPL";
        let mut attached = Vec::new();
        for (tracepoint, name) in programs {
            let mut prog_name = [0u8; 16];
            let length = name.len().min(15);
            prog_name[..length].copy_from_slice(&name.as_bytes()[..length]);
            let program = bpf(
                BPF_PROG_LOAD,
                &ProgLoadAttr {
                    prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
                    insn_cnt: RETURN_ZERO.len() as u32,
                    insns: RETURN_ZERO.as_ptr() as u64,
                    license: license.as_ptr() as u64,
                    log_level: 0,
                    log_size: 0,
                    log_buf: 0,
                    kern_version: 0,
                    prog_flags: 0,
                    prog_name,
                },
            )?;
            let tracepoint_name = std::ffi::CString::new(*tracepoint)?;
            let link = bpf(
                BPF_RAW_TRACEPOINT_OPEN,
                &RawTracepointOpenAttr {
                    name: tracepoint_name.as_ptr() as u64,
                    prog_fd: std::os::fd::AsRawFd::as_raw_fd(&program) as u32,
                    padding: 0,
                },
            )?;
            attached.push((program, link));
        }
        Ok(EmptyPrograms { _attached: attached })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_to_the_tracepoints_the_bench_times_and_to_no_other() {
        let programs =
            [("inet_sock_set_state", "empty_set_state"), ("timer_cancel", "empty_cancel")];
        assert!(EmptyPrograms::attach(&programs).is_ok());
        let error = EmptyPrograms::attach(&[("no_such_tracepoint", "empty_none")]).err();
        assert!(error.is_some_and(|e| e.to_string().contains("bpf(17)")));
    }
}
