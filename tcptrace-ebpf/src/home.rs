//! Where a socket lives: its network namespace and its cgroup, followed from its `struct
//! sock` through pointers at the offsets the loader found in the kernel's BTF; and the two
//! ways of reading kernel memory the programs use ([`load`] and [`read`]).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcptrace_common::{Config, MAX_NETNS, SocketHomeOffsets};

/// The `T` at `offset` in the struct that the BTF tracepoint argument (or a pointer loaded
/// from one) `base` points to: one load, which the verifier checks against that struct's
/// BTF type (the offset comes from read-only config, so it is known at load time). A load
/// of a pointer member gives a pointer of the member's type, which can be loaded from in
/// turn: no helper call.
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: u16) -> T {
    // SAFETY: `offset` is that of a member of `base`'s struct at least `size_of::<T>()` long
    // (the loader took it from BTF); loads through a BTF pointer can't fault (the kernel
    // turns a fault, or a null `base`, into zeroes).
    unsafe { base.add(usize::from(offset)).cast::<T>().read() }
}

/// The value of type `T` at `address`; 0 if it can't be read. For addresses the verifier
/// has no type for (a perf tracepoint's, or one computed back from a member's).
#[inline(always)]
pub fn read<T: Default>(address: u64) -> T {
    // SAFETY: the helper checks the kernel address itself and fails instead of faulting; `T`
    // is a plain integer type whose size the loader checked against the member's.
    unsafe { bpf_probe_read_kernel(address as *const T) }.unwrap_or_default()
}

/// The `T` at offset `member` of the struct that the pointer at `address` points to: two
/// reads. 0 if either fails, or the pointer is null.
#[inline(always)]
fn through<T: Default>(address: u64, member: u16) -> T {
    let pointer: u64 = read(address);
    if pointer == 0 {
        return T::default();
    }
    read(pointer + u64::from(member))
}

/// The inode of the socket's network namespace (two helper reads); 0 if unknown.
#[inline(always)]
pub fn netns(sk: u64, offsets: &SocketHomeOffsets) -> u32 {
    if offsets.netns_valid == 0 || sk == 0 {
        return 0;
    }
    through(sk + u64::from(offsets.sock_net), offsets.net_inum)
}

/// [`netns`] of a socket the verifier has a BTF type for: two plain loads (every state
/// change pays for this, and a helper call costs several times a load).
#[inline(always)]
pub fn netns_of_typed(sk: *const u8, offsets: &SocketHomeOffsets) -> u32 {
    if offsets.netns_valid == 0 {
        return 0;
    }
    let net: *const u8 = load(sk, offsets.sock_net);
    load(net, offsets.net_inum)
}

/// The socket's `struct cgroup`; 0 if unknown.
#[inline(always)]
fn cgroup(sk: u64, offsets: &SocketHomeOffsets) -> u64 {
    if offsets.cgroup_valid == 0 || sk == 0 {
        return 0;
    }
    read(sk + u64::from(offsets.sock_cgroup))
}

/// The id of `cgroup` (its `kernfs_node`'s); 0 if unknown.
#[inline(always)]
fn cgroup_id(cgroup: u64, offsets: &SocketHomeOffsets) -> u64 {
    if cgroup == 0 {
        return 0;
    }
    through(cgroup + u64::from(offsets.cgroup_kn), offsets.kernfs_id)
}

/// The id of the socket's cgroup (three loads); 0 if unknown.
#[inline(always)]
pub fn socket_cgroup_id(sk: u64, offsets: &SocketHomeOffsets) -> u64 {
    cgroup_id(cgroup(sk, offsets), offsets)
}

/// Whether the socket's cgroup is `--cgroup`'s or below it: its ancestor at that cgroup's
/// depth is that cgroup.
#[inline(always)]
pub fn in_kept_cgroup(sk: u64, config: &Config) -> bool {
    let offsets = &config.socket_home;
    let own = cgroup(sk, offsets);
    if own == 0 {
        return false;
    }
    let level: i32 = read(own + u64::from(offsets.cgroup_level));
    if level < config.cgroup_level as i32 {
        return false;
    }
    let slot = own + u64::from(offsets.cgroup_ancestors) + 8 * u64::from(config.cgroup_level);
    cgroup_id(read(slot), offsets) == config.cgroup
}

/// The `--netns` filter.
#[inline(always)]
pub fn netns_kept(config: &Config, netns: u32) -> bool {
    if config.netns_count == 0 {
        return true;
    }
    for i in 0..MAX_NETNS {
        if i as u32 >= config.netns_count {
            break;
        }
        if config.netns[i] == netns {
            return true;
        }
    }
    false
}
