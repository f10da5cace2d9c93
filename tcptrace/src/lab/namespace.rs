//! The lab's private network namespace: made with `unshare(2)` on a thread of its own and
//! kept by an open file, with no name under /run/netns. It goes when tcptrace goes, however
//! that happens (an error, Ctrl-C, a kill): the file closes, and the processes started in
//! it die with tcptrace (`PR_SET_PDEATHSIG`). Its sysctls are its own, so the host's stay
//! as they were.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub struct LabNamespace {
    file: File,
    inode: u32,
}

impl LabNamespace {
    /// A new network namespace with its loopback interface up.
    pub fn create() -> Result<LabNamespace> {
        std::thread::scope(|scope| scope.spawn(create_here).join())
            .unwrap_or_else(|_| bail!("creating the namespace panicked"))
    }

    /// Its inode, as events and `lsns -t net` name it.
    pub fn inode(&self) -> u32 {
        self.inode
    }

    /// Runs `work` on a thread that enters the namespace (a thread's namespace is its own
    /// to change; the rest of tcptrace stays where it is).
    pub fn run<T: Send>(&self, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `fd` is the namespace file, open for as long as `self` lives.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error())
                            .context("entering the lab's namespace");
                    }
                    work()
                })
                .join()
        })
        .unwrap_or_else(|_| bail!("work in the lab's namespace panicked"))
    }

    /// Sets a sysctl of the namespace (`net.ipv4.tcp_tw_reuse`: `/proc/sys/net/...` is
    /// the namespace of whoever opens it).
    pub fn set_sysctl(&self, name: &str, value: &str) -> Result<()> {
        let path = sysctl_path(name);
        self.run(|| fs::write(&path, value).with_context(|| format!("setting {name} = {value}")))
    }

    pub fn sysctl(&self, name: &str) -> Result<String> {
        let path = sysctl_path(name);
        self.run(|| {
            let text = fs::read_to_string(&path).with_context(|| format!("reading {name}"))?;
            Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
        })
    }

    /// A command that runs in the namespace and is killed when tcptrace exits.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls are made (setns and
        // prctl are plain system calls), on an fd the parent keeps open.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// On a thread of its own, which it leaves in the new namespace.
fn create_here() -> Result<LabNamespace> {
    // SAFETY: a plain system call; it moves only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EPERM) {
            bail!("tcptrace lab makes a network namespace of its own, which needs root (sudo)");
        }
        return Err(error).context("creating a network namespace (unshare)");
    }
    let file = File::open("/proc/thread-self/ns/net").context("opening the new namespace")?;
    let inode = {
        use std::os::unix::fs::MetadataExt;
        u32::try_from(file.metadata()?.ino())?
    };
    loopback_up().context("bringing up its loopback interface")?;
    Ok(LabNamespace { file, inode })
}

/// `ip link set lo up`, with the two ioctls it comes to (a netlink crate for one flag
/// would be more code than this).
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2); the fd is closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value, and "lo" fits its name.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq passed, which lives
    // through both calls; `ifru_flags` is the union member these two use.
    let result = unsafe {
        if libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) != 0 {
            Err(io::Error::last_os_error())
        } else {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: the fd made above, closed once.
    unsafe { libc::close(socket) };
    result
}
