//! The start-up snapshot: the TCP sockets the kernel holds when tracing begins, dumped
//! through sock_diag (`NETLINK_SOCK_DIAG`, `inet_diag`, IPv4 and IPv6) in every network
//! namespace traced, with their owners found as `ss -p` finds them (socket inodes under
//! `/proc/*/fd`). Taken just after attaching, so that nothing falls between the two: the
//! engine merges the sockets with the events that raced the dump.

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{
        ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer,
        nlas::Nla as DiagNla,
    },
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{
    clock::monotonic_now_ns,
    event::{Comm, Home, Owner, SeenSocket, TableRow, TcpState},
    kernel::{host::HomeResolver, loader::Filters},
};

/// `INET_DIAG_CGROUP_ID` (`include/uapi/linux/inet_diag.h`): the socket's cgroup v2 id,
/// which the crate hands over unparsed.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// Where `struct inet_diag_msg` keeps `idiag_expires` (u32, ms): after family, state,
/// timer, retransmits (a byte each) and the 48-byte `inet_diag_sockid`. Read from the
/// message itself because the crate drops it for time-wait sockets, the one place needed.
const EXPIRES_AT: usize = 4 + 48;

/// What the snapshot found.
pub struct Snapshot {
    pub began_ns: u64,
    pub done_ns: u64,
    pub sockets: Vec<SeenSocket>,
    /// Network namespaces dumped.
    pub namespaces: usize,
    /// What could not be seen, and why: each is a warning, and tracing goes on.
    pub missing: Vec<String>,
}

/// What the dumps found: the sockets, and each one's inode (to find its owner by).
#[derive(Default)]
struct Found {
    sockets: Vec<SeenSocket>,
    inodes: Vec<u32>,
}

/// Dumps the TCP sockets `filters` keep, in the namespaces they trace: the given ones
/// with `--netns`, else this process's, those named under /run/netns and those of every
/// running process.
pub fn take(filters: &Filters, resolver: &HomeResolver) -> Snapshot {
    let began_ns = monotonic_now_ns();
    let mut missing = Vec::new();
    let namespaces = namespaces(&filters.netns, &mut missing);
    // The owners are looked for while the dumps run: on a busy host each takes about as
    // long as the other (100 000 sockets: a quarter of a second to dump, half a second of
    // readlinks on one core).
    let (mut found, owners) = std::thread::scope(|scope| {
        let owners = scope.spawn(socket_owners);
        let mut found = Found::default();
        for (inode, path) in &namespaces {
            if let Err(error) = dump_in(path, *inode, filters, &mut found) {
                missing.push(format!(
                    "the sockets of network namespace {inode} ({}): {error:#}",
                    path.display()
                ));
            }
        }
        (found, owners.join().unwrap_or_default())
    });
    let dumped_ns = monotonic_now_ns();
    for (socket, inode) in found.sockets.iter_mut().zip(&found.inodes) {
        socket.owner = owners.get(inode).copied();
    }
    drop(owners);
    if let Some(pid) = filters.pid {
        found.sockets.retain(|socket| socket.owner.is_some_and(|owner| owner.pid == pid));
    }
    if let Some(kept) = filters.cgroup.and_then(|cgroup| resolver.cgroup(cgroup.id)) {
        let mut within: HashMap<u64, bool> = HashMap::new();
        found.sockets.retain(|socket| {
            socket.home.cgroup.is_some_and(|id| {
                *within.entry(id).or_insert_with(|| {
                    resolver.cgroup(id).is_some_and(|cgroup| cgroup.is_within(&kept))
                })
            })
        });
    }
    crate::debug(format_args!(
        "snapshot: {} sockets kept, dumped with their owners in {} ms",
        found.sockets.len(),
        (dumped_ns - began_ns) / 1_000_000,
    ));
    Snapshot {
        began_ns,
        done_ns: monotonic_now_ns(),
        sockets: found.sockets,
        namespaces: namespaces.len(),
        missing,
    }
}

/// The TCP sockets of the calling thread's network namespace with `port` as their local
/// or remote port, IPv4 and IPv6, in the kernel's order (what `ss -tan` would print).
pub fn socket_table(port: u16) -> Result<Vec<TableRow>> {
    let mut rows = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump(family, &mut |response, expires| {
            let header = &response.header;
            let Some(state) = TcpState::from_kernel(header.state) else { return };
            let id = &header.socket_id;
            if id.source_port != port && id.destination_port != port {
                return;
            }
            rows.push(TableRow {
                state,
                recv_q: header.recv_queue,
                send_q: header.send_queue,
                local: SocketAddr::new(id.source_address, id.source_port),
                remote: SocketAddr::new(id.destination_address, id.destination_port),
                inode: header.inode,
                time_wait_left_ns: time_wait_left_ns(response, expires),
            });
        })?;
    }
    Ok(rows)
}

/// The namespaces to dump, by inode, each with a path that opens it.
fn namespaces(only: &[u32], missing: &mut Vec<String>) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    let mut add = |path: PathBuf| {
        if let Ok(inode) = namespace_inode(&path)
            && !found.iter().any(|(known, _)| *known == inode)
        {
            found.push((inode, path));
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        add(entry.path());
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit())) {
            add(entry.path().join("ns/net"));
        }
    }
    if only.is_empty() {
        return found;
    }
    for inode in only {
        if !found.iter().any(|(known, _)| known == inode) {
            missing.push(format!(
                "the sockets of network namespace {inode}: no process or /run/netns entry is in it"
            ));
        }
    }
    found.retain(|(inode, _)| only.contains(inode));
    found
}

fn namespace_inode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata(path)?.ino();
    Ok(u32::try_from(inode)?)
}

/// The sockets of the namespace at `path`, dumped from a thread that enters it (a thread's
/// namespace is its own to change; a netlink socket stays in the one it was made in).
fn dump_in(path: &Path, netns: u32, filters: &Filters, found: &mut Found) -> Result<()> {
    let families: &[u8] = match (filters.ipv4, filters.ipv6) {
        (true, false) => &[AF_INET],
        (false, true) => &[AF_INET6],
        _ => &[AF_INET, AF_INET6],
    };
    std::thread::scope(|scope| {
        scope.spawn(move || dump_there(path, netns, families, filters, found)).join()
    })
    .unwrap_or_else(|_| bail!("the dump panicked"))
}

/// Runs on a thread of its own: enters the namespace, then dumps each family there.
fn dump_there(
    path: &Path,
    netns: u32,
    families: &[u8],
    filters: &Filters,
    found: &mut Found,
) -> Result<()> {
    let own = namespace_inode(Path::new("/proc/self/ns/net"))?;
    if namespace_inode(path)? != own {
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a valid open namespace file; only this thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("entering it (setns)");
        }
    }
    // Room for all of them at once: a vector that doubles as it fills holds up to three
    // times what it needs at the moment it grows, which for 100 000 sockets is 25 MiB.
    let expected = tcp_sockets_here();
    found.sockets.reserve(expected);
    found.inodes.reserve(expected);
    let ports = &filters.ports;
    for &family in families {
        dump(family, &mut |response, expires| {
            let Some(socket) = seen(response, expires, netns) else { return };
            let (local, remote) = (socket.local.port(), socket.remote.port());
            if ports.is_empty() || ports.contains(&local) || ports.contains(&remote) {
                found.sockets.push(socket);
                found.inodes.push(response.header.inode);
            }
        })?;
    }
    Ok(())
}

/// About how many TCP sockets this thread's namespace holds (`inuse` and `tw` of
/// `/proc/thread-self/net/sockstat`); 0 if it can't be read.
fn tcp_sockets_here() -> usize {
    let text = fs::read_to_string("/proc/thread-self/net/sockstat").unwrap_or_default();
    let Some(tcp) = text.lines().find_map(|line| line.strip_prefix("TCP:")) else { return 0 };
    let fields: Vec<&str> = tcp.split_whitespace().collect();
    let count = |name: &str| -> usize {
        let at = fields.iter().position(|field| *field == name);
        at.and_then(|at| fields.get(at + 1)?.parse().ok()).unwrap_or(0)
    };
    (count("inuse") + count("tw")).min(1 << 24)
}

/// Every TCP socket of one family in the current namespace.
fn dump(family: u8, on_socket: &mut impl FnMut(&InetResponse, Option<&[u8]>)) -> Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket.connect(&NetlinkAddr::new(0, 0)).context("connecting the sock_diag socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    });
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut request_bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut request_bytes);
    socket.send(&request_bytes, 0).context("sending the sock_diag request")?;
    // The kernel answers a dump in messages of at most 32 KiB.
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0).context("reading sock_diag")?;
        let mut at = 0;
        while at < size {
            let bytes = &buffer[at..size];
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                .context("a sock_diag message tcptrace can't read")?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    // The payload follows the 16-byte netlink header.
                    let expires = bytes.get(16 + EXPIRES_AT..16 + EXPIRES_AT + 4);
                    on_socket(&response, expires);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => bail!("sock_diag said: {error}"),
                _ => {}
            }
            if length == 0 {
                break;
            }
            at += length;
        }
    }
}

/// A socket as the engine is told of it (its owner is found later); `None` for one it
/// does not follow (a request socket is not a socket yet: its child shows up on its own).
fn seen(response: &InetResponse, expires: Option<&[u8]>, netns: u32) -> Option<SeenSocket> {
    let header = &response.header;
    let state = TcpState::from_kernel(header.state)?;
    if matches!(state, TcpState::SynReceived | TcpState::NewSynRecv | TcpState::Closed) {
        return None;
    }
    let id = &header.socket_id;
    let cgroup = response.nlas.iter().find_map(|nla| match nla {
        DiagNla::Other(other) if other.kind() == INET_DIAG_CGROUP_ID => {
            let mut value = [0u8; 8];
            (other.value_len() == 8).then(|| {
                other.emit_value(&mut value);
                u64::from_ne_bytes(value)
            })
        }
        _ => None,
    });
    let time_wait_left_ns = time_wait_left_ns(response, expires);
    Some(SeenSocket {
        state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        home: Home { netns: Some(netns).filter(|&n| n != 0), cgroup: cgroup.filter(|&id| id != 0) },
        owner: None,
        time_wait_left_ns,
    })
}

/// A time-wait socket's time left, from `idiag_expires` (ms).
fn time_wait_left_ns(response: &InetResponse, expires: Option<&[u8]>) -> Option<u64> {
    let time_wait = matches!(response.header.timer, Some(Timer::TimeWait));
    let expires = expires.filter(|_| time_wait)?;
    let ms = u32::from_ne_bytes([expires[0], expires[1], expires[2], expires[3]]);
    Some(u64::from(ms) * 1_000_000)
}

/// The process holding each socket inode, as `ss -p` finds them: a descriptor under
/// `/proc/PID/fd` that links to `socket:[INODE]`. The lowest pid wins for a shared one.
/// Processes are shared out among a thread per core: the readlinks are the cost.
fn socket_owners() -> HashMap<u32, Owner> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let parts: Vec<Vec<(u32, Owner)>> = std::thread::scope(|scope| {
        let pids = &pids;
        let workers: Vec<_> = (0..threads)
            .map(|part| {
                scope.spawn(move || {
                    let mut owners = Vec::new();
                    for &pid in pids.iter().skip(part).step_by(threads) {
                        sockets_of(pid, &mut owners);
                    }
                    owners
                })
            })
            .collect();
        workers.into_iter().filter_map(|worker| worker.join().ok()).collect()
    });
    let mut owners = HashMap::with_capacity(parts.iter().map(Vec::len).sum());
    for (inode, owner) in parts.into_iter().flatten() {
        let known = owners.entry(inode).or_insert(owner);
        if owner.pid < known.pid {
            *known = owner;
        }
    }
    owners
}

/// The sockets process `pid` holds, as (inode, owner), into `owners`.
fn sockets_of(pid: u32, owners: &mut Vec<(u32, Owner)>) {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return };
    let mut comm = None;
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else { continue };
        let Some(inode) = socket_inode(&target) else { continue };
        let comm = *comm.get_or_insert_with(|| {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            Comm::new(name.trim_end())
        });
        owners.push((inode, Owner { pid, comm }));
    }
}

/// `socket:[12345]` → 12345.
fn socket_inode(target: &Path) -> Option<u32> {
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode(Path::new("socket:[4026]")), Some(4026));
        assert_eq!(socket_inode(Path::new("pipe:[4026]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }
}
