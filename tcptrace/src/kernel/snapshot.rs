//! The start-up snapshot: the TCP sockets the kernel holds when tracing begins, dumped
//! through sock_diag (`NETLINK_SOCK_DIAG`, `inet_diag`, IPv4 and IPv6) in every network
//! namespace traced, with their owners found as `ss -p` finds them (socket inodes under
//! `/proc/*/fd`). Taken just after attaching, so that nothing falls between the two: the
//! engine merges the sockets with the events that raced the dump.

use std::{
    collections::{HashMap, HashSet},
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
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla as DiagNla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{
    clock::monotonic_now_ns,
    event::{Comm, Home, Owner, SeenSocket, TcpState},
    kernel::{host::HomeResolver, loader::Filters},
};

/// `INET_DIAG_CGROUP_ID` (`include/uapi/linux/inet_diag.h`): the socket's cgroup v2 id,
/// which the crate hands over unparsed.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `idiag_timer` of a time-wait socket.
const TIME_WAIT_TIMER: u8 = 3;
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

/// One socket as sock_diag reports it.
struct Dumped {
    state: u8,
    local: SocketAddr,
    remote: SocketAddr,
    inode: u32,
    cgroup: Option<u64>,
    time_wait_left_ns: Option<u64>,
}

/// Dumps the TCP sockets `filters` keep, in the namespaces they trace: the given ones
/// with `--netns`, else this process's, those named under /run/netns and those of every
/// running process.
pub fn take(filters: &Filters, resolver: &HomeResolver) -> Snapshot {
    let began_ns = monotonic_now_ns();
    let mut missing = Vec::new();
    let namespaces = namespaces(&filters.netns, &mut missing);
    let mut dumped: Vec<(u32, Dumped)> = Vec::new();
    for (inode, path) in &namespaces {
        match dump_in(path, filters) {
            Ok(sockets) => dumped.extend(sockets.into_iter().map(|socket| (*inode, socket))),
            Err(error) => missing.push(format!(
                "the sockets of network namespace {inode} ({}): {error:#}",
                path.display()
            )),
        }
    }
    let wanted: HashSet<u32> = dumped.iter().map(|(_, s)| s.inode).filter(|&i| i != 0).collect();
    let owners = owners_of(&wanted);
    let cgroup_prefix = filters.cgroup.and_then(|cgroup| resolver.cgroup(cgroup.id));
    let mut in_kept_cgroup: HashMap<u64, bool> = HashMap::new();
    let sockets = dumped
        .into_iter()
        .filter_map(|(netns, socket)| {
            let state = TcpState::from_kernel(socket.state)?;
            // A request socket is not a socket yet: its child shows up on its own.
            if matches!(state, TcpState::SynReceived | TcpState::NewSynRecv | TcpState::Closed) {
                return None;
            }
            let owner = owners.get(&socket.inode).copied();
            if filters.pid.is_some_and(|pid| owner.is_none_or(|owner| owner.pid != pid)) {
                return None;
            }
            if let Some(prefix) = &cgroup_prefix {
                let id = socket.cgroup?;
                let kept = *in_kept_cgroup.entry(id).or_insert_with(|| {
                    resolver.cgroup(id).is_some_and(|cgroup| cgroup.is_within(prefix))
                });
                if !kept {
                    return None;
                }
            }
            Some(SeenSocket {
                state,
                local: socket.local,
                remote: socket.remote,
                home: Home { netns: Some(netns).filter(|&n| n != 0), cgroup: socket.cgroup },
                owner,
                time_wait_left_ns: socket.time_wait_left_ns,
            })
        })
        .collect();
    Snapshot {
        began_ns,
        done_ns: monotonic_now_ns(),
        sockets,
        namespaces: namespaces.len(),
        missing,
    }
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
fn dump_in(path: &Path, filters: &Filters) -> Result<Vec<Dumped>> {
    let path = path.to_owned();
    let families: Vec<u8> = match (filters.ipv4, filters.ipv6) {
        (true, false) => vec![AF_INET],
        (false, true) => vec![AF_INET6],
        _ => vec![AF_INET, AF_INET6],
    };
    let ports = filters.ports.clone();
    std::thread::spawn(move || -> Result<Vec<Dumped>> {
        let own = namespace_inode(Path::new("/proc/self/ns/net"))?;
        if namespace_inode(&path)? != own {
            let file =
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: a valid open namespace file; only this thread changes namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("entering it (setns)");
            }
        }
        let mut sockets = Vec::new();
        for family in families {
            dump(family, &mut sockets)?;
        }
        if !ports.is_empty() {
            sockets.retain(|s| ports.contains(&s.local.port()) || ports.contains(&s.remote.port()));
        }
        Ok(sockets)
    })
    .join()
    .unwrap_or_else(|_| bail!("the dump panicked"))
}

/// Every TCP socket of one family in the current namespace.
fn dump(family: u8, sockets: &mut Vec<Dumped>) -> Result<()> {
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
    let mut buffer = vec![0u8; 1 << 20];
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
                    sockets.push(dumped(&response, expires));
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

fn dumped(response: &InetResponse, expires: Option<&[u8]>) -> Dumped {
    let header = &response.header;
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
    let time_wait_left_ns = (raw_timer(response) == Some(TIME_WAIT_TIMER))
        .then(|| expires.map(|b| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))))
        .flatten()
        .map(|ms| ms * 1_000_000);
    Dumped {
        state: header.state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        inode: header.inode,
        cgroup: cgroup.filter(|&id| id != 0),
        time_wait_left_ns,
    }
}

/// The socket's `idiag_timer`, as the crate parsed it.
fn raw_timer(response: &InetResponse) -> Option<u8> {
    use netlink_packet_sock_diag::inet::Timer;
    Some(match response.header.timer.as_ref()? {
        Timer::Retransmit(..) => 1,
        Timer::KeepAlive(..) => 2,
        Timer::TimeWait => TIME_WAIT_TIMER,
        Timer::Probe(..) => 4,
    })
}

/// The processes holding these socket inodes, as `ss -p` finds them: a descriptor under
/// `/proc/PID/fd` that links to `socket:[INODE]`. The lowest pid wins for a shared one.
fn owners_of(inodes: &HashSet<u32>) -> HashMap<u32, Owner> {
    let mut owners = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let mut comm = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let Some(inode) = socket_inode(&target) else { continue };
            if !inodes.contains(&inode) || owners.contains_key(&inode) {
                continue;
            }
            let comm = *comm.get_or_insert_with(|| {
                let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                Comm::new(name.trim_end())
            });
            owners.insert(inode, Owner { pid, comm });
        }
    }
    owners
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
