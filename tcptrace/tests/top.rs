//! `tcptrace top` in a real terminal: tmux runs it, `send-keys` presses the keys and
//! `capture-pane` reads the screen. The sockets a test peer makes show on screen, live; a
//! resize redraws; `q` quits and gives the terminal back as it was.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tcptrace::yielding::idle_cgroup;

/// A tmux server of the test's own, with one window of `columns`×`rows`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(columns: u16, rows: u16) -> Tmux {
        let tmux = Tmux { socket: format!("tcptrace-top-test-{}", std::process::id()) };
        let size = [columns.to_string(), rows.to_string()];
        tmux.run(&["new-session", "-d", "-s", "top", "-x", &size[0], "-y", &size[1], "sh"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output =
            Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("tmux");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        self.run(&[["send-keys", "-t", "top"].as_slice(), keys].concat());
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn format(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", format]).trim().to_owned()
    }

    /// Waits until the screen holds every needle; returns it.
    fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_until(&format!("{needles:?}"), |screen| {
            needles.iter().all(|n| screen.contains(n))
        })
    }

    /// Waits until `done` holds for the screen; returns it.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "never on screen: {what}\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// The test peer: the server closes first on some connections, never on others.
fn peer(port: u16, time_waits: u32, close_waits: u32) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/top_peer.py");
    let mut child = Command::new("python3")
        .args([script, &port.to_string(), &time_waits.to_string(), &close_waits.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The number after `label` on the screen (the state counts: `TIME-WAIT     3`).
fn count(screen: &str, label: &str) -> u64 {
    let at = screen.find(label).unwrap_or_else(|| panic!("no {label:?} on\n{screen}"));
    let rest = screen[at + label.len()..].trim_start();
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// The pid of the process whose command line contains `args`.
fn process_with_args(args: &str) -> Option<libc::pid_t> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(args).then_some(pid)
    })
}

#[test]
fn top_shows_live_time_waits_and_close_waits_and_gives_the_terminal_back() {
    support::require_root();
    let port = free_port();
    let tmux = Tmux::start(80, 24);
    // The modes, without the first line (the size, which the test changes).
    let stty = |tty: &str| {
        let modes = support::run("stty", &["-a", "-F", tty]);
        modes.lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    let tty = tmux.format("#{pane_tty}");
    let stty_before = stty(&tty);
    let command = format!(
        "{} top --port {port} --stuck-after 1 --refresh 0.5; echo top-exited-$?",
        env!("CARGO_BIN_EXE_tcptrace")
    );
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_for(&["tcptrace top (port", "q quit"]);
    assert_eq!(tmux.format("#{alternate_on}"), "1", "top takes the alternate screen");
    assert!(stty(&tty).contains("-icanon"), "top puts the terminal in raw mode");
    // Its thread that drains the rings (and draws) yields the CPU, as live tracing's does.
    let top = process_with_args(&format!("top --port {port} ")).expect("top runs");
    assert!(
        support::becomes(top, libc::SCHED_IDLE),
        "top's draining thread becomes an idle task (SCHED_IDLE)"
    );
    // In tmux's session, not the traced programs': it yields in an idle cgroup of its own.
    let home = idle_cgroup::cpu_cgroup(format!("/proc/{top}/cgroup")).unwrap();
    assert!(home.ends_with(format!("{}{top}", idle_cgroup::PREFIX)), "{}", home.display());
    let idle = std::fs::read_to_string(home.join("cpu.idle")).unwrap();
    assert_eq!(idle.trim(), "1", "top's cgroup is idle while it yields");
    let mut peer = peer(port, 3, 2);
    // Live: the three TIME-WAITs on the server's port and the two CLOSE_WAITs appear,
    // and the listener's owner holds the CLOSE_WAITs, stuck after 1 s.
    let screen = tmux.wait_for(&["python3", "OLDEST SOCKET"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut screen = screen;
    while !(count(&screen, "TIME-WAIT ") == 3
        && count(&screen, "CLOSE-WAIT") == 2
        && screen
            .lines()
            .any(|l| l.contains("python3") && l.contains(&format!("127.0.0.1:{port} ↔"))))
    {
        assert!(Instant::now() < deadline, "the counts never showed:\n{screen}");
        std::thread::sleep(Duration::from_millis(200));
        screen = tmux.screen();
    }
    assert_eq!(count(&screen, "LISTEN"), 1, "{screen}");
    let endpoint = screen
        .lines()
        .find(|line| line.contains(&format!("│127.0.0.1:{port} ")))
        .unwrap_or_else(|| panic!("no row for the server's endpoint:\n{screen}"));
    let numbers: Vec<&str> =
        endpoint.split('│').nth(1).unwrap().split_whitespace().skip(1).collect();
    assert_eq!(numbers, ["0", "3", "2", "6"], "EST TW CW ALL of 127.0.0.1:{port}:\n{screen}");
    assert!(screen.lines().all(|line| line.chars().count() <= 80), "{screen}");
    // The TIME-WAITs are under 10 s old, held by no process: python3 holds its listener
    // and the two CLOSE_WAITs. The 'p' key pauses, 's' sorts.
    assert!(screen.contains("TIME-WAIT by age (s): 3 now"), "{screen}");
    let python =
        screen.lines().find(|line| line.contains(" python3 ") && line.contains("││")).unwrap();
    let held: Vec<&str> = python.split('│').nth(3).unwrap().split_whitespace().skip(2).collect();
    assert_eq!(held, ["0", "2", "3"], "EST CW ALL of python3:\n{screen}");
    tmux.keys(&["s"]);
    tmux.wait_for(&["s sort tables: TIME-WAIT"]);
    tmux.keys(&["p"]);
    tmux.wait_for(&["PAUSED"]);
    tmux.keys(&["p"]);
    tmux.wait_until("no PAUSED", |screen| !screen.contains("PAUSED"));
    // A bigger terminal: redrawn to fit it, the keys on its last line.
    tmux.run(&["resize-window", "-t", "top", "-x", "100", "-y", "30"]);
    let big = tmux.wait_until("a redraw at 100×30", |screen| {
        screen.lines().nth(29).is_some_and(|line| line.contains("q quit"))
    });
    let lines: Vec<&str> = big.lines().collect();
    assert!(
        lines.iter().any(|l| l.chars().count() == 100 && l.ends_with('┐')),
        "drawn 100 wide:\n{big}"
    );
    // q quits, the terminal is as it was, and the shell goes on.
    tmux.keys(&["q"]);
    tmux.wait_for(&["top-exited-0"]);
    assert_eq!(tmux.format("#{alternate_on}"), "0", "the alternate screen is left");
    assert_eq!(tmux.format("#{cursor_flag}"), "1", "the cursor is shown again");
    let stty_after = stty(&tty);
    assert_eq!(stty_after, stty_before, "the terminal's modes are restored");
    // Stopped from outside (SIGTERM), it gives the terminal back as well.
    let command = format!(
        "{} top --port {port} --refresh 2; echo top-ended-$?",
        env!("CARGO_BIN_EXE_tcptrace")
    );
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_for(&["tcptrace top (port", "q quit"]);
    support::run("pkill", &["-TERM", "-f", &format!("top --port {port} --refresh 2")]);
    tmux.wait_for(&["top-ended-0"]);
    assert_eq!(tmux.format("#{alternate_on}"), "0", "the alternate screen is left");
    assert_eq!(stty(&tty), stty_before, "the terminal's modes are restored");
    drop(peer.stdin.take());
    let _ = peer.wait();
}

#[test]
fn top_without_a_terminal_says_what_to_run_instead() {
    let output = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("top")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs a terminal") && stderr.contains("tcptrace --json"), "{stderr}");
}
