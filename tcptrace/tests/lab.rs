//! `tcptrace lab` on the real kernel: the whole exercise in both languages, its port
//! exhaustion and tcp_tw_reuse, its own peers when python3 or curl is missing, a full run
//! that times the TIME-WAIT, and Ctrl-C: each leaves no namespace, process or sysctl behind.

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The tests compare the host before and after: one lab at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What a lab must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Host {
    namespaces: BTreeSet<u64>,
    named_namespaces: BTreeSet<String>,
    sysctls: Vec<String>,
    lab_processes: Vec<String>,
}

fn host() -> Host {
    use std::os::unix::fs::MetadataExt;
    let mut namespaces = BTreeSet::new();
    let mut lab_processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        if let Ok(meta) = std::fs::metadata(path.join("ns/net")) {
            namespaces.insert(meta.ino());
        }
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read_to_string(path.join("cmdline")).unwrap_or_default();
        if comm.starts_with("lab-") || cmdline.contains("http.server\u{0}8080") {
            lab_processes.push(format!("{} {}", path.display(), comm.trim()));
        }
    }
    let named_namespaces = std::fs::read_dir("/run/netns")
        .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let sysctls = ["ip_local_port_range", "tcp_tw_reuse", "tcp_tw_reuse_delay"]
        .iter()
        .map(|name| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap_or_default()
        })
        .collect();
    Host { namespaces, named_namespaces, sysctls, lab_processes }
}

/// Runs `tcptrace lab ARGS` with `path` as PATH, checks it left the host as it was, and
/// returns its output.
fn lab(args: &[&str], path: Option<&str>) -> Output {
    support::require_root();
    let before = host();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcptrace"));
    command.arg("lab").args(args);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let output = command.output().expect("run tcptrace lab");
    assert_left_as_it_was(&before);
    output
}

fn assert_left_as_it_was(before: &Host) {
    // The kernel frees a namespace's last reference as its processes are reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = host();
        if after == *before || Instant::now() > deadline {
            assert_eq!(after, *before, "the lab left something behind");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdout(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tcptrace lab failed ({}):\n{text}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> u64 {
    let at = text.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"));
    let digits: String = text[at + prefix.len()..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after {prefix:?}"))
}

/// The text, with the lab's line wrapping undone.
fn unwrapped(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Who closed first says where the TIME-WAIT sits: the `ss -tan` table must agree.
fn check_story(text: &str, closed_first_en: bool) {
    // Rows of the table: `TIME-WAIT  0  0  LOCAL  PEER`.
    let table: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|row| row.len() == 5 && row[0] == "TIME-WAIT" && row[1].parse::<u32>().is_ok())
        .collect();
    assert!(!table.is_empty(), "no TIME-WAIT in the socket table:\n{text}");
    let server_tw = table.iter().filter(|row| row[3] == "127.0.0.1:8080").count();
    let client_tw = table.len() - server_tw;
    let (server, client, both) = if closed_first_en {
        ("Closed first: the server", "Closed first: the client", "Closed first: both at once")
    } else {
        ("Закрыл первым: сервер", "Закрыл первым: клиент", "Закрыл первым: обе стороны сразу")
    };
    if text.contains(server) {
        assert_eq!((server_tw, client_tw), (1, 0), "{text}");
    } else if text.contains(client) {
        assert_eq!((server_tw, client_tw), (0, 1), "{text}");
    } else {
        assert!(text.contains(both), "no story of who closed first:\n{text}");
        assert_eq!((server_tw, client_tw), (1, 1), "{text}");
    }
}

#[test]
fn quick_lab_in_english_shows_the_exercise_the_exhaustion_and_the_reuse() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("tcptrace-lab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("lab.jsonl");
    let output = lab(&["--quick", "--export", export.to_str().unwrap()], None);
    let text = stdout(&output);
    // Step 1: the real python3 and curl, traced, and the story agreeing with the table.
    assert!(text.contains(" python3 ") && text.contains(" curl "), "{text}");
    assert!(text.contains("CLOSED -> LISTEN") && text.contains("↳ listen()"), "{text}");
    check_story(&text, true);
    let flat = unwrapped(&text);
    // Step 2, quick: the time the kernel's timer had left (on whichever side closed first).
    let quick = flat.find("--quick: not waiting").unwrap_or_else(|| panic!("{flat}"));
    let left = number_after(&flat[quick..], " had ");
    assert!(left > 0, "{flat}");
    assert!(flat[quick..].contains(" s left;"), "{flat}");
    // Step 4: the range fills, connect() fails, tcp_tw_reuse kills as many as it reuses.
    let connected = number_after(&flat, "TIME-WAIT on the client's port. ");
    assert_eq!(connected, 8, "8 ports in the range: {flat}");
    assert_eq!(number_after(&flat, "the kernel holds "), connected, "{flat}");
    assert!(
        flat.contains(&format!(
            "Connection {} failed: connect() returned EADDRNOTAVAIL",
            connected + 1
        )),
        "{flat}"
    );
    assert!(
        flat.contains("The 8 TIME-WAIT sockets are held by no descriptor at all (0 of them"),
        "{flat}"
    );
    assert_eq!(number_after(&flat, "delay (1000 ms): "), connected, "{flat}");
    assert!(flat.contains(&format!("tcptrace saw {connected} TIME-WAITs killed")), "{flat}");
    // Step 5: the leak, against the descriptor limit, and tcptrace's report of it.
    assert!(flat.contains("accepted 12 connections and holds 16 descriptors"), "{flat}");
    assert!(flat.contains("Then accept() failed: EMFILE (Too many open files). 2 more"), "{flat}");
    assert!(
        text.contains("!! lab-leaky-srv (pid ") && text.contains("sockets in CLOSE_WAIT"),
        "{text}"
    );
    assert!(text.contains("nothing of the lab is left on this host"), "{text}");
    // The export holds the lab's connections: the killed TIME-WAITs among them.
    let records: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let killed = records
        .iter()
        .flat_map(|r| ["client", "server"].map(|side| r[side]["time_wait"]["end"].clone()))
        .filter(|end| end == "killed")
        .count();
    assert_eq!(killed as u64, connected, "killed TIME-WAITs in the export");
    let exercise = records.iter().find(|r| r["server"]["addr"] == "127.0.0.1:8080").unwrap();
    assert_eq!(exercise["client"]["comm"], "curl", "{exercise}");
    assert_eq!(exercise["server"]["comm"], "python3", "{exercise}");
    assert_ne!(exercise["closed_first"], "unknown", "{exercise}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quick_lab_in_russian() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = stdout(&lab(&["--quick", "--lang", "ru"], None));
    check_story(&text, false);
    let flat = unwrapped(&text);
    assert!(flat.contains("== 1. Упражнение"), "{flat}");
    assert!(flat.contains("connect() вернул EADDRNOTAVAIL"), "{flat}");
    assert!(flat.contains("завершённых досрочно (killed), tcptrace видел: 8."), "{flat}");
    assert!(flat.contains("accept() не удался: EMFILE"), "{flat}");
    assert!(flat.contains("от неё ничего не осталось"), "{flat}");
    assert!(!flat.contains("The lab runs"), "English in the Russian lab: {flat}");
}

#[test]
fn without_python_and_curl_the_lab_brings_its_own_peers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = stdout(&lab(&["--quick"], Some("/nonexistent")));
    assert!(text.contains("python3 or curl is not installed here"), "{text}");
    assert!(text.contains(" lab-http-client "), "{text}");
    let traced = text.lines().filter(|line| line.starts_with(|c: char| c.is_ascii_digit()));
    assert!(traced.clone().all(|l| !l.contains(" python3 ") && !l.contains(" curl ")), "{text}");
    assert!(traced.clone().any(|l| l.contains(" lab-http-server ")), "{text}");
    check_story(&text, true);
}

#[test]
fn a_full_lab_measures_the_time_wait() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = stdout(&lab(&[], None));
    let flat = unwrapped(&text);
    let at = flat.find("Measured: the TIME-WAIT on ").expect(&flat);
    let seconds: f64 =
        flat[at..].split(" lasted ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((60.0..=62.1).contains(&seconds), "a natural TIME-WAIT lasts 60–62.05 s: {seconds}");
    assert!(
        flat[at..].starts_with("Measured: the TIME-WAIT on ") && flat.contains("(expired)"),
        "{flat}"
    );
    assert!(text.contains("TIME-WAIT expired"), "the timer's expiry in the trace:\n{text}");
    let countdown = text.lines().filter(|l| l.contains("s left on the kernel's timer")).count();
    assert!(countdown >= 6, "a countdown line every 10 s: {countdown}\n{text}");
}

#[test]
fn ctrl_c_during_the_lab_removes_everything() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    support::require_root();
    let before = host();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("lab")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // In the countdown, the server and the namespace are there.
    let during = loop {
        let line = lines.next().expect("the lab ended early").unwrap();
        if line.contains("s left on the kernel's timer") {
            break host();
        }
    };
    assert!(during.namespaces.len() > before.namespaces.len(), "no lab namespace while it ran");
    assert!(!during.lab_processes.is_empty(), "no python3 http.server while it ran");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted lab is not a finished one");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopped (Ctrl-C)"), "{stderr}");
    assert_left_as_it_was(&before);
}
