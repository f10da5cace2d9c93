//! What the host says about the numbers in events (live only): a network namespace's
//! `ip netns` name, a cgroup id's path (through `open_by_handle_at`, as systemd and bpftool
//! resolve them), and the `--netns` and `--cgroup` values, checked before anything is
//! attached; and where the host mounts its file systems (`/proc/self/mountinfo`).

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::fs::MetadataExt},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::names::Cgroup;

/// Where `ip netns add` leaves its namespaces.
const IP_NETNS_DIR: &str = "/run/netns";
/// `statfs` magic of cgroup v2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: i64 = 0x6367_7270;
/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`): which kind of namespace a file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// A kernfs file handle (`FILEID_KERNFS`): the node's id, which is a cgroup's id.
const FILEID_KERNFS: i32 = 0xfe;

/// Where cgroup v2 is mounted: found in `/proc/self/mountinfo` (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, others at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    cgroup2_mount_in(&mountinfo).context("cgroup v2 is not mounted (no cgroup2 in mountinfo)")
}

/// The first cgroup2 mount of the whole hierarchy (root `/`) in a mountinfo text.
fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mounts(mountinfo)
        .find(|mount| mount.fs_type == "cgroup2" && mount.root == "/")
        .map(|mount| mount.point)
}

/// One line of `/proc/self/mountinfo`: what is mounted where.
pub struct Mount<'a> {
    /// The mounted file system's directory that appears at `point` (`/` for all of it).
    pub root: &'a str,
    pub point: PathBuf,
    pub fs_type: &'a str,
    /// The file system's own options (for cgroup v1, its controllers: `rw,cpu,cpuacct`).
    pub super_options: &'a str,
}

/// The mounts a mountinfo text lists.
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (fields, after) = line.split_once(" - ")?;
        let mut fields = fields.split(' ');
        let (root, point) = (fields.nth(3)?, fields.next()?);
        let mut after = after.split(' ');
        let (fs_type, super_options) = (after.next()?, after.nth(1)?);
        let point = PathBuf::from(unescape_mountinfo(point));
        Some(Mount { root, point, fs_type, super_options })
    })
}

/// mountinfo writes spaces, tabs, newlines and backslashes as octal escapes.
fn unescape_mountinfo(text: &str) -> String {
    text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// `--cgroup PATH`: the cgroup's id and its depth below the root, and its path from the
/// root. PATH is a directory of the cgroup2 mount, or a path from its root (`/system.slice`).
pub fn cgroup_filter(path: &Path) -> Result<(u64, u32, String)> {
    let root = cgroup2_mount()?;
    let full = if path.starts_with(&root) { path.to_owned() } else { root.join(relative(path)) };
    let metadata = std::fs::metadata(&full).with_context(|| {
        format!(
            "--cgroup {}: no such cgroup (looked for {}; cgroup v2 is mounted at {})",
            path.display(),
            full.display(),
            root.display()
        )
    })?;
    if !metadata.is_dir() || statfs_magic(&full)? != CGROUP2_MAGIC {
        bail!("--cgroup {}: {} is not a cgroup v2 directory", path.display(), full.display());
    }
    let from_root = full.strip_prefix(&root).expect("made under the root");
    let level = from_root.components().filter(|c| matches!(c, Component::Normal(_))).count();
    Ok((metadata.ino(), level as u32, format!("/{}", from_root.display())))
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn statfs_magic(path: &Path) -> Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: an all-zero `statfs` is a valid value for the call to overwrite.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `info` a valid `statfs` to fill.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut info) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statfs {}", path.display()));
    }
    Ok(info.f_type as i64)
}

/// `--netns PATH|INODE`: the namespace's inode. PATH is a namespace file (`/run/netns/NAME`,
/// `/proc/PID/ns/net`); a bare NAME is looked up in /run/netns.
pub fn netns_filter(value: &str) -> Result<u32> {
    if let Ok(inode) = value.parse::<u32>() {
        return Ok(inode);
    }
    let path = if value.contains('/') {
        PathBuf::from(value)
    } else {
        Path::new(IP_NETNS_DIR).join(value)
    };
    let file = File::open(&path)
        .with_context(|| format!("--netns {value}: cannot open {}", path.display()))?;
    // SAFETY: the fd is open for the call; the ioctl takes no argument.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        bail!("--netns {value}: {} is not a network namespace", path.display());
    }
    let inode = file.metadata()?.ino();
    u32::try_from(inode).with_context(|| format!("--netns {value}: inode {inode} is too large"))
}

/// Names for the numbers events carry, looked up once each.
pub struct HomeResolver {
    /// The cgroup2 mount, open, for `open_by_handle_at`; `None` without cgroup v2.
    cgroup_root: Option<(File, PathBuf)>,
    netns_names: HashMap<u32, String>,
}

impl HomeResolver {
    pub fn new() -> HomeResolver {
        let cgroup_root =
            cgroup2_mount().ok().and_then(|root| Some((File::open(&root).ok()?, root)));
        HomeResolver { cgroup_root, netns_names: HashMap::new() }
    }

    /// The cgroup with this id, or `None` if it is gone (or can't be resolved).
    pub fn cgroup(&self, id: u64) -> Option<Cgroup> {
        let (root_dir, root) = self.cgroup_root.as_ref()?;
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: u32,
            handle_type: i32,
            id: u64,
        }
        let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `handle` is a `file_handle` header followed by its 8 bytes of handle, as
        // `handle_bytes` says; the kernel only reads it.
        let fd = unsafe {
            libc::open_by_handle_at(root_dir.as_raw_fd(), (&raw mut handle).cast(), flags)
        };
        if fd < 0 {
            crate::debug(format_args!(
                "cgroup {id}: {} (gone, or not under {})",
                std::io::Error::last_os_error(),
                root.display()
            ));
            return None;
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let dir = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let from_root = target.strip_prefix(root).ok()?;
        Some(Cgroup::new(format!("/{}", from_root.display())))
    }

    /// The `ip netns` name of the namespace with this inode, if it has one. /run/netns is
    /// read again for a namespace it did not name before.
    pub fn netns_name(&mut self, inode: u32) -> Option<String> {
        if !self.netns_names.contains_key(&inode) {
            for entry in std::fs::read_dir(IP_NETNS_DIR).into_iter().flatten().flatten() {
                if let (Ok(metadata), Some(name)) = (entry.metadata(), entry.file_name().to_str())
                    && let Ok(found) = u32::try_from(metadata.ino())
                {
                    self.netns_names.insert(found, name.to_owned());
                }
            }
        }
        self.netns_names.get(&inode).cloned()
    }
}

impl Default for HomeResolver {
    fn default() -> Self {
        HomeResolver::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd";
        assert_eq!(cgroup2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let container = "\
50 40 0:26 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw
51 40 0:26 / /mnt/cg\\040all rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount_in(container), Some(PathBuf::from("/mnt/cg all")));
        assert_eq!(cgroup2_mount_in("1 0 0:1 / / rw - ext4 /dev/sda rw"), None);
    }
}
