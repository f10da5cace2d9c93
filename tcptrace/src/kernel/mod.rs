//! The kernel side of userspace: finding tracefs and the field offsets it gives, member
//! offsets from the kernel's BTF, the kernel's symbols and tick rate, loading and
//! attaching the embedded eBPF program, reading its ring buffers, what the host says about
//! the namespaces and cgroups events name, and the start-up snapshot of the sockets already
//! there (sock_diag). The only part of the library that uses aya.

pub mod btf;
pub mod host;
pub mod kallsyms;
pub mod loader;
pub mod rings;
pub mod snapshot;
pub mod tracefs;
