//! Network namespaces and containers on the real kernel: the same 4-tuple in two
//! namespaces at once is two connections, never one; a veth pair's two ends pair across
//! namespaces; `--netns` and `--cgroup` keep what they name; a process in a container
//! runtime's cgroup is shown with its container id (and its pod's UID).

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde_json::Value;
use support::{Netns, Tracer, connections, run};

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(name).display().to_string()
}

/// A cgroup (v2) of the test's own, below the cgroup2 root; removed on drop, with every
/// cgroup made below it.
struct TestCgroup {
    /// From the cgroup2 root, as tcptrace shows it.
    path: String,
    dir: PathBuf,
}

impl TestCgroup {
    fn new(below_root: &str) -> TestCgroup {
        let root = tcptrace::kernel::host::cgroup2_mount().unwrap();
        let path = format!("/tcptrace-test-{}/{below_root}", std::process::id());
        let dir = root.join(&path[1..]);
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup { path, dir }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Deepest first; the test's top cgroup goes with the last of them.
        let top = self.dir.ancestors().find(|d| {
            d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tcptrace-test-"))
        });
        let mut dir = self.dir.as_path();
        while std::fs::remove_dir(dir).is_ok() && Some(dir) != top {
            dir = dir.parent().unwrap();
        }
    }
}

/// A peer process (`pair.py`), talked to over its stdin and stdout.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Runs `command` in `cgroup` (joined before anything else, so before `ip netns exec`
    /// mounts its own /sys) and in `netns`; waits until it says `first`.
    fn start(
        cgroup: Option<&TestCgroup>,
        netns: Option<&Netns>,
        command: &[&str],
        first: &str,
    ) -> Peer {
        let join = match cgroup {
            Some(cgroup) => format!("echo $$ > {}/cgroup.procs && ", cgroup.dir.display()),
            None => String::new(),
        };
        let mut args: Vec<&str> = Vec::new();
        if let Some(netns) = netns {
            args.extend(["ip", "netns", "exec", &netns.name]);
        }
        args.extend(command);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{join}exec \"$@\""))
            .arg("sh")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut peer = Peer { child, stdin, stdout };
        peer.expect(first);
        peer
    }

    fn expect(&mut self, word: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), word, "the peer's output");
    }

    fn cue(&mut self) {
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pair.py` on 127.0.0.1: a server on `port` and a client bound to `client_port`.
fn loopback_pair(cgroup: Option<&TestCgroup>, netns: Option<&Netns>, ports: (u16, u16)) -> Peer {
    let (port, client_port) = (ports.0.to_string(), ports.1.to_string());
    let command = ["python3", &script("pair.py"), "127.0.0.1", &port, "127.0.0.1", &client_port];
    Peer::start(cgroup, netns, &command, "ready")
}

/// Connects every peer at once, holds the connections open together, then closes them
/// (clients first).
fn connect_and_close_together(peers: &mut [Peer]) {
    peers.iter_mut().for_each(Peer::cue);
    peers.iter_mut().for_each(|peer| peer.expect("connected"));
    peers.iter_mut().for_each(Peer::cue);
    peers.iter_mut().for_each(|peer| peer.expect("done"));
}

fn with_client(lines: &[Value], client: &str) -> Vec<Value> {
    connections(lines)
        .into_iter()
        .filter(|record| record["client"]["addr"] == client)
        .cloned()
        .collect()
}

fn replay_text(recording: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["replay", recording.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-test-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Two namespaces, each with a server on 127.0.0.1:18091 and a client bound to
/// 127.0.0.1:40091, connected at the same moment: the same 4-tuple twice at once. Each is
/// one connection with both its ends in its own namespace, and the text names them.
#[test]
fn the_same_four_tuple_in_two_namespaces_is_two_connections() {
    let (a, b) = (Netns::new("tuple-a"), Netns::new("tuple-b"));
    let recording = scratch("tuple.jsonl");
    let tracer = Tracer::start(&["--port", "18091", "--record", recording.to_str().unwrap()]);
    let mut peers = [&a, &b].map(|netns| loopback_pair(None, Some(netns), (18091, 40091)));
    connect_and_close_together(&mut peers);
    let lines = tracer.stop();

    let records = with_client(&lines, "127.0.0.1:40091");
    assert_eq!(records.len(), 2, "one record per connection: {records:#?}");
    assert_eq!(connections(&lines).len(), 2, "and nothing else");
    let mut seen = Vec::new();
    for record in &records {
        let (client, server) = (&record["client"], &record["server"]);
        assert_eq!(server["addr"], "127.0.0.1:18091", "both ends paired: {record:#}");
        assert_eq!(client["netns"], server["netns"], "both ends in one namespace: {record:#}");
        assert_eq!(record["closed_first"], "client", "{record:#}");
        seen.push(client["netns"].as_u64().unwrap());
    }
    seen.sort();
    let mut made = vec![a.inode(), b.inode()];
    made.sort();
    assert_eq!(seen, made, "the two namespaces told apart");
    for line in lines.iter().filter(|l| l["type"] == "transition") {
        assert!(made.contains(&line["netns"].as_u64().unwrap()), "{line}");
    }

    let text = replay_text(&recording);
    assert!(text.contains("more than one network namespace"), "{text}");
    for netns in [&a, &b] {
        // Every line and every story of a namespace names it.
        let label = format!("ns {}", netns.name);
        assert!(text.contains(&format!("[{label}]")), "{label}: {text}");
        assert!(
            text.contains(&format!("(owner unknown, {label})"))
                || text.contains(&format!(", {label})")),
            "{label}: {text}"
        );
    }
    std::fs::remove_file(&recording).unwrap();
}

/// `--netns` by a process's namespace file keeps that namespace's sockets and no other's.
#[test]
fn netns_keeps_one_namespace_only() {
    let (a, b) = (Netns::new("keep-a"), Netns::new("keep-b"));
    let mut peers = [&a, &b].map(|netns| loopback_pair(None, Some(netns), (18092, 40092)));
    let path = format!("/proc/{}/ns/net", peers[0].child.id());
    let tracer = Tracer::start(&["--port", "18092", "--netns", &path]);
    connect_and_close_together(&mut peers);
    let lines = tracer.stop();
    let records = connections(&lines);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["client"]["netns"], a.inode());
    assert_eq!(records[0]["server"]["netns"], a.inode());
    assert!(lines.iter().filter(|l| l["type"] == "transition").all(|l| l["netns"] == a.inode()));
}

/// `--cgroup` keeps the sockets made in that cgroup (or below), not a sibling's.
#[test]
fn cgroup_keeps_one_cgroups_sockets() {
    let (kept, other) = (TestCgroup::new("kept"), TestCgroup::new("other"));
    let mut peers = [
        loopback_pair(Some(&kept), None, (18093, 40093)),
        loopback_pair(Some(&other), None, (18193, 40193)),
    ];
    let tracer = Tracer::start(&["--port", "18093", "--port", "18193", "--cgroup", &kept.path]);
    connect_and_close_together(&mut peers);
    drop(peers);
    let lines = tracer.stop();
    let records = connections(&lines);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["client"]["addr"], "127.0.0.1:40093", "{:#}", records[0]);
    for side in ["client", "server"] {
        assert_eq!(records[0][side]["cgroup"], kept.path.as_str(), "{:#}", records[0]);
        assert!(records[0][side]["container_id"].is_null(), "{:#}", records[0]);
    }
}

/// A process the test placed in a cgroup named as docker names its containers, and one in
/// a Kubernetes pod's containerd scope, each in its own namespace: each endpoint names its
/// cgroup, container and pod, and the text the container.
#[test]
fn containers_are_named_by_their_runtimes_cgroups() {
    let docker_id = "d0c4e1".repeat(10) + "abcd";
    let cri_id = "c1a2".repeat(16);
    let pod_uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let docker = TestCgroup::new(&format!("system.slice/docker-{docker_id}.scope"));
    let cri = TestCgroup::new(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cri_id}.scope",
        pod_uid.replace('-', "_")
    ));
    let (a, b) = (Netns::new("ctr-a"), Netns::new("ctr-b"));
    let recording = scratch("containers.jsonl");
    let tracer = Tracer::start(&["--port", "18095", "--record", recording.to_str().unwrap()]);
    let mut peers = [
        loopback_pair(Some(&docker), Some(&a), (18095, 40095)),
        loopback_pair(Some(&cri), Some(&b), (18095, 40095)),
    ];
    connect_and_close_together(&mut peers);
    let lines = tracer.stop();
    let records = connections(&lines);
    assert_eq!(records.len(), 2, "{records:#?}");
    for (cgroup, id, netns, pod) in
        [(&docker, &docker_id, &a, None), (&cri, &cri_id, &b, Some(pod_uid))]
    {
        let record = records
            .iter()
            .find(|r| r["client"]["container_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no connection of container {id}: {records:#?}"));
        for side in ["client", "server"] {
            let endpoint = &record[side];
            assert_eq!(endpoint["cgroup"], cgroup.path.as_str(), "{record:#}");
            assert_eq!(endpoint["container_id"], id.as_str(), "{record:#}");
            assert_eq!(endpoint["netns"], netns.inode(), "{record:#}");
            match pod {
                Some(uid) => assert_eq!(endpoint["pod_uid"], uid, "{record:#}"),
                None => assert!(endpoint.get("pod_uid").is_none(), "{record:#}"),
            }
        }
    }
    let text = replay_text(&recording);
    for id in [&docker_id, &cri_id] {
        assert!(text.contains(&format!("ctr {}]", &id[..12])), "{id}: {text}");
    }
    std::fs::remove_file(&recording).unwrap();
}

/// A veth pair between two namespaces: the client in one, the server in the other, their
/// addresses mirrored. One connection, each end in its own namespace.
#[test]
fn a_connection_across_a_veth_pair_pairs_its_two_namespaces() {
    let (a, b) = (Netns::new("veth-a"), Netns::new("veth-b"));
    let (end_a, end_b) =
        (format!("tt{}a", std::process::id()), format!("tt{}b", std::process::id()));
    run("ip", &["link", "add", &end_a, "type", "veth", "peer", "name", &end_b]);
    for (netns, end, address) in [(&a, &end_a, "10.201.0.1/24"), (&b, &end_b, "10.201.0.2/24")] {
        run("ip", &["link", "set", end, "netns", &netns.name]);
        netns.exec(&["ip", "addr", "add", address, "dev", end]);
        netns.exec(&["ip", "link", "set", end, "up"]);
    }
    let tracer = Tracer::start(&["--port", "18094"]);
    let mut server = Peer::start(
        None,
        Some(&b),
        &["python3", &script("serve_once.py"), "10.201.0.2", "18094"],
        "listening",
    );
    let command = [
        "python3",
        &script("pair.py"),
        "10.201.0.2",
        "18094",
        "10.201.0.1",
        "40094",
        "connect-only",
    ];
    let mut client = Peer::start(None, Some(&a), &command, "ready");
    connect_and_close_together(std::slice::from_mut(&mut client));
    server.expect("done");
    let lines = tracer.stop();
    let records = connections(&lines);
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["client"]["addr"], "10.201.0.1:40094", "{record:#}");
    assert_eq!(record["server"]["addr"], "10.201.0.2:18094", "{record:#}");
    assert_eq!(record["client"]["netns"], a.inode(), "{record:#}");
    assert_eq!(record["server"]["netns"], b.inode(), "{record:#}");
    assert_eq!(record["closed_first"], "client", "{record:#}");
}
