//! The kernel side of userspace: finding tracefs and the field offsets it gives, member
//! offsets from the kernel's BTF, loading
//! and attaching the embedded eBPF program, and reading its ring buffer. The only part of
//! the library that uses aya.

pub mod btf;
pub mod loader;
pub mod tracefs;
