//! What the numbers in events stand for: network namespaces by inode (their `ip netns`
//! names) and cgroups by id (their paths, and the container and pod a path names). Live
//! tracing learns them from the host as new numbers appear ([`crate::host`]) and records
//! them; replay reads them back from the recording. The outputs look them up here.

use std::collections::{HashMap, HashSet};

/// A cgroup, by its path from the cgroup2 root, and what the path says it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// `/system.slice/docker-<id>.scope`, `/kubepods/…`: from the cgroup2 root.
    pub path: String,
    /// The container id the path names (docker, containerd/CRI, CRI-O, podman).
    pub container_id: Option<String>,
    /// The Kubernetes pod UID the path names (`kubepods…pod<uid>`).
    pub pod_uid: Option<String>,
}

impl Cgroup {
    /// Whether this cgroup is `other` or below it.
    pub fn is_within(&self, other: &Cgroup) -> bool {
        let parent = other.path.trim_end_matches('/');
        self.path == other.path
            || self.path.strip_prefix(parent).is_some_and(|rest| rest.starts_with('/'))
    }

    pub fn new(path: String) -> Cgroup {
        let container_id = container_id(&path).map(str::to_owned);
        let pod_uid = pod_uid(&path);
        Cgroup { path, container_id, pod_uid }
    }

    /// The container id's first 12 characters, as `docker ps` shows it.
    pub fn short_container_id(&self) -> Option<&str> {
        self.container_id.as_deref().map(|id| &id[..id.len().min(12)])
    }
}

/// A container runtime's id: 64 lowercase hex digits (docker, containerd, CRI-O and podman
/// all use them).
fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container id in a cgroup path: the last component that is `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope` (systemd's cgroup
/// driver) or a bare `<id>` under `/docker/`, `/libpod/`, a `kubepods` pod or the like
/// (cgroupfs driver).
pub fn container_id(path: &str) -> Option<&str> {
    const SCOPE_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];
    path.rsplit('/').find_map(|component| {
        let scoped = component
            .strip_suffix(".scope")
            .and_then(|name| SCOPE_PREFIXES.iter().find_map(|prefix| name.strip_prefix(prefix)));
        scoped.or(Some(component)).filter(|id| is_container_id(id))
    })
}

/// The pod UID in a Kubernetes cgroup path: `kubepods-besteffort-pod<uid>.slice` (systemd
/// driver, with `_` for `-`) or `/kubepods/burstable/pod<uid>` (cgroupfs driver).
pub fn pod_uid(path: &str) -> Option<String> {
    if !path.contains("kubepods") {
        return None;
    }
    path.split('/').find_map(|component| {
        let name = component.strip_suffix(".slice").unwrap_or(component);
        let (_, uid) = name.rsplit_once("pod")?;
        let uid = uid.replace('_', "-");
        let looks_like_uid = uid.len() == 36
            && uid.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        looks_like_uid.then_some(uid)
    })
}

/// One thing learned about a number events carry: live tracing resolves it on the host,
/// a recording keeps it, replay reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A network namespace's `ip netns` name.
    NetnsName { inode: u32, name: String },
    /// A cgroup id's cgroup; `None` when it was gone before it could be resolved.
    Cgroup { id: u64, cgroup: Option<Cgroup> },
}

/// The names known so far.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// `ip netns` names by namespace inode.
    netns: HashMap<u32, String>,
    /// Cgroups by id; `None` for one that was gone before it could be resolved.
    cgroups: HashMap<u64, Option<Cgroup>>,
    /// Namespaces and containers seen in events, to tell whether there are more than one.
    seen_netns: HashSet<u32>,
    seen_containers: HashSet<Option<String>>,
}

impl Names {
    pub fn learn(&mut self, learned: Learned) {
        match learned {
            Learned::NetnsName { inode, name } => self.set_netns_name(inode, name),
            Learned::Cgroup { id, cgroup } => self.set_cgroup(id, cgroup),
        }
    }

    pub fn set_netns_name(&mut self, inode: u32, name: String) {
        self.netns.insert(inode, name);
    }

    pub fn set_cgroup(&mut self, id: u64, cgroup: Option<Cgroup>) {
        let container = cgroup.as_ref().and_then(|c| c.container_id.clone());
        self.seen_containers.insert(container);
        self.cgroups.insert(id, cgroup);
    }

    pub fn cgroup(&self, id: Option<u64>) -> Option<&Cgroup> {
        self.cgroups.get(&id?)?.as_ref()
    }

    /// Notes a namespace an event came from; true if it was new.
    pub fn saw_netns(&mut self, inode: u32) -> bool {
        self.seen_netns.insert(inode)
    }

    /// Whether the trace so far spans more than one namespace or container: the text then
    /// says which for each line.
    pub fn many_homes(&self) -> bool {
        self.seen_netns.len() > 1 || self.seen_containers.len() > 1
    }

    /// A namespace's short name: its `ip netns` name, else its inode.
    pub fn netns_label(&self, inode: u32) -> String {
        self.netns.get(&inode).cloned().unwrap_or_else(|| inode.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_of_every_runtime_are_found_in_their_paths() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/system.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/{ID}"),
        ] {
            assert_eq!(container_id(&path), Some(ID), "{path}");
        }
        for path in ["/", "/user.slice/user-0.slice/session-3.scope", "/docker/abc", "/docker"] {
            assert_eq!(container_id(path), None, "{path}");
        }
        let upper = format!("/docker/{}", ID.to_uppercase());
        assert_eq!(container_id(&upper), None, "runtimes write ids in lowercase");
    }

    #[test]
    fn pod_uids_are_read_from_both_cgroup_drivers() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid(&systemd).as_deref(), Some(uid));
        let cgroupfs = format!("/kubepods/burstable/pod{uid}/{ID}");
        assert_eq!(pod_uid(&cgroupfs).as_deref(), Some(uid));
        assert_eq!(pod_uid(&format!("/system.slice/pod{uid}.slice")), None, "not kubepods");
        let cgroup = Cgroup::new(cgroupfs);
        assert_eq!(cgroup.short_container_id(), Some(&ID[..12]));
        assert_eq!(cgroup.pod_uid.as_deref(), Some(uid));
    }

    #[test]
    fn many_homes_once_a_second_namespace_or_container_is_seen() {
        let mut names = Names::default();
        assert!(names.saw_netns(7));
        assert!(!names.saw_netns(7));
        names.set_cgroup(1, Some(Cgroup::new("/user.slice".into())));
        names.set_cgroup(2, Some(Cgroup::new("/system.slice".into())));
        assert!(!names.many_homes(), "two cgroups, no container: one home");
        names.set_cgroup(3, Some(Cgroup::new(format!("/docker/{ID}"))));
        assert!(names.many_homes());
        let mut names = Names::default();
        names.saw_netns(7);
        names.saw_netns(8);
        names.set_netns_name(8, "blue".into());
        assert!(names.many_homes());
        assert_eq!((names.netns_label(7), names.netns_label(8)), ("7".into(), "blue".into()));
    }
}
