//! A cpu cgroup of the draining thread's own, made idle while it yields (`cpu.idle`).
//!
//! An idle task (`SCHED_IDLE`) is preempted at once only by the wake-ups of its own
//! scheduling group. With autogroups on, each session is a group, so a tracer started from
//! another terminal than the programs it traces is in another group than theirs: their
//! wake-ups wait for the draining thread's turn to end (on the bench's two cores the
//! metrics daemon kept 0.89× the untraced rate in a session of its own, 0.93× in the
//! churn's). An idle cgroup is preempted by every wake-up outside it, whatever its group.
//! So where the cgroup-v1 cpu controller is mounted (hybrid and legacy hosts), the draining
//! thread gets a cgroup of its own below the tracer's, `tcptrace-PID`, whose `cpu.idle`
//! follows its yielding. It is moved there once, at start, and back at the end: each move
//! holds up the host's forks and exits for a moment, a switch of `cpu.idle` does not. On
//! cgroup v2 a single thread can only move into a threaded subtree, which would change the
//! cgroup the tracer was started in: there it yields within its own group only.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::kernel::host;

/// The name of each tracer's cgroup, before its pid.
pub const PREFIX: &str = "tcptrace-";

/// The draining thread's cgroup; dropping it moves the thread back and removes it.
pub struct IdleCgroup {
    dir: PathBuf,
    tid: libc::pid_t,
    /// Its `cpu.idle`, open for writing.
    idle: File,
}

impl IdleCgroup {
    /// Makes the cgroup, not idle yet, below the tracer's own in the cgroup-v1 cpu
    /// hierarchy, and moves thread `tid` into it. The threads it starts after are born there.
    pub fn enter(tid: libc::pid_t) -> Result<IdleCgroup> {
        let parent = cpu_cgroup("/proc/self/cgroup")?;
        remove_stale(&parent);
        let dir = parent.join(format!("{PREFIX}{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        let idle = OpenOptions::new().write(true).open(dir.join("cpu.idle"));
        let idle = match idle {
            Ok(idle) => idle,
            Err(error) => {
                let _ = fs::remove_dir(&dir);
                return Err(error).context("this kernel's cpu cgroups have no cpu.idle");
            }
        };
        // From here on, a failure drops it: it moves the thread back and removes the cgroup.
        let group = IdleCgroup { dir, tid, idle };
        fs::write(group.dir.join("tasks"), tid.to_string())
            .with_context(|| format!("cannot move thread {tid} into {}", group.dir.display()))?;
        Ok(group)
    }

    /// Makes the cgroup idle (`cpu.idle` 1), or not (0).
    pub fn set_idle(&self, idle: bool) -> Result<()> {
        self.idle
            .write_all_at(if idle { b"1" } else { b"0" }, 0)
            .with_context(|| format!("cannot write {}/cpu.idle", self.dir.display()))
    }
}

impl Drop for IdleCgroup {
    fn drop(&mut self) {
        if let Some(parent) = self.dir.parent() {
            // Fails when the thread has ended already, which leaves the cgroup empty too.
            let _ = fs::write(parent.join("tasks"), self.tid.to_string());
        }
        if let Err(error) = fs::remove_dir(&self.dir) {
            crate::debug(format_args!("cannot remove {}: {error}", self.dir.display()));
        }
    }
}

/// The directory of a process's (or thread's) cgroup in the cgroup-v1 cpu hierarchy, from
/// its `cgroups` file (`/proc/PID/cgroup`, `/proc/PID/task/TID/cgroup`).
pub fn cpu_cgroup(cgroups: impl AsRef<Path>) -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let cgroups = fs::read_to_string(cgroups.as_ref())
        .with_context(|| format!("cannot read {}", cgroups.as_ref().display()))?;
    cpu_cgroup_dir(&mountinfo, &cgroups).context("the cgroup-v1 cpu controller is not mounted")
}

/// [`cpu_cgroup`], from the host's mountinfo and a cgroups file's text.
fn cpu_cgroup_dir(mountinfo: &str, cgroups: &str) -> Option<PathBuf> {
    let path = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (controllers, path) = (fields.nth(1)?, fields.next()?);
        controllers.split(',').any(|controller| controller == "cpu").then_some(path)
    })?;
    let mount = host::mounts(mountinfo).find(|mount| {
        mount.fs_type == "cgroup" && mount.super_options.split(',').any(|option| option == "cpu")
    })?;
    let below = Path::new(path).strip_prefix(mount.root).ok()?;
    Some(mount.point.join(below))
}

/// Removes the cgroups of tracers that ended without removing theirs (killed): the kernel
/// removes only empty ones.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix(PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_cgroup_is_found_where_the_cpu_controller_is_mounted() {
        let hybrid = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let cgroups = "4:memory:/process_api/60bf\n3:cpuset:/\n1:cpu:/\n0::/";
        let found = cpu_cgroup_dir(hybrid, cgroups);
        assert_eq!(found, Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        let cgroups = "3:cpuset:/x\n2:cpu,cpuacct:/system.slice/nginx.service\n0::/";
        let legacy = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset";
        let found = cpu_cgroup_dir(legacy, cgroups);
        assert_eq!(
            found,
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/system.slice/nginx.service"))
        );
        // A container sees its own cgroup at the mount's root.
        let container = "\
60 50 0:22 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu,cpuacct";
        let found = cpu_cgroup_dir(container, "2:cpu,cpuacct:/docker/abc/job\n");
        assert_eq!(found, Some(PathBuf::from("/sys/fs/cgroup/cpu/job")));
        // cgroup v2 only: no v1 cpu controller.
        let unified = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(cpu_cgroup_dir(unified, "0::/user.slice\n"), None);
        assert_eq!(cpu_cgroup_dir(hybrid, "3:cpuset:/\n0::/"), None);
    }
}
